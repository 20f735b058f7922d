//! `work-engine call TOOL --args JSON`

use super::remote::Remote;
use super::{FAILED, errln, open_host, outln, print_json};
use crate::registry::ToolScope;
use crate::runtime::{CallEvent, CallOptions, CallReport, RuntimeConfig};
use anyhow::Context;
use clap::Args;
use serde_json::{Value, json};
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

#[derive(Debug, Args)]
pub(super) struct CallArgs {
    /// The tool: `name` (newest version) or `name@version`.
    tool: String,
    /// The arguments, a JSON object.
    #[arg(long, value_name = "JSON", default_value = "{}")]
    args: String,
    /// Wall-clock deadline in milliseconds (default 30000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: Option<u64>,
    /// Fuel budget (default 1000000000).
    #[arg(long, value_name = "N")]
    fuel: Option<u64>,
    /// Memory cap for the whole instance in MiB (default 64, at most 1024).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    memory_mb: Option<u64>,
    /// Print one JSON object: status, result or error, usage, and the logs,
    /// progress and partial results the tool produced.
    #[arg(long)]
    json: bool,
}

impl CallArgs {
    pub(super) async fn run(
        self,
        data_dir: &Path,
        server: Option<&Remote>,
    ) -> anyhow::Result<ExitCode> {
        if let Some(remote) = server {
            return self.through(remote).await;
        }
        let host = open_host(data_dir, RuntimeConfig::default())?;
        let ready = match host.prepare(ToolScope::Shared, &self.tool) {
            Ok(ready) => ready,
            Err(err) => return self.refused(&err),
        };
        let events: Arc<Mutex<Vec<CallEvent>>> = Arc::default();
        let sink = Arc::clone(&events);
        let options = CallOptions {
            fuel: self.fuel,
            memory_mb: self.memory_mb,
            timeout: self.timeout_ms.map(Duration::from_millis),
            events: Some(Arc::new(move |event: &CallEvent| {
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(event.clone());
            })),
            ..CallOptions::default()
        };
        let report = match host.call_ready(&ready, &self.args, options).await {
            Ok(report) => report,
            Err(err) => return self.refused(&err),
        };
        let events = std::mem::take(&mut *events.lock().unwrap_or_else(PoisonError::into_inner));
        if self.json {
            let mut output = report_json(&report, &events);
            output["tool"] = json!(ready.manifest().id());
            output["artifact"] = json!(ready.source());
            print_json(&output)?;
        } else {
            match &report.outcome {
                Ok(Value::String(text)) => outln!("{text}"),
                Ok(value) => outln!("{}", serde_json::to_string_pretty(value)?),
                Err(failure) => errln!("error: {failure}"),
            }
        }
        Ok(if report.outcome.is_ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(FAILED)
        })
    }

    /// The call as a `realtime` job of the server: prints the result, or
    /// the job with `--json`.
    async fn through(self, remote: &Remote) -> anyhow::Result<ExitCode> {
        let args: Value = serde_json::from_str(&self.args).context("--args is not JSON")?;
        let mut resources = json!({});
        if let Some(ms) = self.timeout_ms {
            resources["timeout_ms"] = json!(ms);
        }
        if let Some(fuel) = self.fuel {
            resources["fuel"] = json!(fuel);
        }
        if let Some(mb) = self.memory_mb {
            resources["memory_mb"] = json!(mb);
        }
        let job = remote
            .post(
                &format!("/v1/tools/{}/call", self.tool),
                &json!({"args": args, "resources": resources}),
            )
            .await?;
        let succeeded = job["status"] == "succeeded";
        if self.json {
            print_json(&job)?;
        } else if succeeded {
            match &job["result"] {
                Value::String(text) => outln!("{text}"),
                value => outln!("{}", serde_json::to_string_pretty(value)?),
            }
        } else {
            let message = job["error"]["message"].as_str().unwrap_or("did not finish");
            errln!(
                "error: {} ({})",
                message,
                job["status"].as_str().unwrap_or("?")
            );
        }
        Ok(if succeeded {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(FAILED)
        })
    }

    /// A call that could not start: unknown tool, invalid arguments.
    fn refused(&self, err: &crate::Error) -> anyhow::Result<ExitCode> {
        if self.json {
            let mut error = json!({"code": err.code(), "message": err.to_string()});
            if let crate::Error::InvalidArgs { violations, .. } = err {
                error["violations"] = json!(violations);
            }
            print_json(&json!({"status": "error", "tool": self.tool, "error": error}))?;
        } else {
            errln!("error: {err}");
        }
        Ok(ExitCode::from(FAILED))
    }
}

/// The `--json` shape of a call that ran.
fn report_json(report: &CallReport, events: &[CallEvent]) -> Value {
    let mut logs = Vec::new();
    let mut progress = Vec::new();
    let mut partials = Vec::new();
    for event in events {
        match event {
            CallEvent::Log { level, message } => {
                logs.push(json!({"level": level, "message": message}))
            }
            CallEvent::Progress { fraction, message } => {
                progress.push(json!({"fraction": fraction, "message": message}));
            }
            CallEvent::Partial { value } => partials.push(value.clone()),
        }
    }
    let mut output = json!({
        "call_id": report.call_id,
        "fuel_consumed": report.usage.fuel_consumed,
        "duration_ms": report.usage.total().as_micros() as f64 / 1000.0,
        "usage": report.usage,
        "logs": logs,
        "progress": progress,
        "partials": partials,
        "stdout": report.stdout,
        "stderr": report.stderr,
    });
    match &report.outcome {
        Ok(result) => {
            output["status"] = json!("ok");
            output["result"] = result.clone();
        }
        Err(failure) => {
            output["status"] = json!("error");
            let mut error = json!({"code": failure.class, "message": failure.message});
            if let Some(kind) = failure.tool_error {
                error["kind"] = json!(kind);
            }
            output["error"] = error;
        }
    }
    output
}
