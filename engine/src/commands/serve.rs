//! `work-engine serve`: the HTTP API over an engine whose jobs are kept in
//! the data directory.
//!
//! Every setting comes from, in order of precedence: its flag, its
//! `WORK_ENGINE_*` environment variable, the TOML file of `--config`, the
//! default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Deserialize;

use super::{errln, open_host};
use crate::auth::{AuthStore, NewKey};
use crate::runtime::RuntimeConfig;
use crate::server::{Server, ServerConfig};
use crate::store::{Durability, MemoryStore, SqliteStore, Store};
use crate::{Capacity, Device, Engine};

#[derive(Debug, Args)]
pub(super) struct ServeArgs {
    /// Address to listen on (port 0: any free port; the address is printed).
    /// Default 127.0.0.1:8080.
    #[arg(long, env = "WORK_ENGINE_ADDR", value_name = "HOST:PORT")]
    addr: Option<SocketAddr>,
    /// A TOML file with any of these settings (`addr = "…"`, `cpu = 4`,
    /// `gpus = ["A100:0"]`, …), under the flags and environment.
    #[arg(long, env = "WORK_ENGINE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where jobs are kept: `sqlite` (DATA_DIR/jobs.db, durable; the
    /// default) or `memory` (lost at exit).
    #[arg(long, env = "WORK_ENGINE_STORE", value_name = "KIND")]
    store: Option<StoreKind>,
    /// What a SQLite commit survives before a request is answered: `fsync`
    /// (the default: a power loss) or `process` (the process being killed;
    /// no fsync on the request's path).
    #[arg(long, env = "WORK_ENGINE_DURABILITY", value_name = "LEVEL")]
    durability: Option<Durability>,
    /// With `--store memory`: how many finished jobs to keep (the oldest
    /// go first; dead letters always stay). Default 100000.
    #[arg(long, env = "WORK_ENGINE_KEEP_FINISHED", value_name = "N")]
    keep_finished: Option<usize>,
    /// With `--store sqlite`: how many days to keep a job after it ends
    /// (dead letters and unfinished jobs always stay). Default 30.
    #[arg(long, env = "WORK_ENGINE_KEEP_FINISHED_DAYS", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    keep_finished_days: Option<u32>,
    /// How many days of audit entries to keep; older ones are dropped.
    /// Default 30.
    #[arg(long, env = "WORK_ENGINE_KEEP_AUDIT_DAYS", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    keep_audit_days: Option<u32>,
    /// CPU cores jobs may use. Default: this machine's.
    #[arg(long, env = "WORK_ENGINE_CPU", value_name = "N")]
    cpu: Option<f64>,
    /// Memory jobs may use, in MiB. Default: this machine's.
    #[arg(long, env = "WORK_ENGINE_MEMORY_MB", value_name = "N")]
    memory_mb: Option<u64>,
    /// A GPU jobs may use, as TYPE:ID (`A100:0`); repeat for each.
    /// Default: the NVIDIA GPUs `nvidia-smi` lists (none without it).
    #[arg(
        long = "gpu",
        env = "WORK_ENGINE_GPUS",
        value_delimiter = ',',
        value_name = "TYPE:ID"
    )]
    gpus: Vec<String>,
    /// Largest JSON request body in bytes (413 above). Default 4 MiB.
    #[arg(long, env = "WORK_ENGINE_MAX_BODY_BYTES", value_name = "N")]
    max_body_bytes: Option<usize>,
    /// Largest tool upload in bytes. Default 64 MiB.
    #[arg(long, env = "WORK_ENGINE_MAX_UPLOAD_BYTES", value_name = "N")]
    max_upload_bytes: Option<usize>,
    /// Longest a `wait` or a synchronous tool call holds a request, in
    /// milliseconds. Default 60000.
    #[arg(long, env = "WORK_ENGINE_MAX_WAIT_MS", value_name = "N")]
    max_wait_ms: Option<u64>,
    /// On SIGTERM or SIGINT, how long running jobs may take to finish
    /// before the server stops, in milliseconds. Default 30000.
    #[arg(long, env = "WORK_ENGINE_SHUTDOWN_GRACE_MS", value_name = "N")]
    shutdown_grace_ms: Option<u64>,
    /// Serve without API keys: every caller may act for any tenant. Only
    /// on a loopback address; for trying things out, never for sharing.
    #[arg(long)]
    insecure_no_auth: bool,
}

/// How many days of audit entries `serve` keeps unless told otherwise.
const DEFAULT_KEEP_AUDIT_DAYS: u32 = 30;

/// How many days `serve` keeps a job in SQLite after it ends, unless told
/// otherwise.
const DEFAULT_KEEP_FINISHED_DAYS: u32 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
enum StoreKind {
    Sqlite,
    Memory,
}

/// The `--config` file: the same settings, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    addr: Option<SocketAddr>,
    store: Option<StoreKind>,
    durability: Option<Durability>,
    keep_finished: Option<usize>,
    keep_finished_days: Option<u32>,
    keep_audit_days: Option<u32>,
    cpu: Option<f64>,
    memory_mb: Option<u64>,
    #[serde(default)]
    gpus: Vec<String>,
    max_body_bytes: Option<usize>,
    max_upload_bytes: Option<usize>,
    max_wait_ms: Option<u64>,
    shutdown_grace_ms: Option<u64>,
}

impl ServeArgs {
    pub(super) async fn run(self, data_dir: &Path) -> anyhow::Result<ExitCode> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("invalid config file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let addr = self
            .addr
            .or(file.addr)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
        let machine = Capacity::of_this_machine();
        let gpus = if self.gpus.is_empty() {
            file.gpus
        } else {
            self.gpus
        };
        let gpus = if gpus.is_empty() {
            Capacity::nvidia_gpus()
        } else {
            gpus.iter()
                .map(|spec| gpu(spec))
                .collect::<anyhow::Result<_>>()?
        };
        let capacity = Capacity {
            cpu: self.cpu.or(file.cpu).unwrap_or(machine.cpu),
            memory_mb: self
                .memory_mb
                .or(file.memory_mb)
                .unwrap_or(machine.memory_mb),
            gpus,
        };
        let defaults = ServerConfig::default();
        let millis = |flag: Option<u64>, file: Option<u64>, default: Duration| {
            flag.or(file).map_or(default, Duration::from_millis)
        };
        let config = ServerConfig {
            max_body_bytes: self
                .max_body_bytes
                .or(file.max_body_bytes)
                .unwrap_or(defaults.max_body_bytes),
            max_upload_bytes: self
                .max_upload_bytes
                .or(file.max_upload_bytes)
                .unwrap_or(defaults.max_upload_bytes),
            max_wait: millis(self.max_wait_ms, file.max_wait_ms, defaults.max_wait),
            shutdown_grace: millis(
                self.shutdown_grace_ms,
                file.shutdown_grace_ms,
                defaults.shutdown_grace,
            ),
            require_keys: !self.insecure_no_auth,
        };
        if self.insecure_no_auth && !addr.ip().is_loopback() {
            anyhow::bail!(
                "--insecure-no-auth serves without keys, so only on a loopback address \
                 (127.0.0.1 or ::1), not {addr}"
            );
        }
        let store_kind = self.store.or(file.store).unwrap_or(StoreKind::Sqlite);
        let keep_finished = self.keep_finished.or(file.keep_finished);
        let keep_finished_days = self.keep_finished_days.or(file.keep_finished_days);
        match store_kind {
            StoreKind::Sqlite if keep_finished.is_some() => anyhow::bail!(
                "--keep-finished is for --store memory; SQLite keeps jobs by age \
                 (--keep-finished-days)"
            ),
            StoreKind::Memory if keep_finished_days.is_some() => anyhow::bail!(
                "--keep-finished-days is for --store sqlite; memory keeps a number of jobs \
                 (--keep-finished)"
            ),
            _ => {}
        }
        let days = |days: u32| Duration::from_secs(u64::from(days) * 86_400);
        let auth = Arc::new(
            AuthStore::open(data_dir)
                .with_context(|| format!("cannot open the key store in {}", data_dir.display()))?,
        );
        let keep_audit_days = self
            .keep_audit_days
            .or(file.keep_audit_days)
            .unwrap_or(DEFAULT_KEEP_AUDIT_DAYS);
        if keep_audit_days == 0 || keep_finished_days == Some(0) {
            anyhow::bail!("keep_audit_days and keep_finished_days must be at least 1");
        }
        auth.keep_audit_for(days(keep_audit_days));
        if config.require_keys && !auth.has_keys()? {
            let created = auth.create_key(NewKey::operator())?;
            errln!(
                "created the operator's API key (shown this once; keep it safe):\n\n    {}\n",
                created.key
            );
        }

        let host = Arc::new(open_host(data_dir, RuntimeConfig::default())?);
        let store: Arc<dyn Store> = match store_kind {
            StoreKind::Sqlite => {
                let path = data_dir.join("jobs.db");
                let durability = self.durability.or(file.durability).unwrap_or_default();
                let store = SqliteStore::open_with(&path, durability)
                    .with_context(|| format!("cannot open {}", path.display()))?;
                store.keep_finished_for(days(
                    keep_finished_days.unwrap_or(DEFAULT_KEEP_FINISHED_DAYS),
                ));
                Arc::new(store)
            }
            StoreKind::Memory => Arc::new(MemoryStore::keeping_finished(
                keep_finished.unwrap_or(MemoryStore::DEFAULT_KEEP_FINISHED),
            )),
        };
        let mut builder = Engine::builder()
            .capacity(capacity)
            .tool_host(Arc::clone(&host))
            .store(store)
            .observer(auth.observer());
        for (tenant, limits) in auth.all_tenant_limits()? {
            builder = builder.tenant(tenant, limits.effective());
        }
        let engine = builder.build()?;
        engine.recover().await?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        // On stdout, so that scripts (and tests) can read the port.
        super::outln!("listening on http://{local}");
        errln!(
            "work-engine serving {} on http://{local}",
            data_dir.display()
        );
        Server::new(engine, host, Arc::clone(&auth), config)
            .run(listener, shutdown_signal())
            .await?;
        auth.flush();
        Ok(ExitCode::SUCCESS)
    }
}

/// `TYPE:ID`.
fn gpu(spec: &str) -> anyhow::Result<Device> {
    match spec.split_once(':') {
        Some((kind, id)) if !kind.is_empty() && !id.is_empty() => Ok(Device {
            kind: kind.to_owned(),
            id: id.to_owned(),
        }),
        _ => anyhow::bail!("invalid GPU `{spec}`: expected TYPE:ID, as in A100:0"),
    }
}

/// SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
