//! [`UsageTotals`]: what every sandboxed call has used, added up for
//! monitoring.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::scheduler::Histogram;

use super::CallUsage;

/// Bucket bounds for an instance's peak memory, in bytes.
const MEMORY_BYTES: &[f64] = &[
    65_536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
    268_435_456.0,
    1_073_741_824.0,
];

/// Counters every call adds to, without a lock.
#[derive(Debug)]
pub(crate) struct Totals {
    calls: AtomicU64,
    fuel: AtomicU64,
    memory_sum: AtomicU64,
    memory: [AtomicU64; MEMORY_BYTES.len() + 1],
}

impl Default for Totals {
    fn default() -> Self {
        Self {
            calls: AtomicU64::new(0),
            fuel: AtomicU64::new(0),
            memory_sum: AtomicU64::new(0),
            memory: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Totals {
    pub(crate) fn record(&self, usage: &CallUsage) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.fuel.fetch_add(usage.fuel_consumed, Ordering::Relaxed);
        let peak = usage.peak_memory_bytes;
        self.memory_sum.fetch_add(peak, Ordering::Relaxed);
        let bucket = MEMORY_BYTES.partition_point(|bound| *bound < peak as f64);
        if let Some(count) = self.memory.get(bucket) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn snapshot(&self) -> UsageTotals {
        let mut memory = Histogram::new(MEMORY_BYTES);
        for (slot, count) in memory.counts.iter_mut().zip(&self.memory) {
            *slot = count.load(Ordering::Relaxed);
        }
        memory.count = memory.counts.iter().sum();
        memory.sum = self.memory_sum.load(Ordering::Relaxed) as f64;
        UsageTotals {
            calls: self.calls.load(Ordering::Relaxed),
            fuel_consumed: self.fuel.load(Ordering::Relaxed),
            peak_memory_bytes: memory,
        }
    }
}

/// Every call the runtime has run since it was built
/// ([`Runtime::totals`](super::Runtime::totals)).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UsageTotals {
    /// Calls (and `describe` runs) that got an instance.
    pub calls: u64,
    /// Fuel they burnt.
    pub fuel_consumed: u64,
    /// Their instances' peak linear memory, in bytes.
    pub peak_memory_bytes: Histogram,
}
