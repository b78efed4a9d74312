//! Wall-clock time, injected: the only place that reads the system clock, so tests can set it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time. Expiry of cookies, codes and links is decided against it.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now, as a duration since the Unix epoch.
    fn now(&self) -> Duration;

    /// Now, in whole seconds since the Unix epoch.
    fn unix_secs(&self) -> u64 {
        self.now().as_secs()
    }

    /// Now, in milliseconds since the Unix epoch (the unit of every stored expiry).
    fn now_ms(&self) -> u64 {
        u64::try_from(self.now().as_millis()).unwrap_or(u64::MAX)
    }
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one sanctioned read of the system clock
    fn now(&self) -> Duration {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    }
}

/// A clock that only moves when told to; for tests of expiry.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    millis: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock standing at `unix_secs`.
    pub fn at(unix_secs: u64) -> Self {
        Self {
            millis: Arc::new(AtomicU64::new(unix_secs.saturating_mul(1000))),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.millis.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_millis(self.millis.load(Ordering::SeqCst))
    }
}

/// The clock the gateway uses unless a test injects another.
pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::at(1_000);
        assert_eq!(c.unix_secs(), 1_000);
        c.advance(Duration::from_secs(61));
        assert_eq!(c.unix_secs(), 1_061);
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.unix_secs() > 1_577_836_800);
    }
}
