//! [`WasmBackend`]: `tool_call` jobs in the WASM sandbox.

use std::sync::Arc;

use work_host_api::{
    AdmitError, Backend, ExecContext, ExecError, ExecUpdate, Job, JobKind, OutcomeClass, Violation,
};

use crate::Error;
use crate::registry::ToolScope;
use crate::runtime::{CallEvent, CallOptions, LogLevel};
use crate::tool_host::{ReadyTool, ToolHost};

/// Runs `tool_call` jobs: each attempt in its own fresh wasmtime instance,
/// limited by the job's `fuel`, `memory_mb` and `timeout_ms` (the sandbox's
/// defaults otherwise), interrupted at once when the job is cancelled.
///
/// At admission it checks that the tool exists and that the arguments match
/// its schema, so a bad call is refused before it is queued.
#[derive(Debug, Clone)]
pub struct WasmBackend {
    host: Arc<ToolHost>,
}

impl WasmBackend {
    /// A backend over `host`'s registered tools.
    pub fn new(host: Arc<ToolHost>) -> Self {
        Self { host }
    }

    /// The tool named by the job, as the job's tenant sees it (its own, or
    /// a shared one), and the JSON text of the job's arguments (`None`
    /// when the payload has none).
    async fn tool<'a>(
        &self,
        job: &'a Job,
    ) -> Result<(Arc<ReadyTool>, Option<&'a str>), AdmitError> {
        let call = job.tool_call().ok_or_else(|| {
            AdmitError::InvalidPayload(
                "a tool call's payload is {\"tool\": \"name[@version]\", \"args\": {...}}".into(),
            )
        })?;
        let ready = match self
            .host
            .loaded(ToolScope::Tenant(&job.tenant_id), &call.tool)
        {
            Some(ready) => ready,
            // Boxed: the rare path's large future stays out of every
            // admission's and every attempt's.
            None => Box::pin(self.load(&job.tenant_id, &call.tool)).await?,
        };
        Ok((ready, call.args))
    }

    /// Loads a tool the cache does not hold, compiling off the async
    /// threads.
    async fn load(&self, tenant: &str, tool: &str) -> Result<Arc<ReadyTool>, AdmitError> {
        let host = Arc::clone(&self.host);
        let (tenant, name) = (tenant.to_owned(), tool.to_owned());
        let loaded =
            tokio::task::spawn_blocking(move || host.prepare(ToolScope::Tenant(&tenant), &name))
                .await
                .map_err(|e| AdmitError::InvalidPayload(format!("loading the tool failed: {e}")))?;
        loaded.map_err(admit_error)
    }

    /// [`Backend::admit`], unboxed, as [`WasmBackend::run`] is.
    pub(crate) async fn check(&self, job: &Job) -> Result<(), AdmitError> {
        let (ready, args) = self.tool(job).await?;
        let args = args.filter(|args| *args != "null").ok_or_else(|| {
            AdmitError::InvalidArgs(vec![Violation {
                path: String::new(),
                message: "payload.args is missing".to_owned(),
            }])
        })?;
        self.host.check_args(&ready, args).map_err(admit_error)
    }

    /// [`Backend::execute`], unboxed: the engine calls it directly for
    /// the `wasm` backend it was built with
    /// ([`EngineBuilder::tool_host`](crate::EngineBuilder::tool_host)),
    /// so an attempt's call lives in the attempt's own future instead of
    /// a box of its own, allocated and written afresh at each attempt.
    pub(crate) async fn run(
        &self,
        job: &Job,
        ctx: ExecContext,
    ) -> Result<serde_json::Value, ExecError> {
        let (ready, args) = self
            .tool(job)
            .await
            .map_err(|e| ExecError::new(OutcomeClass::ToolError, e.to_string()))?;
        let (attempt, cancel) = (ctx.attempt(), ctx.cancel_token().clone());
        // The context moves into the sink, whole: a clone of it is a
        // clone of each of its handles.
        let sink = Arc::new(move |event: &CallEvent| {
            ctx.update(match event {
                CallEvent::Log { level, message } => ExecUpdate::Log {
                    level: level_name(*level).to_owned(),
                    message: message.clone(),
                },
                CallEvent::Progress { fraction, message } => ExecUpdate::Progress {
                    fraction: *fraction,
                    message: message.clone(),
                },
                CallEvent::Partial { value } => ExecUpdate::Partial {
                    value: value.clone(),
                },
            });
        });
        let resources = &job.resources;
        let options = CallOptions {
            fuel: resources.fuel,
            memory_mb: (resources.memory_mb > 0).then_some(resources.memory_mb),
            timeout: resources.timeout(),
            attempt: Some(attempt),
            cancel: Some(cancel),
            events: Some(sink),
            // The guest's log lines name the job they belong to.
            call_id: Some(job.id),
        };
        // The arguments were checked at admission; again only if the tool
        // its name finds may have changed since.
        let args = args.unwrap_or("null");
        let report = if ready.admitted(job.id) {
            self.host.call_checked(&ready, args, options).await
        } else {
            self.host.call_ready(&ready, args, options).await
        };
        let report = report.map_err(|err| match err {
            // The tool changed under the job since admission.
            Error::InvalidArgs { .. } | Error::ToolNotFound { .. } => {
                ExecError::new(OutcomeClass::ToolError, err.to_string())
            }
            other => ExecError::new(OutcomeClass::BackendError, other.to_string()),
        })?;
        report
            .outcome
            .map_err(|failure| ExecError::new(failure.class, failure.message))
    }
}

fn admit_error(err: Error) -> AdmitError {
    match err {
        Error::InvalidArgs { violations, .. } => AdmitError::InvalidArgs(violations),
        Error::ToolNotFound { name } => AdmitError::UnknownTool(name),
        other => AdmitError::InvalidPayload(other.to_string()),
    }
}

#[async_trait::async_trait]
impl Backend for WasmBackend {
    fn name(&self) -> &str {
        "wasm"
    }

    fn supports(&self, job: &Job) -> bool {
        job.kind == JobKind::ToolCall
    }

    async fn admit(&self, job: &Job) -> Result<(), AdmitError> {
        self.check(job).await
    }

    async fn execute(&self, job: &Job, ctx: ExecContext) -> Result<serde_json::Value, ExecError> {
        self.run(job, ctx).await
    }
}

fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Trace => "trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    }
}
