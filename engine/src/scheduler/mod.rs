//! The scheduler and executor: the [`Engine`] that admits jobs, queues them
//! by priority and fairly across tenants, dispatches them when their
//! resources fit, runs them on a backend and retries them by their policy.
//!
//! ```
//! use std::sync::Arc;
//! use work_engine::backends::MockBackend;
//! use work_engine::{Capacity, Engine, JobStatus, NewJob};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), work_engine::EngineError> {
//! let engine = Engine::builder()
//!     .capacity(Capacity { cpu: 4.0, memory_mb: 8192, gpus: vec![] })
//!     .backend(MockBackend::new())
//!     .build()?;
//! let job = engine.submit(NewJob::new("inference", "acme", serde_json::json!({"prompt": "hi"}))).await?;
//! let done = engine.wait(job.id, std::time::Duration::from_secs(5)).await?;
//! assert_eq!(done.status, JobStatus::Succeeded);
//! # Ok(()) }
//! ```

mod config;
mod error;
mod executor;
mod state;
mod stats;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::FutureExt as _;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use work_host_api::{
    AdmitError, Backend, ExecContext, ExecError, Job, JobError, JobId, JobKind, JobStatus, NewJob,
    OutcomeClass, Priority, RetryPolicy,
};

use crate::backends::WasmBackend;
use crate::events::{EventData, EventStream, Telemetry};
use crate::spinning_mutex::SpinningMutex;
use crate::store::{
    Commit, Inserted, JobPage, JobQuery, MemoryStore, Store, StoreError, Transition,
};
use crate::tool_host::ToolHost;

pub use config::{Capacity, Quota, TenantConfig};
pub use error::EngineError;
pub use stats::{Histogram, LevelStats, ResourceStats, Stats, StatusCounts, Summary, TenantStats};

use config::{JobDefaults, SchedulerConfig};
use state::{CancelAction, Live, Need, Place, PlaceOutcome, Released, Revival, State};

/// Jobs accepted together by [`Engine::submit_batch`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Batch {
    /// The batch id, on every job of it.
    pub id: Uuid,
    /// The jobs, in the order given.
    #[cfg_attr(feature = "server", schema(value_type = Vec<Job>))]
    pub jobs: Vec<Arc<Job>>,
}

/// The engine: cheap to clone, every clone the same engine.
///
/// Built with [`Engine::builder`] inside a Tokio runtime (with its timer);
/// it runs attempts as Tokio tasks.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

/// A backend as the engine holds it. The `wasm` backend that
/// [`EngineBuilder::tool_host`] adds is held as its own type, and its
/// admissions and attempts are called directly, not through the trait's
/// `async_trait` boxes: an attempt's call then lives in the attempt's own
/// future instead of a box allocated and written afresh at each attempt.
/// Every other backend (a `WasmBackend` added with
/// [`EngineBuilder::backend`] too) goes through [`Backend`].
enum HeldBackend {
    Wasm(Arc<WasmBackend>),
    Other(Arc<dyn Backend>),
}

impl HeldBackend {
    fn as_backend(&self) -> &dyn Backend {
        match self {
            Self::Wasm(wasm) => &**wasm,
            Self::Other(backend) => &**backend,
        }
    }

    fn name(&self) -> &str {
        self.as_backend().name()
    }

    fn supports(&self, job: &Job) -> bool {
        self.as_backend().supports(job)
    }

    async fn admit(&self, job: &Job) -> Result<(), AdmitError> {
        match self {
            Self::Wasm(wasm) => wasm.check(job).await,
            Self::Other(backend) => backend.admit(job).await,
        }
    }

    async fn execute(&self, job: &Job, ctx: ExecContext) -> Result<serde_json::Value, ExecError> {
        match self {
            Self::Wasm(wasm) => wasm.run(job, ctx).await,
            Self::Other(backend) => backend.execute(job, ctx).await,
        }
    }
}

pub(crate) struct Inner {
    state: SpinningMutex<State>,
    store: Arc<dyn Store>,
    backends: Vec<HeldBackend>,
    telemetry: Telemetry,
    timer: Arc<Notify>,
    /// Wakes an idle runner when jobs are dispatched.
    runner_wake: Arc<Notify>,
    shutdown: CancellationToken,
    defaults: JobDefaults,
    /// Batches of results the runners handed to tasks of their own to
    /// wait for the store's commit ([`executor::RECORDS_IN_FLIGHT`]).
    records: Arc<tokio::sync::Semaphore>,
    /// The runtime the engine was built in: work that must outlive its
    /// caller runs there, whatever runtime (or none) the caller is on.
    runtime: tokio::runtime::Handle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Builds an [`Engine`]. Every setting has a default, listed with it.
pub struct EngineBuilder {
    config: SchedulerConfig,
    defaults: JobDefaults,
    backends: Vec<HeldBackend>,
    store: Option<Arc<dyn Store>>,
    runners: Option<usize>,
    observer: Option<crate::events::EventObserver>,
}

impl EngineBuilder {
    /// What may run at once. Default: [`Capacity::of_this_machine`].
    pub fn capacity(mut self, capacity: Capacity) -> Self {
        self.config.capacity = capacity;
        self
    }

    /// Runs `tool_call` jobs on `host`'s tools (the `wasm` backend).
    pub fn tool_host(mut self, host: Arc<ToolHost>) -> Self {
        let wasm = WasmBackend::new(host);
        self.backends.push(HeldBackend::Wasm(Arc::new(wasm)));
        self
    }

    /// Adds a backend. A job runs on the first backend, in the order
    /// added, that supports it.
    pub fn backend(self, backend: impl Backend) -> Self {
        self.backend_arc(Arc::new(backend))
    }

    /// [`EngineBuilder::backend`] for a backend already shared.
    pub fn backend_arc(mut self, backend: Arc<dyn Backend>) -> Self {
        self.backends.push(HeldBackend::Other(backend));
        self
    }

    /// Where jobs are kept. Default: a fresh [`MemoryStore`].
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// `tenant`'s weight and quota. Default: [`EngineBuilder::default_tenant`].
    pub fn tenant(mut self, tenant: impl Into<String>, config: TenantConfig) -> Self {
        self.config.tenants.insert(tenant.into(), config);
        self
    }

    /// Weight and quota of tenants not configured by name. Default: weight
    /// 1, no limits.
    pub fn default_tenant(mut self, config: TenantConfig) -> Self {
        self.config.default_tenant = config;
        self
    }

    /// The level of jobs that name none. Default: `batch`.
    pub fn default_priority(mut self, priority: Priority) -> Self {
        self.defaults.priority = priority;
        self
    }

    /// The retry policy of jobs that name none. Default: 3 attempts,
    /// exponential from 1 s up to 60 s, with jitter, on `trap`, `timeout`
    /// and `retryable`.
    pub fn default_retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.defaults.retry_policy = policy;
        self
    }

    /// The wall-clock limit of attempts whose job names none. Default:
    /// none (a tool call still gets the sandbox's own limit).
    pub fn default_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.defaults.timeout = timeout;
        self
    }

    /// How many jobs may wait at `priority` (pending or queued). Default:
    /// 1,000,000 per level.
    pub fn queue_capacity(mut self, priority: Priority, capacity: usize) -> Self {
        self.config.queue_capacity[priority.index()] = capacity;
        self
    }

    /// How many jobs a tenant of weight 1 may start per turn within a
    /// level. Default: 4. A job another tenant submits behind a flood
    /// starts within `tenants × quantum × weight` dispatches.
    pub fn quantum(mut self, quantum: u32) -> Self {
        self.config.quantum = quantum.max(1);
        self
    }

    /// After how long waiting at one level a job moves one level up;
    /// `None` turns aging off. Default: 60 s.
    pub fn aging(mut self, aging: Option<Duration>) -> Self {
        self.config.aging = aging;
        self
    }

    /// At most `limit` running jobs of concurrency group `group`.
    pub fn concurrency_limit(mut self, group: impl Into<String>, limit: u32) -> Self {
        self.config
            .concurrency_limits
            .insert(group.into(), limit.max(1));
        self
    }

    /// The limit of groups not named. Default: 1.
    pub fn default_concurrency_limit(mut self, limit: u32) -> Self {
        self.config.default_concurrency_limit = limit.max(1);
        self
    }

    /// How long a cancelled or timed-out attempt may take to stop before
    /// the engine abandons it. Default: 5 s.
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.defaults.cancel_grace = grace;
        self
    }

    /// Events each subscriber may fall behind by before it loses the
    /// oldest. Default: 4096.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.config.event_capacity = capacity;
        self
    }

    /// Calls `observer` with every event, as it is emitted (see
    /// [`EventObserver`](crate::events::EventObserver)): the lossless
    /// counterpart of [`Engine::subscribe`].
    pub fn observer(mut self, observer: crate::events::EventObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// How many runner tasks claim dispatched jobs and run their attempts.
    /// An attempt that does not finish at once continues in a task of its
    /// own, so this bounds batching, not how many jobs run at once.
    /// Default: the runtime's worker threads.
    pub fn runners(mut self, runners: usize) -> Self {
        self.runners = Some(runners.max(1));
        self
    }

    /// Builds the engine and starts its timer and runner tasks.
    ///
    /// # Errors
    ///
    /// [`EngineError::InvalidConfig`] for a negative or non-finite
    /// capacity, or when called outside a Tokio runtime.
    pub fn build(self) -> Result<Engine, EngineError> {
        let capacity = &self.config.capacity;
        if !capacity.cpu.is_finite() || capacity.cpu < 0.0 {
            return Err(EngineError::InvalidConfig {
                reason: format!(
                    "cpu capacity {} must be a number of cores >= 0",
                    capacity.cpu
                ),
            });
        }
        if self.backends.len() > usize::from(u16::MAX) {
            return Err(EngineError::InvalidConfig {
                reason: format!("{} backends; at most {}", self.backends.len(), u16::MAX),
            });
        }
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| EngineError::InvalidConfig {
                reason: "Engine::build must be called inside a Tokio runtime".to_owned(),
            })?;
        let runners = self
            .runners
            .unwrap_or_else(|| runtime.metrics().num_workers().max(1));
        let event_capacity = self.config.event_capacity;
        let mut state = State::new(self.config);
        if state.gpu_kinds().len() > usize::from(u16::MAX) {
            return Err(EngineError::InvalidConfig {
                reason: format!(
                    "{} GPU types; at most {}",
                    state.gpu_kinds().len(),
                    u16::MAX
                ),
            });
        }
        state.runners = runners;
        let inner = Arc::new(Inner {
            store: self.store.unwrap_or_else(|| Arc::new(MemoryStore::new())),
            backends: self.backends,
            telemetry: Telemetry::new(event_capacity, self.observer),
            timer: Arc::new(Notify::new()),
            runner_wake: Arc::new(Notify::new()),
            shutdown: CancellationToken::new(),
            defaults: self.defaults,
            records: Arc::new(tokio::sync::Semaphore::new(executor::RECORDS_IN_FLIGHT)),
            state: SpinningMutex::new(state),
            runtime: runtime.clone(),
        });
        runtime.spawn(timer_loop(
            Arc::downgrade(&inner),
            Arc::clone(&inner.timer),
            inner.shutdown.clone(),
        ));
        for _ in 0..runners {
            runtime.spawn(executor::runner(
                Arc::downgrade(&inner),
                Arc::clone(&inner.runner_wake),
                inner.shutdown.clone(),
            ));
        }
        Ok(Engine { inner })
    }
}

/// Polls `work` once, in the caller's task: whether it ended there.
pub(crate) async fn poll_once<F: Future + ?Sized>(mut work: Pin<&mut F>) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await
}

/// Lets the worker thread run other tasks, this one moved to the back of
/// its run queue, where an idle worker can take it.
///
/// A task that wakes another (a runner) from a Tokio worker puts it in
/// that worker's next-task slot, which other workers cannot steal from,
/// and no idle worker is told: the woken task waits until this one
/// yields. `tokio::task::yield_now` does not help: it defers this task's
/// wake-up until the worker has nothing else to run, so this task then
/// waits in the same way. A task that wakes itself and returns `Pending`
/// goes to the back of the run queue instead, from where an idle worker,
/// which Tokio wakes for it, takes it.
pub(crate) async fn yield_to_workers() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if std::mem::replace(&mut yielded, true) {
            return Poll::Ready(());
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
}

/// Runs `work` to its end even if the caller's future is dropped first.
/// Polled in place first (most work ends at once, and costs no task of
/// its own); work that has to wait moves to a task of its own, which the
/// caller awaits.
///
/// # Errors
///
/// When the task panicked.
async fn detached<T: Send + 'static>(
    runtime: &tokio::runtime::Handle,
    work: impl Future<Output = T> + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    let mut work = Box::pin(work);
    match poll_once(work.as_mut()).await {
        Poll::Ready(done) => Ok(done),
        Poll::Pending => runtime.spawn(work).await,
    }
}

/// What a caught panic said: its message, when it has one.
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a value that is not a message")
}

/// The error for a backend that panicked while it looked a job over.
fn backend_panicked(backend: &str, panic: &(dyn std::any::Any + Send)) -> EngineError {
    EngineError::Backend {
        backend: backend.to_owned(),
        reason: format!("it panicked: {}", panic_text(panic)),
    }
}

/// The error for work handed to a task of its own that panicked (or was
/// dropped with the runtime).
fn panicked(err: &tokio::task::JoinError) -> EngineError {
    EngineError::Store(StoreError::Backend(format!(
        "the engine's task failed: {err}"
    )))
}

/// Wakes for delayed jobs and aging; everything else dispatches inline.
async fn timer_loop(inner: Weak<Inner>, wake: Arc<Notify>, shutdown: CancellationToken) {
    loop {
        let next = match inner.upgrade() {
            Some(inner) => inner.state.lock().next_wakeup(Instant::now()),
            None => return,
        };
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = wake.notified() => {}
            () = sleep => {}
        }
        let Some(inner) = inner.upgrade() else { return };
        let now = Instant::now();
        let wake = {
            let mut state = inner.state.lock();
            for (id, tenant, priority, depth) in state.tick(now) {
                inner
                    .telemetry
                    .job(id, &tenant, || EventData::Enqueued { priority, depth });
            }
            state.dispatch(now)
        };
        inner.wake_runner(wake);
    }
}

/// A submission checked and filled in, not yet admitted.
struct Prepared {
    job: Arc<Job>,
    backend: usize,
    run_at: Option<Instant>,
    /// Dependencies that had not succeeded when read.
    open_deps: Vec<JobId>,
    /// A dependency had already failed for good.
    doomed: bool,
}

/// A submission placed in the state (see [`Inner::place_stored`]).
struct Placed {
    accepted: Vec<Arc<Job>>,
    follow_up: FollowUp,
    /// The submitter should yield to a runner it woke.
    yield_now: bool,
}

/// What placing a submission left to do that has to wait: jobs whose
/// dependencies failed, jobs cancelled as they were placed, and holds on
/// dependencies to resolve.
#[derive(Default)]
struct FollowUp {
    doomed: Vec<JobId>,
    stopped: Released,
    holds: Vec<(JobId, Vec<JobId>)>,
}

impl FollowUp {
    fn is_empty(&self) -> bool {
        self.doomed.is_empty() && self.stopped.is_empty() && self.holds.is_empty()
    }
}

impl Engine {
    /// A builder with every default.
    pub fn builder() -> EngineBuilder {
        EngineBuilder {
            config: SchedulerConfig::default(),
            defaults: JobDefaults::default(),
            backends: Vec::new(),
            store: None,
            runners: None,
            observer: None,
        }
    }

    /// Admits one job: validates it (a tool call's arguments against the
    /// tool's schema), checks the tenant's quotas and the queue's capacity,
    /// stores it and queues it.
    ///
    /// # Errors
    ///
    /// Each reason has its [`EngineError`] variant: `InvalidJob`,
    /// `InvalidArgs`, `UnknownTool`, `UnknownKind`, `UnknownDependency`,
    /// `Unsatisfiable`, `QuotaExceeded`, `RateLimited`, `QueueFull`,
    /// `Store`. Nothing is stored when it fails.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it completes may or may not have
    /// accepted the job; use an idempotency key to resubmit safely. A job
    /// accepted is scheduled and runs all the same: once the engine has
    /// counted it against the quotas, the submission goes on to its end
    /// without the caller.
    pub async fn submit(&self, job: NewJob) -> Result<Arc<Job>, EngineError> {
        self.admit_one(job, Commit::Durable).await
    }

    /// Submits `job` and waits up to `timeout` for it to end: a
    /// synchronous call, as `POST /v1/tools/{name}/call` makes.
    ///
    /// Unlike [`Engine::submit`], which returns once the job is durable,
    /// this stores the job without waiting ([`Commit::Ordered`]): the
    /// caller is waiting for the result, not for an acknowledgement. It
    /// returns once the job's end is durable, or, when the job has not
    /// ended by `timeout`, once the job itself is, so that it can be
    /// looked up by its id. If the process stops during the call, the job
    /// is lost, or recovered and run again, and the caller sees its call
    /// fail; one commit (one fsync on SQLite) per call instead of three.
    ///
    /// # Errors
    ///
    /// As [`Engine::submit`].
    ///
    /// # Cancel safety
    ///
    /// As [`Engine::submit`]: dropping the future does not cancel the job.
    pub async fn call(&self, job: NewJob, timeout: Duration) -> Result<Arc<Job>, EngineError> {
        let job = self.admit_one(job, Commit::Ordered).await?;
        let job = self.wait(job.id, timeout).await?;
        if !job.status.is_terminal() {
            self.inner.store.flush().await?;
        }
        Ok(job)
    }

    async fn admit_one(&self, job: NewJob, commit: Commit) -> Result<Arc<Job>, EngineError> {
        let mut jobs = self
            .admit(vec![job], None, commit)
            .await
            .map_err(|err| match err {
                EngineError::Batch { source, .. } => *source,
                other => other,
            })?;
        jobs.pop()
            .ok_or_else(|| EngineError::invalid("empty submission"))
    }

    /// Admits several jobs atomically: all of them or none.
    ///
    /// # Errors
    ///
    /// [`EngineError::Batch`] with the index of the first job refused and
    /// why; nothing is stored then.
    ///
    /// # Cancel safety
    ///
    /// As [`Engine::submit`].
    pub async fn submit_batch(&self, jobs: Vec<NewJob>) -> Result<Batch, EngineError> {
        if jobs.is_empty() {
            return Err(EngineError::invalid("a batch needs at least one job"));
        }
        let id = Uuid::now_v7();
        let jobs = self.admit(jobs, Some(id), Commit::Durable).await?;
        Ok(Batch { id, jobs })
    }

    async fn admit(
        &self,
        new: Vec<NewJob>,
        batch: Option<Uuid>,
        commit: Commit,
    ) -> Result<Vec<Arc<Job>>, EngineError> {
        let inner = &self.inner;
        let batch_error = |index: usize| {
            move |err: EngineError| EngineError::Batch {
                index,
                source: Box::new(err),
            }
        };
        // One clock read for the whole submission: its jobs were created
        // together.
        let submitted_at = Utc::now();
        let mut prepared = Vec::with_capacity(new.len());
        for (index, job) in new.into_iter().enumerate() {
            // Built outside any future: a job is large, and every future
            // that held it would copy it as it moved.
            let checked = match inner.build(job, batch, submitted_at) {
                Ok((job, backend, run_at)) => inner.prepare(Arc::new(job), backend, run_at).await,
                Err(err) => Err(err),
            };
            prepared.push(checked.map_err(batch_error(index))?);
        }

        // Quotas and capacity, for the whole submission at once.
        let now = Instant::now();
        let reserved = {
            let mut state = inner.state.lock();
            let mut lives = Vec::with_capacity(prepared.len());
            let mut seen = None;
            for (index, p) in prepared.iter().enumerate() {
                match live_for(&mut state, &p.job, p.backend, now, &mut seen) {
                    Ok(live) => lives.push((p.job.id, live, cost_hold(&p.job))),
                    Err(err) => {
                        state.discard(lives.into_iter().map(|(_, live, _)| live));
                        return Err(batch_error(index)(err));
                    }
                }
            }
            if lives.len() <= AT_ONCE {
                state.admit(lives, now).map(|()| Vec::new())
            } else {
                state.reserve(lives, now)
            }
        };
        let refused = match reserved {
            Ok(lives) => {
                // A large submission is taken in a few jobs at a time, as it
                // is placed later; the boxes made before, outside the lock.
                let boxed: Vec<_> = lives
                    .into_iter()
                    .map(|(id, live, hold)| (id, Box::new(live), hold))
                    .collect();
                let mut boxed = boxed.into_iter().peekable();
                while boxed.peek().is_some() {
                    let mut state = inner.state.lock();
                    for (id, live, hold) in boxed.by_ref().take(AT_ONCE) {
                        state.take_in(id, live, hold);
                    }
                }
                None
            }
            Err(refused) => Some(refused),
        };
        if let Some((err, overflow)) = refused {
            if let Some(existing) = inner.retried(&prepared).await {
                return Ok(existing);
            }
            if let (Some(priority), EngineError::QueueFull { capacity, .. }) = (overflow, &err) {
                let capacity = *capacity;
                let tenant = prepared.first().map(|p| p.job.tenant_id.clone());
                inner
                    .telemetry
                    .emit(None, tenant.as_deref(), || EventData::Overflow {
                        priority,
                        capacity,
                    });
            }
            return Err(if prepared.len() == 1 && batch.is_none() {
                err
            } else {
                batch_error(0)(err)
            });
        }

        // Counted in the state now: from here on the submission runs to its
        // end even if the caller goes away (an HTTP client that hangs up
        // drops the request's future), or a job the store took in would
        // never be queued and its place in the quotas never given back.
        // In place while nothing waits (the usual case, at no cost); in a
        // task of its own, which the caller awaits, from the first wait.
        let mut stored = inner.store_jobs(&prepared, commit);
        let placed = match poll_once(stored.as_mut()).await {
            Poll::Ready(inserted) => inner.place_stored(prepared, inserted)?,
            Poll::Pending => {
                let runtime = inner.runtime.clone();
                let inner = Arc::clone(inner);
                let placing = runtime.spawn(async move {
                    let mut placed = inner.place_stored(prepared, stored.await)?;
                    let follow_up = std::mem::take(&mut placed.follow_up);
                    inner.follow_up(follow_up).await;
                    Ok(placed)
                });
                placing.await.unwrap_or_else(|err| Err(panicked(&err)))?
            }
        };
        let Placed {
            accepted,
            follow_up,
            yield_now,
        } = placed;
        if !follow_up.is_empty() {
            let follow_up = Arc::clone(inner).follow_up(follow_up);
            let _ = detached(&inner.runtime, follow_up).await;
        }
        if yield_now {
            // The woken runner waits in this worker's next-task slot, which
            // other workers cannot steal from, until this task yields; a
            // caller that submits in a loop without awaiting anything
            // keeps it there. Small amounts of work may wait for it (they
            // make bigger batches), but not more than a runner takes at
            // once, nor queued work that waits for running jobs to end.
            // Yield: this task moves behind the runner, where an idle
            // worker can pick either up.
            yield_to_workers().await;
        }
        Ok(accepted)
    }

    /// Takes up the jobs the store holds that have not ended, as an engine
    /// starting on a durable store must: queued and pending jobs are
    /// scheduled again (quotas do not apply: they were accepted already);
    /// a job that was running when the previous engine stopped has lost
    /// its attempt, which counts: it is queued for another, or ends
    /// `failed` (dead-lettered, `backend_error`) when it has none left. A
    /// job no backend here can run, or that no longer fits the capacity,
    /// ends `canceled` with the reason. Call it once, before submitting.
    ///
    /// Returns how many jobs were taken up.
    ///
    /// # Errors
    ///
    /// [`EngineError::Store`] when the store cannot be read.
    pub async fn recover(&self) -> Result<usize, EngineError> {
        let inner = &self.inner;
        let mut jobs = inner.store.unfinished().await?;
        jobs.sort_by_key(|job| job.id);
        let at = Utc::now();
        let mut recovered = Vec::with_capacity(jobs.len());
        for job in jobs {
            if job.status != JobStatus::Running {
                recovered.push(job);
                continue;
            }
            let lost = format!(
                "the engine stopped during attempt {} of {}",
                job.attempt,
                job.retry_policy().max_attempts
            );
            let error = |retryable| JobError {
                code: OutcomeClass::BackendError.as_str().to_owned(),
                message: lost.clone(),
                retryable,
            };
            let change = if job.attempt < job.retry_policy().max_attempts {
                Transition::Retry {
                    epoch: job.lease_epoch,
                    outcome: OutcomeClass::BackendError,
                    error: error(true),
                    next_run_at: at,
                    // What the lost attempt spent was never reported.
                    cost_usd: 0.0,
                }
            } else {
                Transition::Finish {
                    epoch: job.lease_epoch,
                    status: JobStatus::Failed,
                    outcome: OutcomeClass::BackendError,
                    result: None,
                    error: Some(error(false)),
                    dead_letter: true,
                    at,
                    cost_usd: 0.0,
                }
            };
            let job = inner.store.transition(job.id, change).await?;
            if !job.status.is_terminal() {
                recovered.push(job);
            }
        }

        // Queued before pending, so that dependencies are live when their
        // dependents are placed.
        recovered.sort_by_key(|job| (job.status == JobStatus::Pending, job.id));
        let count = recovered.len();
        let mut doomed = Vec::new();
        for job in recovered {
            let mut open_deps = Vec::new();
            let mut failed_dep = None;
            if job.status == JobStatus::Pending {
                for dep in &job.constraints.depends_on {
                    match inner.store.get(*dep).await? {
                        Some(found) if found.status == JobStatus::Succeeded => {}
                        Some(found) if !found.status.is_terminal() => open_deps.push(*dep),
                        _ => failed_dep = Some(*dep),
                    }
                }
            }
            let now = Instant::now();
            let refused = {
                let mut state = inner.state.lock();
                let placed = inner
                    .select_backend(&job)
                    .and_then(|backend| live_for(&mut state, &job, backend, now, &mut None));
                match placed {
                    Ok(live) => {
                        state.readmit(job.id, live, cost_hold(&job), now);
                        if failed_dep.is_some() {
                            state.doom(job.id);
                        } else {
                            let run_at = next_run_instant(&job, now);
                            let outcome = state.place(job.id, &open_deps, false, run_at, now);
                            inner.announce_queued(&job, outcome);
                        }
                        None
                    }
                    Err(err) => Some(err),
                }
            };
            if let Some(dep) = failed_dep {
                doomed.push((job.id, dep));
            }
            if let Some(err) = refused {
                let error = JobError {
                    code: err.code().to_owned(),
                    message: format!("cannot run after a restart: {err}"),
                    retryable: false,
                };
                let at = Utc::now();
                inner
                    .store
                    .transition(job.id, Transition::Cancel { error, at })
                    .await?;
            }
        }
        for (id, dep) in doomed {
            inner
                .cancel_waiting(id, dependency_failed(format!("dependency {dep} failed")))
                .await;
        }
        let wake = inner.state.lock().dispatch(Instant::now());
        inner.wake_runner(wake);
        inner.timer.notify_one();
        Ok(count)
    }

    /// One job.
    ///
    /// # Errors
    ///
    /// [`EngineError::NotFound`]; [`EngineError::Store`].
    pub async fn get(&self, id: JobId) -> Result<Arc<Job>, EngineError> {
        self.inner
            .store
            .get(id)
            .await?
            .ok_or(EngineError::NotFound { id })
    }

    /// The job `tenant` submitted with `external_id`.
    ///
    /// # Errors
    ///
    /// [`EngineError::Store`] only; an unknown id is `Ok(None)`.
    pub async fn get_by_external_id(
        &self,
        tenant: &str,
        external_id: &str,
    ) -> Result<Option<Arc<Job>>, EngineError> {
        Ok(self
            .inner
            .store
            .get_by_external_id(tenant, external_id)
            .await?)
    }

    /// A page of a tenant's jobs, newest first, filtered by namespace,
    /// status, kind or batch.
    ///
    /// ```no_run
    /// # async fn f(engine: work_engine::Engine) -> Result<(), work_engine::EngineError> {
    /// use work_engine::{JobQuery, JobStatus};
    /// let page = engine.list(&JobQuery::tenant("acme").status(JobStatus::Failed).limit(50)).await?;
    /// if let Some(cursor) = page.next_cursor {
    ///     let _next = engine.list(&JobQuery::tenant("acme").status(JobStatus::Failed).cursor(cursor)).await?;
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`EngineError::Store`] (an invalid cursor among them).
    pub async fn list(&self, query: &JobQuery) -> Result<JobPage, EngineError> {
        Ok(self.inner.store.list(query).await?)
    }

    /// A page of a tenant's dead-letter queue: jobs that ended `failed` or
    /// `timeout`, newest first.
    ///
    /// # Errors
    ///
    /// As [`Engine::list`].
    pub async fn dead_letters(&self, query: &JobQuery) -> Result<JobPage, EngineError> {
        self.list(&query.clone().dead_letters()).await
    }

    /// Runs a dead-lettered job again, with fresh attempts.
    ///
    /// # Errors
    ///
    /// [`EngineError::NotFound`], [`EngineError::NotDeadLettered`], or the
    /// admission errors of [`Engine::submit`] for quotas and capacity.
    pub async fn retry_dead_letter(&self, id: JobId) -> Result<Arc<Job>, EngineError> {
        let inner = &self.inner;
        let mut job = self.get(id).await?;
        let job = loop {
            if !job.dead_letter {
                return Err(EngineError::NotDeadLettered {
                    id,
                    status: job.status,
                });
            }
            let backend = inner.select_backend(&job)?;
            let now = Instant::now();
            let ending = {
                let mut state = inner.state.lock();
                match state.revival(id) {
                    Revival::Free => {
                        let live = live_for(&mut state, &job, backend, now, &mut None)?;
                        state
                            .admit(vec![(id, live, cost_hold(&job))], now)
                            .map_err(|(err, _)| err)?;
                        break job;
                    }
                    Revival::Busy(status) => {
                        return Err(EngineError::NotDeadLettered { id, status });
                    }
                    Revival::Ending(ending) => ending,
                }
            };
            // Either the store has its end and the scheduler is about to
            // let go of it (taking it in before would lose it), or another
            // caller took it in again since it was read (as the next read
            // says).
            job = self.get(id).await?;
            if job.dead_letter {
                let _ = ending.await;
                job = self.get(id).await?;
            }
        };
        let was = job.status;
        // Counted in the state now: it goes on without the caller.
        detached(&inner.runtime, Arc::clone(inner).revive_and_place(id, was))
            .await
            .unwrap_or_else(|err| Err(panicked(&err)))
    }

    /// Cancels a job: a waiting one ends `canceled` at once; a running one
    /// is told to stop (a WASM call is interrupted within a millisecond)
    /// and ends `canceled` when its attempt returns. Cancelling a job that
    /// has ended changes nothing.
    ///
    /// Returns the job as it is after the request.
    ///
    /// # Errors
    ///
    /// [`EngineError::NotFound`]; [`EngineError::Store`].
    pub async fn cancel(&self, id: JobId) -> Result<Arc<Job>, EngineError> {
        let action = self.inner.state.lock().request_cancel(id, Instant::now());
        match action {
            CancelAction::Dequeued => {
                // Out of its queue now: its end is written without the
                // caller, or the job would stay queued in the store for good.
                let inner = Arc::clone(&self.inner);
                let ended = detached(&self.inner.runtime, async move {
                    inner.cancel_waiting(id, canceled_by_request()).await
                });
                if let Ok(Some(job)) = ended.await {
                    return Ok(job);
                }
                self.get(id).await
            }
            CancelAction::NotLive | CancelAction::Signalled | CancelAction::Nothing => {
                self.get(id).await
            }
        }
    }

    /// Waits until the job ends or `timeout` passes, and returns it as it
    /// is then (check [`JobStatus::is_terminal`]).
    ///
    /// # Errors
    ///
    /// [`EngineError::NotFound`]; [`EngineError::Store`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn wait(&self, id: JobId, timeout: Duration) -> Result<Arc<Job>, EngineError> {
        let waiter = self.inner.state.lock().waiter(id);
        if let Some(waiter) = waiter {
            let _ = tokio::time::timeout(timeout, waiter).await;
        }
        self.get(id).await
    }

    /// Counts by level, tenant and status; resources in use against
    /// capacity; throughput; wait and run time summaries.
    pub fn stats(&self) -> Stats {
        let counts = self.inner.state.lock().stats(Instant::now());
        counts.summarize()
    }

    /// Every event from now on. The stream is bounded: a subscriber that
    /// falls behind is told how many events it missed and never slows the
    /// scheduler down.
    pub fn subscribe(&self) -> EventStream {
        self.inner.telemetry.subscribe()
    }

    /// Changes a tenant's weight and quota from now on. Jobs a raised
    /// quota no longer holds back start at once (a lowered one stops no
    /// running job: it holds back the next).
    pub fn set_tenant(&self, tenant: &str, config: TenantConfig) {
        let wake = {
            let mut state = self.inner.state.lock();
            let now = Instant::now();
            state.set_tenant_config(tenant, config, now);
            state.dispatch(now)
        };
        self.inner.wake_runner(wake);
    }

    /// A tenant's weight and quota.
    pub fn tenant(&self, tenant: &str) -> TenantConfig {
        self.inner.state.lock().tenant_config(tenant)
    }

    /// The backends, in selection order.
    pub fn backends(&self) -> impl Iterator<Item = &str> {
        self.inner.backends.iter().map(|b| b.name())
    }
}

/// The most jobs of a submission taken in, or placed, per hold of the
/// scheduler's lock: a runner that needs the lock between (to record what
/// it ran, to take more) waits for that many, not for a whole batch of
/// hundreds. A wait that long put its thread to sleep, and left its core
/// idle.
const AT_ONCE: usize = 32;

/// The instant `at` will be, given that it is `utc_now` at `now`; `None`
/// for a time already past.
fn instant_of(at: DateTime<Utc>, utc_now: DateTime<Utc>, now: Instant) -> Option<Instant> {
    (at - utc_now).to_std().ok().map(|delay| later(now, delay))
}

/// `now + delay`, or thirty years on (Tokio's own "far future") where the
/// clock cannot hold the sum: a delay that long means never.
pub(crate) fn later(now: Instant, delay: Duration) -> Instant {
    now.checked_add(delay)
        .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 86_400))
}

/// When a stored job may run next (its `not_before`, or a retry's
/// backoff), if that is still to come.
fn next_run_instant(job: &Job, now: Instant) -> Option<Instant> {
    job.next_run_at
        .and_then(|at| instant_of(at, Utc::now(), now))
}

fn canceled_by_request() -> JobError {
    JobError {
        code: "canceled".to_owned(),
        message: "canceled by request".to_owned(),
        retryable: false,
    }
}

fn dependency_failed(message: impl Into<String>) -> JobError {
    JobError {
        code: "dependency_failed".to_owned(),
        message: message.into(),
        retryable: false,
    }
}

/// What `job` may still be charged: its `max_cost_usd` less what it has
/// cost so far (none without a cap). Its next attempt is limited to it.
pub(crate) fn cost_left(job: &Job) -> Option<f64> {
    job.resources
        .max_cost_usd
        .map(|cap| (cap - job.cost_usd).max(0.0))
}

/// [`cost_left`], as held from the tenant's budget while the job is live
/// (nothing without a cap).
fn cost_hold(job: &Job) -> f64 {
    cost_left(job).unwrap_or(0.0)
}

/// The tenant [`live_for`] looked up last, interned, with its
/// configuration: a submission's jobs are mostly one tenant's, looked up
/// once.
type TenantSeen = Option<(Arc<str>, TenantConfig)>;

/// The scheduler's entry for `job`, not yet admitted: what it needs, its
/// tenant and group interned.
fn live_for(
    state: &mut State,
    job: &Job,
    backend: usize,
    now: Instant,
    seen: &mut TenantSeen,
) -> Result<Live, EngineError> {
    let (tenant, config) = match seen {
        Some((name, config)) if **name == *job.tenant_id => (&*name, &*config),
        _ => {
            let name = state.intern_tenant(&job.tenant_id, now);
            let config = state.tenant_config(&name);
            let (name, config) = seen.insert((name, config));
            (&*name, &*config)
        }
    };
    let tenant = Arc::clone(tenant);
    let need = need_for(state, job, config)?;
    let group = job
        .constraints
        .concurrency_group
        .as_deref()
        .map(|g| state.intern_group(g));
    Ok(Live {
        tenant,
        priority: job.priority,
        level: job.priority,
        need,
        group,
        backend: u16::try_from(backend).unwrap_or(u16::MAX),
        place: Place::Admitting,
        since: now,
        cancel_requested: false,
    })
}

/// What `job` holds while it runs, checked against the engine's capacity
/// and the tenant's caps: a job that could never start is refused now.
fn need_for(state: &State, job: &Job, tenant: &TenantConfig) -> Result<Need, EngineError> {
    let resources = &job.resources;
    let cpu_milli = (resources.cpu * 1000.0).round() as u64;
    let unsatisfiable = |reason: String| EngineError::Unsatisfiable { reason };
    if cpu_milli > state.cpu_capacity_milli() {
        return Err(unsatisfiable(format!(
            "{} CPU cores asked for, the engine has {}",
            resources.cpu,
            state.cpu_capacity_milli() as f64 / 1000.0
        )));
    }
    if resources.memory_mb > state.memory_capacity_mb() {
        return Err(unsatisfiable(format!(
            "{} MiB asked for, the engine has {}",
            resources.memory_mb,
            state.memory_capacity_mb()
        )));
    }
    let gpu = match (&resources.gpu, resources.gpu_count) {
        (_, 0) => None,
        (kind, count) => {
            let kinds = state.gpu_kinds();
            let index = match kind {
                Some(kind) => kinds.iter().position(|k| k == kind).ok_or_else(|| {
                    unsatisfiable(format!(
                        "no GPUs of type `{kind}` (the engine has: {})",
                        if kinds.is_empty() {
                            "none".to_owned()
                        } else {
                            kinds.join(", ")
                        }
                    ))
                })?,
                None if kinds.len() == 1 => 0,
                None if kinds.is_empty() => {
                    return Err(unsatisfiable(
                        "GPUs asked for, the engine has none".to_owned(),
                    ));
                }
                None => {
                    return Err(EngineError::invalid(format!(
                        "name the GPU type in resources.gpu (one of: {})",
                        kinds.join(", ")
                    )));
                }
            };
            if count > state.gpu_capacity(index) {
                return Err(unsatisfiable(format!(
                    "{count} GPUs asked for, the engine has {}",
                    state.gpu_capacity(index)
                )));
            }
            Some((index, count))
        }
    };
    let quota = &tenant.quota;
    let over = |limit: &'static str, max: String| EngineError::QuotaExceeded {
        tenant: job.tenant_id.to_string(),
        limit,
        max,
    };
    if let Some(max) = quota.max_cpu.filter(|max| resources.cpu > *max) {
        return Err(over("max_cpu", max.to_string()));
    }
    if let Some(max) = quota.max_memory_mb.filter(|max| resources.memory_mb > *max) {
        return Err(over("max_memory_mb", max.to_string()));
    }
    if let Some(max) = quota.max_gpus.filter(|max| resources.gpu_count > *max) {
        return Err(over("max_gpus", max.to_string()));
    }
    Ok(Need::new(cpu_milli, resources.memory_mb, gpu))
}

/// Names must be short and printable: they end up in URLs, logs and
/// metrics labels.
fn check_name(what: &str, value: &str) -> Result<(), EngineError> {
    // Names are nearly always ASCII: checked a byte at a time then, without
    // decoding characters.
    let control = if value.is_ascii() {
        value.bytes().any(|byte| byte.is_ascii_control())
    } else {
        value.chars().any(char::is_control)
    };
    if value.is_empty() || value.len() > 128 || control {
        return Err(EngineError::invalid(format!(
            "{what} must be 1 to 128 printable characters"
        )));
    }
    Ok(())
}

impl Inner {
    /// The second half of [`Engine::retry_dead_letter`], once the state
    /// counts the job again: takes it back in the store, then queues it.
    async fn revive_and_place(
        self: Arc<Self>,
        id: JobId,
        was: JobStatus,
    ) -> Result<Arc<Job>, EngineError> {
        let job = match self.store.transition(id, Transition::Revive).await {
            Ok(job) => job,
            Err(err) => {
                self.state.lock().abandon(&[id]);
                return Err(err.into());
            }
        };
        let mut stopped = Released::default();
        let wake = {
            let mut state = self.state.lock();
            let now = Instant::now();
            state.revive(id, was);
            let outcome = state.place(id, &[], false, None, now);
            if outcome == PlaceOutcome::Canceled {
                stopped.canceled.push(id);
            }
            self.announce_queued(&job, outcome);
            state.dispatch(now)
        };
        self.wake_runner(wake);
        self.settle(stopped).await;
        Ok(job)
    }

    /// Stores the jobs of a submission the state counts: a future of its
    /// own (owning what it needs), so that it can go on in a task of its
    /// own when the caller goes away.
    fn store_jobs(
        &self,
        prepared: &[Prepared],
        commit: Commit,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Inserted>, StoreError>> + Send>> {
        let store = Arc::clone(&self.store);
        let jobs = prepared.iter().map(|p| Arc::clone(&p.job)).collect();
        Box::pin(async move {
            // A store that panics fails the submission, not the engine's
            // count.
            AssertUnwindSafe(store.insert(jobs, commit))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| {
                    Err(StoreError::Backend(format!(
                        "the store panicked: {}",
                        panic_text(&*panic)
                    )))
                })
        })
    }

    /// Queues (or ends) the jobs of a submission once the store has them;
    /// gives their places in the state back if it refused them.
    fn place_stored(
        &self,
        prepared: Vec<Prepared>,
        inserted: Result<Vec<Inserted>, StoreError>,
    ) -> Result<Placed, EngineError> {
        let inserted = match inserted {
            Ok(inserted) => inserted,
            Err(err) => {
                let ids: Vec<JobId> = prepared.iter().map(|p| p.job.id).collect();
                self.state.lock().abandon(&ids);
                return Err(err.into());
            }
        };
        let mut placed = Placed {
            accepted: Vec::with_capacity(prepared.len()),
            follow_up: FollowUp::default(),
            yield_now: false,
        };
        let mut jobs = prepared.into_iter().zip(inserted).peekable();
        let (wake, backlogged) = loop {
            let mut state = self.state.lock();
            let now = Instant::now();
            for (p, inserted) in jobs.by_ref().take(AT_ONCE) {
                if let Inserted::Existing(existing) = inserted {
                    state.abandon(&[p.job.id]);
                    placed.accepted.push(existing);
                    continue;
                }
                let id = p.job.id;
                let outcome = if p.doomed {
                    placed.follow_up.doomed.push(id);
                    state.doom(id);
                    PlaceOutcome::Pending
                } else {
                    let hold = !p.open_deps.is_empty();
                    let outcome = state.place(id, &p.open_deps, hold, p.run_at, now);
                    if outcome == PlaceOutcome::Canceled {
                        placed.follow_up.stopped.canceled.push(id);
                    } else if hold {
                        placed.follow_up.holds.push((id, p.open_deps));
                    }
                    outcome
                };
                // Announced before the jobs are dispatched, under the
                // lock: a runner that starts one at once announces that
                // after.
                self.announce_admitted(&p.job, p.backend, outcome);
                placed.accepted.push(p.job);
            }
            if jobs.peek().is_none() {
                break (state.dispatch(now), state.backlogged(executor::BATCH));
            }
        };
        self.wake_runner(wake);
        placed.yield_now = wake && backlogged;
        Ok(placed)
    }

    /// Does what placing a submission left to do.
    async fn follow_up(
        self: Arc<Self>,
        FollowUp {
            doomed,
            stopped,
            holds,
        }: FollowUp,
    ) {
        for id in doomed {
            self.cancel_waiting(id, dependency_failed("a dependency had already failed"))
                .await;
        }
        self.settle(stopped).await;
        for (id, deps) in holds {
            self.resolve_hold(id, &deps).await;
        }
    }

    /// The first backend that supports the job. One that panics in
    /// `supports` refuses the submission with [`EngineError::Backend`]:
    /// unwinding on would take the caller (an HTTP request, an embedder's
    /// task) down with it for a fault that is not theirs.
    fn select_backend(&self, job: &Job) -> Result<usize, EngineError> {
        for (index, backend) in self.backends.iter().enumerate() {
            match std::panic::catch_unwind(AssertUnwindSafe(|| backend.supports(job))) {
                Ok(true) => return Ok(index),
                Ok(false) => {}
                Err(panic) => return Err(backend_panicked(backend.name(), &*panic)),
            }
        }
        Err(EngineError::UnknownKind {
            kind: job.kind.to_string(),
        })
    }

    /// Checks a submission and fills in its defaults: the job, the backend
    /// that will run it, and when it may run.
    fn build(
        &self,
        new: NewJob,
        batch: Option<Uuid>,
        now: DateTime<Utc>,
    ) -> Result<(Job, usize, Option<Instant>), EngineError> {
        check_name("tenant_id", &new.tenant_id)?;
        // The named kinds' names are the engine's own.
        if let JobKind::Custom(kind) = &new.kind {
            check_name("kind", kind)?;
        }
        if let Some(namespace) = &new.namespace {
            check_name("namespace", namespace)?;
        }
        if let Some(group) = &new.constraints.concurrency_group {
            check_name("concurrency_group", group)?;
        }
        let mut resources = new.resources;
        if !resources.cpu.is_finite() || resources.cpu < 0.0 {
            return Err(EngineError::invalid("resources.cpu must be a number >= 0"));
        }
        if resources
            .max_cost_usd
            .is_some_and(|usd| !usd.is_finite() || usd < 0.0)
        {
            return Err(EngineError::invalid(
                "resources.max_cost_usd must be a number of dollars >= 0",
            ));
        }
        if resources.gpu.is_some() && resources.gpu_count == 0 {
            resources.gpu_count = 1;
        }
        if resources.timeout_ms == Some(0) || resources.fuel == Some(0) {
            return Err(EngineError::invalid(
                "resources.timeout_ms and resources.fuel must be at least 1",
            ));
        }
        let mut constraints = new.constraints;
        let policy = constraints
            .retry_policy
            .get_or_insert_with(|| self.defaults.retry_policy.clone());
        if policy.max_attempts == 0 {
            return Err(EngineError::invalid(
                "retry_policy.max_attempts must be at least 1",
            ));
        }
        constraints.depends_on.sort_unstable();
        constraints.depends_on.dedup();
        let run_at = constraints
            .not_before
            .and_then(|at| instant_of(at, now, Instant::now()));
        let mut job = Job {
            id: crate::job_ids::next(u64::try_from(now.timestamp_millis()).unwrap_or(0)),
            kind: new.kind,
            tenant_id: new.tenant_id,
            namespace: new
                .namespace
                .unwrap_or_else(|| self.defaults.namespace.clone()),
            priority: new.priority.unwrap_or(self.defaults.priority),
            payload: new.payload,
            resources,
            constraints,
            metadata: new.metadata,
            external_id: new.external_id,
            batch_id: batch,
            status: JobStatus::Queued,
            attempt: 0,
            result: None,
            error: None,
            outcome: None,
            backend: None,
            next_run_at: None,
            dead_letter: false,
            lease_epoch: 0,
            created_at: now,
            started_at: None,
            finished_at: None,
            cost_usd: 0.0,
        };
        if run_at.is_some() {
            job.next_run_at = job.constraints.not_before;
        }

        let backend = self.select_backend(&job)?;
        Ok((job, backend, run_at))
    }

    /// Has the job's backend admit it, and reads its dependencies.
    async fn prepare(
        &self,
        mut job: Arc<Job>,
        backend: usize,
        run_at: Option<Instant>,
    ) -> Result<Prepared, EngineError> {
        let admitter = &self.backends[backend];
        AssertUnwindSafe(admitter.admit(&job))
            .catch_unwind()
            .await
            .map_err(|panic| backend_panicked(admitter.name(), &*panic))?
            .map_err(|err| match err {
                AdmitError::UnknownTool(name) => EngineError::UnknownTool { name },
                AdmitError::InvalidArgs(violations) => EngineError::InvalidArgs {
                    tool: job
                        .tool_call()
                        .map(|call| call.tool.into_owned())
                        .unwrap_or_default(),
                    violations,
                },
                other => EngineError::invalid(other.to_string()),
            })?;

        let mut open_deps = Vec::new();
        let mut doomed = false;
        for dep in &job.constraints.depends_on {
            match self.store.get(*dep).await? {
                Some(found) if found.tenant_id == job.tenant_id => match found.status {
                    JobStatus::Succeeded => {}
                    status if status.is_terminal() => doomed = true,
                    _ => open_deps.push(*dep),
                },
                _ => return Err(EngineError::UnknownDependency { id: *dep }),
            }
        }
        if doomed || !open_deps.is_empty() {
            // The only handle there is (the backend saw a `&Job`): no copy.
            Arc::make_mut(&mut job).status = JobStatus::Pending;
        }
        Ok(Prepared {
            job,
            backend,
            run_at,
            open_deps,
            doomed,
        })
    }

    /// The jobs a submission refused for its quotas, its rate or a full
    /// queue names by idempotency key, when each of its jobs has a key
    /// already taken: it is a retry of submissions accepted before, and is
    /// answered with their jobs whatever the limits say now. A store that
    /// cannot be read leaves the refusal as it was.
    async fn retried(&self, prepared: &[Prepared]) -> Option<Vec<Arc<Job>>> {
        let keys: Vec<&str> = prepared
            .iter()
            .map(|p| p.job.constraints.idempotency_key.as_deref())
            .collect::<Option<_>>()?;
        let mut existing = Vec::with_capacity(prepared.len());
        for (p, key) in prepared.iter().zip(keys) {
            let found = self.store.get_by_idempotency_key(&p.job.tenant_id, key);
            existing.push(found.await.ok().flatten()?);
        }
        Some(existing)
    }

    /// The events of a job just admitted and placed.
    fn announce_admitted(&self, job: &Job, backend: usize, outcome: PlaceOutcome) {
        self.telemetry
            .job(job.id, &job.tenant_id, || EventData::Submitted {
                kind: job.kind.clone(),
                priority: job.priority,
                namespace: job.namespace.to_string(),
            });
        self.telemetry
            .job(job.id, &job.tenant_id, || EventData::Admitted {
                backend: self.backends[backend].name().to_owned(),
            });
        self.announce_queued(job, outcome);
    }

    /// The events of a job placed in the state. Called under the state's
    /// lock, before it dispatches: a job's events then reach the stream in
    /// the order its changes were made, whichever threads made them.
    fn announce_queued(&self, job: &Job, outcome: PlaceOutcome) {
        let (id, tenant, priority) = (job.id, job.tenant_id.as_str(), job.priority);
        match outcome {
            PlaceOutcome::Queued(depth) => {
                self.telemetry.job(id, tenant, || EventData::Queued {
                    priority,
                    run_at: None,
                });
                self.telemetry
                    .job(id, tenant, || EventData::Enqueued { priority, depth });
            }
            PlaceOutcome::Delayed => {
                self.telemetry.job(id, tenant, || EventData::Queued {
                    priority,
                    run_at: job.next_run_at,
                });
                self.timer.notify_one();
            }
            PlaceOutcome::Pending | PlaceOutcome::Canceled | PlaceOutcome::Gone => {}
        }
    }

    /// Wakes an idle runner for jobs just dispatched.
    fn wake_runner(&self, wake: bool) {
        if wake {
            self.runner_wake.notify_one();
        }
    }

    /// Ends a job that was waiting (now `Ending` in the state) as
    /// `canceled`, then settles its dependents.
    async fn cancel_waiting(self: &Arc<Self>, id: JobId, error: JobError) -> Option<Arc<Job>> {
        let (job, released) = self.record_cancel(id, error).await;
        self.settle(released).await;
        job
    }

    /// Writes `canceled` for a job that is `Ending` in the state, emits the
    /// event and forgets the job; returns what becomes of its dependents.
    async fn record_cancel(&self, id: JobId, error: JobError) -> (Option<Arc<Job>>, Released) {
        let reason = error.message.clone();
        let at = Utc::now();
        let (job, status) = match self
            .store
            .transition(id, Transition::Cancel { error, at })
            .await
        {
            Ok(job) => {
                self.telemetry
                    .job(id, &job.tenant_id, || EventData::Canceled { reason });
                (Some(job), JobStatus::Canceled)
            }
            Err(err) => {
                // It ended some other way first: the store's word stands.
                tracing::warn!(%id, %err, "could not record a cancellation");
                let status = match self.store.get(id).await {
                    Ok(Some(job)) => job.status,
                    _ => JobStatus::Canceled,
                };
                (None, status)
            }
        };
        // What it held or blocked (a reservation, a group's slot) may let
        // others start.
        let (released, wake) = {
            let mut state = self.state.lock();
            let now = Instant::now();
            let released = state.finished(id, status, now);
            (released, state.dispatch(now))
        };
        self.wake_runner(wake);
        (job, released)
    }

    /// A submission's dependencies that had not succeeded when read: those
    /// still live were registered; those that ended meanwhile are read
    /// again now, and decide.
    async fn resolve_hold(self: &Arc<Self>, id: JobId, deps: &[JobId]) {
        let mut failed = None;
        for dep in deps {
            if self.state.lock().is_live(dep) {
                continue;
            }
            if let Ok(Some(job)) = self.store.get(*dep).await
                && job.status.is_terminal()
                && job.status != JobStatus::Succeeded
            {
                failed = Some(*dep);
            }
        }
        if let Some(dep) = failed {
            let action = self.state.lock().request_cancel(id, Instant::now());
            if let CancelAction::Dequeued = action {
                self.cancel_waiting(id, dependency_failed(format!("dependency {dep} failed")))
                    .await;
            }
            return;
        }
        let ready = self.state.lock().release_dependency(id);
        if ready {
            self.settle(Released {
                ready: vec![id],
                ..Released::default()
            })
            .await;
        }
    }

    /// Follows a job's end through its dependents: the ready ones are
    /// queued, the doomed ones cancelled (and theirs after them); and ends
    /// the jobs asked to stop while out of the state's hands.
    async fn settle(self: &Arc<Self>, mut released: Released) {
        loop {
            for id in std::mem::take(&mut released.ready) {
                match self.store.transition(id, Transition::Ready).await {
                    Ok(job) => {
                        let now = Instant::now();
                        let run_at = next_run_instant(&job, now);
                        let wake = {
                            let mut state = self.state.lock();
                            let outcome = state.ready(id, run_at, now);
                            self.announce_queued(&job, outcome);
                            state.dispatch(now)
                        };
                        self.wake_runner(wake);
                    }
                    Err(err) => tracing::warn!(%id, %err, "could not queue a ready dependent"),
                }
            }
            if released.doomed.is_empty() && released.canceled.is_empty() {
                return;
            }
            let doomed = std::mem::take(&mut released.doomed)
                .into_iter()
                .map(|id| (id, dependency_failed("a dependency did not succeed")));
            let canceled = std::mem::take(&mut released.canceled)
                .into_iter()
                .map(|id| (id, canceled_by_request()));
            for (id, error) in doomed.chain(canceled) {
                let (_, more) = self.record_cancel(id, error).await;
                released.absorb(more);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::backends::MockBackend;
    use work_host_api::Resources;

    fn grouped(group: &str, mock: serde_json::Value) -> NewJob {
        NewJob::new("sim", "acme", json!({ "mock": mock })).with_concurrency_group(group)
    }

    /// A group is kept while a live job names it, and no longer.
    #[tokio::test(start_paused = true)]
    async fn a_group_is_forgotten_once_none_of_its_jobs_is_live() {
        let engine = Engine::builder()
            .capacity(Capacity {
                cpu: 4.0,
                memory_mb: 1024,
                gpus: Vec::new(),
            })
            .backend(MockBackend::new())
            .build()
            .unwrap();
        let groups = || engine.inner.state.lock().group_count();

        let mut ids = Vec::new();
        for i in 0..20 {
            let job = grouped(&format!("experiment-{i}"), json!({ "delay_ms": 10 }));
            ids.push(engine.submit(job).await.unwrap().id);
        }
        // Two jobs of one group: one runs, one is parked.
        for _ in 0..2 {
            let job = grouped("shared", json!({ "delay_ms": 10 }));
            ids.push(engine.submit(job).await.unwrap().id);
        }
        assert_eq!(groups(), 21);
        for id in ids {
            let job = engine.wait(id, Duration::from_secs(60)).await.unwrap();
            assert_eq!(job.status, JobStatus::Succeeded);
        }
        assert_eq!(groups(), 0);

        // Refused submissions leave no group behind either: a batch with
        // a job too big for the capacity, a single one over the queue's
        // quota, and a cancelled one.
        let too_big = grouped("refused", json!({})).with_resources(Resources {
            cpu: 64.0,
            ..Resources::default()
        });
        let batch = vec![grouped("refused", json!({})), too_big];
        assert!(engine.submit_batch(batch).await.is_err());
        engine.set_tenant(
            "acme",
            TenantConfig {
                quota: Quota {
                    max_queued: Some(0),
                    ..Quota::default()
                },
                ..TenantConfig::default()
            },
        );
        assert!(engine.submit(grouped("refused", json!({}))).await.is_err());
        engine.set_tenant("acme", TenantConfig::default());
        let hang = engine
            .submit(grouped("canceled", json!({ "hang": true })))
            .await
            .unwrap();
        let waiting = engine.submit(grouped("canceled", json!({}))).await.unwrap();
        assert_eq!(groups(), 1);
        engine.cancel(waiting.id).await.unwrap();
        engine.cancel(hang.id).await.unwrap();
        let hang = engine.wait(hang.id, Duration::from_secs(60)).await.unwrap();
        assert_eq!(hang.status, JobStatus::Canceled);
        assert_eq!(groups(), 0);
    }
}
