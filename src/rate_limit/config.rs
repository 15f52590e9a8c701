//! The settings of the layer: its quotas ([`Limit`], [`MissingKey`]), the backend, the cost
//! of a request, the failure mode, and the error of a configuration the builder refuses.

use std::fmt;
use std::sync::Arc;

use http::Request;

use super::key::KeyExtractor;
use super::memory::MemoryBackend;
use super::quota::Quota;

#[cfg(feature = "redis")]
use super::redis::RedisBackend;

/// What to do with a request that has no key for a quota (e.g. no session cookie, or no
/// client address because the server does not record peers).
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

/// A configuration the layer refuses to build with.
///
/// ```
/// use tower_rampart::rate_limit::RateLimitLayer;
///
/// let err = RateLimitLayer::builder().build().unwrap_err();
/// assert!(err.to_string().contains("no quota"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfigError {
    pub(super) msg: String,
}

impl fmt::Display for RateLimitConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rate limit configuration: {}", self.msg)
    }
}

impl std::error::Error for RateLimitConfigError {}
