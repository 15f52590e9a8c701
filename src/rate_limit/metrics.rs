//! The layer's decision counters.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of a layer's decisions (all clones of a layer share them).
///
/// ```
/// use std::convert::Infallible;
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_rampart::rate_limit::{Key, Quota, RateLimitLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = RateLimitLayer::builder()
///     .quota("all", Quota::per_minute(1), Key::global())
///     .build()
///     .unwrap();
/// let svc = layer.layer(service_fn(|_req: http::Request<String>| async {
///     Ok::<_, Infallible>(http::Response::new(String::new()))
/// }));
/// for _ in 0..3 {
///     svc.clone().oneshot(http::Request::new(String::new())).await.unwrap();
/// }
/// let m = layer.metrics();
/// assert_eq!((m.allowed, m.denied), (1, 2));
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimitMetrics {
    /// Requests admitted (including degraded and shadow-mode admissions).
    pub allowed: u64,
    /// Requests refused (any reason; never in shadow mode).
    pub denied: u64,
    /// Shadow mode: requests that would have been refused.
    pub shadow_denied: u64,
    /// Decisions taken by the failure mode because Redis could not be reached.
    pub degraded: u64,
    /// Denials answered by the local deny cache, without a Redis round trip.
    pub deny_cache_hits: u64,
    /// Requests without a key for a quota (skipped or refused per its rule).
    pub missing_key: u64,
    /// Decisions sent to Redis by this layer (with batching, several share one round trip).
    pub backend_calls: u64,
}

/// The live counts behind [`RateLimitMetrics`], shared by all clones of a layer.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) allowed: AtomicU64,
    pub(super) denied: AtomicU64,
    pub(super) shadow_denied: AtomicU64,
    pub(super) degraded: AtomicU64,
    pub(super) deny_cache_hits: AtomicU64,
    pub(super) missing_key: AtomicU64,
    pub(super) backend_calls: AtomicU64,
}

/// Adds one to a counter (relaxed: the counts order nothing).
pub(super) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    /// The counts so far.
    pub(super) fn snapshot(&self) -> RateLimitMetrics {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RateLimitMetrics {
            allowed: l(&self.allowed),
            denied: l(&self.denied),
            shadow_denied: l(&self.shadow_denied),
            degraded: l(&self.degraded),
            deny_cache_hits: l(&self.deny_cache_hits),
            missing_key: l(&self.missing_key),
            backend_calls: l(&self.backend_calls),
        }
    }
}
