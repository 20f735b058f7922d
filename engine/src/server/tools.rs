//! `/v1/tools`: register, list, show, export, remove and call tools.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::multipart::MultipartError;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, RawQuery, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use work_host_api::{CompactString, Job, NewJob, Priority, Resources};

use super::caller::{Admin, Submitter};
use super::problem::{ApiError, JsonBody, PathParams, QueryParams, Refused, body_rejection};
use super::{AppState, ServerConfig, blocking, located};
use crate::auth::acting_as;
use crate::registry::{DeclarationFormat, ToolManifest};
use crate::runtime::{DirGrant, Grants};

pub(super) fn routes(config: &ServerConfig) -> OpenApiRouter<AppState> {
    let (schemas, paths, upload) = routes!(register, list);
    let upload = upload.layer(DefaultBodyLimit::max(config.max_upload_bytes));
    OpenApiRouter::new()
        .routes((schemas, paths, upload))
        .routes(routes!(show, remove))
        .routes(routes!(call))
}

/// `POST /v1/tools?allow_dir=HOST[:GUEST][:rw]&allow_env=NAME`: the
/// component as the body (`application/wasm` or any binary type), or as
/// the `component` part of a `multipart/form-data` body. `201 Created`
/// with the manifest.
#[utoipa::path(
    post, path = "/v1/tools", tag = "tools",
    params(
        ("allow_dir" = Option<Vec<String>>, Query, description = "Preopen HOST[:GUEST][:rw] for the tool; repeatable"),
        ("allow_env" = Option<Vec<String>>, Query, description = "Let the tool see this environment variable; repeatable"),
    ),
    request_body(
        content((Vec<u8> = "application/wasm"), (Vec<u8> = "multipart/form-data")),
        description = "The component: the whole body, or the `component` part of a form",
    ),
    responses(
        (status = 201, description = "Registered", body = ToolManifest),
        Refused,
    )
)]
async fn register(
    State(state): State<AppState>,
    Admin(caller): Admin,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    // The body first, even when the query is refused: a refusal that left
    // it unread would close the connection under a client that may already
    // be sending its next request on it.
    let wasm = component(request, &state).await?;
    let grants = grants(query.as_deref().unwrap_or(""))?;
    if !caller.is_operator() && grants != Grants::default() {
        // A grant opens the host to the guest: only the operator does that.
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "grant_forbidden",
            "only the operator's key may grant a tool directories or environment variables",
        ));
    }
    let manifest = state
        .host
        .register_in(caller.tool_scope(), &wasm, grants)
        .await?
        .manifest;
    state.auth.record(
        caller.actor(),
        manifest.tenant.as_deref(),
        "tool.registered",
        Some(&manifest.name),
        serde_json::json!({ "version": manifest.version, "component": manifest.component }),
    );
    Ok(located(
        StatusCode::CREATED,
        format!("/v1/tools/{}", manifest.name),
        manifest,
    ))
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
    let refused = |err: MultipartError| body_rejection(err.status(), err.body_text());
    // Every part is read, the ones after `component` too: a body left
    // unread closes the connection.
    let mut component = None;
    while let Some(field) = form.next_field().await.map_err(refused)? {
        if component.is_none() && field.name() == Some("component") {
            component = Some(field.bytes().await.map_err(refused)?);
        }
    }
    component.ok_or_else(|| {
        ApiError::bad_request(
            "missing_component",
            "the multipart body has no `component` part",
        )
    })
}

/// The newest version of every tool the caller sees: its tenant's own and
/// the shared ones.
#[utoipa::path(
    get, path = "/v1/tools", tag = "tools",
    responses(
        (status = 200, description = "The newest version of every tool the caller sees", body = Vec<ToolManifest>),
        Refused,
    )
)]
async fn list(
    State(state): State<AppState>,
    Submitter(caller): Submitter,
) -> Result<axum::Json<Vec<ToolManifest>>, ApiError> {
    let host = Arc::clone(&state.host);
    Ok(axum::Json(
        blocking(move || host.list(caller.tool_scope())).await?,
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ShowParams {
    /// The tool as a function declaration for this API.
    format: Option<DeclarationFormat>,
}

/// A tool: its newest version in full, and every version's number.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct ToolDetails {
    #[serde(flatten)]
    latest: ToolManifest,
    /// Every registered version, oldest first.
    versions: Vec<String>,
}

/// `GET /v1/tools/{name}[?format=openai|gemini|mcp]`.
#[utoipa::path(
    get, path = "/v1/tools/{name}", tag = "tools",
    params(("name" = String, Path, description = "The tool"), ShowParams),
    responses(
        (status = 200, description = "The newest version and every version's number; with `format`, the declaration in that format", body = ToolDetails),
        Refused,
    )
)]
async fn show(
    State(state): State<AppState>,
    Submitter(caller): Submitter,
    PathParams(name): PathParams<String>,
    QueryParams(params): QueryParams<ShowParams>,
) -> Result<Response, ApiError> {
    let host = Arc::clone(&state.host);
    let lookup = name.clone();
    let mut versions = blocking(move || host.versions(caller.tool_scope(), &lookup)).await?;
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
#[utoipa::path(
    delete, path = "/v1/tools/{name}", tag = "tools",
    params(("name" = String, Path, description = "`name` (every version) or `name@version`")),
    responses(
        (status = 200, description = "The manifests removed", body = Vec<ToolManifest>),
        Refused,
    )
)]
async fn remove(
    State(state): State<AppState>,
    Admin(caller): Admin,
    PathParams(name): PathParams<String>,
) -> Result<axum::Json<Vec<ToolManifest>>, ApiError> {
    let host = Arc::clone(&state.host);
    let actor = caller.clone();
    let tool = name.clone();
    let removed = blocking(move || host.remove(actor.tool_scope(), &tool)).await?;
    state.auth.record(
        caller.actor(),
        caller.own_tenant(),
        "tool.removed",
        Some(&name),
        serde_json::json!({
            "versions": removed.iter().map(|m| m.version.as_str()).collect::<Vec<_>>(),
        }),
    );
    Ok(axum::Json(removed))
}

/// A synchronous call.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CallRequest {
    /// The tenant the call runs for: the key's own (without
    /// authentication, default `default`).
    #[schema(value_type = Option<String>)]
    tenant_id: Option<CompactString>,
    /// The tool's arguments.
    args: serde_json::Value,
    /// A grouping within the tenant.
    #[schema(value_type = Option<String>)]
    namespace: Option<CompactString>,
    /// Limits of the call (`timeout_ms`, `fuel`, `memory_mb`, …).
    #[serde(default)]
    resources: Resources,
    /// Free-form, kept with the job.
    #[serde(default)]
    metadata: serde_json::Value,
}

/// A synchronous call: a `realtime` tool-call job, waited for. `200 OK`
/// with the ended job (its `status`, `result` or `error`), or `202
/// Accepted` with the job as it is when the server's wait limit passes.
#[utoipa::path(
    post, path = "/v1/tools/{name}/call", tag = "tools",
    params(("name" = String, Path, description = "`name` or `name@version`")),
    request_body = CallRequest,
    responses(
        (status = 200, description = "The job, ended: its `status`, `result` or `error`", body = Job),
        (status = 202, description = "The job, not ended when the server's wait limit passed", body = Job),
        Refused,
    )
)]
async fn call(
    State(state): State<AppState>,
    Submitter(caller): Submitter,
    PathParams(name): PathParams<String>,
    JsonBody(request): JsonBody<CallRequest>,
) -> Result<Response, ApiError> {
    let tenant = caller.tenant(request.tenant_id.as_deref())?;
    caller.spend(&state.rates, 1)?;
    let mut job = NewJob::tool_call(tenant, &name, request.args)
        .with_priority(Priority::Realtime)
        .with_resources(request.resources);
    if let Some(namespace) = request.namespace {
        job = job.with_namespace(namespace);
    }
    job.metadata = request.metadata;
    let job: Arc<Job> = acting_as(
        caller.actor().to_owned(),
        state.engine.call(job, state.config.max_wait),
    )
    .await?;
    let status = if job.status.is_terminal() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok(located(status, format!("/v1/jobs/{}", job.id), job))
}
