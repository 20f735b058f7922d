//! Operations: `/v1/stats`, `/v1/dead-letters`, `/healthz`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use work_host_api::{Job, JobId};

use super::AppState;
use super::caller::{Operator, Submitter};
use super::problem::{ApiError, PathParams, QueryParams, Refused};
use crate::auth::acting_as;
use crate::scheduler::Stats;
use crate::store::{JobPage, JobQuery};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(stats))
        .routes(routes!(dead_letters))
        .routes(routes!(retry_dead_letter))
        .routes(routes!(healthz))
        .routes(routes!(super::metrics::metrics))
}

/// Counts by level and tenant, resources, throughput, wait and run times.
#[utoipa::path(
    get, path = "/v1/stats", tag = "operations",
    responses(
        (status = 200, description = "Counts, resources, throughput, wait and run times", body = Stats),
        Refused,
    )
)]
async fn stats(State(state): State<AppState>, _: Operator) -> axum::Json<Stats> {
    axum::Json(state.engine.stats())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct DeadLetterParams {
    /// The tenant.
    tenant: Option<String>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// At most this many, 1 to 1000 (default 100).
    limit: Option<usize>,
}

/// A tenant's dead-lettered jobs, newest first.
#[utoipa::path(
    get, path = "/v1/dead-letters", tag = "operations",
    params(DeadLetterParams),
    responses(
        (status = 200, description = "A page of dead-lettered jobs, newest first", body = JobPage),
        Refused,
    )
)]
async fn dead_letters(
    State(state): State<AppState>,
    Submitter(caller): Submitter,
    QueryParams(params): QueryParams<DeadLetterParams>,
) -> Result<axum::Json<JobPage>, ApiError> {
    let mut query = JobQuery::tenant(caller.tenant(params.tenant.as_deref())?);
    query.cursor = params.cursor;
    query.limit = super::jobs::page_limit(params.limit)?;
    Ok(axum::Json(state.engine.dead_letters(&query).await?))
}

/// Puts a dead-lettered job back in its queue with fresh attempts.
#[utoipa::path(
    post, path = "/v1/dead-letters/{id}/retry", tag = "operations",
    params(("id" = Uuid, Path, description = "The job")),
    responses(
        (status = 200, description = "The job, queued again", body = Job),
        Refused,
    )
)]
async fn retry_dead_letter(
    State(state): State<AppState>,
    Submitter(caller): Submitter,
    PathParams(id): PathParams<JobId>,
) -> Result<axum::Json<Arc<Job>>, ApiError> {
    let job = caller.job(&state, id).await?;
    caller.asked(&state, &job, "job.dead_letter_retried");
    Ok(axum::Json(
        acting_as(
            caller.actor().to_owned(),
            state.engine.retry_dead_letter(id),
        )
        .await?,
    ))
}

/// `200 {"status": "ok"}`, or `503 {"status": "shutting_down"}`.
#[utoipa::path(
    get, path = "/healthz", tag = "operations", security(()),
    responses(
        (status = 200, description = "`{\"status\": \"ok\"}`", body = serde_json::Value),
        (status = 503, description = "`{\"status\": \"shutting_down\"}`", body = serde_json::Value),
    )
)]
async fn healthz(State(state): State<AppState>) -> (StatusCode, axum::Json<serde_json::Value>) {
    let (status, text) = if state.draining.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting_down")
    } else {
        (StatusCode::OK, "ok")
    };
    (status, axum::Json(serde_json::json!({ "status": text })))
}
