//! The settings of the layer: its quotas ([`Limit`], [`MissingKey`]), the backend, the cost
//! of a request, the failure mode, and the error of a configuration the builder refuses.

use std::fmt;
use std::sync::Arc;

use http::Request;

use super::key::KeyExtractor;
use super::memory::MemoryBackend;
use super::quota::{Quota, QuotaError};

#[cfg(feature = "redis")]
use super::redis::RedisBackend;

/// What to do with a request whose key for a quota is legitimately absent (no session
/// cookie yet, no API key header).
///
/// A missing key means one of three things, and only the last is this rule's business
/// ([`NoKey`](super::NoKey) tells them apart):
///
/// 1. **No client address recorded at all**: the server's mistake (axum without
///    `ConnectInfo`, tonic without the crate's `tonic` feature, hyper without
///    [`PeerAddr`](crate::net::PeerAddr)). `500`, whatever the rule, and one error log naming
///    the fix.
/// 2. **The client sent something unusable**: a key header twice with different values, a
///    forwarding chain whose client entry is garbage. `400` with a clear body, whatever the
///    rule; never counted under anyone else's key.
/// 3. **The key is legitimately absent**: this rule decides ([`Skip`](Self::Skip) or
///    [`Reject`](Self::Reject)).
///
/// ```
/// use tower_rampart::rate_limit::{Key, Limit, MissingKey, Quota, RateLimitLayer};
///
/// // Anonymous requests carry no API key: only the per-IP quota applies to them.
/// let layer = RateLimitLayer::builder()
///     .quota("ip", Quota::per_minute(60), Key::peer_ip())
///     .limit(Limit::new("api-key", Quota::per_minute(600), Key::header("x-api-key"))
///         .on_missing_key(MissingKey::Skip))
///     .build()
///     .unwrap();
/// # let _ = layer;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissingKey {
    /// The quota does not apply to this request (its other quotas still do). Choose it for
    /// keys that are legitimately absent, like the session of an anonymous visitor.
    Skip,
    /// The request is refused (429, gRPC 8, without `Retry-After`): a request the limiter
    /// cannot count is not admitted. The default: a missing key is never a silent bypass. It is
    /// also logged (once per burst) since it often means a misconfiguration.
    Reject,
}

/// What the layer does when its Redis backend cannot be reached (timeout, connection lost,
/// circuit breaker open). Every such decision is counted
/// ([`RateLimitMetrics::degraded`](super::RateLimitMetrics::degraded)) and logged once per
/// burst.
///
/// ```
/// use tower_rampart::rate_limit::{FailureMode, Key, Quota, RateLimitLayer};
///
/// // A login endpoint: better to refuse for a moment than to let a brute force through.
/// let layer = RateLimitLayer::builder()
///     .quota("login", Quota::per_minute(5), Key::peer_ip())
///     .failure_mode(FailureMode::Closed)
///     .build()
///     .unwrap();
/// # let _ = layer;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureMode {
    /// Decide with an in-process [`MemoryBackend`] enforcing the same quotas, per instance (so
    /// N instances admit up to N times the quota while Redis is down). The default.
    Local,
    /// Admit every request.
    Open,
    /// Refuse every request with **503** Service Unavailable (gRPC 14 `UNAVAILABLE`) and
    /// `Retry-After: 1`: the client exceeded nothing, so a 429 would be a lie (and would
    /// feed its back-off logic wrong data); a 503 says "try again soon", and monitoring
    /// tells the two apart.
    Closed,
}

/// Where quota state lives.
///
/// ```
/// use tower_rampart::rate_limit::{Backend, Key, MemoryBackend, Quota, RateLimitLayer};
///
/// // One memory backend shared by two layers bounds their keys together.
/// let backend = MemoryBackend::builder().max_keys(50_000).build();
/// let api = RateLimitLayer::builder()
///     .quota("api", Quota::per_second(20), Key::peer_ip())
///     .backend(backend.clone())
///     .build()
///     .unwrap();
/// let _explicit: Backend = backend.into();
/// # let _ = api;
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Backend {
    /// In process (per instance).
    Memory(MemoryBackend),
    /// Redis, shared by every instance (feature `redis`).
    #[cfg(feature = "redis")]
    Redis(RedisBackend),
}

impl From<MemoryBackend> for Backend {
    fn from(b: MemoryBackend) -> Self {
        Backend::Memory(b)
    }
}

#[cfg(feature = "redis")]
impl From<RedisBackend> for Backend {
    fn from(b: RedisBackend) -> Self {
        Backend::Redis(b)
    }
}

/// The cost of a request, in quota units (see
/// [`RateLimitBuilder::cost_with`](super::RateLimitBuilder::cost_with)).
///
/// ```
/// use tower_rampart::rate_limit::{Key, Quota, RateLimitLayer};
///
/// // Exports are ten times as expensive as other calls.
/// let layer = RateLimitLayer::builder()
///     .quota("ip", Quota::per_minute(100), Key::peer_ip())
///     .cost_with(|req: &http::Request<()>| if req.uri().path().starts_with("/export") { 10 } else { 1 })
///     .build()
///     .unwrap();
/// # let _ = layer;
/// ```
pub trait CostFn: Send + Sync + 'static {
    /// Units this request uses (0 = checked without being counted).
    fn cost(&self, req: &Request<()>) -> u64;
}

impl<F> CostFn for F
where
    F: Fn(&Request<()>) -> u64 + Send + Sync + 'static,
{
    fn cost(&self, req: &Request<()>) -> u64 {
        self(req)
    }
}

/// One quota of a layer: a name, a [`Quota`], a key and a [`MissingKey`] rule.
///
/// ```
/// use tower_rampart::rate_limit::{Key, Limit, MissingKey, Quota};
///
/// let per_tenant = Limit::new("tenant", Quota::per_minute(600), Key::header("x-tenant-id"))
///     .on_missing_key(MissingKey::Skip);
/// # let _ = per_tenant;
/// ```
pub struct Limit {
    pub(super) name: String,
    pub(super) quota: Quota,
    pub(super) key: Arc<dyn KeyExtractor>,
    pub(super) missing: MissingKey,
}

impl fmt::Debug for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limit")
            .field("name", &self.name)
            .field("quota", &self.quota)
            .field("missing", &self.missing)
            .finish_non_exhaustive()
    }
}

impl Limit {
    /// A quota named `name` (1 to 64 characters among `A-Z a-z 0-9 _ . -`; it appears in the
    /// headers and in Redis key names) counted per `key`. A missing key is refused
    /// ([`MissingKey::Reject`]) unless [`on_missing_key`](Self::on_missing_key) says otherwise.
    pub fn new(name: impl Into<String>, quota: Quota, key: impl KeyExtractor) -> Self {
        Self {
            name: name.into(),
            quota,
            key: Arc::new(key),
            missing: MissingKey::Reject,
        }
    }

    /// What to do with requests without a key for this quota.
    pub fn on_missing_key(mut self, rule: MissingKey) -> Self {
        self.missing = rule;
        self
    }
}

/// A configuration [`RateLimitBuilder::build`](super::RateLimitBuilder::build) refuses, one
/// variant per setting that can be wrong, so that an application can point at its own
/// setting (an environment variable, a field of its configuration file) without reading the
/// message. Most variants name the quota concerned ([`quota_name`](Self::quota_name)).
///
/// ```
/// use tower_rampart::rate_limit::{Key, Quota, RateLimitConfigError, RateLimitLayer};
///
/// let err = RateLimitLayer::builder()
///     .quota("login", Quota::per_minute(5), Key::peer_ip())
///     .cost(10)
///     .build()
///     .unwrap_err();
/// assert!(matches!(err, RateLimitConfigError::CostAboveBurst { cost: 10, .. }));
/// assert_eq!(err.quota_name(), Some("login"));
/// assert_eq!(
///     err.to_string(),
///     "rate limit configuration: quota \"login\" (5 per 1 minute): a cost of 10 per request \
///      exceeds its burst of 5, so no request could ever be admitted"
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RateLimitConfigError {
    /// The builder has no quota: a layer that limits nothing is a mistake.
    NoQuota,
    /// More than 64 quotas in one layer.
    TooManyQuotas,
    /// [`RateLimitBuilder::cost`](super::RateLimitBuilder::cost) is 0: every request must
    /// cost at least one unit (a per-request [`CostFn`] may return 0).
    ZeroCost,
    /// A quota name that is empty, longer than 64 characters, or has a character other than
    /// `A-Z a-z 0-9 _ . -` (names appear in headers and Redis key names).
    InvalidQuotaName {
        /// The name as given.
        name: String,
    },
    /// Two quotas of the layer have the same name.
    DuplicateQuotaName {
        /// The name used twice.
        name: String,
    },
    /// A quota whose numbers are out of range (see [`Quota::validate`]).
    InvalidQuota {
        /// The quota's name.
        name: String,
        /// What is wrong with it.
        error: QuotaError,
    },
    /// A quota whose key extractor is misconfigured (an invalid header name, an IPv6 prefix
    /// longer than 128 bits, ...).
    InvalidKey {
        /// The quota's name.
        name: String,
        /// What the key extractor reported.
        reason: String,
    },
    /// The fixed cost of a request ([`RateLimitBuilder::cost`](super::RateLimitBuilder::cost))
    /// exceeds a quota's burst, so no request could ever be admitted.
    CostAboveBurst {
        /// The quota's name.
        name: String,
        /// The quota (its burst is [`Quota::burst_size`]).
        quota: Quota,
        /// The cost of a request.
        cost: u64,
    },
    /// The `RateLimit-Policy` header value could not be built from the quotas. Not expected:
    /// names and quotas are checked first, and this reports rather than panics.
    PolicyHeader,
    /// The "near limit" share of the layer's metrics (`RateLimitBuilder::near_limit`, feature
    /// `opentelemetry`) is not a number from 0 to 1.
    NearLimitShare,
}

impl RateLimitConfigError {
    /// The name of the quota the error is about, if it is about one quota.
    pub fn quota_name(&self) -> Option<&str> {
        match self {
            Self::InvalidQuotaName { name }
            | Self::DuplicateQuotaName { name }
            | Self::InvalidQuota { name, .. }
            | Self::InvalidKey { name, .. }
            | Self::CostAboveBurst { name, .. } => Some(name),
            Self::NoQuota
            | Self::TooManyQuotas
            | Self::ZeroCost
            | Self::PolicyHeader
            | Self::NearLimitShare => None,
        }
    }
}

impl fmt::Display for RateLimitConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("rate limit configuration: ")?;
        match self {
            Self::NoQuota => f.write_str("no quota: add one with .quota(name, quota, key)"),
            Self::TooManyQuotas => f.write_str("more than 64 quotas in one layer"),
            Self::ZeroCost => f.write_str("the cost of a request must be at least 1"),
            Self::NearLimitShare => f.write_str("the near-limit share must be from 0.0 to 1.0"),
            Self::InvalidQuotaName { name } => write!(
                f,
                "quota name {name:?}: use 1 to 64 characters among A-Z a-z 0-9 _ . -"
            ),
            Self::DuplicateQuotaName { name } => write!(f, "quota name {name:?} is used twice"),
            Self::InvalidQuota { name, error } => write!(f, "quota {name:?}: {error}"),
            Self::InvalidKey { name, reason } => write!(f, "quota {name:?}: key: {reason}"),
            Self::CostAboveBurst { name, quota, cost } => write!(
                f,
                "quota {name:?} ({quota}): a cost of {cost} per request exceeds its burst of {}, \
                 so no request could ever be admitted",
                quota.burst_size()
            ),
            Self::PolicyHeader => f.write_str("cannot build the RateLimit-Policy header"),
        }
    }
}

impl std::error::Error for RateLimitConfigError {}

/// Why [`RateLimitLayer::reset`](super::RateLimitLayer::reset) failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ResetError {
    /// No quota of the layer has this name (a typo would otherwise reset nothing, silently).
    UnknownQuota {
        /// The name as given.
        name: String,
    },
    /// Redis could not delete the key (the reset may or may not have happened: retry it,
    /// a reset twice is harmless).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    Redis(crate::redis::RedisError),
}

impl fmt::Display for ResetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownQuota { name } => {
                write!(f, "rate limit reset: the layer has no quota named {name:?}")
            }
            #[cfg(feature = "redis")]
            Self::Redis(e) => write!(f, "rate limit reset: {e}"),
        }
    }
}

impl std::error::Error for ResetError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::UnknownQuota { .. } => None,
            #[cfg(feature = "redis")]
            Self::Redis(e) => Some(e),
        }
    }
}
