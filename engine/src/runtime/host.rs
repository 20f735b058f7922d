//! The per-call state of a store and the `work:tool/host` imports.

use super::bindings_impl::work::tool::host as wit;
use super::limiter::MemoryLimiter;
use super::output::BoundedOutput;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Severity of a guest's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal progress.
    Info,
    /// Something unexpected but handled.
    Warn,
    /// A failure.
    Error,
}

impl From<wit::LogLevel> for LogLevel {
    fn from(level: wit::LogLevel) -> Self {
        match level {
            wit::LogLevel::Trace => Self::Trace,
            wit::LogLevel::Debug => Self::Debug,
            wit::LogLevel::Info => Self::Info,
            wit::LogLevel::Warn => Self::Warn,
            wit::LogLevel::Error => Self::Error,
        }
    }
}

/// Something a tool reported while it ran, in the order it happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CallEvent {
    /// A line from `host.log`.
    Log {
        /// Its severity.
        level: LogLevel,
        /// Its text, truncated to the log budget.
        message: String,
    },
    /// A `host.progress` report.
    Progress {
        /// From 0.0 to 1.0.
        fraction: f32,
        /// What the tool is doing.
        message: String,
    },
    /// A partial result from `host.emit`.
    Partial {
        /// The partial result.
        value: serde_json::Value,
    },
}

/// Receives a call's events as they happen, on the thread running the call.
/// It must return quickly: the guest waits for it.
pub type EventSink = Arc<dyn Fn(&CallEvent) + Send + Sync>;

/// Everything a store holds for one call.
pub(crate) struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) host: HostContext,
}

impl CallState {
    pub(crate) fn new(wasi: WasiCtx, limiter: MemoryLimiter, host: HostContext) -> Self {
        Self {
            wasi,
            table: ResourceTable::new(),
            limiter,
            host,
        }
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// What the host imports need to know about the call.
pub(crate) struct HostContext {
    pub(crate) tool: Arc<str>,
    pub(crate) call_id: Uuid,
    pub(crate) attempt: u32,
    pub(crate) cancel: Option<CancellationToken>,
    pub(crate) events: Option<EventSink>,
    pub(crate) log_budget: usize,
    pub(crate) max_partial_bytes: usize,
    /// The guest's stderr, where a Rust panic message lands.
    pub(crate) stderr: BoundedOutput,
    /// Why a host import trapped the guest, for the classifier.
    pub(crate) fault: Option<GuestFault>,
}

impl HostContext {
    fn send(&self, event: CallEvent) {
        if let Some(events) = &self.events {
            events(&event);
        }
    }

    /// Takes up to the remaining log budget from `message`.
    fn budgeted(&mut self, message: String) -> Option<String> {
        if self.log_budget == 0 {
            return None;
        }
        let mut message = message;
        if message.len() > self.log_budget {
            let mut end = self.log_budget;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        self.log_budget = self.log_budget.saturating_sub(message.len());
        Some(message)
    }
}

/// Whether a call's optional cancellation token has fired.
pub(crate) fn is_cancelled(token: Option<&CancellationToken>) -> bool {
    token.is_some_and(CancellationToken::is_cancelled)
}

/// A guest broke the host interface's contract; the call traps with this.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub(crate) struct GuestFault(pub(crate) String);

impl wit::Host for CallState {
    fn log(&mut self, level: wit::LogLevel, message: String) {
        let Some(message) = self.host.budgeted(message) else {
            return;
        };
        let level = LogLevel::from(level);
        let (tool, call_id) = (&*self.host.tool, self.host.call_id);
        match level {
            LogLevel::Trace => {
                tracing::trace!(target: "work_engine::guest", tool, %call_id, "{message}")
            }
            LogLevel::Debug => {
                tracing::debug!(target: "work_engine::guest", tool, %call_id, "{message}")
            }
            LogLevel::Info => {
                tracing::info!(target: "work_engine::guest", tool, %call_id, "{message}")
            }
            LogLevel::Warn => {
                tracing::warn!(target: "work_engine::guest", tool, %call_id, "{message}")
            }
            LogLevel::Error => {
                tracing::error!(target: "work_engine::guest", tool, %call_id, "{message}")
            }
        }
        self.host.send(CallEvent::Log { level, message });
    }

    fn progress(&mut self, fraction: f32, message: String) {
        let fraction = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        let Some(message) = self.host.budgeted(message) else {
            return;
        };
        self.host.send(CallEvent::Progress { fraction, message });
    }

    fn emit(&mut self, partial: String) -> wasmtime::Result<()> {
        let fault = if partial.len() > self.host.max_partial_bytes {
            GuestFault(format!(
                "partial result of {} bytes is over the {}-byte limit",
                partial.len(),
                self.host.max_partial_bytes
            ))
        } else {
            match serde_json::from_str(&partial) {
                Ok(value) => {
                    self.host.send(CallEvent::Partial { value });
                    return Ok(());
                }
                Err(err) => GuestFault(format!("partial result is not JSON: {err}")),
            }
        };
        self.host.fault = Some(fault.clone());
        Err(wasmtime::Error::new(fault))
    }

    fn cancelled(&mut self) -> bool {
        is_cancelled(self.host.cancel.as_ref())
    }

    fn attempt(&mut self) -> u32 {
        self.host.attempt
    }
}

impl super::bindings_impl::work::tool::types::Host for CallState {}
