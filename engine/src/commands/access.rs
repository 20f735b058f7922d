//! `work-engine keys` and `work-engine quota`: API keys and tenants'
//! quotas, on the data directory or through a server.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::remote::{Remote, query_string};
use super::{outln, print_json};
use crate::auth::{AuthStore, CLI_ACTOR, NewKey, Role};
use crate::scheduler::Quota;

fn open_auth(data_dir: &Path) -> anyhow::Result<AuthStore> {
    AuthStore::open(data_dir)
        .with_context(|| format!("cannot open the key store in {}", data_dir.display()))
}

#[derive(Debug, Args)]
pub(super) struct KeysArgs {
    #[command(subcommand)]
    action: KeysAction,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum KeysAction {
    /// Create a key and print it (shown this once).
    Create {
        /// The tenant it acts for.
        #[arg(long, required_unless_present = "operator")]
        tenant: Option<String>,
        /// What it may do.
        #[arg(long, value_enum, default_value_t = Role::Submitter)]
        role: Role,
        /// An operator's key: an admin of every tenant and of the shared
        /// tools (no --tenant).
        #[arg(long, conflicts_with = "tenant")]
        operator: bool,
        /// How long it works (`30d`, `12h`); forever without.
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<humantime::Duration>,
        /// Its own limit on submissions per second.
        #[arg(long, value_name = "N")]
        rate: Option<f64>,
        /// For a worker key: the job kinds or backends it may claim work
        /// for (`tool_call,training`); any without.
        #[arg(long, value_delimiter = ',', value_name = "LIST")]
        capabilities: Vec<String>,
    },
    /// List keys: ids, prefixes, tenants, roles, last use; never a secret.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a key: its next request is refused.
    Revoke {
        /// The key's id.
        id: String,
    },
}

impl KeysArgs {
    pub(super) async fn run(
        self,
        data_dir: &Path,
        server: Option<&Remote>,
    ) -> anyhow::Result<ExitCode> {
        let value = match self.action {
            KeysAction::Create {
                tenant,
                role,
                operator,
                expires_in,
                rate,
                capabilities,
            } => {
                let role = if operator { Role::Admin } else { role };
                let created = match server {
                    Some(remote) => {
                        let body = json!({
                            "tenant": tenant,
                            "role": role,
                            "operator": operator,
                            "expires_in_secs": expires_in.map(|d| d.as_secs()),
                            "rate_per_second": rate,
                            "capabilities": capabilities,
                        });
                        remote.post("/v1/keys", &body).await?
                    }
                    None => {
                        let mut new = NewKey {
                            tenant,
                            role,
                            expires_at: None,
                            created_by: None,
                            rate_per_second: rate,
                            capabilities,
                        };
                        if let Some(ttl) = expires_in {
                            new = new.expiring_in(*ttl)?;
                        }
                        serde_json::to_value(open_auth(data_dir)?.create_key(new)?)?
                    }
                };
                if !self.json {
                    outln!(
                        "created key {} ({}, {}); it is shown this once:",
                        created["id"].as_str().unwrap_or_default(),
                        created["tenant"].as_str().unwrap_or("operator"),
                        created["role"].as_str().unwrap_or_default(),
                    );
                    outln!("{}", created["key"].as_str().unwrap_or_default());
                    return Ok(ExitCode::SUCCESS);
                }
                created
            }
            KeysAction::List { tenant } => {
                let keys = match server {
                    Some(remote) => {
                        let query = query_string(&[("tenant", tenant)]);
                        remote.get(&format!("/v1/keys{query}")).await?
                    }
                    None => {
                        serde_json::to_value(open_auth(data_dir)?.list_keys(tenant.as_deref())?)?
                    }
                };
                if !self.json {
                    print_keys(&keys)?;
                    return Ok(ExitCode::SUCCESS);
                }
                keys
            }
            KeysAction::Revoke { id } => {
                let revoked = match server {
                    Some(remote) => remote.delete(&format!("/v1/keys/{id}")).await?,
                    None => serde_json::to_value(
                        open_auth(data_dir)?.revoke_key(&id, None, CLI_ACTOR)?,
                    )?,
                };
                if !self.json {
                    outln!("revoked key {id}");
                    return Ok(ExitCode::SUCCESS);
                }
                revoked
            }
        };
        print_json(&value)?;
        Ok(ExitCode::SUCCESS)
    }
}

fn print_keys(keys: &Value) -> anyhow::Result<()> {
    let text = |key: &Value, field: &str| key[field].as_str().unwrap_or("-").to_owned();
    outln!(
        "{:<16}  {:<24}  {:<16}  {:<9}  {:<24}  STATE",
        "ID",
        "PREFIX",
        "TENANT",
        "ROLE",
        "LAST USED"
    );
    for key in keys.as_array().into_iter().flatten() {
        let tenant = if key["operator"] == Value::Bool(true) {
            "(operator)".to_owned()
        } else {
            text(key, "tenant")
        };
        let state = if key["revoked_at"].is_string() {
            "revoked"
        } else {
            "active"
        };
        outln!(
            "{:<16}  {:<24}  {:<16}  {:<9}  {:<24}  {state}",
            text(key, "id"),
            text(key, "prefix"),
            tenant,
            text(key, "role"),
            text(key, "last_used_at"),
        );
    }
    Ok(())
}

#[derive(Debug, Args)]
pub(super) struct QuotaArgs {
    /// The tenant.
    tenant: String,
    /// Set its quota (and with the operator's key, or on the data
    /// directory, its weight); without any of these, show it.
    #[command(flatten)]
    quota: QuotaFlags,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct QuotaFlags {
    /// Its share within a level (the operator's).
    #[arg(long)]
    weight: Option<u32>,
    /// Jobs waiting at once.
    #[arg(long)]
    max_queued: Option<u64>,
    /// Jobs running at once.
    #[arg(long)]
    max_running: Option<u32>,
    /// Submissions per second.
    #[arg(long)]
    submits_per_second: Option<f64>,
    /// CPU cores in use at once.
    #[arg(long)]
    max_cpu: Option<f64>,
    /// Memory in use at once, MiB.
    #[arg(long)]
    max_memory_mb: Option<u64>,
    /// GPUs in use at once.
    #[arg(long)]
    max_gpus: Option<u32>,
    /// US dollars its jobs may be charged in all.
    #[arg(long)]
    cost_budget_usd: Option<f64>,
}

impl QuotaFlags {
    fn quota(&self) -> Option<Quota> {
        let quota = Quota {
            max_queued: self.max_queued,
            max_running: self.max_running,
            submits_per_second: self.submits_per_second,
            max_cpu: self.max_cpu,
            max_memory_mb: self.max_memory_mb,
            max_gpus: self.max_gpus,
            cost_budget_usd: self.cost_budget_usd,
        };
        (quota != Quota::default() || self.weight.is_some()).then_some(quota)
    }
}

impl QuotaArgs {
    pub(super) async fn run(
        self,
        data_dir: &Path,
        server: Option<&Remote>,
    ) -> anyhow::Result<ExitCode> {
        let path = format!("/v1/tenants/{}/quota", urlencode(&self.tenant));
        let quota = self.quota.quota();
        let value = match (server, quota) {
            (Some(remote), None) => remote.get(&path).await?,
            (Some(remote), Some(quota)) => {
                let body = json!({ "weight": self.quota.weight, "quota": quota });
                remote.put(&path, &body).await?
            }
            (None, quota) => {
                // On the data directory: the operator's limit, applied by
                // `serve` when it next starts.
                let auth = open_auth(data_dir)?;
                let shown = match quota {
                    Some(quota) => {
                        let mut limits = auth.tenant_limits(&self.tenant)?;
                        limits.set_limit(quota, self.quota.weight);
                        auth.set_tenant_limits(&self.tenant, limits, CLI_ACTOR)?
                    }
                    None => auth.tenant_quota(&self.tenant)?,
                };
                serde_json::to_value(shown)?
            }
        };
        if self.json {
            print_json(&value)?;
        } else {
            outln!("tenant {}", self.tenant);
            outln!("  weight:    {}", value["effective"]["weight"]);
            outln!("  limit:     {}", value["limit"]);
            outln!("  own:       {}", value["own"]);
            outln!("  enforced:  {}", value["effective"]["quota"]);
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// `text` as one segment of a URL's path.
fn urlencode(text: &str) -> String {
    // Form encoding, but a space is `%20` in a path (form encoding writes
    // `+`, and writes a real `+` as `%2B`).
    form_urlencoded::byte_serialize(text.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}
