//! Run with: `cargo run -p work-engine --example retry_policies`
//!
//! The same flaky job (it fails its first three attempts with a trap) under
//! exponential, linear and constant backoff, and one that never gets
//! enough attempts and ends in the dead-letter queue, from which it is
//! retried.

use std::time::Duration;

use serde_json::json;
use work_engine::backends::MockBackend;
use work_engine::{Backoff, Capacity, Engine, EventData, JobQuery, NewJob, RetryPolicy};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mock = MockBackend::new();
    let engine = Engine::builder()
        .capacity(Capacity {
            cpu: 4.0,
            memory_mb: 1024,
            gpus: vec![],
        })
        .backend(mock.clone())
        .build()?;
    let flaky = || {
        NewJob::new(
            "demo",
            "acme",
            json!({"mock": {"fail_times": 3, "fail_class": "trap"}}),
        )
    };

    for backoff in [Backoff::Exponential, Backoff::Linear, Backoff::Constant] {
        let policy = RetryPolicy {
            max_attempts: 4,
            backoff,
            base_delay_ms: 20,
            max_delay_ms: 1_000,
            jitter: false,
            ..RetryPolicy::default()
        };
        let mut events = engine.subscribe();
        let job = engine.submit(flaky().with_retry_policy(policy)).await?;
        let done = engine.wait(job.id, Duration::from_secs(10)).await?;
        // The backoff the engine chose before each retry, from its events.
        let mut waits = Vec::new();
        while let Ok(Some(event)) = events.try_recv() {
            if let EventData::Retry { delay_ms, .. } = event.data {
                waits.push(delay_ms);
            }
        }
        let runs: Vec<_> = mock
            .history()
            .into_iter()
            .filter(|r| r.job_id == job.id)
            .collect();
        let measured: Vec<u128> = runs
            .windows(2)
            .map(|w| (w[1].started - w[0].ended).as_millis())
            .collect();
        println!(
            "{backoff:?}: {} after {} attempts, waits {waits:?} ms (measured {measured:?})",
            done.status, done.attempt
        );
    }

    let short = RetryPolicy {
        max_attempts: 2,
        base_delay_ms: 10,
        ..RetryPolicy::default()
    };
    let job = engine.submit(flaky().with_retry_policy(short)).await?;
    let done = engine.wait(job.id, Duration::from_secs(10)).await?;
    let letters = engine.dead_letters(&JobQuery::tenant("acme")).await?;
    println!(
        "{} after {} attempts; dead letters: {}",
        done.status,
        done.attempt,
        letters.jobs.len()
    );
    engine.retry_dead_letter(job.id).await?;
    let again = engine.wait(job.id, Duration::from_secs(10)).await?;
    println!(
        "retried from the dead-letter queue: {} after {} more attempts",
        again.status, again.attempt
    );
    Ok(())
}
