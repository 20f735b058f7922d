//! Where jobs are kept: the [`Store`] trait and its in-memory implementation.
//!
//! The scheduler keeps its queues in memory and treats the store as the
//! record of truth: a job exists once [`Store::insert`] returns, and every
//! change of status is one [`Store::transition`] whose precondition the store
//! checks atomically (a row `UPDATE … WHERE status = … AND lease_epoch = …`
//! in SQL). That is what lets several engines share one PostgreSQL store,
//! and what makes a stale attempt unable to overwrite a newer one: every
//! claim raises the job's `lease_epoch`, and reports carry the epoch they
//! were claimed with.

mod memory;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use work_host_api::{Job, JobError, JobId, JobKind, JobStatus, OutcomeClass};

pub use memory::MemoryStore;
#[cfg(feature = "sqlite")]
pub use sqlite::{Durability, SqliteStore};

/// Why the store refused or failed an operation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No job with that id.
    #[error("job {0} not found")]
    NotFound(JobId),
    /// The job is not in the state the change requires (already claimed,
    /// already finished, or the epoch is stale).
    #[error("job {id} is {status} (epoch {epoch}): {reason}")]
    Conflict {
        /// The job.
        id: JobId,
        /// Its status now.
        status: JobStatus,
        /// Its lease epoch now.
        epoch: u64,
        /// What was expected.
        reason: &'static str,
    },
    /// The same id was inserted twice.
    #[error("job {0} already exists")]
    Duplicate(JobId),
    /// A listing cursor this store did not hand out.
    #[error("invalid cursor `{0}`")]
    InvalidCursor(String),
    /// The store was opened for reading only.
    #[error("the store is open for reading only")]
    ReadOnly,
    /// The backing database failed.
    #[error("storage failed: {0}")]
    Backend(String),
}

/// One change of a job's state, applied atomically with its precondition.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Transition {
    /// `pending -> queued`: its dependencies succeeded.
    Ready,
    /// `queued -> running`: an attempt starts. Raises `attempt` and
    /// `lease_epoch`, sets `started_at` and `backend`.
    Claim {
        /// The backend that runs the attempt.
        backend: work_host_api::CompactString,
        /// When.
        at: DateTime<Utc>,
    },
    /// `running -> queued` for another attempt at `next_run_at`.
    Retry {
        /// The epoch the attempt was claimed with.
        epoch: u64,
        /// How the attempt ended.
        outcome: OutcomeClass,
        /// Why.
        error: JobError,
        /// When it may start again.
        next_run_at: DateTime<Utc>,
        /// What the attempt charged, in US dollars: added to `cost_usd`.
        cost_usd: f64,
    },
    /// `running ->` a terminal status.
    Finish {
        /// The epoch the attempt was claimed with.
        epoch: u64,
        /// `succeeded`, `failed`, `canceled` or `timeout`.
        status: JobStatus,
        /// How the attempt ended.
        outcome: OutcomeClass,
        /// The result, when it succeeded.
        result: Option<serde_json::Value>,
        /// Why not, otherwise.
        error: Option<JobError>,
        /// Kept in the dead-letter queue.
        dead_letter: bool,
        /// When.
        at: DateTime<Utc>,
        /// What the attempt charged, in US dollars: added to `cost_usd`.
        cost_usd: f64,
    },
    /// Any non-terminal status `-> canceled`, whatever its epoch.
    Cancel {
        /// Why.
        error: JobError,
        /// When.
        at: DateTime<Utc>,
    },
    /// A dead-lettered job back to `queued` with fresh attempts.
    Revive,
}

impl Transition {
    /// Applies the change to `job` if its precondition holds; the one place
    /// the rules live, shared by every store.
    ///
    /// # Errors
    ///
    /// [`StoreError::Conflict`] when the precondition fails.
    pub fn apply(self, job: &mut Job) -> Result<(), StoreError> {
        let conflict = |job: &Job, reason| StoreError::Conflict {
            id: job.id,
            status: job.status,
            epoch: job.lease_epoch,
            reason,
        };
        match self {
            Self::Ready => {
                if job.status != JobStatus::Pending {
                    return Err(conflict(job, "expected pending"));
                }
                job.status = JobStatus::Queued;
            }
            Self::Claim { backend, at } => {
                if job.status != JobStatus::Queued {
                    return Err(conflict(job, "expected queued"));
                }
                job.status = JobStatus::Running;
                job.attempt += 1;
                job.lease_epoch += 1;
                job.started_at = Some(at);
                job.next_run_at = None;
                if job.backend.as_deref() != Some(backend.as_str()) {
                    job.backend = Some(backend);
                }
            }
            Self::Retry {
                epoch,
                outcome,
                error,
                next_run_at,
                cost_usd,
            } => {
                if job.status != JobStatus::Running || job.lease_epoch != epoch {
                    return Err(conflict(job, "expected running with the same epoch"));
                }
                job.cost_usd += cost_usd;
                job.status = JobStatus::Queued;
                job.outcome = Some(outcome);
                job.error = Some(error);
                job.next_run_at = Some(next_run_at);
            }
            Self::Finish {
                epoch,
                status,
                outcome,
                result,
                error,
                dead_letter,
                at,
                cost_usd,
            } => {
                if job.status != JobStatus::Running || job.lease_epoch != epoch {
                    return Err(conflict(job, "expected running with the same epoch"));
                }
                job.cost_usd += cost_usd;
                job.status = status;
                job.outcome = Some(outcome);
                job.result = result;
                job.error = error;
                job.dead_letter = dead_letter;
                job.finished_at = Some(at);
            }
            Self::Cancel { error, at } => {
                if job.status.is_terminal() {
                    return Err(conflict(job, "expected a job that has not ended"));
                }
                job.status = JobStatus::Canceled;
                job.error = Some(error);
                job.finished_at = Some(at);
                job.next_run_at = None;
            }
            Self::Revive => {
                if !job.dead_letter || !job.status.is_terminal() {
                    return Err(conflict(job, "expected a dead-lettered job"));
                }
                job.status = JobStatus::Queued;
                job.dead_letter = false;
                job.attempt = 0;
                job.result = None;
                job.error = None;
                job.outcome = None;
                job.finished_at = None;
                job.next_run_at = None;
            }
        }
        Ok(())
    }
}

/// Which of a tenant's jobs to list. Pages run newest first.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JobQuery {
    /// The tenant; lists never cross tenants.
    pub tenant_id: String,
    /// Only this namespace.
    pub namespace: Option<String>,
    /// Only this status.
    pub status: Option<JobStatus>,
    /// Only this kind.
    pub kind: Option<JobKind>,
    /// Only jobs in the dead-letter queue.
    pub dead_letter: bool,
    /// Only jobs of this batch.
    pub batch_id: Option<uuid::Uuid>,
    /// Continue after this page ([`JobPage::next_cursor`]).
    pub cursor: Option<String>,
    /// At most this many (1 to 1000; default 100).
    pub limit: Option<usize>,
}

impl JobQuery {
    /// The largest page.
    pub const MAX_LIMIT: usize = 1000;

    /// Every job of `tenant`.
    pub fn tenant(tenant: impl Into<String>) -> Self {
        Self {
            tenant_id: tenant.into(),
            ..Self::default()
        }
    }

    /// Only `namespace`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Only `status`.
    pub fn status(mut self, status: JobStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// Only `kind`.
    pub fn kind(mut self, kind: impl Into<JobKind>) -> Self {
        self.kind = Some(kind.into());
        self
    }

    /// Only dead-lettered jobs.
    pub fn dead_letters(mut self) -> Self {
        self.dead_letter = true;
        self
    }

    /// Only jobs of `batch`.
    pub fn batch(mut self, batch: uuid::Uuid) -> Self {
        self.batch_id = Some(batch);
        self
    }

    /// Continue from `cursor`.
    pub fn cursor(mut self, cursor: impl Into<String>) -> Self {
        self.cursor = Some(cursor.into());
        self
    }

    /// At most `limit` jobs.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// The page size, clamped to `1..=MAX_LIMIT`.
    pub fn page_size(&self) -> usize {
        self.limit.unwrap_or(100).clamp(1, Self::MAX_LIMIT)
    }

    /// The cursor as a job id.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidCursor`] when it is not one a store handed out.
    pub fn cursor_id(&self) -> Result<Option<JobId>, StoreError> {
        self.cursor
            .as_deref()
            .map(|c| {
                c.parse()
                    .map_err(|_| StoreError::InvalidCursor(c.to_owned()))
            })
            .transpose()
    }

    /// Whether `job` passes every filter but the cursor.
    pub fn matches(&self, job: &Job) -> bool {
        job.tenant_id == self.tenant_id
            && self.namespace.as_ref().is_none_or(|ns| job.namespace == ns)
            && self.status.is_none_or(|s| job.status == s)
            && self.kind.as_ref().is_none_or(|k| &job.kind == k)
            && (!self.dead_letter || job.dead_letter)
            && self.batch_id.is_none_or(|b| job.batch_id == Some(b))
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct JobPage {
    /// Newest first.
    #[cfg_attr(feature = "server", schema(value_type = Vec<Job>))]
    pub jobs: Vec<Arc<Job>>,
    /// Pass back as [`JobQuery::cursor`] for the next page; `None` at the end.
    pub next_cursor: Option<String>,
}

/// When a store call that changes jobs may answer.
///
/// Durability costs a commit (an fsync, on SQLite) the caller waits for.
/// Some changes need not hold anyone up: if the process dies before they
/// are durable, recovery repairs what is lost. The scheduler claims jobs
/// this way (a claim lost in a crash only leaves the attempt uncounted),
/// and a synchronous call inserts its job this way (its caller, still
/// waiting, sees the connection fail and has no job id to look for).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Commit {
    /// Once the change is durable.
    #[default]
    Durable,
    /// Once the change is decided and ordered before every change asked
    /// for later: it is durable once a later durable change, or
    /// [`Store::flush`], has returned. A store may answer later (a
    /// change it must decide against its table: an idempotency key, an
    /// all-or-none batch, a job it no longer holds in memory).
    Ordered,
}

/// What [`Store::insert`] did with one job.
#[derive(Debug, Clone, PartialEq)]
pub enum Inserted {
    /// Stored.
    New,
    /// Not stored: the tenant already has a job with its idempotency key.
    Existing(Arc<Job>),
}

/// The record of jobs.
///
/// Implementations: [`MemoryStore`] here; SQLite and PostgreSQL in their
/// own modules. Every implementation must pass the same conformance tests
/// (`engine/tests/all/store.rs`).
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Inserts `jobs` atomically: all or none. A job whose tenant already
    /// has a job with the same idempotency key (stored, or earlier in
    /// `jobs`) is not inserted; the existing job is returned in its place.
    ///
    /// # Errors
    ///
    /// [`StoreError::Duplicate`] for an id that exists; storage failures.
    /// An [`Commit::Ordered`] insert a store decided before writing may
    /// find its id taken only when it writes: the job is then dropped,
    /// and the error logged.
    async fn insert(
        &self,
        jobs: Vec<Arc<Job>>,
        commit: Commit,
    ) -> Result<Vec<Inserted>, StoreError>;

    /// One job.
    ///
    /// # Errors
    ///
    /// Storage failures only; an unknown id is `Ok(None)`.
    async fn get(&self, id: JobId) -> Result<Option<Arc<Job>>, StoreError>;

    /// The job `tenant` submitted with `external_id` (the newest, if several).
    ///
    /// # Errors
    ///
    /// Storage failures only.
    async fn get_by_external_id(
        &self,
        tenant: &str,
        external_id: &str,
    ) -> Result<Option<Arc<Job>>, StoreError>;

    /// The job `tenant` submitted with idempotency key `key`: what a
    /// second submission with that key is answered with.
    ///
    /// # Errors
    ///
    /// Storage failures only.
    async fn get_by_idempotency_key(
        &self,
        tenant: &str,
        key: &str,
    ) -> Result<Option<Arc<Job>>, StoreError>;

    /// A page of a tenant's jobs, newest first, served from indexes by
    /// tenant, namespace and status rather than a scan of every job.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidCursor`]; storage failures.
    async fn list(&self, query: &JobQuery) -> Result<JobPage, StoreError>;

    /// Applies `change` if its precondition holds ([`Transition::apply`]),
    /// atomically, and returns the job as it is after (shared: a store
    /// may keep the same allocation).
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`], [`StoreError::Conflict`].
    async fn transition(&self, id: JobId, change: Transition) -> Result<Arc<Job>, StoreError>;

    /// Several [`Store::transition`]s, each atomic on its own, with one
    /// result per change in order. The scheduler claims and records jobs
    /// in batches through this; a store can make it one round trip (one
    /// SQL transaction, one lock per index). By default, one at a time,
    /// each durable.
    async fn transition_batch(
        &self,
        changes: Vec<(JobId, Transition)>,
        commit: Commit,
    ) -> Vec<Result<Arc<Job>, StoreError>> {
        let _ = commit;
        let mut results = Vec::with_capacity(changes.len());
        for (id, change) in changes {
            results.push(self.transition(id, change).await);
        }
        results
    }

    /// Returns once every change this store has answered is durable,
    /// [`Commit::Ordered`] ones included.
    ///
    /// # Errors
    ///
    /// Storage failures.
    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Every job that has not ended, for an engine starting on this store.
    ///
    /// # Errors
    ///
    /// Storage failures.
    async fn unfinished(&self) -> Result<Vec<Arc<Job>>, StoreError>;
}
