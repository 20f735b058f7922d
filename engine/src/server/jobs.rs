//! `/v1/jobs` and `/v1/batches`: submit, read, list, cancel, wait for and
//! watch jobs.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;
use work_host_api::{Job, JobId, JobStatus, NewJob};

use super::caller::{Caller, Submitter};
use super::problem::{ApiError, JsonBody, PathParams, QueryParams, Refused};
use super::{AppState, located};
use crate::auth::acting_as;
use crate::events::{EventStream, EventStreamError};
use crate::scheduler::Batch;
use crate::scheduler::StatusCounts;
use crate::store::{JobPage, JobQuery};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(submit, list))
        .routes(routes!(submit_batch))
        .routes(routes!(by_external_id))
        .routes(routes!(get_job))
        .routes(routes!(cancel))
        .routes(routes!(wait))
        .routes(routes!(events))
        .routes(routes!(batch))
}

/// `201 Created` with the job, or `200 OK` with the job an idempotency key
/// already named.
#[utoipa::path(
    post, path = "/v1/jobs", tag = "jobs",
    request_body = NewJob,
    responses(
        (status = 201, description = "Accepted", body = Job),
        (status = 200, description = "The job an earlier submission with the same idempotency key created", body = Job),
        Refused,
    )
)]
async fn submit(
    State(state): State<AppState>,
    Submitter(caller): Submitter,
    JsonBody(mut job): JsonBody<NewJob>,
) -> Result<Response, ApiError> {
    caller.own_job(&mut job)?;
    caller.spend(&state.rates, 1)?;
    let asked_at = chrono::Utc::now();
    let job = acting_as(caller.actor().to_owned(), state.engine.submit(job)).await?;
    let status = if job.created_at < asked_at {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(located(status, format!("/v1/jobs/{}", job.id), job))
}

/// `{"jobs": [...]}`: accepted all or none.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchRequest {
    jobs: Vec<NewJob>,
}

/// All or none: `201 Created` with `{"id", "jobs"}`, or the problem of the
/// first job refused (its `index` in the problem).
#[utoipa::path(
    post, path = "/v1/jobs/batch", tag = "jobs",
    request_body = BatchRequest,
    responses(
        (status = 201, description = "Every job accepted", body = Batch),
        Refused,
    )
)]
async fn submit_batch(
    State(state): State<AppState>,
    Submitter(caller): Submitter,
    JsonBody(mut request): JsonBody<BatchRequest>,
) -> Result<Response, ApiError> {
    for job in &mut request.jobs {
        caller.own_job(job)?;
    }
    caller.spend(&state.rates, request.jobs.len())?;
    let batch = acting_as(
        caller.actor().to_owned(),
        state.engine.submit_batch(request.jobs),
    )
    .await?;
    Ok(located(
        StatusCode::CREATED,
        format!("/v1/batches/{}", batch.id),
        batch,
    ))
}

#[utoipa::path(
    get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = Uuid, Path, description = "The job")),
    responses(
        (status = 200, description = "The job", body = Job),
        Refused,
    )
)]
async fn get_job(
    State(state): State<AppState>,
    Submitter(caller): Submitter,
    PathParams(id): PathParams<JobId>,
) -> Result<axum::Json<Arc<Job>>, ApiError> {
    let job = caller.job(&state, id).await?;
    Ok(axum::Json(job))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListParams {
    /// The tenant whose jobs to list.
    tenant: Option<String>,
    /// Only this namespace.
    namespace: Option<String>,
    /// Only this status.
    status: Option<JobStatus>,
    /// Only this kind.
    kind: Option<String>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// At most this many, 1 to 1000 (default 100).
    limit: Option<usize>,
}

impl ListParams {
    fn query(self, caller: &Caller) -> Result<JobQuery, ApiError> {
        let mut query = JobQuery::tenant(caller.tenant(self.tenant.as_deref())?);
        query.namespace = self.namespace;
        query.status = self.status;
        query.kind = self.kind.map(Into::into);
        query.cursor = self.cursor;
        query.limit = page_limit(self.limit)?;
        Ok(query)
    }
}

/// A page size as asked: 1 to [`JobQuery::MAX_LIMIT`], or refused.
pub(super) fn page_limit(limit: Option<usize>) -> Result<Option<usize>, ApiError> {
    match limit {
        Some(limit) if !(1..=JobQuery::MAX_LIMIT).contains(&limit) => Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be 1 to {}", JobQuery::MAX_LIMIT),
        )),
        limit => Ok(limit),
    }
}

/// A tenant's jobs, newest first, a page at a time.
#[utoipa::path(
    get, path = "/v1/jobs", tag = "jobs",
    params(ListParams),
    responses(
        (status = 200, description = "A page, newest first", body = JobPage),
        Refused,
    )
)]
async fn list(
    State(state): State<AppState>,
    Submitter(caller): Submitter,
    QueryParams(params): QueryParams<ListParams>,
) -> Result<axum::Json<JobPage>, ApiError> {
    let query = params.query(&caller)?;
    Ok(axum::Json(state.engine.list(&query).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct TenantParam {
    /// The tenant.
    tenant: Option<String>,
}

#[utoipa::path(
    get, path = "/v1/jobs/by-external-id/{external_id}", tag = "jobs",
    params(("external_id" = String, Path, description = "The caller's own id"), TenantParam),
    responses(
        (status = 200, description = "The newest job of the tenant with that external id", body = Job),
        Refused,
    )
)]
async fn by_external_id(
    State(state): State<AppState>,
    Submitter(caller): Submitter,
    PathParams(external_id): PathParams<String>,
    QueryParams(params): QueryParams<TenantParam>,
) -> Result<axum::Json<Arc<Job>>, ApiError> {
    let tenant = caller.tenant(params.tenant.as_deref())?;
    state
        .engine
        .get_by_external_id(&tenant, &external_id)
        .await?
        .map(axum::Json)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "tenant `{tenant}` has no job with external id `{external_id}`"
            ))
        })
}

#[utoipa::path(
    post, path = "/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = Uuid, Path, description = "The job")),
    responses(
        (status = 200, description = "The job after the request", body = Job),
        Refused,
    )
)]
async fn cancel(
    State(state): State<AppState>,
    Submitter(caller): Submitter,
    PathParams(id): PathParams<JobId>,
) -> Result<axum::Json<Arc<Job>>, ApiError> {
    let job = caller.job(&state, id).await?;
    caller.asked(&state, &job, "job.cancel_requested");
    Ok(axum::Json(
        acting_as(caller.actor().to_owned(), state.engine.cancel(id)).await?,
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct WaitParams {
    /// How long to wait at most (default and cap: the server's `max_wait`).
    timeout_ms: Option<u64>,
}

/// Long poll: the job once it has ended, or as it is at the timeout
/// (default and cap: the server's `max_wait`).
#[utoipa::path(
    get, path = "/v1/jobs/{id}/wait", tag = "jobs",
    params(("id" = Uuid, Path, description = "The job"), WaitParams),
    responses(
        (status = 200, description = "The job, ended or as it was at the timeout", body = Job),
        Refused,
    )
)]
async fn wait(
    State(state): State<AppState>,
    Submitter(caller): Submitter,
    PathParams(id): PathParams<JobId>,
    QueryParams(params): QueryParams<WaitParams>,
) -> Result<axum::Json<Arc<Job>>, ApiError> {
    caller.job(&state, id).await?;
    let timeout = params
        .timeout_ms
        .map_or(state.config.max_wait, Duration::from_millis)
        .min(state.config.max_wait);
    Ok(axum::Json(state.engine.wait(id, timeout).await?))
}

/// Server-Sent Events: first `job.state` with the job as it is, then
/// every event of the job (lifecycle, progress, partial results) up to
/// and including the terminal one.
#[utoipa::path(
    get, path = "/v1/jobs/{id}/events", tag = "jobs",
    params(("id" = Uuid, Path, description = "The job")),
    responses(
        (status = 200, description = "Server-Sent Events: `job.state` first, then the job's events up to the terminal one", content_type = "text/event-stream", body = String),
        Refused,
    )
)]
async fn events(
    State(state): State<AppState>,
    Submitter(caller): Submitter,
    PathParams(id): PathParams<JobId>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    // Subscribe before reading the job, so no event falls between the two.
    let events = state.engine.subscribe();
    let job = caller.job(&state, id).await?;
    let watch = Watch {
        id,
        state,
        events,
        snapshot: Some(job),
        ended: false,
    };
    let stream = futures_util::stream::unfold(watch, |mut watch| async move {
        let event = watch.next().await?;
        Some((Ok(event), watch))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// One job's event stream for SSE.
struct Watch {
    id: JobId,
    state: AppState,
    events: EventStream,
    /// The job's state, to send before the next event.
    snapshot: Option<Arc<Job>>,
    ended: bool,
}

impl Watch {
    async fn next(&mut self) -> Option<SseEvent> {
        if self.ended {
            return None;
        }
        if let Some(job) = self.snapshot.take() {
            self.ended = job.status.is_terminal();
            return Some(sse("job.state", &*job));
        }
        loop {
            match self.events.recv().await {
                Ok(event) if event.job_id == Some(self.id) => {
                    self.ended = event.data.is_terminal();
                    return Some(sse(event.data.name(), &event));
                }
                Ok(_) => {}
                Err(EventStreamError::Lagged { missed }) => {
                    // Events were lost: say so, then send the job as it is
                    // now, so the client ends in the right state.
                    self.snapshot = self.state.engine.get(self.id).await.ok();
                    return Some(sse(
                        "stream.lagged",
                        &serde_json::json!({ "missed": missed }),
                    ));
                }
                Err(EventStreamError::Closed) => return None,
            }
        }
    }
}

fn sse(name: &str, data: &impl serde::Serialize) -> SseEvent {
    SseEvent::default()
        .event(name)
        .json_data(data)
        .unwrap_or_else(|_| SseEvent::default().event(name))
}

/// How a batch's jobs stand.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct BatchSummary {
    /// The batch.
    id: Uuid,
    /// Its jobs.
    total: u64,
    /// Its jobs by status.
    jobs: StatusCounts,
}

#[utoipa::path(
    get, path = "/v1/batches/{id}", tag = "jobs",
    params(("id" = Uuid, Path, description = "The batch"), TenantParam),
    responses(
        (status = 200, description = "How the batch's jobs stand", body = BatchSummary),
        Refused,
    )
)]
async fn batch(
    State(state): State<AppState>,
    Submitter(caller): Submitter,
    PathParams(id): PathParams<Uuid>,
    QueryParams(params): QueryParams<TenantParam>,
) -> Result<axum::Json<BatchSummary>, ApiError> {
    let mut query = JobQuery::tenant(caller.tenant(params.tenant.as_deref())?)
        .batch(id)
        .limit(JobQuery::MAX_LIMIT);
    let mut counts = StatusCounts::default();
    let mut total = 0;
    loop {
        let page = state.engine.list(&query).await?;
        for job in &page.jobs {
            *counts.slot(job.status) += 1;
            total += 1;
        }
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => break,
        }
    }
    if total == 0 {
        return Err(ApiError::not_found(format!("batch {id} not found")));
    }
    Ok(axum::Json(BatchSummary {
        id,
        total,
        jobs: counts,
    }))
}
