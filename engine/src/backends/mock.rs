//! [`MockBackend`]: any outcome on demand, with a history of what ran.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use work_host_api::{
    AdmitError, Backend, Device, ExecContext, ExecError, Job, JobId, JobKind, OutcomeClass,
};

/// What a [`MockBackend`] does with an attempt. Set on the backend, or per
/// job as `payload.mock`:
///
/// ```json
/// {"mock": {"delay_ms": 50, "fail_times": 2, "fail_class": "trap"}}
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MockBehavior {
    /// Takes this long (a cancellation cuts it short).
    pub delay_ms: u64,
    /// Fails the first N attempts, then succeeds.
    pub fail_times: u32,
    /// Fails every attempt.
    pub fail: bool,
    /// The class failures end in; `retryable` when absent.
    pub fail_class: Option<OutcomeClass>,
    /// Never ends on its own; only a cancellation (or a deadline) stops it.
    pub hang: bool,
    /// The result on success; `{"attempt": n}` when absent.
    pub result: Option<serde_json::Value>,
}

/// One attempt a [`MockBackend`] ran.
#[derive(Debug, Clone, PartialEq)]
pub struct MockRun {
    /// The job.
    pub job_id: JobId,
    /// Its tenant.
    pub tenant_id: String,
    /// Its kind.
    pub kind: JobKind,
    /// Which attempt.
    pub attempt: u32,
    /// The devices it was given.
    pub devices: Vec<Device>,
    /// When it started (Tokio's clock, so paused-clock tests see exact
    /// times).
    pub started: Instant,
    /// When it ended.
    pub ended: Instant,
    /// How it ended.
    pub outcome: OutcomeClass,
}

/// Plays whatever outcome it is told, for tests and demos: succeed, fail,
/// fail N times then succeed, take a while, or hang until cancelled. Keeps
/// a history of every attempt (clones share it).
///
/// ```
/// use work_engine::backends::{MockBackend, MockBehavior};
///
/// let flaky = MockBackend::new()
///     .only_kinds(["inference"])
///     .behavior(MockBehavior { fail_times: 2, ..MockBehavior::default() });
/// let history = flaky.clone(); // read `history.history()` later
/// # let _ = history;
/// ```
#[derive(Debug, Clone)]
pub struct MockBackend {
    behavior: MockBehavior,
    kinds: Option<HashSet<JobKind>>,
    history: Option<Arc<Mutex<Vec<MockRun>>>>,
}

impl Default for MockBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MockBackend {
    /// Succeeds at once, for every kind, keeping a history.
    pub fn new() -> Self {
        Self {
            behavior: MockBehavior::default(),
            kinds: None,
            history: Some(Arc::default()),
        }
    }

    /// What it does with jobs whose payload has no `mock` field.
    pub fn behavior(mut self, behavior: MockBehavior) -> Self {
        self.behavior = behavior;
        self
    }

    /// Runs only these kinds.
    pub fn only_kinds<K: Into<JobKind>>(mut self, kinds: impl IntoIterator<Item = K>) -> Self {
        self.kinds = Some(kinds.into_iter().map(Into::into).collect());
        self
    }

    /// Keeps no history (for benchmarks of millions of jobs).
    pub fn without_history(mut self) -> Self {
        self.history = None;
        self
    }

    /// Every attempt run so far, in the order they ended.
    pub fn history(&self) -> Vec<MockRun> {
        self.history
            .as_ref()
            .map(|history| history.lock().clone())
            .unwrap_or_default()
    }

    fn behavior_of(&self, job: &Job) -> Result<MockBehavior, String> {
        match job.payload.field("mock") {
            Some(text) => serde_json::from_str(text).map_err(|e| format!("payload.mock: {e}")),
            None => Ok(self.behavior.clone()),
        }
    }
}

#[async_trait::async_trait]
impl Backend for MockBackend {
    fn name(&self) -> &str {
        "mock"
    }

    fn supports(&self, job: &Job) -> bool {
        self.kinds
            .as_ref()
            .is_none_or(|kinds| kinds.contains(&job.kind))
    }

    async fn admit(&self, job: &Job) -> Result<(), AdmitError> {
        self.behavior_of(job)
            .map(drop)
            .map_err(AdmitError::InvalidPayload)
    }

    async fn execute(&self, job: &Job, ctx: ExecContext) -> Result<serde_json::Value, ExecError> {
        let started = Instant::now();
        let outcome = match self.behavior_of(job) {
            Ok(behavior) => play(&behavior, &ctx).await,
            Err(message) => Err(ExecError::new(OutcomeClass::ToolError, message)),
        };
        if let Some(history) = &self.history {
            history.lock().push(MockRun {
                job_id: job.id,
                tenant_id: job.tenant_id.to_string(),
                kind: job.kind.clone(),
                attempt: ctx.attempt(),
                devices: ctx.devices().to_vec(),
                started,
                ended: Instant::now(),
                outcome: outcome
                    .as_ref()
                    .map_or_else(|e| e.class, |_| OutcomeClass::Ok),
            });
        }
        outcome
    }
}

async fn play(behavior: &MockBehavior, ctx: &ExecContext) -> Result<serde_json::Value, ExecError> {
    let canceled = || ExecError::new(OutcomeClass::Canceled, "mock: canceled");
    if behavior.hang {
        ctx.cancelled().await;
        return Err(canceled());
    }
    if behavior.delay_ms > 0 {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(behavior.delay_ms)) => {}
            () = ctx.cancelled() => return Err(canceled()),
        }
    }
    if behavior.fail || ctx.attempt() <= behavior.fail_times {
        let class = behavior.fail_class.unwrap_or(OutcomeClass::Retryable);
        return Err(ExecError::new(
            class,
            format!("mock: attempt {} fails as told", ctx.attempt()),
        ));
    }
    Ok(behavior
        .result
        .clone()
        .unwrap_or_else(|| serde_json::json!({ "attempt": ctx.attempt() })))
}
