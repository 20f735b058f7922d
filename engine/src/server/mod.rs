//! The HTTP API (`/v1`, JSON) over an [`Engine`] and its [`ToolHost`]:
//! a thin layer that parses, calls the engine and maps its errors to
//! problem documents ([`ApiError`]).
//!
//! ```no_run
//! # async fn demo(engine: work_engine::Engine, host: std::sync::Arc<work_engine::ToolHost>,
//! #     auth: std::sync::Arc<work_engine::auth::AuthStore>) -> std::io::Result<()> {
//! use work_engine::server::{Server, ServerConfig};
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let server = Server::new(engine, host, auth, ServerConfig::default());
//! server.run(listener, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```
//!
//! Routes by concern: jobs (`/v1/jobs`, `/v1/batches`), tools
//! (`/v1/tools`), access (`/v1/keys`, `/v1/tenants`, `/v1/audit`),
//! operations (`/v1/stats`, `/v1/dead-letters`, `/metrics`, `/healthz`).
//! Who the caller is, and so which tenant it acts for and what it may do,
//! comes from its API key through [`Caller`]: every route decides there.

mod access;
mod caller;
mod jobs;
mod metrics;
mod ops;
mod problem;
mod tools;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use caller::Caller;
pub use problem::{ApiError, Problem};

use crate::auth::AuthStore;
use crate::{Engine, ToolHost};

/// Limits and timings of the HTTP layer.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// The largest JSON request body, in bytes (413 above).
    pub max_body_bytes: usize,
    /// The largest tool upload (`POST /v1/tools`), in bytes.
    pub max_upload_bytes: usize,
    /// The longest a `wait` or a synchronous tool call holds a request.
    pub max_wait: Duration,
    /// How long a shutdown lets running jobs finish before it stops.
    pub shutdown_grace: Duration,
    /// Whether every `/v1` route needs an API key (`false` only for
    /// `--insecure-no-auth`: every caller acts for any tenant).
    pub require_keys: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 << 20,
            max_upload_bytes: 64 << 20,
            max_wait: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            require_keys: true,
        }
    }
}

/// How long requests still open after a shutdown has drained the running
/// jobs may take to finish.
const REQUEST_GRACE: Duration = Duration::from_secs(1);

/// What every handler shares, behind one `Arc`: extractors clone the
/// state for every request, and one reference count is cheaper to touch
/// from every core than five.
#[derive(Clone)]
pub(crate) struct AppState(Arc<Shared>);

pub(crate) struct Shared {
    engine: Engine,
    host: Arc<ToolHost>,
    auth: Arc<AuthStore>,
    rates: caller::KeyRates,
    config: ServerConfig,
    draining: AtomicBool,
    /// The OpenAPI document, from the annotations the router is built from.
    openapi: Arc<utoipa::openapi::OpenApi>,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The document's frame; the routes fill in its paths and schemas.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "work-engine",
        description = "Jobs, tools and operations of a work-engine server. Every refusal is a \
            problem document (RFC 9457) with a stable `code`."
    ),
    tags(
        (name = "jobs", description = "Submit, read, list, cancel, wait for and watch jobs"),
        (name = "tools", description = "Register, inspect, remove and call tools"),
        (name = "access", description = "API keys, tenants' quotas, the audit trail"),
        (name = "operations", description = "Stats, dead letters, health, metrics, this document"),
    ),
    // Every route needs a key unless its own `security(())` says not.
    modifiers(&BearerKeys),
    security(("api_key" = [])),
    // Named only in query parameters and in the problem document every
    // route inlines, which do not carry their schemas along.
    components(schemas(
        crate::registry::DeclarationFormat,
        work_host_api::JobStatus,
        Problem,
        work_host_api::Violation
    ))
)]
struct ApiDoc;

/// The `api_key` scheme: `Authorization: Bearer wk_live_…`.
struct BearerKeys;

impl utoipa::Modify for BearerKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "api_key",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some("An API key: `wk_live_<id>_<secret>`"))
                        .build(),
                ),
            );
    }
}

/// The HTTP server: an [`Engine`] and its [`ToolHost`] behind the `/v1`
/// routes.
pub struct Server {
    state: AppState,
}

impl Server {
    /// A server over `engine`, whose `tool_call` jobs run on `host`, with
    /// keys and the audit trail in `auth`. The engine should be built with
    /// [`AuthStore::observer`] so its steps reach the audit trail.
    pub fn new(
        engine: Engine,
        host: Arc<ToolHost>,
        auth: Arc<AuthStore>,
        config: ServerConfig,
    ) -> Self {
        let openapi = Arc::new(Self::routes(&config).into_openapi());
        Self {
            state: AppState(Arc::new(Shared {
                engine,
                host,
                auth,
                rates: caller::KeyRates::default(),
                config,
                draining: AtomicBool::new(false),
                openapi,
            })),
        }
    }

    /// Every route, with its limits and error handling.
    pub fn router(&self) -> Router {
        let state = self.state.clone();
        Router::from(Self::routes(&state.config))
            .fallback(unknown_route)
            .method_not_allowed_fallback(wrong_method)
            .layer(middleware::from_fn_with_state(
                state.clone(),
                refuse_while_draining,
            ))
            .layer(middleware::from_fn(close_after_unread_body))
            .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
            .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
            .with_state(state)
    }

    /// The OpenAPI document of every route ([`Server::router`] serves it at
    /// `/openapi.json`).
    pub fn openapi(&self) -> utoipa::openapi::OpenApi {
        (*self.state.openapi).clone()
    }

    /// The routes and their documentation, from the same annotations: a
    /// route cannot exist undocumented.
    fn routes(config: &ServerConfig) -> OpenApiRouter<AppState> {
        OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
            .merge(jobs::routes())
            .merge(tools::routes(config))
            .merge(access::routes())
            .merge(ops::routes())
            .routes(routes!(openapi_json))
    }

    /// Serves on `listener` until `shutdown` resolves; then refuses new
    /// work (503), lets running jobs finish for up to the configured grace
    /// and returns.
    ///
    /// # Errors
    ///
    /// When the listener fails.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let router = self.router();
        let state = self.state;
        let (drained, stopped) = tokio::sync::oneshot::channel();
        let stopping = async move {
            shutdown.await;
            state.draining.store(true, Ordering::SeqCst);
            tracing::info!("shutting down: refusing new work, letting running jobs finish");
            let deadline = tokio::time::Instant::now() + state.config.shutdown_grace;
            while state.engine.stats().jobs.running > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = drained.send(());
        };
        // Small writes go out at once: an event of a stream, or an answer,
        // must not wait for the client's delayed ACK (Nagle's algorithm).
        let listener = listener.tap_io(|connection| {
            if let Err(err) = connection.set_nodelay(true) {
                tracing::debug!(%err, "could not set TCP_NODELAY");
            }
        });
        let serving = axum::serve(listener, router)
            .with_graceful_shutdown(stopping)
            .into_future();
        // Once drained, open requests (an event stream, a long poll) get a
        // moment to finish, then are cut: they must not keep the server up.
        let cut_off = async {
            if stopped.await.is_ok() {
                tokio::time::sleep(REQUEST_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            result = serving => result,
            () = cut_off => Ok(()),
        }
    }
}

/// This document.
#[utoipa::path(
    get, path = "/openapi.json", tag = "operations", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", body = serde_json::Value))
)]
async fn openapi_json(State(state): State<AppState>) -> axum::Json<Arc<utoipa::openapi::OpenApi>> {
    axum::Json(Arc::clone(&state.openapi))
}

/// While shutting down, every request that would start work is refused.
async fn refuse_while_draining(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if state.draining.load(Ordering::SeqCst) && request.method() != axum::http::Method::GET {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down and accepts no new work",
        )
        .into_response();
    }
    next.run(request).await
}

/// An answer given without reading the request's body to its end (a
/// missing key, a role too small, a body too large, a refusal before the
/// handler reads it) closes the connection, and says so: the unread rest
/// of the body is still on its way, so the connection cannot carry another
/// request, and a client that saw no `Connection: close` might send its
/// next request on it and lose it. Whether the body was read is watched
/// on the body itself, so no route can forget to say it.
async fn close_after_unread_body(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    // A request without a body has been read already.
    let read = Arc::new(AtomicBool::new(http_body::Body::is_end_stream(&body)));
    let body = ReadToEnd {
        inner: body,
        read: Arc::clone(&read),
    };
    let mut response = next
        .run(Request::from_parts(parts, axum::body::Body::new(body)))
        .await;
    if !read.load(Ordering::Relaxed) {
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

/// A request body that notes when it has been read to its end.
struct ReadToEnd {
    inner: axum::body::Body,
    read: Arc<AtomicBool>,
}

impl http_body::Body for ReadToEnd {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None)) || self.inner.is_end_stream() {
            self.read.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

async fn unknown_route(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_route",
        format!("no route {} {}", request.method(), request.uri().path()),
    )
}

async fn wrong_method(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
}

/// `status` with `body` as JSON and a `Location` header: what creating (or
/// finding) a resource answers.
fn located(status: StatusCode, location: String, body: impl serde::Serialize) -> Response {
    (
        status,
        [(axum::http::header::LOCATION, location)],
        axum::Json(body),
    )
        .into_response()
}

/// Runs file work (the registry, the audit trail) off the async threads.
async fn blocking<T: Send + 'static, E: Into<ApiError> + Send + 'static>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("a blocking task failed: {err}"),
            )
        })?
        .map_err(Into::into)
}

/// A handler that panicked: a bug, answered as one, never a dropped
/// connection.
fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "the server failed on this request",
    )
    .into_response()
}
