//! Run with: `cargo run -p work-engine --example custom_backend`
//!
//! A native, GPU-aware backend behind the `Backend` trait of
//! `work-host-api`: it runs `training_step` jobs, reports progress, stops
//! when cancelled, and sees the device ids the scheduler assigned. The
//! engine has two A100s; a 2-GPU step waits until both are free.

use std::time::Duration;

use serde_json::json;
use work_engine::{
    Backend, Capacity, Engine, ExecContext, ExecError, Job, JobKind, NewJob, OutcomeClass,
    Resources,
};
use work_host_api::async_trait;

struct Trainer;

/// A training step's payload.
#[derive(serde::Deserialize)]
struct Step {
    #[serde(default = "Step::default_steps")]
    steps: u64,
}

impl Step {
    fn default_steps() -> u64 {
        3
    }
}

#[async_trait]
impl Backend for Trainer {
    fn name(&self) -> &str {
        "trainer"
    }

    fn supports(&self, job: &Job) -> bool {
        job.kind == JobKind::TrainingStep
    }

    async fn execute(&self, job: &Job, ctx: ExecContext) -> Result<serde_json::Value, ExecError> {
        let devices: Vec<&str> = ctx.devices().iter().map(|d| d.id.as_str()).collect();
        let Step { steps } = job.payload.parse().map_err(|err| {
            ExecError::new(OutcomeClass::ToolError, format!("bad payload: {err}"))
        })?;
        for step in 1..=steps {
            if ctx.is_cancelled() {
                return Err(ExecError::new(
                    OutcomeClass::Canceled,
                    "stopped between steps",
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            ctx.progress(
                step as f32 / steps as f32,
                format!("step {step} on {devices:?}"),
            );
        }
        Ok(json!({"loss": 0.25, "devices": devices}))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let engine = Engine::builder()
        .capacity(
            Capacity {
                cpu: 8.0,
                memory_mb: 32_768,
                gpus: vec![],
            }
            .with_gpus("A100", ["0", "1"]),
        )
        .backend(Trainer)
        .build()?;
    let step = |gpus: u32| {
        NewJob::new(JobKind::TrainingStep, "lab", json!({"steps": 3})).with_resources(Resources {
            gpu: Some("A100".into()),
            gpu_count: gpus,
            ..Resources::default()
        })
    };
    let one = engine.submit(step(1)).await?;
    let two = engine.submit(step(2)).await?;
    for id in [one.id, two.id] {
        let done = engine.wait(id, Duration::from_secs(10)).await?;
        println!(
            "{} on {}: {}",
            done.status,
            done.backend.as_deref().unwrap_or_default(),
            done.result.clone().unwrap_or_default()
        );
    }
    Ok(())
}
