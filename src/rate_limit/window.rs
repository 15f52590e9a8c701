//! The **window** meaning as one pure integer function: at most `limit` admitted in any rolling
//! window.
//!
//! State: the admission times still inside the window, oldest first, as `(time, count)` slots
//! (a request of cost `c` admitted at `t` is one slot `(t, c)`; admissions at the same recorded
//! time share a slot). A request of cost `c` at `now` is admitted iff the counts of the slots in
//! `(now - W, now]` sum to at most `limit - c`. When it is refused, the retry time is the moment
//! enough of the oldest admissions have left the window.
//!
//! Exact for `limit <= max_slots` (times recorded to the microsecond). Above that, admission
//! times are rounded **up** to a granularity `g = ceil(W / max_slots)`: at most `max_slots + 1`
//! slots, never more than `limit` admitted in any rolling window, units restored at most `g`
//! late. If the clock steps back behind the newest slot, the admission is recorded at the newest
//! slot's time (again erring on the strict side).
//!
//! `src/rate_limit/redis/lua/window_*.lua` hold the Lua twin of these functions (their stored
//! form is specified in `redis/scripts.rs`); a test replays traces through both and requires
//! identical results.

use std::collections::VecDeque;

use super::decision::QuotaDecision;
use super::micros::NEVER;
use super::quota::Quota;

/// Admissions recorded at one time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Slot {
    /// Recorded admission time, unix microseconds.
    pub(crate) at: u64,
    /// Units admitted at that time.
    pub(crate) count: u64,
}

/// Per-key state of a window quota: slots in ascending time order.
///
/// The oldest slot and the sum of all the counts are kept inline; the newer slots live in a
/// heap ring, allocated only when a key has two or more admissions inside its window. So a
/// decision whose oldest slot is still inside the window (every refusal of a client that used
/// up its quota, whatever its limit) reads these 24 bytes only, and so does any decision for a
/// key with at most one live admission (clients well under their quota); the memory backend's
/// table entry stays at 40 bytes (64 with a text key held inline).
///
/// Counts are stored in 32 bits: the units inside a window never exceed the quota's limit,
/// at most [`MAX_COUNT`](super::MAX_COUNT) (checked by [`Quota::validate`]), and older slots
/// are pruned before a unit is added.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct WindowState {
    /// The oldest slot's time (when `head_count > 0`).
    head_at: u64,
    /// Units in the oldest slot; 0 when the state is empty.
    head_count: u32,
    /// Units in all slots (in the window or not yet pruned).
    total: u32,
    /// The newer slots (only if the oldest is set).
    tail: Option<Box<Tail>>,
}

/// The newer slots, behind one pointer (8 bytes in the entry, not a `VecDeque`'s 32).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Tail(VecDeque<Slot>);

/// A count of units as stored (see [`WindowState`]: never above `u32::MAX` for a valid quota;
/// saturates rather than wraps otherwise).
fn units(count: u64) -> u32 {
    u32::try_from(count).unwrap_or(u32::MAX)
}

impl WindowState {
    pub(crate) fn len(&self) -> usize {
        usize::from(self.head_count > 0) + self.tail.as_ref().map_or(0, |t| t.0.len())
    }

    /// Units in all slots (in the window or not yet pruned).
    pub(crate) fn total(&self) -> u64 {
        u64::from(self.total)
    }

    fn head(&self) -> Option<Slot> {
        (self.head_count > 0).then_some(Slot {
            at: self.head_at,
            count: u64::from(self.head_count),
        })
    }

    /// The slots, oldest first (the heap ring is read only past the oldest slot).
    pub(crate) fn iter(&self) -> impl Iterator<Item = Slot> + '_ {
        self.head()
            .into_iter()
            .chain(self.tail.iter().flat_map(|t| t.0.iter().copied()))
    }

    fn get(&self, i: usize) -> Option<Slot> {
        match i {
            0 => self.head(),
            _ => self.tail.as_ref()?.0.get(i - 1).copied(),
        }
    }

    fn front(&self) -> Option<Slot> {
        self.head()
    }

    fn back(&self) -> Option<Slot> {
        match self.tail.as_ref().and_then(|t| t.0.back()) {
            Some(s) => Some(*s),
            None => self.head(),
        }
    }

    /// Adds `count` to the newest slot.
    fn add_to_back(&mut self, count: u64) {
        match self.tail.as_mut().and_then(|t| t.0.back_mut()) {
            Some(s) => s.count += count,
            None => self.head_count = units(u64::from(self.head_count) + count),
        }
        self.total = units(u64::from(self.total) + count);
    }

    fn pop_front(&mut self) {
        self.total -= self.head_count;
        match self.tail.as_mut().and_then(|t| t.0.pop_front()) {
            Some(s) => {
                self.head_at = s.at;
                self.head_count = units(s.count);
            }
            None => self.head_count = 0,
        }
    }

    fn push_back(&mut self, slot: Slot, capacity_hint: usize) {
        self.total = units(u64::from(self.total) + slot.count);
        if self.head_count == 0 {
            self.head_at = slot.at;
            self.head_count = units(slot.count);
            return;
        }
        self.tail
            .get_or_insert_with(|| Box::new(Tail(VecDeque::with_capacity(capacity_hint))))
            .0
            .push_back(slot);
    }
}

/// Index of the first slot still inside the window at `now`, and the units inside it.
/// Scans from the oldest slot: usually none or one has left since the last admission, and
/// when the oldest is still inside (every refusal of a saturated key) the ring is not read.
fn live(state: &WindowState, now: u64, w: u64) -> (usize, u64) {
    if state.head_count == 0 || state.head_at.saturating_add(w) > now {
        return (0, state.total());
    }
    let mut first = 0;
    let mut gone = 0;
    for s in state.iter() {
        if s.at.saturating_add(w) > now {
            break;
        }
        first += 1;
        gone += s.count;
    }
    (first, state.total() - gone)
}

/// The time an admission at `now` is recorded at.
pub(crate) fn stamp(now: u64, q: &Quota) -> u64 {
    let g = q.granularity_us();
    if g <= 1 {
        now
    } else {
        now.div_ceil(g).saturating_mul(g)
    }
}

/// Most slots a state may hold for `q`.
pub(crate) fn max_slots(q: &Quota) -> usize {
    let bound = q.limit.min(q.extra.saturating_add(1));
    usize::try_from(bound).unwrap_or(usize::MAX)
}

/// Decides a request of `cost` units at `now` (pure: the state is not changed).
pub(crate) fn decide(state: &WindowState, now: u64, q: &Quota, cost: u64) -> QuotaDecision {
    let (w, n) = (q.window_us, q.limit);
    let (first, count) = live(state, now, w);
    let oldest_slot = state.get(first);
    let oldest = oldest_slot.map(|s| s.at);
    let until_oldest_leaves = |at: u64| at.saturating_add(w).saturating_sub(now);
    if cost <= n && count.saturating_add(cost) <= n {
        let reset_us = match oldest {
            Some(at) => until_oldest_leaves(at),
            None if cost > 0 => until_oldest_leaves(stamp(now, q)),
            None => 0,
        };
        return QuotaDecision::new(true, n - count - cost, reset_us, 0);
    }
    let reset_us = oldest.map_or(0, until_oldest_leaves);
    let remaining = n.saturating_sub(count);
    if cost > n {
        return QuotaDecision::new(false, remaining, reset_us, NEVER);
    }
    // Enough of the oldest units must leave for `cost` to fit. Usually the oldest live slot
    // holds enough (a client refused at its limit): that one is read without walking the
    // slots (for the oldest, inline in the entry).
    let excess = count + cost - n;
    let retry_us = match oldest_slot {
        Some(s) if s.count >= excess => until_oldest_leaves(s.at),
        _ => {
            let mut acc = 0u64;
            let mut retry_us = reset_us;
            for s in state.iter().skip(first) {
                acc += s.count;
                if acc >= excess {
                    retry_us = until_oldest_leaves(s.at);
                    break;
                }
            }
            retry_us
        }
    };
    QuotaDecision::new(false, remaining, reset_us, retry_us)
}

/// Records an admitted request of `cost` at `now` (call only when [`decide`] allowed it).
/// When the key may be forgotten afterwards is [`expiry`].
pub(crate) fn admit(state: &mut WindowState, now: u64, q: &Quota, cost: u64) {
    let w = q.window_us;
    while state.front().is_some_and(|s| s.at.saturating_add(w) <= now) {
        state.pop_front();
    }
    if cost > 0 {
        let at = stamp(now, q);
        let bound = max_slots(q);
        match state.back() {
            Some(last) if at <= last.at => state.add_to_back(cost),
            _ => state.push_back(Slot { at, count: cost }, bound.saturating_sub(1).min(16)),
        }
        while state.len() > bound {
            state.pop_front();
        }
    }
}

/// When the state is back to "nothing used": the newest slot leaves the window.
pub(crate) fn expiry(state: &WindowState, q: &Quota) -> u64 {
    state.back().map_or(0, |s| s.at.saturating_add(q.window_us))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::rate_limit::quota::Meaning;
    use std::time::Duration;

    const S: u64 = 1_000_000;

    fn run(state: &mut WindowState, now: u64, q: &Quota, cost: u64) -> QuotaDecision {
        let d = decide(state, now, q, cost);
        if d.allowed {
            admit(state, now, q, cost);
        }
        d
    }

    #[test]
    fn the_reference_scenario() {
        // 10/minute: 10 admitted at 0 s; the 11th refused at 2 s, 8 s and 59 s; admitted just
        // after 60 s.
        let q = Quota::per_minute(10);
        let t0 = 1_700_000_000 * S;
        let mut st = WindowState::default();
        for i in 0..10 {
            let d = run(&mut st, t0, &q, 1);
            assert!(d.allowed);
            assert_eq!(d.remaining(), 9 - i);
            assert_eq!(d.reset_us(), 60 * S);
        }
        for at in [2, 8, 59] {
            let d = run(&mut st, t0 + at * S, &q, 1);
            assert!(!d.allowed, "at {at}s");
            assert_eq!(d.remaining(), 0);
            assert_eq!(d.retry_us, (60 - at) * S);
            assert_eq!(d.reset_us(), d.retry_us);
        }
        let d = run(&mut st, t0 + 60 * S - 1, &q, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_us, 1);
        let d = run(&mut st, t0 + 60 * S, &q, 1);
        assert!(
            d.allowed,
            "the window is (now - 60 s, now]: the first batch left"
        );
        assert_eq!(d.remaining(), 9);
        assert_eq!(st.len(), 1);
    }

    #[test]
    fn a_steady_pace_does_not_buy_more_than_the_limit() {
        // One request every 5 s against 10/minute: 10 admitted, then one only as each of the
        // earlier ones leaves the window. A token bucket would let 2N through here.
        let q = Quota::per_minute(10);
        let mut st = WindowState::default();
        let mut admitted = Vec::new();
        for i in 0..40u64 {
            let now = i * 5 * S / 2; // every 2.5 s
            if run(&mut st, now, &q, 1).allowed {
                admitted.push(now);
            }
        }
        for (i, a) in admitted.iter().enumerate() {
            let in_window = admitted[i..].iter().filter(|t| **t < a + 60 * S).count();
            assert!(in_window <= 10);
        }
        assert_eq!(admitted.len(), 20);
    }

    #[test]
    fn cost_counts_units_and_rejected_requests_consume_nothing() {
        let q = Quota::per_minute(10);
        let mut st = WindowState::default();
        assert!(run(&mut st, 0, &q, 7).allowed);
        let d = run(&mut st, S, &q, 4);
        assert!(!d.allowed);
        assert_eq!(d.remaining(), 3);
        assert_eq!(d.retry_us, 59 * S);
        assert_eq!(st.len(), 1);
        let d = run(&mut st, S, &q, 3);
        assert!(d.allowed);
        assert_eq!(d.remaining(), 0);
        // Cost above the limit: never.
        let d = run(&mut WindowState::default(), 0, &q, 11);
        assert!(!d.allowed);
        assert_eq!(d.retry_us, NEVER);
        assert!(d.is_impossible());
        // Cost 0 peeks without recording anything.
        let d = run(&mut st, 2 * S, &q, 0);
        assert!(d.allowed);
        assert_eq!(d.remaining(), 0);
        assert_eq!(st.iter().map(|s| s.count).sum::<u64>(), 10);
        let empty = decide(&WindowState::default(), 5, &q, 0);
        assert_eq!((empty.remaining(), empty.reset_us()), (10, 0));
    }

    #[test]
    fn clock_stepping_back_is_recorded_strictly() {
        let q = Quota::window(2, Duration::from_secs(10));
        let mut st = WindowState::default();
        assert!(run(&mut st, 100 * S, &q, 1).allowed);
        assert!(run(&mut st, 95 * S, &q, 1).allowed);
        // Both recorded at 100 s; at 109 s both are still in the window.
        assert_eq!(st.len(), 1);
        let d = run(&mut st, 109 * S, &q, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_us, S);
        assert!(run(&mut st, 110 * S, &q, 1).allowed);
    }

    /// Brute-force model: every admission time kept; counts over (now - W, now].
    struct Model {
        log: Vec<u64>,
    }

    impl Model {
        fn count(&self, now: u64, w: u64) -> u64 {
            self.log.iter().filter(|&&t| t + w > now).count() as u64
        }

        fn decide(&self, now: u64, n: u64, w: u64, cost: u64) -> QuotaDecision {
            let count = self.count(now, w);
            let mut live: Vec<u64> = self.log.iter().copied().filter(|&t| t + w > now).collect();
            live.sort_unstable();
            let reset = |used: &[u64]| used.first().map_or(0, |t| t + w - now);
            if count + cost <= n {
                let mut after = live.clone();
                after.extend(std::iter::repeat_n(now, cost as usize));
                after.sort_unstable();
                return QuotaDecision::new(true, n - count - cost, reset(&after), 0);
            }
            // Earliest t >= now at which count(t) + cost <= n: candidates are now and t_i + w.
            let mut candidates: Vec<u64> = live.iter().map(|t| t + w).collect();
            candidates.sort_unstable();
            let retry = if cost > n {
                NEVER
            } else {
                candidates
                    .into_iter()
                    .find(|&t| self.count(t, w) + cost <= n)
                    .unwrap()
                    - now
            };
            QuotaDecision::new(false, n.saturating_sub(count), reset(&live), retry)
        }
    }

    /// Every sequence of up to 5 requests on a small time grid, for small limits, windows and
    /// costs, agrees with the brute-force model: decisions, remaining, reset and retry times.
    #[test]
    fn exhaustive_small_traces_match_the_model() {
        let mut cases = 0u64;
        for n in 1..=3u64 {
            for w in [1u64, 2, 3, 5] {
                let q = Quota::raw(Meaning::Window, n, w, 1024);
                // Each request: (delta time 0..=3, cost 1..=2) => 8 choices; 8^5 traces.
                for code in 0..8u32.pow(5) {
                    let mut c = code;
                    let mut st = WindowState::default();
                    let mut model = Model { log: Vec::new() };
                    let mut now = 10u64;
                    for _ in 0..5 {
                        now += u64::from(c % 4);
                        let cost = 1 + u64::from((c / 4) % 2);
                        c /= 8;
                        let want = model.decide(now, n, w, cost);
                        let got = run(&mut st, now, &q, cost);
                        assert_eq!(got, want, "n={n} w={w} code={code} now={now} cost={cost}");
                        if want.allowed {
                            model.log.extend(std::iter::repeat_n(now, cost as usize));
                        }
                        assert!(st.len() as u64 <= n);
                        assert_eq!(st.total(), st.iter().map(|s| s.count).sum::<u64>());
                        cases += 1;
                    }
                }
            }
        }
        assert_eq!(cases, 3 * 4 * 8u64.pow(5) * 5);
    }

    /// Tiny deterministic generator (no dependency): xorshift64*.
    pub(crate) struct Rng(pub(crate) u64);
    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        pub(crate) fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn long_random_traces_match_the_model() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..200 {
            let n = 1 + rng.below(30);
            let w = 1 + rng.below(5_000);
            let q = Quota::raw(Meaning::Window, n, w, 1024);
            let mut st = WindowState::default();
            let mut model = Model { log: Vec::new() };
            let mut now = 1_700_000_000 * S;
            for _ in 0..300 {
                now += rng.below(w / 4 + 2);
                let cost = 1 + rng.below(n.min(4));
                let want = model.decide(now, n, w, cost);
                assert_eq!(run(&mut st, now, &q, cost), want);
                if want.allowed {
                    model.log.extend(std::iter::repeat_n(now, cost as usize));
                }
            }
        }
    }

    /// Above the slot cap: bounded state, never more than N admitted in any rolling window, and
    /// units come back at most one granularity later than with the exact log.
    #[test]
    fn bucketed_windows_are_bounded_strict_and_close() {
        let mut rng = Rng(42);
        let q = Quota::window(5_000, Duration::from_secs(60)).max_slots(64);
        let g = q.granularity_us();
        assert_eq!(g, (60 * S).div_ceil(64));
        let mut st = WindowState::default();
        let mut exact = Model { log: Vec::new() };
        let mut admitted: Vec<u64> = Vec::new();
        let mut now = 1_700_000_000 * S;
        for _ in 0..40_000 {
            now += rng.below(30_000);
            let d = run(&mut st, now, &q, 1);
            assert!(st.len() <= 65, "{} slots", st.len());
            let e = exact.decide(now, q.limit, q.window_us, 1);
            if d.allowed {
                admitted.push(now);
                exact.log.push(now);
                assert!(e.allowed, "never admits what the exact log refuses");
            } else {
                assert!(d.retry_us <= e.retry_us.saturating_add(g) || e.allowed);
            }
            exact.log.retain(|t| t + q.window_us > now);
        }
        // Sliding check over the admissions.
        let mut j = 0;
        for i in 0..admitted.len() {
            while admitted[i] - admitted[j] >= q.window_us {
                j += 1;
            }
            assert!(i - j < 5_000);
        }
        assert!(admitted.len() > 5_000, "the approximation still admits");
    }
}
