//! The contract between work-engine and the backends that run its work.
//!
//! This crate is deliberately small and depends on neither wasmtime, nor
//! Tokio's runtime, nor the engine, so a native backend (a training loop, an
//! inference server) can implement it without pulling any of them in. It
//! holds:
//!
//! - the job types of the product contract, with their JSON names: [`Job`],
//!   [`NewJob`], [`JobKind`], [`Priority`], [`Resources`], [`Constraints`],
//!   [`RetryPolicy`], [`JobStatus`], [`JobError`];
//! - the [`OutcomeClass`] every attempt ends in, which decides retries;
//! - the [`Backend`] trait and the [`ExecContext`] an attempt runs with.
//!
//! ```
//! use work_host_api::{Job, JobStatus, NewJob, OutcomeClass};
//!
//! let job: NewJob = serde_json::from_str(r#"{
//!     "kind": "training_step", "tenant_id": "acme",
//!     "resources": {"gpu": "A100", "gpu_count": 2},
//!     "constraints": {"retry_policy": {"max_attempts": 5}}
//! }"#).unwrap();
//! assert_eq!(job.resources.gpu_count, 2);
//!
//! let class: OutcomeClass = serde_json::from_str("\"out_of_fuel\"").unwrap();
//! assert!(!class.is_retryable());
//! assert!(JobStatus::Timeout.is_terminal());
//! ```

mod backend;
mod job;
mod outcome;
mod payload;

pub use async_trait::async_trait;
pub use backend::{
    AdmitError, Backend, CostMeter, Device, ExecContext, ExecError, ExecUpdate, UpdateSink,
    Violation,
};
pub use compact_str::CompactString;
pub use job::{
    Backoff, Constraints, Job, JobError, JobId, JobKind, JobStatus, NewJob, Priority, Resources,
    RetryPolicy, ToolCall,
};
pub use outcome::{OutcomeClass, OutcomeSet};
pub use payload::Payload;
pub use tokio_util::sync::CancellationToken;
