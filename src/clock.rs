//! Injectable clocks, so that windows, expiry and retry times are tested without sleeping.
//!
//! Every time-dependent part of this crate reads the time through a [`Clock`]. Production
//! code uses [`SystemClock`]; tests use [`ManualClock`] and move it forward by hand.
//!
//! ```
//! use std::time::Duration;
//! use tower_rampart::clock::{Clock, ManualClock};
//!
//! let clock = ManualClock::new(1_000_000);
//! assert_eq!(clock.now_micros(), 1_000_000);
//! clock.advance(Duration::from_millis(1500));
//! assert_eq!(clock.now_micros(), 2_500_000);
//! ```

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time, in whole microseconds since the Unix epoch.
///
/// Implementations must be cheap: the rate limiter reads the clock once per request.
pub trait Clock: Debug + Send + Sync + 'static {
    /// Microseconds since 1970-01-01T00:00:00Z.
    fn now_micros(&self) -> u64;
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now_micros(&self) -> u64 {
        (**self).now_micros()
    }
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_micros(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to; clones share the same time.
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::clock::{Clock, ManualClock};
///
/// let clock = ManualClock::new(0);
/// let seen_by_layer = clock.clone();
/// clock.advance(Duration::from_secs(60));
/// assert_eq!(seen_by_layer.now_micros(), 60_000_000);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    micros: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock standing at `micros` microseconds since the epoch.
    pub fn new(micros: u64) -> Self {
        Self {
            micros: Arc::new(AtomicU64::new(micros)),
        }
    }

    /// A clock standing at the current system time.
    pub fn starting_now() -> Self {
        Self::new(SystemClock.now_micros())
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_micros()).unwrap_or(u64::MAX);
        self.micros.fetch_add(by, Ordering::SeqCst);
    }

    /// Sets the clock to `micros` microseconds since the epoch (it may go backwards).
    pub fn set(&self, micros: u64) {
        self.micros.store(micros, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_micros(&self) -> u64 {
        self.micros.load(Ordering::SeqCst)
    }
}

/// Lets one event through per interval: used to log a failure "once per burst" rather than
/// once per request.
#[derive(Debug)]
#[cfg_attr(
    not(any(feature = "session", feature = "rate-limit")),
    allow(dead_code)
)]
pub(crate) struct Throttle {
    interval_micros: u64,
    next_micros: AtomicU64,
}

#[cfg_attr(
    not(any(feature = "session", feature = "rate-limit")),
    allow(dead_code)
)]
impl Throttle {
    /// A throttle that opens at most once per `interval`.
    pub(crate) const fn new(interval: Duration) -> Self {
        Self {
            interval_micros: interval.as_micros() as u64,
            next_micros: AtomicU64::new(0),
        }
    }

    /// True for the first call of each interval (as measured by `now_micros`), false for the
    /// others. Lock-free.
    pub(crate) fn allow(&self, now_micros: u64) -> bool {
        let next = self.next_micros.load(Ordering::Relaxed);
        if now_micros < next {
            return false;
        }
        self.next_micros
            .compare_exchange(
                next,
                now_micros.saturating_add(self.interval_micros),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_opens_once_per_interval() {
        let t = Throttle::new(Duration::from_secs(1));
        assert!(t.allow(10));
        assert!(!t.allow(20));
        assert!(!t.allow(1_000_009));
        assert!(t.allow(1_000_010));
        assert!(!t.allow(1_000_011));
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now_micros() > 1_577_836_800_000_000);
    }
}
