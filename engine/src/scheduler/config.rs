//! What an [`Engine`](super::Engine) is built with: capacity, tenants and
//! their quotas, queue limits, defaults.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::id_map::NameMap;
use work_host_api::{Device, Priority, RetryPolicy};

/// What the engine may run at once: CPU cores, memory and GPUs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capacity {
    /// CPU cores.
    pub cpu: f64,
    /// Memory in MiB.
    pub memory_mb: u64,
    /// Every GPU, by type and id.
    #[serde(default)]
    pub gpus: Vec<Device>,
}

impl Capacity {
    /// This machine: its available cores and its memory, no GPUs (GPUs are
    /// declared, not probed).
    pub fn of_this_machine() -> Self {
        let cpu = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        let memory_mb = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|line| line.starts_with("MemTotal:"))
                    .and_then(|line| line.split_whitespace().nth(1))
                    .and_then(|kib| kib.parse::<u64>().ok())
            })
            .map_or(4096, |kib| kib / 1024);
        Self {
            cpu,
            memory_mb,
            gpus: Vec::new(),
        }
    }

    /// The NVIDIA GPUs `nvidia-smi` lists, each as the type its model
    /// name gives (`"NVIDIA H100 80GB HBM3"` is an `H100`) and its index as
    /// the id. None when `nvidia-smi` is missing or fails: a machine
    /// without NVIDIA's driver has none to offer.
    pub fn nvidia_gpus() -> Vec<Device> {
        std::process::Command::new("nvidia-smi")
            .args(["--query-gpu=index,name", "--format=csv,noheader"])
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| parse_nvidia_smi(&String::from_utf8_lossy(&output.stdout)))
            .unwrap_or_default()
    }

    /// With GPUs of type `kind` with these ids.
    pub fn with_gpus<I: Into<String>>(
        mut self,
        kind: &str,
        ids: impl IntoIterator<Item = I>,
    ) -> Self {
        self.gpus.extend(ids.into_iter().map(|id| Device {
            kind: kind.to_owned(),
            id: id.into(),
        }));
        self
    }
}

/// A tenant's share and limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Its share within a level relative to other tenants (default 1): a
    /// tenant of weight 2 gets twice the dispatches of one of weight 1 when
    /// both have work queued.
    #[serde(default = "TenantConfig::default_weight")]
    pub weight: u32,
    /// Its limits.
    #[serde(default)]
    pub quota: Quota,
}

impl TenantConfig {
    fn default_weight() -> u32 {
        1
    }
}

impl Default for TenantConfig {
    fn default() -> Self {
        Self {
            weight: Self::default_weight(),
            quota: Quota::default(),
        }
    }
}

/// Per-tenant limits; `None` is unlimited.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Jobs waiting (pending or queued) at once; more are refused.
    #[serde(default)]
    pub max_queued: Option<u64>,
    /// Jobs running at once; more wait.
    #[serde(default)]
    pub max_running: Option<u32>,
    /// Submissions per second (token bucket, bursts up to one second's
    /// worth); more are refused with a retry-after.
    #[serde(default)]
    pub submits_per_second: Option<f64>,
    /// CPU cores in use at once.
    #[serde(default)]
    pub max_cpu: Option<f64>,
    /// Memory in use at once, MiB.
    #[serde(default)]
    pub max_memory_mb: Option<u64>,
    /// GPUs in use at once.
    #[serde(default)]
    pub max_gpus: Option<u32>,
    /// US dollars its jobs may be charged in all (by backends that charge,
    /// [`work_host_api::ExecContext::charge`]), counted by this engine
    /// since it started. What its live jobs with a `max_cost_usd` may still
    /// be charged is held from it; a job is refused when the spending and
    /// the holds leave no room for its own cap (or have reached the budget,
    /// for a job without one).
    #[serde(default)]
    pub cost_budget_usd: Option<f64>,
}

impl Quota {
    /// Refuses limits that mean nothing: a negative or non-finite number
    /// of cores, a rate of 0 or less.
    ///
    /// # Errors
    ///
    /// What is wrong, to show the one who set it.
    pub fn check(&self) -> Result<(), String> {
        if self
            .max_cpu
            .is_some_and(|cpu| !cpu.is_finite() || cpu < 0.0)
        {
            return Err("max_cpu must be a number of cores >= 0".into());
        }
        if self
            .submits_per_second
            .is_some_and(|rate| !rate.is_finite() || rate <= 0.0)
        {
            return Err("submits_per_second must be a number above 0".into());
        }
        if self
            .cost_budget_usd
            .is_some_and(|usd| !usd.is_finite() || usd < 0.0)
        {
            return Err("cost_budget_usd must be a number of dollars >= 0".into());
        }
        Ok(())
    }

    /// Field by field, the tighter of `self` and `other` (a limit beats
    /// none; of two limits, the lower).
    pub fn tighter(&self, other: &Self) -> Self {
        fn min<T: PartialOrd + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
            match (a, b) {
                (Some(a), Some(b)) => Some(if b < a { b } else { a }),
                (a, b) => a.or(b),
            }
        }
        Self {
            max_queued: min(self.max_queued, other.max_queued),
            max_running: min(self.max_running, other.max_running),
            submits_per_second: min(self.submits_per_second, other.submits_per_second),
            max_cpu: min(self.max_cpu, other.max_cpu),
            max_memory_mb: min(self.max_memory_mb, other.max_memory_mb),
            max_gpus: min(self.max_gpus, other.max_gpus),
            cost_budget_usd: min(self.cost_budget_usd, other.cost_budget_usd),
        }
    }
}

/// Every scheduler setting; [`EngineBuilder`](super::EngineBuilder) fills it.
#[derive(Debug, Clone)]
pub(crate) struct SchedulerConfig {
    pub(crate) capacity: Capacity,
    pub(crate) tenants: NameMap<String, TenantConfig>,
    pub(crate) default_tenant: TenantConfig,
    pub(crate) queue_capacity: [usize; 4],
    pub(crate) quantum: u32,
    pub(crate) aging: Option<Duration>,
    pub(crate) concurrency_limits: NameMap<String, u32>,
    pub(crate) default_concurrency_limit: u32,
    pub(crate) event_capacity: usize,
}

/// What the engine fills in for jobs, and how long it lets an attempt take
/// to stop: read on every submission and attempt, outside the scheduler's
/// lock.
#[derive(Debug, Clone)]
pub(crate) struct JobDefaults {
    pub(crate) priority: Priority,
    pub(crate) namespace: work_host_api::CompactString,
    pub(crate) retry_policy: RetryPolicy,
    pub(crate) timeout: Option<Duration>,
    pub(crate) cancel_grace: Duration,
}

impl Default for JobDefaults {
    fn default() -> Self {
        Self {
            priority: Priority::Batch,
            namespace: "default".into(),
            retry_policy: RetryPolicy::default(),
            timeout: None,
            cancel_grace: Duration::from_secs(5),
        }
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            capacity: Capacity::of_this_machine(),
            tenants: NameMap::default(),
            default_tenant: TenantConfig::default(),
            queue_capacity: [1_000_000; 4],
            quantum: 4,
            aging: Some(Duration::from_secs(60)),
            concurrency_limits: NameMap::default(),
            default_concurrency_limit: 1,
            event_capacity: 4096,
        }
    }
}

/// `index, name` lines of `nvidia-smi --query-gpu=index,name
/// --format=csv,noheader`.
fn parse_nvidia_smi(text: &str) -> Vec<Device> {
    text.lines()
        .filter_map(|line| {
            let (index, name) = line.split_once(',')?;
            let (index, name) = (index.trim(), name.trim());
            if index.is_empty() || name.is_empty() {
                return None;
            }
            Some(Device {
                kind: gpu_model(name),
                id: index.to_owned(),
            })
        })
        .collect()
}

/// The model in a GPU's marketing name: its first word that starts with a
/// letter and holds a digit (`H100`, `A100`, `L4`), or the whole name.
fn gpu_model(name: &str) -> String {
    name.split([' ', '-'])
        .find(|word| {
            word.starts_with(|c: char| c.is_ascii_alphabetic())
                && word.chars().any(|c| c.is_ascii_digit())
        })
        .unwrap_or(name)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_smi_lines_become_devices_by_model() {
        let text = "0, NVIDIA H100 80GB HBM3\n1, NVIDIA A100-SXM4-80GB\n2, Tesla V100-SXM2-16GB\n\
                    3, NVIDIA L4\n4, NVIDIA GeForce RTX 4090\ngarbage\n";
        let devices: Vec<(String, String)> = parse_nvidia_smi(text)
            .into_iter()
            .map(|d| (d.kind, d.id))
            .collect();
        let expected = [
            ("H100", "0"),
            ("A100", "1"),
            ("V100", "2"),
            ("L4", "3"),
            ("NVIDIA GeForce RTX 4090", "4"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(k, i)| ((*k).to_owned(), (*i).to_owned()))
            .collect();
        assert_eq!(devices, expected);
    }
}
