//! Run with: `cargo run -p work-engine --example basic_job [calculator.wasm]`
//!
//! The smallest embedding: register the `calculator` tool, submit one
//! `tool_call` job, wait for it, print the result. The component defaults to
//! the one `./scripts/quickstart.sh` builds.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use work_engine::runtime::{Grants, RuntimeConfig};
use work_engine::{Engine, NewJob, ToolHost};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let wasm_path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/wasm32-wasip2/release/calculator.wasm".to_owned());
    let data = tempfile::TempDir::new()?;
    let host = Arc::new(ToolHost::open(data.path(), RuntimeConfig::default())?);
    host.register(&std::fs::read(&wasm_path)?, Grants::default())
        .await?;

    let engine = Engine::builder().tool_host(host).build()?;
    let job = engine
        .submit(NewJob::tool_call(
            "acme",
            "calculator",
            json!({"op": "mul", "a": 6, "b": 7}),
        ))
        .await?;
    println!("submitted {} ({})", job.id, job.status);

    let done = engine.wait(job.id, Duration::from_secs(10)).await?;
    println!("{}: {}", done.status, serde_json::to_string(&done.result)?);
    anyhow::ensure!(done.result == Some(json!(42.0)), "unexpected result");
    Ok(())
}
