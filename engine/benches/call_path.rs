//! Run with: `cargo bench -p work-engine --bench call_path`
//!
//! The `calculator` call path, side by side in one run:
//!
//! - **bare**: the floor. The same component, the same wasmtime engine
//!   (same configuration: pooling, fuel, epochs) and the same per-call
//!   limits (fuel, memory cap, epoch deadline, empty WASI), driven by a
//!   minimal host written directly against wasmtime.
//! - **engine**: `ToolHost::call` — lookup, argument parse and schema
//!   validation, a fresh limited store with event plumbing, instantiation,
//!   the call, result parse and classification.
//!
//! Prints p50 and p99 per call (sequential, interleaved in rounds so both
//! see the same machine noise), calls per second from 2 threads, the
//! engine/bare ratio, how late timeouts fire, and what the artifact cache
//! saves at start-up. `BENCH_CALLS` scales the
//! sample count (default 20000 per path).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a bench aborts on a broken set-up"
)]

mod support;

use support::{ARGS, env};

use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use work_engine::runtime::bindings::{Tool, ToolPre, host, types};
use work_engine::runtime::{CallOptions, Grants, RuntimeConfig};
use work_engine::{OutcomeClass, ToolHost};

// ---- the bare floor -------------------------------------------------------

struct BareState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
}

impl WasiView for BareState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl host::Host for BareState {
    fn log(&mut self, _: host::LogLevel, _: String) {}
    fn progress(&mut self, _: f32, _: String) {}
    fn emit(&mut self, _: String) -> wasmtime::Result<()> {
        Ok(())
    }
    fn cancelled(&mut self) -> bool {
        false
    }
    fn attempt(&mut self) -> u32 {
        1
    }
}

impl types::Host for BareState {}

struct Bare {
    engine: wasmtime::Engine,
    pre: ToolPre<BareState>,
    config: RuntimeConfig,
}

impl Bare {
    fn new(engine: &wasmtime::Engine, wasm: &[u8], config: RuntimeConfig) -> Self {
        let component = Component::new(engine, wasm).unwrap();
        let mut linker = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
        Tool::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).unwrap();
        let pre = ToolPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
        Self {
            engine: engine.clone(),
            pre,
            config,
        }
    }

    async fn call(&self) -> String {
        let limits = StoreLimitsBuilder::new()
            .memory_size((self.config.default_memory_mb << 20) as usize)
            .build();
        let state = BareState {
            wasi: WasiCtxBuilder::new().build(),
            table: ResourceTable::new(),
            limits,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_fuel(self.config.default_fuel).unwrap();
        store.set_epoch_deadline(self.config.default_timeout.as_millis() as u64);
        store.epoch_deadline_trap();
        let tool = self.pre.instantiate_async(&mut store).await.unwrap();
        tool.call_call(&mut store, ARGS).await.unwrap().unwrap()
    }
}

// ---- measurement ----------------------------------------------------------

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

async fn engine_call(host: &ToolHost) {
    let report = host
        .call("calculator", ARGS, CallOptions::default())
        .await
        .unwrap();
    assert!(report.outcome.is_ok(), "{report:?}");
}

fn two_threads<S: Send + Sync + 'static>(
    shared: Arc<S>,
    calls_per_thread: usize,
    call: for<'a> fn(&'a S) -> std::pin::Pin<Box<dyn Future<Output = ()> + 'a>>,
) -> f64 {
    let start = Instant::now();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    for _ in 0..calls_per_thread {
                        call(&shared).await;
                    }
                });
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    (2 * calls_per_thread) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let calls = env("BENCH_CALLS", 20_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let data = tempfile::TempDir::new().unwrap();
    let host = Arc::new(ToolHost::open(data.path(), RuntimeConfig::default()).unwrap());
    let wasm = std::fs::read(work_test_artifacts::CALCULATOR).unwrap();
    let infinite_loop = std::fs::read(work_test_artifacts::INFINITE_LOOP).unwrap();
    rt.block_on(async {
        host.register(&wasm, Grants::default()).await.unwrap();
        host.register(&infinite_loop, Grants::default())
            .await
            .unwrap();
    });
    host.prepare(work_engine::registry::ToolScope::Shared, "calculator")
        .unwrap();
    let bare = Arc::new(Bare::new(
        host.runtime().wasmtime_engine(),
        &wasm,
        host.runtime().config().clone(),
    ));

    // Warm up both paths (page faults, pool slots, allocator).
    rt.block_on(async {
        for _ in 0..2_000 {
            assert_eq!(bare.call().await, "4.0");
            engine_call(&host).await;
        }
    });

    // Sequential latency, interleaved in rounds.
    let rounds = 10;
    let per_round = (calls / rounds).max(1);
    let mut bare_samples = Vec::with_capacity(calls);
    let mut engine_samples = Vec::with_capacity(calls);
    rt.block_on(async {
        for _ in 0..rounds {
            for _ in 0..per_round {
                let start = Instant::now();
                bare.call().await;
                bare_samples.push(start.elapsed());
            }
            for _ in 0..per_round {
                let start = Instant::now();
                engine_call(&host).await;
                engine_samples.push(start.elapsed());
            }
        }
    });
    bare_samples.sort();
    engine_samples.sort();

    // Throughput from 2 threads, bare then engine, twice each to even out.
    let per_thread = calls / 2;
    let mut bare_rates = Vec::new();
    let mut engine_rates = Vec::new();
    for _ in 0..2 {
        bare_rates.push(two_threads(Arc::clone(&bare), per_thread, |b| {
            Box::pin(async move {
                b.call().await;
            })
        }));
        engine_rates.push(two_threads(Arc::clone(&host), per_thread, |h| {
            Box::pin(engine_call(h))
        }));
    }
    let best = |rates: &[f64]| rates.iter().copied().fold(0.0, f64::max);

    let (bare_p50, bare_p99) = (
        percentile(&bare_samples, 0.5),
        percentile(&bare_samples, 0.99),
    );
    let (engine_p50, engine_p99) = (
        percentile(&engine_samples, 0.5),
        percentile(&engine_samples, 0.99),
    );
    println!(
        "calculator call path, {} samples per path, release build",
        bare_samples.len()
    );
    println!();
    println!("| path   | p50 (µs) | p99 (µs) | calls/s, 1 thread | calls/s, 2 threads |");
    println!("|--------|---------:|---------:|------------------:|-------------------:|");
    for (name, p50, p99, samples, rate) in [
        ("bare", bare_p50, bare_p99, &bare_samples, best(&bare_rates)),
        (
            "engine",
            engine_p50,
            engine_p99,
            &engine_samples,
            best(&engine_rates),
        ),
    ] {
        let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
        println!(
            "| {name:6} | {:8.1} | {:8.1} | {:17.0} | {:18.0} |",
            us(p50),
            us(p99),
            1.0 / mean.as_secs_f64(),
            rate
        );
    }
    println!();
    println!(
        "engine/bare: p50 {:.3}x, p99 {:.3}x, 2-thread throughput {:.3}x",
        us(engine_p50) / us(bare_p50),
        us(engine_p99) / us(bare_p99),
        best(&engine_rates) / best(&bare_rates)
    );

    // Timeout precision: how late after its deadline a spinning guest stops.
    println!();
    host.prepare(work_engine::registry::ToolScope::Shared, "infinite_loop")
        .unwrap();
    println!(
        "| timeout | runs | late p50 (ms) | late p90 (ms) | late max (ms) | p90 (% of deadline) |"
    );
    println!(
        "|--------:|-----:|--------------:|--------------:|--------------:|--------------------:|"
    );
    for deadline_ms in [20u64, 100, 500] {
        let runs = 20;
        let mut late: Vec<Duration> = rt.block_on(async {
            let mut late = Vec::new();
            for _ in 0..runs {
                let options = CallOptions {
                    timeout: Some(Duration::from_millis(deadline_ms)),
                    fuel: Some(u64::MAX / 2),
                    ..CallOptions::default()
                };
                let start = Instant::now();
                let report = host.call("infinite_loop", "{}", options).await.unwrap();
                let took = start.elapsed();
                assert_eq!(report.class(), OutcomeClass::Timeout);
                late.push(took.saturating_sub(Duration::from_millis(deadline_ms)));
            }
            late
        });
        late.sort();
        let max = *late.last().unwrap();
        let p90 = percentile(&late, 0.9).as_secs_f64() * 1e3;
        println!(
            "| {deadline_ms:4} ms | {runs:4} | {:13.2} | {p90:13.2} | {:13.2} | {:18.1}% |",
            percentile(&late, 0.5).as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3,
            p90 / deadline_ms as f64 * 100.0
        );
    }

    // Start-up: compiling a component vs loading its cached artifact.
    let mut compile = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        Component::new(host.runtime().wasmtime_engine(), &wasm).unwrap();
        compile.push(start.elapsed());
    }
    let mut cached = Vec::new();
    for _ in 0..50 {
        let start = Instant::now();
        let loaded = host.runtime().load(&wasm).unwrap();
        cached.push(start.elapsed());
        assert_eq!(
            loaded.source(),
            work_engine::runtime::ArtifactSource::Cached
        );
    }
    compile.sort();
    cached.sort();
    println!();
    println!(
        "start-up: compile {:.1} ms, load from the artifact cache {:.3} ms (p50; {} KB component)",
        percentile(&compile, 0.5).as_secs_f64() * 1e3,
        percentile(&cached, 0.5).as_secs_f64() * 1e3,
        wasm.len() / 1024
    );
}
