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
