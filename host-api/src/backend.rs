//! The `Backend` trait: how the engine hands a job to whatever runs it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{Job, OutcomeClass};

/// Runs jobs of the kinds it supports.
///
/// The engine picks the first registered backend whose [`supports`]
/// accepts a job, asks it to [`admit`] the job before accepting it, and
/// calls [`execute`] once per attempt. Retries, timeouts, resources and
/// bookkeeping are the engine's; a backend only runs one attempt and says
/// how it ended.
///
/// ```
/// use work_host_api::{async_trait, Backend, ExecContext, ExecError, Job, JobKind, OutcomeClass};
///
/// struct Echo;
///
/// #[async_trait]
/// impl Backend for Echo {
///     fn name(&self) -> &str { "echo" }
///     fn supports(&self, job: &Job) -> bool { job.kind == JobKind::Inference }
///     async fn execute(&self, job: &Job, ctx: ExecContext) -> Result<serde_json::Value, ExecError> {
///         ctx.progress(1.0, "echoed");
///         job.payload
///             .parse()
///             .map_err(|err| ExecError::new(OutcomeClass::ToolError, err.to_string()))
///     }
/// }
/// ```
///
/// [`supports`]: Backend::supports
/// [`admit`]: Backend::admit
/// [`execute`]: Backend::execute
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// A short stable name, shown on jobs and in events.
    fn name(&self) -> &str;

    /// Whether this backend runs `job` (usually decided by its kind).
    /// A panic here refuses the submission as a `backend_error`.
    fn supports(&self, job: &Job) -> bool;

    /// Checks a job before the engine accepts it (a tool call's arguments
    /// against the tool's schema, say). The default accepts everything.
    ///
    /// # Errors
    ///
    /// An [`AdmitError`] refuses the job; the caller sees it. A panic
    /// refuses it too, as a `backend_error`, and nothing is accepted.
    async fn admit(&self, job: &Job) -> Result<(), AdmitError> {
        let _ = job;
        Ok(())
    }

    /// Runs one attempt of `job`.
    ///
    /// # Errors
    ///
    /// An [`ExecError`] whose class decides whether the engine retries.
    /// A panic fails the attempt as [`OutcomeClass::BackendError`].
    ///
    /// # Cancel safety
    ///
    /// The engine signals cancellation through [`ExecContext::cancelled`]
    /// and drops the future if the backend has not returned within its
    /// grace period.
    async fn execute(&self, job: &Job, ctx: ExecContext) -> Result<serde_json::Value, ExecError>;
}

/// Why a backend refused a job at admission.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AdmitError {
    /// The tool (or model, or whatever the payload names) does not exist.
    #[error("unknown tool `{0}`")]
    UnknownTool(String),
    /// The arguments do not match the schema.
    #[error("invalid arguments: {}", Violation::join(.0))]
    InvalidArgs(Vec<Violation>),
    /// The payload is malformed in another way.
    #[error("invalid payload: {0}")]
    InvalidPayload(String),
}

/// One problem with a value, at a JSON path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Violation {
    /// JSON Pointer to the offending value (`""` for the whole value).
    pub path: String,
    /// What is wrong there.
    pub message: String,
}

impl Violation {
    /// All of `violations` on one line.
    pub fn join(violations: &[Violation]) -> String {
        violations
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// How an attempt failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{class}: {message}")]
pub struct ExecError {
    /// The outcome class; the retry policy acts on it.
    pub class: OutcomeClass,
    /// For people.
    pub message: String,
}

impl ExecError {
    /// An error of `class`.
    pub fn new(class: OutcomeClass, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
        }
    }
}

/// One device assigned to a job for the length of an attempt.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Device {
    /// Its type, as in `resources.gpu` (`"A100"`).
    pub kind: String,
    /// Its id on this machine (what `CUDA_VISIBLE_DEVICES` would take).
    pub id: String,
}

/// What a running attempt reports before it ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ExecUpdate {
    /// How far along it is.
    Progress {
        /// From 0 to 1.
        fraction: f32,
        /// What it is doing.
        message: String,
    },
    /// A piece of the result, ahead of the end.
    Partial {
        /// The piece.
        value: serde_json::Value,
    },
    /// A log line.
    Log {
        /// `trace`, `debug`, `info`, `warn` or `error`.
        level: String,
        /// The line.
        message: String,
    },
}

/// Receives an attempt's [`ExecUpdate`]s.
pub type UpdateSink = Arc<dyn Fn(ExecUpdate) + Send + Sync>;

/// What an attempt gets besides its job: which attempt it is, its devices,
/// where to report progress, and whether to stop.
#[derive(Clone)]
pub struct ExecContext {
    attempt: u32,
    devices: Vec<Device>,
    updates: UpdateSink,
    cancel: CancellationToken,
    cost: Arc<CostMeter>,
}

/// What an attempt has charged ([`ExecContext::charge`]), against what its
/// job may still spend ([`ExecContext::with_cost_limit`]): shared by the
/// attempt's context and the engine, which adds the charges to the job's
/// `cost_usd` when the attempt ends ([`ExecContext::cost_meter`]).
///
/// Counted in billionths of a dollar, so that charges from any thread add
/// up exactly, without a lock.
#[derive(Debug)]
pub struct CostMeter {
    charged_nanos: AtomicU64,
    /// `u64::MAX`: no limit (the charges saturate there, never past it).
    limit_nanos: AtomicU64,
}

impl Default for CostMeter {
    fn default() -> Self {
        Self {
            charged_nanos: AtomicU64::new(0),
            limit_nanos: AtomicU64::new(u64::MAX),
        }
    }
}

impl CostMeter {
    /// Adds `usd` (ignored unless finite and above zero); true when this
    /// charge took the total past the limit.
    fn add(&self, usd: f64) -> bool {
        if !(usd.is_finite() && usd > 0.0) {
            return false;
        }
        let add = nanos(usd);
        let before = self
            .charged_nanos
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |total| {
                Some(total.saturating_add(add))
            })
            .unwrap_or(u64::MAX);
        let limit = self.limit_nanos.load(Ordering::Acquire);
        before <= limit && before.saturating_add(add) > limit
    }

    /// The charges so far, in US dollars.
    pub fn charged_usd(&self) -> f64 {
        self.charged_nanos.load(Ordering::Acquire) as f64 / 1e9
    }

    /// Whether the charges have gone past the limit.
    pub fn over_limit(&self) -> bool {
        self.charged_nanos.load(Ordering::Acquire) > self.limit_nanos.load(Ordering::Acquire)
    }
}

/// `usd` in billionths, saturating (negative and NaN: zero).
fn nanos(usd: f64) -> u64 {
    (usd * 1e9).round() as u64
}

impl fmt::Debug for ExecContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecContext")
            .field("attempt", &self.attempt)
            .field("devices", &self.devices)
            .field("cancelled", &self.cancel.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl ExecContext {
    /// A context for attempt `attempt` (1-based) on `devices`.
    pub fn new(
        attempt: u32,
        devices: Vec<Device>,
        updates: UpdateSink,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            attempt,
            devices,
            updates,
            cancel,
            cost: Arc::default(),
        }
    }

    /// The same context, its attempt (every clone of the context shares
    /// one meter) limited to spending `limit_usd` (none: no limit): what
    /// the job may still spend under its `max_cost_usd`.
    pub fn with_cost_limit(self, limit_usd: Option<f64>) -> Self {
        self.cost
            .limit_nanos
            .store(limit_usd.map_or(u64::MAX, nanos), Ordering::Release);
        self
    }

    /// This attempt's meter, which the engine keeps to read the charges
    /// once the attempt is over.
    pub fn cost_meter(&self) -> &Arc<CostMeter> {
        &self.cost
    }

    /// A context that discards updates and is never cancelled: for tests.
    pub fn detached(attempt: u32) -> Self {
        Self::new(
            attempt,
            Vec::new(),
            Arc::new(|_| {}),
            CancellationToken::new(),
        )
    }

    /// Which attempt this is, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The devices assigned to this attempt.
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// Reports progress.
    pub fn progress(&self, fraction: f32, message: impl Into<String>) {
        (self.updates)(ExecUpdate::Progress {
            fraction,
            message: message.into(),
        });
    }

    /// Reports a partial result.
    pub fn partial(&self, value: serde_json::Value) {
        (self.updates)(ExecUpdate::Partial { value });
    }

    /// Reports any update.
    pub fn update(&self, update: ExecUpdate) {
        (self.updates)(update);
    }

    /// Whether the job has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Completes when the job is cancelled.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// The cancellation signal itself, to hand to code that takes one.
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Reports money this attempt has spent, in US dollars (a paid API
    /// call, rented GPU time): the engine adds it to the job's `cost_usd`
    /// and to its tenant's spending. Charges that are not finite or not
    /// above zero are ignored.
    ///
    /// When the job has a `max_cost_usd` and this charge takes its cost past
    /// it, the attempt is told to stop ([`ExecContext::is_cancelled`]) and
    /// the job ends `canceled` with the error code `cost_limit`.
    ///
    /// ```
    /// use work_host_api::ExecContext;
    ///
    /// let ctx = ExecContext::detached(1);
    /// ctx.charge(0.002);
    /// ctx.charge(0.003);
    /// assert!((ctx.charged() - 0.005).abs() < 1e-12);
    /// ```
    pub fn charge(&self, usd: f64) {
        if self.cost.add(usd) {
            self.cancel.cancel();
        }
    }

    /// What this attempt has charged so far, in US dollars.
    pub fn charged(&self) -> f64 {
        self.cost.charged_usd()
    }
}
