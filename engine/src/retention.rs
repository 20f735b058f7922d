//! When a writer thread drops what is past its retention (the SQLite
//! store's ended jobs, the audit trail's entries): a tenth of the
//! retention after the last time and at least once a minute, so what is
//! kept overshoots the retention by little and the check costs nothing.

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};

/// How long things are kept, and when they were last pruned.
#[derive(Debug, Default)]
pub(crate) struct Retention {
    /// `None`: everything is kept.
    keep: Option<Duration>,
    pruned: Option<Instant>,
}

impl Retention {
    /// Keeps things for `keep` from now on; the next check prunes.
    pub(crate) fn keep_for(&mut self, keep: Duration) {
        self.keep = Some(keep);
        self.pruned = None;
    }

    /// When it is time to prune, the moment before which things go (and
    /// the time is noted). `None` also when the retention reaches past
    /// the calendar: nothing is that old.
    pub(crate) fn due(&mut self) -> Option<DateTime<Utc>> {
        let keep = self.keep?;
        let every = (keep / 10).min(Duration::from_secs(60));
        if self.pruned.is_some_and(|at| at.elapsed() < every) {
            return None;
        }
        self.pruned = Some(Instant::now());
        Utc::now().checked_sub_signed(TimeDelta::from_std(keep).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prunes_at_once_then_a_tenth_of_the_retention_apart() {
        let mut retention = Retention::default();
        assert_eq!(retention.due(), None, "nothing goes without a retention");
        retention.keep_for(Duration::from_secs(3600));
        let before = retention.due().unwrap();
        let age = Utc::now() - before;
        assert!((3599..=3601).contains(&age.num_seconds()), "{age}");
        assert_eq!(retention.due(), None, "not again within six minutes");
    }

    #[test]
    fn a_retention_past_the_calendar_keeps_everything() {
        let mut retention = Retention::default();
        retention.keep_for(Duration::MAX);
        assert_eq!(retention.due(), None);
        retention.keep_for(Duration::from_secs(u64::from(u32::MAX) * 86_400));
        assert_eq!(retention.due(), None);
    }
}
