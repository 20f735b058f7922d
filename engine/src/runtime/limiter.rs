//! Caps on what one call's instance may allocate.

use wasmtime::ResourceLimiter;

/// Enforces a memory cap over *all* of an instance's linear memories
/// together, plus caps on table elements and on instance, table and memory
/// counts, and records when it refused a growth.
///
/// wasmtime's own `StoreLimits` caps each memory separately, so a component
/// with several memories could use a multiple of its budget; and it does not
/// say afterwards whether it refused anything. A refused growth is how an
/// out-of-memory guest looks from the outside (its allocator aborts, which
/// is an ordinary `unreachable` trap), so the call classifier asks
/// [`MemoryLimiter::refused`] to tell `out_of_memory` from `trap`.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    memory_limit: usize,
    table_elements_limit: usize,
    count_limit: usize,
    memory_in_use: usize,
    peak_memory: usize,
    refused: Option<usize>,
}

impl MemoryLimiter {
    pub(crate) fn new(
        memory_limit: usize,
        table_elements_limit: usize,
        count_limit: usize,
    ) -> Self {
        Self {
            memory_limit,
            table_elements_limit,
            count_limit,
            memory_in_use: 0,
            peak_memory: 0,
            refused: None,
        }
    }

    /// The total the instance asked for when a growth was refused.
    pub(crate) fn refused(&self) -> Option<usize> {
        self.refused
    }

    /// Largest total of linear memory the instance held at once.
    pub(crate) fn peak_memory(&self) -> usize {
        self.peak_memory
    }

    pub(crate) fn memory_limit(&self) -> usize {
        self.memory_limit
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self
            .memory_in_use
            .saturating_add(desired.saturating_sub(current));
        if total > self.memory_limit || maximum.is_some_and(|max| desired > max) {
            self.refused = Some(total);
            return Ok(false);
        }
        self.memory_in_use = total;
        self.peak_memory = self.peak_memory.max(total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.table_elements_limit && maximum.is_none_or(|max| desired <= max))
    }

    fn instances(&self) -> usize {
        self.count_limit
    }

    fn tables(&self) -> usize {
        self.count_limit
    }

    fn memories(&self) -> usize {
        self.count_limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_covers_all_memories_together() {
        let mut limiter = MemoryLimiter::new(100, 10, 4);
        assert!(limiter.memory_growing(0, 60, None).unwrap());
        assert!(!limiter.memory_growing(0, 60, None).unwrap());
        assert_eq!(limiter.refused(), Some(120));
        assert!(limiter.memory_growing(0, 40, None).unwrap());
        assert_eq!(limiter.peak_memory(), 100);
    }

    #[test]
    fn guest_maximum_is_honoured() {
        let mut limiter = MemoryLimiter::new(100, 10, 4);
        assert!(!limiter.memory_growing(10, 20, Some(15)).unwrap());
        assert!(!limiter.table_growing(0, 11, None).unwrap());
        assert!(limiter.table_growing(0, 10, None).unwrap());
    }
}
