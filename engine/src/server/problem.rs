//! [`ApiError`]: every refusal as an RFC 9457 problem document, and the
//! extractors that turn malformed requests into one.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Violation;
use crate::auth::AuthError;
use crate::scheduler::EngineError;
use crate::store::StoreError;

/// A refused request: the HTTP status, a stable snake_case `code` that
/// clients match on, and a message that says what to fix. Answered as a
/// [`Problem`] document.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
    violations: Option<Vec<Violation>>,
    index: Option<usize>,
    retry_after_secs: Option<u64>,
}

/// An RFC 9457 problem document (`application/problem+json`):
///
/// ```json
/// {"type": "about:blank", "title": "Unprocessable Entity", "status": 422,
///  "code": "invalid_args", "detail": "invalid arguments for `calculator`: …",
///  "violations": [{"path": "/a", "message": "\"x\" is not of type \"number\""}]}
/// ```
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// Always `about:blank`: `code` says which problem it is.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The HTTP status's reason phrase.
    pub title: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// Stable, machine-readable reason (`invalid_args`, `not_found`, …).
    pub code: &'static str,
    /// What went wrong and what to fix.
    pub detail: String,
    /// For `invalid_args`: every violation, with its JSON path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub violations: Option<Vec<Violation>>,
    /// For a refused batch: the position of the job refused, from 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
}

/// Any refusal, as the OpenAPI document lists it in every route's
/// responses.
#[derive(utoipa::IntoResponses)]
#[response(
    status = "4XX",
    description = "Refused: a problem document with a stable `code`",
    content_type = "application/problem+json"
)]
#[expect(dead_code, reason = "only the type is used: it documents responses")]
pub(crate) struct Refused(#[to_schema] Problem);

impl ApiError {
    /// A problem with `status`, `code` and `detail`.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            violations: None,
            index: None,
            retry_after_secs: None,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    fn violations(mut self, violations: Vec<Violation>) -> Self {
        self.violations = Some(violations);
        self
    }

    pub(crate) fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs.max(1));
        self
    }

    pub(crate) fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    pub(crate) fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let document = Problem {
            kind: "about:blank",
            title: self.status.canonical_reason().unwrap_or("Error"),
            status: self.status.as_u16(),
            code: self.code,
            detail: self.detail,
            violations: self.violations,
            index: self.index,
        };
        let body = serde_json::to_vec(&document).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        let unauthorized = |code| Self::new(StatusCode::UNAUTHORIZED, code, err.to_string());
        match &err {
            AuthError::Malformed => unauthorized("malformed_key"),
            AuthError::Unknown => unauthorized("unknown_key"),
            AuthError::Revoked => unauthorized("revoked_key"),
            AuthError::Expired => unauthorized("expired_key"),
            AuthError::NotFound(_) => Self::not_found(err.to_string()),
            AuthError::Invalid(_) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", err.to_string())
            }
            _ => {
                tracing::error!(%err, "auth store failed");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "auth_unavailable",
                    "the key store could not be read; try again",
                )
                .retry_after(1)
            }
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(err: EngineError) -> Self {
        let code = err.code();
        let detail = err.to_string();
        let (inner, index) = match err {
            EngineError::Batch { index, source } => (*source, Some(index)),
            other => (other, None),
        };
        let status = match &inner {
            EngineError::InvalidJob { .. }
            | EngineError::InvalidArgs { .. }
            | EngineError::UnknownTool { .. }
            | EngineError::UnknownKind { .. }
            | EngineError::UnknownDependency { .. }
            | EngineError::Unsatisfiable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            EngineError::QuotaExceeded { .. } | EngineError::RateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            EngineError::QueueFull { .. } => StatusCode::SERVICE_UNAVAILABLE,
            EngineError::NotFound { .. } => StatusCode::NOT_FOUND,
            EngineError::NotDeadLettered { .. } => StatusCode::CONFLICT,
            EngineError::Store(StoreError::InvalidCursor(_)) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut problem = Self::new(status, code, detail);
        problem.index = index;
        match inner {
            EngineError::InvalidArgs { violations, .. } => problem.violations(violations),
            EngineError::RateLimited { retry_after, .. } => {
                problem.retry_after(retry_after.as_secs_f64().ceil() as u64)
            }
            EngineError::QueueFull { .. } => problem.retry_after(1),
            _ => problem,
        }
    }
}

impl From<crate::Error> for ApiError {
    fn from(err: crate::Error) -> Self {
        use crate::Error;
        let detail = err.to_string();
        match err {
            Error::ToolNotFound { .. } => Self::new(StatusCode::NOT_FOUND, "unknown_tool", detail),
            Error::InvalidArgs { violations, .. } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_args", detail)
                    .violations(violations)
            }
            Error::ArgsTooLarge { .. } => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "args_too_large", detail)
            }
            Error::LimitOutOfRange { .. } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "limit_out_of_range",
                detail,
            ),
            Error::NotWasm
            | Error::CoreModule
            | Error::InvalidComponent { .. }
            | Error::WrongWorld { .. }
            | Error::InvalidSpec { .. } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_component",
                detail,
            ),
            Error::Grant(_) => Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_grant", detail),
            Error::CorruptRegistry { .. } | Error::Io(_) | Error::Runtime { .. } => {
                tracing::error!(%detail, "tool registry failure");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail)
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let detail = rejection.body_text();
        match rejection {
            JsonRejection::JsonDataError(_) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", detail)
            }
            JsonRejection::JsonSyntaxError(_) => Self::bad_request("malformed_json", detail),
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `content-type: application/json`",
            ),
            other => body_rejection(other.status(), detail),
        }
    }
}

/// A body that could not be read: too large (413) or cut off.
pub(crate) fn body_rejection(status: StatusCode, detail: String) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(status, "body_too_large", detail)
    } else {
        ApiError::bad_request("unreadable_body", detail)
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::bad_request("invalid_path", rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request("invalid_query", rejection.body_text())
    }
}

/// Wraps one of axum's extractors so that its rejection is a problem
/// document.
macro_rules! problem_extractor {
    ($(#[$doc:meta])* $name:ident, $inner:ty, $trait:ident, $from:ident, $arg:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default)]
        pub struct $name<T>(pub T);

        impl<S, T> $trait<S> for $name<T>
        where
            S: Send + Sync,
            T: DeserializeOwned + Send,
        {
            type Rejection = ApiError;

            async fn $from(req: $arg, state: &S) -> Result<Self, ApiError> {
                let extracted = <$inner as $trait<S>>::$from(req, state).await?;
                Ok(Self(extracted.0))
            }
        }
    };
}

problem_extractor!(
    /// A JSON body (`content-type: application/json`).
    JsonBody, axum::Json<T>, FromRequest, from_request, Request
);
problem_extractor!(
    /// Path parameters.
    PathParams, axum::extract::Path<T>, FromRequestParts, from_request_parts, &mut Parts
);
problem_extractor!(
    /// Query parameters.
    QueryParams, axum::extract::Query<T>, FromRequestParts, from_request_parts, &mut Parts
);
