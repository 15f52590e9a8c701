//! The layer's decision counters.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

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
///
/// Every request bumps a count, from whichever worker thread runs it: one shared atomic
/// would make the threads of a busy server take its cache line from each other on every
/// request. So the counts are striped: each thread bumps the stripe of its own (a thread
/// is given one in turn the first time it counts), each stripe fills one cache line, and a
/// snapshot adds the stripes up.
#[derive(Debug, Default)]
pub(super) struct Counters {
    stripes: [Stripe; STRIPES],
}

/// The stripes of a layer's counts: a power of two, so that a thread's turn maps to one
/// with a mask.
const STRIPES: usize = 8;

/// One stripe of the counts (see [`Counters`]): seven counts in one cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
pub(super) struct Stripe {
    pub(super) allowed: AtomicU64,
    pub(super) denied: AtomicU64,
    pub(super) shadow_denied: AtomicU64,
    pub(super) degraded: AtomicU64,
    pub(super) deny_cache_hits: AtomicU64,
    pub(super) missing_key: AtomicU64,
    pub(super) backend_calls: AtomicU64,
}

/// The turn the next thread to count is given.
static NEXT_TURN: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's turn (`usize::MAX` until it first counts).
    static TURN: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// This thread's turn, given on first use (a thread that cannot reach its local storage,
/// being torn down, uses stripe 0).
#[inline]
fn turn() -> usize {
    TURN.try_with(|t| {
        let mut n = t.get();
        if n == usize::MAX {
            n = NEXT_TURN.fetch_add(1, Ordering::Relaxed);
            t.set(n);
        }
        n
    })
    .unwrap_or(0)
}

/// Adds one to a counter (relaxed: the counts order nothing).
pub(super) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    /// The stripe this thread counts in.
    #[inline]
    pub(super) fn here(&self) -> &Stripe {
        &self.stripes[turn() & (STRIPES - 1)]
    }

    /// The counts so far: the sums of the stripes.
    pub(super) fn snapshot(&self) -> RateLimitMetrics {
        let mut m = RateLimitMetrics::default();
        for s in &self.stripes {
            let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
            m.allowed += l(&s.allowed);
            m.denied += l(&s.denied);
            m.shadow_denied += l(&s.shadow_denied);
            m.degraded += l(&s.degraded);
            m.deny_cache_hits += l(&s.deny_cache_hits);
            m.missing_key += l(&s.missing_key);
            m.backend_calls += l(&s.backend_calls);
        }
        m
    }
}

/// The layer's OpenTelemetry instruments and its attribute sets, built once with the layer
/// (see [`telemetry`](crate::telemetry)): recording allocates nothing. The counters are the
/// layer's own atomics, reported by observable instruments when the provider collects, so
/// a decision makes no SDK call; only the decision duration is a histogram recorded per
/// request. When nothing records (no provider), a layer holds `None` and skips even the
/// clock readings.
#[cfg(feature = "opentelemetry")]
pub(super) mod otel {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    use opentelemetry::KeyValue;
    use opentelemetry::metrics::{Histogram, Meter, ObservableCounter};

    use super::bump;
    use crate::telemetry::{self, attribute, kv, observe};

    /// What a decision was, as `rampart.rate_limit.result` (the index of its attributes).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(in crate::rate_limit) enum Outcome {
        Allowed = 0,
        Rejected = 1,
        ShadowRejected = 2,
        DegradedAllowed = 3,
        DegradedRejected = 4,
    }

    const RESULTS: [&str; 5] = [
        "allowed",
        "rejected",
        "shadow_rejected",
        "degraded_allowed",
        "degraded_rejected",
    ];

    /// One quota's counts and attribute sets.
    struct PerQuota {
        /// Decisions per [`Outcome`].
        counts: [AtomicU64; 5],
        near: AtomicU64,
        /// (policy, result) for each [`Outcome`].
        results: [[KeyValue; 2]; 5],
        policy: [KeyValue; 1],
        /// An admission leaving at most this much of the quota is "near limit".
        near_remaining: u64,
    }

    /// The instruments of a Redis backend.
    #[cfg(feature = "redis")]
    pub(in crate::rate_limit) struct ScriptMetrics(Option<Arc<ScriptLive>>);

    #[cfg(feature = "redis")]
    struct ScriptLive {
        calls: AtomicU64,
        decisions: Histogram<u64>,
    }

    #[cfg(feature = "redis")]
    impl ScriptMetrics {
        pub(in crate::rate_limit) fn new(meter: &Meter) -> Self {
            let live = Arc::new(ScriptLive {
                calls: AtomicU64::new(0),
                decisions: meter
                    .u64_histogram(telemetry::RATE_LIMIT_SCRIPT_DECISIONS)
                    .with_unit("{decision}")
                    .with_description("Requests' decisions carried by one script call.")
                    .with_boundaries(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0])
                    .build(),
            });
            let counts = Arc::clone(&live);
            meter
                .u64_observable_counter(telemetry::RATE_LIMIT_SCRIPT_CALLS)
                .with_unit("{call}")
                .with_description("Rate limit script calls sent to Redis.")
                .with_callback(move |o| observe(o, &counts.calls, &[]))
                .build();
            ScriptMetrics(telemetry::records(&live).then_some(live))
        }

        /// One script call carrying `decisions` requests' decisions.
        pub(in crate::rate_limit) fn call(&self, decisions: usize) {
            if let Some(live) = &self.0 {
                bump(&live.calls);
                live.decisions.record(decisions as u64, &[]);
            }
        }
    }

    /// The instruments of one layer; `None` when nothing records.
    pub(in crate::rate_limit) struct LayerMetrics(Option<Arc<Live>>);

    struct Live {
        duration: Histogram<f64>,
        #[cfg_attr(not(feature = "redis"), allow(dead_code))]
        deny_cache_hits: AtomicU64,
        quotas: Box<[PerQuota]>,
        /// Decisions no quota took (Redis failed, failure mode `Open` or `Closed`), per
        /// [`Outcome`], and their attributes (the result alone).
        unattributed: [AtomicU64; 5],
        unattributed_attributes: [[KeyValue; 1]; 5],
        memory: [KeyValue; 1],
        #[cfg_attr(not(feature = "redis"), allow(dead_code))]
        redis: [KeyValue; 1],
    }

    impl LayerMetrics {
        /// The instruments for quotas `(name, burst)`, "near limit" at `share` used.
        pub(in crate::rate_limit) fn new<'a>(
            meter: &Meter,
            quotas: impl Iterator<Item = (&'a str, u64)>,
            share: f64,
        ) -> Self {
            let quotas = quotas
                .map(|(name, burst)| {
                    let policy = KeyValue::new(attribute::RATE_LIMIT_POLICY, name.to_owned());
                    let used = (share * burst as f64).ceil().clamp(1.0, burst as f64) as u64;
                    PerQuota {
                        counts: Default::default(),
                        near: AtomicU64::new(0),
                        results: RESULTS
                            .map(|r| [policy.clone(), kv(attribute::RATE_LIMIT_RESULT, r)]),
                        near_remaining: burst - used,
                        policy: [policy],
                    }
                })
                .collect();
            let live = Arc::new(Live {
                duration: meter
                    .f64_histogram(telemetry::RATE_LIMIT_DECISION_DURATION)
                    .with_unit("s")
                    .with_description("Time to a rate limit verdict from the backend.")
                    .with_boundaries(telemetry::FAST_DURATION_BOUNDARIES.to_vec())
                    .build(),
                deny_cache_hits: AtomicU64::new(0),
                quotas,
                unattributed: Default::default(),
                unattributed_attributes: RESULTS.map(|r| [kv(attribute::RATE_LIMIT_RESULT, r)]),
                memory: [kv(attribute::RATE_LIMIT_BACKEND, "memory")],
                redis: [kv(attribute::RATE_LIMIT_BACKEND, "redis")],
            });
            let counts = Arc::clone(&live);
            let _: ObservableCounter<u64> = meter
                .u64_observable_counter(telemetry::RATE_LIMIT_DECISIONS)
                .with_unit("{decision}")
                .with_description("Rate limit decisions, by quota and result.")
                .with_callback(move |o| {
                    for q in counts.quotas.iter() {
                        for (count, attributes) in q.counts.iter().zip(&q.results) {
                            observe(o, count, attributes);
                        }
                    }
                    for (count, attributes) in counts
                        .unattributed
                        .iter()
                        .zip(&counts.unattributed_attributes)
                    {
                        observe(o, count, attributes);
                    }
                })
                .build();
            let counts = Arc::clone(&live);
            meter
                .u64_observable_counter(telemetry::RATE_LIMIT_NEAR_LIMIT)
                .with_unit("{decision}")
                .with_description("Admissions that left a quota nearly used up.")
                .with_callback(move |o| {
                    for q in counts.quotas.iter() {
                        observe(o, &q.near, &q.policy);
                    }
                })
                .build();
            let counts = Arc::clone(&live);
            meter
                .u64_observable_counter(telemetry::RATE_LIMIT_DENY_CACHE_HITS)
                .with_unit("{decision}")
                .with_description("Refusals answered by the local deny cache.")
                .with_callback(move |o| observe(o, &counts.deny_cache_hits, &[]))
                .build();
            LayerMetrics(telemetry::records(&live).then_some(live))
        }

        /// Whether anything records (the layer then times its decisions).
        pub(in crate::rate_limit) fn on(&self) -> bool {
            self.0.is_some()
        }

        /// One decision under quota `i` (an index in the layer's limits).
        pub(in crate::rate_limit) fn decision(&self, i: usize, outcome: Outcome) {
            if let Some(live) = &self.0 {
                bump(&live.quotas[i].counts[outcome as usize]);
            }
        }

        /// One decision no quota took.
        pub(in crate::rate_limit) fn unattributed(&self, outcome: Outcome) {
            if let Some(live) = &self.0 {
                bump(&live.unattributed[outcome as usize]);
            }
        }

        /// An admission under quota `i` that left `remaining`.
        pub(in crate::rate_limit) fn admitted(&self, i: usize, remaining: u64) {
            if let Some(live) = &self.0 {
                let q = &live.quotas[i];
                if remaining <= q.near_remaining {
                    bump(&q.near);
                }
            }
        }

        /// A stopwatch reading for a decision's duration, when anything records.
        pub(in crate::rate_limit) fn stopwatch(&self) -> Option<u64> {
            self.0.as_ref().map(|_| super::super::clock::stopwatch())
        }

        /// A memory backend verdict started at `started` ([`stopwatch`](Self::stopwatch)).
        pub(in crate::rate_limit) fn memory_duration(&self, started: Option<u64>) {
            if let (Some(live), Some(started)) = (&self.0, started) {
                let seconds = super::super::clock::seconds_since(started);
                live.duration.record(seconds, &live.memory);
            }
        }

        /// A Redis verdict started at `started` ([`stopwatch`](Self::stopwatch)).
        #[cfg(feature = "redis")]
        pub(in crate::rate_limit) fn redis_duration(&self, started: Option<u64>) {
            if let (Some(live), Some(started)) = (&self.0, started) {
                let seconds = super::super::clock::seconds_since(started);
                live.duration.record(seconds, &live.redis);
            }
        }

        /// The deny cache answered.
        #[cfg(feature = "redis")]
        pub(in crate::rate_limit) fn deny_cache_hit(&self) {
            if let Some(live) = &self.0 {
                bump(&live.deny_cache_hits);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_bumped_on_many_threads_add_up_and_threads_count_apart() {
        let counters = Counters::default();
        let stripes: Vec<usize> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..STRIPES * 2)
                .map(|i| {
                    let c = &counters;
                    s.spawn(move || {
                        for _ in 0..1000 {
                            bump(&c.here().allowed);
                        }
                        if i % 2 == 0 {
                            bump(&c.here().denied);
                        }
                        std::ptr::from_ref(c.here()) as usize
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let m = counters.snapshot();
        assert_eq!(m.allowed, 1000 * STRIPES as u64 * 2);
        assert_eq!(m.denied, STRIPES as u64);
        assert_eq!(m.shadow_denied + m.degraded + m.backend_calls, 0);
        // Threads are given their stripes in turn: sixteen threads use every stripe (at
        // least half of them if threads elsewhere in the process took turns meanwhile).
        let mut seen = stripes;
        seen.sort_unstable();
        seen.dedup();
        assert!(seen.len() >= STRIPES / 2, "{} stripes used", seen.len());
        assert_eq!(std::mem::align_of::<Stripe>(), 64);
    }
}
