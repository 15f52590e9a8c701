//! Integer helpers on microsecond times, shared by [`QuotaDecision`](super::QuotaDecision) and
//! the two meanings (`gcra`, `window`), so that none of them depends on another for
//! arithmetic.

/// Retry time of a request that can never be admitted (its cost exceeds the quota's burst).
pub(crate) const NEVER: u64 = u64::MAX;

/// `ceil(a / b)`, `b > 0`.
pub(crate) fn ceil_div(a: u64, b: u64) -> u64 {
    a.div_ceil(b)
}

/// Time until the next unit comes back when `d` microseconds of the bucket are in use.
pub(crate) fn next_unit(d: u64, t: u64) -> u64 {
    if d == 0 {
        0
    } else {
        d - (ceil_div(d, t) - 1) * t
    }
}
