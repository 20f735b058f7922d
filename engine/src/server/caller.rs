//! [`Caller`]: who is asking, from the request's API key, and what that
//! lets them see and do. Every route decides through it, so the tenant
//! boundary is drawn in one place.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use parking_lot::Mutex;
use work_host_api::{Job, JobId, NewJob};

use super::AppState;
use super::problem::ApiError;
use crate::auth::{Identity, Role};
use crate::registry::ToolScope;
use crate::scheduler::EngineError;
use crate::token_bucket::TokenBucket;

/// Who is calling.
#[derive(Debug, Clone, PartialEq)]
pub enum Caller {
    /// Authentication is off (`--insecure-no-auth`): may act for any
    /// tenant, named in the body or the query.
    Open,
    /// The holder of a valid key.
    Key(Arc<Identity>),
}

/// What a route needs of the caller's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Need {
    /// A submitter or an admin: jobs, tool calls, dead letters.
    Submit,
    /// An admin: keys, tools, quotas, the audit trail.
    Admin,
    /// The operator's key: shared tools, the operator's quota, stats,
    /// metrics.
    Operator,
}

impl Caller {
    /// What the audit trail names as the actor.
    pub(super) fn actor(&self) -> &str {
        match self {
            Self::Open => "anonymous",
            Self::Key(identity) => &identity.key_id,
        }
    }

    /// The caller's own tenant; `None` for one who acts for all.
    pub(super) fn own_tenant(&self) -> Option<&str> {
        match self {
            Self::Open => None,
            Self::Key(identity) => identity.tenant.as_deref(),
        }
    }

    /// Whether the caller acts for every tenant (the operator's key, or no
    /// authentication).
    pub(super) fn is_operator(&self) -> bool {
        self.own_tenant().is_none()
    }

    /// Refused with 403 unless the caller's role allows `need`.
    pub(super) fn require(&self, need: Need) -> Result<(), ApiError> {
        let Self::Key(identity) = self else {
            return Ok(());
        };
        let allowed = match need {
            Need::Submit => matches!(identity.role, Role::Admin | Role::Submitter),
            Need::Admin => identity.role == Role::Admin,
            Need::Operator => identity.role == Role::Admin && identity.is_operator(),
        };
        if allowed {
            return Ok(());
        }
        let what = match need {
            Need::Submit => "a submitter or admin key",
            Need::Admin => "an admin key",
            Need::Operator => "the operator's key",
        };
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this needs {what}; this key is a {} key", identity.role),
        ))
    }

    /// The tenant the caller acts for when it names `requested`: its own
    /// (naming another is refused), or, for one who acts for all, the one
    /// named (`default` when none is).
    pub(super) fn tenant(&self, requested: Option<&str>) -> Result<String, ApiError> {
        match (self.own_tenant(), requested) {
            (Some(own), None) => Ok(own.to_owned()),
            (Some(own), Some(requested)) if requested == own => Ok(own.to_owned()),
            (Some(_), Some(_)) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "tenant_mismatch",
                "this key acts for its own tenant only; leave the tenant out or name its own",
            )),
            (None, Some(requested)) => Ok(requested.to_owned()),
            (None, None) => Ok("default".to_owned()),
        }
    }

    /// The tenant a listing is narrowed to: the caller's own (naming
    /// another is refused), or, for one who acts for all, the one named, or
    /// none (every tenant's).
    pub(super) fn narrowed_to(&self, requested: Option<&str>) -> Result<Option<String>, ApiError> {
        match (self.is_operator(), requested) {
            (true, requested) => Ok(requested.map(str::to_owned)),
            (false, requested) => self.tenant(requested).map(Some),
        }
    }

    /// Fills in (or checks) the tenant of a job the caller submits.
    pub(super) fn own_job(&self, job: &mut NewJob) -> Result<(), ApiError> {
        let requested = (!job.tenant_id.is_empty()).then_some(job.tenant_id.as_str());
        job.tenant_id = self.tenant(requested)?.into();
        Ok(())
    }

    /// The job `id`, if the caller may see it; another tenant's job is
    /// "not found", exactly as one that does not exist.
    pub(super) async fn job(&self, state: &AppState, id: JobId) -> Result<Arc<Job>, ApiError> {
        let job = state.engine.get(id).await?;
        match self.own_tenant() {
            Some(own) if own != job.tenant_id.as_str() => Err(EngineError::NotFound { id }.into()),
            _ => Ok(job),
        }
    }

    /// Records in the audit trail that the caller asked for `action` on
    /// `job` (the change itself, when it comes, is recorded too).
    pub(super) fn asked(&self, state: &AppState, job: &Job, action: &'static str) {
        state.auth.record(
            self.actor(),
            Some(&job.tenant_id),
            action,
            Some(&job.id.to_string()),
            serde_json::Value::Null,
        );
    }

    /// Whose tools the caller sees and changes: its tenant's (and the
    /// shared ones), or, for one who acts for all, the shared ones.
    pub(super) fn tool_scope(&self) -> ToolScope<'_> {
        match self.own_tenant() {
            Some(tenant) => ToolScope::Tenant(tenant),
            None => ToolScope::Shared,
        }
    }

    /// Spends `jobs` submissions of the key's own rate, or refuses with
    /// 429 and when to try again.
    pub(super) fn spend(&self, limits: &KeyRates, jobs: usize) -> Result<(), ApiError> {
        let Self::Key(identity) = self else {
            return Ok(());
        };
        let Some(rate) = identity.rate_per_second else {
            return Ok(());
        };
        limits.spend(&identity.key_id, rate, jobs as f64)
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if !state.config.require_keys {
            return Ok(Self::Open);
        }
        let unauthorized =
            |code, detail: &str| ApiError::new(StatusCode::UNAUTHORIZED, code, detail);
        let value = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
            unauthorized(
                "missing_key",
                "send an API key: `Authorization: Bearer <key>`",
            )
        })?;
        let key = value
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| {
                unauthorized(
                    "malformed_key",
                    "the Authorization header must be `Bearer <key>`",
                )
            })?;
        Ok(Self::Key(state.auth.authenticate(key.trim())?))
    }
}

/// Extractors that let a request through only when its caller's role
/// allows the route: the role is checked before anything of the request
/// is read, so a caller without it learns nothing of how the request
/// would have been answered.
macro_rules! authorized {
    ($($(#[$doc:meta])* $name:ident => $need:expr;)*) => {$(
        $(#[$doc])*
        pub(super) struct $name(
            #[allow(dead_code, reason = "some routes need only the check")] pub(super) Caller,
        );

        impl FromRequestParts<AppState> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(
                parts: &mut Parts,
                state: &AppState,
            ) -> Result<Self, ApiError> {
                let caller = Caller::from_request_parts(parts, state).await?;
                caller.require($need)?;
                Ok(Self(caller))
            }
        }
    )*};
}

authorized! {
    /// A submitter or an admin.
    Submitter => Need::Submit;
    /// An admin (of a tenant, or the operator).
    Admin => Need::Admin;
    /// The operator's key.
    Operator => Need::Operator;
}

/// A token bucket for each key with a rate of its own (the scheduler's
/// [`TokenBucket`], as for a tenant's rate).
#[derive(Debug, Default)]
pub(super) struct KeyRates {
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

impl KeyRates {
    fn spend(&self, key: &str, rate: f64, jobs: f64) -> Result<(), ApiError> {
        let now = tokio::time::Instant::now();
        let mut buckets = self.buckets.lock();
        let bucket = buckets
            .entry(key.to_owned())
            .or_insert_with(|| TokenBucket::new(rate, now));
        bucket.take(jobs, now).map_err(|wait| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "this key may submit {rate} jobs per second; try again in {:.2} s",
                    wait.as_secs_f64()
                ),
            )
            .retry_after(wait.as_secs_f64().ceil() as u64)
        })
    }
}
