//! [`LocalBackend`]: native work as async Rust closures, in-process.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use work_host_api::{Backend, ExecContext, ExecError, Job, JobKind};

type Handler = Arc<
    dyn Fn(
            Job,
            ExecContext,
        ) -> Pin<Box<dyn Future<Output = Result<serde_json::Value, ExecError>> + Send>>
        + Send
        + Sync,
>;

/// Runs jobs of the kinds an embedder registers, each with an async
/// closure: the quick way to run native work (a training step, a call to an
/// inference server) under the engine's scheduling, retries and events.
///
/// ```
/// use work_engine::backends::LocalBackend;
/// use work_engine::{ExecError, OutcomeClass};
///
/// let backend = LocalBackend::new().handle("training_step", |job, ctx| async move {
///     for step in 1..=3 {
///         if ctx.is_cancelled() {
///             return Err(ExecError::new(OutcomeClass::Canceled, "stopped"));
///         }
///         ctx.progress(step as f32 / 3.0, format!("step {step}"));
///     }
///     Ok(serde_json::json!({"loss": 0.1, "devices": ctx.devices().len(), "job": job.id}))
/// });
/// ```
#[derive(Clone, Default)]
pub struct LocalBackend {
    handlers: HashMap<JobKind, Handler>,
}

impl std::fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBackend")
            .field("kinds", &self.handlers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl LocalBackend {
    /// A backend with no kinds yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs jobs of `kind` with `handler`; replaces an earlier handler of
    /// the same kind.
    pub fn handle<F, Fut>(mut self, kind: impl Into<JobKind>, handler: F) -> Self
    where
        F: Fn(Job, ExecContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<serde_json::Value, ExecError>> + Send + 'static,
    {
        self.handlers.insert(
            kind.into(),
            Arc::new(move |job, ctx| Box::pin(handler(job, ctx))),
        );
        self
    }
}

#[async_trait::async_trait]
impl Backend for LocalBackend {
    fn name(&self) -> &str {
        "local"
    }

    fn supports(&self, job: &Job) -> bool {
        self.handlers.contains_key(&job.kind)
    }

    async fn execute(&self, job: &Job, ctx: ExecContext) -> Result<serde_json::Value, ExecError> {
        match self.handlers.get(&job.kind) {
            Some(handler) => handler(job.clone(), ctx).await,
            None => Err(ExecError::new(
                work_host_api::OutcomeClass::BackendError,
                format!("no handler for kind `{}`", job.kind),
            )),
        }
    }
}
