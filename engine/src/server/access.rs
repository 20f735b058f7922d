//! Access: `/v1/keys`, `/v1/tenants/{tenant}/quota`, `/v1/audit` and
//! `/v1/jobs/{id}/audit`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use work_host_api::JobId;

use super::caller::{Admin, Need, Submitter};
use super::problem::{ApiError, JsonBody, PathParams, QueryParams, Refused};
use super::{AppState, blocking, located};
use crate::auth::{AuditPage, AuditQuery, CreatedKey, KeyInfo, NewKey, Role, TenantQuota};
use crate::scheduler::Quota;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_key, list_keys))
        .routes(routes!(revoke_key))
        .routes(routes!(get_quota, set_quota))
        .routes(routes!(audit))
        .routes(routes!(job_audit))
}

/// A key to create.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct KeyRequest {
    /// Its tenant (an admin's own when left out).
    tenant: Option<String>,
    /// What it may do.
    role: Role,
    /// Make another operator's key (operator only; no tenant).
    #[serde(default)]
    operator: bool,
    /// Seconds until it stops working.
    expires_in_secs: Option<u64>,
    /// Its own limit on submissions per second.
    rate_per_second: Option<f64>,
    /// For a worker key: the job kinds or backends it may claim work for.
    #[serde(default)]
    capabilities: Vec<String>,
}

/// `201 Created` with the key: its secret is in this answer only.
#[utoipa::path(
    post, path = "/v1/keys", tag = "access",
    request_body = KeyRequest,
    responses(
        (status = 201, description = "Created; `key` is shown this once", body = CreatedKey),
        Refused,
    )
)]
async fn create_key(
    State(state): State<AppState>,
    Admin(caller): Admin,
    JsonBody(request): JsonBody<KeyRequest>,
) -> Result<Response, ApiError> {
    let tenant = if request.operator {
        caller.require(Need::Operator)?;
        if request.tenant.is_some() || request.role != Role::Admin {
            return Err(ApiError::bad_request(
                "invalid_key_request",
                "an operator's key is an admin key of no tenant",
            ));
        }
        None
    } else {
        Some(caller.tenant(request.tenant.as_deref())?)
    };
    let mut new = NewKey {
        tenant,
        role: request.role,
        expires_at: None,
        created_by: Some(caller.actor().to_owned()),
        rate_per_second: request.rate_per_second,
        capabilities: request.capabilities,
    };
    if let Some(secs) = request.expires_in_secs {
        new = new.expiring_in(Duration::from_secs(secs))?;
    }
    let created = state.auth.create_key(new)?;
    Ok(located(
        StatusCode::CREATED,
        format!("/v1/keys/{}", created.id),
        created,
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct TenantFilter {
    /// Only this tenant's (the operator's key; an admin sees its own).
    tenant: Option<String>,
}

/// Keys, without their secrets: an admin's tenant's, or (the operator)
/// every key or one tenant's.
#[utoipa::path(
    get, path = "/v1/keys", tag = "access",
    params(TenantFilter),
    responses(
        (status = 200, description = "The keys, oldest first; never a secret", body = Vec<KeyInfo>),
        Refused,
    )
)]
async fn list_keys(
    State(state): State<AppState>,
    Admin(caller): Admin,
    QueryParams(filter): QueryParams<TenantFilter>,
) -> Result<axum::Json<Vec<KeyInfo>>, ApiError> {
    let tenant = caller.narrowed_to(filter.tenant.as_deref())?;
    Ok(axum::Json(state.auth.list_keys(tenant.as_deref())?))
}

/// Revokes a key: its next request is refused.
#[utoipa::path(
    delete, path = "/v1/keys/{id}", tag = "access",
    params(("id" = String, Path, description = "The key's public id")),
    responses(
        (status = 200, description = "The key, revoked", body = KeyInfo),
        Refused,
    )
)]
async fn revoke_key(
    State(state): State<AppState>,
    Admin(caller): Admin,
    PathParams(id): PathParams<String>,
) -> Result<axum::Json<KeyInfo>, ApiError> {
    let revoked = state
        .auth
        .revoke_key(&id, caller.own_tenant(), caller.actor())?;
    Ok(axum::Json(revoked))
}

#[utoipa::path(
    get, path = "/v1/tenants/{tenant}/quota", tag = "access",
    params(("tenant" = String, Path, description = "The tenant")),
    responses(
        (status = 200, description = "The tenant's weight and quotas", body = TenantQuota),
        Refused,
    )
)]
async fn get_quota(
    State(state): State<AppState>,
    Admin(caller): Admin,
    PathParams(tenant): PathParams<String>,
) -> Result<axum::Json<TenantQuota>, ApiError> {
    let tenant = caller.tenant(Some(&tenant))?;
    Ok(axum::Json(state.auth.tenant_quota(&tenant)?))
}

/// A quota to set.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct QuotaRequest {
    /// The tenant's share within a level (the operator's key only).
    weight: Option<u32>,
    /// The limits; a field left out is unlimited.
    #[serde(default)]
    #[schema(value_type = Object)]
    quota: Quota,
}

/// Sets a tenant's quota: from the operator's key its `limit` (and
/// weight), from the tenant's admin its `own`. The scheduler enforces the
/// tighter of the two from the next submission on.
#[utoipa::path(
    put, path = "/v1/tenants/{tenant}/quota", tag = "access",
    params(("tenant" = String, Path, description = "The tenant")),
    request_body = QuotaRequest,
    responses(
        (status = 200, description = "The tenant's weight and quotas, as now enforced", body = TenantQuota),
        Refused,
    )
)]
async fn set_quota(
    State(state): State<AppState>,
    Admin(caller): Admin,
    PathParams(tenant): PathParams<String>,
    JsonBody(request): JsonBody<QuotaRequest>,
) -> Result<axum::Json<TenantQuota>, ApiError> {
    let tenant = caller.tenant(Some(&tenant))?;
    let mut limits = state.auth.tenant_limits(&tenant)?;
    if caller.is_operator() {
        limits.set_limit(request.quota, request.weight);
    } else if request.weight.is_some() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a tenant's weight is the operator's to set",
        ));
    } else {
        limits.own = request.quota;
    }
    let set = state
        .auth
        .set_tenant_limits(&tenant, limits, caller.actor())?;
    state.engine.set_tenant(&tenant, set.effective.clone());
    Ok(axum::Json(set))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct AuditParams {
    /// Only this tenant's (the operator's key; an admin sees its own).
    tenant: Option<String>,
    /// Only entries about this target (a job id, a key id, a tool, a
    /// tenant).
    target: Option<String>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// At most this many, 1 to 1000 (default 100).
    limit: Option<usize>,
}

/// The audit trail, oldest first: an admin's tenant's, or (the operator)
/// everyone's.
#[utoipa::path(
    get, path = "/v1/audit", tag = "access",
    params(AuditParams),
    responses(
        (status = 200, description = "A page of the trail, oldest first", body = AuditPage),
        Refused,
    )
)]
async fn audit(
    State(state): State<AppState>,
    Admin(caller): Admin,
    QueryParams(params): QueryParams<AuditParams>,
) -> Result<axum::Json<AuditPage>, ApiError> {
    let query = AuditQuery {
        tenant: caller.narrowed_to(params.tenant.as_deref())?,
        target: params.target,
        cursor: params.cursor,
        limit: super::jobs::page_limit(params.limit)?,
    };
    read_audit(state, query).await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct PageParams {
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// At most this many, 1 to 1000 (default 100).
    limit: Option<usize>,
}

/// Every state change of one job, and who caused it, oldest first.
#[utoipa::path(
    get, path = "/v1/jobs/{id}/audit", tag = "jobs",
    params(("id" = Uuid, Path, description = "The job"), PageParams),
    responses(
        (status = 200, description = "A page of the job's trail, oldest first", body = AuditPage),
        Refused,
    )
)]
async fn job_audit(
    State(state): State<AppState>,
    Submitter(caller): Submitter,
    PathParams(id): PathParams<JobId>,
    QueryParams(params): QueryParams<PageParams>,
) -> Result<axum::Json<AuditPage>, ApiError> {
    let job = caller.job(&state, id).await?;
    let query = AuditQuery {
        tenant: Some(job.tenant_id.to_string()),
        target: Some(id.to_string()),
        cursor: params.cursor,
        limit: super::jobs::page_limit(params.limit)?,
    };
    read_audit(state, query).await
}

/// Reads off the async threads: a read first waits for the writer.
async fn read_audit(state: AppState, query: AuditQuery) -> Result<axum::Json<AuditPage>, ApiError> {
    let auth = Arc::clone(&state.auth);
    Ok(axum::Json(blocking(move || auth.audit(&query)).await?))
}
