//! Operations: `/v1/stats`, `/v1/dead-letters`, `/healthz`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::Deserialize;
use work_host_api::{Job, JobId};

use super::problem::{ApiError, PathParams, QueryParams};
use super::{AppState, Caller};
use crate::scheduler::Stats;
use crate::store::{JobPage, JobQuery};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/stats", get(stats))
        .route("/v1/dead-letters", get(dead_letters))
        .route("/v1/dead-letters/{id}/retry", post(retry_dead_letter))
        .route("/healthz", get(healthz))
        .route("/metrics", get(super::metrics::metrics))
}

async fn stats(State(state): State<AppState>) -> axum::Json<Stats> {
    axum::Json(state.engine.stats())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadLetterParams {
    tenant: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

/// A tenant's dead-lettered jobs, newest first.
async fn dead_letters(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(params): QueryParams<DeadLetterParams>,
) -> Result<axum::Json<JobPage>, ApiError> {
    let mut query = JobQuery::tenant(caller.tenant(params.tenant)?);
    query.cursor = params.cursor;
    query.limit = params.limit;
    Ok(axum::Json(state.engine.dead_letters(&query).await?))
}

/// Puts a dead-lettered job back in its queue with fresh attempts.
async fn retry_dead_letter(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(id): PathParams<JobId>,
) -> Result<axum::Json<Arc<Job>>, ApiError> {
    caller.may_see(&*state.engine.get(id).await?)?;
    Ok(axum::Json(state.engine.retry_dead_letter(id).await?))
}

/// `200 {"status": "ok"}`, or `503 {"status": "shutting_down"}`.
async fn healthz(State(state): State<AppState>) -> (StatusCode, axum::Json<serde_json::Value>) {
    if state.draining.load(Ordering::SeqCst) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "shutting_down"})),
        )
    } else {
        (
            StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ok"})),
        )
    }
}
