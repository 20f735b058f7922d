//! `/v1/jobs` and `/v1/batches`: submit, read, list, cancel, wait for and
//! watch jobs.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::Stream;
use serde::Deserialize;
use uuid::Uuid;
use work_host_api::{Job, JobId, JobStatus, NewJob};

use super::problem::{ApiError, JsonBody, PathParams, QueryParams};
use super::{AppState, Caller};
use crate::events::{EventStream, EventStreamError};
use crate::scheduler::StatusCounts;
use crate::store::{JobPage, JobQuery};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/jobs", post(submit).get(list))
        .route("/v1/jobs/batch", post(submit_batch))
        .route("/v1/jobs/by-external-id/{external_id}", get(by_external_id))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/cancel", post(cancel))
        .route("/v1/jobs/{id}/wait", get(wait))
        .route("/v1/jobs/{id}/events", get(events))
        .route("/v1/batches/{id}", get(batch))
}

/// `201 Created` with the job, or `200 OK` with the job an idempotency key
/// already named.
async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(job): JsonBody<NewJob>,
) -> Result<Response, ApiError> {
    caller.may_act_for(&job.tenant_id)?;
    let asked_at = chrono::Utc::now();
    let job = state.engine.submit(job).await?;
    let status = if job.created_at < asked_at {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(created(status, &job))
}

fn created(status: StatusCode, job: &Job) -> Response {
    (
        status,
        [(header::LOCATION, format!("/v1/jobs/{}", job.id))],
        axum::Json(job),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    jobs: Vec<NewJob>,
}

/// All or none: `201 Created` with `{"id", "jobs"}`, or the problem of the
/// first job refused (its `index` in the problem).
async fn submit_batch(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<BatchRequest>,
) -> Result<Response, ApiError> {
    if request.jobs.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_job",
            "a batch needs at least one job",
        ));
    }
    for job in &request.jobs {
        caller.may_act_for(&job.tenant_id)?;
    }
    let batch = state.engine.submit_batch(request.jobs).await?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/v1/batches/{}", batch.id))],
        axum::Json(batch),
    )
        .into_response())
}

async fn get_job(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(id): PathParams<JobId>,
) -> Result<axum::Json<Arc<Job>>, ApiError> {
    let job = state.engine.get(id).await?;
    caller.may_see(&job)?;
    Ok(axum::Json(job))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    tenant: Option<String>,
    namespace: Option<String>,
    status: Option<JobStatus>,
    kind: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

impl ListParams {
    fn query(self, caller: &Caller) -> Result<JobQuery, ApiError> {
        let mut query = JobQuery::tenant(caller.tenant(self.tenant)?);
        query.namespace = self.namespace;
        query.status = self.status;
        query.kind = self.kind.map(Into::into);
        query.cursor = self.cursor;
        if let Some(limit) = self.limit {
            if !(1..=JobQuery::MAX_LIMIT).contains(&limit) {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("limit must be 1 to {}", JobQuery::MAX_LIMIT),
                ));
            }
            query.limit = Some(limit);
        }
        Ok(query)
    }
}

/// A tenant's jobs, newest first, a page at a time.
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(params): QueryParams<ListParams>,
) -> Result<axum::Json<JobPage>, ApiError> {
    let query = params.query(&caller)?;
    Ok(axum::Json(state.engine.list(&query).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantParam {
    tenant: Option<String>,
}

async fn by_external_id(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(external_id): PathParams<String>,
    QueryParams(params): QueryParams<TenantParam>,
) -> Result<axum::Json<Arc<Job>>, ApiError> {
    let tenant = caller.tenant(params.tenant)?;
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

async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(id): PathParams<JobId>,
) -> Result<axum::Json<Arc<Job>>, ApiError> {
    caller.may_see(&*state.engine.get(id).await?)?;
    Ok(axum::Json(state.engine.cancel(id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitParams {
    timeout_ms: Option<u64>,
}

/// Long poll: the job once it has ended, or as it is at the timeout
/// (default and cap: the server's `max_wait`).
async fn wait(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(id): PathParams<JobId>,
    QueryParams(params): QueryParams<WaitParams>,
) -> Result<axum::Json<Arc<Job>>, ApiError> {
    caller.may_see(&*state.engine.get(id).await?)?;
    let timeout = params
        .timeout_ms
        .map_or(state.config.max_wait, Duration::from_millis)
        .min(state.config.max_wait);
    Ok(axum::Json(state.engine.wait(id, timeout).await?))
}

/// Server-Sent Events: first `job.state` with the job as it is, then
/// every event of the job (lifecycle, progress, partial results) up to
/// and including the terminal one.
async fn events(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(id): PathParams<JobId>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    // Subscribe before reading the job, so no event falls between the two.
    let events = state.engine.subscribe();
    let job = state.engine.get(id).await?;
    caller.may_see(&job)?;
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

/// How a batch's jobs stand: `{"id", "total", "jobs": {status: count}}`.
#[derive(serde::Serialize)]
struct BatchSummary {
    id: Uuid,
    total: u64,
    jobs: StatusCounts,
}

async fn batch(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(id): PathParams<Uuid>,
    QueryParams(params): QueryParams<TenantParam>,
) -> Result<axum::Json<BatchSummary>, ApiError> {
    let mut query = JobQuery::tenant(caller.tenant(params.tenant)?)
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
