//! Run with: `cargo run -p work-engine --example tenant_fairness`
//!
//! Two tenants flood the `batch` level with 2,000 jobs each (one of them
//! with twice the weight), then a third submits one job: it starts within
//! one round of turns, and the flooders share the engine 2:1.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use work_engine::backends::MockBackend;
use work_engine::{Capacity, Engine, NewJob, TenantConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mock = MockBackend::new();
    let quantum = 4;
    let engine = Engine::builder()
        .capacity(Capacity {
            cpu: 1.0,
            memory_mb: 1024,
            gpus: vec![],
        })
        .quantum(quantum)
        .tenant(
            "big-co",
            TenantConfig {
                weight: 2,
                ..TenantConfig::default()
            },
        )
        .backend(mock.clone())
        .build()?;
    // A job that holds the only CPU while both floods are queued.
    let blocker = engine
        .submit(NewJob::new(
            "demo",
            "ops",
            json!({"mock": {"delay_ms": 300}}),
        ))
        .await?;
    let mut ids = vec![blocker.id];
    for tenant in ["big-co", "small-co"] {
        let flood = (0..2_000)
            .map(|_| NewJob::new("demo", tenant, json!({})))
            .collect();
        ids.extend(
            engine
                .submit_batch(flood)
                .await?
                .jobs
                .into_iter()
                .map(|job| job.id),
        );
    }
    let before = mock.history().len();
    let late = engine
        .submit(NewJob::new("demo", "late-co", json!({})))
        .await?;
    ids.push(late.id);
    for id in ids {
        engine.wait(id, Duration::from_secs(30)).await?;
    }

    let history = mock.history();
    let position = history
        .iter()
        .position(|run| run.job_id == late.id)
        .unwrap_or(usize::MAX);
    println!(
        "late-co's job started after {} other dispatches (bound: tenants x quantum x weight = {}, plus the job already dispatched)",
        position - before,
        (1 + 2 + 1) * quantum
    );
    let mut share: HashMap<String, usize> = HashMap::new();
    for run in history.iter().skip(1).take(300) {
        *share.entry(run.tenant_id.clone()).or_default() += 1;
    }
    println!("first 300 dispatches by tenant: {share:?}");
    Ok(())
}
