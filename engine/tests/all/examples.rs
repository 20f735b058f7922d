//! Every example runs and prints what its doc comment promises.

use std::path::PathBuf;
use std::process::Command;

use work_test_artifacts as guests;

/// `cargo test` builds the examples next to the test binaries.
fn run(name: &str, args: &[&str]) -> String {
    let exe = std::env::current_exe().unwrap();
    let dir: PathBuf = exe.parent().unwrap().parent().unwrap().join("examples");
    let output = Command::new(dir.join(name))
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("example {name} not built in {}: {err}", dir.display()));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{name} failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn basic_job() {
    let out = run("basic_job", &[guests::CALCULATOR]);
    assert!(out.contains("succeeded: 42.0"), "{out}");
}

#[test]
fn priority_queues() {
    let out = run("priority_queues", &[]);
    let order: Vec<&str> = out.lines().map(|l| l.split(' ').nth(1).unwrap()).collect();
    assert_eq!(
        order,
        [
            "blocker",
            "realtime-1",
            "realtime-2",
            "interactive-1",
            "interactive-2",
            "batch-1",
            "batch-2",
            "offline-1",
            "offline-2"
        ],
        "{out}"
    );
}

#[test]
fn custom_backend() {
    let out = run("custom_backend", &[]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("succeeded on trainer"), "{out}");
    assert!(lines[1].contains(r#""devices":["0","1"]"#), "{out}");
}

#[test]
fn telemetry_events() {
    let out = run("telemetry_events", &[]);
    let types: Vec<String> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["type"].as_str().map(str::to_owned))
        .collect();
    for expected in ["job.submitted", "job.started", "job.retry", "job.completed"] {
        assert!(
            types.iter().any(|t| t == expected),
            "{expected} missing: {out}"
        );
    }
    assert_eq!(types.last().map(String::as_str), Some("job.completed"));
    assert!(out.contains("\"succeeded\": 1"), "{out}");
}

#[test]
fn retry_policies() {
    let out = run("retry_policies", &[]);
    assert!(
        out.contains("Exponential: succeeded after 4 attempts, waits [20, 40, 80] ms"),
        "{out}"
    );
    assert!(
        out.contains("Linear: succeeded after 4 attempts, waits [20, 40, 60] ms"),
        "{out}"
    );
    assert!(
        out.contains("Constant: succeeded after 4 attempts, waits [20, 20, 20] ms"),
        "{out}"
    );
    assert!(
        out.contains("failed after 2 attempts; dead letters: 1"),
        "{out}"
    );
}

#[test]
fn tenant_fairness() {
    let out = run("tenant_fairness", &[]);
    let waited: usize = out
        .split("started after ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    // The bound, plus the one job already dispatched when it was submitted.
    assert!(waited <= 17, "{out}");
    // Weights 2:1 while both flood: big-co gets two thirds.
    let big: usize = out
        .split("\"big-co\": ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!((190..=210).contains(&big), "{out}");
}
