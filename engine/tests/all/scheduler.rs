//! The scheduler through the public `Engine` API, on the mock backend and
//! Tokio's paused clock: priorities, fairness, resources, groups,
//! dependencies, retries, cancellation, quotas, events, stats.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use work_engine::backends::{MockBackend, MockRun};
use work_engine::store::{Commit, Inserted, JobPage, MemoryStore, Store, StoreError, Transition};
use work_engine::{
    Backoff, Capacity, Engine, EngineBuilder, EngineError, EventData, EventObserver,
    EventStreamError, Job, JobId, JobQuery, JobStatus, NewJob, OutcomeClass, Priority, Quota,
    Resources, RetryPolicy, TenantConfig,
};

use crate::support::submit_and_wait;

const LONG: Duration = Duration::from_secs(3600);

pub fn capacity(cpu: f64) -> Capacity {
    Capacity {
        cpu,
        memory_mb: 64 * 1024,
        gpus: Vec::new(),
    }
}

/// An engine on a mock backend (aging off unless a test turns it on).
pub fn builder(cpu: f64, mock: &MockBackend) -> EngineBuilder {
    Engine::builder()
        .capacity(capacity(cpu))
        .aging(None)
        .backend(mock.clone())
}

/// A mock job of `tenant` doing what `mock` says (`{}`: succeed at once).
pub fn job(tenant: &str, mock: Value) -> NewJob {
    NewJob::new("sim", tenant, json!({ "mock": mock }))
}

/// A tenant that may have at most `n` jobs waiting.
fn max_queued(n: u64) -> TenantConfig {
    TenantConfig {
        quota: Quota {
            max_queued: Some(n),
            ..Quota::default()
        },
        ..TenantConfig::default()
    }
}

async fn run_all(engine: &Engine, ids: &[JobId]) -> Vec<Arc<Job>> {
    let mut jobs = Vec::new();
    for id in ids {
        let job = engine.wait(*id, LONG).await.unwrap();
        assert!(job.status.is_terminal(), "{job:?}");
        jobs.push(job);
    }
    jobs
}

fn started_order(history: &[MockRun]) -> Vec<JobId> {
    let mut runs = history.to_vec();
    runs.sort_by_key(|run| run.started);
    runs.into_iter().map(|run| run.job_id).collect()
}

fn run_of(history: &[MockRun], id: JobId) -> &MockRun {
    history.iter().find(|run| run.job_id == id).unwrap()
}

#[tokio::test(start_paused = true)]
async fn higher_levels_go_first() {
    let mock = MockBackend::new();
    let engine = builder(1.0, &mock).build().unwrap();
    let blocker = engine
        .submit(job("a", json!({"delay_ms": 10})))
        .await
        .unwrap();
    let mut ids = Vec::new();
    for priority in [
        Priority::Offline,
        Priority::Batch,
        Priority::Interactive,
        Priority::Realtime,
    ] {
        let job = job("a", json!({"delay_ms": 1})).with_priority(priority);
        ids.push((priority, engine.submit(job).await.unwrap().id));
    }
    run_all(&engine, &ids.iter().map(|(_, id)| *id).collect::<Vec<_>>()).await;
    let order = started_order(&mock.history());
    assert_eq!(order[0], blocker.id);
    let by_priority: Vec<Priority> = order[1..]
        .iter()
        .map(|id| ids.iter().find(|(_, i)| i == id).unwrap().0)
        .collect();
    assert_eq!(by_priority, Priority::ALL);
}

#[tokio::test(start_paused = true)]
async fn one_tenant_is_first_in_first_out_within_a_level() {
    let mock = MockBackend::new();
    let engine = builder(1.0, &mock).build().unwrap();
    let mut ids = Vec::new();
    for _ in 0..50 {
        ids.push(
            engine
                .submit(job("a", json!({"delay_ms": 1})))
                .await
                .unwrap()
                .id,
        );
    }
    run_all(&engine, &ids).await;
    assert_eq!(started_order(&mock.history()), ids);
}

#[tokio::test(start_paused = true)]
async fn aging_keeps_offline_work_from_starving() {
    for aging in [None, Some(Duration::from_millis(100))] {
        let mock = MockBackend::new();
        let engine = builder(1.0, &mock).aging(aging).build().unwrap();
        let blocker = engine
            .submit(job("busy", json!({"delay_ms": 10})))
            .await
            .unwrap();
        let offline = engine
            .submit(job("patient", json!({})).with_priority(Priority::Offline))
            .await
            .unwrap();
        let mut ids = vec![blocker.id, offline.id];
        for _ in 0..60 {
            let realtime = job("busy", json!({"delay_ms": 10})).with_priority(Priority::Realtime);
            ids.push(engine.submit(realtime).await.unwrap().id);
        }
        run_all(&engine, &ids).await;
        let order = started_order(&mock.history());
        let position = order.iter().position(|id| *id == offline.id).unwrap();
        match aging {
            // 60 realtime jobs of 10 ms each: without aging it runs last.
            None => assert_eq!(position, 61),
            // Three levels up after 300 ms, then a fair turn at `realtime`.
            Some(_) => assert!((28..=40).contains(&position), "started at {position}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_late_tenant_waits_a_bounded_number_of_dispatches_behind_a_flood() {
    let quantum = 4;
    let mock = MockBackend::new();
    let engine = builder(1.0, &mock).quantum(quantum).build().unwrap();
    let flood: Vec<NewJob> = (0..10_000).map(|_| job("flood", json!({}))).collect();
    let flood = engine.submit_batch(flood).await.unwrap();
    let before = mock.history().len();
    let late = engine.submit(job("late", json!({}))).await.unwrap();
    engine.wait(late.id, LONG).await.unwrap();
    let history = mock.history();
    let position = history
        .iter()
        .position(|run| run.job_id == late.id)
        .unwrap();
    let tenants = 2;
    assert!(
        position - before <= tenants * quantum as usize,
        "{} dispatches after submission",
        position - before
    );
    assert!(
        flood.jobs.len() - history.len() > 9_000,
        "the flood is still queued"
    );
}

#[tokio::test(start_paused = true)]
async fn three_flooding_tenants_share_a_level_by_weight() {
    let quantum = 4;
    let mock = MockBackend::new();
    let engine = builder(1.0, &mock)
        .quantum(quantum)
        .tenant(
            "heavy",
            TenantConfig {
                weight: 2,
                ..TenantConfig::default()
            },
        )
        .build()
        .unwrap();
    let mut all = Vec::new();
    for tenant in ["a", "b", "heavy"] {
        let jobs = (0..1_000).map(|_| job(tenant, json!({}))).collect();
        all.extend(
            engine
                .submit_batch(jobs)
                .await
                .unwrap()
                .jobs
                .into_iter()
                .map(|j| j.id),
        );
    }
    let late = engine.submit(job("late", json!({}))).await.unwrap();
    all.push(late.id);
    run_all(&engine, &all).await;
    let history = mock.history();
    // Late: within one round of every tenant's turn (4 tenants, heavy x2).
    let position = history
        .iter()
        .position(|run| run.job_id == late.id)
        .unwrap();
    assert!(
        position <= (1 + 1 + 2 + 1) * quantum as usize,
        "started at {position}"
    );
    // Over the first 600 dispatches, shares follow the weights 1:1:2.
    let mut counts = std::collections::HashMap::new();
    for run in &history[..600] {
        *counts.entry(run.tenant_id.as_str()).or_insert(0usize) += 1;
    }
    let (a, b, heavy) = (counts["a"], counts["b"], counts["heavy"]);
    assert!(a.abs_diff(b) <= quantum as usize, "{counts:?}");
    assert!(heavy.abs_diff(2 * a) <= 2 * quantum as usize, "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn each_backoff_policy_spaces_its_attempts() {
    let cases = [
        (Backoff::Exponential, [100, 200, 400]),
        (Backoff::Linear, [100, 200, 300]),
        (Backoff::Constant, [100, 100, 100]),
    ];
    for (backoff, expected) in cases {
        let mock = MockBackend::new();
        let engine = builder(4.0, &mock).build().unwrap();
        let mut events = engine.subscribe();
        let policy = RetryPolicy {
            max_attempts: 4,
            backoff,
            base_delay_ms: 100,
            max_delay_ms: 10_000,
            jitter: false,
            ..RetryPolicy::default()
        };
        let submitted = engine
            .submit(
                job("a", json!({"fail_times": 3, "fail_class": "trap"})).with_retry_policy(policy),
            )
            .await
            .unwrap();
        let done = engine.wait(submitted.id, LONG).await.unwrap();
        assert_eq!(done.status, JobStatus::Succeeded, "{backoff:?}");
        assert_eq!(done.attempt, 4);
        let runs = mock.history();
        assert_eq!(
            runs.iter().map(|r| r.attempt).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        let gaps: Vec<u128> = runs
            .windows(2)
            .map(|w| (w[1].started - w[0].ended).as_millis())
            .collect();
        assert_eq!(gaps, expected, "{backoff:?}");
        let mut retries = Vec::new();
        while let Ok(Some(event)) = events.try_recv() {
            if let EventData::Retry {
                delay_ms, outcome, ..
            } = event.data
            {
                assert_eq!(outcome, OutcomeClass::Trap);
                retries.push(delay_ms as u128);
            }
        }
        assert_eq!(retries, expected, "{backoff:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn jitter_stays_within_half_to_full_delay() {
    let mock = MockBackend::new();
    let engine = builder(8.0, &mock).build().unwrap();
    let policy = RetryPolicy {
        max_attempts: 2,
        backoff: Backoff::Constant,
        base_delay_ms: 1000,
        jitter: true,
        ..RetryPolicy::default()
    };
    let mut ids = Vec::new();
    for _ in 0..20 {
        let job = job("a", json!({"fail_times": 1})).with_retry_policy(policy.clone());
        ids.push(engine.submit(job).await.unwrap().id);
    }
    run_all(&engine, &ids).await;
    let history = mock.history();
    let mut gaps = Vec::new();
    for id in ids {
        let runs: Vec<_> = history.iter().filter(|r| r.job_id == id).collect();
        gaps.push((runs[1].started - runs[0].ended).as_millis());
    }
    assert!(
        gaps.iter().all(|gap| (500..=1000).contains(gap)),
        "{gaps:?}"
    );
    assert!(
        gaps.iter().any(|gap| *gap != gaps[0]),
        "jitter varies: {gaps:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn exhausted_jobs_are_dead_lettered_and_can_be_retried() {
    let mock = MockBackend::new();
    let engine = builder(2.0, &mock).build().unwrap();
    let policy = RetryPolicy {
        max_attempts: 2,
        base_delay_ms: 10,
        ..RetryPolicy::default()
    };
    let doomed = engine
        .submit(job("a", json!({"fail_times": 3})).with_retry_policy(policy))
        .await
        .unwrap();
    let failed = engine.wait(doomed.id, LONG).await.unwrap();
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(failed.attempt, 2);
    assert_eq!(failed.outcome, Some(OutcomeClass::Retryable));
    assert!(failed.dead_letter);
    let letters = engine.dead_letters(&JobQuery::tenant("a")).await.unwrap();
    assert_eq!(
        letters.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        [doomed.id]
    );
    assert!(
        engine
            .dead_letters(&JobQuery::tenant("b"))
            .await
            .unwrap()
            .jobs
            .is_empty()
    );

    // Retried with fresh attempts (the count starts over): the mock fails
    // attempts 1 and 2 again, so it is dead-lettered again.
    let revived = engine.retry_dead_letter(doomed.id).await.unwrap();
    assert_eq!((revived.status, revived.attempt), (JobStatus::Queued, 0));
    let again = engine.wait(doomed.id, LONG).await.unwrap();
    assert_eq!(again.status, JobStatus::Failed);
    assert_eq!(mock.history().len(), 4);
    let err = engine
        .retry_dead_letter(engine.submit(job("a", json!({}))).await.unwrap().id)
        .await;
    assert!(
        matches!(err, Err(EngineError::NotDeadLettered { .. })),
        "{err:?}"
    );
}

/// A memory store that answers some writes only after a while, as a
/// durable store does once its commit is on disk: what was written is
/// readable at once.
#[derive(Default)]
struct SlowStore {
    store: MemoryStore,
    /// Answer an attempt's record (a finish or a retry) late.
    records: bool,
    /// Answer inserts and single transitions (a revival, a dependent made
    /// ready, a cancel) late.
    admissions: bool,
    /// The ids of the jobs inserted or revived, in order.
    admitted: parking_lot::Mutex<Vec<JobId>>,
}

impl SlowStore {
    const LATE: Duration = Duration::from_millis(50);

    /// Answers attempts' records late.
    fn late_records() -> Arc<Self> {
        Arc::new(Self {
            records: true,
            ..Self::default()
        })
    }

    /// Answers inserts and single transitions late.
    fn late_admissions() -> Arc<Self> {
        Arc::new(Self {
            admissions: true,
            ..Self::default()
        })
    }

    /// The first job this store has taken in, once it has one.
    async fn first_admitted(&self) -> JobId {
        loop {
            if let Some(id) = self.admitted.lock().first() {
                return *id;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

#[async_trait::async_trait]
impl Store for SlowStore {
    async fn insert(
        &self,
        jobs: Vec<Arc<Job>>,
        commit: Commit,
    ) -> Result<Vec<Inserted>, StoreError> {
        let ids: Vec<JobId> = jobs.iter().map(|job| job.id).collect();
        let inserted = self.store.insert(jobs, commit).await;
        self.admitted.lock().extend(ids);
        if self.admissions {
            tokio::time::sleep(Self::LATE).await;
        }
        inserted
    }
    async fn get(&self, id: JobId) -> Result<Option<Arc<Job>>, StoreError> {
        self.store.get(id).await
    }
    async fn get_by_external_id(
        &self,
        tenant: &str,
        external_id: &str,
    ) -> Result<Option<Arc<Job>>, StoreError> {
        self.store.get_by_external_id(tenant, external_id).await
    }
    async fn get_by_idempotency_key(
        &self,
        tenant: &str,
        key: &str,
    ) -> Result<Option<Arc<Job>>, StoreError> {
        self.store.get_by_idempotency_key(tenant, key).await
    }
    async fn list(&self, query: &JobQuery) -> Result<JobPage, StoreError> {
        self.store.list(query).await
    }
    async fn transition(&self, id: JobId, change: Transition) -> Result<Arc<Job>, StoreError> {
        let revival = matches!(change, Transition::Revive);
        let result = self.store.transition(id, change).await;
        if revival {
            self.admitted.lock().push(id);
        }
        if self.admissions {
            tokio::time::sleep(Self::LATE).await;
        }
        result
    }
    async fn transition_batch(
        &self,
        changes: Vec<(JobId, Transition)>,
        commit: Commit,
    ) -> Vec<Result<Arc<Job>, StoreError>> {
        let records = changes.iter().any(|(_, change)| {
            matches!(change, Transition::Finish { .. } | Transition::Retry { .. })
        });
        let results = self.store.transition_batch(changes, commit).await;
        if records && self.records {
            tokio::time::sleep(Self::LATE).await;
        }
        results
    }
    async fn unfinished(&self) -> Result<Vec<Arc<Job>>, StoreError> {
        self.store.unfinished().await
    }
}

/// An engine over `store`, with room for two jobs.
fn engine_over(store: &Arc<SlowStore>, mock: &MockBackend) -> Engine {
    builder(2.0, mock).store(store.clone()).build().unwrap()
}

/// A job whose every attempt fails, with `attempts` of them.
fn failing(attempts: u32) -> NewJob {
    job("a", json!({"fail": true})).with_retry_policy(RetryPolicy {
        max_attempts: attempts,
        base_delay_ms: 1,
        ..RetryPolicy::default()
    })
}

/// A dead letter retried while the scheduler is still letting go of its
/// last attempt (its end already readable in the store) runs again.
#[tokio::test(start_paused = true)]
async fn a_dead_letter_retried_as_it_lands_runs_again() {
    let mock = MockBackend::new();
    let engine = engine_over(&SlowStore::late_records(), &mock);
    let doomed = engine.submit(failing(1)).await.unwrap();
    // Takes the whole capacity as the doomed job ends, so that its revival
    // waits in the queue.
    let blocker = job("a", json!({"delay_ms": 500})).with_resources(Resources {
        cpu: 2.0,
        ..Resources::default()
    });
    let blocker = engine.submit(blocker).await.unwrap();
    while !engine.get(doomed.id).await.unwrap().dead_letter {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let revived = engine.retry_dead_letter(doomed.id).await.unwrap();
    assert_eq!((revived.status, revived.attempt), (JobStatus::Queued, 0));
    let again = engine.wait(doomed.id, LONG).await.unwrap();
    assert_eq!((again.status, again.attempt), (JobStatus::Failed, 1));
    let blocker = engine.wait(blocker.id, LONG).await.unwrap();
    assert_eq!(blocker.status, JobStatus::Succeeded);
    assert_eq!(mock.history().len(), 3);
    let stats = engine.stats();
    assert_eq!(stats.resources.cpu_in_use, 0.0);
    assert_eq!((stats.jobs.failed, stats.jobs.queued), (1, 0));
}

/// A caller that goes away while its job is being stored (an HTTP client
/// that hangs up drops the request's future) loses nothing: the job the
/// store took in is scheduled and runs, and its place in the tenant's
/// quota is given back when it ends.
#[tokio::test(start_paused = true)]
async fn a_submission_dropped_while_it_is_stored_still_runs_its_job() {
    let mock = MockBackend::new();
    let store = SlowStore::late_admissions();
    let engine = builder(2.0, &mock)
        .store(store.clone())
        .tenant("a", max_queued(1))
        .build()
        .unwrap();
    let gave_up =
        tokio::time::timeout(SlowStore::LATE / 2, engine.submit(job("a", json!({})))).await;
    assert!(
        gave_up.is_err(),
        "the store answered before the caller left"
    );
    let id = store.first_admitted().await;
    let done = engine.wait(id, LONG).await.unwrap();
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(mock.history().len(), 1);
    let stats = engine.stats();
    assert_eq!((stats.jobs.succeeded, stats.jobs.queued), (1, 0));
    // The quota of one queued job has room again.
    let next = engine.submit(job("a", json!({}))).await.unwrap();
    let next = engine.wait(next.id, LONG).await.unwrap();
    assert_eq!(next.status, JobStatus::Succeeded);
}

/// The same for a caller that goes away while a cancel of a queued job,
/// or the retry of a dead letter, is being written: the job ends
/// `canceled`, or runs again, all the same.
#[tokio::test(start_paused = true)]
async fn a_cancel_or_a_retry_dropped_while_it_is_written_still_takes_effect() {
    let mock = MockBackend::new();
    let store = SlowStore::late_admissions();
    let engine = builder(1.0, &mock).store(store.clone()).build().unwrap();
    let blocker = engine
        .submit(job("a", json!({"hang": true})))
        .await
        .unwrap();
    let queued = engine.submit(job("a", json!({}))).await.unwrap();
    let gave_up = tokio::time::timeout(SlowStore::LATE / 2, engine.cancel(queued.id)).await;
    assert!(
        gave_up.is_err(),
        "the store answered before the caller left"
    );
    let canceled = engine.wait(queued.id, LONG).await.unwrap();
    assert_eq!(canceled.status, JobStatus::Canceled);
    let stats = engine.stats();
    assert_eq!(
        (stats.jobs.queued, stats.jobs.running),
        (0, 1),
        "still counted"
    );
    engine.cancel(blocker.id).await.unwrap();

    let doomed = engine.submit(failing(1)).await.unwrap();
    let dead = engine.wait(doomed.id, LONG).await.unwrap();
    assert!(dead.dead_letter);
    let gave_up =
        tokio::time::timeout(SlowStore::LATE / 2, engine.retry_dead_letter(doomed.id)).await;
    assert!(
        gave_up.is_err(),
        "the store answered before the caller left"
    );
    let again = engine.wait(doomed.id, LONG).await.unwrap();
    assert_eq!((again.status, again.attempt), (JobStatus::Failed, 1));
    let runs = mock
        .history()
        .iter()
        .filter(|run| run.job_id == doomed.id)
        .count();
    assert_eq!(runs, 2, "the dead letter did not run again");
    let stats = engine.stats();
    assert_eq!((stats.jobs.queued, stats.jobs.running), (0, 0));
    assert_eq!(stats.resources.cpu_in_use, 0.0);
}

/// A job cancelled while the store is still taking it in (its id already
/// readable) never runs: it ends `canceled` as soon as it is placed.
#[tokio::test(start_paused = true)]
async fn a_job_cancelled_while_it_is_stored_never_runs() {
    let mock = MockBackend::new();
    let store = SlowStore::late_admissions();
    let engine = engine_over(&store, &mock);
    let submitting = tokio::spawn({
        let engine = engine.clone();
        async move { engine.submit(job("a", json!({}))).await }
    });
    let id = store.first_admitted().await;
    let during = engine.cancel(id).await.unwrap();
    assert_eq!(during.status, JobStatus::Queued, "not placed yet");
    let submitted = submitting.await.unwrap().unwrap();
    assert_eq!(submitted.id, id);
    let done = engine.wait(id, LONG).await.unwrap();
    assert_eq!(done.status, JobStatus::Canceled);
    assert_eq!(done.error.as_ref().unwrap().code, "canceled");
    assert!(mock.history().is_empty(), "a cancelled job ran");
    let stats = engine.stats();
    assert_eq!((stats.jobs.canceled, stats.jobs.queued), (1, 0));
    assert_eq!(stats.resources.cpu_in_use, 0.0);
}

/// The same for a dead letter cancelled while it is being taken back.
#[tokio::test(start_paused = true)]
async fn a_dead_letter_cancelled_while_it_is_revived_never_runs_again() {
    let mock = MockBackend::new();
    let store = SlowStore::late_admissions();
    let engine = engine_over(&store, &mock);
    let doomed = engine.submit(failing(1)).await.unwrap();
    let dead = engine.wait(doomed.id, LONG).await.unwrap();
    assert!(dead.dead_letter);
    store.admitted.lock().clear();
    let reviving = tokio::spawn({
        let engine = engine.clone();
        let id = doomed.id;
        async move { engine.retry_dead_letter(id).await }
    });
    assert_eq!(store.first_admitted().await, doomed.id);
    engine.cancel(doomed.id).await.unwrap();
    reviving.await.unwrap().unwrap();
    let done = engine.wait(doomed.id, LONG).await.unwrap();
    assert_eq!(done.status, JobStatus::Canceled);
    assert_eq!(mock.history().len(), 1, "the cancelled revival ran");
    let stats = engine.stats();
    assert_eq!((stats.jobs.canceled, stats.jobs.failed), (1, 0));
    assert_eq!(stats.resources.cpu_in_use, 0.0);
}

/// A dependent cancelled as its dependencies' success is making it ready
/// (`queued` in the store, not yet in its queue) never runs, and leaves
/// nothing behind in its queue.
#[tokio::test(start_paused = true)]
async fn a_dependent_cancelled_as_it_becomes_ready_never_runs() {
    let mock = MockBackend::new();
    let engine = engine_over(&SlowStore::late_admissions(), &mock);
    let first = engine
        .submit(job("a", json!({"delay_ms": 100})))
        .await
        .unwrap();
    // Holds the other core, so that the dependent, which needs both,
    // would wait in its queue.
    let other = engine
        .submit(job("a", json!({"delay_ms": 1000})))
        .await
        .unwrap();
    let both = Resources {
        cpu: 2.0,
        ..Resources::default()
    };
    let dependent = engine
        .submit(
            job("a", json!({}))
                .with_depends_on([first.id])
                .with_resources(both),
        )
        .await
        .unwrap();
    while engine.get(dependent.id).await.unwrap().status != JobStatus::Queued {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    engine.cancel(dependent.id).await.unwrap();
    let done = engine.wait(dependent.id, LONG).await.unwrap();
    assert_eq!(done.status, JobStatus::Canceled);
    engine.wait(other.id, LONG).await.unwrap();
    assert_eq!(mock.history().len(), 2, "the cancelled dependent ran");
    let stats = engine.stats();
    assert_eq!((stats.jobs.canceled, stats.jobs.succeeded), (1, 2));
    assert_eq!((stats.jobs.queued, stats.jobs.running), (0, 0));
    assert!(
        stats.levels.iter().all(|level| level.depth == 0),
        "a queue still counts the cancelled dependent"
    );
    assert_eq!(stats.resources.cpu_in_use, 0.0);
}

/// A job cancelled once dispatched, before its attempt began, does not
/// start its backend: it ends `canceled`.
#[tokio::test(start_paused = true)]
async fn a_job_cancelled_before_its_attempt_begins_does_not_start() {
    let mock = MockBackend::new();
    let engine = builder(2.0, &mock).build().unwrap();
    // Dispatched as it is admitted; its runner gets to it only once this
    // task awaits something that is not ready.
    let quick = engine.submit(job("a", json!({}))).await.unwrap();
    engine.cancel(quick.id).await.unwrap();
    let done = engine.wait(quick.id, LONG).await.unwrap();
    assert_eq!(done.status, JobStatus::Canceled);
    assert_eq!(done.outcome, Some(OutcomeClass::Canceled));
    assert!(mock.history().is_empty(), "the backend was started");
}

/// A job cancelled after an attempt failed, while that failure is being
/// recorded, is not retried: it ends `canceled`.
#[tokio::test(start_paused = true)]
async fn a_job_cancelled_as_its_attempt_fails_is_not_retried() {
    let mock = MockBackend::new();
    let engine = engine_over(&SlowStore::late_records(), &mock);
    let flaky = engine.submit(failing(3)).await.unwrap();
    while mock.history().is_empty() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    engine.cancel(flaky.id).await.unwrap();
    let done = engine.wait(flaky.id, LONG).await.unwrap();
    assert_eq!(done.status, JobStatus::Canceled);
    assert_eq!(done.error.as_ref().unwrap().code, "canceled");
    assert_eq!(mock.history().len(), 1, "a cancelled job was retried");
    let stats = engine.stats();
    assert_eq!((stats.jobs.canceled, stats.jobs.queued), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn deterministic_failures_are_not_retried_unless_the_policy_says_so() {
    let mock = MockBackend::new();
    let engine = builder(2.0, &mock).build().unwrap();
    let fast = RetryPolicy {
        max_attempts: 3,
        base_delay_ms: 1,
        ..RetryPolicy::default()
    };
    for class in ["tool_error", "out_of_fuel", "out_of_memory"] {
        let job =
            job("a", json!({"fail": true, "fail_class": class})).with_retry_policy(fast.clone());
        let done = submit_and_wait(&engine, job, LONG).await;
        assert_eq!(
            (done.status, done.attempt),
            (JobStatus::Failed, 1),
            "{class}"
        );
        assert_eq!(done.error.as_ref().unwrap().code, class);
    }
    let mut retry_fuel = fast;
    retry_fuel.retry_on.insert(OutcomeClass::OutOfFuel);
    let job =
        job("a", json!({"fail": true, "fail_class": "out_of_fuel"})).with_retry_policy(retry_fuel);
    let done = submit_and_wait(&engine, job, LONG).await;
    assert_eq!((done.status, done.attempt), (JobStatus::Failed, 3));
}

#[tokio::test(start_paused = true)]
async fn a_hung_attempt_times_out_and_is_retried_then_ends_timeout() {
    let mock = MockBackend::new();
    let engine = builder(2.0, &mock).build().unwrap();
    let policy = RetryPolicy {
        max_attempts: 2,
        base_delay_ms: 5,
        jitter: false,
        ..RetryPolicy::default()
    };
    let hung = job("a", json!({"hang": true}))
        .with_resources(Resources {
            timeout_ms: Some(100),
            ..Resources::default()
        })
        .with_retry_policy(policy);
    let done = submit_and_wait(&engine, hung, LONG).await;
    assert_eq!((done.status, done.attempt), (JobStatus::Timeout, 2));
    assert_eq!(done.outcome, Some(OutcomeClass::Timeout));
    assert!(done.dead_letter);
    let runs = mock.history();
    assert!(
        runs.iter()
            .all(|r| (r.ended - r.started) == Duration::from_millis(100))
    );
}

#[tokio::test(start_paused = true)]
async fn a_dag_runs_in_order_and_a_failed_branch_cancels_its_dependents() {
    let mock = MockBackend::new();
    let engine = builder(4.0, &mock).build().unwrap();
    let never = RetryPolicy::never();
    let root = engine
        .submit(job("a", json!({"delay_ms": 10})))
        .await
        .unwrap();
    let left = engine
        .submit(job("a", json!({"delay_ms": 10})).with_depends_on([root.id]))
        .await
        .unwrap();
    let broken = engine
        .submit(
            job("a", json!({"fail": true}))
                .with_depends_on([root.id])
                .with_retry_policy(never),
        )
        .await
        .unwrap();
    let join = engine
        .submit(job("a", json!({})).with_depends_on([left.id, broken.id]))
        .await
        .unwrap();
    let after_left = engine
        .submit(job("a", json!({})).with_depends_on([left.id]))
        .await
        .unwrap();
    use JobStatus::*;
    assert_eq!(left.status, Pending);
    let jobs = run_all(
        &engine,
        &[root.id, left.id, broken.id, join.id, after_left.id],
    )
    .await;
    let status: Vec<JobStatus> = jobs.iter().map(|j| j.status).collect();
    assert_eq!(status, [Succeeded, Succeeded, Failed, Canceled, Succeeded]);
    assert_eq!(jobs[3].error.as_ref().unwrap().code, "dependency_failed");
    assert_eq!(jobs[3].attempt, 0, "a cancelled dependent never ran");
    let history = mock.history();
    assert!(run_of(&history, left.id).started >= run_of(&history, root.id).ended);
    assert!(run_of(&history, after_left.id).started >= run_of(&history, left.id).ended);

    // A dependency that already failed cancels at once; an unknown one or
    // another tenant's is refused.
    let late = engine
        .submit(job("a", json!({})).with_depends_on([broken.id]))
        .await
        .unwrap();
    assert_eq!(engine.wait(late.id, LONG).await.unwrap().status, Canceled);
    let unknown = engine
        .submit(job("a", json!({})).with_depends_on([uuid::Uuid::now_v7()]))
        .await;
    assert!(
        matches!(unknown, Err(EngineError::UnknownDependency { .. })),
        "{unknown:?}"
    );
    let foreign = engine
        .submit(job("b", json!({})).with_depends_on([root.id]))
        .await;
    assert!(
        matches!(foreign, Err(EngineError::UnknownDependency { .. })),
        "{foreign:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_concurrency_group_of_limit_one_never_runs_two_at_once() {
    let mock = MockBackend::new();
    let engine = builder(8.0, &mock)
        .concurrency_limit("pair", 2)
        .build()
        .unwrap();
    let mut grouped = Vec::new();
    for _ in 0..3 {
        let job = job("a", json!({"delay_ms": 50})).with_concurrency_group("experiment:42");
        grouped.push(engine.submit(job).await.unwrap().id);
    }
    let free = engine
        .submit(job("a", json!({"delay_ms": 50})))
        .await
        .unwrap();
    let mut pair = Vec::new();
    for _ in 0..4 {
        let job = job("a", json!({"delay_ms": 50})).with_concurrency_group("pair");
        pair.push(engine.submit(job).await.unwrap().id);
    }
    run_all(&engine, &grouped).await;
    run_all(&engine, &pair).await;
    engine.wait(free.id, LONG).await.unwrap();
    let history = mock.history();
    let concurrency = |ids: &[JobId]| {
        let runs: Vec<_> = ids.iter().map(|id| run_of(&history, *id)).collect();
        runs.iter()
            .map(|r| {
                runs.iter()
                    .filter(|o| o.started <= r.started && r.started < o.ended)
                    .count()
            })
            .max()
            .unwrap()
    };
    assert_eq!(concurrency(&grouped), 1);
    assert_eq!(concurrency(&pair), 2);
    // Outside the group, work runs alongside it.
    assert_eq!(
        run_of(&history, free.id).started,
        run_of(&history, grouped[0]).started
    );
}

#[tokio::test(start_paused = true)]
async fn a_two_gpu_job_gets_two_devices_ahead_of_later_one_gpu_jobs() {
    let mock = MockBackend::new();
    let engine = Engine::builder()
        .capacity(capacity(16.0).with_gpus("A100", ["0", "1"]))
        .aging(None)
        .backend(mock.clone())
        .build()
        .unwrap();
    let gpu = |count: u32, delay: u64| {
        job("a", json!({"delay_ms": delay})).with_resources(Resources {
            gpu: Some("A100".into()),
            gpu_count: count,
            ..Resources::default()
        })
    };
    let first = engine.submit(gpu(1, 100)).await.unwrap();
    let big = engine.submit(gpu(2, 10)).await.unwrap();
    let mut small = Vec::new();
    for _ in 0..4 {
        small.push(engine.submit(gpu(1, 100)).await.unwrap().id);
    }
    let cpu_only = engine
        .submit(job("a", json!({"delay_ms": 1})))
        .await
        .unwrap();
    let stats = engine.stats();
    assert_eq!(
        stats.resources.gpus_in_use["A100"], 1,
        "the second GPU is held for the big job"
    );
    let mut ids = vec![first.id, big.id, cpu_only.id];
    ids.extend(&small);
    run_all(&engine, &ids).await;
    let history = mock.history();
    let big_run = run_of(&history, big.id);
    assert_eq!(big_run.started, run_of(&history, first.id).ended);
    let mut devices: Vec<_> = big_run.devices.iter().map(|d| d.id.as_str()).collect();
    devices.sort_unstable();
    assert_eq!(devices, ["0", "1"]);
    for id in &small {
        assert!(
            run_of(&history, *id).started >= big_run.ended,
            "a small job jumped the big one"
        );
    }
    // Work that needs no GPU is not held back by the reservation: it is
    // backfilled past the waiting GPU jobs of its tenant.
    assert_eq!(
        run_of(&history, cpu_only.id).started,
        run_of(&history, first.id).started
    );
    let after = engine.stats();
    assert_eq!(
        after.resources.gpus_in_use["A100"], 0,
        "devices are released"
    );
}

#[tokio::test(start_paused = true)]
async fn cancelling_queued_and_running_jobs() {
    let mock = MockBackend::new();
    let engine = builder(1.0, &mock).build().unwrap();
    let running = engine
        .submit(job("a", json!({"hang": true})))
        .await
        .unwrap();
    let queued = engine.submit(job("a", json!({}))).await.unwrap();
    let dependent = engine
        .submit(job("a", json!({})).with_depends_on([queued.id]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        engine.get(running.id).await.unwrap().status,
        JobStatus::Running
    );

    let canceled = engine.cancel(queued.id).await.unwrap();
    assert_eq!(canceled.status, JobStatus::Canceled);
    let dependent = engine.wait(dependent.id, LONG).await.unwrap();
    assert_eq!(dependent.status, JobStatus::Canceled);
    assert_eq!(dependent.error.as_ref().unwrap().code, "dependency_failed");

    engine.cancel(running.id).await.unwrap();
    let stopped = engine.wait(running.id, LONG).await.unwrap();
    assert_eq!(
        (stopped.status, stopped.outcome),
        (JobStatus::Canceled, Some(OutcomeClass::Canceled))
    );
    assert!(!stopped.dead_letter);
    // Cancelling again changes nothing.
    assert_eq!(
        engine.cancel(running.id).await.unwrap().status,
        JobStatus::Canceled
    );
    let missing = engine.cancel(uuid::Uuid::now_v7()).await;
    assert!(matches!(missing, Err(EngineError::NotFound { .. })));
    assert_eq!(mock.history().len(), 1, "the queued job never ran");
}

#[tokio::test(start_paused = true)]
async fn idempotent_resubmission_returns_the_first_job() {
    let mock = MockBackend::new();
    let engine = builder(1.0, &mock).build().unwrap();
    let first = engine
        .submit(job("a", json!({})).with_idempotency_key("order-17"))
        .await
        .unwrap();
    let second = engine
        .submit(job("a", json!({"delay_ms": 5})).with_idempotency_key("order-17"))
        .await
        .unwrap();
    assert_eq!(second.id, first.id);
    let other_tenant = engine
        .submit(job("b", json!({})).with_idempotency_key("order-17"))
        .await
        .unwrap();
    assert_ne!(other_tenant.id, first.id);
    // Within one batch too.
    let batch = engine
        .submit_batch(vec![
            job("c", json!({})).with_idempotency_key("k"),
            job("c", json!({})).with_idempotency_key("k"),
        ])
        .await
        .unwrap();
    assert_eq!(batch.jobs[0].id, batch.jobs[1].id);
    run_all(&engine, &[first.id, other_tenant.id, batch.jobs[0].id]).await;
    assert_eq!(mock.history().len(), 3);
    assert_eq!(
        engine
            .list(&JobQuery::tenant("a"))
            .await
            .unwrap()
            .jobs
            .len(),
        1
    );
}

/// A submission larger than the engine takes in at one hold of its lock
/// is still checked against the quota as a whole: refused, it leaves
/// nothing counted; at the limit, every job is taken in and queued.
#[tokio::test(start_paused = true)]
async fn a_large_batch_is_refused_or_taken_in_whole() {
    let mock = MockBackend::new();
    let engine = builder(1.0, &mock)
        .tenant("a", max_queued(100))
        .build()
        .unwrap();
    // One job holds the only CPU, so the rest wait.
    let running = engine
        .submit(job("a", json!({"hang": true})))
        .await
        .unwrap();
    let batch = |n: usize| (0..n).map(|_| job("a", json!({}))).collect::<Vec<_>>();
    let refused = engine.submit_batch(batch(101)).await;
    assert!(
        matches!(
            &refused,
            Err(EngineError::Batch { source, .. })
                if matches!(**source, EngineError::QuotaExceeded { limit: "max_queued", .. })
        ),
        "{refused:?}"
    );
    assert_eq!(
        engine.stats().jobs.queued,
        0,
        "the refused batch left nothing counted"
    );
    let accepted = engine.submit_batch(batch(100)).await.unwrap().jobs;
    assert_eq!(accepted.len(), 100);
    assert_eq!(engine.stats().jobs.queued, 100);
    let refused = engine.submit(job("a", json!({}))).await;
    assert!(
        matches!(refused, Err(EngineError::QuotaExceeded { .. })),
        "{refused:?}"
    );
    engine.cancel(running.id).await.unwrap();
    for job in &accepted {
        let done = engine.wait(job.id, Duration::from_secs(60)).await.unwrap();
        assert_eq!(done.status, JobStatus::Succeeded);
    }
}

/// A resubmission is a retry of a submission that was accepted: it gets
/// its job even when the tenant's quota or rate would refuse a new one.
#[tokio::test(start_paused = true)]
async fn an_idempotent_resubmission_is_answered_over_quota_and_rate() {
    let mock = MockBackend::new();
    let quota = |quota| TenantConfig {
        quota,
        ..TenantConfig::default()
    };
    let engine = builder(1.0, &mock)
        .tenant(
            "a",
            quota(Quota {
                max_queued: Some(1),
                ..Quota::default()
            }),
        )
        .tenant(
            "r",
            quota(Quota {
                submits_per_second: Some(1.0),
                ..Quota::default()
            }),
        )
        .build()
        .unwrap();
    // `a`: one job runs, one (keyed) waits, and the queue quota is full.
    let running = engine
        .submit(job("a", json!({"delay_ms": 1000})))
        .await
        .unwrap();
    let waiting = engine
        .submit(job("a", json!({})).with_idempotency_key("order-17"))
        .await
        .unwrap();
    let refused = engine.submit(job("a", json!({}))).await;
    assert!(
        matches!(refused, Err(EngineError::QuotaExceeded { .. })),
        "{refused:?}"
    );
    let again = engine
        .submit(job("a", json!({})).with_idempotency_key("order-17"))
        .await
        .unwrap();
    assert_eq!(again.id, waiting.id);
    let batch = engine
        .submit_batch(vec![job("a", json!({})).with_idempotency_key("order-17")])
        .await
        .unwrap();
    assert_eq!(batch.jobs[0].id, waiting.id);
    // Not when one of the jobs is new: that one would go over.
    let mixed = engine
        .submit_batch(vec![
            job("a", json!({})).with_idempotency_key("order-17"),
            job("a", json!({})).with_idempotency_key("order-18"),
        ])
        .await;
    assert!(matches!(mixed, Err(EngineError::Batch { .. })), "{mixed:?}");

    // `r`: its one submission a second is spent, but a retry is answered.
    let first = engine
        .submit(job("r", json!({})).with_idempotency_key("x"))
        .await
        .unwrap();
    let again = engine
        .submit(job("r", json!({})).with_idempotency_key("x"))
        .await
        .unwrap();
    assert_eq!(again.id, first.id);
    let limited = engine.submit(job("r", json!({}))).await;
    assert!(
        matches!(limited, Err(EngineError::RateLimited { .. })),
        "{limited:?}"
    );
    run_all(&engine, &[running.id, waiting.id, first.id]).await;
    assert_eq!(mock.history().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn not_before_holds_a_job_until_its_time() {
    let mock = MockBackend::new();
    let engine = builder(1.0, &mock).build().unwrap();
    let mut later = job("a", json!({}));
    later.constraints.not_before = Some(chrono::Utc::now() + chrono::Duration::seconds(30));
    let t0 = tokio::time::Instant::now();
    let submitted = engine.submit(later).await.unwrap();
    assert!(submitted.next_run_at.is_some());
    engine.wait(submitted.id, LONG).await.unwrap();
    let waited = mock.history()[0].started - t0;
    assert!(waited >= Duration::from_millis(29_900), "{waited:?}");
}

/// A dependent's `not_before` still holds once its dependencies succeed.
#[tokio::test(start_paused = true)]
async fn a_dependent_waits_for_its_not_before_too() {
    let mock = MockBackend::new();
    let engine = builder(2.0, &mock).build().unwrap();
    let t0 = tokio::time::Instant::now();
    let first = engine
        .submit(job("a", json!({"delay_ms": 10})))
        .await
        .unwrap();
    let mut later = job("a", json!({})).with_depends_on([first.id]);
    later.constraints.not_before = Some(chrono::Utc::now() + chrono::Duration::seconds(30));
    let later = engine.submit(later).await.unwrap();
    let done = engine.wait(later.id, LONG).await.unwrap();
    assert_eq!(done.status, JobStatus::Succeeded);
    let waited = run_of(&mock.history(), later.id).started - t0;
    assert!(waited >= Duration::from_millis(29_900), "{waited:?}");
}

#[tokio::test(start_paused = true)]
async fn quotas_rates_and_capacity_are_enforced_at_admission() {
    let mock = MockBackend::new();
    let engine = builder(4.0, &mock)
        .tenant(
            "small",
            TenantConfig {
                weight: 1,
                quota: Quota {
                    max_queued: Some(2),
                    max_cpu: Some(1.0),
                    ..Quota::default()
                },
            },
        )
        .tenant(
            "chatty",
            TenantConfig {
                weight: 1,
                quota: Quota {
                    submits_per_second: Some(5.0),
                    ..Quota::default()
                },
            },
        )
        .queue_capacity(Priority::Offline, 3)
        .build()
        .unwrap();
    let mut events = engine.subscribe();

    // max_queued counts waiting jobs (a hung one runs, so it does not).
    for _ in 0..3 {
        engine
            .submit(job("small", json!({"hang": true})))
            .await
            .unwrap();
    }
    let over = engine.submit(job("small", json!({}))).await;
    assert!(
        matches!(
            over,
            Err(EngineError::QuotaExceeded {
                limit: "max_queued",
                ..
            })
        ),
        "{over:?}"
    );
    let big = job("small", json!({})).with_resources(Resources {
        cpu: 2.0,
        ..Resources::default()
    });
    let over = engine.submit(big).await;
    assert!(
        matches!(
            over,
            Err(EngineError::QuotaExceeded {
                limit: "max_cpu",
                ..
            })
        ),
        "{over:?}"
    );

    for _ in 0..5 {
        engine.submit(job("chatty", json!({}))).await.unwrap();
    }
    let limited = engine.submit(job("chatty", json!({}))).await;
    let Err(EngineError::RateLimited { retry_after, .. }) = limited else {
        panic!("{limited:?}");
    };
    tokio::time::sleep(retry_after).await;
    engine.submit(job("chatty", json!({}))).await.unwrap();

    let hang = || job("x", json!({"hang": true})).with_priority(Priority::Offline);
    // Capacity 4 CPU: hung jobs of "small" hold one; fill the rest so the
    // offline ones wait.
    for _ in 0..3 {
        engine
            .submit(job("y", json!({"hang": true})))
            .await
            .unwrap();
    }
    for _ in 0..3 {
        engine.submit(hang()).await.unwrap();
    }
    let full = engine.submit(hang()).await;
    assert!(
        matches!(
            full,
            Err(EngineError::QueueFull {
                priority: Priority::Offline,
                capacity: 3
            })
        ),
        "{full:?}"
    );
    let mut overflowed = false;
    while let Ok(Some(event)) = events.try_recv() {
        overflowed |= matches!(
            event.data,
            EventData::Overflow {
                priority: Priority::Offline,
                capacity: 3
            }
        );
    }
    assert!(overflowed, "a queue.overflow event");

    let huge = job("z", json!({})).with_resources(Resources {
        cpu: 64.0,
        ..Resources::default()
    });
    assert!(matches!(
        engine.submit(huge).await,
        Err(EngineError::Unsatisfiable { .. })
    ));
    let gpu = job("z", json!({})).with_resources(Resources {
        gpu: Some("H100".into()),
        ..Resources::default()
    });
    assert!(matches!(
        engine.submit(gpu).await,
        Err(EngineError::Unsatisfiable { .. })
    ));
    let bad = job("", json!({}));
    assert!(matches!(
        engine.submit(bad).await,
        Err(EngineError::InvalidJob { .. })
    ));
    // A custom kind's name is the submitter's: checked like a tenant's.
    for kind in ["", "sim\u{7}"] {
        let err = engine
            .submit(NewJob::new(kind, "z", json!({})))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, EngineError::InvalidJob { reason } if reason.starts_with("kind ")),
            "{kind:?}: {err}"
        );
    }
    let bad_mock = job("z", json!({"explode": true}));
    assert!(matches!(
        engine.submit(bad_mock).await,
        Err(EngineError::InvalidJob { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn max_running_caps_a_tenant_while_others_proceed() {
    let mock = MockBackend::new();
    let engine = builder(8.0, &mock)
        .tenant(
            "capped",
            TenantConfig {
                weight: 1,
                quota: Quota {
                    max_running: Some(1),
                    ..Quota::default()
                },
            },
        )
        .build()
        .unwrap();
    let mut capped = Vec::new();
    for _ in 0..3 {
        capped.push(
            engine
                .submit(job("capped", json!({"delay_ms": 10})))
                .await
                .unwrap()
                .id,
        );
    }
    let other = engine
        .submit(job("free", json!({"delay_ms": 10})))
        .await
        .unwrap();
    run_all(&engine, &capped).await;
    engine.wait(other.id, LONG).await.unwrap();
    let history = mock.history();
    let starts: Vec<_> = capped
        .iter()
        .map(|id| run_of(&history, *id).started)
        .collect();
    assert!(
        starts
            .windows(2)
            .all(|w| w[1] - w[0] >= Duration::from_millis(10))
    );
    assert_eq!(run_of(&history, other.id).started, starts[0]);
}

/// A quota raised at run time lets the jobs it held back start at once,
/// not when the next job happens to end.
#[tokio::test(start_paused = true)]
async fn raising_a_quota_starts_the_jobs_it_held_back() {
    let mock = MockBackend::new();
    let capped = |max_running| TenantConfig {
        quota: Quota {
            max_running: Some(max_running),
            ..Quota::default()
        },
        ..TenantConfig::default()
    };
    let engine = builder(8.0, &mock)
        .tenant("capped", capped(1))
        .build()
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let long = job("capped", json!({"delay_ms": 3_600_000}));
        ids.push(engine.submit(long).await.unwrap().id);
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(engine.stats().jobs.running, 1);
    engine.set_tenant("capped", capped(3));
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(engine.stats().jobs.running, 3);
    for id in ids {
        engine.cancel(id).await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn unknown_kinds_are_refused() {
    let mock = MockBackend::new().only_kinds(["inference"]);
    let engine = builder(1.0, &mock).build().unwrap();
    let err = engine.submit(job("a", json!({}))).await.unwrap_err();
    assert_eq!(err.code(), "unknown_kind");
    assert!(err.to_string().contains("sim"), "{err}");
    let ok = engine
        .submit(NewJob::new("inference", "a", json!({})))
        .await
        .unwrap();
    assert_eq!(
        engine.wait(ok.id, LONG).await.unwrap().backend.as_deref(),
        Some("mock")
    );
}

#[tokio::test(start_paused = true)]
async fn every_lifecycle_step_is_an_event() {
    let mock = MockBackend::new();
    let engine = builder(1.0, &mock).build().unwrap();
    let mut events = engine.subscribe();
    let policy = RetryPolicy {
        max_attempts: 2,
        base_delay_ms: 1,
        ..RetryPolicy::default()
    };
    let submitted = engine
        .submit(job("a", json!({"fail_times": 1})).with_retry_policy(policy))
        .await
        .unwrap();
    engine.wait(submitted.id, LONG).await.unwrap();
    let mut names = Vec::new();
    while let Ok(Some(event)) = events.try_recv() {
        assert_eq!(event.job_id, Some(submitted.id));
        assert_eq!(event.tenant_id.as_deref(), Some("a"));
        names.push(event.data.name());
    }
    assert_eq!(
        names,
        [
            "job.submitted",
            "scheduler.admit",
            "job.queued",
            "queue.enqueue",
            "queue.dequeue",
            "scheduler.select_backend",
            "job.started",
            "job.retry",
            "queue.enqueue",
            "queue.dequeue",
            "scheduler.select_backend",
            "job.started",
            "job.completed",
        ]
    );
    let json = serde_json::to_value(&names).unwrap();
    assert!(json.is_array());
}

#[tokio::test(start_paused = true)]
async fn a_slow_subscriber_is_told_it_lagged_and_never_stalls_the_scheduler() {
    let mock = MockBackend::new();
    let engine = builder(4.0, &mock).event_capacity(16).build().unwrap();
    let mut slow = engine.subscribe();
    let jobs = (0..200).map(|_| job("a", json!({}))).collect();
    let batch = engine.submit_batch(jobs).await.unwrap();
    let ids: Vec<_> = batch.jobs.iter().map(|j| j.id).collect();
    run_all(&engine, &ids).await;
    assert_eq!(mock.history().len(), 200);
    let Err(EventStreamError::Lagged { missed }) = slow.recv().await else {
        panic!("expected a lag signal");
    };
    assert!(missed > 1000, "{missed}");
    assert!(slow.recv().await.is_ok(), "the stream goes on after a lag");
}

#[tokio::test(start_paused = true)]
async fn stats_count_by_level_tenant_and_status() {
    let mock = MockBackend::new();
    let engine = builder(2.0, &mock).build().unwrap();
    let hung = engine
        .submit(job("a", json!({"hang": true})))
        .await
        .unwrap();
    engine
        .submit(job("a", json!({"hang": true})).with_resources(Resources {
            cpu: 1.0,
            memory_mb: 512,
            ..Resources::default()
        }))
        .await
        .unwrap();
    let waiting = engine
        .submit(job("b", json!({})).with_priority(Priority::Realtime))
        .await
        .unwrap();
    let fails = engine
        .submit(
            job("b", json!({"fail": true}))
                .with_priority(Priority::Realtime)
                .with_retry_policy(RetryPolicy::never()),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    let stats = engine.stats();
    assert_eq!(stats.jobs.running, 2);
    assert_eq!(stats.jobs.queued, 2);
    assert_eq!(stats.resources.cpu_in_use, 2.0);
    assert_eq!(stats.resources.memory_mb_in_use, 512);
    let realtime = &stats.levels[0];
    assert_eq!((realtime.priority, realtime.depth), (Priority::Realtime, 2));
    engine.cancel(hung.id).await.unwrap();
    run_all(&engine, &[hung.id, waiting.id, fails.id]).await;
    let stats = engine.stats();
    let b = stats.tenants.iter().find(|t| t.tenant_id == "b").unwrap();
    assert_eq!((b.jobs.succeeded, b.jobs.failed, b.jobs.queued), (1, 1, 0));
    assert_eq!(b.by_priority[&Priority::Realtime].succeeded, 1);
    let a = stats.tenants.iter().find(|t| t.tenant_id == "a").unwrap();
    assert_eq!((a.jobs.canceled, a.jobs.running), (1, 1));
    assert_eq!(stats.finished_total, 3);
    assert!(stats.levels[0].wait.count >= 2);
    assert!(stats.run.count >= 3);
}

#[tokio::test(start_paused = true)]
async fn listing_by_namespace_status_and_kind_with_cursors() {
    let mock = MockBackend::new();
    let engine = builder(1.0, &mock).build().unwrap();
    let mut ids = Vec::new();
    for i in 0..25 {
        let ns = if i % 2 == 0 { "even" } else { "odd" };
        let job = job("a", json!({})).with_namespace(ns);
        ids.push(engine.submit(job).await.unwrap().id);
    }
    engine
        .submit(NewJob::new("other", "a", json!({})))
        .await
        .unwrap();
    engine.submit(job("b", json!({}))).await.unwrap();
    run_all(&engine, &ids).await;

    let mut seen = Vec::new();
    let mut query = JobQuery::tenant("a").namespace("even").limit(5);
    loop {
        let page = engine.list(&query).await.unwrap();
        seen.extend(page.jobs.iter().map(|j| j.id));
        match page.next_cursor {
            Some(cursor) => query = query.cursor(cursor),
            None => break,
        }
    }
    let even: Vec<_> = ids.iter().step_by(2).rev().copied().collect();
    assert_eq!(seen, even, "newest first, every page");
    let succeeded = engine
        .list(
            &JobQuery::tenant("a")
                .status(JobStatus::Succeeded)
                .kind("sim")
                .limit(1000),
        )
        .await
        .unwrap();
    assert_eq!(succeeded.jobs.len(), 25);
    let other = engine
        .list(&JobQuery::tenant("a").kind("other"))
        .await
        .unwrap();
    assert_eq!(other.jobs.len(), 1);
    assert_eq!(
        engine
            .list(&JobQuery::tenant("nobody"))
            .await
            .unwrap()
            .jobs
            .len(),
        0
    );
    let bad = engine
        .list(&JobQuery::tenant("a").cursor("not-a-cursor"))
        .await;
    assert_eq!(bad.unwrap_err().code(), "invalid_cursor");
}

#[tokio::test(start_paused = true)]
async fn external_ids_find_jobs_per_tenant() {
    let mock = MockBackend::new();
    let engine = builder(1.0, &mock).build().unwrap();
    let mut new = job("a", json!({}));
    new.external_id = Some("ticket-9".into());
    let job = engine.submit(new).await.unwrap();
    let found = engine
        .get_by_external_id("a", "ticket-9")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, job.id);
    assert!(
        engine
            .get_by_external_id("b", "ticket-9")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(start_paused = true)]
async fn an_attempt_that_waits_does_not_hold_up_its_runner() {
    let mock = MockBackend::new();
    // One runner: quick jobs dispatched beside a hanging one still run,
    // because the hanging attempt moves to a task of its own.
    let engine = builder(8.0, &mock).runners(1).build().unwrap();
    let hung = engine
        .submit(job("a", json!({"hang": true})))
        .await
        .unwrap();
    let quick: Vec<_> = engine
        .submit_batch((0..20).map(|_| job("a", json!({}))).collect())
        .await
        .unwrap()
        .jobs
        .iter()
        .map(|j| j.id)
        .collect();
    for job in run_all(&engine, &quick).await {
        assert_eq!(job.status, JobStatus::Succeeded);
    }
    assert_eq!(
        engine.get(hung.id).await.unwrap().status,
        JobStatus::Running
    );
    assert_eq!(engine.cancel(hung.id).await.unwrap().id, hung.id);
    let hung = engine.wait(hung.id, LONG).await.unwrap();
    assert_eq!(hung.status, JobStatus::Canceled);
}

/// An observer that panics loses its event, not the engine: it is called
/// under the scheduler's lock, halfway through recording an end, where
/// unwinding would leave the books half done and the runner gone.
#[tokio::test(start_paused = true)]
async fn a_panicking_event_observer_does_not_stop_the_engine() {
    let mock = MockBackend::new();
    let observer = EventObserver::new(
        |data| matches!(data, EventData::Completed { .. }),
        |_| panic!("the observer's own bug"),
    );
    let engine = builder(1.0, &mock).observer(observer).build().unwrap();
    for _ in 0..3 {
        let done = submit_and_wait(&engine, job("a", json!({})), LONG).await;
        assert_eq!(done.status, JobStatus::Succeeded);
    }
    let stats = engine.stats();
    assert_eq!((stats.jobs.succeeded, stats.jobs.running), (3, 0));
}

/// Durations too long for the clock (a timeout or a retry delay of
/// `u64::MAX` ms, which a client may send) mean "never", not a panic in the
/// runner that meets them.
#[tokio::test(start_paused = true)]
async fn timeouts_and_retry_delays_past_the_clocks_range_mean_never() {
    let mock = MockBackend::new();
    let engine = builder(1.0, &mock).build().unwrap();
    let endless = job("a", json!({})).with_resources(Resources {
        timeout_ms: Some(u64::MAX),
        ..Resources::default()
    });
    let done = submit_and_wait(&engine, endless, LONG).await;
    assert_eq!(done.status, JobStatus::Succeeded);

    // u64::MAX ms is past what a date can say; 10^16 ms fits a date's
    // offset but not a date.
    for delay in [u64::MAX, 10_u64.pow(16)] {
        let patient =
            job("a", json!({"fail": true, "fail_class": "trap"})).with_retry_policy(RetryPolicy {
                max_attempts: 2,
                base_delay_ms: delay,
                max_delay_ms: delay,
                jitter: false,
                ..RetryPolicy::default()
            });
        let id = engine.submit(patient).await.unwrap().id;
        let waiting = engine.wait(id, LONG).await.unwrap();
        assert_eq!(
            (waiting.status, waiting.attempt),
            (JobStatus::Queued, 1),
            "{delay}"
        );
        let years = chrono::Duration::days(365 * 1000);
        assert!(
            waiting.next_run_at.unwrap() > waiting.created_at + years,
            "{delay}"
        );
        // The runner that recorded that is still there for the next job.
        let done = submit_and_wait(&engine, job("a", json!({})), LONG).await;
        assert_eq!(done.status, JobStatus::Succeeded, "{delay}");
        assert_eq!(engine.cancel(id).await.unwrap().status, JobStatus::Canceled);
    }
}
