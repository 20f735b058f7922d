//! The scheduler's in-memory state: every job that has not ended, the
//! per-level queues, free resources, groups, tenants. One lock guards it;
//! every method here is synchronous and short, and nothing awaits while
//! holding it.
//!
//! Dispatch order: levels strictly by priority; within a level, deficit
//! round robin across tenants (each turn a tenant may start up to
//! `quantum × weight` jobs), FIFO within a tenant. A job whose resources do
//! not fit takes the *reservation*: later jobs may only use what is left
//! after its needs, so small jobs cannot starve it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use work_host_api::{Device, JobId, JobStatus, OutcomeClass, Priority};

use super::EngineError;
use super::config::{SchedulerConfig, TenantConfig};
use super::stats::{
    Histogram, LevelStats, ResourceStats, Stats, StatusCounts, Summary, TenantStats,
};
use crate::id_map::{IdMap, NameMap};
use crate::token_bucket::TokenBucket;

/// Samples kept for wait/run summaries and throughput.
const SAMPLES: usize = 4096;

/// What a job holds while it runs, in the units the scheduler counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Need {
    pub(crate) cpu_milli: u64,
    pub(crate) memory_mb: u64,
    /// Index into the engine's GPU types (when `gpu_count` > 0).
    gpu_kind: u16,
    gpu_count: u32,
}

impl Need {
    /// `gpu`: the index of a GPU type and how many.
    pub(crate) fn new(cpu_milli: u64, memory_mb: u64, gpu: Option<(usize, u32)>) -> Self {
        let (gpu_kind, gpu_count) = match gpu {
            Some((kind, count)) => (u16::try_from(kind).unwrap_or(u16::MAX), count),
            None => (0, 0),
        };
        Self {
            cpu_milli,
            memory_mb,
            gpu_kind,
            gpu_count,
        }
    }

    /// The index of its GPU type and how many, if it needs GPUs.
    pub(crate) fn gpu(&self) -> Option<(usize, u32)> {
        (self.gpu_count > 0).then_some((usize::from(self.gpu_kind), self.gpu_count))
    }
}

/// Where a live job is.
#[derive(Debug)]
pub(crate) enum Place {
    /// Counted against quotas; not yet in the store.
    Admitting,
    /// Waiting for dependencies (plus one hold while submission resolves
    /// dependencies that ended meanwhile).
    Pending { deps_left: u32 },
    /// Queued with a run time in the future.
    Delayed,
    /// In its level's queue.
    Queued,
    /// Parked until its concurrency group has room.
    GroupWait,
    /// Dispatched; an attempt is under way (since [`Live::since`]).
    Running {
        cancel: CancellationToken,
        /// Boxed: most jobs hold none, and every [`Live`] pays for the
        /// largest variant.
        devices: Box<[Device]>,
    },
    /// On its way to a terminal state from `from`; `queued` when it left
    /// a queue entry behind (now stale).
    Ending { from: JobStatus, queued: bool },
}

/// A job that has not ended.
#[derive(Debug)]
pub(crate) struct Live {
    pub(crate) tenant: Arc<str>,
    /// The level it was submitted at (counts are kept by it).
    pub(crate) priority: Priority,
    /// The level it is queued at now (raised by aging).
    pub(crate) level: Priority,
    pub(crate) need: Need,
    pub(crate) group: Option<Arc<str>>,
    /// Index into the engine's backends (a few, so small).
    pub(crate) backend: u16,
    pub(crate) place: Place,
    /// When it entered its current queue, or started running.
    pub(crate) since: Instant,
    pub(crate) cancel_requested: bool,
}

impl Live {
    fn status(&self) -> JobStatus {
        match self.place {
            Place::Admitting | Place::Delayed | Place::Queued | Place::GroupWait => {
                JobStatus::Queued
            }
            Place::Pending { .. } => JobStatus::Pending,
            Place::Running { .. } => JobStatus::Running,
            Place::Ending { from, .. } => from,
        }
    }
}

/// A job asking to be admitted: its id, its entry, and what it may still
/// be charged (its cost hold: 0 without a `max_cost_usd`).
pub(crate) type Candidate = (JobId, Live, f64);

/// A submission's jobs counted as quotas and queue capacity count them:
/// per level, and per tenant with their cost holds.
struct Counted {
    per_level: [usize; Priority::ALL.len()],
    per_tenant: Vec<(Arc<str>, u64, f64)>,
}

impl Counted {
    fn of(jobs: &[Candidate]) -> Self {
        let mut counted = Self {
            per_level: [0; Priority::ALL.len()],
            per_tenant: Vec::with_capacity(1),
        };
        for (_, live, hold) in jobs {
            counted.per_level[live.priority.index()] += 1;
            // Tenant names are interned: one pointer per tenant.
            match counted
                .per_tenant
                .iter_mut()
                .find(|(name, ..)| Arc::ptr_eq(name, &live.tenant))
            {
                Some((_, n, held)) => {
                    *n += 1;
                    *held += hold;
                }
                None => counted
                    .per_tenant
                    .push((Arc::clone(&live.tenant), 1, *hold)),
            }
        }
        counted
    }
}

/// See [`State::revival`].
pub(crate) enum Revival {
    /// Not live: it may be admitted again.
    Free,
    /// Its last attempt is still ending: wait for it, then look again.
    Ending(oneshot::Receiver<()>),
    /// Live again already, with this status.
    Busy(JobStatus),
}

/// A job dispatched: what its attempt task needs.
#[derive(Debug)]
pub(crate) struct Start {
    pub(crate) id: JobId,
    pub(crate) tenant: Arc<str>,
    pub(crate) backend: usize,
    pub(crate) devices: Vec<Device>,
    pub(crate) cancel: CancellationToken,
    pub(crate) level: Priority,
    pub(crate) waited: Duration,
}

#[derive(Default)]
struct TenantQueue {
    jobs: VecDeque<JobId>,
    deficit: u32,
}

#[derive(Default)]
struct Level {
    /// Tenants with queued jobs, in turn order.
    ring: VecDeque<Arc<str>>,
    queues: NameMap<Arc<str>, TenantQueue>,
    /// Jobs in the queues (stale entries excluded).
    depth: usize,
    /// Jobs admitted at this level and not yet running: what capacity
    /// limits.
    waiting: usize,
    counts: StatusCounts,
    waits_us: Ring,
    wait_seconds: Histogram,
}

struct Group {
    running: u32,
    parked: VecDeque<JobId>,
}

struct Tenant {
    config: TenantConfig,
    waiting: u64,
    running: u32,
    cpu_milli: u64,
    memory_mb: u64,
    gpus: u32,
    /// US dollars its attempts were charged since the engine started.
    spent_usd: f64,
    /// What its live capped jobs may still be charged (`cost_holds`).
    held_usd: f64,
    bucket: Option<TokenBucket>,
    counts: [StatusCounts; 4],
}

impl Tenant {
    fn new(config: TenantConfig, now: Instant) -> Self {
        let bucket = config
            .quota
            .submits_per_second
            .map(|rate| TokenBucket::new(rate, now));
        Self {
            config,
            waiting: 0,
            running: 0,
            cpu_milli: 0,
            memory_mb: 0,
            gpus: 0,
            spent_usd: 0.0,
            held_usd: 0.0,
            bucket,
            counts: [StatusCounts::default(); 4],
        }
    }
}

/// [`Stats`] whose time summaries are still to be worked out from the
/// samples copied with them.
pub(crate) struct Unsummarized {
    stats: Stats,
    /// Per level, in the order of `stats.levels`.
    waits_us: Vec<Vec<u32>>,
    runs_us: Vec<u32>,
}

impl Unsummarized {
    pub(crate) fn summarize(self) -> Stats {
        let Self {
            mut stats,
            waits_us,
            runs_us,
        } = self;
        for (level, samples) in stats.levels.iter_mut().zip(waits_us) {
            level.wait = Summary::of(samples);
        }
        stats.run = Summary::of(runs_us);
        stats
    }
}

/// The most recent samples, overwritten in a circle.
#[derive(Default)]
struct Ring {
    samples: Vec<u32>,
    next: usize,
}

impl Ring {
    fn push(&mut self, sample: u32) {
        if self.samples.len() < SAMPLES {
            self.samples.push(sample);
        } else {
            self.samples[self.next] = sample;
        }
        self.next = (self.next + 1) % SAMPLES;
    }
}

fn micros(duration: Duration) -> u32 {
    u32::try_from(duration.as_micros()).unwrap_or(u32::MAX)
}

/// Free resources.
#[derive(Debug, Clone)]
struct Pool {
    cpu_milli: u64,
    memory_mb: u64,
    /// Free device ids per GPU type.
    gpus: Vec<Vec<Device>>,
}

/// What is left to do for jobs a step set free or stopped, most often a
/// job reaching its terminal state.
#[derive(Debug, Default)]
pub(crate) struct Released {
    /// Dependents whose dependencies all succeeded: write `queued`, then
    /// [`State::ready`].
    pub(crate) ready: Vec<JobId>,
    /// Dependents to cancel because this job did not succeed.
    pub(crate) doomed: Vec<JobId>,
    /// Jobs asked to stop while out of the state's hands (being stored, or
    /// their attempt's end being recorded), now ending
    /// ([`PlaceOutcome::Canceled`]): write `canceled`, by request.
    pub(crate) canceled: Vec<JobId>,
}

impl Released {
    /// Adds what another job's end released.
    pub(crate) fn absorb(&mut self, other: Released) {
        self.ready.extend(other.ready);
        self.doomed.extend(other.doomed);
        self.canceled.extend(other.canceled);
    }

    /// Nothing left to do.
    pub(crate) fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.doomed.is_empty() && self.canceled.is_empty()
    }
}

/// What [`State::request_cancel`] found.
#[derive(Debug)]
pub(crate) enum CancelAction {
    /// Not a live job here: look in the store.
    NotLive,
    /// Waiting: now `Ending`; write `canceled`, then [`State::finished`].
    Dequeued,
    /// Running: its attempt was told to stop and will write the outcome.
    Signalled,
    /// Already ending.
    Nothing,
}

pub(crate) struct State {
    pub(crate) config: SchedulerConfig,
    /// Boxed: a million queued jobs cost a map of pointers, not of
    /// `Live`s at the map's spare capacity.
    jobs: IdMap<Box<Live>>,
    /// What each live job with a `max_cost_usd` may still be charged, held
    /// from its tenant's budget (only jobs with something held).
    cost_holds: IdMap<f64>,
    levels: [Level; 4],
    delayed: BinaryHeap<Reverse<(Instant, JobId)>>,
    groups: NameMap<Arc<str>, Group>,
    tenants: NameMap<Arc<str>, Tenant>,
    gpu_kinds: Vec<String>,
    capacity: Pool,
    free: Pool,
    reservation: Option<JobId>,
    /// Dispatched jobs waiting for a runner to claim and run them.
    runnable: VecDeque<Start>,
    /// Runners waiting for [`State::runnable`] to fill.
    idle_runners: usize,
    /// Runners in all, for their fair share of a batch.
    pub(crate) runners: usize,
    waiters: IdMap<Vec<oneshot::Sender<()>>>,
    /// The live jobs waiting on each live job (most have none, so they
    /// are kept here rather than in every [`Live`]).
    dependents: IdMap<Vec<JobId>>,
    runs_us: Ring,
    run_seconds: Histogram,
    /// Attempts by outcome class, indexed as [`OutcomeClass::ALL`].
    outcomes: [u64; OutcomeClass::ALL.len()],
    finished: VecDeque<Instant>,
    finished_total: u64,
}

impl State {
    pub(crate) fn new(config: SchedulerConfig) -> Self {
        let mut gpu_kinds: Vec<String> = Vec::new();
        let mut gpus: Vec<Vec<Device>> = Vec::new();
        for device in &config.capacity.gpus {
            let kind = match gpu_kinds.iter().position(|k| k == &device.kind) {
                Some(kind) => kind,
                None => {
                    gpu_kinds.push(device.kind.clone());
                    gpus.push(Vec::new());
                    gpu_kinds.len() - 1
                }
            };
            gpus[kind].push(device.clone());
        }
        // Devices are handed out from the end; keep the lowest ids first.
        for devices in &mut gpus {
            devices.reverse();
        }
        let capacity = Pool {
            cpu_milli: (config.capacity.cpu * 1000.0) as u64,
            memory_mb: config.capacity.memory_mb,
            gpus,
        };
        Self {
            config,
            jobs: IdMap::default(),
            cost_holds: IdMap::default(),
            levels: Default::default(),
            delayed: BinaryHeap::new(),
            groups: NameMap::default(),
            tenants: NameMap::default(),
            gpu_kinds,
            free: capacity.clone(),
            capacity,
            reservation: None,
            runnable: VecDeque::new(),
            idle_runners: 0,
            runners: 1,
            waiters: IdMap::default(),
            dependents: IdMap::default(),
            runs_us: Ring::default(),
            run_seconds: Histogram::default(),
            outcomes: [0; OutcomeClass::ALL.len()],
            finished: VecDeque::new(),
            finished_total: 0,
        }
    }

    pub(crate) fn gpu_kinds(&self) -> &[String] {
        &self.gpu_kinds
    }

    /// Total GPUs of type `kind`.
    pub(crate) fn gpu_capacity(&self, kind: usize) -> u32 {
        self.capacity.gpus.get(kind).map_or(0, |d| d.len() as u32)
    }

    pub(crate) fn cpu_capacity_milli(&self) -> u64 {
        self.capacity.cpu_milli
    }

    pub(crate) fn memory_capacity_mb(&self) -> u64 {
        self.capacity.memory_mb
    }

    /// `tenant`'s weight and quota: configured by name, or the default.
    pub(crate) fn tenant_config(&self, tenant: &str) -> TenantConfig {
        self.config
            .tenants
            .get(tenant)
            .unwrap_or(&self.config.default_tenant)
            .clone()
    }

    pub(crate) fn set_tenant_config(&mut self, tenant: &str, config: TenantConfig, now: Instant) {
        self.config
            .tenants
            .insert(tenant.to_owned(), config.clone());
        if let Some(state) = self.tenants.get_mut(tenant) {
            state.bucket = config
                .quota
                .submits_per_second
                .map(|rate| TokenBucket::new(rate, now));
            state.config = config;
        }
    }

    pub(crate) fn is_live(&self, id: &JobId) -> bool {
        self.jobs.contains_key(id)
    }

    fn tenant_mut(&mut self, name: &Arc<str>, now: Instant) -> &mut Tenant {
        if !self.tenants.contains_key(name) {
            let config = self.tenant_config(name);
            self.tenants
                .insert(Arc::clone(name), Tenant::new(config, now));
        }
        // Inserted above when missing.
        self.tenants
            .get_mut(name)
            .unwrap_or_else(|| unreachable!("tenant inserted above"))
    }

    /// The interned name of `tenant`, shared by every job of it.
    pub(crate) fn intern_tenant(&mut self, tenant: &str, now: Instant) -> Arc<str> {
        if let Some((name, _)) = self.tenants.get_key_value(tenant) {
            return Arc::clone(name);
        }
        let name: Arc<str> = Arc::from(tenant);
        self.tenant_mut(&name, now);
        name
    }

    pub(crate) fn intern_group(&mut self, group: &str) -> Arc<str> {
        if let Some((name, _)) = self.groups.get_key_value(group) {
            return Arc::clone(name);
        }
        let name: Arc<str> = Arc::from(group);
        self.groups.insert(
            Arc::clone(&name),
            Group {
                running: 0,
                parked: VecDeque::new(),
            },
        );
        name
    }

    /// Lets go of a job's reference to its group, and forgets the group
    /// once no live job names it: an engine that gives each experiment a
    /// group of its own does not grow by one entry per group.
    fn release_group(&mut self, group: Option<Arc<str>>) {
        let Some(group) = group else { return };
        // The map's key and `group` are the last references.
        if Arc::strong_count(&group) == 2
            && self
                .groups
                .get(&group)
                .is_some_and(|g| g.running == 0 && g.parked.is_empty())
        {
            self.groups.remove(&group);
        }
    }

    /// Drops jobs that were never admitted (their submission was refused).
    pub(crate) fn discard(&mut self, lives: impl IntoIterator<Item = Live>) {
        for live in lives {
            self.release_group(live.group);
        }
    }

    /// How many concurrency groups the state keeps.
    #[cfg(test)]
    pub(crate) fn group_count(&self) -> usize {
        self.groups.len()
    }

    fn group_limit(&self, group: &str) -> u32 {
        self.config
            .concurrency_limits
            .get(group)
            .copied()
            .unwrap_or(self.config.default_concurrency_limit)
    }

    fn count(
        &mut self,
        tenant: &Arc<str>,
        priority: Priority,
        from: Option<JobStatus>,
        to: Option<JobStatus>,
    ) {
        self.levels[priority.index()].counts.moved(from, to);
        if let Some(t) = self.tenants.get_mut(tenant) {
            t.counts[priority.index()].moved(from, to);
        }
    }

    /// Admission: checks the tenant's rate, its queued quota and the
    /// levels' capacity for `jobs` as one, then holds their places.
    ///
    /// # Errors
    ///
    /// [`EngineError::RateLimited`], [`EngineError::QuotaExceeded`],
    /// [`EngineError::QueueFull`] (the level is returned for the overflow
    /// event).
    /// Each job comes with what it may still be charged (its cost hold:
    /// 0 without a `max_cost_usd`).
    pub(crate) fn admit(
        &mut self,
        jobs: Vec<Candidate>,
        now: Instant,
    ) -> Result<(), (EngineError, Option<Priority>)> {
        for (id, live, hold) in self.reserve(jobs, now)? {
            self.take_in(id, Box::new(live), hold);
        }
        Ok(())
    }

    /// [`State::admit`]'s checks, and the jobs counted where quotas and
    /// queue capacity count them, all at once; but not yet taken in. A
    /// submission's jobs are then taken in ([`State::take_in`]) a few at
    /// a time, with the lock let go between, so that a runner does not
    /// wait for a whole batch of hundreds. Jobs counted and not yet taken
    /// in are no one's to act on: their submission has not returned.
    ///
    /// # Errors
    ///
    /// As [`State::admit`]; nothing is counted then, and the jobs are
    /// discarded.
    pub(crate) fn reserve(
        &mut self,
        jobs: Vec<Candidate>,
        now: Instant,
    ) -> Result<Vec<Candidate>, (EngineError, Option<Priority>)> {
        match self.check_admission(&jobs, now) {
            Ok(counted) => {
                self.count_in(counted, now);
                Ok(jobs)
            }
            Err(err) => {
                self.discard(jobs.into_iter().map(|(_, live, _)| live));
                Err(err)
            }
        }
    }

    fn count_in(&mut self, counted: Counted, now: Instant) {
        for (level, n) in counted.per_level.iter().enumerate() {
            self.levels[level].waiting += n;
        }
        for (name, n, held) in counted.per_tenant {
            let tenant = self.tenant_mut(&name, now);
            tenant.waiting += n;
            tenant.held_usd += held;
        }
    }

    /// Takes in a job counted by [`State::reserve`].
    pub(crate) fn take_in(&mut self, id: JobId, live: Box<Live>, hold: f64) {
        if hold > 0.0 {
            self.cost_holds.insert(id, hold);
        }
        self.jobs.insert(id, live);
    }

    fn check_admission(
        &mut self,
        jobs: &[Candidate],
        now: Instant,
    ) -> Result<Counted, (EngineError, Option<Priority>)> {
        let counted = Counted::of(jobs);
        let Counted {
            per_level,
            per_tenant,
        } = &counted;
        for (level, n) in per_level.iter().enumerate() {
            let capacity = self.config.queue_capacity[level];
            if *n > 0 && self.levels[level].waiting + n > capacity {
                let priority = Priority::ALL[level];
                return Err((
                    EngineError::QueueFull { priority, capacity },
                    Some(priority),
                ));
            }
        }
        for (name, n, held) in per_tenant {
            let tenant = self.tenant_mut(name, now);
            // Spent, held for capped jobs already accepted, and asked for
            // by these: all within the budget, and room left for jobs
            // without a cap.
            let committed = tenant.spent_usd + tenant.held_usd;
            if let Some(budget) = tenant.config.quota.cost_budget_usd
                && (committed >= budget || committed + held > budget)
            {
                return Err((
                    EngineError::QuotaExceeded {
                        tenant: name.to_string(),
                        limit: "cost_budget_usd",
                        max: budget.to_string(),
                    },
                    None,
                ));
            }
            if let Some(max) = tenant.config.quota.max_queued
                && tenant.waiting + n > max
            {
                return Err((
                    EngineError::QuotaExceeded {
                        tenant: name.to_string(),
                        limit: "max_queued",
                        max: max.to_string(),
                    },
                    None,
                ));
            }
        }
        // Rate last, so a refusal for another reason costs no tokens.
        for (name, n, _) in per_tenant {
            let tenant = self.tenant_mut(name, now);
            if let Some(bucket) = &mut tenant.bucket {
                bucket.take(*n as f64, now).map_err(|retry_after| {
                    (
                        EngineError::RateLimited {
                            tenant: name.to_string(),
                            retry_after,
                        },
                        None,
                    )
                })?;
            }
        }
        Ok(counted)
    }

    /// Takes in a job without checking queue capacity or quotas: one
    /// already accepted, as when an engine starts on a store's unfinished
    /// jobs.
    /// `hold`: what it may still be charged ([`State::admit`]).
    pub(crate) fn readmit(&mut self, id: JobId, live: Live, hold: f64, now: Instant) {
        let job = [(id, live, hold)];
        self.count_in(Counted::of(&job), now);
        let [(id, live, hold)] = job;
        self.take_in(id, Box::new(live), hold);
    }

    /// Lets go of what is still held for `id`'s cost.
    fn release_cost_hold(&mut self, id: JobId, tenant: &Arc<str>) {
        if let Some(hold) = self.cost_holds.remove(&id)
            && let Some(t) = self.tenants.get_mut(tenant)
        {
            t.held_usd = (t.held_usd - hold).max(0.0);
        }
    }

    /// Forgets jobs admitted but never stored (the store refused, or an
    /// idempotency key matched an existing job).
    pub(crate) fn abandon(&mut self, ids: &[JobId]) {
        for id in ids {
            if let Some(live) = self.jobs.remove(id) {
                self.release_cost_hold(*id, &live.tenant);
                self.levels[live.priority.index()].waiting -= 1;
                if let Some(t) = self.tenants.get_mut(&live.tenant) {
                    t.waiting = t.waiting.saturating_sub(1);
                }
                self.release_group(live.group);
            }
        }
    }

    /// Places a stored job: pending on the dependencies still live, or
    /// queued (at `run_at` if in the future). `hold` holds it pending until
    /// [`State::release_dependency`], while the dependencies that ended
    /// during its submission are checked. A job cancelled since it was
    /// admitted is not placed but left ending ([`PlaceOutcome::Canceled`]).
    pub(crate) fn place(
        &mut self,
        id: JobId,
        depends_on: &[JobId],
        hold: bool,
        run_at: Option<Instant>,
        now: Instant,
    ) -> PlaceOutcome {
        if let Some(live) = self.jobs.get(&id)
            && live.cancel_requested
        {
            // Cancelled while it was being stored: it never runs.
            let status = if hold || depends_on.iter().any(|dep| self.jobs.contains_key(dep)) {
                JobStatus::Pending
            } else {
                JobStatus::Queued
            };
            let (tenant, priority) = (Arc::clone(&live.tenant), live.priority);
            if let Some(live) = self.jobs.get_mut(&id) {
                live.place = Place::Ending {
                    from: status,
                    queued: false,
                };
            }
            self.count(&tenant, priority, None, Some(status));
            return PlaceOutcome::Canceled;
        }
        let mut waiting_on = 0u32;
        for dep in depends_on {
            if self.jobs.contains_key(dep) {
                self.dependents.entry(*dep).or_default().push(id);
                waiting_on += 1;
            }
        }
        let Some(live) = self.jobs.get(&id) else {
            return PlaceOutcome::Gone;
        };
        let (tenant, priority) = (Arc::clone(&live.tenant), live.priority);
        let deps_left = waiting_on + u32::from(hold);
        if deps_left > 0 {
            if let Some(live) = self.jobs.get_mut(&id) {
                live.place = Place::Pending { deps_left };
            }
            self.count(&tenant, priority, None, Some(JobStatus::Pending));
            return PlaceOutcome::Pending;
        }
        self.count(&tenant, priority, None, Some(JobStatus::Queued));
        self.queue_or_delay(id, run_at, now)
    }

    /// A dead letter taken back (before [`State::place`]): it no longer
    /// counts as having ended `was`.
    pub(crate) fn revive(&mut self, id: JobId, was: JobStatus) {
        let Some(live) = self.jobs.get(&id) else {
            return;
        };
        let (tenant, priority) = (Arc::clone(&live.tenant), live.priority);
        self.count(&tenant, priority, Some(was), None);
    }

    /// A new job whose dependency had already failed: counted as pending
    /// and on its way to `canceled`.
    pub(crate) fn doom(&mut self, id: JobId) {
        let Some(live) = self.jobs.get_mut(&id) else {
            return;
        };
        live.place = Place::Ending {
            from: JobStatus::Pending,
            queued: false,
        };
        let (tenant, priority) = (Arc::clone(&live.tenant), live.priority);
        self.count(&tenant, priority, None, Some(JobStatus::Pending));
    }

    /// One dependency of a pending job (or its submission hold) is
    /// settled. Returns true when it is now ready (write `queued`, then
    /// [`State::ready`]).
    pub(crate) fn release_dependency(&mut self, id: JobId) -> bool {
        match self.jobs.get_mut(&id).map(|live| &mut **live) {
            Some(Live {
                place: Place::Pending { deps_left },
                ..
            }) => {
                *deps_left = deps_left.saturating_sub(1);
                *deps_left == 0
            }
            _ => false,
        }
    }

    /// A pending job whose dependencies succeeded, now `queued` in the
    /// store: queued, or held until `run_at` (its `not_before`) if that is
    /// still to come. A job cancelled meanwhile (no longer pending here) is
    /// left to its canceller.
    pub(crate) fn ready(
        &mut self,
        id: JobId,
        run_at: Option<Instant>,
        now: Instant,
    ) -> PlaceOutcome {
        let Some(live) = self
            .jobs
            .get(&id)
            .filter(|live| matches!(live.place, Place::Pending { .. }))
        else {
            return PlaceOutcome::Gone;
        };
        let (tenant, priority) = (Arc::clone(&live.tenant), live.priority);
        self.count(
            &tenant,
            priority,
            Some(JobStatus::Pending),
            Some(JobStatus::Queued),
        );
        self.queue_or_delay(id, run_at, now)
    }

    fn queue_or_delay(&mut self, id: JobId, run_at: Option<Instant>, now: Instant) -> PlaceOutcome {
        match run_at {
            Some(at) if at > now => {
                self.delay(id, at);
                PlaceOutcome::Delayed
            }
            _ => PlaceOutcome::Queued(self.enqueue(id, now)),
        }
    }

    /// Puts a live job at the back of its tenant's queue at its level and
    /// returns the level's depth.
    pub(crate) fn enqueue(&mut self, id: JobId, now: Instant) -> usize {
        self.enqueue_at(id, now, false)
    }

    fn enqueue_at(&mut self, id: JobId, now: Instant, front: bool) -> usize {
        let Some(live) = self.jobs.get_mut(&id) else {
            return 0;
        };
        live.place = Place::Queued;
        live.since = now;
        let tenant = Arc::clone(&live.tenant);
        let level_index = live.level.index();
        if front
            && let Some(reserved) = self.reservation.and_then(|r| self.jobs.get(&r))
            && reserved.level.index() == level_index
            && Arc::ptr_eq(&reserved.tenant, &tenant)
        {
            // The reserved job is no longer first in its queue, where only
            // backfill would ever reach it: room held for it would hold up
            // everyone, for good if the job now in front cannot start.
            self.reservation = None;
        }
        let level = &mut self.levels[level_index];
        let queue = level.queues.entry(Arc::clone(&tenant)).or_insert_with(|| {
            level.ring.push_back(Arc::clone(&tenant));
            TenantQueue::default()
        });
        if front {
            queue.jobs.push_front(id);
        } else {
            queue.jobs.push_back(id);
        }
        level.depth += 1;
        level.depth
    }

    /// Holds a queued job until `until`.
    pub(crate) fn delay(&mut self, id: JobId, until: Instant) {
        if let Some(live) = self.jobs.get_mut(&id) {
            live.place = Place::Delayed;
            self.delayed.push(Reverse((until, id)));
        }
    }

    /// The earliest time a delayed job or aging needs attention.
    pub(crate) fn next_wakeup(&self, now: Instant) -> Option<Instant> {
        let delayed = self.delayed.peek().map(|Reverse((at, _))| *at);
        let aging = self.config.aging.and_then(|aging| {
            let queued_below_top = self.levels[1..].iter().any(|level| level.depth > 0);
            queued_below_top.then(|| now + (aging / 4).max(Duration::from_millis(1)))
        });
        match (delayed, aging) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Moves delayed jobs whose time has come into their queues, and lifts
    /// jobs that waited longer than the aging interval one level up.
    pub(crate) fn tick(&mut self, now: Instant) -> Vec<(JobId, Arc<str>, Priority, usize)> {
        let mut enqueued = Vec::new();
        while let Some(Reverse((at, id))) = self.delayed.peek().copied() {
            if at > now {
                break;
            }
            self.delayed.pop();
            if let Some(live) = self.jobs.get(&id)
                && matches!(live.place, Place::Delayed)
            {
                let (tenant, level) = (Arc::clone(&live.tenant), live.level);
                let depth = self.enqueue(id, now);
                enqueued.push((id, tenant, level, depth));
            }
        }
        if let Some(aging) = self.config.aging {
            self.age(aging, now);
        }
        enqueued
    }

    fn age(&mut self, aging: Duration, now: Instant) {
        for level in 1..self.levels.len() {
            let mut lifted = Vec::new();
            for queue in self.levels[level].queues.values_mut() {
                while let Some(id) = queue.jobs.front().copied() {
                    match self.jobs.get(&id) {
                        Some(live)
                            if matches!(live.place, Place::Queued)
                                && live.level.index() == level =>
                        {
                            if now.saturating_duration_since(live.since) < aging {
                                break;
                            }
                            queue.jobs.pop_front();
                            lifted.push(id);
                        }
                        // Stale entry: cancelled or moved.
                        _ => {
                            queue.jobs.pop_front();
                        }
                    }
                }
            }
            self.levels[level].depth -= lifted.len();
            for id in lifted {
                // It goes to the back of the level above: no longer first
                // in line, it holds no room (it reserves again once it is).
                self.drop_reservation(id);
                if let Some(live) = self.jobs.get_mut(&id) {
                    live.level = Priority::ALL[level - 1];
                }
                self.enqueue(id, now);
            }
        }
    }

    /// Starts every queued job that may start now, in dispatch order, and
    /// hands them to the runners. Returns whether an idle runner should be
    /// woken.
    #[must_use = "an idle runner may need waking"]
    pub(crate) fn dispatch(&mut self, now: Instant) -> bool {
        let before = self.runnable.len();
        for level in 0..self.levels.len() {
            let mut misses = 0;
            while misses < self.levels[level].ring.len() {
                let Some(tenant) = self.levels[level].ring.front().cloned() else {
                    break;
                };
                let Some(id) = self.head(level, &tenant) else {
                    // The tenant's queue here is empty: out of the ring.
                    let level = &mut self.levels[level];
                    level.ring.pop_front();
                    level.queues.remove(&tenant);
                    continue;
                };
                let level_state = &mut self.levels[level];
                let Some(queue) = level_state.queues.get_mut(&tenant) else {
                    break;
                };
                if queue.deficit == 0 {
                    queue.deficit = self.config.quantum.max(1)
                        * self
                            .tenants
                            .get(&tenant)
                            .map_or(1, |t| t.config.weight.max(1));
                }
                match self.check(id) {
                    Check::Start => {
                        let level_state = &mut self.levels[level];
                        if let Some(queue) = level_state.queues.get_mut(&tenant) {
                            queue.jobs.pop_front();
                            queue.deficit -= 1;
                            if queue.deficit == 0 {
                                level_state.ring.rotate_left(1);
                            }
                        }
                        level_state.depth -= 1;
                        misses = 0;
                        if let Some(start) = self.start(id, now) {
                            self.runnable.push_back(start);
                        }
                    }
                    Check::Park(group) => {
                        let level_state = &mut self.levels[level];
                        if let Some(queue) = level_state.queues.get_mut(&tenant) {
                            queue.jobs.pop_front();
                        }
                        level_state.depth -= 1;
                        if let Some(live) = self.jobs.get_mut(&id) {
                            live.place = Place::GroupWait;
                        }
                        if let Some(group) = self.groups.get_mut(&group) {
                            group.parked.push_back(id);
                        }
                    }
                    Check::NoRoom => match self.backfill(level, &tenant) {
                        Some(id) => {
                            let level_state = &mut self.levels[level];
                            if let Some(queue) = level_state.queues.get_mut(&tenant) {
                                queue.deficit = queue.deficit.saturating_sub(1);
                            }
                            level_state.depth -= 1;
                            misses = 0;
                            if let Some(start) = self.start(id, now) {
                                self.runnable.push_back(start);
                            }
                        }
                        None => {
                            self.levels[level].ring.rotate_left(1);
                            misses += 1;
                        }
                    },
                    Check::Blocked => {
                        self.levels[level].ring.rotate_left(1);
                        misses += 1;
                    }
                }
            }
        }
        self.runnable.len() > before && self.idle_runners > 0
    }

    /// Whether the runners have work enough that a submitter should let
    /// them at it before it goes on: more dispatched jobs than one runner
    /// takes at once, or queued jobs that only finishing ones can let
    /// start.
    pub(crate) fn backlogged(&self, batch: usize) -> bool {
        self.runnable.len() > batch || self.levels.iter().any(|level| level.depth > 0)
    }

    /// A runner's share of the dispatched jobs, at most `max`. A runner
    /// that gets none counts as idle (`idle` set) until its next call.
    /// Also returns whether another idle runner should be woken for what
    /// is left.
    ///
    /// While another runner is idle, the runnable jobs are split equally,
    /// so that every runner gets some. While none is, the share is an
    /// equal part of every running job, not of the runnable ones alone:
    /// the other runners still hold theirs. A runner that has just
    /// recorded its batch then takes back as many as the batch set free,
    /// where half of the runnable ones made batches ever smaller while the
    /// rest waited, capacity held, for a busy runner.
    /// Each batch costs a claim, a record and two passes under this lock,
    /// so its size matters when jobs are quick: with 8 cores of capacity
    /// and two runners the bench's (c) batches went from 2.2 to 3.0 jobs
    /// (`docs/benchmarks.md`). Jobs running outside any runner's batch (in
    /// tasks of their own) count too, so a runner may take a little more
    /// than its part: no job waits long for it, since it runs jobs in
    /// place for at most a millisecond before it hands the rest to tasks.
    pub(crate) fn take_runnable(&mut self, max: usize, idle: &mut bool) -> (Vec<Start>, bool) {
        if std::mem::take(idle) {
            self.idle_runners = self.idle_runners.saturating_sub(1);
        }
        let runners = self.runners.max(1);
        let runnable = self.runnable.len();
        let share = if self.idle_runners > 0 {
            runnable.div_ceil(runners)
        } else {
            // Runnable jobs count as running; at least them all, so that a
            // count that went out of step can never leave them untaken.
            let running: u64 = self.levels.iter().map(|level| level.counts.running).sum();
            (running as usize)
                .max(runnable)
                .div_ceil(runners)
                .min(runnable)
        }
        .min(max);
        let batch: Vec<Start> = self.runnable.drain(..share).collect();
        if batch.is_empty() {
            self.idle_runners += 1;
            *idle = true;
        }
        let wake_another = !self.runnable.is_empty() && self.idle_runners > 0;
        (batch, wake_another)
    }

    /// The first live entry of `tenant`'s queue at `level`, dropping stale
    /// ones.
    fn head(&mut self, level: usize, tenant: &Arc<str>) -> Option<JobId> {
        let queue = self.levels[level].queues.get_mut(tenant)?;
        while let Some(id) = queue.jobs.front().copied() {
            match self.jobs.get(&id) {
                Some(live)
                    if matches!(live.place, Place::Queued) && live.level.index() == level =>
                {
                    return Some(id);
                }
                _ => {
                    queue.jobs.pop_front();
                }
            }
        }
        None
    }

    /// When a tenant's first job waits for resources, one of its next few
    /// jobs that fits what is free (less the reservation), and its
    /// tenant's quotas and its group's limit, may start ahead of it:
    /// backfill that never delays the reserved job. Takes it out of the
    /// queue.
    fn backfill(&mut self, level: usize, tenant: &Arc<str>) -> Option<JobId> {
        const LOOKAHEAD: usize = 8;
        let queue = self.levels[level].queues.get(tenant)?;
        // A job fits only in what the reservation leaves, and needs no
        // less than nothing: when that is short of CPU or memory, as when
        // every slot is taken, no job but the reserved one (whose own
        // reservation does not count against it) can fit, and the others
        // are not looked up.
        let room = self.room_beyond_reservation();
        let position = queue.jobs.iter().skip(1).take(LOOKAHEAD).position(|id| {
            (room || self.reservation == Some(*id))
                && self.jobs.get(id).is_some_and(|live| {
                    matches!(live.place, Place::Queued)
                        && live.level.index() == level
                        && !self.over_quota(live)
                        && live.group.as_ref().is_none_or(|group| {
                            self.groups.get(group).map_or(0, |g| g.running)
                                < self.group_limit(group)
                        })
                        && self.fits(*id, &live.need)
                })
        })?;
        self.levels[level]
            .queues
            .get_mut(tenant)?
            .jobs
            .remove(position + 1)
    }

    /// Whether starting `live` now would take its tenant past a quota.
    fn over_quota(&self, live: &Live) -> bool {
        let Some(tenant) = self.tenants.get(&live.tenant) else {
            return false;
        };
        let quota = &tenant.config.quota;
        quota.max_running.is_some_and(|max| tenant.running >= max)
            || quota
                .max_cpu
                .is_some_and(|max| tenant.cpu_milli + live.need.cpu_milli > (max * 1000.0) as u64)
            || quota
                .max_memory_mb
                .is_some_and(|max| tenant.memory_mb + live.need.memory_mb > max)
            || quota
                .max_gpus
                .is_some_and(|max| tenant.gpus + live.need.gpu().map_or(0, |(_, n)| n) > max)
    }

    fn check(&mut self, id: JobId) -> Check {
        let Some(live) = self.jobs.get(&id) else {
            return Check::Blocked;
        };
        if self.over_quota(live) {
            // Held for a job that cannot start anyway, room would only
            // keep others waiting.
            self.drop_reservation(id);
            return Check::Blocked;
        }
        if let Some(group) = &live.group {
            let running = self.groups.get(group).map_or(0, |g| g.running);
            if running >= self.group_limit(group) {
                let group = Arc::clone(group);
                // Parked, it is looked at again only when a slot of its
                // group frees: room held for it meanwhile would hold up
                // everyone else, for good if nothing of its group runs.
                self.drop_reservation(id);
                return Check::Park(group);
            }
        }
        if self.fits(id, &live.need) {
            self.drop_reservation(id);
            return Check::Start;
        }
        let outranks = match self.reservation.and_then(|r| self.jobs.get(&r)) {
            Some(reserved) => live.level < reserved.level,
            None => true,
        };
        if outranks {
            let displaced = self.reservation.replace(id);
            // What the job it displaced was holding may be all it needed.
            if displaced.is_some() && self.fits(id, &live.need) {
                self.reservation = None;
                return Check::Start;
            }
        }
        Check::NoRoom
    }

    fn drop_reservation(&mut self, id: JobId) {
        if self.reservation == Some(id) {
            self.reservation = None;
        }
    }

    /// A slot of `group` may be free: its longest-parked job goes back to
    /// the front of its queue (and parks again if another job takes the
    /// slot first).
    fn unpark(&mut self, group: &str, now: Instant) {
        let limit = self.group_limit(group);
        let next = self
            .groups
            .get_mut(group)
            .filter(|g| g.running < limit)
            .and_then(|g| g.parked.pop_front());
        if let Some(next) = next {
            self.enqueue_at(next, now, true);
        }
    }

    /// Whether the free pool, less what the reservation is waiting for,
    /// has any CPU and memory left: if not, no job but the reserved one
    /// [`fits`](State::fits).
    fn room_beyond_reservation(&self) -> bool {
        self.reservation
            .and_then(|r| self.jobs.get(&r))
            .is_none_or(|reserved| {
                reserved.need.cpu_milli <= self.free.cpu_milli
                    && reserved.need.memory_mb <= self.free.memory_mb
            })
    }

    /// Whether `need` fits the free pool, less what the reservation (if it
    /// is another job) is waiting for.
    fn fits(&self, id: JobId, need: &Need) -> bool {
        let mut cpu = self.free.cpu_milli as i64;
        let mut memory = self.free.memory_mb as i64;
        let mut gpus = need.gpu().map_or(0, |(kind, _)| {
            self.free.gpus.get(kind).map_or(0, Vec::len) as i64
        });
        if let Some(reserved) = self
            .reservation
            .filter(|r| *r != id)
            .and_then(|r| self.jobs.get(&r))
        {
            cpu -= reserved.need.cpu_milli as i64;
            memory -= reserved.need.memory_mb as i64;
            if let (Some((kind, n)), Some((mine, _))) = (reserved.need.gpu(), need.gpu())
                && kind == mine
            {
                gpus -= i64::from(n);
            }
        }
        need.cpu_milli as i64 <= cpu
            && need.memory_mb as i64 <= memory
            && need.gpu().is_none_or(|(_, n)| i64::from(n) <= gpus)
    }

    fn start(&mut self, id: JobId, now: Instant) -> Option<Start> {
        let live = self.jobs.get_mut(&id)?;
        let need = live.need.clone();
        let mut devices = Vec::new();
        if let Some((kind, n)) = need.gpu() {
            let free = self.free.gpus.get_mut(kind)?;
            for _ in 0..n {
                devices.extend(free.pop());
            }
        }
        self.free.cpu_milli -= need.cpu_milli.min(self.free.cpu_milli);
        self.free.memory_mb -= need.memory_mb.min(self.free.memory_mb);
        let cancel = CancellationToken::new();
        if live.cancel_requested {
            cancel.cancel();
        }
        let waited = now.saturating_duration_since(live.since);
        live.since = now;
        live.place = Place::Running {
            cancel: cancel.clone(),
            devices: devices.clone().into_boxed_slice(),
        };
        let (tenant, priority, level, group, backend) = (
            Arc::clone(&live.tenant),
            live.priority,
            live.level,
            live.group.clone(),
            live.backend,
        );
        if let Some(group) = group.and_then(|g| self.groups.get_mut(&g)) {
            group.running += 1;
        }
        // A live job's tenant is known: one look-up, where `tenant_mut`
        // and `count` took three.
        let t = match self.tenants.get_mut(&tenant) {
            Some(t) => t,
            None => self.tenant_mut(&tenant, now),
        };
        t.waiting = t.waiting.saturating_sub(1);
        t.running += 1;
        t.cpu_milli += need.cpu_milli;
        t.memory_mb += need.memory_mb;
        t.gpus += need.gpu().map_or(0, |(_, n)| n);
        let (from, to) = (Some(JobStatus::Queued), Some(JobStatus::Running));
        t.counts[priority.index()].moved(from, to);
        let level_state = &mut self.levels[priority.index()];
        level_state.waiting = level_state.waiting.saturating_sub(1);
        level_state.counts.moved(from, to);
        let level_state = &mut self.levels[level.index()];
        level_state.waits_us.push(micros(waited));
        level_state.wait_seconds.observe(waited.as_secs_f64());
        Some(Start {
            id,
            tenant,
            backend: usize::from(backend),
            devices,
            cancel,
            level,
            waited,
        })
    }

    /// An attempt ended: gives its resources and group slot back. The job
    /// stays live (`Ending`) until [`State::retry`] or [`State::finished`].
    pub(crate) fn end_attempt(&mut self, id: JobId, now: Instant) {
        let Some(live) = self.jobs.get_mut(&id) else {
            return;
        };
        let started = live.since;
        let Place::Running { devices, .. } = std::mem::replace(
            &mut live.place,
            Place::Ending {
                from: JobStatus::Running,
                queued: false,
            },
        ) else {
            return;
        };
        let need = live.need.clone();
        let (tenant, group) = (Arc::clone(&live.tenant), live.group.clone());
        if let Some((kind, _)) = need.gpu()
            && let Some(free) = self.free.gpus.get_mut(kind)
        {
            free.extend(devices.into_vec());
        }
        self.free.cpu_milli += need.cpu_milli;
        self.free.memory_mb += need.memory_mb;
        if let Some(t) = self.tenants.get_mut(&tenant) {
            t.running = t.running.saturating_sub(1);
            t.cpu_milli = t.cpu_milli.saturating_sub(need.cpu_milli);
            t.memory_mb = t.memory_mb.saturating_sub(need.memory_mb);
            t.gpus = t.gpus.saturating_sub(need.gpu().map_or(0, |(_, n)| n));
        }
        let run = now.saturating_duration_since(started);
        self.runs_us.push(micros(run));
        self.run_seconds.observe(run.as_secs_f64());
        if let Some(group) = group {
            if let Some(g) = self.groups.get_mut(&group) {
                g.running = g.running.saturating_sub(1);
            }
            self.unpark(&group, now);
        }
    }

    /// An attempt of `id` (of `tenant`) was charged `usd`: spent now
    /// rather than held.
    pub(crate) fn charge(&mut self, id: JobId, tenant: &Arc<str>, usd: f64) {
        if usd <= 0.0 {
            return;
        }
        let released = match self.cost_holds.get_mut(&id) {
            Some(hold) => {
                let released = usd.min(*hold);
                *hold -= released;
                released
            }
            None => 0.0,
        };
        if let Some(t) = self.tenants.get_mut(tenant) {
            t.spent_usd += usd;
            t.held_usd = (t.held_usd - released).max(0.0);
        }
    }

    /// After [`State::end_attempt`]: the job goes back to its queue at
    /// `run_at`, unless it was asked to stop meanwhile: then it is left
    /// ending ([`PlaceOutcome::Canceled`]) and does not run again.
    pub(crate) fn retry(&mut self, id: JobId, run_at: Instant, now: Instant) -> PlaceOutcome {
        let Some(live) = self.jobs.get_mut(&id) else {
            return PlaceOutcome::Gone;
        };
        // A retry starts over at its own level.
        live.level = live.priority;
        live.since = now;
        let canceled = live.cancel_requested;
        if canceled {
            live.place = Place::Ending {
                from: JobStatus::Queued,
                queued: false,
            };
        }
        let (tenant, priority) = (Arc::clone(&live.tenant), live.priority);
        self.levels[priority.index()].waiting += 1;
        self.tenant_mut(&tenant, now).waiting += 1;
        self.count(
            &tenant,
            priority,
            Some(JobStatus::Running),
            Some(JobStatus::Queued),
        );
        if canceled {
            return PlaceOutcome::Canceled;
        }
        self.queue_or_delay(id, Some(run_at), now)
    }

    /// The job is now terminal in the store: forgets it, wakes waiters and
    /// says what becomes of its dependents.
    pub(crate) fn finished(&mut self, id: JobId, status: JobStatus, now: Instant) -> Released {
        let mut released = Released::default();
        let Some(live) = self.jobs.remove(&id) else {
            return released;
        };
        self.drop_reservation(id);
        self.release_cost_hold(id, &live.tenant);
        let from = live.status();
        if from != JobStatus::Running {
            // Ended while waiting (cancelled, or a dependency failed).
            let level = &mut self.levels[live.priority.index()];
            level.waiting = level.waiting.saturating_sub(1);
            if let Some(t) = self.tenants.get_mut(&live.tenant) {
                t.waiting = t.waiting.saturating_sub(1);
            }
            if matches!(live.place, Place::Ending { queued: true, .. }) {
                let level = &mut self.levels[live.level.index()];
                level.depth = level.depth.saturating_sub(1);
            }
        }
        self.count(&live.tenant, live.priority, Some(from), Some(status));
        self.finished_total += 1;
        self.finished.push_back(now);
        if self.finished.len() > SAMPLES {
            self.finished.pop_front();
        }
        if let Some(waiters) = self.waiters.remove(&id) {
            for waiter in waiters {
                let _ = waiter.send(());
            }
        }
        for dependent in self.dependents.remove(&id).unwrap_or_default() {
            let Some(dep) = self.jobs.get(&dependent) else {
                continue;
            };
            if status == JobStatus::Succeeded {
                if self.release_dependency(dependent) {
                    released.ready.push(dependent);
                }
            } else if matches!(dep.place, Place::Pending { .. }) {
                if let Some(dep) = self.jobs.get_mut(&dependent) {
                    dep.place = Place::Ending {
                        from: JobStatus::Pending,
                        queued: false,
                    };
                }
                released.doomed.push(dependent);
            }
        }
        self.release_group(live.group);
        released
    }

    /// Takes a waiting job out of the running, or signals a running one.
    pub(crate) fn request_cancel(&mut self, id: JobId, now: Instant) -> CancelAction {
        let Some(live) = self.jobs.get_mut(&id) else {
            return CancelAction::NotLive;
        };
        live.cancel_requested = true;
        match &live.place {
            Place::Running { cancel, .. } => {
                cancel.cancel();
                CancelAction::Signalled
            }
            Place::Ending { .. } => CancelAction::Nothing,
            // Admitting: whoever admits it ends it when it places it.
            Place::Admitting => CancelAction::Nothing,
            Place::Pending { .. } | Place::Delayed | Place::Queued | Place::GroupWait => {
                let group = live.group.clone();
                let queued = matches!(live.place, Place::Queued);
                live.place = Place::Ending {
                    from: live.status(),
                    queued,
                };
                if let Some(group) = group {
                    if let Some(g) = self.groups.get_mut(&group) {
                        g.parked.retain(|parked| *parked != id);
                    }
                    // It may have been the parked job a freed slot was
                    // meant for: the next one gets its chance.
                    if queued {
                        self.unpark(&group, now);
                    }
                }
                self.drop_reservation(id);
                CancelAction::Dequeued
            }
        }
    }

    /// Whether a dead-lettered job can be taken in again: not while the
    /// scheduler still holds it.
    pub(crate) fn revival(&mut self, id: JobId) -> Revival {
        let Some(live) = self.jobs.get(&id) else {
            return Revival::Free;
        };
        match live.place {
            // An attempt's end is in the store (that is how it became a
            // dead letter), and the scheduler lets go of it in a moment.
            Place::Running { .. }
            | Place::Ending {
                from: JobStatus::Running,
                ..
            } => self.waiter(id).map_or(Revival::Free, Revival::Ending),
            // Taken in again already, by another caller.
            _ => Revival::Busy(live.status()),
        }
    }

    /// A channel that fires when `id` ends, or `None` when it is not live.
    pub(crate) fn waiter(&mut self, id: JobId) -> Option<oneshot::Receiver<()>> {
        if !self.jobs.contains_key(&id) {
            return None;
        }
        let (sender, receiver) = oneshot::channel();
        let waiters = self.waiters.entry(id).or_default();
        waiters.retain(|w| !w.is_closed());
        waiters.push(sender);
        Some(receiver)
    }

    /// The counts as they stand, with copies of the time samples: their
    /// summaries sort thousands of samples, which [`Unsummarized::summarize`]
    /// does once the scheduler's lock is let go.
    pub(crate) fn stats(&self, now: Instant) -> Unsummarized {
        let mut jobs = StatusCounts::default();
        let levels = Priority::ALL
            .into_iter()
            .map(|priority| {
                let level = &self.levels[priority.index()];
                jobs.add(&level.counts);
                LevelStats {
                    priority,
                    jobs: level.counts,
                    depth: level.depth,
                    capacity: self.config.queue_capacity[priority.index()],
                    wait: Summary::default(),
                    wait_seconds: level.wait_seconds.clone(),
                }
            })
            .collect();
        let mut tenants: Vec<TenantStats> = self
            .tenants
            .iter()
            .map(|(name, t)| {
                let mut total = StatusCounts::default();
                let mut by_priority = BTreeMap::new();
                for priority in Priority::ALL {
                    let counts = t.counts[priority.index()];
                    total.add(&counts);
                    by_priority.insert(priority, counts);
                }
                TenantStats {
                    tenant_id: name.to_string(),
                    jobs: total,
                    by_priority,
                    cpu_in_use: t.cpu_milli as f64 / 1000.0,
                    memory_mb_in_use: t.memory_mb,
                    gpus_in_use: t.gpus,
                    cost_usd: t.spent_usd,
                    cost_usd_held: t.held_usd,
                }
            })
            .collect();
        tenants.sort_by(|a, b| a.tenant_id.cmp(&b.tenant_id));
        let gpu_map = |pool: &Pool| {
            self.gpu_kinds
                .iter()
                .enumerate()
                .map(|(i, kind)| (kind.clone(), pool.gpus.get(i).map_or(0, Vec::len) as u32))
                .collect::<BTreeMap<_, _>>()
        };
        let capacity_gpus = gpu_map(&self.capacity);
        let free_gpus = gpu_map(&self.free);
        let resources = ResourceStats {
            cpu_in_use: (self.capacity.cpu_milli - self.free.cpu_milli) as f64 / 1000.0,
            cpu_capacity: self.capacity.cpu_milli as f64 / 1000.0,
            memory_mb_in_use: self.capacity.memory_mb - self.free.memory_mb,
            memory_mb_capacity: self.capacity.memory_mb,
            gpus_in_use: capacity_gpus
                .iter()
                .map(|(kind, total)| {
                    (
                        kind.clone(),
                        total - free_gpus.get(kind).copied().unwrap_or(0),
                    )
                })
                .collect(),
            gpus_capacity: capacity_gpus,
        };
        let throughput_per_second = match self.finished.front() {
            Some(first) if self.finished.len() > 1 => {
                let span = now.saturating_duration_since(*first).as_secs_f64();
                if span > 0.0 {
                    self.finished.len() as f64 / span
                } else {
                    0.0
                }
            }
            _ => 0.0,
        };
        let stats = Stats {
            jobs,
            levels,
            tenants,
            resources,
            finished_total: self.finished_total,
            throughput_per_second,
            run: Summary::default(),
            run_seconds: self.run_seconds.clone(),
            outcomes: OutcomeClass::ALL
                .into_iter()
                .zip(self.outcomes)
                .map(|(class, n)| (class.as_str(), n))
                .collect(),
        };
        Unsummarized {
            stats,
            waits_us: Priority::ALL
                .into_iter()
                .map(|priority| self.levels[priority.index()].waits_us.samples.clone())
                .collect(),
            runs_us: self.runs_us.samples.clone(),
        }
    }

    /// An attempt ended as `class`.
    pub(crate) fn count_outcome(&mut self, class: OutcomeClass) {
        if let Some(position) = OutcomeClass::ALL.iter().position(|c| *c == class) {
            self.outcomes[position] += 1;
        }
    }
}

/// Where [`State::place`] put a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PlaceOutcome {
    /// Waiting on dependencies.
    Pending,
    /// Queued for later.
    Delayed,
    /// In its queue; the level's depth.
    Queued(usize),
    /// Asked to stop while out of the state's hands: left ending, for the
    /// caller to write `canceled` ([`Released::canceled`]).
    Canceled,
    /// Cancelled meanwhile.
    Gone,
}

enum Check {
    Start,
    /// Its concurrency group is full: park it.
    Park(Arc<str>),
    /// Not enough free resources.
    NoRoom,
    /// Its tenant is at a quota: the tenant's turn passes.
    Blocked,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every queued job has one; a million queued jobs must fit in a
    /// gigabyte with everything else (the scheduler bench measures it).
    #[test]
    fn a_live_entry_fits_in_112_bytes() {
        assert!(size_of::<Live>() <= 112, "{}", size_of::<Live>());
    }

    /// A state with `cores` of capacity, two runners, and `queued` jobs of
    /// one core each, queued.
    fn two_runners(cores: f64, queued: usize) -> State {
        let mut state = State::new(SchedulerConfig {
            capacity: crate::scheduler::Capacity {
                cpu: cores,
                memory_mb: 1 << 20,
                gpus: Vec::new(),
            },
            ..SchedulerConfig::default()
        });
        state.runners = 2;
        let now = Instant::now();
        let tenant = state.intern_tenant("acme", now);
        let ids: Vec<JobId> = (0..queued)
            .map(|n| JobId::from_u128(n as u128 + 1))
            .collect();
        let jobs = ids
            .iter()
            .map(|&id| {
                let live = Live {
                    tenant: Arc::clone(&tenant),
                    priority: Priority::Batch,
                    level: Priority::Batch,
                    need: Need::new(1000, 0, None),
                    group: None,
                    backend: 0,
                    place: Place::Admitting,
                    since: now,
                    cancel_requested: false,
                };
                (id, live, 0.0)
            })
            .collect();
        state.admit(jobs, now).expect("admitted");
        for &id in &ids {
            state.place(id, &[], false, None, now);
        }
        state
    }

    /// Runners split what is dispatched while one of them is idle, and a
    /// busy runner that has recorded its batch takes back as many jobs as
    /// the batch set free, not half of them.
    #[test]
    fn a_runner_takes_its_part_of_every_running_job() {
        let mut state = two_runners(8.0, 20);
        let now = Instant::now();
        let (mut idle_a, mut idle_b) = (false, false);
        // Both runners look before anything is dispatched: both idle.
        assert!(state.take_runnable(64, &mut idle_a).0.is_empty());
        assert!(state.take_runnable(64, &mut idle_b).0.is_empty());
        assert!(state.dispatch(now), "an idle runner is woken");
        let (a, wake) = state.take_runnable(64, &mut idle_a);
        assert_eq!((a.len(), wake), (4, true), "half, while the other is idle");
        let (b, wake) = state.take_runnable(64, &mut idle_b);
        assert_eq!((b.len(), wake), (4, false));
        // Runner a records its batch: four cores free, four more dispatched.
        for start in &a {
            state.end_attempt(start.id, now);
            state.finished(start.id, JobStatus::Succeeded, now);
        }
        assert!(!state.dispatch(now), "no runner is idle");
        let (a, _) = state.take_runnable(64, &mut idle_a);
        assert_eq!(a.len(), 4, "what its batch set free, b holding its own");
        // Nothing is left for b, which counts as idle till it looks again.
        assert!(state.take_runnable(64, &mut idle_b).0.is_empty());
        assert!(idle_b);
    }
}
