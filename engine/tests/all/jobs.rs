//! `tool_call` jobs through the engine: admission against the tool's
//! schema, results, progress events, cancellation of a running guest, and
//! batches that are all or none.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;
use work_engine::backends::{LocalBackend, MockBackend};
use work_engine::runtime::Grants;
use work_engine::{
    AdmitError, Backend, Capacity, Engine, EngineError, EventData, ExecContext, ExecError,
    ExecUpdate, Job, JobQuery, JobStatus, NewJob, OutcomeClass, Resources, RetryPolicy, ToolHost,
};
use work_test_artifacts as guests;

use crate::support::{config, submit_and_wait, wasm};

const LONG: Duration = Duration::from_secs(120);

async fn engine_with(tools: &[&str]) -> (TempDir, Engine) {
    let dir = TempDir::new().unwrap();
    let host = ToolHost::open(dir.path(), config()).unwrap();
    for path in tools {
        host.register(&wasm(path), Grants::default()).await.unwrap();
    }
    let engine = Engine::builder()
        .capacity(Capacity {
            cpu: 4.0,
            memory_mb: 4096,
            gpus: Vec::new(),
        })
        .tool_host(Arc::new(host))
        .backend(MockBackend::new().only_kinds(["sim"]))
        .build()
        .unwrap();
    (dir, engine)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_call_job_runs_in_the_sandbox() {
    let (_dir, engine) = engine_with(&[guests::CALCULATOR]).await;
    let job = engine
        .submit(NewJob::tool_call(
            "acme",
            "calculator",
            json!({"op": "mul", "a": 6, "b": 7}),
        ))
        .await
        .unwrap();
    let done = engine.wait(job.id, LONG).await.unwrap();
    assert_eq!(done.status, JobStatus::Succeeded, "{done:?}");
    assert_eq!(done.result, Some(json!(42.0)));
    assert_eq!((done.attempt, done.backend.as_deref()), (1, Some("wasm")));
    assert_eq!(done.outcome, Some(OutcomeClass::Ok));

    // `tool_name` is an alias, and versions pin.
    let aliased = NewJob::new(
        "tool_call",
        "acme",
        json!({"tool_name": "calculator@0.1.0", "args": {"op": "add", "a": 1, "b": 1}}),
    );
    let done = submit_and_wait(&engine, aliased, LONG).await;
    assert_eq!(done.result, Some(json!(2.0)));
}

/// `tool_host` calls its `wasm` backend without the trait's boxed
/// futures; the same backend added as any other goes through the trait,
/// and admits and runs alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wasm_backend_added_as_any_backend_admits_and_runs_alike() {
    let dir = TempDir::new().unwrap();
    let host = ToolHost::open(dir.path(), config()).unwrap();
    host.register(&wasm(guests::CALCULATOR), Grants::default())
        .await
        .unwrap();
    let engine = Engine::builder()
        .backend(work_engine::backends::WasmBackend::new(Arc::new(host)))
        .build()
        .unwrap();
    let call = |args| NewJob::tool_call("acme", "calculator", args);
    let done = submit_and_wait(&engine, call(json!({"op": "mul", "a": 6, "b": 7})), LONG).await;
    assert_eq!(done.status, JobStatus::Succeeded, "{done:?}");
    assert_eq!(done.result, Some(json!(42.0)));
    assert_eq!(done.backend.as_deref(), Some("wasm"));
    let err = engine.submit(call(json!({"op": "pow"}))).await.unwrap_err();
    assert!(
        matches!(&err, EngineError::InvalidArgs { violations, .. } if !violations.is_empty()),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tool_calls_are_refused_at_admission_with_every_violation() {
    let (_dir, engine) = engine_with(&[guests::CALCULATOR]).await;
    let err = engine
        .submit(NewJob::tool_call(
            "acme",
            "calculator",
            json!({"op": "pow", "a": "two"}),
        ))
        .await
        .unwrap_err();
    let EngineError::InvalidArgs { tool, violations } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(tool, "calculator");
    let paths: Vec<&str> = violations.iter().map(|v| v.path.as_str()).collect();
    assert!(paths.contains(&"/op"), "{violations:?}");
    assert!(paths.contains(&"/a"), "{violations:?}");
    assert!(violations.len() >= 3, "b is missing too: {violations:?}");
    assert_eq!(err.code(), "invalid_args");

    let unknown = engine
        .submit(NewJob::tool_call("acme", "nope", json!({})))
        .await
        .unwrap_err();
    assert_eq!(
        unknown,
        EngineError::UnknownTool {
            name: "nope".into()
        }
    );
    let no_tool = engine
        .submit(NewJob::new("tool_call", "acme", json!({"args": {}})))
        .await
        .unwrap_err();
    assert_eq!(no_tool.code(), "invalid_job", "{no_tool}");
    assert!(
        engine
            .list(&JobQuery::tenant("acme"))
            .await
            .unwrap()
            .jobs
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_argument_size_limit_counts_the_json_text_at_admission() {
    let (_dir, engine) = engine_with(&[guests::CALCULATOR]).await;
    let limit = config().max_args_bytes;
    // Arguments whose JSON text is exactly `len` bytes.
    let sized = |len: usize| {
        let bare = json!({"op": "add", "a": 1, "b": 2, "pad": ""})
            .to_string()
            .len();
        let args = json!({"op": "add", "a": 1, "b": 2, "pad": "x".repeat(len - bare)});
        assert_eq!(args.to_string().len(), len);
        NewJob::tool_call("acme", "calculator", args)
    };

    let over = engine.submit(sized(limit + 1)).await.unwrap_err();
    assert_eq!(over.code(), "invalid_job", "{over}");
    let expected = format!(
        "arguments of {} bytes are over the {limit}-byte limit",
        limit + 1
    );
    assert!(over.to_string().contains(&expected), "{over}");

    let at = engine.submit(sized(limit)).await.unwrap();
    let done = engine.wait(at.id, LONG).await.unwrap();
    assert_eq!(done.result, Some(json!(3.0)), "{done:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_one_invalid_job_is_refused_whole() {
    let (_dir, engine) = engine_with(&[guests::CALCULATOR]).await;
    let good =
        |a: i32| NewJob::tool_call("acme", "calculator", json!({"op": "add", "a": a, "b": 1}));
    let bad = NewJob::tool_call("acme", "calculator", json!({"op": "add", "a": 1}));
    let err = engine
        .submit_batch(vec![good(1), bad, good(3)])
        .await
        .unwrap_err();
    let EngineError::Batch { index, source } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(*index, 1);
    assert!(
        matches!(**source, EngineError::InvalidArgs { .. }),
        "{source:?}"
    );
    assert_eq!(err.code(), "invalid_args");
    assert!(
        engine
            .list(&JobQuery::tenant("acme"))
            .await
            .unwrap()
            .jobs
            .is_empty(),
        "none stored"
    );
    assert_eq!(engine.stats().jobs.queued, 0);

    let batch = engine
        .submit_batch(vec![good(1), good(2), good(3)])
        .await
        .unwrap();
    assert!(batch.jobs.iter().all(|job| job.batch_id == Some(batch.id)));
    let mut results = Vec::new();
    for job in &batch.jobs {
        results.push(
            engine
                .wait(job.id, LONG)
                .await
                .unwrap()
                .result
                .clone()
                .unwrap(),
        );
    }
    assert_eq!(results, [json!(2.0), json!(3.0), json!(4.0)]);
    let listed = engine
        .list(&JobQuery::tenant("acme").batch(batch.id))
        .await
        .unwrap();
    assert_eq!(listed.jobs.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_infinite_loop_interrupts_it() {
    let (_dir, engine) = engine_with(&[guests::INFINITE_LOOP]).await;
    let mut events = engine.subscribe();
    let job = NewJob::tool_call("acme", "infinite_loop", json!({})).with_resources(Resources {
        timeout_ms: Some(600_000),
        fuel: Some(u64::MAX / 2),
        ..Resources::default()
    });
    let job = engine.submit(job).await.unwrap();
    loop {
        let event = events.recv().await.unwrap();
        if event.job_id == Some(job.id) && matches!(event.data, EventData::Started { .. }) {
            break;
        }
    }
    let asked = std::time::Instant::now();
    engine.cancel(job.id).await.unwrap();
    let done = engine.wait(job.id, LONG).await.unwrap();
    let took = asked.elapsed();
    assert_eq!(done.status, JobStatus::Canceled, "{done:?}");
    assert_eq!(done.outcome, Some(OutcomeClass::Canceled));
    assert!(!done.dead_letter);
    // Not a timing assertion on a busy machine: it ended by cancellation
    // long before its ten-minute deadline.
    assert!(took < Duration::from_secs(60), "{took:?}");
    assert_eq!(engine.stats().resources.cpu_in_use, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_failures_follow_the_retry_policy() {
    let (_dir, engine) = engine_with(&[guests::FLAKY, guests::TRAP, guests::INFINITE_LOOP]).await;
    let fast = RetryPolicy {
        max_attempts: 3,
        base_delay_ms: 1,
        ..RetryPolicy::default()
    };
    let flaky = NewJob::tool_call("acme", "flaky", json!({"succeed_on": 3}))
        .with_retry_policy(fast.clone());
    let done = submit_and_wait(&engine, flaky, LONG).await;
    assert_eq!((done.status, done.attempt), (JobStatus::Succeeded, 3));
    assert_eq!(done.result, Some(json!(3)));

    let trap = NewJob::tool_call("acme", "trap", json!({})).with_retry_policy(fast.clone());
    let done = submit_and_wait(&engine, trap, LONG).await;
    assert_eq!((done.status, done.attempt), (JobStatus::Failed, 3));
    assert_eq!(done.outcome, Some(OutcomeClass::Trap));
    assert!(done.dead_letter);

    let spin = NewJob::tool_call("acme", "infinite_loop", json!({}))
        .with_resources(Resources {
            timeout_ms: Some(50),
            fuel: Some(u64::MAX / 2),
            ..Resources::default()
        })
        .with_retry_policy(RetryPolicy {
            max_attempts: 2,
            ..fast
        });
    let done = submit_and_wait(&engine, spin, LONG).await;
    assert_eq!((done.status, done.attempt), (JobStatus::Timeout, 2));
    assert_eq!(done.error.as_ref().unwrap().code, "timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chatty_tool_streams_progress_and_partials_as_events() {
    let (_dir, engine) = engine_with(&[guests::CHATTY]).await;
    let mut events = engine.subscribe();
    let job = engine
        .submit(NewJob::tool_call("acme", "chatty", json!({"steps": 3})))
        .await
        .unwrap();
    let mut updates = Vec::new();
    loop {
        let event = events.recv().await.unwrap();
        if event.job_id != Some(job.id) {
            continue;
        }
        if let EventData::Progress { update, .. } = &event.data {
            updates.push(update.clone());
        }
        if event.data.is_terminal() {
            assert_eq!(event.data.name(), "job.completed");
            break;
        }
    }
    let partials: Vec<_> = updates
        .iter()
        .filter_map(|u| match u {
            ExecUpdate::Partial { value } => Some(value.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        partials,
        [json!({"step": 1}), json!({"step": 2}), json!({"step": 3})]
    );
    let progress = updates
        .iter()
        .filter(|u| matches!(u, ExecUpdate::Progress { .. }))
        .count();
    assert_eq!(progress, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_closures_run_native_kinds_with_devices() {
    let local = LocalBackend::new().handle("training_step", |job, ctx| async move {
        ctx.progress(0.5, "halfway");
        Ok(json!({
            "devices": ctx.devices().iter().map(|d| d.id.clone()).collect::<Vec<_>>(),
            "lr": job.payload.parse::<Value>().unwrap()["lr"],
        }))
    });
    let engine = Engine::builder()
        .capacity(
            Capacity {
                cpu: 2.0,
                memory_mb: 1024,
                gpus: Vec::new(),
            }
            .with_gpus("H100", ["3"]),
        )
        .backend(local)
        .build()
        .unwrap();
    let job = NewJob::new("training_step", "lab", json!({"lr": 0.01})).with_resources(Resources {
        gpu_count: 1,
        ..Resources::default()
    });
    let done = submit_and_wait(&engine, job, LONG).await;
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.result, Some(json!({"devices": ["3"], "lr": 0.01})));
    assert_eq!(done.backend.as_deref(), Some("local"));
}

/// Two jobs that hold their thread while they run (work that never
/// awaits), on an engine with two runners and a runtime with two worker
/// threads, run side by side. The runner that takes the first wakes the
/// other for the second; the woken runner waits in the waking worker's
/// next-task slot, which the idle worker cannot steal from, so unless the
/// waking runner lets go of its worker first, the second job starts only
/// when the first has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_that_hold_their_thread_run_side_by_side_on_two_runners() {
    let started = Arc::new(AtomicUsize::new(0));
    let local = LocalBackend::new().handle("hold", {
        let started = Arc::clone(&started);
        move |_job, _ctx| {
            let started = Arc::clone(&started);
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                // Waits for the other job to start, giving up after a while.
                let give_up = std::time::Instant::now() + Duration::from_secs(5);
                let together = loop {
                    if started.load(Ordering::SeqCst) == 2 {
                        break true;
                    }
                    if std::time::Instant::now() > give_up {
                        break false;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                };
                Ok(json!({ "together": together }))
            }
        }
    });
    let engine = Engine::builder()
        .capacity(Capacity {
            cpu: 2.0,
            memory_mb: 1024,
            gpus: Vec::new(),
        })
        .runners(2)
        .backend(local)
        .build()
        .unwrap();
    let jobs = (0..2)
        .map(|_| NewJob::new("hold", "lab", json!({})))
        .collect();
    let submitted = engine.submit_batch(jobs).await.unwrap().jobs;
    for job in submitted {
        let done = engine.wait(job.id, LONG).await.unwrap();
        assert_eq!(done.status, JobStatus::Succeeded);
        assert_eq!(done.result, Some(json!({ "together": true })), "{done:?}");
    }
}

/// A backend that panics (a `local` closure meeting a payload it did not
/// expect) fails that attempt as `backend_error`: the runner that polled
/// it, the CPU the job held, and the jobs after it are not lost with it.
/// Both ways an attempt runs: polled in place by a runner (a panic at
/// once) and in a task of its own (a panic after a wait).
#[tokio::test(start_paused = true)]
async fn a_panicking_backend_fails_its_attempt_and_the_engine_goes_on() {
    let local = LocalBackend::new().handle("step", |job, _ctx| async move {
        match job.payload.field("panic") {
            Some(r#""at once""#) => panic!("no field `x` in {}", job.payload),
            Some(r#""later""#) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                panic!("gave up after a wait");
            }
            _ => Ok(json!("done")),
        }
    });
    let engine = Engine::builder()
        .capacity(Capacity {
            cpu: 1.0,
            memory_mb: 1024,
            gpus: Vec::new(),
        })
        .backend(local)
        .build()
        .unwrap();
    for (how, message) in [
        ("at once", "no field `x` in"),
        ("later", "gave up after a wait"),
    ] {
        let job = NewJob::new("step", "lab", json!({ "panic": how }));
        let done = submit_and_wait(&engine, job, LONG).await;
        assert_eq!(done.status, JobStatus::Failed, "{how}");
        assert_eq!(done.outcome, Some(OutcomeClass::BackendError), "{how}");
        let error = done.error.as_ref().unwrap();
        assert!(
            error.message.contains("panicked") && error.message.contains(message),
            "{how}: {error:?}"
        );
    }
    // The only core is free again, and a runner is there to use it.
    let fine = NewJob::new("step", "lab", json!({}));
    let done = submit_and_wait(&engine, fine, LONG).await;
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(engine.stats().jobs.running, 0);
}

/// A backend that panics while it looks a job over.
struct Brittle;

#[async_trait::async_trait]
impl Backend for Brittle {
    fn name(&self) -> &str {
        "brittle"
    }

    fn supports(&self, job: &Job) -> bool {
        let step = job.payload.field("panic");
        assert_ne!(step, Some(r#""supports""#), "cannot read the payload");
        true
    }

    async fn admit(&self, job: &Job) -> Result<(), AdmitError> {
        tokio::task::yield_now().await;
        let step = job.payload.field("panic");
        assert_ne!(step, Some(r#""admit""#), "cannot check the payload");
        Ok(())
    }

    async fn execute(&self, _job: &Job, _ctx: ExecContext) -> Result<Value, ExecError> {
        Ok(json!("ran"))
    }
}

/// A backend that panics in `supports` or `admit` refuses the submission
/// with a `backend_error` naming it, instead of unwinding into the caller;
/// nothing of the submission (or of a batch it was in) is accepted, and
/// the engine goes on.
#[tokio::test]
async fn a_backend_that_panics_at_admission_refuses_the_submission() {
    let engine = Engine::builder()
        .capacity(Capacity {
            cpu: 1.0,
            memory_mb: 1024,
            gpus: Vec::new(),
        })
        .backend(Brittle)
        .build()
        .unwrap();
    for (step, message) in [
        ("supports", "cannot read the payload"),
        ("admit", "cannot check the payload"),
    ] {
        let job = NewJob::new("step", "lab", json!({ "panic": step }));
        let err = engine.submit(job).await.unwrap_err();
        assert_eq!(err.code(), "backend_error", "{step}: {err}");
        let EngineError::Backend { backend, reason } = &err else {
            panic!("{step}: {err:?}");
        };
        assert_eq!(backend, "brittle");
        assert!(
            reason.contains("panicked") && reason.contains(message),
            "{step}: {reason}"
        );

        let batch = vec![
            NewJob::new("step", "lab", json!({})),
            NewJob::new("step", "lab", json!({ "panic": step })),
        ];
        let err = engine.submit_batch(batch).await.unwrap_err();
        assert_eq!(err.code(), "backend_error", "{step}: {err}");
        assert!(
            matches!(err, EngineError::Batch { index: 1, .. }),
            "{err:?}"
        );
    }
    let stats = engine.stats();
    assert_eq!((stats.jobs.queued, stats.jobs.running), (0, 0));
    let listed = engine.list(&JobQuery::tenant("lab")).await.unwrap();
    assert!(listed.jobs.is_empty(), "none stored: {listed:?}");

    let done = submit_and_wait(&engine, NewJob::new("step", "lab", json!({})), LONG).await;
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.result, Some(json!("ran")));
}
