//! The circuit breaker in front of the Redis connection.
//!
//! Closed: calls go through; consecutive failures are counted. At `threshold` consecutive
//! failures it opens for a cool-down; while open, calls fail at once. When the cool-down
//! has passed, one call (the probe) is let through: success closes the breaker, failure
//! opens it again with a doubled cool-down (up to `max_cool_down`). A probe that never
//! reports (its caller was cancelled) is replaced by another after `probe_lease`.
//!
//! The hot path (closed, no failures) is two relaxed atomic loads; the mutex is only taken
//! on state changes and while open.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// Whether a call may proceed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Closed: go ahead.
    Pass,
    /// Half-open: go ahead, this call decides whether the breaker closes.
    Probe,
    /// Open: fail now; the next probe is due in this long.
    Reject(Duration),
}

/// A state change worth one log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transition {
    /// The breaker just opened (from closed) for this long.
    Opened(Duration),
    /// A probe failed: open again for this long.
    Reopened(Duration),
    /// The breaker closed after being open.
    Closed,
}

#[derive(Debug)]
struct Open {
    until: Instant,
    cool_down: Duration,
    probe_started: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    min_cool_down: Duration,
    max_cool_down: Duration,
    probe_lease: Duration,
    failures: AtomicU32,
    is_open: AtomicBool,
    open: Mutex<Option<Open>>,
}

impl Breaker {
    pub(crate) fn new(
        threshold: u32,
        min_cool_down: Duration,
        max_cool_down: Duration,
        probe_lease: Duration,
    ) -> Self {
        Self {
            threshold: threshold.max(1),
            min_cool_down,
            max_cool_down: max_cool_down.max(min_cool_down),
            probe_lease,
            failures: AtomicU32::new(0),
            is_open: AtomicBool::new(false),
            open: Mutex::new(None),
        }
    }

    /// The open state; a panic elsewhere while holding it leaves it usable.
    fn lock_open(&self) -> MutexGuard<'_, Option<Open>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// False while the breaker is open (including half-open).
    /// The state for the metrics' gauge: 0 closed, 1 open, 2 half-open (the cool-down has
    /// passed, or a probe is in flight).
    #[cfg(feature = "opentelemetry")]
    pub(crate) fn gauge_value(&self, now: Instant) -> i64 {
        if self.is_closed() {
            return 0;
        }
        match self.lock_open().as_ref() {
            None => 0,
            Some(open) if open.probe_started.is_some() || now >= open.until => 2,
            Some(_) => 1,
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        !self.is_open.load(Ordering::Acquire)
    }

    pub(crate) fn admit(&self, now: Instant) -> Admission {
        if self.is_closed() {
            return Admission::Pass;
        }
        let mut guard = self.lock_open();
        let Some(open) = guard.as_mut() else {
            return Admission::Pass;
        };
        if now < open.until {
            return Admission::Reject(open.until - now);
        }
        match open.probe_started {
            Some(started) if now.saturating_duration_since(started) < self.probe_lease => {
                Admission::Reject(self.probe_lease - now.saturating_duration_since(started))
            }
            _ => {
                open.probe_started = Some(now);
                Admission::Probe
            }
        }
    }

    /// Whether a call would be rejected now, without taking the probe: `Reject` while open
    /// (the probe included, which another call owns or is about to), `Pass` while closed.
    pub(crate) fn peek(&self, now: Instant) -> Admission {
        if self.is_closed() {
            return Admission::Pass;
        }
        match self.lock_open().as_ref() {
            None => Admission::Pass,
            Some(open) if now < open.until => Admission::Reject(open.until - now),
            Some(_) => Admission::Reject(Duration::ZERO),
        }
    }

    /// Reports a call that reached a healthy server.
    pub(crate) fn on_success(&self) -> Option<Transition> {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.is_closed() {
            return None;
        }
        let mut guard = self.lock_open();
        let was_open = guard.take().is_some();
        self.is_open.store(false, Ordering::Release);
        was_open.then_some(Transition::Closed)
    }

    /// Reports a failed call (timeout, connection failure). `probe` tells whether the call
    /// was admitted as the probe.
    pub(crate) fn on_failure(&self, probe: bool, now: Instant) -> Option<Transition> {
        let failures = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let mut guard = self.lock_open();
        match guard.as_mut() {
            Some(open) if probe => {
                open.cool_down = (open.cool_down * 2).min(self.max_cool_down);
                open.until = now + open.cool_down;
                open.probe_started = None;
                Some(Transition::Reopened(open.cool_down))
            }
            // Already open: a call admitted before the breaker opened failed late.
            Some(_) => None,
            None if failures >= self.threshold => {
                *guard = Some(Open {
                    until: now + self.min_cool_down,
                    cool_down: self.min_cool_down,
                    probe_started: None,
                });
                self.is_open.store(true, Ordering::Release);
                Some(Transition::Opened(self.min_cool_down))
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn breaker() -> Breaker {
        Breaker::new(3, 1000 * MS, 5000 * MS, 2000 * MS)
    }

    /// A [`breaker`] opened by three failures at `t0`.
    fn opened_at(t0: Instant) -> Breaker {
        let b = breaker();
        for _ in 0..3 {
            b.on_failure(false, t0);
        }
        assert!(!b.is_closed());
        b
    }

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let b = breaker();
        let t0 = Instant::now();
        assert_eq!(b.on_failure(false, t0), None);
        assert_eq!(b.on_failure(false, t0), None);
        assert!(b.is_closed());
        assert_eq!(b.admit(t0), Admission::Pass);
        assert_eq!(b.on_failure(false, t0), Some(Transition::Opened(1000 * MS)));
        assert!(!b.is_closed());
        assert_eq!(b.admit(t0 + 400 * MS), Admission::Reject(600 * MS));
        // Late failures of calls admitted earlier change nothing.
        assert_eq!(b.on_failure(false, t0 + 500 * MS), None);
        assert_eq!(b.admit(t0 + 999 * MS), Admission::Reject(MS));
    }

    #[test]
    fn success_resets_the_count() {
        let b = breaker();
        let t0 = Instant::now();
        b.on_failure(false, t0);
        b.on_failure(false, t0);
        assert_eq!(b.on_success(), None);
        b.on_failure(false, t0);
        b.on_failure(false, t0);
        assert!(b.is_closed());
    }

    #[test]
    fn one_probe_after_cool_down_and_success_closes() {
        let t0 = Instant::now();
        let b = opened_at(t0);
        let t1 = t0 + 1000 * MS;
        assert_eq!(b.admit(t1), Admission::Probe);
        // Only one probe at a time.
        assert!(matches!(b.admit(t1 + MS), Admission::Reject(_)));
        assert_eq!(b.on_success(), Some(Transition::Closed));
        assert!(b.is_closed());
        assert_eq!(b.admit(t1 + 2 * MS), Admission::Pass);
        // Closed again: needs the full threshold to reopen, with the initial cool-down.
        b.on_failure(false, t1);
        b.on_failure(false, t1);
        assert_eq!(b.on_failure(false, t1), Some(Transition::Opened(1000 * MS)));
    }

    #[test]
    fn failed_probes_double_the_cool_down_up_to_the_max() {
        let mut now = Instant::now();
        let b = opened_at(now);
        let mut expected = vec![2000, 4000, 5000, 5000].into_iter();
        let mut cool_down = 1000 * MS;
        for _ in 0..4 {
            now += cool_down;
            assert_eq!(b.admit(now - MS), Admission::Reject(MS));
            assert_eq!(b.admit(now), Admission::Probe);
            let next = expected.next().unwrap() * MS;
            assert_eq!(b.on_failure(true, now), Some(Transition::Reopened(next)));
            cool_down = next;
        }
    }

    #[test]
    fn abandoned_probe_is_replaced_after_its_lease() {
        let t0 = Instant::now();
        let b = opened_at(t0);
        let t1 = t0 + 1000 * MS;
        assert_eq!(b.admit(t1), Admission::Probe);
        // The probe's caller was cancelled and never reports.
        assert_eq!(b.admit(t1 + 1999 * MS), Admission::Reject(MS));
        assert_eq!(b.admit(t1 + 2000 * MS), Admission::Probe);
    }
}
