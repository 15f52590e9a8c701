//! A cheap monotonic clock for per-request decisions.

use std::sync::LazyLock;

use crate::clock::{Clock, SystemClock};

/// The default clock of the rate limiter: monotonic, and cheaper to read than the system
/// clock.
///
/// It reads the CPU's invariant time-stamp counter through the `quanta` crate (falling back to
/// the OS monotonic clock where there is none) and adds the elapsed time to the Unix time
/// taken when it was first used. So it is immune to wall-clock steps (NTP corrections, manual
/// changes), which matters more to a limiter than agreeing with the wall clock to the
/// millisecond. A memory-backend decision is a hash, a lock and a few integer operations, so
/// the clock read is a large share of its cost.
///
/// The first use calibrates the counter against the OS clock (up to 200 ms, usually a few ms):
/// [`RateLimitBuilder::build`](super::RateLimitBuilder::build) does it, at start-up rather than
/// on a first request. Decisions on Redis use the Redis server's clock instead.
///
/// ```
/// use tower_rampart::clock::Clock;
/// use tower_rampart::rate_limit::MonotonicClock;
///
/// let a = MonotonicClock.now_micros();
/// let b = MonotonicClock.now_micros();
/// assert!(b >= a);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct MonotonicClock;

struct Base {
    clock: quanta::Clock,
    raw: u64,
    unix_us: u64,
}

static BASE: LazyLock<Base> = LazyLock::new(|| {
    let clock = quanta::Clock::new();
    let raw = clock.raw();
    Base {
        unix_us: SystemClock.now_micros(),
        raw,
        clock,
    }
});

impl MonotonicClock {
    /// Calibrates the clock now if it has not been (see above).
    pub fn init() {
        LazyLock::force(&BASE);
    }
}

impl Clock for MonotonicClock {
    fn now_micros(&self) -> u64 {
        let base = &*BASE;
        base.unix_us + base.clock.delta_as_nanos(base.raw, base.clock.raw()) / 1_000
    }
}

/// A raw reading of the monotonic clock, for [`seconds_since`] (a cheap counter read).
#[cfg(feature = "opentelemetry")]
pub(super) fn stopwatch() -> u64 {
    BASE.clock.raw()
}

/// Seconds since a [`stopwatch`] reading.
#[cfg(feature = "opentelemetry")]
pub(super) fn seconds_since(raw: u64) -> f64 {
    let clock = &BASE.clock;
    clock.delta_as_nanos(raw, clock.raw()) as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_system_clock() {
        let mut last = MonotonicClock.now_micros();
        for _ in 0..1_000 {
            let now = MonotonicClock.now_micros();
            assert!(now >= last);
            last = now;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        let drift = MonotonicClock
            .now_micros()
            .abs_diff(SystemClock.now_micros());
        assert!(drift < 5_000, "{drift} us from the system clock");
    }
}
