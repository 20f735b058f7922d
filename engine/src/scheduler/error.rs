//! [`EngineError`]: why the engine refused a request.

use std::time::Duration;

use work_host_api::{JobId, JobStatus, Priority, Violation};

use crate::store::StoreError;

/// Why the engine refused a request: one variant per reason a caller must
/// handle. How an accepted job *ended* is on the job, not here.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The job is malformed (empty tenant, negative CPU, bad payload).
    #[error("invalid job: {reason}")]
    InvalidJob {
        /// What to fix.
        reason: String,
    },
    /// A tool call's arguments do not match the tool's schema.
    #[error("invalid arguments for `{tool}`: {}", Violation::join(.violations))]
    InvalidArgs {
        /// The tool.
        tool: String,
        /// Each problem, with its JSON path.
        violations: Vec<Violation>,
    },
    /// No tool of that name (or version) is registered.
    #[error("unknown tool `{name}`")]
    UnknownTool {
        /// As asked for.
        name: String,
    },
    /// No backend runs jobs of this kind.
    #[error("no backend runs jobs of kind `{kind}`")]
    UnknownKind {
        /// The kind.
        kind: String,
    },
    /// A dependency is not a job of this tenant.
    #[error("unknown dependency {id}")]
    UnknownDependency {
        /// The id given.
        id: JobId,
    },
    /// The job needs more than the engine (or the tenant's quota) could
    /// ever give it.
    #[error("resources can never be satisfied: {reason}")]
    Unsatisfiable {
        /// What is too large.
        reason: String,
    },
    /// The tenant is at one of its quotas.
    #[error("tenant `{tenant}` is at its {limit} quota ({max})")]
    QuotaExceeded {
        /// The tenant.
        tenant: String,
        /// Which quota (`max_queued`, `max_cpu`, …).
        limit: &'static str,
        /// Its value.
        max: String,
    },
    /// The tenant submits faster than its rate allows.
    #[error("tenant `{tenant}` is over its submit rate; retry in {} ms", .retry_after.as_millis())]
    RateLimited {
        /// The tenant.
        tenant: String,
        /// When a submission would be accepted again.
        retry_after: Duration,
    },
    /// The level's queue is at capacity.
    #[error("the {priority} queue is full ({capacity} jobs)")]
    QueueFull {
        /// The level.
        priority: Priority,
        /// Its capacity.
        capacity: usize,
    },
    /// No such job (for this tenant).
    #[error("job {id} not found")]
    NotFound {
        /// The id.
        id: JobId,
    },
    /// The job is not in the dead-letter queue.
    #[error("job {id} is {status} and not in the dead-letter queue")]
    NotDeadLettered {
        /// The job.
        id: JobId,
        /// Its status.
        status: JobStatus,
    },
    /// One job of a batch was refused, so none was accepted.
    #[error("job {index} of the batch: {source}")]
    Batch {
        /// Its position in the batch, from 0.
        index: usize,
        /// Why.
        source: Box<EngineError>,
    },
    /// A backend failed while it looked the job over (it panicked in
    /// `supports` or `admit`): a fault of the backend, not of the job, so
    /// nothing was accepted and the same job may pass once it is fixed.
    #[error("backend `{backend}` failed to admit the job: {reason}")]
    Backend {
        /// The backend's name.
        backend: String,
        /// What went wrong.
        reason: String,
    },
    /// The engine's configuration is unusable.
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// What to fix.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl EngineError {
    /// A stable snake_case code for APIs and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidJob { .. } => "invalid_job",
            Self::InvalidArgs { .. } => "invalid_args",
            Self::UnknownTool { .. } => "unknown_tool",
            Self::UnknownKind { .. } => "unknown_kind",
            Self::UnknownDependency { .. } => "unknown_dependency",
            Self::Unsatisfiable { .. } => "unsatisfiable",
            Self::QuotaExceeded { .. } => "quota_exceeded",
            Self::RateLimited { .. } => "rate_limited",
            Self::QueueFull { .. } => "queue_full",
            Self::NotFound { .. } => "not_found",
            Self::NotDeadLettered { .. } => "not_dead_lettered",
            Self::Batch { source, .. } => source.code(),
            Self::Backend { .. } => "backend_error",
            Self::InvalidConfig { .. } => "invalid_config",
            Self::Store(StoreError::InvalidCursor(_)) => "invalid_cursor",
            Self::Store(_) => "store_error",
        }
    }

    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        Self::InvalidJob {
            reason: reason.into(),
        }
    }
}
