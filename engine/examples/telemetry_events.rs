//! Run with: `cargo run -p work-engine --example telemetry_events`
//!
//! Subscribes to the event stream and prints every event of a job that
//! fails once and succeeds on its retry, as JSON lines, then the stats.
//! With `WORK_ENGINE_LOG=work_engine::event=debug` the same events also go
//! to `tracing` (here printed by `tracing-subscriber`).

use std::time::Duration;

use serde_json::json;
use work_engine::backends::MockBackend;
use work_engine::{Capacity, Engine, NewJob, RetryPolicy};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("WORK_ENGINE_LOG"))
        .init();
    let engine = Engine::builder()
        .capacity(Capacity {
            cpu: 2.0,
            memory_mb: 1024,
            gpus: vec![],
        })
        .backend(MockBackend::new())
        .build()?;
    let mut events = engine.subscribe();

    let policy = RetryPolicy {
        max_attempts: 2,
        base_delay_ms: 10,
        ..RetryPolicy::default()
    };
    let job = NewJob::new(
        "inference",
        "acme",
        json!({"mock": {"fail_times": 1, "fail_class": "trap"}}),
    )
    .with_retry_policy(policy);
    let job = engine.submit(job).await?;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv()).await??;
        println!("{}", serde_json::to_string(&event)?);
        if event.job_id == Some(job.id) && event.data.is_terminal() {
            break;
        }
    }
    println!("{}", serde_json::to_string_pretty(&engine.stats().jobs)?);
    Ok(())
}
