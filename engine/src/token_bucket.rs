//! [`TokenBucket`]: a rate of so many per second, with bursts of up to
//! one second's worth (at least one). The scheduler's per-tenant
//! submission rate and the server's per-key rate are both one.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `rate` per second.
    pub(crate) fn new(rate: f64, now: Instant) -> Self {
        Self {
            rate,
            tokens: rate.max(1.0),
            last: now,
        }
    }

    /// Takes `n` tokens, or says how long until there are enough (an hour
    /// when there never will be: `n` is more than a burst).
    pub(crate) fn take(&mut self, n: f64, now: Instant) -> Result<(), Duration> {
        let burst = self.rate.max(1.0);
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(burst);
        self.last = now;
        if self.tokens >= n {
            self.tokens -= n;
            Ok(())
        } else if n > burst || self.rate <= 0.0 {
            Err(Duration::from_secs(3600))
        } else {
            Err(Duration::from_secs_f64((n - self.tokens) / self.rate))
        }
    }
}
