//! Shared set-up: a data directory, a host, registered guests.

use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;
use work_engine::runtime::{CallOptions, Grants, RuntimeConfig};
use work_engine::{Engine, Job, NewJob, ToolHost};

/// A small pool: tests need few instances at once, and each test builds
/// its own engine.
pub fn config() -> RuntimeConfig {
    RuntimeConfig {
        max_concurrent_instances: 16,
        ..RuntimeConfig::default()
    }
}

pub fn host(dir: &TempDir) -> ToolHost {
    ToolHost::open(dir.path(), config()).unwrap()
}

pub fn wasm(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// A fresh data directory with `guests` registered (no grants).
pub async fn host_with(guests: &[&str]) -> (TempDir, ToolHost) {
    let dir = TempDir::new().unwrap();
    let host = host(&dir);
    for path in guests {
        host.register(&wasm(path), Grants::default()).await.unwrap();
    }
    (dir, host)
}

pub fn with_timeout(ms: u64) -> CallOptions {
    CallOptions {
        timeout: Some(Duration::from_millis(ms)),
        ..CallOptions::default()
    }
}

/// Submits `job` and waits up to `timeout` for it to end; the job as it is
/// then.
pub async fn submit_and_wait(engine: &Engine, job: NewJob, timeout: Duration) -> Arc<Job> {
    let id = engine.submit(job).await.unwrap().id;
    engine.wait(id, timeout).await.unwrap()
}
