//! Jobs: the one unit of work (SPEC §4), with the exact JSON names there.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use compact_str::CompactString;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::{OutcomeClass, OutcomeSet, Payload};

/// A job's id: a UUID v7, so ids sort by submission time.
pub type JobId = Uuid;

/// What kind of work a job is; decides which backend runs it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JobKind {
    /// A call of a registered WASM tool: `payload` is `{"tool", "args"}`.
    ToolCall,
    /// One step of an experiment.
    ExperimentStep,
    /// One step of model training.
    TrainingStep,
    /// An inference request.
    Inference,
    /// Any other kind an embedder defines and registers a backend for.
    Custom(CompactString),
}

impl JobKind {
    /// The JSON name.
    pub fn as_str(&self) -> &str {
        match self {
            Self::ToolCall => "tool_call",
            Self::ExperimentStep => "experiment_step",
            Self::TrainingStep => "training_step",
            Self::Inference => "inference",
            Self::Custom(name) => name,
        }
    }
}

impl From<&str> for JobKind {
    fn from(name: &str) -> Self {
        match name {
            "tool_call" => Self::ToolCall,
            "experiment_step" => Self::ExperimentStep,
            "training_step" => Self::TrainingStep,
            "inference" => Self::Inference,
            other => Self::Custom(other.into()),
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for JobKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for JobKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<str>::deserialize(deserializer)?;
        Ok(Self::from(name.as_ref()))
    }
}

/// The four priority levels, highest first. A higher level is always served
/// first; within a level tenants share fairly.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Priority {
    /// Someone is waiting on it right now (a synchronous tool call).
    Realtime,
    /// A person or agent is waiting, but not blocking.
    Interactive,
    /// Ordinary background work: the default.
    #[default]
    Batch,
    /// Whenever there is room; aging keeps it from starving.
    Offline,
}

impl Priority {
    /// Every level, highest first.
    pub const ALL: [Priority; 4] = [
        Self::Realtime,
        Self::Interactive,
        Self::Batch,
        Self::Offline,
    ];

    /// 0 for `realtime` up to 3 for `offline`.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The next level up, if any.
    pub fn raised(self) -> Option<Priority> {
        self.index().checked_sub(1).map(|i| Self::ALL[i])
    }

    /// The JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Realtime => "realtime",
            Self::Interactive => "interactive",
            Self::Batch => "batch",
            Self::Offline => "offline",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!("unknown priority `{s}` (realtime, interactive, batch, offline)")
            })
    }
}

/// What a job needs while it runs. The engine starts it only when these fit
/// its free capacity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Resources {
    /// CPU cores (fractions allowed). Default 1.
    #[serde(default = "Resources::default_cpu")]
    pub cpu: f64,
    /// Memory in MiB. Default 0 (not accounted). For a tool call it is also
    /// the guest's memory limit when set.
    #[serde(default)]
    pub memory_mb: u64,
    /// GPU type (`"A100"`); required with `gpu_count` when the engine has
    /// more than one type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<String>,
    /// How many GPUs of that type.
    #[serde(default)]
    pub gpu_count: u32,
    /// Wall-clock limit of one attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Instruction budget of one attempt of a tool call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// The most the job may cost, in US dollars, over all its attempts:
    /// the attempt whose charges ([`crate::ExecContext::charge`]) pass it
    /// is stopped and the job ends `canceled` (code `cost_limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
}

impl Resources {
    fn default_cpu() -> f64 {
        1.0
    }

    /// The attempt's wall-clock limit, if any.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout_ms.map(Duration::from_millis)
    }
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            cpu: Self::default_cpu(),
            memory_mb: 0,
            gpu: None,
            gpu_count: 0,
            timeout_ms: None,
            fuel: None,
            max_cost_usd: None,
        }
    }
}

/// How the delay between attempts grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Backoff {
    /// `base × 2^(n-1)` before retry `n`.
    #[default]
    Exponential,
    /// `base × n`.
    Linear,
    /// `base` every time.
    Constant,
}

/// When and how often a failed attempt is tried again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RetryPolicy {
    /// Attempts in all, the first included. 1 means never retry.
    #[serde(default = "RetryPolicy::default_max_attempts")]
    pub max_attempts: u32,
    /// How the delay grows.
    #[serde(default)]
    pub backoff: Backoff,
    /// The first delay.
    #[serde(default = "RetryPolicy::default_base_delay_ms")]
    pub base_delay_ms: u64,
    /// No delay is longer than this.
    #[serde(default = "RetryPolicy::default_max_delay_ms")]
    pub max_delay_ms: u64,
    /// Spread delays over `[delay / 2, delay]` so failed jobs do not retry
    /// in lockstep.
    #[serde(default = "RetryPolicy::default_jitter")]
    pub jitter: bool,
    /// The outcome classes retried. Default `trap`, `timeout`, `retryable`;
    /// add `out_of_fuel` or `out_of_memory` to retry those too.
    #[serde(default = "RetryPolicy::default_retry_on")]
    pub retry_on: OutcomeSet,
}

impl RetryPolicy {
    fn default_max_attempts() -> u32 {
        3
    }
    fn default_base_delay_ms() -> u64 {
        1000
    }
    fn default_max_delay_ms() -> u64 {
        60_000
    }
    fn default_jitter() -> bool {
        true
    }
    fn default_retry_on() -> OutcomeSet {
        OutcomeSet::retryable()
    }

    /// A policy that never retries.
    pub fn never() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// Whether an attempt that ended in `class` is tried again.
    pub fn retries(&self, class: OutcomeClass) -> bool {
        self.retry_on.contains(class)
    }

    /// The delay before the attempt after attempt `attempt` (1-based),
    /// given a uniform sample in `[0, 1)` for the jitter.
    ///
    /// ```
    /// use std::time::Duration;
    /// use work_host_api::{Backoff, RetryPolicy};
    ///
    /// let policy = RetryPolicy { backoff: Backoff::Exponential, base_delay_ms: 100,
    ///     max_delay_ms: 1000, jitter: false, ..RetryPolicy::default() };
    /// let delays: Vec<_> = (1..=5).map(|n| policy.delay_after(n, 0.0)).collect();
    /// assert_eq!(delays, [100, 200, 400, 800, 1000].map(Duration::from_millis));
    /// ```
    pub fn delay_after(&self, attempt: u32, jitter_sample: f64) -> Duration {
        let n = u64::from(attempt.max(1));
        let base = self.base_delay_ms;
        let millis = match self.backoff {
            Backoff::Exponential => base.saturating_mul(1u64 << (n - 1).min(62)),
            Backoff::Linear => base.saturating_mul(n),
            Backoff::Constant => base,
        }
        .min(self.max_delay_ms);
        let millis = if self.jitter {
            let half = millis / 2;
            half + ((millis - half) as f64 * jitter_sample.clamp(0.0, 1.0)) as u64
        } else {
            millis
        };
        Duration::from_millis(millis)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: Self::default_max_attempts(),
            backoff: Backoff::default(),
            base_delay_ms: Self::default_base_delay_ms(),
            max_delay_ms: Self::default_max_delay_ms(),
            jitter: Self::default_jitter(),
            retry_on: Self::default_retry_on(),
        }
    }
}

/// Where, when and with what a job may run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Constraints {
    /// Retries; the engine's default policy when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetryPolicy>,
    /// At most N jobs of one group run at once (N set on the engine,
    /// default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_group: Option<String>,
    /// Jobs (of the same tenant) that must succeed before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Uuid>))]
    pub depends_on: Vec<JobId>,
    /// What a worker must offer to run it (used by remote workers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Not started before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
    /// A second submission with the same key (same tenant) returns the
    /// first job instead of creating another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// Where a job is in its life. `pending -> queued -> running ->` one of
/// the four terminal states; a retry goes back to `queued`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum JobStatus {
    /// Waiting for its dependencies.
    Pending,
    /// Waiting for its turn (or its next run time).
    Queued,
    /// An attempt is running.
    Running,
    /// Done, with a result.
    Succeeded,
    /// Ended without a result.
    Failed,
    /// Cancelled, or a dependency failed.
    Canceled,
    /// Its last attempt ran out of time.
    Timeout,
}

impl JobStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [JobStatus; 7] = [
        Self::Pending,
        Self::Queued,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Canceled,
        Self::Timeout,
    ];

    /// Whether the job has ended for good.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Canceled | Self::Timeout
        )
    }

    /// The JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
            Self::Timeout => "timeout",
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown status `{s}`"))
    }
}

/// Why a job's last attempt, or the job, failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobError {
    /// Stable: an outcome class (`trap`, `tool_error`, …) or
    /// `dependency_failed`, `canceled`.
    pub code: String,
    /// For people.
    pub message: String,
    /// Whether another attempt could succeed.
    pub retryable: bool,
}

/// A job as submitted: what the caller decides. The engine fills in the
/// rest (id, status, defaults) at admission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewJob {
    /// What kind of work.
    pub kind: JobKind,
    /// Who owns it. Over HTTP with an API key it may be left out: the
    /// key's tenant (an engine refuses it empty).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub tenant_id: CompactString,
    /// A grouping within the tenant; `"default"` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub namespace: Option<CompactString>,
    /// The engine's default (`batch`) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// Kind-specific input; for a tool call `{"tool": "name[@version]",
    /// "args": {…}}` (`tool_name` is an alias of `tool`). `null` when
    /// absent.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub payload: Payload,
    /// What it needs while it runs.
    #[serde(default)]
    pub resources: Resources,
    /// Retries, grouping, dependencies, timing.
    #[serde(default)]
    pub constraints: Constraints,
    /// Free-form, kept with the job.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub metadata: serde_json::Value,
    /// The caller's own id for the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
}

impl NewJob {
    /// A job of `kind` for `tenant` with `payload` (a
    /// [`serde_json::Value`], or a [`Payload`] read from JSON text),
    /// everything else default.
    pub fn new(
        kind: impl Into<JobKind>,
        tenant: impl Into<CompactString>,
        payload: impl Into<Payload>,
    ) -> Self {
        Self {
            kind: kind.into(),
            tenant_id: tenant.into(),
            namespace: None,
            priority: None,
            payload: payload.into(),
            resources: Resources::default(),
            constraints: Constraints::default(),
            metadata: serde_json::Value::Null,
            external_id: None,
        }
    }

    /// A call of `tool` (`name[@version]`) with `args`.
    ///
    /// ```
    /// use work_host_api::{NewJob, Priority};
    ///
    /// let job = NewJob::tool_call("acme", "calculator", serde_json::json!({"op": "add", "a": 2, "b": 2}))
    ///     .with_priority(Priority::Interactive);
    /// assert_eq!(job.payload.field("tool"), Some(r#""calculator""#));
    /// ```
    pub fn tool_call(
        tenant: impl Into<CompactString>,
        tool: &str,
        args: serde_json::Value,
    ) -> Self {
        #[derive(Serialize)]
        struct ToolCallPayload<'a> {
            tool: &'a str,
            args: serde_json::Value,
        }
        // Written straight to text: a `Value` of the whole payload would
        // be built only to be written.
        let payload = Payload::of(&ToolCallPayload { tool, args });
        Self::new(JobKind::ToolCall, tenant, payload)
    }

    /// With this priority.
    pub fn with_priority(mut self, priority: Priority) -> Self {
        self.priority = Some(priority);
        self
    }

    /// In this namespace.
    pub fn with_namespace(mut self, namespace: impl Into<CompactString>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// With these resources.
    pub fn with_resources(mut self, resources: Resources) -> Self {
        self.resources = resources;
        self
    }

    /// With this retry policy.
    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.constraints.retry_policy = Some(policy);
        self
    }

    /// Started only after `jobs` all succeed.
    pub fn with_depends_on(mut self, jobs: impl IntoIterator<Item = JobId>) -> Self {
        self.constraints.depends_on.extend(jobs);
        self
    }

    /// In concurrency group `group`.
    pub fn with_concurrency_group(mut self, group: impl Into<String>) -> Self {
        self.constraints.concurrency_group = Some(group.into());
        self
    }

    /// With an idempotency key.
    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.constraints.idempotency_key = Some(key.into());
        self
    }
}

impl From<String> for JobKind {
    fn from(name: String) -> Self {
        Self::from(name.as_str())
    }
}

/// A job as the engine keeps it: the submission plus its life so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Job {
    /// UUID v7.
    #[cfg_attr(feature = "openapi", schema(value_type = Uuid))]
    pub id: JobId,
    /// What kind of work.
    pub kind: JobKind,
    /// Who owns it.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub tenant_id: CompactString,
    /// A grouping within the tenant.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub namespace: CompactString,
    /// Its level.
    pub priority: Priority,
    /// Kind-specific input, as the JSON text it came in.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub payload: Payload,
    /// What it needs while it runs.
    pub resources: Resources,
    /// Retries (always filled in), grouping, dependencies, timing.
    pub constraints: Constraints,
    /// Free-form, kept with the job.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub metadata: serde_json::Value,
    /// The caller's own id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// The batch it was submitted in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<Uuid>,
    /// Where it is in its life.
    pub status: JobStatus,
    /// Attempts started so far.
    pub attempt: u32,
    /// The result, once `succeeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// Why the last attempt (or the job) failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    /// How the last attempt ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<OutcomeClass>,
    /// The backend that ran the last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub backend: Option<CompactString>,
    /// When a queued job may start next (`not_before`, or a retry's backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run_at: Option<DateTime<Utc>>,
    /// Ended `failed` or `timeout` and kept for review and retry.
    #[serde(default)]
    pub dead_letter: bool,
    /// Grows with each claim; a report carrying an older epoch is refused,
    /// so an attempt given up on cannot overwrite its replacement's result.
    #[serde(default)]
    pub lease_epoch: u64,
    /// When it was accepted.
    pub created_at: DateTime<Utc>,
    /// When its last attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// What its attempts were charged, in US dollars
    /// ([`crate::ExecContext::charge`]).
    #[serde(default)]
    pub cost_usd: f64,
}

impl Job {
    /// The retry policy the engine filled in at admission
    /// ([`RetryPolicy::default`] for a job that never went through one).
    pub fn retry_policy(&self) -> &RetryPolicy {
        static DEFAULT: std::sync::LazyLock<RetryPolicy> =
            std::sync::LazyLock::new(RetryPolicy::default);
        self.constraints.retry_policy.as_ref().unwrap_or(&DEFAULT)
    }

    /// For a tool call: the tool (`payload.tool`, or its alias
    /// `payload.tool_name`) and the arguments' JSON text (`payload.args`,
    /// `None` when absent); `None` when the payload has no such shape.
    pub fn tool_call(&self) -> Option<ToolCall<'_>> {
        let (tool, args) = self.payload.tool_call_fields()?;
        Some(ToolCall {
            tool: crate::payload::string_of(tool)?,
            args,
        })
    }
}

/// A tool call's parts, read from its job's payload ([`Job::tool_call`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall<'a> {
    /// `name[@version]`.
    pub tool: std::borrow::Cow<'a, str>,
    /// The arguments' JSON text, as submitted.
    pub args: Option<&'a str>,
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for JobKind {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "`tool_call`, `experiment_step`, `training_step`, `inference`, or a custom kind",
            ))
            .examples(["tool_call"])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for JobKind {}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored job is an `Arc<Job>`: two counts and the job, in one
    /// allocation, which fits mimalloc's 640-byte size class. A job a byte
    /// larger would take the 768-byte class: 128 bytes more for every
    /// queued job, against the 1 KiB a queued job may cost in all.
    #[test]
    fn a_stored_job_fits_its_size_class() {
        let record = size_of::<Job>() + 2 * size_of::<usize>();
        assert!(record <= 640, "an Arc<Job> takes {record} bytes");
    }

    #[test]
    fn kinds_round_trip_including_custom() {
        for name in [
            "tool_call",
            "experiment_step",
            "training_step",
            "inference",
            "render",
        ] {
            let kind: JobKind = serde_json::from_value(serde_json::json!(name)).unwrap();
            assert_eq!(serde_json::to_value(&kind).unwrap(), name);
        }
        assert_eq!(JobKind::from("render"), JobKind::Custom("render".into()));
    }

    #[test]
    fn new_job_defaults_and_spec_names() {
        let job: NewJob = serde_json::from_value(serde_json::json!({
            "kind": "tool_call", "tenant_id": "acme",
            "payload": {"tool": "calculator", "args": {"a": 2}},
            "resources": {"gpu": "A100", "gpu_count": 1},
            "constraints": {"retry_policy": {"max_attempts": 5, "backoff": "linear"},
                            "concurrency_group": "experiment:42"}
        }))
        .unwrap();
        assert_eq!(job.resources.cpu, 1.0);
        let policy = job.constraints.retry_policy.unwrap();
        assert_eq!((policy.max_attempts, policy.backoff), (5, Backoff::Linear));
        assert!(policy.jitter);
        assert_eq!(
            policy.retry_on.iter().collect::<Vec<_>>(),
            [
                OutcomeClass::Retryable,
                OutcomeClass::Trap,
                OutcomeClass::Timeout
            ]
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_value::<NewJob>(serde_json::json!({
            "kind": "inference", "tenant_id": "a", "priorty": "batch"
        }))
        .unwrap_err();
        assert!(err.to_string().contains("priorty"), "{err}");
    }

    #[test]
    fn backoff_shapes_cap_and_jitter() {
        let policy = |backoff| RetryPolicy {
            backoff,
            base_delay_ms: 100,
            max_delay_ms: 250,
            jitter: false,
            ..RetryPolicy::default()
        };
        let ms = |p: &RetryPolicy, n| p.delay_after(n, 0.0).as_millis();
        let linear = policy(Backoff::Linear);
        assert_eq!([1, 2, 3].map(|n| ms(&linear, n)), [100, 200, 250]);
        let constant = policy(Backoff::Constant);
        assert_eq!([1, 2, 3].map(|n| ms(&constant, n)), [100, 100, 100]);
        let huge = policy(Backoff::Exponential);
        assert_eq!(ms(&huge, 500), 250);
        let jittered = RetryPolicy {
            jitter: true,
            ..policy(Backoff::Constant)
        };
        assert_eq!(jittered.delay_after(1, 0.0).as_millis(), 50);
        assert_eq!(jittered.delay_after(1, 0.999_999).as_millis(), 99);
    }

    #[test]
    fn priorities_order_and_raise() {
        assert!(Priority::Realtime < Priority::Offline);
        assert_eq!(Priority::Offline.raised(), Some(Priority::Batch));
        assert_eq!(Priority::Realtime.raised(), None);
        assert_eq!("interactive".parse::<Priority>(), Ok(Priority::Interactive));
    }
}
