//! The store contract, as one suite every implementation runs.

use std::sync::Arc;

use chrono::Utc;
use serde_json::json;
use work_engine::store::{
    Commit, Durability, Inserted, MemoryStore, SqliteStore, Store, StoreError, Transition,
};
use work_engine::{Job, JobError, JobId, JobQuery, JobStatus, OutcomeClass, Priority, Resources};

/// What the engine hands a store: shared copies.
fn shared<const N: usize>(jobs: [&Job; N]) -> Vec<Arc<Job>> {
    jobs.into_iter().map(|job| Arc::new(job.clone())).collect()
}

fn job(tenant: &str, namespace: &str) -> Job {
    Job {
        id: uuid::Uuid::now_v7(),
        kind: "sim".into(),
        tenant_id: tenant.into(),
        namespace: namespace.into(),
        priority: Priority::Batch,
        payload: json!({}).into(),
        resources: Resources::default(),
        constraints: Default::default(),
        metadata: serde_json::Value::Null,
        external_id: None,
        batch_id: None,
        status: JobStatus::Queued,
        attempt: 0,
        result: None,
        error: None,
        outcome: None,
        backend: None,
        next_run_at: None,
        dead_letter: false,
        lease_epoch: 0,
        created_at: Utc::now(),
        started_at: None,
        finished_at: None,
        cost_usd: 0.0,
    }
}

fn claim() -> Transition {
    Transition::Claim {
        backend: "mock".into(),
        at: Utc::now(),
    }
}

fn finish(epoch: u64, status: JobStatus) -> Transition {
    Transition::Finish {
        epoch,
        status,
        outcome: OutcomeClass::Ok,
        result: Some(json!(1)),
        error: None,
        dead_letter: status == JobStatus::Failed,
        at: Utc::now(),
        cost_usd: 0.5,
    }
}

/// The ids `list` finds in `status`, newest first.
async fn ids_in(store: &dyn Store, tenant: &str, status: JobStatus) -> Vec<JobId> {
    let query = JobQuery::tenant(tenant).status(status).limit(100);
    let page = store.list(&query).await.unwrap();
    page.jobs.iter().map(|j| j.id).collect()
}

/// Every `Store` must pass this.
async fn conformance(store: &dyn Store) {
    // Batch insert, idempotency within and across batches, per tenant.
    let mut a = job("t1", "ns");
    a.constraints.idempotency_key = Some("k".into());
    let mut dup = job("t1", "ns");
    dup.constraints.idempotency_key = Some("k".into());
    let mut other_tenant = job("t2", "ns");
    other_tenant.constraints.idempotency_key = Some("k".into());
    let inserted = store
        .insert(shared([&a, &dup, &other_tenant]), Commit::Durable)
        .await
        .unwrap();
    assert_eq!(inserted[0], Inserted::New);
    assert!(matches!(&inserted[1], Inserted::Existing(j) if j.id == a.id));
    assert_eq!(inserted[2], Inserted::New);
    assert!(store.get(dup.id).await.unwrap().is_none());
    let again = store.insert(shared([&dup]), Commit::Durable).await.unwrap();
    assert!(matches!(&again[0], Inserted::Existing(j) if j.id == a.id));
    let by_key = |tenant, key| store.get_by_idempotency_key(tenant, key);
    assert_eq!(by_key("t1", "k").await.unwrap().map(|j| j.id), Some(a.id));
    assert_eq!(
        by_key("t2", "k").await.unwrap().map(|j| j.id),
        Some(other_tenant.id)
    );
    assert!(by_key("t1", "other").await.unwrap().is_none());
    assert!(by_key("t3", "k").await.unwrap().is_none());
    assert_eq!(
        store.insert(shared([&a]), Commit::Durable).await,
        Err(StoreError::Duplicate(a.id))
    );

    // Claims are atomic and raise the epoch; stale reports are refused.
    let claimed = store.transition(a.id, claim()).await.unwrap();
    assert_eq!(
        (claimed.status, claimed.attempt, claimed.lease_epoch),
        (JobStatus::Running, 1, 1)
    );
    assert!(matches!(
        store.transition(a.id, claim()).await,
        Err(StoreError::Conflict { .. })
    ));
    let retry = Transition::Retry {
        epoch: 1,
        outcome: OutcomeClass::Trap,
        error: JobError {
            code: "trap".into(),
            message: "boom".into(),
            retryable: true,
        },
        next_run_at: Utc::now(),
        cost_usd: 0.25,
    };
    store.transition(a.id, retry).await.unwrap();
    let second = store.transition(a.id, claim()).await.unwrap();
    assert_eq!((second.attempt, second.lease_epoch), (2, 2));
    assert!(matches!(
        store
            .transition(a.id, finish(1, JobStatus::Succeeded))
            .await,
        Err(StoreError::Conflict { epoch: 2, .. })
    ));
    let done = store
        .transition(a.id, finish(2, JobStatus::Succeeded))
        .await
        .unwrap();
    assert_eq!(
        (done.status, done.result.clone()),
        (JobStatus::Succeeded, Some(json!(1)))
    );
    // Each attempt's charges add up; the refused report added none.
    assert_eq!(done.cost_usd, 0.75);
    assert_eq!(store.get(a.id).await.unwrap().unwrap().cost_usd, 0.75);
    let cancel = || Transition::Cancel {
        error: JobError {
            code: "canceled".into(),
            message: "by test".into(),
            retryable: false,
        },
        at: Utc::now(),
    };
    assert!(matches!(
        store.transition(a.id, cancel()).await,
        Err(StoreError::Conflict { .. })
    ));

    // Indexes by tenant, namespace and status; pages newest first.
    let mut ids = Vec::new();
    for i in 0..7 {
        let j = job("t3", if i % 2 == 0 { "even" } else { "odd" });
        ids.push(j.id);
        store
            .insert(vec![Arc::new(j)], Commit::Durable)
            .await
            .unwrap();
    }
    let failed = store.transition(ids[0], claim()).await.unwrap();
    store
        .transition(ids[0], finish(failed.lease_epoch, JobStatus::Failed))
        .await
        .unwrap();
    let page = store
        .list(&JobQuery::tenant("t3").namespace("even").limit(2))
        .await
        .unwrap();
    assert_eq!(
        page.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        [ids[6], ids[4]]
    );
    let rest = store
        .list(
            &JobQuery::tenant("t3")
                .namespace("even")
                .cursor(page.next_cursor.unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(
        rest.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        [ids[2], ids[0]]
    );
    assert!(rest.next_cursor.is_none());
    let queued = store
        .list(&JobQuery::tenant("t3").status(JobStatus::Queued))
        .await
        .unwrap();
    assert_eq!(queued.jobs.len(), 6);
    let dead = store
        .list(&JobQuery::tenant("t3").dead_letters())
        .await
        .unwrap();
    assert_eq!(dead.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), [ids[0]]);
    assert_eq!(ids_in(store, "t3", JobStatus::Failed).await, [ids[0]]);

    // Revival, cancellation, and the unfinished set for recovery.
    let revived = store.transition(ids[0], Transition::Revive).await.unwrap();
    assert_eq!(
        (revived.status, revived.attempt, revived.dead_letter),
        (JobStatus::Queued, 0, false)
    );
    assert!(
        store
            .list(&JobQuery::tenant("t3").dead_letters())
            .await
            .unwrap()
            .jobs
            .is_empty()
    );
    assert!(ids_in(store, "t3", JobStatus::Failed).await.is_empty());
    assert!(
        ids_in(store, "t3", JobStatus::Queued)
            .await
            .contains(&ids[0])
    );
    store.transition(ids[1], cancel()).await.unwrap();
    let unfinished = store.unfinished().await.unwrap();
    assert!(unfinished.iter().all(|j| !j.status.is_terminal()));
    assert_eq!(unfinished.iter().filter(|j| j.tenant_id == "t3").count(), 6);
    let missing = uuid::Uuid::now_v7();
    assert_eq!(
        store.transition(missing, claim()).await.map(|_| ()),
        Err(StoreError::NotFound(missing))
    );

    // A batch of transitions: one result each, in order, each atomic on
    // its own (a refused one leaves the others done), indexes kept right.
    let (x, y) = (job("t4", "ns"), job("t5", "ns"));
    store
        .insert(shared([&x, &y]), Commit::Durable)
        .await
        .unwrap();
    let results = store
        .transition_batch(
            vec![
                (x.id, claim()),
                (x.id, claim()),
                (missing, claim()),
                (y.id, claim()),
                (x.id, finish(1, JobStatus::Succeeded)),
            ],
            Commit::Durable,
        )
        .await;
    assert_eq!(results.len(), 5);
    assert_eq!(results[0].as_ref().map(|j| j.lease_epoch), Ok(1));
    assert!(
        matches!(&results[1], Err(StoreError::Conflict { id, status: JobStatus::Running, .. }) if *id == x.id),
        "{:?}",
        results[1]
    );
    assert_eq!(
        results[2].as_ref().map(|_| ()),
        Err(&StoreError::NotFound(missing))
    );
    assert_eq!(
        results[3].as_ref().map(|j| j.status),
        Ok(JobStatus::Running)
    );
    assert_eq!(
        results[4].as_ref().map(|j| j.status),
        Ok(JobStatus::Succeeded)
    );
    for (tenant, id, status) in [
        ("t4", x.id, JobStatus::Succeeded),
        ("t5", y.id, JobStatus::Running),
    ] {
        let page = store
            .list(&JobQuery::tenant(tenant).status(status))
            .await
            .unwrap();
        assert_eq!(page.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), [id]);
        assert!(
            store
                .list(&JobQuery::tenant(tenant).status(JobStatus::Queued))
                .await
                .unwrap()
                .jobs
                .is_empty()
        );
    }
}

#[tokio::test]
async fn memory_store_honours_the_contract() {
    conformance(&MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_index_stays_right_under_concurrent_transitions() {
    indexes_stay_right_under_concurrent_transitions(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn sqlite_store_honours_the_contract() {
    let dir = tempfile::TempDir::new().unwrap();
    conformance(&SqliteStore::open(dir.path().join("jobs.db")).unwrap()).await;
}

#[tokio::test]
async fn sqlite_store_without_fsync_honours_the_contract() {
    let dir = tempfile::TempDir::new().unwrap();
    let store = SqliteStore::open_with(dir.path().join("jobs.db"), Durability::Process).unwrap();
    conformance(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_index_stays_right_under_concurrent_transitions() {
    let dir = tempfile::TempDir::new().unwrap();
    let store = SqliteStore::open(dir.path().join("jobs.db")).unwrap();
    indexes_stay_right_under_concurrent_transitions(Arc::new(store)).await;
}

#[tokio::test]
async fn sqlite_store_keeps_every_committed_change_across_a_reopen() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("jobs.db");
    let (done, running, waiting) = (job("t", "a"), job("t", "b"), job("u", "a"));
    {
        let store = SqliteStore::open(&path).unwrap();
        store
            .insert(shared([&done, &running, &waiting]), Commit::Durable)
            .await
            .unwrap();
        let claimed = store.transition(done.id, claim()).await.unwrap();
        store
            .transition(done.id, finish(claimed.lease_epoch, JobStatus::Succeeded))
            .await
            .unwrap();
        store.transition(running.id, claim()).await.unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    let done = store.get(done.id).await.unwrap().unwrap();
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.result, Some(json!(1)));
    let unfinished: Vec<_> = store
        .unfinished()
        .await
        .unwrap()
        .iter()
        .map(|job| (job.id, job.status, job.lease_epoch))
        .collect();
    assert_eq!(
        unfinished,
        [
            (running.id, JobStatus::Running, 1),
            (waiting.id, JobStatus::Queued, 0)
        ]
    );
    let page = store
        .list(&JobQuery::tenant("t").namespace("a"))
        .await
        .unwrap();
    assert_eq!(page.jobs.len(), 1);
}

/// The scheduler's way with a synchronous call: insert, claim and finish
/// without waiting for the first two; once the last is durable, so are
/// the others (one commit, one row written).
#[tokio::test]
async fn sqlite_store_makes_ordered_changes_durable_with_the_next_durable_one() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("jobs.db");
    let (called, flushed, stored) = (job("t", "a"), job("t", "a"), job("t", "a"));
    {
        let store = SqliteStore::open(&path).unwrap();
        for job in [&called, &flushed] {
            store.insert(shared([job]), Commit::Ordered).await.unwrap();
            let claimed = store
                .transition_batch(vec![(job.id, claim())], Commit::Ordered)
                .await;
            assert_eq!(
                claimed[0].as_ref().map(|j| j.status),
                Ok(JobStatus::Running)
            );
        }
        // Decided at once: a second claim is refused before any commit.
        assert!(matches!(
            store
                .transition_batch(vec![(called.id, claim())], Commit::Ordered)
                .await[0],
            Err(StoreError::Conflict { .. })
        ));
        store
            .transition(called.id, finish(1, JobStatus::Succeeded))
            .await
            .unwrap();
        store.flush().await.unwrap();
        store
            .insert(shared([&stored]), Commit::Durable)
            .await
            .unwrap();
        let claimed = store.transition(stored.id, claim()).await.unwrap();
        store
            .transition(stored.id, finish(claimed.lease_epoch, JobStatus::Succeeded))
            .await
            .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    let called = store.get(called.id).await.unwrap().unwrap();
    assert_eq!((called.status, called.attempt), (JobStatus::Succeeded, 1));
    let flushed = store.get(flushed.id).await.unwrap().unwrap();
    assert_eq!(
        (flushed.status, flushed.lease_epoch),
        (JobStatus::Running, 1)
    );

    // An ended job is no longer in memory after a reopen: inserting its
    // id again is refused by the table, and leaves the stored job as it was.
    assert_eq!(
        store.insert(shared([&stored]), Commit::Durable).await,
        Err(StoreError::Duplicate(stored.id))
    );
    assert_eq!(
        store.get(stored.id).await.unwrap().map(|j| j.status),
        Some(JobStatus::Succeeded)
    );
    let page = store.list(&JobQuery::tenant("t").limit(10)).await.unwrap();
    assert_eq!(page.jobs.len(), 3);
}

#[tokio::test]
async fn sqlite_store_refuses_a_database_from_a_newer_version() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("jobs.db");
    drop(SqliteStore::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap();
    assert_eq!(version, 2, "every migration applied");
    conn.pragma_update(None, "user_version", 999).unwrap();
    drop(conn);
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(err.to_string().contains("schema version 999"), "{err}");
}

async fn indexes_stay_right_under_concurrent_transitions(store: Arc<dyn Store>) {
    let jobs: Vec<Arc<Job>> = (0..400).map(|_| Arc::new(job("t", "ns"))).collect();
    let ids: Vec<_> = jobs.iter().map(|j| j.id).collect();
    store.insert(jobs, Commit::Durable).await.unwrap();
    let mut tasks = Vec::new();
    for chunk in ids.chunks(100) {
        let store = Arc::clone(&store);
        let chunk = chunk.to_vec();
        tasks.push(tokio::spawn(async move {
            for id in chunk {
                let job = store.transition(id, claim()).await.unwrap();
                store
                    .transition(id, finish(job.lease_epoch, JobStatus::Succeeded))
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let by = |status| {
        let store = Arc::clone(&store);
        async move {
            store
                .list(&JobQuery::tenant("t").status(status).limit(1000))
                .await
                .unwrap()
                .jobs
                .len()
        }
    };
    assert_eq!(by(JobStatus::Succeeded).await, 400);
    assert_eq!(by(JobStatus::Running).await, 0);
    assert_eq!(by(JobStatus::Queued).await, 0);
}

/// An engine on SQLite with a backlog: more jobs end, all at once, than
/// the store keeps ended in memory; every one reads back as it ended
/// (from memory or from the table), before and after a reopen, with its
/// one attempt counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_on_sqlite_reads_back_every_end_under_a_backlog() {
    use work_engine::NewJob;
    use work_engine::backends::MockBackend;

    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("jobs.db");
    let store = Arc::new(SqliteStore::open_with(&path, Durability::Process).unwrap());
    let mock = MockBackend::new();
    let engine = crate::scheduler::builder(64.0, &mock)
        .store(store)
        .build()
        .unwrap();
    // Every job is stored before any may start; then they all may at once.
    let start = Utc::now() + chrono::Duration::seconds(2);
    let mut ids = Vec::new();
    for _ in 0..20 {
        let batch = (0..1000)
            .map(|_| {
                let mut job = NewJob::new("sim", "t", json!({ "mock": {} }));
                job.constraints.not_before = Some(start);
                job
            })
            .collect();
        ids.extend(
            engine
                .submit_batch(batch)
                .await
                .unwrap()
                .jobs
                .iter()
                .map(|j| j.id),
        );
    }
    for id in &ids {
        let job = engine
            .wait(*id, std::time::Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    }
    for id in &ids {
        let job = engine.get(*id).await.unwrap();
        assert_eq!(
            (job.status, job.attempt),
            (JobStatus::Succeeded, 1),
            "{job:?}"
        );
    }
    drop(engine);

    let store = SqliteStore::open(&path).unwrap();
    assert!(store.unfinished().await.unwrap().is_empty());
    for id in ids.iter().step_by(97) {
        let job = store.get(*id).await.unwrap().unwrap();
        assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    }
}

/// The CLI's view of a data directory: reads while a server writes, and
/// after it stopped; changes refused; no file created.
#[tokio::test]
async fn sqlite_store_opened_read_only_reads_and_refuses_changes() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("jobs.db");
    assert!(SqliteStore::open_read_only(&path).is_err());
    assert!(!path.exists(), "a read-only open created the file");

    let (done, waiting) = (job("t", "a"), job("t", "b"));
    let writer = SqliteStore::open(&path).unwrap();
    writer
        .insert(shared([&done, &waiting]), Commit::Durable)
        .await
        .unwrap();
    let claimed = writer.transition(done.id, claim()).await.unwrap();
    writer
        .transition(done.id, finish(claimed.lease_epoch, JobStatus::Succeeded))
        .await
        .unwrap();

    let check = |reader: SqliteStore| async move {
        let got = reader.get(done.id).await.unwrap().unwrap();
        assert_eq!(got.status, JobStatus::Succeeded);
        let page = reader.list(&JobQuery::tenant("t")).await.unwrap();
        assert_eq!(page.jobs.len(), 2);
        let unfinished: Vec<_> = reader
            .unfinished()
            .await
            .unwrap()
            .iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(unfinished, [waiting.id]);
        assert_eq!(
            reader
                .insert(shared([&job("t", "a")]), Commit::Durable)
                .await,
            Err(StoreError::ReadOnly)
        );
        assert_eq!(
            reader.transition(waiting.id, claim()).await.map(|_| ()),
            Err(StoreError::ReadOnly)
        );
    };
    // Beside the writer, then after it is gone.
    check(SqliteStore::open_read_only(&path).unwrap()).await;
    drop(writer);
    check(SqliteStore::open_read_only(&path).unwrap()).await;
}

/// A long-running engine on the memory store keeps its latest finished
/// jobs, not all of them: the oldest go, dead letters and unfinished jobs
/// stay, and an evicted job's idempotency key is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_keeps_only_the_latest_finished_jobs() {
    use work_engine::backends::MockBackend;
    use work_engine::{Engine, EngineError, NewJob, RetryPolicy};

    const KEEP: usize = 16;
    let engine = Engine::builder()
        .capacity(crate::scheduler::capacity(4.0))
        .backend(MockBackend::new().without_history())
        .store(Arc::new(MemoryStore::keeping_finished(KEEP)))
        .build()
        .unwrap();
    let mock = |mock: serde_json::Value| NewJob::new("sim", "t", json!({ "mock": mock }));
    let mock_of = |tenant: &str| NewJob::new("sim", tenant, json!({ "mock": {} }));
    let wait = |id| engine.wait(id, std::time::Duration::from_secs(30));

    let dead = engine
        .submit(mock(json!({"fail": true})).with_retry_policy(RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }))
        .await
        .unwrap();
    assert!(wait(dead.id).await.unwrap().dead_letter);
    let hanging = engine.submit(mock(json!({"hang": true}))).await.unwrap();
    let first = engine
        .submit(mock(json!({})).with_idempotency_key("k"))
        .await
        .unwrap();
    wait(first.id).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..200 {
        // Two namespaces of `t`, and a second tenant now and then: the
        // jobs retired together belong to both.
        let (tenant, namespace) = match i % 5 {
            4 => ("u", "even"),
            n if n % 2 == 0 => ("t", "even"),
            _ => ("t", "odd"),
        };
        let job = engine
            .submit(mock_of(tenant).with_namespace(namespace))
            .await
            .unwrap();
        wait(job.id).await.unwrap();
        if tenant == "t" {
            ids.push(job.id);
        }
    }

    let mut kept = 0;
    for tenant in ["t", "u"] {
        let listed = engine
            .list(&JobQuery::tenant(tenant).limit(500))
            .await
            .unwrap();
        let succeeded = listed
            .jobs
            .iter()
            .filter(|job| job.status == JobStatus::Succeeded)
            .count();
        kept += succeeded;
        let by_status = engine
            .list(
                &JobQuery::tenant(tenant)
                    .status(JobStatus::Succeeded)
                    .limit(500),
            )
            .await
            .unwrap();
        assert_eq!(by_status.jobs.len(), succeeded, "{tenant}");
        // Each namespace's index lost its evicted jobs too.
        let mut in_namespaces = 0;
        for namespace in ["even", "odd"] {
            let page = engine
                .list(&JobQuery::tenant(tenant).namespace(namespace).limit(500))
                .await
                .unwrap();
            in_namespaces += page.jobs.len();
        }
        assert_eq!(in_namespaces, succeeded, "{tenant}");
    }
    assert!(
        (KEEP..=KEEP + KEEP / 8).contains(&kept),
        "{kept} finished jobs kept"
    );
    // The latest are kept, the oldest are gone.
    for id in &ids[ids.len() - KEEP * 4 / 5..] {
        assert_eq!(engine.get(*id).await.unwrap().status, JobStatus::Succeeded);
    }
    assert!(matches!(
        engine.get(ids[0]).await,
        Err(EngineError::NotFound { .. })
    ));
    // Dead letters and unfinished jobs stay.
    assert!(engine.get(dead.id).await.unwrap().dead_letter);
    assert_eq!(
        engine
            .dead_letters(&JobQuery::tenant("t"))
            .await
            .unwrap()
            .jobs
            .len(),
        1
    );
    assert_eq!(
        engine.get(hanging.id).await.unwrap().status,
        JobStatus::Running
    );
    // The evicted job's key names nothing now: a new job takes it.
    let again = engine
        .submit(mock(json!({})).with_idempotency_key("k"))
        .await
        .unwrap();
    assert_ne!(again.id, first.id);
    engine.cancel(hanging.id).await.unwrap();
}

/// A job submitted at `at`: its id is a UUID v7 of that time.
fn job_submitted_at(tenant: &str, at: chrono::DateTime<Utc>) -> Job {
    let mut job = job(tenant, "ns");
    let seconds = u64::try_from(at.timestamp()).unwrap();
    job.id = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        seconds,
        at.timestamp_subsec_nanos(),
    ));
    job.created_at = at;
    job
}

/// Claims `job` and ends it at `at` as `status`.
async fn end_at(store: &SqliteStore, job: &Job, status: JobStatus, at: chrono::DateTime<Utc>) {
    let claimed = store.transition(job.id, claim()).await.unwrap();
    let end = Transition::Finish {
        epoch: claimed.lease_epoch,
        status,
        outcome: OutcomeClass::Ok,
        result: None,
        error: None,
        dead_letter: status == JobStatus::Failed,
        at,
        cost_usd: 0.0,
    };
    store.transition(job.id, end).await.unwrap();
}

#[tokio::test]
async fn sqlite_store_deletes_the_jobs_that_ended_before_its_retention() {
    let dir = tempfile::TempDir::new().unwrap();
    let store = SqliteStore::open(dir.path().join("jobs.db")).unwrap();
    let long_ago = Utc::now() - chrono::Duration::days(40);
    let now = Utc::now();

    let mut ended_long_ago = job_submitted_at("t", long_ago);
    ended_long_ago.constraints.idempotency_key = Some("k".into());
    ended_long_ago.external_id = Some("order-1".into());
    let dead_letter = job_submitted_at("t", long_ago);
    let still_queued = job_submitted_at("t", long_ago);
    let ended_just_now = job_submitted_at("t", long_ago);
    let recent = job("t", "ns");
    let all = [
        &ended_long_ago,
        &dead_letter,
        &still_queued,
        &ended_just_now,
        &recent,
    ];
    store.insert(shared(all), Commit::Durable).await.unwrap();
    let in_a_second = long_ago + chrono::Duration::seconds(1);
    end_at(&store, &ended_long_ago, JobStatus::Succeeded, in_a_second).await;
    end_at(&store, &dead_letter, JobStatus::Failed, in_a_second).await;
    end_at(&store, &ended_just_now, JobStatus::Succeeded, now).await;
    end_at(&store, &recent, JobStatus::Succeeded, now).await;

    store.keep_finished_for(std::time::Duration::from_secs(30 * 86_400));
    store.flush().await.unwrap();

    assert!(store.get(ended_long_ago.id).await.unwrap().is_none());
    for kept in [&dead_letter, &still_queued, &ended_just_now, &recent] {
        assert!(store.get(kept.id).await.unwrap().is_some(), "{}", kept.id);
    }
    let listed = store.list(&JobQuery::tenant("t")).await.unwrap();
    assert_eq!(listed.jobs.len(), 4);
    assert!(listed.jobs.iter().all(|job| job.id != ended_long_ago.id));
    assert!(
        store
            .get_by_external_id("t", "order-1")
            .await
            .unwrap()
            .is_none()
    );
    // Its idempotency key names nothing now.
    let mut again = job("t", "ns");
    again.constraints.idempotency_key = Some("k".into());
    let inserted = store
        .insert(shared([&again]), Commit::Durable)
        .await
        .unwrap();
    assert_eq!(inserted, [Inserted::New]);
    // Deleted for good: not back after a reopen.
    drop(store);
    let store = SqliteStore::open(dir.path().join("jobs.db")).unwrap();
    assert!(store.get(ended_long_ago.id).await.unwrap().is_none());
    assert!(store.get(dead_letter.id).await.unwrap().is_some());
}
