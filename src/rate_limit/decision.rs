//! The outcome of one quota check.

use std::time::Duration;

use super::micros::{ceil_div, next_unit};
use super::quota::Quota;
use crate::lasting::Text;

// Also imported from here by the Redis backend.
pub(crate) use super::micros::NEVER;

/// The outcome of checking one quota for one key: what both backends compute, identically.
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::rate_limit::{LimitKey, MemoryBackend, Quota};
///
/// let limiter = MemoryBackend::new().keyed("ip", Quota::per_minute(2)).unwrap();
/// let key = LimitKey::new("client-1");
/// let now = 1_000_000;
/// assert!(limiter.check_at(&key, 1, now).is_allowed());
/// let second = limiter.check_at(&key, 1, now);
/// assert_eq!(second.remaining(), 0);
/// let third = limiter.check_at(&key, 1, now);
/// assert!(!third.is_allowed());
/// assert_eq!(third.retry_after(), Some(Duration::from_secs(60)));
/// ```
#[derive(Clone, Copy)]
pub struct QuotaDecision {
    pub(crate) allowed: bool,
    pub(crate) retry_us: u64,
    level: Level,
}

/// What the decision knows about the bucket after it.
#[derive(Clone, Copy)]
enum Level {
    /// The numbers, computed.
    Counted { remaining: u64, reset_us: u64 },
    /// GCRA: `used_us` of a bucket of `burst` units of `interval_us` each. The numbers cost a
    /// division, paid only when they are read.
    Gcra {
        used_us: u64,
        interval_us: u64,
        burst: u64,
    },
}

impl QuotaDecision {
    pub(crate) fn new(allowed: bool, remaining: u64, reset_us: u64, retry_us: u64) -> Self {
        Self {
            allowed,
            retry_us,
            level: Level::Counted {
                remaining,
                reset_us,
            },
        }
    }

    pub(crate) fn gcra(
        allowed: bool,
        used_us: u64,
        interval_us: u64,
        burst: u64,
        retry_us: u64,
    ) -> Self {
        Self {
            allowed,
            retry_us,
            level: Level::Gcra {
                used_us,
                interval_us,
                burst,
            },
        }
    }

    /// Microseconds until one more unit is available (0: nothing used).
    pub(crate) fn reset_us(&self) -> u64 {
        match self.level {
            Level::Counted { reset_us, .. } => reset_us,
            Level::Gcra {
                used_us,
                interval_us,
                ..
            } => next_unit(used_us, interval_us),
        }
    }
}

impl PartialEq for QuotaDecision {
    fn eq(&self, other: &Self) -> bool {
        (
            self.allowed,
            self.remaining(),
            self.reset_us(),
            self.retry_us,
        ) == (
            other.allowed,
            other.remaining(),
            other.reset_us(),
            other.retry_us,
        )
    }
}

impl Eq for QuotaDecision {}

impl std::hash::Hash for QuotaDecision {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (
            self.allowed,
            self.remaining(),
            self.reset_us(),
            self.retry_us,
        )
            .hash(state);
    }
}

impl std::fmt::Debug for QuotaDecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuotaDecision")
            .field("allowed", &self.allowed)
            .field("remaining", &self.remaining())
            .field("reset_us", &self.reset_us())
            .field("retry_us", &self.retry_us)
            .finish()
    }
}

impl QuotaDecision {
    /// True if the request was admitted (and counted).
    pub fn is_allowed(&self) -> bool {
        self.allowed
    }

    /// Units still available after this decision (the `r` of the `RateLimit` header).
    pub fn remaining(&self) -> u64 {
        match self.level {
            Level::Counted { remaining, .. } => remaining,
            Level::Gcra {
                used_us,
                interval_us,
                burst,
            } => burst.saturating_sub(ceil_div(used_us, interval_us)),
        }
    }

    /// Time until one more unit becomes available: zero when nothing is used (the `t` of the
    /// `RateLimit` header, rounded up to whole seconds there). For a denied request of cost 1
    /// it equals [`retry_after`](Self::retry_after).
    pub fn reset_after(&self) -> Duration {
        Duration::from_micros(self.reset_us())
    }

    /// For a denied request: the time after which the same request would be admitted, if
    /// nobody else used the key meanwhile; `None` if it is allowed or can never be admitted.
    pub fn retry_after(&self) -> Option<Duration> {
        if self.allowed || self.retry_us == NEVER {
            None
        } else {
            Some(Duration::from_micros(self.retry_us))
        }
    }

    /// Denied because the cost exceeds the quota's burst: retrying cannot help.
    pub fn is_impossible(&self) -> bool {
        !self.allowed && self.retry_us == NEVER
    }
}

/// The decision of the rate limiter for a request, in its extensions for handlers to read.
///
/// ```
/// use tower_rampart::rate_limit::RateLimitDecision;
///
/// fn handler(req: http::Request<()>) -> String {
///     match req.extensions().get::<RateLimitDecision>() {
///         Some(d) => format!("{} requests left", d.remaining().unwrap_or(u64::MAX)),
///         None => "not limited".into(),
///     }
/// }
/// # let _ = handler;
/// ```
#[derive(Clone, Debug)]
pub struct RateLimitDecision {
    pub(super) allowed: bool,
    pub(super) shadow: bool,
    pub(super) degraded: bool,
    pub(super) quotas: super::Few<QuotaStatus>,
}

/// The state of one quota after a request (see [`RateLimitDecision::quotas`]).
///
/// ```
/// use tower_rampart::rate_limit::RateLimitDecision;
///
/// fn describe(decision: &RateLimitDecision) -> Vec<String> {
///     decision
///         .quotas()
///         .iter()
///         .map(|q| format!("{}: limit {}", q.name(), q.quota().limit()))
///         .collect()
/// }
/// # let _ = describe;
/// ```
#[derive(Clone, Debug)]
pub struct QuotaStatus {
    pub(super) name: Text,
    pub(super) quota: Quota,
    pub(super) decision: QuotaDecision,
}

impl QuotaStatus {
    /// The quota's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The quota.
    pub fn quota(&self) -> &Quota {
        &self.quota
    }

    /// Remaining units, time to the next unit, retry time.
    pub fn decision(&self) -> &QuotaDecision {
        &self.decision
    }
}

impl RateLimitDecision {
    /// True if the request was admitted by the limiter (false only in shadow mode, where the
    /// handler runs anyway).
    pub fn is_allowed(&self) -> bool {
        self.allowed
    }

    /// True in shadow mode.
    pub fn is_shadow(&self) -> bool {
        self.shadow
    }

    /// True if Redis could not be reached and the failure mode decided.
    pub fn is_degraded(&self) -> bool {
        self.degraded
    }

    /// Each checked quota (skipped ones are absent).
    pub fn quotas(&self) -> &[QuotaStatus] {
        &self.quotas
    }

    /// The smallest remaining count over the checked quotas.
    pub fn remaining(&self) -> Option<u64> {
        self.quotas.iter().map(|q| q.decision.remaining()).min()
    }

    /// The longest time until a checked quota gets a unit back.
    pub fn reset_after(&self) -> Option<Duration> {
        self.quotas.iter().map(|q| q.decision.reset_after()).max()
    }
}
