//! [`Stats`]: what the scheduler is doing, as numbers.

use std::collections::BTreeMap;

use serde::Serialize;
use work_host_api::{JobStatus, Priority};

/// Jobs by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct StatusCounts {
    /// Waiting for dependencies.
    pub pending: u64,
    /// Waiting for their turn or their run time.
    pub queued: u64,
    /// Running.
    pub running: u64,
    /// Ended with a result.
    pub succeeded: u64,
    /// Ended without one.
    pub failed: u64,
    /// Cancelled.
    pub canceled: u64,
    /// Ran out of time.
    pub timeout: u64,
}

impl StatusCounts {
    pub(crate) fn slot(&mut self, status: JobStatus) -> &mut u64 {
        match status {
            JobStatus::Pending => &mut self.pending,
            JobStatus::Queued => &mut self.queued,
            JobStatus::Running => &mut self.running,
            JobStatus::Succeeded => &mut self.succeeded,
            JobStatus::Failed => &mut self.failed,
            JobStatus::Canceled => &mut self.canceled,
            JobStatus::Timeout => &mut self.timeout,
        }
    }

    /// One job left `from` (unless it is new) for `to` (unless it is gone).
    pub(crate) fn moved(&mut self, from: Option<JobStatus>, to: Option<JobStatus>) {
        if let Some(from) = from {
            let slot = self.slot(from);
            *slot = slot.saturating_sub(1);
        }
        if let Some(to) = to {
            *self.slot(to) += 1;
        }
    }

    pub(crate) fn add(&mut self, other: &StatusCounts) {
        for status in JobStatus::ALL {
            *self.slot(status) += other.get(status);
        }
    }

    /// The count for `status`.
    pub fn get(&self, status: JobStatus) -> u64 {
        let mut copy = *self;
        *copy.slot(status)
    }
}

/// A summary of durations, in milliseconds, over the most recent samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Summary {
    /// Samples summarised.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Summary {
    /// Each quantile is selected, not read from a sorted copy: a selection
    /// costs a pass over what is left above the quantile before, where a
    /// sort of the samples cost `stats()` about 1.7 million instructions.
    pub(crate) fn of(mut samples_us: Vec<u32>) -> Self {
        let count = samples_us.len();
        if count == 0 {
            return Self::default();
        }
        // Taken in rising order: each selection leaves every sample at or
        // after its place no smaller, so the next one looks only there.
        let mut from = 0;
        let mut at = |q: f64| {
            let i = ((count - 1) as f64 * q).round() as usize;
            let (_, nth, _) = samples_us[from..].select_nth_unstable(i - from);
            let ms = f64::from(*nth) / 1000.0;
            from = i;
            ms
        };
        let p50_ms = at(0.5);
        let p95_ms = at(0.95);
        let p99_ms = at(0.99);
        let max_ms = at(1.0);
        Self {
            count,
            p50_ms,
            p95_ms,
            p99_ms,
            max_ms,
        }
    }
}

/// Observations counted by bucket: the shape of a Prometheus histogram.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Histogram {
    /// Upper bounds of the buckets; one more bucket, above them all, is
    /// implied.
    #[cfg_attr(feature = "server", schema(value_type = Vec<f64>))]
    pub bounds: &'static [f64],
    /// Observations per bucket (not cumulative): `bounds.len() + 1` of
    /// them.
    pub counts: Vec<u64>,
    /// Sum of the observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

/// Bucket bounds for durations, in seconds.
pub(crate) const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

impl Histogram {
    pub(crate) fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    pub(crate) fn observe(&mut self, value: f64) {
        let bucket = self.bounds.partition_point(|bound| *bound < value);
        if let Some(count) = self.counts.get_mut(bucket) {
            *count += 1;
        }
        self.sum += value;
        self.count += 1;
    }

    /// `(upper bound, observations at or below it)`, the last bound
    /// infinite: Prometheus's `le` buckets.
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let bounds = self.bounds.iter().copied().chain([f64::INFINITY]);
        bounds.zip(self.counts.iter().scan(0, |total, count| {
            *total += count;
            Some(*total)
        }))
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new(SECONDS)
    }
}

/// One priority level.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct LevelStats {
    /// The level.
    pub priority: Priority,
    /// Its jobs by status (by the level they were submitted at).
    pub jobs: StatusCounts,
    /// Jobs in its queue now, aged-in jobs included.
    pub depth: usize,
    /// Its queue capacity.
    pub capacity: usize,
    /// Time from queued to started, recent jobs.
    pub wait: Summary,
    /// Time from queued to started, every job since start, in seconds.
    pub wait_seconds: Histogram,
}

/// One tenant.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct TenantStats {
    /// The tenant.
    pub tenant_id: String,
    /// Its jobs by status.
    pub jobs: StatusCounts,
    /// Its jobs by status per level.
    pub by_priority: BTreeMap<Priority, StatusCounts>,
    /// CPU cores its running jobs hold.
    pub cpu_in_use: f64,
    /// Memory its running jobs hold, MiB.
    pub memory_mb_in_use: u64,
    /// GPUs its running jobs hold.
    pub gpus_in_use: u32,
    /// US dollars its attempts were charged since the engine started
    /// (what its `cost_budget_usd` counts).
    pub cost_usd: f64,
    /// US dollars held from its budget for its live jobs with a
    /// `max_cost_usd`: what they may still be charged.
    pub cost_usd_held: f64,
}

/// Resources held by running jobs against the engine's capacity.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct ResourceStats {
    /// CPU cores held.
    pub cpu_in_use: f64,
    /// CPU cores in all.
    pub cpu_capacity: f64,
    /// Memory held, MiB.
    pub memory_mb_in_use: u64,
    /// Memory in all, MiB.
    pub memory_mb_capacity: u64,
    /// GPUs held, by type.
    pub gpus_in_use: BTreeMap<String, u32>,
    /// GPUs in all, by type.
    pub gpus_capacity: BTreeMap<String, u32>,
}

/// A snapshot of the scheduler ([`Engine::stats`](crate::Engine::stats)).
///
/// Counts cover the jobs this engine has seen since it started.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Stats {
    /// Every job by status.
    pub jobs: StatusCounts,
    /// Per level, highest first.
    pub levels: Vec<LevelStats>,
    /// Per tenant, by name.
    pub tenants: Vec<TenantStats>,
    /// Running resources against capacity.
    pub resources: ResourceStats,
    /// Jobs ended since start.
    pub finished_total: u64,
    /// Jobs ended per second over the recent window.
    pub throughput_per_second: f64,
    /// Time from started to ended, recent jobs.
    pub run: Summary,
    /// Time from started to ended, every attempt since start, in seconds.
    pub run_seconds: Histogram,
    /// Attempts since start by how they ended.
    #[cfg_attr(feature = "server", schema(value_type = BTreeMap<String, u64>))]
    pub outcomes: BTreeMap<&'static str, u64>,
}

#[cfg(test)]
mod tests {
    use super::Summary;

    /// The selected quantiles are those a sorted copy of the samples
    /// gives, for any count of samples, with repeats.
    #[test]
    fn a_summary_reads_its_quantiles_as_a_sorted_copy_would() {
        let mut rng = fastrand::Rng::with_seed(3);
        for count in (1..60).chain([999, 1_000, 10_001]) {
            let samples: Vec<u32> = (0..count).map(|_| rng.u32(0..500)).collect();
            let mut sorted = samples.clone();
            sorted.sort_unstable();
            let at = |q: f64| f64::from(sorted[((count - 1) as f64 * q).round() as usize]) / 1000.0;
            let summary = Summary::of(samples);
            assert_eq!(summary.count, count);
            assert_eq!(
                [
                    summary.p50_ms,
                    summary.p95_ms,
                    summary.p99_ms,
                    summary.max_ms
                ],
                [at(0.5), at(0.95), at(0.99), at(1.0)],
            );
        }
        assert_eq!(Summary::of(Vec::new()).count, 0);
    }
}
