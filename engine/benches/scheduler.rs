//! Run with: `cargo bench -p work-engine --bench scheduler`
//!
//! The scheduler, side by side in one run (medians of `BENCH_ROUNDS`
//! rounds, default 5):
//!
//! - **(a) no-op jobs**: submit → complete throughput of zero-delay `mock`
//!   jobs through the in-memory engine, for 1 tenant and for 100 tenants,
//!   submitted one by one from two tasks and in batches of 1,000; against
//!   the floor: the same number of items pushed through a plain
//!   `tokio::sync::mpsc` channel to a pool of two workers.
//! - **(b) memory**: resident memory per queued job with 1,000,000 jobs
//!   queued (`BENCH_QUEUED` to change), measured from `/proc/self/statm`;
//!   each job's payload is `{}`, or a `calculator` call's with
//!   `BENCH_QUEUED_PAYLOAD=tool_call` (one per process: memory one
//!   measurement frees stays resident and would hide the next one's).
//! - **(c) tool calls**: `calculator` `tool_call` jobs through the
//!   scheduler against direct `ToolHost::call`s, both on two threads (rate,
//!   and CPU time per call summed over the process's threads), in
//!   `BENCH_PAIRS` (default 15) alternating rounds of `BENCH_CALLS`
//!   (default 10,000) each, with the median of the rounds' ratios; the
//!   jobs submitted all at once (thousands queued), and by a client that
//!   keeps at most 256 of them in flight; and
//!   one-at-a-time latency (submit → wait) against one direct call. The
//!   rounds run once the engine's store has grown to the number of
//!   finished jobs it keeps; the stretch before is reported apart. The
//!   engine has 8 CPU cores of capacity (`BENCH_CAPACITY` to change), and
//!   each call asks for the default of one, so at most 8 run at once.
//!
//! Everything runs in tasks on a Tokio runtime with two worker threads.
//! `BENCH_SECTIONS` picks sections (default `abc`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a bench aborts on a broken set-up"
)]

mod support;

use support::{ARGS, env, median};

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use work_engine::backends::MockBackend;
use work_engine::runtime::{CallOptions, Grants, RuntimeConfig};
use work_engine::store::MemoryStore;
use work_engine::{
    Capacity, Engine, JobId, JobKind, JobStatus, NewJob, Payload, Resources, ToolHost,
};

/// The allocator the `work-engine` binary uses, tuned as it tunes it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `work` in a task on the runtime's workers, where a server's
/// request handlers run (`block_on` would drive it from a third thread).
fn on_worker<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    work: impl Future<Output = T> + Send + 'static,
) -> T {
    rt.block_on(rt.spawn(work)).unwrap()
}

fn capacity(cpu: f64) -> Capacity {
    Capacity {
        cpu,
        memory_mb: 1 << 20,
        gpus: Vec::new(),
    }
}

fn noop(tenant: usize) -> NewJob {
    NewJob::new("noop", format!("tenant-{tenant}"), json!({})).with_resources(Resources {
        cpu: 0.0,
        ..Resources::default()
    })
}

/// Waits until `total` jobs have finished, `last` (the last ones
/// submitted, in order) among them. Jobs start in the order they came, at
/// most the capacity's worth at once, so by the time the last 64 have ended
/// the rest nearly always have, and `stats()` (which copies and
/// summarises thousands of time samples) is read once, after the measured
/// work. Only
/// a job still out then (one whose attempt went on in a task of its own)
/// is polled for: at 2 ms a poll, a poll per round had added 1–2 % to
/// section (c)'s times.
async fn wait_finished(engine: &Engine, total: u64, last: &[JobId]) {
    for id in &last[last.len().saturating_sub(64)..] {
        engine.wait(*id, Duration::from_secs(600)).await.unwrap();
    }
    while engine.stats().finished_total < total {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Jobs per second, submit to complete, of `n` no-op jobs.
async fn noop_throughput(n: usize, tenants: usize, batched: bool) -> f64 {
    let engine = Engine::builder()
        .capacity(capacity(1024.0))
        .backend(MockBackend::new().without_history())
        .build()
        .unwrap();
    let start = Instant::now();
    let mut last = Vec::new();
    if batched {
        let mut next = 0;
        while next < n {
            let jobs = (next..(next + 1000).min(n))
                .map(|i| noop(i % tenants))
                .collect();
            let batch = engine.submit_batch(jobs).await.unwrap().jobs;
            next += 1000;
            if next >= n {
                last = batch.iter().map(|job| job.id).collect();
            }
        }
    } else {
        let submitters: Vec<_> = (0..2)
            .map(|s| {
                let engine = engine.clone();
                tokio::spawn(async move {
                    let mut last = None;
                    for i in (s..n).step_by(2) {
                        last = Some(engine.submit(noop(i % tenants)).await.unwrap());
                    }
                    last
                })
            })
            .collect();
        for submitter in submitters {
            last.extend(submitter.await.unwrap().map(|job| job.id));
        }
    }
    wait_finished(&engine, n as u64, &last).await;
    n as f64 / start.elapsed().as_secs_f64()
}

/// Items per second through an mpsc channel to two workers.
async fn mpsc_floor(n: usize) -> f64 {
    let done = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(tokio::sync::Notify::new());
    let start = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..2 {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(1024);
        senders.push(tx);
        let (done, finished) = (Arc::clone(&done), Arc::clone(&finished));
        tokio::spawn(async move {
            while let Some(item) = rx.recv().await {
                std::hint::black_box(item);
                if done.fetch_add(1, Ordering::Relaxed) + 1 == n {
                    finished.notify_one();
                }
            }
        });
    }
    let notified = finished.notified();
    for i in 0..n {
        senders[i % 2].send(i as u64).await.unwrap();
    }
    notified.await;
    n as f64 / start.elapsed().as_secs_f64()
}

/// CPU time this process's threads have run, in µs, from each thread's
/// `/proc/self/task/*/schedstat` (nanosecond counters, unlike `stat`'s
/// 10 ms ticks). Less noisy than throughput on a shared machine: time
/// lost to other tenants or to idle threads does not count.
fn cpu_us() -> f64 {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let Ok(stat) = std::fs::read_to_string(task.unwrap().path().join("schedstat")) else {
            continue; // the thread ended
        };
        ns += stat
            .split_whitespace()
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap();
    }
    ns as f64 / 1e3
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Bytes of resident memory per queued job with `payload`.
async fn memory_per_queued_job(n: usize, payload: Payload) -> f64 {
    let engine = Engine::builder()
        .capacity(capacity(1.0))
        .backend(MockBackend::new().without_history())
        .build()
        .unwrap();
    // One job holds the only CPU so that every other one stays queued.
    engine
        .submit(NewJob::new("noop", "t", json!({"mock": {"hang": true}})))
        .await
        .unwrap();
    let before = resident_bytes();
    let mut next = 0;
    while next < n {
        let jobs = (next..(next + 10_000).min(n))
            .map(|i| NewJob::new("noop", format!("tenant-{}", i % 100), payload.clone()))
            .collect();
        engine.submit_batch(jobs).await.unwrap();
        next += 10_000;
    }
    let after = resident_bytes();
    assert_eq!(engine.stats().jobs.queued, n as u64);
    (after - before) as f64 / n as f64
}

async fn tool_host() -> (tempfile::TempDir, Arc<ToolHost>) {
    let data = tempfile::TempDir::new().unwrap();
    let host = Arc::new(ToolHost::open(data.path(), RuntimeConfig::default()).unwrap());
    let wasm = std::fs::read(work_test_artifacts::CALCULATOR).unwrap();
    host.register(&wasm, Grants::default()).await.unwrap();
    host.prepare(work_engine::registry::ToolScope::Shared, "calculator")
        .unwrap();
    (data, host)
}

/// A `calculator` call's payload, written once: the client has its
/// request's JSON text at hand, as the direct path's client has `ARGS`
/// (and as an HTTP request brings it).
static CALC_PAYLOAD: std::sync::LazyLock<Payload> = std::sync::LazyLock::new(|| {
    Payload::from_text(format!(r#"{{"tool": "calculator", "args": {ARGS}}}"#)).unwrap()
});

fn calc_job() -> NewJob {
    NewJob::new(JobKind::ToolCall, "bench", CALC_PAYLOAD.clone())
}

/// Calls per second and CPU µs per call of direct calls from two tasks.
async fn direct_calls(host: &Arc<ToolHost>, n: usize) -> (f64, f64) {
    let (start, cpu) = (Instant::now(), cpu_us());
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let host = Arc::clone(host);
            tokio::spawn(async move {
                for _ in 0..n / 2 {
                    let report = host
                        .call("calculator", ARGS, CallOptions::default())
                        .await
                        .unwrap();
                    assert!(report.outcome.is_ok());
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    (rate, (cpu_us() - cpu) / n as f64)
}

/// One way of submitting's rounds in section (c).
#[derive(Default)]
struct Rounds {
    rate: Vec<f64>,
    cpu: Vec<f64>,
    /// Against the direct round just before.
    time_ratio: Vec<f64>,
    cpu_ratio: Vec<f64>,
}

impl Rounds {
    fn push(&mut self, rate: f64, cpu: f64, direct_rate: f64, direct_cpu: f64) {
        self.rate.push(rate);
        self.cpu.push(cpu);
        self.time_ratio.push(direct_rate / rate);
        self.cpu_ratio.push(cpu / direct_cpu);
    }
}

/// How a bench client submits its `tool_call` jobs.
#[derive(Clone, Copy)]
enum Submitter {
    /// Every job at once, in batches of 500: the queue holds thousands.
    AllAtOnce,
    /// In batches of 64, never more than 256 submitted and not yet done:
    /// clients that wait for their results before they ask for more.
    InFlight256,
}

/// Jobs per second and CPU µs per job of `tool_call` jobs through the
/// scheduler.
async fn scheduled_calls(engine: &Engine, n: usize, submitter: Submitter) -> (f64, f64) {
    let (chunk, window) = match submitter {
        Submitter::AllAtOnce => (500, usize::MAX),
        Submitter::InFlight256 => (64, 256 / 64),
    };
    let before = engine.stats().finished_total;
    let (start, cpu) = (Instant::now(), cpu_us());
    let mut next = 0;
    let mut lasts = std::collections::VecDeque::new();
    let mut last = Vec::new();
    while next < n {
        if lasts.len() >= window {
            let oldest: JobId = lasts.pop_front().unwrap();
            engine.wait(oldest, Duration::from_secs(600)).await.unwrap();
        }
        let jobs = (next..(next + chunk).min(n)).map(|_| calc_job()).collect();
        let batch = engine.submit_batch(jobs).await.unwrap().jobs;
        lasts.push_back(batch.last().unwrap().id);
        next += chunk;
        if next >= n {
            // Ids only: a job whose `Arc` the client still held would be
            // copied when the store changes it.
            last = batch.iter().map(|job| job.id).collect();
        }
    }
    wait_finished(engine, before + n as u64, &last).await;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    (rate, (cpu_us() - cpu) / n as f64)
}

fn main() {
    work_engine::commands::tune_allocator();
    let rounds = env("BENCH_ROUNDS", 5);
    let jobs = env("BENCH_JOBS", 200_000);
    let queued = env("BENCH_QUEUED", 1_000_000);
    let calls = env("BENCH_CALLS", 10_000);
    let pairs = env("BENCH_PAIRS", 15);
    let sections = std::env::var("BENCH_SECTIONS").unwrap_or_else(|_| "abc".to_owned());
    let rt = runtime();

    // Memory first, in a fresh process: later phases leave freed memory
    // resident, which would hide new allocations.
    if sections.contains('b') {
        let (payload, described) = match std::env::var("BENCH_QUEUED_PAYLOAD").as_deref() {
            Ok("tool_call") => (CALC_PAYLOAD.clone(), "a tool call's payload"),
            _ => (Payload::from(json!({})), "an empty payload"),
        };
        println!("(b) memory with {queued} queued jobs, each with {described}");
        let per_job = on_worker(&rt, memory_per_queued_job(queued, payload));
        println!("  {per_job:.0} bytes resident per queued job");
    }
    if sections.contains('a') {
        noop_section(&rt, rounds, jobs);
    }
    if sections.contains('c') {
        tool_call_section(&rt, pairs, calls);
    }
}

fn noop_section(rt: &tokio::runtime::Runtime, rounds: usize, jobs: usize) {
    println!("(a) no-op jobs, submit -> complete, {jobs} jobs, median of {rounds} rounds");
    let mut floor = Vec::new();
    let mut cases: Vec<(&str, usize, bool, Vec<f64>)> = vec![
        ("1 tenant, single submits", 1, false, Vec::new()),
        ("100 tenants, single submits", 100, false, Vec::new()),
        ("1 tenant, batches of 1000", 1, true, Vec::new()),
        ("100 tenants, batches of 1000", 100, true, Vec::new()),
    ];
    for _ in 0..rounds {
        floor.push(on_worker(rt, mpsc_floor(jobs)));
        for (_, tenants, batched, samples) in &mut cases {
            samples.push(on_worker(rt, noop_throughput(jobs, *tenants, *batched)));
        }
    }
    let floor = median(floor);
    println!(
        "  mpsc floor                      {:>10.0} items/s  {:>7.3} us/item",
        floor,
        1e6 / floor
    );
    for (name, _, _, samples) in cases {
        let rate = median(samples);
        println!(
            "  {name:<31} {rate:>10.0} jobs/s   {:>7.3} us/job  ({:.1}x the floor's per-item time)",
            1e6 / rate,
            floor / rate
        );
    }
}

/// Marks for `scripts/count-instructions.py`: callgrind dumps its counts
/// as each is entered (`--dump-before=*_round_mark`), so every round of
/// (c) is counted on its own. Never inlined, and each with a side effect
/// of its own, or the optimizer would fold them into one function or drop
/// the calls.
mod marks {
    #[inline(never)]
    pub fn direct_round_mark() {
        std::hint::black_box(0);
    }

    #[inline(never)]
    pub fn all_at_once_round_mark() {
        std::hint::black_box(1);
    }

    #[inline(never)]
    pub fn in_flight_round_mark() {
        std::hint::black_box(2);
    }

    #[inline(never)]
    pub fn end_of_round_mark() {
        std::hint::black_box(3);
    }
}

fn tool_call_section(rt: &tokio::runtime::Runtime, rounds: usize, calls: usize) {
    let cores = env("BENCH_CAPACITY", 8);
    println!(
        "(c) calculator tool calls, {calls} per round, {rounds} rounds of each path, alternating; at most {cores} at once"
    );
    on_worker(rt, async move {
        let (_data, host) = tool_host().await;
        let engine = Engine::builder()
            .capacity(capacity(cores as f64))
            .tool_host(Arc::clone(&host))
            .build()
            .unwrap();
        // Warm up the direct path, and run the engine into its steady
        // state: a fresh memory store grows (on fresh pages, which the
        // kernel zeroes) until it holds as many finished jobs as it keeps,
        // and from then on retires about as many as finish. That first
        // stretch is reported apart.
        direct_calls(&host, 2_000).await;
        let fresh_jobs = MemoryStore::DEFAULT_KEEP_FINISHED * 9 / 8 + calls;
        let (fresh, fresh_cpu) = scheduled_calls(&engine, fresh_jobs, Submitter::AllAtOnce).await;
        // The machine's speed drifts by tens of percent over seconds, so
        // the paths alternate in short rounds, and each ratio is the median
        // of the rounds' own ratios (the paths' medians apart are printed
        // too).
        let submitters = [
            (
                "all at once",
                Submitter::AllAtOnce,
                marks::all_at_once_round_mark as fn(),
            ),
            (
                "256 in flight",
                Submitter::InFlight256,
                marks::in_flight_round_mark,
            ),
        ];
        let (mut direct, mut direct_cpu) = (Vec::new(), Vec::new());
        let mut scheduled: Vec<Rounds> = submitters.iter().map(|_| Rounds::default()).collect();
        for _ in 0..rounds {
            marks::direct_round_mark();
            let (direct_rate, direct_us) = direct_calls(&host, calls).await;
            marks::end_of_round_mark();
            direct.push(direct_rate);
            direct_cpu.push(direct_us);
            for ((_, submitter, mark), rounds) in submitters.iter().zip(&mut scheduled) {
                mark();
                let (rate, cpu) = scheduled_calls(&engine, calls, *submitter).await;
                marks::end_of_round_mark();
                rounds.push(rate, cpu, direct_rate, direct_us);
            }
        }
        let (direct, direct_cpu) = (median(direct), median(direct_cpu));
        println!(
            "  direct ToolHost::call, 2 tasks         {direct:>10.0} calls/s  {:>7.2} us/call  {direct_cpu:>6.2} us CPU/call",
            1e6 / direct
        );
        for ((name, _, _), rounds) in submitters.iter().zip(scheduled) {
            let (rate, cpu) = (median(rounds.rate), median(rounds.cpu));
            println!(
                "  tool_call jobs, {name:<14}         {rate:>10.0} jobs/s   {:>7.2} us/job   {cpu:>6.2} us CPU/job  ({:.2}x the direct path's time per call, {:.2}x its CPU: medians of the rounds' ratios)",
                1e6 / rate,
                median(rounds.time_ratio),
                median(rounds.cpu_ratio),
            );
        }
        println!(
            "  the same, all at once, a fresh engine's first {fresh_jobs} jobs (the store growing): {fresh:.0} jobs/s, {fresh_cpu:.2} us CPU/job"
        );

        let mut direct_latency = Vec::new();
        let mut job_latency = Vec::new();
        for _ in 0..2_000 {
            let start = Instant::now();
            host.call("calculator", ARGS, CallOptions::default())
                .await
                .unwrap();
            direct_latency.push(start.elapsed().as_secs_f64() * 1e6);
            let start = Instant::now();
            let job = engine.submit(calc_job()).await.unwrap();
            let done = engine.wait(job.id, Duration::from_secs(10)).await.unwrap();
            job_latency.push(start.elapsed().as_secs_f64() * 1e6);
            assert_eq!(done.status, JobStatus::Succeeded);
        }
        let (direct, job) = (median(direct_latency), median(job_latency));
        println!(
            "  one at a time, p50: direct {direct:.1} us, submit+wait {job:.1} us ({:.2}x)",
            job / direct
        );
    });
}
