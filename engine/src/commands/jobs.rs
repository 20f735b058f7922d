//! `work-engine submit`, `jobs`, `stats` and `dlq`: jobs through a running
//! server (`--server URL`), or read from the data directory's store.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::remote::{Remote, query_string};
use super::{FAILED, outln, print_json};
use crate::store::{JobQuery, SqliteStore, Store};
use work_host_api::JobStatus;

/// Where the job commands act.
pub(super) enum Target {
    Server(Remote),
    /// The data directory: its store, read only.
    Local(std::path::PathBuf),
}

impl Target {
    pub(super) fn new(server: Option<&Remote>, data_dir: &Path) -> Self {
        match server {
            Some(remote) => Self::Server(remote.clone()),
            None => Self::Local(data_dir.to_path_buf()),
        }
    }

    fn server(&self, what: &str) -> anyhow::Result<&Remote> {
        match self {
            Self::Server(remote) => Ok(remote),
            Self::Local(_) => anyhow::bail!(
                "{what} needs a running server: pass --server URL (or set WORK_ENGINE_URL)"
            ),
        }
    }

    fn store(dir: &Path) -> anyhow::Result<SqliteStore> {
        let path = dir.join("jobs.db");
        anyhow::ensure!(
            path.exists(),
            "no jobs in {} (`work-engine serve` keeps them in jobs.db); or pass --server URL",
            dir.display()
        );
        SqliteStore::open_read_only(&path)
            .with_context(|| format!("cannot open {}", path.display()))
    }

    /// A page of jobs, from the server or from the data directory.
    async fn page(&self, query: &JobQuery) -> anyhow::Result<Value> {
        match self {
            Self::Server(remote) => {
                let route = if query.dead_letter {
                    "/v1/dead-letters"
                } else {
                    "/v1/jobs"
                };
                let parameters = query_string(&[
                    // None: the key's own.
                    (
                        "tenant",
                        Some(query.tenant_id.clone()).filter(|t| !t.is_empty()),
                    ),
                    ("namespace", query.namespace.clone()),
                    ("status", query.status.map(|s| s.as_str().to_owned())),
                    ("kind", query.kind.as_ref().map(|k| k.as_str().to_owned())),
                    ("limit", query.limit.map(|n| n.to_string())),
                    ("cursor", query.cursor.clone()),
                ]);
                remote.get(&format!("{route}{parameters}")).await
            }
            Self::Local(dir) => {
                let mut query = query.clone();
                if query.tenant_id.is_empty() {
                    query.tenant_id = "default".into();
                }
                Ok(serde_json::to_value(Self::store(dir)?.list(&query).await?)?)
            }
        }
    }
}

#[derive(Debug, Args)]
pub(super) struct SubmitArgs {
    /// A tool call of this tool (`name` or `name@version`).
    #[arg(long, conflicts_with_all = ["kind", "payload"])]
    tool: Option<String>,
    /// The tool's arguments, a JSON object.
    #[arg(long, value_name = "JSON", requires = "tool")]
    args: Option<String>,
    /// The job's kind, for anything but a tool call.
    #[arg(long)]
    kind: Option<String>,
    /// The job's payload, JSON.
    #[arg(long, value_name = "JSON", requires = "kind")]
    payload: Option<String>,
    /// The tenant it runs for. Default: the API key's (`default` on a
    /// server without keys).
    #[arg(long, env = "WORK_ENGINE_TENANT")]
    tenant: Option<String>,
    #[arg(long)]
    namespace: Option<String>,
    /// realtime, interactive, batch or offline.
    #[arg(long)]
    priority: Option<String>,
    /// Your own id for it (`jobs get` does not take it; the API does).
    #[arg(long)]
    external_id: Option<String>,
    /// A second submission with the same key returns the first job.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Deadline of each attempt in milliseconds.
    #[arg(long, value_name = "N")]
    timeout_ms: Option<u64>,
    /// Wait until it ends (up to the server's wait limit); exit 1 unless it
    /// succeeded.
    #[arg(long)]
    wait: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

impl SubmitArgs {
    pub(super) async fn run(self, target: &Target) -> anyhow::Result<ExitCode> {
        let remote = target.server("submit")?;
        let parse = |what: &str, text: &str| -> anyhow::Result<Value> {
            serde_json::from_str(text).with_context(|| format!("--{what} is not JSON"))
        };
        let (kind, payload) = match (&self.tool, &self.kind) {
            (Some(tool), _) => {
                let args = parse("args", self.args.as_deref().unwrap_or("{}"))?;
                ("tool_call".to_owned(), json!({"tool": tool, "args": args}))
            }
            (None, Some(kind)) => {
                let payload = match &self.payload {
                    Some(text) => parse("payload", text)?,
                    None => Value::Null,
                };
                (kind.clone(), payload)
            }
            (None, None) => anyhow::bail!("say what to run: --tool NAME or --kind KIND"),
        };
        let mut job = json!({"kind": kind, "payload": payload});
        if let Some(tenant) = &self.tenant {
            job["tenant_id"] = json!(tenant);
        }
        let mut set = |key: &str, value: Option<Value>| {
            if let Some(value) = value {
                job[key] = value;
            }
        };
        set("namespace", self.namespace.map(Value::from));
        set("priority", self.priority.map(Value::from));
        set("external_id", self.external_id.map(Value::from));
        set(
            "constraints",
            self.idempotency_key
                .map(|key| json!({"idempotency_key": key})),
        );
        set(
            "resources",
            self.timeout_ms.map(|ms| json!({"timeout_ms": ms})),
        );
        let mut job = remote.post("/v1/jobs", &job).await?;
        if self.wait {
            let id = job["id"].as_str().unwrap_or_default().to_owned();
            job = remote.get(&format!("/v1/jobs/{id}/wait")).await?;
        }
        show_job(&job, self.json)?;
        Ok(exit_for(&job, self.wait))
    }
}

#[derive(Debug, Args)]
pub(super) struct JobsArgs {
    #[command(subcommand)]
    action: JobsAction,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum JobsAction {
    /// A tenant's jobs, newest first.
    List(ListArgs),
    /// One job.
    Get { id: String },
    /// Cancel a job that has not ended.
    Cancel { id: String },
    /// Wait until a job ends; exit 1 unless it succeeded.
    Wait {
        id: String,
        /// Give up after this long (the server caps it).
        #[arg(long, value_name = "N")]
        timeout_ms: Option<u64>,
    },
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Default: the API key's (`default` on the data directory).
    #[arg(long, env = "WORK_ENGINE_TENANT")]
    tenant: Option<String>,
    #[arg(long)]
    namespace: Option<String>,
    /// pending, queued, running, succeeded, failed, canceled or timeout.
    #[arg(long)]
    status: Option<JobStatus>,
    #[arg(long)]
    kind: Option<String>,
    /// At most this many (1 to 1000).
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Continue from a previous page's cursor.
    #[arg(long)]
    cursor: Option<String>,
}

impl JobsArgs {
    pub(super) async fn run(self, target: &Target) -> anyhow::Result<ExitCode> {
        match self.action {
            JobsAction::List(list) => {
                let mut query = JobQuery::tenant(list.tenant.unwrap_or_default()).limit(list.limit);
                query.namespace = list.namespace;
                query.status = list.status;
                query.kind = list.kind.map(Into::into);
                query.cursor = list.cursor;
                show_page(&target.page(&query).await?, self.json)?;
                Ok(ExitCode::SUCCESS)
            }
            JobsAction::Get { id } => {
                let job = match target {
                    Target::Server(remote) => remote.get(&format!("/v1/jobs/{id}")).await?,
                    Target::Local(dir) => {
                        let parsed = id
                            .parse()
                            .with_context(|| format!("`{id}` is not a job id"))?;
                        let job = Target::store(dir)?
                            .get(parsed)
                            .await?
                            .with_context(|| format!("job {id} not found"))?;
                        serde_json::to_value(job)?
                    }
                };
                show_job(&job, self.json)?;
                Ok(ExitCode::SUCCESS)
            }
            JobsAction::Cancel { id } => {
                let remote = target.server("jobs cancel")?;
                let job = remote
                    .post(&format!("/v1/jobs/{id}/cancel"), &Value::Null)
                    .await?;
                show_job(&job, self.json)?;
                Ok(ExitCode::SUCCESS)
            }
            JobsAction::Wait { id, timeout_ms } => {
                let remote = target.server("jobs wait")?;
                let timeout = query_string(&[("timeout_ms", timeout_ms.map(|ms| ms.to_string()))]);
                let job = remote.get(&format!("/v1/jobs/{id}/wait{timeout}")).await?;
                show_job(&job, self.json)?;
                Ok(exit_for(&job, true))
            }
        }
    }
}

#[derive(Debug, Args)]
pub(super) struct StatsArgs {
    /// Print JSON (the full snapshot).
    #[arg(long)]
    json: bool,
}

impl StatsArgs {
    pub(super) async fn run(self, target: &Target) -> anyhow::Result<ExitCode> {
        let stats = target.server("stats")?.get("/v1/stats").await?;
        if self.json {
            print_json(&stats)?;
            return Ok(ExitCode::SUCCESS);
        }
        outln!("jobs:         {}", counts(&stats["jobs"]));
        for level in stats["levels"].as_array().into_iter().flatten() {
            outln!(
                "{:<13} depth {}, {}",
                format!("{}:", level["priority"].as_str().unwrap_or("?")),
                level["depth"],
                counts(&level["jobs"])
            );
        }
        let resources = &stats["resources"];
        outln!(
            "resources:    cpu {}/{}, memory {}/{} MiB",
            resources["cpu_in_use"],
            resources["cpu_capacity"],
            resources["memory_mb_in_use"],
            resources["memory_mb_capacity"]
        );
        outln!(
            "throughput:   {:.1} jobs/s, {} finished",
            stats["throughput_per_second"].as_f64().unwrap_or(0.0),
            stats["finished_total"]
        );
        Ok(ExitCode::SUCCESS)
    }
}

fn counts(counts: &Value) -> String {
    counts
        .as_object()
        .map(|counts| {
            counts
                .iter()
                .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                .map(|(status, n)| format!("{status} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .filter(|text| !text.is_empty())
        .unwrap_or_else(|| "none".to_owned())
}

#[derive(Debug, Args)]
pub(super) struct DlqArgs {
    #[command(subcommand)]
    action: DlqAction,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum DlqAction {
    /// A tenant's dead-lettered jobs, newest first.
    List {
        /// Default: the API key's (`default` on the data directory).
        #[arg(long, env = "WORK_ENGINE_TENANT")]
        tenant: Option<String>,
    },
    /// Queue a dead-lettered job again with fresh attempts.
    Retry { id: String },
}

impl DlqArgs {
    pub(super) async fn run(self, target: &Target) -> anyhow::Result<ExitCode> {
        match self.action {
            DlqAction::List { tenant } => {
                let query = JobQuery::tenant(tenant.unwrap_or_default()).dead_letters();
                show_page(&target.page(&query).await?, self.json)?;
            }
            DlqAction::Retry { id } => {
                let remote = target.server("dlq retry")?;
                let job = remote
                    .post(&format!("/v1/dead-letters/{id}/retry"), &Value::Null)
                    .await?;
                show_job(&job, self.json)?;
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// One line: id, status, kind, tenant, and the result or the error.
fn job_line(job: &Value) -> String {
    let text = |key: &str| job[key].as_str().unwrap_or("-").to_owned();
    let mut line = format!(
        "{}  {:<9}  {}  tenant {}",
        text("id"),
        text("status"),
        text("kind"),
        text("tenant_id")
    );
    if let Some(tool) = job["payload"]["tool"].as_str() {
        line.push_str(&format!("  tool {tool}"));
    }
    if !job["result"].is_null() {
        line.push_str(&format!("  result {}", job["result"]));
    }
    if let Some(message) = job["error"]["message"].as_str() {
        line.push_str(&format!("  error {message}"));
    }
    line
}

fn show_job(job: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        print_json(job)?;
    } else {
        outln!("{}", job_line(job));
    }
    Ok(())
}

fn show_page(page: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(page);
    }
    let jobs = page["jobs"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if jobs.is_empty() {
        outln!("no jobs");
    }
    for job in jobs {
        outln!("{}", job_line(job));
    }
    if let Some(cursor) = page["next_cursor"].as_str() {
        outln!("more: --cursor {cursor}");
    }
    Ok(())
}

/// 0 when the job succeeded (or was not waited for), 1 otherwise.
fn exit_for(job: &Value, waited: bool) -> ExitCode {
    if !waited || job["status"] == "succeeded" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(FAILED)
    }
}
