//! `GET /metrics`: the engine and the sandbox in Prometheus's text format.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::AppState;
use super::caller::Operator;
use crate::scheduler::{Histogram, LevelStats};
use work_host_api::JobStatus;

/// `text/plain; version=0.0.4`.
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        super::problem::Refused,
    )
)]
pub(super) async fn metrics(
    State(state): State<AppState>,
    _: Operator,
) -> Result<impl IntoResponse, super::ApiError> {
    let stats = state.engine.stats();
    let wasm = state.host.runtime().totals();
    let mut out = Text::default();

    let mut jobs = out.family(
        "work_engine_jobs",
        "gauge",
        "Jobs by tenant, priority and status, since the engine started (terminal statuses only grow).",
    );
    for tenant in &stats.tenants {
        for (priority, counts) in &tenant.by_priority {
            for status in JobStatus::ALL {
                let n = counts.get(status);
                if n > 0 {
                    let labels = [
                        ("tenant", tenant.tenant_id.as_str()),
                        ("priority", priority.as_str()),
                        ("status", status.as_str()),
                    ];
                    jobs.sample(&labels, n as f64);
                }
            }
        }
    }
    let mut cost = out.family(
        "work_engine_tenant_cost_usd_total",
        "counter",
        "US dollars each tenant's attempts were charged, since the engine started.",
    );
    for tenant in &stats.tenants {
        cost.sample(&[("tenant", tenant.tenant_id.as_str())], tenant.cost_usd);
    }
    let levels = |out: &mut Text, name, help, value: fn(&LevelStats) -> f64| {
        let mut family = out.family(name, "gauge", help);
        for level in &stats.levels {
            family.sample(&[("priority", level.priority.as_str())], value(level));
        }
    };
    levels(
        &mut out,
        "work_engine_queue_depth",
        "Jobs waiting in each priority queue.",
        |level| level.depth as f64,
    );
    levels(
        &mut out,
        "work_engine_queue_capacity",
        "Capacity of each priority queue.",
        |level| level.capacity as f64,
    );
    let mut wait = out.family(
        "work_engine_wait_seconds",
        "histogram",
        "Time from queued to started.",
    );
    for level in &stats.levels {
        wait.histogram(
            &[("priority", level.priority.as_str())],
            &level.wait_seconds,
        );
    }
    out.family(
        "work_engine_run_seconds",
        "histogram",
        "Time from started to ended, per attempt.",
    )
    .histogram(&[], &stats.run_seconds);
    let mut attempts = out.family(
        "work_engine_attempts_total",
        "counter",
        "Attempts by the outcome class they ended with.",
    );
    for (class, n) in &stats.outcomes {
        attempts.sample(&[("outcome", class)], *n as f64);
    }
    out.family(
        "work_engine_jobs_finished_total",
        "counter",
        "Jobs that reached a terminal status.",
    )
    .sample(&[], stats.finished_total as f64);

    let resources = &stats.resources;
    let mut cpu = out.family(
        "work_engine_cpu_cores",
        "gauge",
        "CPU cores: held by running jobs, and in all.",
    );
    cpu.sample(&[("state", "in_use")], resources.cpu_in_use);
    cpu.sample(&[("state", "capacity")], resources.cpu_capacity);
    let mut memory = out.family(
        "work_engine_memory_mb",
        "gauge",
        "Memory in MiB: held by running jobs, and in all.",
    );
    memory.sample(&[("state", "in_use")], resources.memory_mb_in_use as f64);
    memory.sample(
        &[("state", "capacity")],
        resources.memory_mb_capacity as f64,
    );
    let mut gpus = out.family(
        "work_engine_gpus",
        "gauge",
        "GPUs by type: held by running jobs, and in all.",
    );
    for (kind, n) in &resources.gpus_capacity {
        let used = resources.gpus_in_use.get(kind).copied().unwrap_or(0);
        gpus.sample(&[("type", kind), ("state", "in_use")], f64::from(used));
        gpus.sample(&[("type", kind), ("state", "capacity")], f64::from(*n));
    }

    out.family(
        "work_engine_wasm_calls_total",
        "counter",
        "Sandboxed instances run.",
    )
    .sample(&[], wasm.calls as f64);
    out.family(
        "work_engine_wasm_fuel_consumed_total",
        "counter",
        "Fuel burnt by sandboxed calls.",
    )
    .sample(&[], wasm.fuel_consumed as f64);
    out.family(
        "work_engine_wasm_peak_memory_bytes",
        "histogram",
        "Peak linear memory of each sandboxed instance.",
    )
    .histogram(&[], &wasm.peak_memory_bytes);

    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out.0,
    ))
}

/// The exposition text being written.
#[derive(Default)]
struct Text(String);

impl Text {
    /// Starts the family `name`: its `HELP` and `TYPE` lines, then its
    /// samples through the handle.
    fn family<'a>(&'a mut self, name: &'a str, kind: &str, help: &str) -> Family<'a> {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
        Family { out: self, name }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{key}=\"{}\"", escape(value));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {}", number(value));
    }
}

/// One metric family's samples.
struct Family<'a> {
    out: &'a mut Text,
    name: &'a str,
}

impl Family<'_> {
    fn sample(&mut self, labels: &[(&str, &str)], value: f64) {
        self.out.sample(self.name, labels, value);
    }

    fn histogram(&mut self, labels: &[(&str, &str)], histogram: &Histogram) {
        let name = self.name;
        let bucket = format!("{name}_bucket");
        for (bound, n) in histogram.cumulative() {
            let le = number(bound);
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.out.sample(&bucket, &with_le, n as f64);
        }
        self.out
            .sample(&format!("{name}_sum"), labels, histogram.sum);
        self.out
            .sample(&format!("{name}_count"), labels, histogram.count as f64);
    }
}

fn number(value: f64) -> String {
    if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        value.to_string()
    }
}

/// Label values escape `\`, `"` and newlines.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_end_at_infinity() {
        let mut histogram = Histogram::new(&[1.0, 2.0]);
        for value in [0.5, 1.5, 1.7, 9.0] {
            histogram.observe(value);
        }
        let mut out = Text::default();
        out.family("t", "histogram", "h")
            .histogram(&[("a", "x\"y")], &histogram);
        assert_eq!(
            out.0,
            "# HELP t h\n# TYPE t histogram\n\
             t_bucket{a=\"x\\\"y\",le=\"1\"} 1\nt_bucket{a=\"x\\\"y\",le=\"2\"} 3\n\
             t_bucket{a=\"x\\\"y\",le=\"+Inf\"} 4\nt_sum{a=\"x\\\"y\"} 12.7\nt_count{a=\"x\\\"y\"} 4\n"
        );
    }
}
