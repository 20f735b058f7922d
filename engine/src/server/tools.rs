//! `/v1/tools`: register, list, show, export, remove and call tools.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, RawQuery, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use work_host_api::{CompactString, Job, NewJob, Priority, Resources};

use super::problem::{ApiError, JsonBody, PathParams, QueryParams, body_rejection};
use super::{AppState, Caller, ServerConfig};
use crate::registry::{DeclarationFormat, ToolManifest};
use crate::runtime::{DirGrant, Grants};

pub(super) fn routes(config: &ServerConfig) -> Router<AppState> {
    Router::new()
        .route(
            "/v1/tools",
            post(register)
                .layer(DefaultBodyLimit::max(config.max_upload_bytes))
                .get(list),
        )
        .route("/v1/tools/{name}", get(show).delete(remove))
        .route("/v1/tools/{name}/call", post(call))
}

/// Runs the registry's file work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> crate::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("registry task failed: {err}"),
            )
        })?
        .map_err(ApiError::from)
}

/// `POST /v1/tools?allow_dir=HOST[:GUEST][:rw]&allow_env=NAME`: the
/// component as the body (`application/wasm` or any binary type), or as
/// the `component` part of a `multipart/form-data` body. `201 Created`
/// with the manifest.
async fn register(
    State(state): State<AppState>,
    _caller: Caller,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    let grants = grants(query.as_deref().unwrap_or(""))?;
    let wasm = component(request, &state).await?;
    let registered = state.host.register(&wasm, grants).await?;
    let manifest = registered.manifest;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/v1/tools/{}", manifest.name))],
        axum::Json(manifest),
    )
        .into_response())
}

fn grants(query: &str) -> Result<Grants, ApiError> {
    let mut grants = Grants::default();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "allow_dir" => grants
                .dirs
                .push(value.parse::<DirGrant>().map_err(crate::Error::Grant)?),
            "allow_env" => grants.env.push(value.into_owned()),
            other => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("unknown parameter `{other}` (expected allow_dir or allow_env)"),
                ));
            }
        }
    }
    Ok(grants)
}

/// The component's bytes, from a raw or a multipart body.
async fn component(request: Request, state: &AppState) -> Result<Bytes, ApiError> {
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("multipart/form-data"));
    if !multipart {
        return Bytes::from_request(request, state)
            .await
            .map_err(|rejection| body_rejection(rejection.status(), rejection.body_text()));
    }
    let mut form = Multipart::from_request(request, state)
        .await
        .map_err(|rejection| ApiError::bad_request("invalid_multipart", rejection.body_text()))?;
    loop {
        let field = form
            .next_field()
            .await
            .map_err(|err| body_rejection(err.status(), err.body_text()))?;
        let Some(field) = field else {
            return Err(ApiError::bad_request(
                "missing_component",
                "the multipart body has no `component` part",
            ));
        };
        if field.name() == Some("component") {
            return field
                .bytes()
                .await
                .map_err(|err| body_rejection(err.status(), err.body_text()));
        }
    }
}

/// The newest version of every tool.
async fn list(State(state): State<AppState>) -> Result<axum::Json<Vec<ToolManifest>>, ApiError> {
    let host = Arc::clone(&state.host);
    Ok(axum::Json(blocking(move || host.list()).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShowParams {
    format: Option<DeclarationFormat>,
}

/// A tool in full, or as a function declaration.
#[derive(Serialize)]
struct ToolDetails {
    #[serde(flatten)]
    latest: ToolManifest,
    /// Every registered version, oldest first.
    versions: Vec<String>,
}

/// `GET /v1/tools/{name}[?format=openai|gemini|mcp]`.
async fn show(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(params): QueryParams<ShowParams>,
) -> Result<Response, ApiError> {
    let host = Arc::clone(&state.host);
    let lookup = name.clone();
    let mut versions = blocking(move || host.versions(&lookup)).await?;
    let Some(latest) = versions.pop() else {
        return Err(ApiError::not_found(format!("unknown tool `{name}`")));
    };
    if let Some(format) = params.format {
        return Ok(axum::Json(latest.declaration(format)).into_response());
    }
    let mut names: Vec<String> = versions.into_iter().map(|m| m.version).collect();
    names.push(latest.version.clone());
    Ok(axum::Json(ToolDetails {
        latest,
        versions: names,
    })
    .into_response())
}

/// `DELETE /v1/tools/{name}` (every version) or `{name}@{version}`: the
/// manifests removed.
async fn remove(
    State(state): State<AppState>,
    _caller: Caller,
    PathParams(name): PathParams<String>,
) -> Result<axum::Json<Vec<ToolManifest>>, ApiError> {
    let host = Arc::clone(&state.host);
    Ok(axum::Json(blocking(move || host.remove(&name)).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallRequest {
    /// The tenant the call runs for (default `default`).
    tenant_id: Option<CompactString>,
    /// The tool's arguments.
    args: serde_json::Value,
    namespace: Option<CompactString>,
    #[serde(default)]
    resources: Resources,
    #[serde(default)]
    metadata: serde_json::Value,
}

/// A synchronous call: a `realtime` tool-call job, waited for. `200 OK`
/// with the ended job (its `status`, `result` or `error`), or `202
/// Accepted` with the job as it is when the server's wait limit passes.
async fn call(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(name): PathParams<String>,
    JsonBody(request): JsonBody<CallRequest>,
) -> Result<Response, ApiError> {
    let tenant = request.tenant_id.unwrap_or_else(|| "default".into());
    caller.may_act_for(&tenant)?;
    let mut job = NewJob::tool_call(tenant, &name, request.args)
        .with_priority(Priority::Realtime)
        .with_resources(request.resources);
    if let Some(namespace) = request.namespace {
        job = job.with_namespace(namespace);
    }
    job.metadata = request.metadata;
    let job = state.engine.submit(job).await?;
    let job: Arc<Job> = state.engine.wait(job.id, state.config.max_wait).await?;
    let status = if job.status.is_terminal() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((
        status,
        [(header::LOCATION, format!("/v1/jobs/{}", job.id))],
        axum::Json(job),
    )
        .into_response())
}
