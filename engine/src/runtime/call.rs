//! One call: a fresh store with its limits, the guest's entry point, and the
//! classification of how it ended.

use super::bindings_impl::work::tool::types as wit;
use super::host::{CallState, GuestFault, HostContext, is_cancelled};
use super::limiter::MemoryLimiter;
use super::output::BoundedOutput;
use super::{EventSink, Grants, LoadedComponent, MIB, Runtime};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wasmtime::{PoolConcurrencyLimitError, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};
use work_host_api::OutcomeClass;

/// Per-call settings; every `None` takes the runtime's default.
#[derive(Clone, Default)]
pub struct CallOptions {
    /// Fuel budget (instructions, roughly).
    pub fuel: Option<u64>,
    /// Memory cap for the whole instance, in MiB.
    pub memory_mb: Option<u64>,
    /// Wall-clock deadline, counted from the start of instantiation.
    pub timeout: Option<Duration>,
    /// The attempt number the guest sees through `host.attempt` (default 1).
    pub attempt: Option<u32>,
    /// Cancels the call: the guest sees `cancelled() == true` and, whether
    /// it asks or not, is interrupted within about a millisecond.
    pub cancel: Option<CancellationToken>,
    /// Receives logs, progress and partial results as they happen.
    pub events: Option<EventSink>,
    /// Identifies the call in logs; a fresh UUID v7 when `None`.
    pub call_id: Option<Uuid>,
}

impl std::fmt::Debug for CallOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallOptions")
            .field("fuel", &self.fuel)
            .field("memory_mb", &self.memory_mb)
            .field("timeout", &self.timeout)
            .field("attempt", &self.attempt)
            .field("call_id", &self.call_id)
            .finish_non_exhaustive()
    }
}

/// What one call did and what it cost.
#[derive(Debug, Clone, Serialize)]
pub struct CallReport {
    /// The call's id, as in the engine's logs.
    pub call_id: Uuid,
    /// The result, or how the call failed.
    pub outcome: std::result::Result<serde_json::Value, CallFailure>,
    /// The usage receipt.
    pub usage: CallUsage,
    /// What the guest wrote to stdout, up to the output limit.
    pub stdout: String,
    /// What the guest wrote to stderr, up to the output limit.
    pub stderr: String,
}

impl CallReport {
    /// The outcome class: `ok` or the failure's class.
    pub fn class(&self) -> OutcomeClass {
        match &self.outcome {
            Ok(_) => OutcomeClass::Ok,
            Err(failure) => failure.class,
        }
    }
}

/// How a call failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{class}: {message}")]
pub struct CallFailure {
    /// The outcome class; decides retries.
    pub class: OutcomeClass,
    /// What happened, for a person.
    pub message: String,
    /// For `tool_error`, which kind the tool reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_error: Option<ToolErrorKind>,
}

impl CallFailure {
    fn new(class: OutcomeClass, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
            tool_error: None,
        }
    }

    fn tool_error(kind: ToolErrorKind, message: impl Into<String>) -> Self {
        Self {
            tool_error: Some(kind),
            ..Self::new(OutcomeClass::ToolError, message)
        }
    }
}

/// The two permanent kinds of `tool-error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolErrorKind {
    /// The tool rejected its arguments.
    InvalidArgs,
    /// The tool failed, or broke the result contract (too large, not JSON).
    Failed,
}

/// The usage receipt of one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallUsage {
    /// Fuel the call burnt, instantiation included.
    ///
    /// For a call stopped by its timeout or a cancel this undercounts: the
    /// compiled guest keeps its fuel counter in a register and wasmtime's
    /// epoch interruption does not write it back, so the count stops at the
    /// guest's last function entry or host call.
    pub fuel_consumed: u64,
    /// Most linear memory the instance held at once, in bytes.
    pub peak_memory_bytes: u64,
    /// Time to create the instance, in microseconds.
    pub instantiate_us: u64,
    /// Time in the guest's entry point, in microseconds.
    pub execute_us: u64,
}

impl CallUsage {
    /// Instantiation plus execution.
    pub fn total(&self) -> Duration {
        Duration::from_micros(self.instantiate_us + self.execute_us)
    }
}

/// Which export to run.
pub(crate) enum Entry<'a> {
    Describe,
    Call(&'a str),
}

/// What the export returned, before it is judged.
pub(crate) enum Returned {
    Spec(wit::ToolSpec),
    Call(std::result::Result<String, wit::ToolError>),
}

/// A finished run of an export.
pub(crate) struct Run {
    pub(crate) call_id: Uuid,
    pub(crate) returned: std::result::Result<Returned, CallFailure>,
    pub(crate) usage: CallUsage,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Runtime {
    /// Calls a tool's `call` export with `args` (JSON text), in a fresh
    /// instance with the call's limits.
    ///
    /// Whatever the guest does, the call ends in a [`CallReport`] with one
    /// outcome class; the engine and the next calls are unaffected. The
    /// arguments are not validated against the tool's schema here: that is
    /// the registry's job, before a call is made.
    ///
    /// # Errors
    ///
    /// Only for a call that cannot start: [`Error::ArgsTooLarge`], or
    /// [`Error::LimitOutOfRange`] for a memory cap above the pool's slots.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the instance mid-call; nothing outlives it.
    pub async fn call(
        &self,
        tool: &LoadedComponent,
        name: &str,
        grants: &Grants,
        args: &str,
        options: CallOptions,
    ) -> Result<CallReport> {
        self.check_args_size(args.len())?;
        let run = self
            .run(tool, name, grants, Entry::Call(args), options)
            .await?;
        let outcome = run
            .returned
            .and_then(|returned| self.judge_call_result(returned));
        Ok(CallReport {
            call_id: run.call_id,
            outcome,
            usage: run.usage,
            stdout: run.stdout,
            stderr: run.stderr,
        })
    }

    /// Refuses arguments whose JSON text is `size` bytes, over
    /// [`RuntimeConfig::max_args_bytes`]: checked before anything parses
    /// the text.
    ///
    /// # Errors
    ///
    /// [`Error::ArgsTooLarge`].
    ///
    /// [`RuntimeConfig::max_args_bytes`]: super::RuntimeConfig::max_args_bytes
    pub fn check_args_size(&self, size: usize) -> Result<()> {
        let max = self.config.max_args_bytes;
        if size > max {
            return Err(Error::ArgsTooLarge { size, max });
        }
        Ok(())
    }

    fn judge_call_result(
        &self,
        returned: Returned,
    ) -> std::result::Result<serde_json::Value, CallFailure> {
        let text = match returned {
            Returned::Call(Ok(text)) => text,
            Returned::Call(Err(wit::ToolError::InvalidArgs(msg))) => {
                return Err(CallFailure::tool_error(ToolErrorKind::InvalidArgs, msg));
            }
            Returned::Call(Err(wit::ToolError::Failed(msg))) => {
                return Err(CallFailure::tool_error(ToolErrorKind::Failed, msg));
            }
            Returned::Call(Err(wit::ToolError::Retryable(msg))) => {
                return Err(CallFailure::new(OutcomeClass::Retryable, msg));
            }
            Returned::Spec(_) => {
                return Err(CallFailure::new(
                    OutcomeClass::BackendError,
                    "describe ran instead of call",
                ));
            }
        };
        let max = self.config.max_result_bytes;
        if text.len() > max {
            return Err(CallFailure::tool_error(
                ToolErrorKind::Failed,
                format!(
                    "result of {} bytes is over the {max}-byte limit",
                    text.len()
                ),
            ));
        }
        serde_json::from_str(&text).map_err(|err| {
            CallFailure::tool_error(ToolErrorKind::Failed, format!("result is not JSON: {err}"))
        })
    }

    /// Runs one export in a fresh store.
    pub(crate) async fn run(
        &self,
        tool: &LoadedComponent,
        name: &str,
        grants: &Grants,
        entry: Entry<'_>,
        options: CallOptions,
    ) -> Result<Run> {
        let config = &self.config;
        let memory_mb = options.memory_mb.unwrap_or(config.default_memory_mb);
        if memory_mb == 0 || memory_mb > config.max_memory_mb {
            return Err(Error::LimitOutOfRange {
                limit: "memory_mb",
                value: memory_mb,
                max: config.max_memory_mb,
            });
        }
        let fuel = options.fuel.unwrap_or(config.default_fuel);
        let timeout = options.timeout.unwrap_or(config.default_timeout);
        let call_id = options.call_id.unwrap_or_else(Uuid::now_v7);
        let cancel = options.cancel;
        let stdout = BoundedOutput::new(config.max_output_bytes);
        let stderr = BoundedOutput::new(config.max_output_bytes);
        // Hands one stream of the guest's output to the host log, and back
        // for the report.
        let drain = |stream: &str, output: &BoundedOutput| {
            let (contents, truncated) = output.contents();
            if !contents.is_empty() {
                tracing::info!(
                    target: "work_engine::guest",
                    tool = name,
                    %call_id,
                    stream,
                    truncated,
                    "{}",
                    contents.trim_end()
                );
            }
            contents
        };
        let captured = |usage| (usage, drain("stdout", &stdout), drain("stderr", &stderr));

        let wasi = match wasi_context(grants, &stdout, &stderr) {
            Ok(wasi) => wasi,
            Err(failure) => {
                let (usage, stdout, stderr) = captured(CallUsage::default());
                return Ok(Run {
                    call_id,
                    returned: Err(failure),
                    usage,
                    stdout,
                    stderr,
                });
            }
        };
        let limiter = MemoryLimiter::new(
            usize::try_from(memory_mb.saturating_mul(MIB)).unwrap_or(usize::MAX),
            config.max_table_elements,
            config.max_instance_parts,
        );
        let host = HostContext {
            tool: Arc::from(name),
            call_id,
            attempt: options.attempt.unwrap_or(1),
            cancel: cancel.clone(),
            events: options.events,
            log_budget: config.max_log_bytes,
            max_partial_bytes: config.max_result_bytes,
            stderr: stderr.clone(),
            fault: None,
        };
        let mut store = Store::new(&self.engine, CallState::new(wasi, limiter, host));
        store.limiter(|state| &mut state.limiter);
        // A new store has no fuel and an epoch deadline of zero: both must
        // be set before instantiation or it traps at once.
        store
            .set_fuel(fuel)
            .map_err(|err| Error::runtime("cannot set fuel", &err))?;
        let start = Instant::now();
        // A timeout past the clock's range is none.
        let deadline = start.checked_add(timeout);
        store.set_epoch_deadline(1);
        // The token is read from the call's state: a clone of its own would
        // cost a lock and an atomic each way on every call.
        store.epoch_deadline_callback(move |store| {
            if is_cancelled(store.data().host.cancel.as_ref())
                || deadline.is_some_and(|deadline| Instant::now() >= deadline)
            {
                Ok(UpdateDeadline::Interrupt)
            } else {
                // Yield so the timer and cancellation below are polled even
                // while the guest computes.
                Ok(UpdateDeadline::Yield(1))
            }
        });

        let mut instantiated_at = None;
        let result = {
            let pre = &tool.pre;
            let store = &mut store;
            let instantiated_at = &mut instantiated_at;
            let guest = async move {
                let instance = pre.instantiate_async(&mut *store).await?;
                *instantiated_at = Some(Instant::now());
                let returned = match entry {
                    Entry::Describe => Returned::Spec(instance.call_describe(&mut *store).await?),
                    Entry::Call(args) => {
                        Returned::Call(instance.call_call(&mut *store, args).await?)
                    }
                };
                wasmtime::Result::Ok(returned)
            };
            // Epoch interruption stops a computing guest at the deadline or
            // on cancel, with its fuel and memory accounted. These two only
            // catch a guest stuck in a host call (a WASI sleep), where no
            // epoch check runs; they wait a little longer so as not to race
            // the precise path.
            // Both are lazy: a guest that returns without ever yielding
            // (most calls) never registers a timer.
            let backstop_deadline = async {
                match deadline.and_then(|deadline| deadline.checked_add(BACKSTOP_GRACE)) {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let backstop_cancel = async {
                match &cancel {
                    Some(cancel) => cancel.cancelled().await,
                    None => std::future::pending().await,
                }
                tokio::time::sleep(BACKSTOP_GRACE).await;
            };
            tokio::select! {
                biased;
                result = guest => result.map_err(Stop::Error),
                () = backstop_cancel => Err(Stop::Canceled),
                () = backstop_deadline => Err(Stop::Timeout),
            }
        };
        let finished_at = Instant::now();
        let instantiated_at = instantiated_at.unwrap_or(finished_at);

        let remaining = store.get_fuel().unwrap_or(0);
        let state = store.data();
        let usage = CallUsage {
            fuel_consumed: fuel.saturating_sub(remaining),
            peak_memory_bytes: state.limiter.peak_memory() as u64,
            instantiate_us: micros(instantiated_at - start),
            execute_us: micros(finished_at - instantiated_at),
        };
        self.totals.record(&usage);
        let cancelled = is_cancelled(cancel.as_ref());
        let returned = result.map_err(|stop| classify(stop, state, cancelled, timeout, fuel));
        let (usage, stdout, stderr) = captured(usage);
        Ok(Run {
            call_id,
            returned,
            usage,
            stdout,
            stderr,
        })
    }
}

/// How long after the deadline (or a cancel) the backstop drops a guest
/// that epoch interruption has not stopped.
const BACKSTOP_GRACE: Duration = Duration::from_millis(5);

/// Why the guest stopped before returning.
enum Stop {
    Error(wasmtime::Error),
    Canceled,
    Timeout,
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

fn wasi_context(
    grants: &Grants,
    stdout: &BoundedOutput,
    stderr: &BoundedOutput,
) -> std::result::Result<WasiCtx, CallFailure> {
    let mut wasi = WasiCtxBuilder::new();
    // Tools read small files; a thread hop per read would cost more.
    wasi.allow_blocking_current_thread(true)
        .stdout(stdout.clone())
        .stderr(stderr.clone());
    for name in &grants.env {
        if let Ok(value) = std::env::var(name) {
            wasi.env(name, value);
        }
    }
    for dir in &grants.dirs {
        let perms = if dir.writable {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        wasi.preopened_dir(&dir.host, &dir.guest, perms)
            .map_err(|err| {
                CallFailure::new(
                    OutcomeClass::BackendError,
                    format!(
                        "cannot open granted directory {}: {}",
                        dir.host.display(),
                        super::error_chain(&err)
                    ),
                )
            })?;
    }
    Ok(wasi.build())
}

/// Decides the outcome class of a call that stopped without returning.
///
/// Typed checks only: the trap code, our own fault type, the limiter's
/// record. Timeout and fuel come before memory because a guest interrupted
/// while its allocator was failing is still a timeout.
fn classify(
    stop: Stop,
    state: &CallState,
    cancelled: bool,
    timeout: Duration,
    fuel: u64,
) -> CallFailure {
    let timed_out = || {
        CallFailure::new(
            OutcomeClass::Timeout,
            format!("call exceeded its {} ms deadline", timeout.as_millis()),
        )
    };
    let canceled = || CallFailure::new(OutcomeClass::Canceled, "call was cancelled");
    let err = match stop {
        Stop::Canceled => return canceled(),
        Stop::Timeout => return timed_out(),
        Stop::Error(err) => err,
    };
    if let Some(fault) = &state.host.fault {
        return CallFailure::new(OutcomeClass::Trap, fault.0.clone());
    }
    if let Some(fault) = err.downcast_ref::<GuestFault>() {
        return CallFailure::new(OutcomeClass::Trap, fault.0.clone());
    }
    let trap = err.downcast_ref::<Trap>().copied();
    match trap {
        Some(Trap::Interrupt) if cancelled => return canceled(),
        Some(Trap::Interrupt) => return timed_out(),
        Some(Trap::OutOfFuel) => {
            return CallFailure::new(
                OutcomeClass::OutOfFuel,
                format!("call used up its fuel budget of {fuel}"),
            );
        }
        Some(Trap::StackOverflow) => {
            return CallFailure::new(OutcomeClass::Trap, "stack overflow");
        }
        _ => {}
    }
    if let Some(asked) = state.limiter.refused() {
        return CallFailure::new(
            OutcomeClass::OutOfMemory,
            format!(
                "memory limit of {} MiB reached (asked for {} MiB in all)",
                state.limiter.memory_limit() / MIB as usize,
                asked.div_ceil(MIB as usize)
            ),
        );
    }
    if err.is::<PoolConcurrencyLimitError>() {
        return CallFailure::new(
            OutcomeClass::BackendError,
            "too many concurrent instances; try again later",
        );
    }
    let reason = match trap {
        Some(trap) => trap.to_string(),
        None => super::error_chain(&err),
    };
    let (stderr, _) = state.host.stderr.contents();
    let message = match panic_message(&stderr) {
        Some(panic) => format!("{panic} ({reason})"),
        None => reason,
    };
    CallFailure::new(OutcomeClass::Trap, message)
}

/// The `panicked at FILE:LINE:COL:\nMESSAGE` a Rust guest prints before it
/// aborts, as one line.
fn panic_message(stderr: &str) -> Option<String> {
    let start = stderr.rfind("panicked at ")?;
    let text = &stderr[start..];
    let end = text.find("\nnote:").unwrap_or(text.len());
    let panic: Vec<&str> = text[..end].lines().map(str::trim).collect();
    Some(panic.join(" "))
}

#[cfg(test)]
mod tests {
    use super::panic_message;

    #[test]
    fn panic_message_is_one_line() {
        let stderr = "\nthread '<unnamed>' panicked at src/lib.rs:16:13:\nboom\nnote: run with `RUST_BACKTRACE=1`\n";
        assert_eq!(
            panic_message(stderr).as_deref(),
            Some("panicked at src/lib.rs:16:13: boom")
        );
        assert_eq!(panic_message("nothing here"), None);
    }
}
