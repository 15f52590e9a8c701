//! Rate limiting: per client IP, per session, per anything; in memory or on Redis.
//!
//! [`RateLimitLayer`] computes one key per quota for each request (client IP through trusted
//! proxies, session, header, global, any closure), checks **all the request's quotas in one
//! atomic step** (a refused request consumes nothing), and either calls the inner service or
//! answers itself:
//!
//! * **429 Too Many Requests** with `{"detail": "Rate limit exceeded: 10 per 1 minute"}`
//!   (customisable: [`RejectionBody`]), `Retry-After` in whole seconds rounded up (>= 1), and
//!   `RateLimit-Policy: "ip";q=10;w=60` / `RateLimit: "ip";r=0;t=42` (IETF httpapi
//!   ratelimit-headers draft -11 syntax; admitted responses carry them too unless
//!   [`headers_on_success(false)`](RateLimitBuilder::headers_on_success));
//! * for gRPC requests (`content-type: application/grpc…`), a trailers-only response: HTTP
//!   200, `grpc-status: 8` (`RESOURCE_EXHAUSTED`), `grpc-message`.
//!
//! Handlers find the [`RateLimitDecision`] (remaining units, reset time per quota) in the
//! request extensions. [Shadow mode](RateLimitBuilder::shadow) decides and counts but never
//! refuses.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//! use tower_rampart::net::{PeerAddr, TrustedProxies};
//! use tower_rampart::rate_limit::{Key, Quota, RateLimitLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = RateLimitLayer::builder()
//!     .quota("ip", Quota::parse("2/minute")?, Key::client_ip(TrustedProxies::none()))
//!     .build()?;
//! let mut svc = ServiceBuilder::new().layer(layer).service(service_fn(|_req: Request<String>| async {
//!     Ok::<_, Infallible>(Response::new(String::from("hello")))
//! }));
//!
//! let request = || {
//!     let mut req = Request::new(String::new());
//!     req.extensions_mut().insert(PeerAddr("203.0.113.7:50000".parse().unwrap()));
//!     req
//! };
//! for _ in 0..2 {
//!     let resp = svc.ready().await?.call(request()).await?;
//!     assert_eq!(resp.status(), StatusCode::OK);
//! }
//! let resp = svc.ready().await?.call(request()).await?;
//! assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(resp.headers()["retry-after"], "60");
//! assert_eq!(resp.headers()["ratelimit-policy"], r#""ip";q=2;w=60"#);
//! assert_eq!(resp.headers()["ratelimit"], r#""ip";r=0;t=60"#);
//! # Ok(()) }
//! ```
//!
//! # Two meanings of a quota
//!
//! A [`Quota`] is either a **window** — "10/minute" means at most 10 admitted in *any* rolling
//! minute, exactly (a client that used its 10 at 0 s is refused until 60 s after the first of
//! them, whatever its pace) — or **GCRA**, a smooth rate with an explicit burst
//! ([`Quota::rate`]). Each meaning is one pure integer function of (state, now, quota, cost)
//! over microseconds; the memory backend calls it, the Redis script reproduces it
//! operation for operation, and a test replays traces through both requiring identical
//! decisions and headers.
//!
//! The `t` of `RateLimit` is the number of seconds (rounded up) until the next unit comes
//! back: 0 when nothing is used; for a refused request of cost 1 it equals `Retry-After`.
//! With a rolling window there is no single instant when "the quota resets", and "when may I
//! send again" is what a client needs.
//!
//! # Backends
//!
//! * [`MemoryBackend`]: per instance; sharded, bounded, exact. Decisions are synchronous: no
//!   allocation of a future, no boxing.
//! * [`RedisBackend`] (feature `redis`): global across instances; one script call per request
//!   for all its quotas, server clock, exact local deny cache, and a [`FailureMode`] when
//!   Redis cannot be reached.
//!
//! # Missing keys
//!
//! A request without a key for a quota (no session cookie, no recorded peer address) follows
//! the quota's [`MissingKey`] rule: `Reject` (the default: never a silent bypass) or `Skip`.
//!
//! # The session key
//!
//! `Key::session(reader)` (feature `session`) takes the session layer's
//! `SessionCookieReader`: it verifies the signed cookie itself and yields the session's hashed
//! key, without a store round trip; the session id never reaches Redis key names or logs.

mod builder;
mod clock;
mod config;
mod decision;
mod engine;
mod gcra;
mod key;
mod memory;
mod metrics;
mod micros;
mod pipeline;
mod quota;
#[cfg(feature = "redis")]
mod redis;
mod response;
mod service;
mod window;

/// A request's values, one per quota (keys, decisions): inline up to three quotas (the usual
/// layer has one to three), so that deciding a request allocates nothing for them.
pub(crate) type Few<T> = smallvec::SmallVec<[T; 3]>;

/// Locks `m`, shrugging off poisoning: the limiters' shared state is plain data updated in
/// small steps, so a panic elsewhere cannot leave it unusable.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Quota names interned as small ids, per backend: quotas of the same name share buckets.
#[derive(Default)]
pub(crate) struct Names(std::sync::Mutex<Vec<std::sync::Arc<str>>>);

impl Names {
    /// The id of `name`, added if new.
    pub(crate) fn intern(&self, name: &str) -> u32 {
        let mut names = lock(&self.0);
        if let Some(i) = names.iter().position(|n| &**n == name) {
            return i as u32;
        }
        names.push(name.into());
        (names.len() - 1) as u32
    }

    /// The id of `name` if it was ever interned (a lookup that adds nothing).
    pub(crate) fn get(&self, name: &str) -> Option<u32> {
        let names = lock(&self.0);
        names.iter().position(|n| &**n == name).map(|i| i as u32)
    }
}

pub use self::builder::RateLimitBuilder;
pub use self::clock::MonotonicClock;
pub use self::config::{
    Backend, CostFn, FailureMode, Limit, MissingKey, RateLimitConfigError, ResetError,
};
pub use self::decision::{QuotaDecision, QuotaStatus, RateLimitDecision};
pub use self::key::{ClientIpKey, GlobalKey, HeaderKey, Key, KeyExtractor, LimitKey, NoKey};
#[cfg(feature = "session")]
#[cfg_attr(docsrs, doc(cfg(feature = "session")))]
pub use self::key::{SessionKeyExtractor, UserKeyExtractor};
pub use self::memory::{DEFAULT_MAX_KEYS, KeyedLimiter, MemoryBackend, MemoryBackendBuilder};
pub use self::metrics::RateLimitMetrics;
pub use self::quota::{
    DEFAULT_WINDOW_SLOTS, MAX_COUNT, MAX_WINDOW, MIN_WINDOW, Meaning, Quota, QuotaError,
};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::{
    DEFAULT_DENY_CACHE, DEFAULT_PREFIX, RedisBackend, RedisBackendBuilder, RedisKeyedLimiter,
};
pub use self::response::{
    JsonRejection, RATELIMIT, RATELIMIT_POLICY, RateLimitBody, RejectReason, Rejection,
    RejectionBody,
};
pub use self::service::{RateLimitLayer, RateLimitService, ResponseFuture};
