//! The `work-engine` binary as a user runs it.

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use tempfile::TempDir;
use work_test_artifacts as guests;

struct Cli {
    data: TempDir,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|err| panic!("stdout is not JSON ({err}): {}", self.stdout))
    }
}

impl Cli {
    fn new() -> Self {
        Self {
            data: TempDir::new().unwrap(),
        }
    }

    /// The binary with `args`, on this data directory, default log level.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_work-engine"));
        command
            .args(args)
            .env("WORK_ENGINE_DATA_DIR", self.data.path())
            .env_remove("WORK_ENGINE_LOG");
        command
    }

    fn run(&self, args: &[&str]) -> Run {
        Self::finished(self.command(args).output().unwrap())
    }

    fn finished(output: Output) -> Run {
        let Output {
            status,
            stdout,
            stderr,
        } = output;
        Run {
            code: status.code().unwrap_or(-1),
            stdout: String::from_utf8(stdout).unwrap(),
            stderr: String::from_utf8(stderr).unwrap(),
        }
    }

    fn ok(&self, args: &[&str]) -> Run {
        let run = self.run(args);
        assert_eq!(run.code, 0, "{args:?} failed: {}", run.stderr);
        run
    }

    fn register(&self, wasm: &str) {
        self.ok(&["register", wasm]);
    }
}

#[test]
fn register_then_call_calculator() {
    let cli = Cli::new();
    let run = cli.ok(&["register", guests::CALCULATOR]);
    assert!(
        run.stdout.starts_with("registered calculator@0.1.0"),
        "{}",
        run.stdout
    );

    let run = cli.ok(&[
        "call",
        "calculator",
        "--args",
        r#"{"op": "mul", "a": 6, "b": 7}"#,
    ]);
    assert_eq!(run.stdout.trim(), "42.0");

    let run = cli.ok(&[
        "call",
        "calculator",
        "--args",
        r#"{"op": "sub", "a": 1, "b": 3}"#,
        "--json",
    ]);
    let out = run.json();
    assert_eq!(out["status"], "ok");
    assert_eq!(out["result"], -2.0);
    assert_eq!(out["tool"], "calculator@0.1.0");
    assert!(out["fuel_consumed"].as_u64().unwrap() > 0);
    assert!(out["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(out["usage"]["peak_memory_bytes"].as_u64().unwrap() > 0);

    let run = cli.run(&[
        "call",
        "calculator",
        "--args",
        r#"{"op": "div", "a": 1, "b": 0}"#,
    ]);
    assert_eq!(run.code, 1);
    assert_eq!(run.stderr.trim(), "error: tool_error: division by zero");
}

#[test]
fn call_json_reports_logs_progress_and_partials() {
    let cli = Cli::new();
    cli.register(guests::CHATTY);
    let out = cli
        .ok(&["call", "chatty", "--args", r#"{"steps": 2}"#, "--json"])
        .json();
    assert_eq!(out["result"]["steps"], 2);
    assert_eq!(out["logs"][1]["message"], "step 2 of 2");
    assert_eq!(out["logs"][1]["level"], "info");
    assert_eq!(out["progress"][0]["fraction"], 0.5);
    assert_eq!(
        out["partials"],
        serde_json::json!([{"step": 1}, {"step": 2}])
    );
    assert_eq!(out["stdout"], "chatty starts\n");
}

#[test]
fn hostile_guests_end_in_their_class_and_exit_1() {
    let cli = Cli::new();
    for wasm in [
        guests::INFINITE_LOOP,
        guests::MEMORY_HOG,
        guests::TRAP,
        guests::RECURSE,
        guests::CALCULATOR,
    ] {
        cli.register(wasm);
    }
    let cases: [(&[&str], &str); 5] = [
        (
            &[
                "infinite_loop",
                "--timeout-ms",
                "200",
                "--fuel",
                "100000000000000",
            ],
            "timeout",
        ),
        (&["infinite_loop", "--fuel", "1000000"], "out_of_fuel"),
        (&["memory_hog", "--memory-mb", "16"], "out_of_memory"),
        (&["trap"], "trap"),
        (&["recurse"], "trap"),
    ];
    for (args, class) in cases {
        let mut full = vec!["call"];
        full.extend_from_slice(args);
        full.push("--json");
        let run = cli.run(&full);
        assert_eq!(run.code, 1, "{args:?}: {}", run.stderr);
        let out = run.json();
        assert_eq!(out["status"], "error");
        assert_eq!(out["error"]["code"], class, "{args:?}: {out}");
        // And the next process is fine.
        let run = cli.ok(&[
            "call",
            "calculator",
            "--args",
            r#"{"op": "add", "a": 1, "b": 1}"#,
        ]);
        assert_eq!(run.stdout.trim(), "2.0");
    }
}

#[test]
fn bad_calls_get_clear_errors() {
    let cli = Cli::new();
    cli.register(guests::CALCULATOR);

    let run = cli.run(&[
        "call",
        "calculator",
        "--args",
        r#"{"op": "pow", "a": 1}"#,
        "--json",
    ]);
    assert_eq!(run.code, 1);
    let out = run.json();
    assert_eq!(out["error"]["code"], "invalid_args");
    let paths: Vec<&str> = out["error"]["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"/op") && paths.contains(&""), "{out}");

    let run = cli.run(&["call", "calculator", "--args", r#"{"op": "pow", "a": 1}"#]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("invalid arguments for `calculator`"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("/op"), "{}", run.stderr);

    let run = cli.run(&["call", "nosuchtool", "--args", "{}"]);
    assert_eq!(run.code, 1);
    assert_eq!(run.stderr.trim(), "error: unknown tool `nosuchtool`");

    let run = cli.run(&["call", "calculator", "--args", "{oops"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("not JSON"), "{}", run.stderr);
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    let cli = Cli::new();
    for args in [
        &["call"][..],
        &["call", "calculator", "--timeout-ms", "soon"],
        &["call", "calculator", "--memory-mb", "0"],
        &["frobnicate"],
        &["register"],
        &["register", "x.wasm", "--allow-dir", "a:b:c:rw"],
    ] {
        let run = cli.run(args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert_eq!(
            run.stderr.trim().lines().count(),
            1,
            "{args:?}: {}",
            run.stderr
        );
        assert!(run.stderr.starts_with("error:"), "{}", run.stderr);
    }
}

#[test]
fn register_refuses_what_is_not_a_tool() {
    let cli = Cli::new();
    let dir = cli.data.path();
    let calculator = std::fs::read(guests::CALCULATOR).unwrap();
    let files: [(&str, &[u8], &str); 4] = [
        ("notes.txt", b"hello", "not a WebAssembly file"),
        (
            "core.wasm",
            b"\0asm\x01\0\0\0",
            "core WebAssembly module, not a component",
        ),
        (
            "half.wasm",
            &calculator[..calculator.len() / 2],
            "invalid component",
        ),
        (
            "empty.wasm",
            b"\0asm\x0d\0\x01\0",
            "does not implement the work:tool/tool world",
        ),
    ];
    for (name, bytes, message) in files {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let run = cli.run(&["register", path.to_str().unwrap()]);
        assert_eq!(run.code, 1, "{name}");
        assert!(run.stderr.contains(message), "{name}: {}", run.stderr);
    }
    let run = cli.run(&["register", "/no/such/file.wasm"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("cannot read /no/such/file.wasm"),
        "{}",
        run.stderr
    );
    assert!(
        cli.ok(&["tools", "list", "--json"])
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn tools_list_show_remove() {
    let cli = Cli::new();
    assert!(cli.ok(&["tools"]).stdout.starts_with("no tools registered"));
    cli.register(guests::CALCULATOR);
    cli.register(guests::TEXT_STATS);
    let list = cli.ok(&["tools", "list"]).stdout;
    assert!(list.contains("calculator@0.1.0  Adds, subtracts"), "{list}");
    assert!(list.contains("text_stats@0.1.0"), "{list}");

    let shown = cli.ok(&["tools", "show", "calculator", "--json"]).json();
    assert_eq!(shown[0]["parameters"]["properties"]["op"]["enum"][3], "div");

    let run = cli.ok(&["tools", "remove", "calculator"]);
    assert_eq!(run.stdout.trim(), "removed calculator@0.1.0");
    let run = cli.run(&["tools", "show", "calculator"]);
    assert_eq!(run.code, 1);
    let run = cli.run(&["tools", "remove", "calculator"]);
    assert_eq!(run.code, 1);
    assert_eq!(
        cli.ok(&["tools", "list", "--json"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn file_read_with_a_granted_directory() {
    let cli = Cli::new();
    let files = TempDir::new().unwrap();
    std::fs::write(files.path().join("a.txt"), "from the host").unwrap();
    let grant = format!("{}:/data", files.path().display());
    let run = cli.ok(&["register", guests::FILE_READ, "--allow-dir", &grant]);
    assert!(
        run.stdout.contains("at /data (read-only)"),
        "{}",
        run.stdout
    );
    let out = cli
        .ok(&[
            "call",
            "file_read",
            "--args",
            r#"{"path": "/data/a.txt"}"#,
            "--json",
        ])
        .json();
    assert_eq!(out["result"]["content"], "from the host");
    let run = cli.run(&[
        "call",
        "file_read",
        "--args",
        r#"{"path": "/data/../../etc/passwd"}"#,
    ]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("cannot read"), "{}", run.stderr);
}

fn artifacts(dir: &Path) -> Vec<(std::path::PathBuf, std::time::SystemTime)> {
    let mut found: Vec<_> = std::fs::read_dir(dir.join("cache"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.path(), e.metadata().unwrap().modified().unwrap())
        })
        .collect();
    found.sort();
    found
}

#[test]
fn calls_after_a_restart_do_not_recompile() {
    let cli = Cli::new();
    cli.register(guests::CALCULATOR);
    let before = artifacts(cli.data.path());
    assert_eq!(before.len(), 1, "register compiles and caches once");
    for _ in 0..2 {
        let out = cli
            .ok(&[
                "call",
                "calculator",
                "--args",
                r#"{"op": "add", "a": 1, "b": 2}"#,
                "--json",
            ])
            .json();
        assert_eq!(out["artifact"], "cached");
        assert_eq!(out["result"], 3.0);
    }
    assert_eq!(artifacts(cli.data.path()), before, "nothing rewritten");
}

#[test]
fn text_stats_through_the_cli() {
    let cli = Cli::new();
    cli.register(guests::TEXT_STATS);
    let out = cli
        .ok(&[
            "call",
            "text_stats",
            "--args",
            r#"{"text": "to be or not to be"}"#,
            "--json",
        ])
        .json();
    assert_eq!(out["result"]["words"], 6);
    assert_eq!(out["result"]["lines"], 1);
    assert_eq!(out["result"]["characters"], 18);
    assert_eq!(
        out["result"]["top_words"][0],
        serde_json::json!({"word": "be", "count": 2})
    );
}

#[test]
fn guest_output_reaches_the_host_log() {
    let cli = Cli::new();
    cli.register(guests::CHATTY);
    let run = Cli::finished(
        cli.command(&["call", "chatty", "--args", r#"{"steps": 1}"#])
            .env("WORK_ENGINE_LOG", "info")
            .output()
            .unwrap(),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let log = run.stderr;
    for expected in [
        "step 1 of 1",
        "chatty starts",
        "stream=\"stdout\"",
        "chatty on stderr",
        "tool=\"chatty\"",
    ] {
        assert!(log.contains(expected), "missing {expected:?} in:\n{log}");
    }
}

#[test]
fn allow_env_passes_only_the_named_variables() {
    let cli = Cli::new();
    let probe = |grants: &[&str]| {
        let cli = Cli::new();
        let mut register = vec!["register", guests::SANDBOX_PROBE];
        register.extend_from_slice(grants);
        cli.ok(&register);
        let run = Cli::finished(
            cli.command(&["call", "sandbox_probe", "--json"])
                .env("PROBE_GRANTED", "visible")
                .env("PROBE_HIDDEN", "secret")
                .env_remove("PROBE_UNSET")
                .output()
                .unwrap(),
        );
        run.json()["result"]["env"].clone()
    };
    assert_eq!(probe(&[]), serde_json::json!({}));
    let granted = ["--allow-env", "PROBE_GRANTED", "--allow-env", "PROBE_UNSET"];
    assert_eq!(
        probe(&granted),
        serde_json::json!({"PROBE_GRANTED": "visible"})
    );
    let run = cli.run(&["register", guests::SANDBOX_PROBE, "--allow-env", "A=B"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("invalid environment variable name"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_closed_stdout_pipe_is_not_a_crash() {
    let cli = Cli::new();
    let files = TempDir::new().unwrap();
    // Far more output than a pipe buffers, so the write must hit the
    // closed pipe.
    std::fs::write(files.path().join("big.txt"), "x".repeat(512 * 1024)).unwrap();
    let grant = format!("{}:/data", files.path().display());
    cli.ok(&["register", guests::FILE_READ, "--allow-dir", &grant]);
    let mut child = cli
        .command(&[
            "call",
            "file_read",
            "--args",
            r#"{"path": "/data/big.txt"}"#,
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{stderr}");
}
