//! The WebAssembly sandbox: the only module that configures wasmtime.
//!
//! One [`Runtime`] per process owns one `wasmtime::Engine`, configured once
//! here, and a `Linker` with WASI and the `work:tool/host` imports. Every
//! call gets a fresh `Store` (so nothing leaks from one call to the next)
//! with these limits, each answering a threat from an untrusted guest:
//!
//! | limit | answers | mechanism |
//! |---|---|---|
//! | fuel | a guest that computes forever or too long | `consume_fuel`: every instruction costs fuel; at zero the guest traps (`out_of_fuel`) |
//! | wall-clock timeout | a guest that loops, or blocks in a host call | epoch interruption ticked every millisecond by a background thread, and a timer around the whole call (`timeout`) |
//! | memory | an allocation bomb | a `ResourceLimiter` capping *all* linear memories of the instance together; a refused growth is recorded (`out_of_memory`) |
//! | table elements, instance/table/memory counts | table or instance bombs | the same limiter |
//! | wasm stack | unbounded recursion | `max_wasm_stack` (512 KiB); overflow traps (`trap`, stack overflow) |
//! | argument, result, partial and log sizes | memory blow-up on the host side | checked before the guest runs (arguments) or when the guest hands data over |
//! | capabilities | escapes | WASI with nothing but the tool's [`Grants`] |
//!
//! Instances come from wasmtime's pooling allocator (pre-reserved slots,
//! copy-on-write memory images, pages kept resident between calls), which
//! makes a fresh instance per call cost tens of microseconds. When the pool
//! cannot be reserved (a tight `ulimit -v`), the runtime falls back to
//! on-demand allocation and logs a warning.

mod bindings_impl;
mod cache;
pub(crate) mod call;
mod grants;
mod host;
mod limiter;
mod output;
mod totals;

pub use cache::ArtifactSource;
pub use call::{CallFailure, CallOptions, CallReport, CallUsage, ToolErrorKind};
pub use grants::{DirGrant, GrantError, Grants};
pub use host::{CallEvent, EventSink, LogLevel};
pub use totals::UsageTotals;

/// Raw bindings of the `work:tool` world, for hosts that drive a tool
/// component directly (the call-path benchmark's bare floor does).
pub mod bindings {
    pub use super::bindings_impl::{Tool, ToolPre, work::tool::host, work::tool::types};
}

use crate::error::{Error, Result};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub(crate) use host::CallState;

const MIB: u64 = 1024 * 1024;

/// Limits and sizes of the sandbox; `Default` gives the documented defaults.
///
/// Per-call overrides ([`CallOptions`]) may lower or raise the fuel, memory
/// and timeout, but memory never beyond [`RuntimeConfig::max_memory_mb`],
/// the size of a pool slot.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Fuel per call when the call does not say (default 1,000,000,000:
    /// about 0.3 s of tight-loop compute, far more than a typical tool
    /// call's 10,000 or so).
    pub default_fuel: u64,
    /// Wall-clock deadline per call when the call does not say (default 30 s).
    pub default_timeout: Duration,
    /// Memory cap per call, all memories together, in MiB (default 64).
    pub default_memory_mb: u64,
    /// Largest memory cap a call may ask for, in MiB (default 1024).
    pub max_memory_mb: u64,
    /// Largest table a guest may grow, in elements (default 20,000).
    pub max_table_elements: usize,
    /// Largest number of core instances, tables or memories one tool
    /// instance may create (default 32).
    pub max_instance_parts: usize,
    /// Instances that may exist at once: the pool's size (default 256).
    pub max_concurrent_instances: u32,
    /// Largest argument text accepted, in bytes (default 1 MiB).
    pub max_args_bytes: usize,
    /// Largest result a tool may return, in bytes (default 1 MiB); also the
    /// limit for each partial result.
    pub max_result_bytes: usize,
    /// Stdout and stderr kept per call, each, in bytes (default 64 KiB).
    pub max_output_bytes: usize,
    /// Log text kept per call through `host.log`, in bytes (default 256 KiB).
    pub max_log_bytes: usize,
    /// Use the pooling instance allocator (default true).
    pub pooling: bool,
    /// Where compiled artifacts are cached; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            default_fuel: 1_000_000_000,
            default_timeout: Duration::from_secs(30),
            default_memory_mb: 64,
            max_memory_mb: 1024,
            max_table_elements: 20_000,
            max_instance_parts: 32,
            max_concurrent_instances: 256,
            max_args_bytes: MIB as usize,
            max_result_bytes: MIB as usize,
            max_output_bytes: 64 * 1024,
            max_log_bytes: 256 * 1024,
            pooling: true,
            cache_dir: None,
        }
    }
}

/// How often the epoch advances; a call's timeout fires within about one
/// tick of its deadline. A sleeping thread waking 1,000 times a second costs
/// next to nothing, and wasmtime's epoch check is a load and a compare.
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Guest code runs on a fiber stack this large (wasm frames plus host calls).
const ASYNC_STACK: usize = 2 * 1024 * 1024;
/// Recursion deeper than this traps with a stack overflow.
const MAX_WASM_STACK: usize = 512 * 1024;
/// Pages of a pooled memory kept mapped between instances; at least a
/// guest's usual footprint, or the pool does not scale across threads.
const KEEP_RESIDENT: usize = 16 * 1024 * 1024;

/// The sandbox: one wasmtime engine, the host imports, and the limits.
pub struct Runtime {
    engine: Engine,
    linker: Linker<CallState>,
    config: RuntimeConfig,
    totals: totals::Totals,
    _ticker: EpochTicker,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Builds the engine, the linker and the epoch ticker.
    ///
    /// # Errors
    ///
    /// [`Error::Runtime`] when wasmtime rejects the configuration.
    pub fn new(config: RuntimeConfig) -> Result<Self> {
        if config.default_memory_mb > config.max_memory_mb {
            return Err(Error::LimitOutOfRange {
                limit: "default_memory_mb",
                value: config.default_memory_mb,
                max: config.max_memory_mb,
            });
        }
        let engine = match Self::engine(&config, config.pooling) {
            Ok(engine) => engine,
            Err(err) if config.pooling => {
                tracing::warn!(
                    error = %err,
                    "cannot reserve the instance pool; falling back to on-demand allocation"
                );
                Self::engine(&config, false)?
            }
            Err(err) => return Err(err),
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|err| Error::runtime("cannot link WASI", &err))?;
        bindings_impl::Tool::add_to_linker::<_, wasmtime::component::HasSelf<_>>(
            &mut linker,
            |state| state,
        )
        .map_err(|err| Error::runtime("cannot link the host interface", &err))?;
        let ticker = EpochTicker::start(engine.clone())?;
        Ok(Self {
            engine,
            linker,
            config,
            totals: totals::Totals::default(),
            _ticker: ticker,
        })
    }

    /// What every call so far has used, added up.
    pub fn totals(&self) -> UsageTotals {
        self.totals.snapshot()
    }

    fn engine(config: &RuntimeConfig, pooling: bool) -> Result<Engine> {
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .consume_fuel(true)
            .epoch_interruption(true)
            .max_wasm_stack(MAX_WASM_STACK)
            .async_stack_size(ASYNC_STACK)
            .memory_init_cow(true)
            .parallel_compilation(true);
        if pooling {
            let slots = config.max_concurrent_instances;
            let parts = u32::try_from(config.max_instance_parts).unwrap_or(u32::MAX);
            let mut pool = PoolingAllocationConfig::new();
            pool.total_component_instances(slots)
                .total_core_instances(slots.saturating_mul(parts.min(8)))
                .total_memories(slots.saturating_mul(2))
                .total_tables(slots.saturating_mul(4))
                .total_stacks(slots)
                .max_core_instances_per_component(parts)
                .max_memories_per_component(parts.min(8))
                .max_tables_per_component(parts)
                .max_memory_size(
                    usize::try_from(config.max_memory_mb.saturating_mul(MIB)).unwrap_or(usize::MAX),
                )
                .table_elements(config.max_table_elements)
                .linear_memory_keep_resident(KEEP_RESIDENT)
                .table_keep_resident(KEEP_RESIDENT / 16)
                // Reset only the pages a call dirtied (Linux 6.7+), instead
                // of everything up to `KEEP_RESIDENT`.
                .pagemap_scan(Enabled::Auto);
            wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        Engine::new(&wasm).map_err(|err| Error::runtime("cannot configure wasmtime", &err))
    }

    /// The limits this runtime applies.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// The wasmtime engine, for hosts that drive components themselves.
    pub fn wasmtime_engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles a component, or loads its compiled artifact from the cache.
    ///
    /// # Errors
    ///
    /// [`Error::NotWasm`], [`Error::CoreModule`] or [`Error::InvalidComponent`]
    /// for bytes that are not a valid component; [`Error::Io`] when the cache
    /// cannot be written.
    pub fn load(&self, bytes: &[u8]) -> Result<LoadedComponent> {
        check_header(bytes)?;
        let hash = cache::content_hash(bytes);
        let (component, source) = cache::load_or_compile(self, bytes, &hash)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .and_then(bindings_impl::ToolPre::new)
            .map_err(|err| Error::WrongWorld {
                reason: error_chain(&err),
            })?;
        Ok(LoadedComponent {
            pre: Arc::new(pre),
            hash,
            source,
        })
    }

    fn compile(&self, bytes: &[u8]) -> Result<Component> {
        Component::new(&self.engine, bytes).map_err(|err| Error::InvalidComponent {
            reason: error_chain(&err),
        })
    }
}

/// A component compiled and linked against the `work:tool` world, ready to
/// be instantiated for each call.
#[derive(Clone)]
pub struct LoadedComponent {
    pre: Arc<bindings_impl::ToolPre<CallState>>,
    hash: String,
    source: ArtifactSource,
}

impl LoadedComponent {
    /// SHA-256 of the component's bytes, hex.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// Whether this load compiled the component or reused a cached artifact.
    pub fn source(&self) -> ArtifactSource {
        self.source
    }
}

impl std::fmt::Debug for LoadedComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedComponent")
            .field("hash", &self.hash)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Tells a core module and non-WebAssembly bytes from a component before
/// handing them to the compiler, whose errors for those are cryptic.
fn check_header(bytes: &[u8]) -> Result<()> {
    const MAGIC: &[u8] = b"\0asm";
    const CORE_VERSION: &[u8] = &[1, 0, 0, 0];
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(Error::NotWasm);
    }
    if &bytes[4..8] == CORE_VERSION {
        return Err(Error::CoreModule);
    }
    Ok(())
}

/// Every message in an error's chain, joined, for errors shown to users.
pub(crate) fn error_chain(err: &wasmtime::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|seen| seen.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("work-engine-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .map_err(Error::Io)?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_check_names_the_problem() {
        assert!(matches!(check_header(b"hello world"), Err(Error::NotWasm)));
        assert!(matches!(check_header(b"\0asm"), Err(Error::NotWasm)));
        assert!(matches!(
            check_header(b"\0asm\x01\0\0\0"),
            Err(Error::CoreModule)
        ));
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
    }
}
