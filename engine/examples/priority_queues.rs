//! Run with: `cargo run -p work-engine --example priority_queues`
//!
//! One CPU, one job holding it, then jobs at all four levels submitted
//! lowest first: they start highest first (`realtime`, `interactive`,
//! `batch`, `offline`), and in submission order within a level.

use std::time::Duration;

use serde_json::json;
use work_engine::backends::MockBackend;
use work_engine::{Capacity, Engine, NewJob, Priority};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mock = MockBackend::new();
    let engine = Engine::builder()
        .capacity(Capacity {
            cpu: 1.0,
            memory_mb: 1024,
            gpus: vec![],
        })
        .backend(mock.clone())
        .build()?;
    let job = |label: &str, delay_ms: u64| {
        NewJob::new(
            "demo",
            "acme",
            json!({"label": label, "mock": {"delay_ms": delay_ms}}),
        )
    };

    // Long enough for the others to be queued behind it, even on a busy
    // machine.
    let blocker = engine.submit(job("blocker", 300)).await?;
    let mut ids = vec![blocker.id];
    for priority in [
        Priority::Offline,
        Priority::Batch,
        Priority::Interactive,
        Priority::Realtime,
    ] {
        for n in 1..=2 {
            let label = format!("{priority}-{n}");
            ids.push(
                engine
                    .submit(job(&label, 5).with_priority(priority))
                    .await?
                    .id,
            );
        }
    }
    for id in &ids {
        engine.wait(*id, Duration::from_secs(10)).await?;
    }

    let mut runs = mock.history();
    runs.sort_by_key(|run| run.started);
    for (position, run) in runs.iter().enumerate() {
        let job = engine.get(run.job_id).await?;
        let label: Option<String> = job
            .payload
            .field("label")
            .and_then(|text| serde_json::from_str(text).ok());
        println!(
            "{position}: {} ({})",
            label.as_deref().unwrap_or("?"),
            job.priority
        );
    }
    Ok(())
}
