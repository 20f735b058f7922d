//! Calls through the library: isolation, cancellation, grants, argument
//! validation and limits.

use crate::support::{host_with, wasm, with_timeout};
use serde_json::json;
use std::time::Duration;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;
use work_engine::runtime::{CallOptions, DirGrant, Grants};
use work_engine::{Error, OutcomeClass};
use work_test_artifacts as guests;

const ADD: &str = r#"{"op": "add", "a": 20, "b": 22}"#;

#[tokio::test]
async fn hostile_calls_leave_the_engine_healthy() {
    let (_dir, host) = host_with(&[
        guests::CALCULATOR,
        guests::INFINITE_LOOP,
        guests::MEMORY_HOG,
        guests::TRAP,
        guests::RECURSE,
    ])
    .await;
    let hostile = [
        ("infinite_loop", OutcomeClass::Timeout),
        ("memory_hog", OutcomeClass::OutOfMemory),
        ("trap", OutcomeClass::Trap),
        ("recurse", OutcomeClass::Trap),
    ];
    for round in 0..2 {
        for (tool, class) in hostile {
            // Only the spinning guest needs a short deadline; the others
            // must end in their own class, however slow the machine.
            let deadline_ms = if tool == "infinite_loop" { 100 } else { 60_000 };
            let options = CallOptions {
                fuel: Some(u64::MAX / 2),
                ..with_timeout(deadline_ms)
            };
            let report = host.call(tool, "{}", options).await.unwrap();
            assert_eq!(report.class(), class, "{tool} in round {round}");
            let report = host
                .call("calculator", ADD, CallOptions::default())
                .await
                .unwrap();
            assert_eq!(report.outcome.unwrap(), json!(42.0), "after {tool}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_each_get_their_own_instance() {
    let (_dir, host) = host_with(&[guests::CALCULATOR, guests::TRAP]).await;
    let host = std::sync::Arc::new(host);
    let mut tasks = Vec::new();
    // As many as the test pool has slots: on a busy machine the calls
    // yield and all overlap, and one more would be refused for want of a
    // slot (a `backend_error`, tested elsewhere).
    for i in 0..16 {
        let host = std::sync::Arc::clone(&host);
        tasks.push(tokio::spawn(async move {
            if i % 4 == 0 {
                let report = host
                    .call("trap", "{}", CallOptions::default())
                    .await
                    .unwrap();
                assert_eq!(report.class(), OutcomeClass::Trap);
            } else {
                let args = json!({"op": "mul", "a": i, "b": 2}).to_string();
                let report = host
                    .call("calculator", &args, CallOptions::default())
                    .await
                    .unwrap();
                assert_eq!(report.outcome.unwrap(), json!(f64::from(i * 2)));
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test]
async fn cancel_interrupts_a_guest_that_never_asks() {
    let (_dir, host) = host_with(&[guests::INFINITE_LOOP]).await;
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        trigger.cancel();
    });
    let report = host
        .call(
            "infinite_loop",
            "{}",
            CallOptions {
                cancel: Some(cancel),
                fuel: Some(u64::MAX / 2),
                ..with_timeout(60_000)
            },
        )
        .await
        .unwrap();
    assert_eq!(report.class(), OutcomeClass::Canceled, "{report:?}");
    assert!(report.usage.total() < Duration::from_secs(10));
}

async fn file_read_host(grant: Option<&str>) -> (TempDir, TempDir, work_engine::ToolHost) {
    let files = TempDir::new().unwrap();
    std::fs::write(files.path().join("notes.txt"), "granted text").unwrap();
    std::fs::create_dir(files.path().join("sub")).unwrap();
    std::fs::write(files.path().join("sub/deep.txt"), "deeper").unwrap();
    let dir = TempDir::new().unwrap();
    let host = crate::support::host(&dir);
    let grants = Grants {
        dirs: grant
            .map(|g| {
                let spec = g.replace("$FILES", &files.path().display().to_string());
                vec![spec.parse::<DirGrant>().unwrap()]
            })
            .unwrap_or_default(),
        env: vec![],
    };
    host.register(&wasm(guests::FILE_READ), grants)
        .await
        .unwrap();
    (files, dir, host)
}

async fn read(
    host: &work_engine::ToolHost,
    path: &str,
) -> Result<serde_json::Value, work_engine::runtime::CallFailure> {
    let args = json!({ "path": path }).to_string();
    host.call("file_read", &args, CallOptions::default())
        .await
        .unwrap()
        .outcome
}

#[tokio::test]
async fn file_read_sees_inside_its_grant_only() {
    let (files, _dir, host) = file_read_host(Some("$FILES:/data")).await;
    let file = read(&host, "/data/notes.txt").await.unwrap();
    assert_eq!(file["content"], "granted text");
    assert_eq!(
        read(&host, "/data/sub/deep.txt").await.unwrap()["content"],
        "deeper"
    );
    assert_eq!(
        read(&host, "/data/sub/../notes.txt").await.unwrap()["bytes"],
        12
    );

    // Outside the grant, every way round.
    let outside = files.path().parent().unwrap().join("outside.txt");
    std::fs::write(&outside, "secret").unwrap();
    for path in [
        "/data/../outside.txt".to_owned(),
        "/data/../../etc/passwd".to_owned(),
        "/etc/passwd".to_owned(),
        outside.display().to_string(),
        "../outside.txt".to_owned(),
    ] {
        let failure = read(&host, &path).await.unwrap_err();
        assert_eq!(
            failure.class,
            OutcomeClass::ToolError,
            "{path}: {failure:?}"
        );
    }
    std::fs::remove_file(outside).unwrap();
}

#[tokio::test]
async fn file_read_grant_is_read_only_by_default_and_needed_at_all() {
    let (_files, _dir, host) = file_read_host(None).await;
    let failure = read(&host, "/data/notes.txt").await.unwrap_err();
    assert_eq!(failure.class, OutcomeClass::ToolError);
    assert!(failure.message.contains("cannot read"), "{failure:?}");
}

#[tokio::test]
async fn invalid_arguments_list_every_violation_before_any_instance() {
    let (_dir, host) = host_with(&[guests::CALCULATOR]).await;
    let err = host
        .call(
            "calculator",
            r#"{"op": "pow", "a": "two"}"#,
            CallOptions::default(),
        )
        .await
        .unwrap_err();
    let Error::InvalidArgs { tool, violations } = &err else {
        panic!("expected InvalidArgs, got {err:?}");
    };
    assert_eq!(tool, "calculator");
    let mut paths: Vec<&str> = violations.iter().map(|v| v.path.as_str()).collect();
    paths.sort();
    assert_eq!(paths, ["", "/a", "/op"], "{violations:?}");
    assert!(violations.iter().any(|v| v.message.contains("\"b\"")));
    assert_eq!(err.code(), "invalid_args");

    let err = host
        .call("calculator", "{not json", CallOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgs { .. }), "{err:?}");
    assert!(err.to_string().contains("not JSON"), "{err}");
}

#[tokio::test]
async fn unknown_tools_and_bad_limits_are_refused() {
    let (_dir, host) = host_with(&[guests::CALCULATOR]).await;
    for name in ["nope", "calculator@9.9.9", "../calculator", ""] {
        let err = host
            .call(name, ADD, CallOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::ToolNotFound { .. }), "{name}: {err:?}");
    }
    let err = host
        .call(
            "calculator",
            ADD,
            CallOptions {
                memory_mb: Some(1 << 20),
                ..CallOptions::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::LimitOutOfRange {
                limit: "memory_mb",
                ..
            }
        ),
        "{err:?}"
    );

    let huge = json!({"op": "add", "a": 1, "b": 2, "pad": "x".repeat(2 << 20)}).to_string();
    let err = host
        .call("calculator", &huge, CallOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ArgsTooLarge { .. }), "{err:?}");
}

#[tokio::test]
async fn a_memory_cap_too_small_to_instantiate_is_out_of_memory() {
    let (_dir, host) = host_with(&[guests::CALCULATOR]).await;
    let report = host
        .call(
            "calculator",
            ADD,
            CallOptions {
                memory_mb: Some(1),
                ..CallOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(report.class(), OutcomeClass::OutOfMemory, "{report:?}");
}

#[tokio::test]
async fn a_full_instance_pool_is_a_backend_error_not_a_hang() {
    let dir = TempDir::new().unwrap();
    let config = work_engine::runtime::RuntimeConfig {
        max_concurrent_instances: 1,
        ..crate::support::config()
    };
    let host = std::sync::Arc::new(work_engine::ToolHost::open(dir.path(), config).unwrap());
    for guest in [guests::MISBEHAVE, guests::CALCULATOR] {
        host.register(&wasm(guest), Grants::default())
            .await
            .unwrap();
    }
    // One guest holds the only slot, asleep.
    let cancel = CancellationToken::new();
    let sleeper = {
        let host = std::sync::Arc::clone(&host);
        let options = CallOptions {
            cancel: Some(cancel.clone()),
            ..with_timeout(60_000)
        };
        tokio::spawn(async move {
            host.call("misbehave", r#"{"mode": "sleep"}"#, options)
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let report = host
        .call("calculator", ADD, CallOptions::default())
        .await
        .unwrap();
    let failure = report.outcome.unwrap_err();
    assert_eq!(failure.class, OutcomeClass::BackendError, "{failure:?}");
    assert!(
        failure.message.contains("too many concurrent instances"),
        "{failure:?}"
    );

    // The slot comes back when the sleeper ends.
    cancel.cancel();
    assert_eq!(sleeper.await.unwrap().class(), OutcomeClass::Canceled);
    let report = host
        .call("calculator", ADD, CallOptions::default())
        .await
        .unwrap();
    assert_eq!(report.outcome.unwrap(), json!(42.0));
}
