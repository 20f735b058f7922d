//! Run with: `cargo bench -p work-engine --bench http`
//!
//! The HTTP API under load, side by side in one run, on loopback:
//!
//! - **(a) synchronous tool calls**: `POST /v1/tools/calculator/call` from
//!   1 and from 32 concurrent clients (requests per second, p50 and p99),
//!   against the in-process call path (`ToolHost::call`) of the
//!   `call_path` bench: the ratio is the cost of HTTP and the scheduler.
//! - **(b) durable submissions**: `POST /v1/jobs` from 32 clients into the
//!   SQLite store (each answer sent after its commit), and the same into
//!   the in-memory store. The jobs wait for a start time an hour away, so
//!   only admission and storage are measured. Beside each, `Engine::submit`
//!   from 32 tasks in this process into the same kind of store: what the
//!   store takes without HTTP in front of it.
//!
//! - **(c) the cost of authentication**: synchronous calls from 1 and
//!   from 32 clients against two fresh in-memory servers side by side, one
//!   checking an API key on every request and one `--insecure-no-auth`,
//!   taken in turns (which goes first alternates by round): the
//!   difference of their p50 latencies, as a share of the open one's.
//!   Beside them, `AuthStore::authenticate` of a key in this process: what
//!   the check itself costs, without the noise of two servers.
//!
//! (a) and (b) run against three servers: SQLite with `--durability fsync`
//! (the default), SQLite with `--durability process`, and the in-memory
//! store, each called with an API key.
//!
//! The server is the real `work-engine serve` process; the load generator
//! is this process (reqwest over keep-alive connections, on its own two
//! threads). Both share this machine's cores. `BENCH_REQUESTS` sets the
//! submissions per case (default 20000; calls from 32 clients are half as
//! many, from one client a tenth), `BENCH_ROUNDS` the rounds (default 3;
//! medians are printed), `BENCH_SECTIONS` which sections run (default
//! `abc`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a bench aborts on a broken set-up"
)]

mod support;

use support::{ARGS, env, median};

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde_json::json;
use work_engine::auth::{AuthStore, NewKey, Role};
use work_engine::backends::MockBackend;
use work_engine::runtime::{CallOptions, Grants, RuntimeConfig};
use work_engine::store::{Durability, MemoryStore, SqliteStore, Store};
use work_engine::{Engine, NewJob, ToolHost};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// A `work-engine serve` process on a fresh data directory, and a client
/// that calls it with the operator's key (none with `--insecure-no-auth`).
struct Server {
    child: Child,
    url: String,
    http: reqwest::Client,
    _data: tempfile::TempDir,
}

impl Server {
    fn start(flags: &[&str]) -> Self {
        let data = tempfile::TempDir::new().unwrap();
        let mut headers = reqwest::header::HeaderMap::new();
        if !flags.contains(&"--insecure-no-auth") {
            let output = Command::new(env!("CARGO_BIN_EXE_work-engine"))
                .args(["keys", "create", "--operator", "--json"])
                .env("WORK_ENGINE_DATA_DIR", data.path())
                .output()
                .unwrap();
            let created: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
            let key = created["key"].as_str().unwrap();
            headers.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {key}").parse().unwrap(),
            );
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_work-engine"))
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(flags)
            .env("WORK_ENGINE_DATA_DIR", data.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap()
            .to_owned();
        Self {
            child,
            url,
            http,
            _data: data,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` requests from `clients` concurrent tasks, each made by `request`;
/// returns requests per second and the latencies in microseconds.
async fn load<F, Fut>(clients: usize, n: usize, request: F) -> (f64, Vec<f64>)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let request = Arc::new(request);
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (next, request) = (Arc::clone(&next), Arc::clone(&request));
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    let sent = Instant::now();
                    request().await;
                    latencies.push(sent.elapsed().as_secs_f64() * 1e6);
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(n);
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    (rate, latencies)
}

/// [`load`] of POSTs of `body` to `url` by `http`, over keep-alive
/// connections.
async fn posts(
    http: reqwest::Client,
    url: String,
    body: serde_json::Value,
    clients: usize,
    n: usize,
) -> (f64, Vec<f64>) {
    load(clients, n, move || {
        let request = http.post(&url).json(&body).send();
        async move {
            let status = request.await.unwrap().status();
            assert!(status.is_success(), "{status}");
        }
    })
    .await
}

async fn calls(server: &Server, clients: usize, n: usize) -> (f64, Vec<f64>) {
    let body = json!({"args": {"op": "add", "a": 2, "b": 2}});
    let url = format!("{}/v1/tools/calculator/call", server.url);
    posts(server.http.clone(), url, body, clients, n).await
}

async fn submissions(server: &Server, clients: usize, n: usize) -> (f64, Vec<f64>) {
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let body = json!({
        "kind": "tool_call",
        "tenant_id": "bench",
        "payload": {"tool": "calculator", "args": {"op": "add", "a": 2, "b": 2}},
        "constraints": {"not_before": later},
    });
    let url = format!("{}/v1/jobs", server.url);
    posts(server.http.clone(), url, body, clients, n).await
}

async fn register(server: &Server) {
    let wasm = std::fs::read(work_test_artifacts::CALCULATOR).unwrap();
    let status = server
        .http
        .post(format!("{}/v1/tools", server.url))
        .header("content-type", "application/wasm")
        .body(wasm)
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success());
}

/// In-process calls per second from 2 tasks, and one-at-a-time latencies.
async fn in_process(host: &Arc<ToolHost>, n: usize) -> (f64, Vec<f64>) {
    let start = Instant::now();
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let host = Arc::clone(host);
            tokio::spawn(async move {
                for _ in 0..n / 2 {
                    host.call("calculator", ARGS, CallOptions::default())
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let mut latencies = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let sent = Instant::now();
        host.call("calculator", ARGS, CallOptions::default())
            .await
            .unwrap();
        latencies.push(sent.elapsed().as_secs_f64() * 1e6);
    }
    latencies.sort_by(f64::total_cmp);
    (rate, latencies)
}

/// `Engine::submit` in this process from 32 tasks, into a fresh store of
/// `kind`: what the store takes without HTTP in front of it.
async fn in_process_submissions(kind: &str, n: usize) -> (f64, Vec<f64>) {
    let data = tempfile::TempDir::new().unwrap();
    let path = data.path().join("jobs.db");
    let store: Arc<dyn Store> = match kind {
        "SQLite, fsync" => Arc::new(SqliteStore::open_with(&path, Durability::Fsync).unwrap()),
        "SQLite, process" => Arc::new(SqliteStore::open_with(&path, Durability::Process).unwrap()),
        _ => Arc::new(MemoryStore::new()),
    };
    let engine = Engine::builder()
        .backend(MockBackend::new())
        .store(store)
        .build()
        .unwrap();
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    load(32, n, move || {
        let engine = engine.clone();
        async move {
            let mut job = NewJob::new("sim", "bench", json!({"mock": {}}));
            job.constraints.not_before = Some(later);
            engine.submit(job).await.unwrap();
        }
    })
    .await
}

/// Nanoseconds per `AuthStore::authenticate` of a valid key (after its
/// first check), median of `rounds` rounds of 100,000.
fn authenticate_ns(rounds: usize) -> f64 {
    let data = tempfile::TempDir::new().unwrap();
    let auth = AuthStore::open(data.path()).unwrap();
    let key = auth
        .create_key(NewKey::tenant("bench", Role::Submitter))
        .unwrap()
        .key;
    let samples = (0..rounds.max(1))
        .map(|_| {
            let start = Instant::now();
            for _ in 0..100_000 {
                std::hint::black_box(auth.authenticate(std::hint::black_box(&key)).unwrap());
            }
            start.elapsed().as_nanos() as f64 / 100_000.0
        })
        .collect();
    median(samples)
}

#[derive(Default)]
struct Case {
    rates: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
}

impl Case {
    fn add(&mut self, (rate, latencies): (f64, Vec<f64>)) {
        self.rates.push(rate);
        self.p50.push(percentile(&latencies, 0.5));
        self.p99.push(percentile(&latencies, 0.99));
    }

    fn print(self, name: &str) -> f64 {
        let rate = median(self.rates);
        println!(
            "  {name:<40} {rate:>9.0} req/s   p50 {:>8.1} us   p99 {:>8.1} us",
            median(self.p50),
            median(self.p99)
        );
        rate
    }
}

fn main() {
    let n = env("BENCH_REQUESTS", 20_000);
    let rounds = env("BENCH_ROUNDS", 3);
    let sections = std::env::var("BENCH_SECTIONS").unwrap_or_else(|_| "abc".to_owned());
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    client.block_on(async move {
        let sqlite = Server::start(&["--store", "sqlite", "--durability", "fsync"]);
        let process = Server::start(&["--store", "sqlite", "--durability", "process"]);
        let memory = Server::start(&["--store", "memory"]);
        // (c) only, so that both hold the same few jobs.
        let keyed_server = Server::start(&["--store", "memory"]);
        let open = Server::start(&["--store", "memory", "--insecure-no-auth"]);
        for server in [&sqlite, &process, &memory, &keyed_server, &open] {
            register(server).await;
        }
        let data = tempfile::TempDir::new().unwrap();
        let host = Arc::new(ToolHost::open(data.path(), RuntimeConfig::default()).unwrap());
        host.register(
            &std::fs::read(work_test_artifacts::CALCULATOR).unwrap(),
            Grants::default(),
        )
        .await
        .unwrap();
        // Warm up every path.
        in_process(&host, 2_000).await;
        for server in [&sqlite, &process, &memory, &keyed_server, &open] {
            calls(server, 32, 2_000).await;
            submissions(server, 32, 2_000).await;
        }

        let mut direct = Case::default();
        let servers = [
            ("SQLite, fsync", &sqlite),
            ("SQLite, process", &process),
            ("memory", &memory),
        ];
        let mut one: Vec<Case> = servers.iter().map(|_| Case::default()).collect();
        let mut many: Vec<Case> = servers.iter().map(|_| Case::default()).collect();
        let mut submitted: Vec<Case> = servers.iter().map(|_| Case::default()).collect();
        let mut embedded: Vec<Case> = servers.iter().map(|_| Case::default()).collect();
        // (c): keys and no keys, one client then 32, taken in turn.
        let mut keyed = [Case::default(), Case::default()];
        let mut unkeyed = [Case::default(), Case::default()];
        for round in 0..rounds {
            if sections.contains('a') {
                direct.add(in_process(&host, n).await);
            }
            for (i, (name, server)) in servers.iter().enumerate() {
                if sections.contains('a') {
                    one[i].add(calls(server, 1, n / 10).await);
                    many[i].add(calls(server, 32, n / 2).await);
                }
                if sections.contains('b') {
                    submitted[i].add(submissions(server, 32, n).await);
                    embedded[i].add(in_process_submissions(name, n).await);
                }
            }
            for (i, clients) in [1, 32].into_iter().enumerate() {
                if !sections.contains('c') {
                    break;
                }
                let requests = if clients == 1 { n / 10 } else { n / 2 };
                if round % 2 == 0 {
                    keyed[i].add(calls(&keyed_server, clients, requests).await);
                    unkeyed[i].add(calls(&open, clients, requests).await);
                } else {
                    unkeyed[i].add(calls(&open, clients, requests).await);
                    keyed[i].add(calls(&keyed_server, clients, requests).await);
                }
            }
        }
        if sections.contains('a') {
            println!("(a) calculator calls, median of {rounds} rounds");
            let direct = direct.print("in-process ToolHost::call (2 tasks)");
            for (i, (name, _)) in servers.iter().enumerate() {
                let single = std::mem::take(&mut one[i]).print(&format!("call, 1 client, {name}"));
                let parallel =
                    std::mem::take(&mut many[i]).print(&format!("call, 32 clients, {name}"));
                println!(
                    "    in-process / HTTP: {:.1}x at 32 clients, {:.1}x at 1 client",
                    direct / parallel,
                    direct / single
                );
            }
        }
        if sections.contains('b') {
            println!("(b) POST /v1/jobs from 32 clients, median of {rounds} rounds");
            for (i, (name, _)) in servers.iter().enumerate() {
                let http = std::mem::take(&mut submitted[i]).print(name);
                let embedded = std::mem::take(&mut embedded[i])
                    .print(&format!("  in-process, 32 tasks, {name}"));
                println!("    in-process / HTTP: {:.1}x", embedded / http);
            }
        }
        if sections.contains('c') {
            let checks = authenticate_ns(rounds);
            println!(
                "(c) calls with and without an API key (in-memory store), median of {rounds} rounds"
            );
            println!("  AuthStore::authenticate, in-process     {checks:>9.0} ns per key checked");
            for (i, clients) in [1, 32].into_iter().enumerate() {
                let with = median(keyed[i].p50.clone());
                let without = median(unkeyed[i].p50.clone());
                std::mem::take(&mut keyed[i])
                    .print(&format!("call, {clients} client(s), with a key"));
                std::mem::take(&mut unkeyed[i])
                    .print(&format!("call, {clients} client(s), no keys"));
                println!(
                    "    authentication: {:+.1} us at p50, {:+.1}% of the request",
                    with - without,
                    (with - without) / without * 100.0
                );
            }
        }
    });
}
