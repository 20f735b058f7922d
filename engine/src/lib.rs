//! work-engine: run untrusted tool calls in WebAssembly sandboxes.
//!
//! A **tool** is a WebAssembly component of the `work:tool` world (see
//! `wit/tool.wit`), written with the `work-guest-sdk` crate and built for
//! `wasm32-wasip2`. It declares a name, a description and a JSON Schema of
//! its parameters. The engine registers tools, validates arguments against
//! their schema before any guest code runs, and runs each call in its own
//! fresh wasmtime instance limited in fuel, memory and wall-clock time.
//!
//! ```no_run
//! use work_engine::ToolHost;
//! use work_engine::runtime::{CallOptions, Grants, RuntimeConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let host = ToolHost::open(".work-engine", RuntimeConfig::default())?;
//! let wasm = std::fs::read("target/wasm32-wasip2/release/calculator.wasm")?;
//! host.register(&wasm, Grants::default()).await?;
//!
//! let options = CallOptions {
//!     timeout: Some(std::time::Duration::from_secs(1)),
//!     ..CallOptions::default()
//! };
//! let report = host
//!     .call("calculator", r#"{"op": "mul", "a": 6, "b": 7}"#, options)
//!     .await?;
//! println!("{} after {} fuel", report.outcome?, report.usage.fuel_consumed);
//! # Ok(()) }
//! ```
//!
//! Core concepts:
//!
//! - [`ToolHost`]: the registry and the sandbox together; the entry point.
//! - [`registry`]: registered tools on disk, by name and version.
//! - [`runtime`]: the sandbox — wasmtime configured once, a fresh limited
//!   instance per call, and the [outcome class](work_host_api::OutcomeClass)
//!   of every call.
//! - [`Error`]: why work could not *start*; how a call *ended* is in its
//!   [`CallReport`](runtime::CallReport).
//!
//! Calls are async and need a Tokio runtime with its timer enabled.

mod atomic_file;
#[cfg(feature = "server")]
pub mod auth;
pub mod backends;
#[cfg(feature = "cli")]
pub mod commands;
mod error;
pub mod events;
#[cfg(any(feature = "sqlite", feature = "server"))]
mod group_queue;
mod id_map;
mod job_ids;
pub mod registry;
#[cfg(any(feature = "sqlite", feature = "server"))]
mod retention;
pub mod runtime;
pub mod scheduler;
#[cfg(feature = "server")]
pub mod server;
mod spinning_mutex;
pub mod store;
mod token_bucket;
mod tool_host;

pub use error::{Error, Result, Violation};
pub use events::{Event, EventData, EventObserver, EventStream, EventStreamError};
pub use scheduler::{
    Batch, Capacity, Engine, EngineBuilder, EngineError, Quota, Stats, TenantConfig,
};
pub use store::{JobPage, JobQuery};
pub use tool_host::{ReadyTool, Registered, ToolHost};
pub use work_host_api::{
    AdmitError, Backend, Backoff, Constraints, CostMeter, Device, ExecContext, ExecError,
    ExecUpdate, Job, JobError, JobId, JobKind, JobStatus, NewJob, OutcomeClass, OutcomeSet,
    Payload, Priority, Resources, RetryPolicy,
};
