//! [`SpinningMutex`]: a mutex for the state every job passes through,
//! held for microseconds at a time by worker threads that are all busy.

use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};

/// How long a thread waits for a [`SpinningMutex`] on the CPU before it
/// goes to sleep.
const SPIN: Duration = Duration::from_micros(5);

/// A `parking_lot` mutex whose waiters stay on the CPU longer before they
/// sleep.
///
/// `parking_lot` puts a waiter to sleep after well under a microsecond.
/// The scheduler's state and the memory store's shards and tenant indexes
/// are held for one to a few microseconds at a time, by the runtime's
/// worker threads, which are all busy under load. A waiter that sleeps
/// costs two system calls, wakes later than the lock came free, and
/// leaves its worker idle meanwhile: with two tasks submitting no-op jobs,
/// each worker thread slept on these locks about 4,500 times a second and
/// sat idle a fifth of the time. Waiting on the CPU for up to [`SPIN`]
/// turns most of those sleeps into short waits (see `docs/benchmarks.md`
/// for what it bought); a holder that takes longer, or was descheduled,
/// still lets the waiter sleep. Only the locks every job passes through
/// several times use it.
#[derive(Debug, Default)]
pub(crate) struct SpinningMutex<T>(Mutex<T>);

impl<T> SpinningMutex<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self(Mutex::new(value))
    }

    /// The lock if it is free, at once; `None` without waiting if not.
    pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        self.0.try_lock()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        if let Some(guard) = self.0.try_lock() {
            return guard;
        }
        let start = Instant::now();
        loop {
            for _ in 0..32 {
                std::hint::spin_loop();
                // Look before trying: a failed try takes the lock's cache
                // line away from its holder.
                if !self.0.is_locked()
                    && let Some(guard) = self.0.try_lock()
                {
                    return guard;
                }
            }
            if start.elapsed() >= SPIN {
                return self.0.lock();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::SpinningMutex;

    #[test]
    fn excludes_under_contention() {
        let counter = Arc::new(SpinningMutex::new(0_u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let counter = Arc::clone(&counter);
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        // A read and a write apart: lost updates show if
                        // two threads ever hold the lock at once.
                        let mut guard = counter.lock();
                        let seen = *guard;
                        std::hint::black_box(&seen);
                        *guard = seen + 1;
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(*counter.lock(), 80_000);
    }

    #[test]
    fn a_waiter_past_its_spin_sleeps_until_the_holder_lets_go() {
        let value = Arc::new(SpinningMutex::new(Vec::new()));
        let held = Arc::new(AtomicBool::new(false));
        let holder = {
            let (value, held) = (Arc::clone(&value), Arc::clone(&held));
            std::thread::spawn(move || {
                let mut guard = value.lock();
                held.store(true, Ordering::Release);
                // Far past the spin: the waiter must fall back to sleeping.
                std::thread::sleep(std::time::Duration::from_millis(50));
                guard.push("holder");
            })
        };
        while !held.load(Ordering::Acquire) {
            std::thread::yield_now();
        }
        value.lock().push("waiter");
        holder.join().unwrap();
        assert_eq!(*value.lock(), ["holder", "waiter"]);
    }
}
