//! Random mixes of work through the public `Engine` API, checked against
//! the scheduler's invariants once everything has ended.
//!
//! A workload mixes the four priorities (with aging), three tenants (one
//! weighted, one with running and CPU quotas), CPU, memory and GPU needs,
//! concurrency groups, dependencies, `not_before` times, idempotency keys,
//! retries, timeouts, batches (some refused whole), cancels of waiting and
//! running jobs and retries of dead letters. Whatever the mix: resources,
//! quotas and group limits are never exceeded, no GPU is given to two jobs
//! at once, a job runs only after its dependencies succeeded and its
//! `not_before`, a cancelled job never starts again, each job ends as its
//! behaviour says it must, and `get`, `list`, `dead_letters`, `stats` and
//! the event stream (each job's events in order) all agree with what ran.
//!
//! Each seed is one fixed workload, so a failure names the seed that
//! reproduces it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;
use work_engine::backends::{MockBackend, MockRun};
use work_engine::store::{SqliteStore, Store};
use work_engine::{
    Backoff, Capacity, Engine, EngineError, EventData, EventStream, Job, JobId, JobQuery,
    JobStatus, NewJob, Priority, Quota, Resources, RetryPolicy, TenantConfig,
};

const CPU: f64 = 4.0;
const MEMORY_MB: u64 = 8192;
const GPU_KIND: &str = "A100";
const TENANTS: [&str; 3] = ["light", "heavy", "capped"];
/// The quota of `capped`.
const CAPPED_RUNNING: usize = 2;
const CAPPED_CPU: f64 = 2.0;
/// Jobs `capped` may have waiting at once; more are refused.
const CAPPED_QUEUED: u64 = 12;
/// Concurrency groups and their limits.
const GROUPS: [(&str, usize); 2] = [("solo", 1), ("pair", 2)];

/// How a job's attempts end, and so how the job must end.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Behavior {
    /// Succeeds on its first attempt.
    Succeed,
    /// Fails (retryably) this many times, then succeeds: within its
    /// attempts.
    Flaky(u32),
    /// Fails retryably every time: dead letter after all its attempts.
    AlwaysFails,
    /// Fails with a class the policy does not retry: dead letter after one
    /// attempt.
    Deterministic,
    /// Never returns by itself: times out on every attempt.
    Hangs,
}

/// What the test asked for, to check the engine against.
#[derive(Debug, Clone)]
struct Spec {
    tenant: &'static str,
    cpu: f64,
    memory_mb: u64,
    gpus: u32,
    group: Option<&'static str>,
    deps: Vec<JobId>,
    behavior: Behavior,
    max_attempts: u32,
    /// With a `not_before`: it must not start before this (half its delay
    /// after it was made, to allow for the clocks' reading).
    not_before: Option<Instant>,
}

#[derive(Debug, Default)]
struct Model {
    specs: HashMap<JobId, Spec>,
    /// Every job, in submission order (a `HashMap`'s order would make the
    /// workload differ between runs of one seed).
    all: Vec<JobId>,
    /// First job of each (tenant, idempotency key).
    keys: HashMap<(&'static str, String), JobId>,
    /// Cancels that found the job waiting: when they returned.
    dequeued: HashMap<JobId, Instant>,
    /// Cancels that found the job running or between two attempts.
    signalled: BTreeSet<JobId>,
    revived: BTreeSet<JobId>,
    refused_batches: usize,
    /// Submissions `capped`'s queue quota refused.
    quota_refusals: usize,
}

impl Model {
    /// `tenant`'s jobs, in submission order.
    fn of(&self, tenant: &str) -> Vec<JobId> {
        self.all
            .iter()
            .copied()
            .filter(|id| self.specs[id].tenant == tenant)
            .collect()
    }
}

/// An engine on `store` (the memory store when `None`).
fn engine(mock: &MockBackend, store: Option<Arc<dyn Store>>, aging: Duration) -> Engine {
    let capacity = Capacity {
        cpu: CPU,
        memory_mb: MEMORY_MB,
        gpus: Vec::new(),
    }
    .with_gpus(GPU_KIND, ["0", "1"]);
    let mut builder = Engine::builder()
        .capacity(capacity)
        .backend(mock.clone())
        .aging(Some(aging))
        .event_capacity(1 << 17)
        .tenant(
            "heavy",
            TenantConfig {
                weight: 3,
                ..TenantConfig::default()
            },
        )
        .tenant(
            "capped",
            TenantConfig {
                weight: 1,
                quota: Quota {
                    max_running: Some(CAPPED_RUNNING as u32),
                    max_cpu: Some(CAPPED_CPU),
                    max_queued: Some(CAPPED_QUEUED),
                    ..Quota::default()
                },
            },
        );
    for (group, limit) in GROUPS {
        builder = builder.concurrency_limit(group, limit as u32);
    }
    if let Some(store) = store {
        builder = builder.store(store);
    }
    builder.build().unwrap()
}

/// A random job of `tenant`, possibly depending on some of `earlier`.
fn random_job(rng: &mut fastrand::Rng, tenant: &'static str, earlier: &[JobId]) -> (NewJob, Spec) {
    let behavior = match rng.u32(0..100) {
        0..50 => Behavior::Succeed,
        50..65 => Behavior::Flaky(rng.u32(1..3)),
        65..77 => Behavior::AlwaysFails,
        77..87 => Behavior::Deterministic,
        _ => Behavior::Hangs,
    };
    let delay_ms = match rng.u32(0..10) {
        0..4 => 0,
        4..9 => rng.u64(1..15),
        _ => rng.u64(30..80),
    };
    let mock = match behavior {
        Behavior::Succeed => json!({ "delay_ms": delay_ms }),
        Behavior::Flaky(times) => json!({ "delay_ms": delay_ms, "fail_times": times }),
        Behavior::AlwaysFails => json!({ "delay_ms": delay_ms, "fail": true }),
        Behavior::Deterministic => {
            json!({ "delay_ms": delay_ms, "fail": true, "fail_class": "tool_error" })
        }
        Behavior::Hangs => json!({ "hang": true }),
    };
    let gpus = if rng.u32(0..10) == 0 {
        rng.u32(1..3)
    } else {
        0
    };
    let mut spec = Spec {
        tenant,
        cpu: [0.5, 1.0, 2.0, 4.0][rng.usize(0..4)],
        memory_mb: [0, 512, 2048][rng.usize(0..3)],
        gpus,
        group: match rng.u32(0..10) {
            0..2 => Some(GROUPS[0].0),
            2 => Some(GROUPS[1].0),
            _ => None,
        },
        deps: if !earlier.is_empty() && rng.u32(0..5) == 0 {
            (0..rng.usize(1..3))
                .map(|_| earlier[rng.usize(0..earlier.len())])
                .collect()
        } else {
            Vec::new()
        },
        behavior,
        max_attempts: if matches!(behavior, Behavior::Flaky(_)) {
            3
        } else {
            2
        },
        not_before: None,
    };
    let priority = Priority::ALL[rng.usize(0..Priority::ALL.len())];
    let mut job = NewJob::new("sim", tenant, json!({ "mock": mock }))
        .with_priority(priority)
        .with_namespace(["ns-a", "ns-b"][rng.usize(0..2)])
        .with_resources(Resources {
            cpu: spec.cpu,
            memory_mb: spec.memory_mb,
            gpu: (gpus > 0).then(|| GPU_KIND.to_owned()),
            gpu_count: gpus,
            timeout_ms: (behavior == Behavior::Hangs).then(|| rng.u64(5..30)),
            ..Resources::default()
        })
        .with_retry_policy(RetryPolicy {
            max_attempts: spec.max_attempts,
            backoff: Backoff::Constant,
            base_delay_ms: rng.u64(1..10),
            max_delay_ms: 10,
            jitter: false,
            ..RetryPolicy::default()
        });
    if let Some(group) = spec.group {
        job = job.with_concurrency_group(group);
    }
    if !spec.deps.is_empty() {
        job = job.with_depends_on(spec.deps.clone());
    }
    if rng.u32(0..10) == 0 {
        let delay = Duration::from_millis(rng.u64(10..30));
        job.constraints.not_before = Some(chrono::Utc::now() + delay);
        spec.not_before = Some(Instant::now() + delay / 2);
    }
    (job, spec)
}

/// Whether the engine must refuse `spec` at admission: more CPU than its
/// tenant may ever use.
fn refused(spec: &Spec) -> bool {
    spec.tenant == "capped" && spec.cpu > CAPPED_CPU
}

/// Whether `err` is `capped`'s queue quota, which refuses a submission
/// whenever it has too many jobs waiting.
fn queue_quota(tenant: &str, err: &EngineError) -> bool {
    tenant == "capped"
        && matches!(
            err,
            EngineError::QuotaExceeded {
                limit: "max_queued",
                ..
            }
        )
}

fn total(engine: &Engine) -> u64 {
    let c = engine.stats().jobs;
    c.pending + c.queued + c.running + c.succeeded + c.failed + c.canceled + c.timeout
}

/// How often a workload took each path that is easy to miss.
#[derive(Debug, Default)]
struct Exercised {
    refused_batches: usize,
    quota_refusals: usize,
    dequeued: usize,
    signalled: usize,
    revived: usize,
}

impl Exercised {
    fn add(&mut self, other: Self) {
        self.refused_batches += other.refused_batches;
        self.quota_refusals += other.quota_refusals;
        self.dequeued += other.dequeued;
        self.signalled += other.signalled;
        self.revived += other.revived;
    }

    /// Every path was taken at least once, so the checks above meant
    /// something.
    fn assert_all(&self) {
        assert!(self.signalled > 0, "{self:?}");
        self.assert_but_signalled();
    }

    /// The same but for cancels of running jobs, which real time makes
    /// rare: on the real clock most jobs end within a few milliseconds.
    fn assert_but_signalled(&self) {
        assert!(self.refused_batches > 0, "{self:?}");
        assert!(self.quota_refusals > 0, "{self:?}");
        assert!(self.dequeued > 0, "{self:?}");
        assert!(self.revived > 0, "{self:?}");
    }
}

/// Runs one random workload of `steps` operations, then waits for every
/// job to end and checks the invariants.
async fn run_workload(seed: u64, steps: usize, store: Option<Arc<dyn Store>>) -> Exercised {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mock = MockBackend::new();
    // Aging (lifting jobs that waited longer than this a level up) often
    // enough to take part, or rarely.
    let aging = match rng.u32(0..3) {
        0 => Duration::from_secs(60),
        _ => Duration::from_millis(rng.u64(5..50)),
    };
    let engine = engine(&mock, store, aging);
    let mut events = engine.subscribe();
    let mut model = Model::default();

    for _ in 0..steps {
        let tenant = TENANTS[rng.usize(0..TENANTS.len())];
        let earlier = model.of(tenant);
        match rng.u32(0..100) {
            0..65 => {
                let (mut job, spec) = random_job(&mut rng, tenant, &earlier);
                let key = (rng.u32(0..10) == 0).then(|| format!("key-{}", rng.u32(0..4)));
                if let Some(key) = &key {
                    job = job.with_idempotency_key(key.clone());
                }
                let before = total(&engine);
                let submitted = engine.submit(job).await;
                if refused(&spec) {
                    assert!(submitted.is_err(), "seed {seed}: {spec:?} was admitted");
                    continue;
                }
                if let Err(err) = &submitted
                    && queue_quota(tenant, err)
                {
                    assert_eq!(total(&engine), before, "seed {seed}: {err}");
                    model.quota_refusals += 1;
                    continue;
                }
                let job = submitted.unwrap_or_else(|e| panic!("seed {seed}: {spec:?}: {e}"));
                if let Some(key) = key {
                    match model.keys.get(&(tenant, key.clone())) {
                        Some(first) => {
                            assert_eq!(job.id, *first, "seed {seed}: key {key} gave a new job");
                            continue;
                        }
                        None => {
                            model.keys.insert((tenant, key), job.id);
                        }
                    }
                }
                model.all.push(job.id);
                model.specs.insert(job.id, spec);
            }
            65..73 => {
                let before = total(&engine);
                let mut jobs = Vec::new();
                let mut specs = Vec::new();
                for _ in 0..rng.usize(2..5) {
                    let (job, spec) = random_job(&mut rng, tenant, &earlier);
                    jobs.push(job);
                    specs.push(spec);
                }
                let poisoned = rng.u32(0..3) == 0;
                if poisoned {
                    let at = rng.usize(0..=jobs.len());
                    // Needs more CPU than the engine has: it could never run.
                    let too_big = NewJob::new("sim", tenant, json!({})).with_resources(Resources {
                        cpu: CPU * 2.0,
                        ..Resources::default()
                    });
                    jobs.insert(at, too_big);
                }
                let refuse = poisoned || specs.iter().any(refused);
                match engine.submit_batch(jobs).await {
                    Ok(batch) => {
                        assert!(!refuse, "seed {seed}: a batch with a bad job was admitted");
                        for (job, spec) in batch.jobs.iter().zip(specs) {
                            model.all.push(job.id);
                            model.specs.insert(job.id, spec);
                        }
                    }
                    Err(err) => {
                        let quota = match &err {
                            EngineError::Batch { source, .. } => queue_quota(tenant, source),
                            _ => false,
                        };
                        assert!(refuse || quota, "seed {seed}: batch refused: {err}");
                        model.quota_refusals += usize::from(quota);
                        // All or none: nothing of it was kept.
                        assert_eq!(total(&engine), before, "seed {seed}: {err}");
                        model.refused_batches += 1;
                    }
                }
            }
            73..83 => {
                // Half the time one of the latest jobs, which are more
                // likely to be waiting or running still.
                let recent =
                    model
                        .all
                        .len()
                        .saturating_sub(if rng.bool() { 6 } else { usize::MAX });
                let candidates = &model.all[recent..];
                if candidates.is_empty() {
                    continue;
                }
                let id = candidates[rng.usize(0..candidates.len())];
                let job = engine.cancel(id).await.unwrap();
                match job.status {
                    JobStatus::Canceled => {
                        model.dequeued.entry(id).or_insert_with(Instant::now);
                    }
                    // Running, or between attempts: told to stop.
                    status if !status.is_terminal() => {
                        model.signalled.insert(id);
                    }
                    _ => {}
                }
            }
            83..88 => {
                let letters = engine
                    .dead_letters(&JobQuery::tenant(tenant))
                    .await
                    .unwrap()
                    .jobs;
                if letters.is_empty() {
                    continue;
                }
                let id = letters[rng.usize(0..letters.len())].id;
                let job = match engine.retry_dead_letter(id).await {
                    Err(err) if queue_quota(tenant, &err) => {
                        model.quota_refusals += 1;
                        continue;
                    }
                    job => job.unwrap(),
                };
                assert!(!job.status.is_terminal(), "seed {seed}: {job:?}");
                model.revived.insert(id);
            }
            _ => tokio::time::sleep(Duration::from_millis(rng.u64(1..20))).await,
        }
        if rng.bool() {
            tokio::task::yield_now().await;
        }
    }

    let mut finals = HashMap::new();
    for &id in &model.all {
        // An hour on the paused clock passes at once; on the real one,
        // everything ends within seconds.
        let job = engine.wait(id, Duration::from_secs(20)).await.unwrap();
        if !job.status.is_terminal() {
            let stats = engine.stats();
            let levels: Vec<_> = stats
                .levels
                .iter()
                .map(|l| (l.priority, l.depth, l.jobs.queued, l.jobs.running))
                .collect();
            panic!(
                "seed {seed}: never ended: {:?} attempt {} (cancelled at once: {}, told to stop: {}) {job:?}; \
                 stats: {:?}, levels (depth, queued, running): {levels:?}, {:?}",
                job.status,
                job.attempt,
                model.dequeued.contains_key(&id),
                model.signalled.contains(&id),
                stats.jobs,
                stats.resources,
            );
        }
        finals.insert(id, job);
    }
    let history = mock.history();
    check_resources(seed, &model, &history);
    check_jobs(seed, &model, &finals, &history);
    check_reads(seed, &engine, &model, &finals).await;
    check_events(seed, &mut events, &model, &finals, &history);
    assert!(model.specs.len() > steps / 3, "seed {seed}: too few jobs");
    Exercised {
        refused_batches: model.refused_batches,
        quota_refusals: model.quota_refusals,
        dequeued: model.dequeued.len(),
        signalled: model.signalled.len(),
        revived: model.revived.len(),
    }
}

/// At every start, the runs under way fit the capacity, the quotas and
/// the group limits, and hold distinct GPUs of the right type.
///
/// A run holds its resources from `started` up to `ended` (the engine frees
/// them after that): counting the runs with `started <= t < ended` never
/// counts one too many.
fn check_resources(seed: u64, model: &Model, history: &[MockRun]) {
    for run in history {
        let spec = &model.specs[&run.job_id];
        assert_eq!(
            run.devices.len(),
            spec.gpus as usize,
            "seed {seed}: {run:?}"
        );
        assert!(run.devices.iter().all(|d| d.kind == GPU_KIND));
        // Runs that took no time cannot be ordered against others that
        // start at the same instant (the paused clock makes many).
        if run.started == run.ended {
            continue;
        }
        let under_way: Vec<(&MockRun, &Spec)> = history
            .iter()
            .filter(|o| o.started <= run.started && run.started < o.ended)
            .map(|o| (o, &model.specs[&o.job_id]))
            .collect();
        let cpu: f64 = under_way.iter().map(|(_, s)| s.cpu).sum();
        let memory: u64 = under_way.iter().map(|(_, s)| s.memory_mb).sum();
        assert!(cpu <= CPU + 1e-9, "seed {seed}: {cpu} cores at {run:?}");
        assert!(memory <= MEMORY_MB, "seed {seed}: {memory} MiB at {run:?}");
        let mut devices = BTreeSet::new();
        for (o, _) in &under_way {
            for device in &o.devices {
                assert!(
                    devices.insert(&device.id),
                    "seed {seed}: GPU {} given twice at {run:?}",
                    device.id
                );
            }
        }
        let capped: Vec<_> = under_way
            .iter()
            .filter(|(_, s)| s.tenant == "capped")
            .collect();
        let described = || {
            capped
                .iter()
                .map(|(o, s)| {
                    format!(
                        "{} #{} {:?}..{:?} {} cores {:?}",
                        o.job_id,
                        o.attempt,
                        o.started.duration_since(history[0].started),
                        o.ended.duration_since(history[0].started),
                        s.cpu,
                        o.outcome
                    )
                })
                .collect::<Vec<_>>()
        };
        assert!(
            capped.len() <= CAPPED_RUNNING,
            "seed {seed}: capped runs {:#?}",
            described()
        );
        let capped_cpu: f64 = capped.iter().map(|(_, s)| s.cpu).sum();
        assert!(
            capped_cpu <= CAPPED_CPU + 1e-9,
            "seed {seed}: capped runs {:#?}",
            described()
        );
        for (group, limit) in GROUPS {
            let running = under_way
                .iter()
                .filter(|(_, s)| s.group == Some(group))
                .count();
            assert!(running <= limit, "seed {seed}: {running} in {group}");
        }
        // One attempt of a job at a time.
        let same = under_way
            .iter()
            .filter(|(o, _)| o.job_id == run.job_id)
            .count();
        assert_eq!(same, 1, "seed {seed}: two attempts of {run:?} at once");
    }
}

/// Each job ended as its behaviour, its cancels and its dependencies say.
fn check_jobs(seed: u64, model: &Model, finals: &HashMap<JobId, Arc<Job>>, history: &[MockRun]) {
    let runs_of = |id: JobId| -> Vec<&MockRun> {
        let mut runs: Vec<&MockRun> = history.iter().filter(|r| r.job_id == id).collect();
        runs.sort_by_key(|r| r.started);
        runs
    };
    for (&id, spec) in &model.specs {
        let job = &finals[&id];
        let runs = runs_of(id);
        let context = format!("seed {seed}: {spec:?} {job:?} {runs:?}");

        // Dependencies: a job runs only after every one of them succeeded,
        // and one that failed or was cancelled cancels it.
        let deps_ok = spec
            .deps
            .iter()
            .all(|dep| finals[dep].status == JobStatus::Succeeded);
        if let Some(first) = runs.first() {
            if let Some(not_before) = spec.not_before {
                assert!(
                    first.started >= not_before,
                    "{context}: ran before not_before"
                );
            }
            for dep in &spec.deps {
                assert_eq!(finals[dep].status, JobStatus::Succeeded, "{context}");
                let dep_end = runs_of(*dep).last().map(|r| r.ended);
                assert!(dep_end.is_some_and(|end| end <= first.started), "{context}");
            }
        }
        if !deps_ok {
            assert_eq!(job.status, JobStatus::Canceled, "{context}");
            assert!(runs.is_empty(), "{context}");
            continue;
        }
        // A cancel that found it waiting: it never starts again.
        if let Some(at) = model.dequeued.get(&id) {
            assert_eq!(job.status, JobStatus::Canceled, "{context}");
            assert!(runs.iter().all(|r| r.started <= *at), "{context}");
            continue;
        }
        if model.signalled.contains(&id) && job.status == JobStatus::Canceled {
            continue;
        }
        let (status, attempts) = match spec.behavior {
            Behavior::Succeed => (JobStatus::Succeeded, 1),
            Behavior::Flaky(times) => (JobStatus::Succeeded, times + 1),
            Behavior::AlwaysFails => (JobStatus::Failed, spec.max_attempts),
            Behavior::Deterministic => (JobStatus::Failed, 1),
            Behavior::Hangs => (JobStatus::Timeout, spec.max_attempts),
        };
        assert_eq!(job.status, status, "{context}");
        assert_eq!(job.dead_letter, status != JobStatus::Succeeded, "{context}");
        if model.revived.contains(&id) {
            // Each life ran all its attempts.
            assert_eq!(runs.len() % attempts as usize, 0, "{context}");
        } else {
            let numbers: Vec<u32> = runs.iter().map(|r| r.attempt).collect();
            assert_eq!(numbers, (1..=attempts).collect::<Vec<_>>(), "{context}");
            assert_eq!(job.attempt, attempts, "{context}");
        }
        if status == JobStatus::Succeeded {
            assert_eq!(
                job.result,
                Some(json!({ "attempt": attempts })),
                "{context}"
            );
        }
    }
}

/// `get`, `list` (every page, by status too), `dead_letters` and `stats`
/// agree with the jobs' ends.
async fn check_reads(seed: u64, engine: &Engine, model: &Model, finals: &HashMap<JobId, Arc<Job>>) {
    let pages = |query: JobQuery| async move {
        let mut ids = Vec::new();
        let mut query = JobQuery {
            limit: Some(7),
            ..query
        };
        loop {
            let page = engine.list(&query).await.unwrap();
            ids.extend(page.jobs.iter().map(|job| job.id));
            match page.next_cursor {
                Some(cursor) => query.cursor = Some(cursor),
                None => return ids,
            }
        }
    };
    for tenant in TENANTS {
        let mine: BTreeSet<JobId> = model.of(tenant).into_iter().collect();
        let listed = pages(JobQuery::tenant(tenant)).await;
        assert_eq!(
            listed.len(),
            mine.len(),
            "seed {seed}: {tenant} listed twice"
        );
        assert_eq!(
            listed.into_iter().collect::<BTreeSet<_>>(),
            mine,
            "seed {seed}"
        );
        for status in JobStatus::ALL {
            let listed: BTreeSet<JobId> = pages(JobQuery {
                status: Some(status),
                ..JobQuery::tenant(tenant)
            })
            .await
            .into_iter()
            .collect();
            let expected: BTreeSet<JobId> = mine
                .iter()
                .copied()
                .filter(|id| finals[id].status == status)
                .collect();
            assert_eq!(listed, expected, "seed {seed}: {tenant} {status:?}");
        }
        let letters: BTreeSet<JobId> = engine
            .dead_letters(&JobQuery {
                limit: Some(JobQuery::MAX_LIMIT),
                ..JobQuery::tenant(tenant)
            })
            .await
            .unwrap()
            .jobs
            .iter()
            .map(|job| job.id)
            .collect();
        let expected: BTreeSet<JobId> = mine
            .iter()
            .copied()
            .filter(|id| finals[id].dead_letter)
            .collect();
        assert_eq!(letters, expected, "seed {seed}: {tenant} dead letters");
    }
    for (id, job) in finals {
        assert_eq!(engine.get(*id).await.unwrap().status, job.status);
    }

    let stats = engine.stats();
    let count = |tenant: Option<&str>, status: JobStatus| {
        finals
            .values()
            .filter(|job| job.status == status && tenant.is_none_or(|t| job.tenant_id == t))
            .count() as u64
    };
    let tally = |c: &work_engine::scheduler::StatusCounts| {
        [
            (JobStatus::Pending, c.pending),
            (JobStatus::Queued, c.queued),
            (JobStatus::Running, c.running),
            (JobStatus::Succeeded, c.succeeded),
            (JobStatus::Failed, c.failed),
            (JobStatus::Canceled, c.canceled),
            (JobStatus::Timeout, c.timeout),
        ]
    };
    for (status, n) in tally(&stats.jobs) {
        assert_eq!(n, count(None, status), "seed {seed}: stats {status:?}");
    }
    for tenant in &stats.tenants {
        for (status, n) in tally(&tenant.jobs) {
            assert_eq!(
                n,
                count(Some(&tenant.tenant_id), status),
                "seed {seed}: {} {status:?}",
                tenant.tenant_id
            );
        }
        assert_eq!(tenant.cpu_in_use, 0.0, "seed {seed}");
        assert_eq!(tenant.gpus_in_use, 0, "seed {seed}");
    }
    assert_eq!(stats.resources.cpu_in_use, 0.0, "seed {seed}");
    assert_eq!(stats.resources.memory_mb_in_use, 0, "seed {seed}");
    assert!(stats.resources.gpus_in_use.values().all(|n| *n == 0));
}

/// Every job's events: submitted first, each attempt dequeued after it
/// was enqueued, one `started` per attempt run, and last the end it came
/// to.
fn check_events(
    seed: u64,
    events: &mut EventStream,
    model: &Model,
    finals: &HashMap<JobId, Arc<Job>>,
    history: &[MockRun],
) {
    // A job's events are on the stream by the time its waiters wake, in
    // the order its changes were made, even on two threads.
    let mut by_job: HashMap<JobId, Vec<EventData>> = HashMap::new();
    while let Some(event) = events.try_recv().unwrap() {
        if let Some(id) = event.job_id {
            by_job.entry(id).or_default().push(event.data);
        }
    }
    for (&id, job) in finals {
        let seen = by_job.remove(&id).unwrap_or_default();
        let context = format!("seed {seed}: {job:?} {seen:?}");
        assert!(
            matches!(seen.first(), Some(EventData::Submitted { .. })),
            "{context}"
        );
        let mut enqueued = false;
        for (i, event) in seen.iter().enumerate() {
            match event {
                EventData::Enqueued { .. } => enqueued = true,
                EventData::Dequeued { .. } => {
                    assert!(
                        enqueued,
                        "{context}: dequeued at {i} before it was enqueued"
                    );
                    enqueued = false;
                }
                _ => {}
            }
        }
        let started = seen
            .iter()
            .filter(|e| matches!(e, EventData::Started { .. }))
            .count();
        let runs = history.iter().filter(|r| r.job_id == id).count();
        assert_eq!(started, runs, "{context}");
        let ended = match seen.last() {
            Some(EventData::Completed { .. }) => JobStatus::Succeeded,
            Some(EventData::Failed { .. }) => JobStatus::Failed,
            Some(EventData::TimedOut { .. }) => JobStatus::Timeout,
            Some(EventData::Canceled { .. }) => JobStatus::Canceled,
            _ => panic!("{context}: no end"),
        };
        assert_eq!(ended, job.status, "{context}");
    }
    // Refused batches left no events of jobs that were never kept.
    assert!(
        by_job.keys().all(|id| model.specs.contains_key(id)),
        "seed {seed}: events of jobs never admitted"
    );
}

/// Runs workloads of `steps` operations for `count` seeds from `first`,
/// or as many as `RANDOM_WORKLOAD_SEEDS` says, for a longer soak
/// (`RANDOM_WORKLOAD_SEEDS=500 cargo test random_workloads`), each on the
/// store `store` makes for its seed.
async fn run_seeds(
    first: u64,
    count: u64,
    steps: usize,
    store: impl Fn(u64) -> Option<Arc<dyn Store>>,
) -> Exercised {
    let count = std::env::var("RANDOM_WORKLOAD_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(count);
    let mut exercised = Exercised::default();
    for seed in first..first + count {
        exercised.add(run_workload(seed, steps, store(seed)).await);
    }
    exercised
}

#[tokio::test(start_paused = true)]
async fn random_workloads_keep_every_invariant() {
    run_seeds(1, 40, 300, |_| None).await.assert_all();
}

/// The same on two worker threads and the real clock: runners, submitters
/// and cancels race for real. It found two races the paused clock could
/// not: events of one job reaching the stream out of order, and a dead
/// letter retried while its last attempt was still ending, which lost the
/// job and the resources that attempt held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_workloads_keep_every_invariant_on_two_threads() {
    run_seeds(101, 3, 200, |_| None)
        .await
        .assert_but_signalled();
}

/// The same on a SQLite file: a result is answered after its commit, so
/// the scheduler frees what an attempt held before its end is durable,
/// and a job's end is in the store for a while before the scheduler lets
/// go of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_workloads_keep_every_invariant_on_sqlite() {
    let dir = tempfile::TempDir::new().unwrap();
    let sqlite = |seed| {
        let store = SqliteStore::open(dir.path().join(format!("{seed}.db"))).unwrap();
        Some(Arc::new(store) as Arc<dyn Store>)
    };
    run_seeds(201, 3, 200, sqlite).await.assert_but_signalled();
}
