//! One test per guest (the macros below fail to compile if one is missing):
//! each example tool gives its documented result, each fixture ends in its
//! documented outcome class.

use crate::support::{host_with, with_timeout};
use serde_json::json;
use work_engine::OutcomeClass;
use work_engine::runtime::CallOptions;
use work_test_artifacts as guests;

macro_rules! assert_test_exists {
    ($name:ident) => {
        #[expect(unused_imports, reason = "only checks that the test exists")]
        use self::$name as _;
    };
}
work_test_artifacts::foreach_tool!(assert_test_exists);
work_test_artifacts::foreach_fixture!(assert_test_exists);

#[tokio::test]
async fn calculator() {
    let (_dir, host) = host_with(&[guests::CALCULATOR]).await;
    for (args, expected) in [
        (json!({"op": "add", "a": 2, "b": 2}), 4.0),
        (json!({"op": "sub", "a": 2, "b": 5}), -3.0),
        (json!({"op": "mul", "a": 1.5, "b": 4}), 6.0),
        (json!({"op": "div", "a": 1, "b": 4}), 0.25),
    ] {
        let report = host
            .call("calculator", &args.to_string(), CallOptions::default())
            .await
            .unwrap();
        assert_eq!(report.outcome.unwrap(), json!(expected), "{args}");
        assert!(report.usage.fuel_consumed > 0);
        assert!(report.usage.peak_memory_bytes > 0);
    }
    let report = host
        .call(
            "calculator",
            r#"{"op": "div", "a": 1, "b": 0}"#,
            CallOptions::default(),
        )
        .await
        .unwrap();
    let failure = report.outcome.unwrap_err();
    assert_eq!(failure.class, OutcomeClass::ToolError);
    assert_eq!(
        failure.tool_error,
        Some(work_engine::runtime::ToolErrorKind::Failed)
    );
    assert_eq!(failure.message, "division by zero");
}

#[tokio::test]
async fn text_stats() {
    let (_dir, host) = host_with(&[guests::TEXT_STATS]).await;
    let text = "The cat saw the dog.\nThe dog ran; the cat sat.\nEnd";
    let report = host
        .call(
            "text_stats",
            &json!({ "text": text }).to_string(),
            CallOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        report.outcome.unwrap(),
        json!({
            "characters": 50,
            "words": 12,
            "lines": 3,
            "top_words": [
                {"word": "the", "count": 4},
                {"word": "cat", "count": 2},
                {"word": "dog", "count": 2},
                {"word": "end", "count": 1},
                {"word": "ran", "count": 1}
            ]
        })
    );
}

#[tokio::test]
async fn file_read() {
    // Grants and escapes are covered in calls::file_read_*; here the
    // ungranted tool finds nothing at all.
    let (_dir, host) = host_with(&[guests::FILE_READ]).await;
    let report = host
        .call(
            "file_read",
            r#"{"path": "/etc/hostname"}"#,
            CallOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(report.class(), OutcomeClass::ToolError);
}

#[tokio::test]
async fn infinite_loop() {
    let (_dir, host) = host_with(&[guests::INFINITE_LOOP]).await;
    let deadline_ms = 300;
    let report = host
        .call(
            "infinite_loop",
            "{}",
            CallOptions {
                fuel: Some(u64::MAX / 2),
                ..with_timeout(deadline_ms)
            },
        )
        .await
        .unwrap();
    assert_eq!(report.class(), OutcomeClass::Timeout, "{report:?}");
    // Close to the deadline: never before it, and within 2x even on a
    // loaded machine (the bench measures the real lateness: about 1 ms).
    let took = report.usage.total().as_millis() as u64;
    assert!(took >= deadline_ms - 1, "stopped early: {took} ms");
    assert!(took < deadline_ms * 2, "stopped late: {took} ms");

    let report = host
        .call(
            "infinite_loop",
            "{}",
            CallOptions {
                fuel: Some(5_000_000),
                ..with_timeout(60_000)
            },
        )
        .await
        .unwrap();
    assert_eq!(report.class(), OutcomeClass::OutOfFuel, "{report:?}");
    assert_eq!(report.usage.fuel_consumed, 5_000_000);
}

#[tokio::test]
async fn memory_hog() {
    let (_dir, host) = host_with(&[guests::MEMORY_HOG]).await;
    for memory_mb in [16, 64] {
        let report = host
            .call(
                "memory_hog",
                "{}",
                CallOptions {
                    memory_mb: Some(memory_mb),
                    ..CallOptions::default()
                },
            )
            .await
            .unwrap();
        let failure = report.outcome.as_ref().unwrap_err();
        assert_eq!(failure.class, OutcomeClass::OutOfMemory, "{failure:?}");
        assert!(
            failure.message.contains(&format!("{memory_mb} MiB")),
            "{failure:?}"
        );
        assert!(report.usage.peak_memory_bytes <= memory_mb << 20);
        assert!(report.usage.peak_memory_bytes > (memory_mb - 2) << 20);
    }
}

#[tokio::test]
async fn trap() {
    let (_dir, host) = host_with(&[guests::TRAP]).await;
    let report = host
        .call("trap", "{}", CallOptions::default())
        .await
        .unwrap();
    let failure = report.outcome.unwrap_err();
    assert_eq!(failure.class, OutcomeClass::Trap);
    assert!(
        failure
            .message
            .contains("the trap fixture panics on purpose"),
        "{failure:?}"
    );
    assert!(report.stderr.contains("panicked"));
}

#[tokio::test]
async fn flaky() {
    let (_dir, host) = host_with(&[guests::FLAKY]).await;
    for attempt in 1..=4 {
        let report = host
            .call(
                "flaky",
                r#"{"succeed_on": 3}"#,
                CallOptions {
                    attempt: Some(attempt),
                    ..CallOptions::default()
                },
            )
            .await
            .unwrap();
        if attempt < 3 {
            let failure = report.outcome.unwrap_err();
            assert_eq!(failure.class, OutcomeClass::Retryable);
            assert!(failure.class.is_retryable());
        } else {
            assert_eq!(report.outcome.unwrap(), json!(attempt));
        }
    }
}

#[tokio::test]
async fn chatty() {
    use std::sync::{Arc, Mutex};
    use work_engine::runtime::{CallEvent, LogLevel};

    let (_dir, host) = host_with(&[guests::CHATTY]).await;
    let seen: Arc<Mutex<Vec<CallEvent>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let report = host
        .call(
            "chatty",
            r#"{"steps": 3}"#,
            CallOptions {
                events: Some(Arc::new(move |event: &CallEvent| {
                    sink.lock().unwrap().push(event.clone())
                })),
                ..CallOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(report.outcome.unwrap(), json!({"steps": 3}));
    let mut expected = Vec::new();
    for step in 1..=3u32 {
        expected.push(CallEvent::Log {
            level: LogLevel::Info,
            message: format!("step {step} of 3"),
        });
        expected.push(CallEvent::Progress {
            fraction: step as f32 / 3.0,
            message: format!("step {step}"),
        });
        expected.push(CallEvent::Partial {
            value: json!({ "step": step }),
        });
    }
    assert_eq!(*seen.lock().unwrap(), expected);
    assert_eq!(report.stdout, "chatty starts\n");
    assert_eq!(report.stderr, "chatty on stderr\n");
}

#[tokio::test]
async fn recurse() {
    let (_dir, host) = host_with(&[guests::RECURSE]).await;
    let report = host
        .call("recurse", "{}", CallOptions::default())
        .await
        .unwrap();
    let failure = report.outcome.unwrap_err();
    assert_eq!(failure.class, OutcomeClass::Trap);
    assert!(failure.message.contains("stack overflow"), "{failure:?}");
}

#[tokio::test]
async fn big_output() {
    let (_dir, host) = host_with(&[guests::BIG_OUTPUT]).await;
    let report = host
        .call("big_output", "{}", CallOptions::default())
        .await
        .unwrap();
    let failure = report.outcome.unwrap_err();
    assert_eq!(failure.class, OutcomeClass::ToolError);
    assert!(
        failure.message.contains("over the 1048576-byte limit"),
        "{failure:?}"
    );
    // Under the limit the same tool succeeds.
    let report = host
        .call("big_output", r#"{"bytes": 1000}"#, CallOptions::default())
        .await
        .unwrap();
    assert_eq!(report.outcome.unwrap().as_str().unwrap().len(), 1000);
}

/// What `sandbox_probe` saw when asked to write to `path`.
async fn probe(host: &work_engine::ToolHost, path: &str) -> serde_json::Value {
    let args = json!({ "write": path }).to_string();
    host.call("sandbox_probe", &args, CallOptions::default())
        .await
        .unwrap()
        .outcome
        .unwrap()
}

#[tokio::test]
async fn sandbox_probe() {
    use work_engine::runtime::{DirGrant, Grants};

    let (_dir, host) = host_with(&[guests::SANDBOX_PROBE]).await;
    let files = tempfile::TempDir::new().unwrap();

    // Nothing granted: no environment, nowhere to write.
    let seen = probe(&host, "/tmp/x").await;
    assert_eq!(seen["env"], json!({}), "{seen}");
    assert_ne!(seen["write"], "ok");

    // A directory grant is read-only unless it says `:rw`. (Environment
    // grants are tested through the CLI, which owns its environment.)
    let mut read_only = Grants {
        dirs: vec![
            format!("{}:/data", files.path().display())
                .parse::<DirGrant>()
                .unwrap(),
        ],
        env: vec![],
    };
    let dir = tempfile::TempDir::new().unwrap();
    let host = crate::support::host(&dir);
    host.register(
        &crate::support::wasm(guests::SANDBOX_PROBE),
        read_only.clone(),
    )
    .await
    .unwrap();
    let seen = probe(&host, "/data/out.txt").await;
    assert_ne!(seen["write"], "ok", "a grant is read-only by default");
    assert!(!files.path().join("out.txt").exists());

    // `:rw` lets it write, inside the grant only.
    read_only.dirs[0].writable = true;
    host.register(&crate::support::wasm(guests::SANDBOX_PROBE), read_only)
        .await
        .unwrap();
    let seen = probe(&host, "/data/out.txt").await;
    assert_eq!(seen["write"], "ok");
    assert_eq!(
        std::fs::read_to_string(files.path().join("out.txt")).unwrap(),
        "probe"
    );
    let seen = probe(&host, "/data/../escape.txt").await;
    assert_ne!(seen["write"], "ok");
    assert!(!files.path().parent().unwrap().join("escape.txt").exists());
}

#[tokio::test]
async fn misbehave() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    let (_dir, host) = host_with(&[guests::MISBEHAVE]).await;
    let call = |mode: &str, options: CallOptions| {
        let args = json!({ "mode": mode }).to_string();
        let host = &host;
        async move { host.call("misbehave", &args, options).await.unwrap() }
    };

    // Blocked in a host call: the backstop ends it at the deadline.
    let report = call("sleep", with_timeout(200)).await;
    assert_eq!(report.class(), OutcomeClass::Timeout, "{report:?}");
    assert!(report.usage.total() < Duration::from_secs(5), "{report:?}");

    // ... or when cancelled.
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        trigger.cancel();
    });
    let options = CallOptions {
        cancel: Some(cancel),
        ..with_timeout(60_000)
    };
    let report = call("sleep", options).await;
    assert_eq!(report.class(), OutcomeClass::Canceled, "{report:?}");

    let report = call("bad_partial", CallOptions::default()).await;
    let failure = report.outcome.unwrap_err();
    assert_eq!(failure.class, OutcomeClass::Trap);
    assert!(
        failure.message.contains("partial result is not JSON"),
        "{failure:?}"
    );

    // Floods succeed for the guest and are bounded for the host.
    let logged = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&logged);
    let options = CallOptions {
        events: Some(Arc::new(move |event: &work_engine::runtime::CallEvent| {
            if let work_engine::runtime::CallEvent::Log { message, .. } = event {
                counter.fetch_add(message.len(), Ordering::Relaxed);
            }
        })),
        ..CallOptions::default()
    };
    let report = call("log_flood", options).await;
    assert_eq!(report.outcome.unwrap(), json!("survived"));
    let budget = work_engine::runtime::RuntimeConfig::default().max_log_bytes;
    let logged = logged.load(Ordering::Relaxed);
    assert!(
        logged <= budget + 8 && logged >= budget - 1024,
        "{logged} bytes logged"
    );

    let report = call("print_flood", CallOptions::default()).await;
    assert_eq!(report.outcome.unwrap(), json!("survived"));
    assert_eq!(
        report.stdout.len(),
        work_engine::runtime::RuntimeConfig::default().max_output_bytes
    );
}
