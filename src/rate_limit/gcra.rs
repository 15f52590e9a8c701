//! The **GCRA** meaning as one pure integer function: a smooth rate with an explicit burst.
//!
//! State: the theoretical arrival time `tat` (unix microseconds; 0 for a fresh key). With the
//! emission interval `T = ceil(W / limit)` and burst `b`, a request of cost `c` at `now` is
//! admitted iff `max(tat, now) + c·T - now <= b·T`; admitting it sets
//! `tat = max(tat, now) + c·T`. Everything is integer microseconds; the largest value handled is
//! `now + b·T` with `b·T <= 2^48` (checked by [`Quota::validate`]), so the Lua twin in
//! `redis/lua/gcra_step.lua`, whose numbers are doubles exact below 2^53, computes the same
//! results.

use super::decision::QuotaDecision;
use super::micros::NEVER;
use super::quota::Quota;

/// Decides a request of `cost` units at `now` against the state `tat` (pure). Returns the
/// decision and the new `tat` (unchanged if refused).
///
/// The remaining count and reset time (`b - ceil(d / T)` and the time to the next multiple of
/// `T`) cost a division; the decision carries the bucket level and computes them when asked.
pub(crate) fn decide(tat: u64, now: u64, q: &Quota, cost: u64) -> (QuotaDecision, u64) {
    let t = q.emission_interval_us().max(1);
    let b = q.burst_size();
    let cap = b.saturating_mul(t);
    let d = tat.max(now) - now;
    if cost <= b {
        let new_d = d.saturating_add(cost * t);
        if new_d <= cap {
            return (QuotaDecision::gcra(true, new_d, t, b, 0), now + new_d);
        }
        return (QuotaDecision::gcra(false, d, t, b, new_d - cap), tat);
    }
    (QuotaDecision::gcra(false, d, t, b, NEVER), tat)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::quota::Meaning;
    use crate::rate_limit::window::tests::Rng;
    use std::time::Duration;

    const S: u64 = 1_000_000;

    #[test]
    fn burst_then_refill_at_the_rate() {
        // 10 per minute (one every 6 s), burst 5.
        let q = Quota::rate(10, Duration::from_secs(60)).burst(5);
        let t0 = 1_700_000_000 * S;
        let mut tat = 0;
        for i in 0..5 {
            let (d, next) = decide(tat, t0, &q, 1);
            assert!(d.allowed, "burst request {i}");
            assert_eq!(d.remaining(), 4 - i);
            assert_eq!(d.reset_us(), 6 * S);
            tat = next;
        }
        let (d, _) = decide(tat, t0, &q, 1);
        assert!(!d.allowed);
        assert_eq!((d.remaining(), d.retry_us, d.reset_us()), (0, 6 * S, 6 * S));
        let (d, _) = decide(tat, t0 + 6 * S - 1, &q, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_us, 1);
        // One unit back every 6 s.
        let (d, next) = decide(tat, t0 + 6 * S, &q, 1);
        assert!(d.allowed);
        assert_eq!(d.remaining(), 0);
        tat = next;
        assert!(!decide(tat, t0 + 11 * S, &q, 1).0.allowed);
        // After a quiet 30 s the whole burst is back.
        let quiet = t0 + 6 * S + 30 * S;
        let (d, _) = decide(tat, quiet, &q, 0);
        assert_eq!((d.remaining(), d.reset_us()), (5, 0));
        for _ in 0..5 {
            let (d, next) = decide(tat, quiet, &q, 1);
            assert!(d.allowed);
            tat = next;
        }
        assert!(!decide(tat, quiet, &q, 1).0.allowed);
    }

    #[test]
    fn smooth_rate_without_burst() {
        let q = Quota::rate(2, Duration::from_secs(1));
        let (d, tat) = decide(0, 10 * S, &q, 1);
        assert!(d.allowed);
        assert_eq!(d.remaining(), 0);
        let (d, _) = decide(tat, 10 * S + 100_000, &q, 1);
        assert_eq!(d.retry_us, 400_000);
        assert!(decide(tat, 10 * S + 500_000, &q, 1).0.allowed);
    }

    #[test]
    fn cost_and_impossible_requests() {
        let q = Quota::rate(10, Duration::from_secs(10)).burst(4);
        let (d, tat) = decide(0, 100 * S, &q, 3);
        assert!(d.allowed);
        assert_eq!(d.remaining(), 1);
        let (d, same) = decide(tat, 100 * S, &q, 2);
        assert!(!d.allowed);
        assert_eq!(same, tat, "a refused request consumes nothing");
        assert_eq!((d.remaining(), d.retry_us), (1, S));
        let (d, _) = decide(0, 100 * S, &q, 5);
        assert!(d.is_impossible());
        assert_eq!(d.remaining(), 4);
    }

    /// Brute-force model of the same bucket in units of the interval: simulate tick by tick.
    #[test]
    fn random_traces_match_a_tick_model() {
        let mut rng = Rng(7);
        for _ in 0..300 {
            let t = 1 + rng.below(50);
            let b = 1 + rng.below(6);
            let q = Quota::raw(Meaning::Gcra, 1, t, b);
            assert_eq!(q.emission_interval_us(), t);
            let mut tat = 0u64;
            let mut now = 1_000 * t;
            for _ in 0..200 {
                now += rng.below(2 * t);
                let cost = rng.below(b + 1);
                let (d, next) = decide(tat, now, &q, cost);
                // Model: "level" = time debt in the bucket.
                let debt = tat.saturating_sub(now);
                let allowed = debt + cost * t <= b * t;
                assert_eq!(d.allowed, allowed);
                // Remaining: the largest k with debt' + k·T <= b·T.
                let debt_after = if allowed { debt + cost * t } else { debt };
                let rem = (0..=b).rev().find(|k| debt_after + k * t <= b * t).unwrap();
                assert_eq!(d.remaining(), rem);
                if !allowed {
                    // Retry: the smallest wait making it fit.
                    let wait = (debt + cost * t) - b * t;
                    assert_eq!(d.retry_us, wait);
                    assert!(decide(tat, now + wait, &q, cost).0.allowed);
                    assert!(!decide(tat, now + wait - 1, &q, cost).0.allowed);
                }
                // Reset: the smallest wait after which remaining grows (0 if full).
                if rem == b {
                    assert_eq!(d.reset_us(), 0);
                } else {
                    let wait = d.reset_us();
                    let later = |w: u64| {
                        let debt = debt_after.saturating_sub(w);
                        (0..=b).rev().find(|k| debt + k * t <= b * t).unwrap()
                    };
                    assert!(wait > 0 && later(wait) == rem + 1 && later(wait - 1) == rem);
                }
                tat = next;
            }
        }
    }

    #[test]
    fn large_values_stay_exact() {
        // The largest span accepted: no overflow, exact arithmetic.
        let q = Quota::rate(1, Duration::from_secs(366 * 86_400)).burst(8);
        assert!(q.validate().is_ok());
        let now = 4_000_000_000 * S; // year 2096
        let mut tat = 0;
        for _ in 0..8 {
            let (d, next) = decide(tat, now, &q, 1);
            assert!(d.allowed);
            tat = next;
        }
        let (d, _) = decide(tat, now, &q, 1);
        assert_eq!(d.retry_us, q.emission_interval_us());
        assert!(tat < 1 << 53);
    }
}
