//! OpenTelemetry metrics of the layers (feature `opentelemetry`): every name in one place.
//!
//! The layers record through the OpenTelemetry **API** crate only. Nothing is recorded, and
//! nothing is exported, unless the application installs a meter provider (the SDK, with the
//! exporter of its choice): without one, every instrument is the API's no-op.
//!
//! ```
//! use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
//! use tower_rampart::correlation::CorrelationIdLayer;
//! use tower_rampart::rate_limit::{Key, Quota, RateLimitLayer};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The application's provider (an OTLP or Prometheus exporter in production), installed
//! // before the layers are built.
//! let exporter = InMemoryMetricExporter::default();
//! let provider = SdkMeterProvider::builder()
//!     .with_reader(PeriodicReader::builder(exporter).build())
//!     .build();
//! opentelemetry::global::set_meter_provider(provider.clone());
//!
//! let correlation = CorrelationIdLayer::new();
//! let limits = RateLimitLayer::builder()
//!     .quota("ip", Quota::per_minute(100), Key::peer_ip())
//!     .near_limit(0.9)
//!     .build()?;
//! # let _ = (correlation, limits);
//! # provider.shutdown()?;
//! # Ok(()) }
//! ```
//!
//! ## Where the instruments come from
//!
//! Each layer takes its instruments when it is built (not per request), from the meter of the
//! global provider, [`opentelemetry::global`], under the instrumentation scope
//! [`SCOPE`] (`tower-rampart`, with the crate's version). So **install the provider before
//! building the layers**: a layer built earlier keeps the no-op instruments it was given.
//! Each layer's builder also takes a [`Meter`] of the application's own (`meter(meter)` on
//! `CorrelationIdLayer`, `RateLimitBuilder`, `RedisBackendBuilder`, `SessionConfigBuilder`
//! and `RedisConfig`), for an application that keeps several providers or none global, and
//! for tests that must not share global state. The crate keeps no global state of its own.
//!
//! Why the global provider by default: it is how OpenTelemetry asks libraries to
//! instrument (the application alone chooses and installs the SDK), and it needs no new
//! parameter in any constructor.
//!
//! ## What it costs
//!
//! **Nothing records, nothing is paid.** When a layer is built it learns whether its meter
//! records: the API's no-op meter (no provider installed) drops the callbacks of observable
//! instruments at once, an SDK keeps them. A layer whose meter does not record keeps no
//! instruments at all: no clock reading, no instrument call, no allocation per request (the
//! correlation layer still reads the clock for its access event). The same holds for an
//! instrument a view of the SDK drops: the layer whose counters are all dropped stops
//! timing too, because a layer learns whether anything records from its observable
//! instruments only (the API tells nothing of a histogram). So a view that drops
//! `http.server.active_requests` also silences `http.server.request.duration` (the
//! correlation layer's one observable instrument), one that drops
//! `rampart.redis.breaker.state` silences the Redis connection's metrics, and
//! the rate limit and session layers go quiet only when all their counters are dropped.
//! To keep a duration, keep its layer's counters.
//!
//! **With a provider**, counts are kept in the layer's own atomics and reported by
//! observable (asynchronous) instruments when the provider collects: a decision, an active
//! request or a conflict makes no SDK call. The durations are histograms, one SDK call per
//! measurement: per request, `http.server.request.duration`, the rate limit decision's
//! duration and one per session store call. Exported, an observable counter is the same
//! monotonic sum as a synchronous one (a Prometheus counter, an OTLP `Sum`); a series
//! appears once its count is above zero.
//!
//! ## The metrics
//!
//! Names follow the OpenTelemetry semantic conventions where one exists (HTTP server), else
//! they live under `rampart.`. Durations are in seconds. **No attribute ever carries a client
//! key** (IP address, session, user, API key): the attributes are few, fixed values, so a
//! metric's series stay bounded (and private) whatever the traffic.
//!
//! | name | instrument | unit | attributes | recorded by |
//! |---|---|---|---|---|
//! | `http.server.request.duration` | histogram | `s` | `http.request.method`, `http.response.status_code`, `error.type` (5xx or no response), `http.route` (axum's matched route, when known) | correlation layer |
//! | `http.server.active_requests` | up-down counter (observable) | `{request}` | `http.request.method` | correlation layer |
//! | `rampart.rate_limit.decisions` | counter (observable) | `{decision}` | `rampart.rate_limit.policy` (the quota's name; absent when Redis failed and no quota decided), `rampart.rate_limit.result` | rate limit |
//! | `rampart.rate_limit.near_limit` | counter (observable) | `{decision}` | `rampart.rate_limit.policy` | rate limit |
//! | `rampart.rate_limit.decision.duration` | histogram | `s` | `rampart.rate_limit.backend` (`memory`, `redis`) | rate limit |
//! | `rampart.rate_limit.deny_cache.hits` | counter (observable) | `{decision}` | none | rate limit (Redis) |
//! | `rampart.rate_limit.script.calls` | counter (observable) | `{call}` | none | rate limit (Redis) |
//! | `rampart.rate_limit.script.decisions` | histogram | `{decision}` | none | rate limit (Redis) |
//! | `rampart.session.store.duration` | histogram | `s` | `rampart.session.operation`, `rampart.session.outcome` | sessions |
//! | `rampart.session.conflicts` | counter (observable) | `{conflict}` | `rampart.session.resolution` | sessions |
//! | `rampart.session.saves_skipped` | counter (observable) | `{save}` | none | sessions |
//! | `rampart.session.unavailable` | counter (observable) | `{response}` | none | sessions |
//! | `rampart.redis.command.duration` | histogram | `s` | `server.address`, `error.type` (failures) | Redis connection |
//! | `rampart.redis.errors` | counter | `{error}` | `server.address`, `error.type` | Redis connection |
//! | `rampart.redis.reconnects` | counter | `{connection}` | `server.address` | Redis connection |
//! | `rampart.redis.breaker.state` | gauge (observable) | `1` | `server.address` | Redis connection |
//! | `rampart.redis.breaker.transitions` | counter | `{transition}` | `server.address`, `rampart.redis.breaker.transition` | Redis connection |
//!
//! The HTTP metrics time a request from the correlation layer's `call` to its response head
//! (a streamed body's transfer is not included); a request is active until then, or until
//! its response future is dropped (the client went away: no duration is recorded). Put the
//! correlation layer outermost so that the other layers' refusals are measured too.
//! `http.route` comes from axum's `MatchedPath`, present when the layer is added with
//! `Router::layer` or `route_layer` (after routing); it is the one attribute value copied
//! per request (the template, a short string). The semantic conventions' `url.scheme` is
//! not set (behind a TLS-terminating proxy the layer cannot know the scheme the client
//! used), nor the optional `network.protocol.version` (fewer series).
//!
//! `rampart.rate_limit.result` is one of `allowed`, `rejected`, `shadow_rejected` (shadow
//! mode: would have been refused, was admitted), `degraded_allowed` and `degraded_rejected`
//! (Redis could not be reached and the failure mode decided). A request is counted once under
//! each quota it was checked against when it is admitted, and once under each quota that
//! refused it when it is refused (a quota that would have admitted a request another quota
//! refused does not count it). Requests no quota applies to are not counted.
//!
//! `rampart.rate_limit.near_limit` counts admissions that left a quota at least the
//! configured share used (default [`DEFAULT_NEAR_LIMIT`], set with
//! `RateLimitBuilder::near_limit`): a client about to be refused.
//!
//! `rampart.rate_limit.decision.duration` is the time to a verdict from the backend: the
//! memory backend's (microseconds), or a Redis round trip (including the time a request waits
//! to share a script call with others). `rampart.rate_limit.script.decisions` is how many
//! requests' decisions one script call carried; a script call is one decision sent alone or
//! one batch (on a Redis Cluster, a batch split by hash slot still counts once).
//!
//! `rampart.session.store.duration` times each store call the session layer makes, with its
//! timeout (`ok` or `error`, a timeout being an error). `rampart.session.conflicts` counts
//! saves refused because a concurrent request saved first: `merged` (this request's changes
//! were applied on top, and saved again) or `dropped` (the newer record could not be opened).
//! `rampart.session.saves_skipped` counts requests whose session changes were not saved
//! because the response was a 5xx; `rampart.session.unavailable` the `503`s the layer
//! answered because its store failed.
//!
//! The Redis connection times every call (command, pipeline, script), from the circuit
//! breaker's admission to the reply, including a reconnect and the command timeout; a
//! failure carries its kind as `error.type`, and a call refused by the open breaker is an
//! `unavailable` error. `rampart.redis.breaker.state` is read when the provider collects: 0
//! closed, 1 open, 2 half-open (the cool-down has passed or a probe is in flight).
//! `server.address` is the configured address list (for example `127.0.0.1:6379`).

// Helpers of the layers: some are unused in a build without every layer.
#![cfg_attr(
    not(all(
        feature = "correlation-id",
        feature = "rate-limit",
        feature = "session",
        feature = "redis"
    )),
    allow(dead_code)
)]

use opentelemetry::metrics::Meter;
use opentelemetry::{InstrumentationScope, KeyValue};

/// The instrumentation scope of the crate's meter (its version is the crate's).
pub const SCOPE: &str = "tower-rampart";

/// `http.server.request.duration` (semantic conventions).
pub const HTTP_SERVER_REQUEST_DURATION: &str = "http.server.request.duration";
/// `http.server.active_requests` (semantic conventions).
pub const HTTP_SERVER_ACTIVE_REQUESTS: &str = "http.server.active_requests";

/// Rate limit decisions, by quota and result.
pub const RATE_LIMIT_DECISIONS: &str = "rampart.rate_limit.decisions";
/// Admissions that left a quota nearly used up.
pub const RATE_LIMIT_NEAR_LIMIT: &str = "rampart.rate_limit.near_limit";
/// Time to a verdict from the backend.
pub const RATE_LIMIT_DECISION_DURATION: &str = "rampart.rate_limit.decision.duration";
/// Refusals answered by the local deny cache (no Redis round trip).
pub const RATE_LIMIT_DENY_CACHE_HITS: &str = "rampart.rate_limit.deny_cache.hits";
/// Rate limit script calls sent to Redis.
pub const RATE_LIMIT_SCRIPT_CALLS: &str = "rampart.rate_limit.script.calls";
/// Decisions carried by one script call.
pub const RATE_LIMIT_SCRIPT_DECISIONS: &str = "rampart.rate_limit.script.decisions";

/// Duration of session store calls, by operation and outcome.
pub const SESSION_STORE_DURATION: &str = "rampart.session.store.duration";
/// Compare-and-set conflicts of session saves, by resolution.
pub const SESSION_CONFLICTS: &str = "rampart.session.conflicts";
/// Session changes not saved because the response was a 5xx.
pub const SESSION_SAVES_SKIPPED: &str = "rampart.session.saves_skipped";
/// `503` responses served by the session layer because its store failed.
pub const SESSION_UNAVAILABLE: &str = "rampart.session.unavailable";

/// Duration of Redis calls (command, pipeline, script), with their timeout.
pub const REDIS_COMMAND_DURATION: &str = "rampart.redis.command.duration";
/// Failed Redis calls, by kind.
pub const REDIS_ERRORS: &str = "rampart.redis.errors";
/// Redis connections re-established after a loss.
pub const REDIS_RECONNECTS: &str = "rampart.redis.reconnects";
/// The circuit breaker's state: 0 closed, 1 open, 2 half-open.
pub const REDIS_BREAKER_STATE: &str = "rampart.redis.breaker.state";
/// The circuit breaker's state changes.
pub const REDIS_BREAKER_TRANSITIONS: &str = "rampart.redis.breaker.transitions";

/// Attribute keys.
pub mod attribute {
    /// The HTTP method (semantic conventions; `_OTHER` for a method outside the standard ones).
    pub const HTTP_REQUEST_METHOD: &str = "http.request.method";
    /// The response status code (semantic conventions).
    pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
    /// The matched route template (semantic conventions), never the path itself.
    pub const HTTP_ROUTE: &str = "http.route";
    /// The error (semantic conventions): on HTTP metrics the status code for a 5xx, `_OTHER`
    /// when there was no response; on Redis metrics the kind (`timeout`, `unavailable`,
    /// `auth`, `protocol`, `command`, `config`).
    pub const ERROR_TYPE: &str = "error.type";
    /// The Redis server (the configured address list; semantic conventions).
    pub const SERVER_ADDRESS: &str = "server.address";
    /// A circuit breaker's state change (`opened`, `reopened` after a failed probe, `closed`).
    pub const REDIS_BREAKER_TRANSITION: &str = "rampart.redis.breaker.transition";
    /// A rate limit quota's name.
    pub const RATE_LIMIT_POLICY: &str = "rampart.rate_limit.policy";
    /// A rate limit decision's result.
    pub const RATE_LIMIT_RESULT: &str = "rampart.rate_limit.result";
    /// The rate limit backend that decided (`memory`, `redis`).
    pub const RATE_LIMIT_BACKEND: &str = "rampart.rate_limit.backend";
    /// A session store call (`load`, `create`, `save`, `delete`, `list_user_sessions`,
    /// `delete_user_sessions`, `delete_user_session`).
    pub const SESSION_OPERATION: &str = "rampart.session.operation";
    /// How a store call ended (`ok`, `error`; a timeout is an error).
    pub const SESSION_OUTCOME: &str = "rampart.session.outcome";
    /// How a compare-and-set conflict ended (`merged`, `dropped`).
    pub const SESSION_RESOLUTION: &str = "rampart.session.resolution";
}

/// The default share of a quota used at or above which an admission counts as "near limit".
pub const DEFAULT_NEAR_LIMIT: f64 = 0.8;

/// The bucket boundaries of `http.server.request.duration` (the semantic conventions' advice).
pub(crate) const HTTP_DURATION_BOUNDARIES: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The bucket boundaries of the crate's own latencies, from a memory decision (microseconds)
/// to a slow store call.
pub(crate) const FAST_DURATION_BOUNDARIES: [f64; 16] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0,
];

/// The crate's meter from the global provider (as installed now).
pub(crate) fn global_meter() -> Meter {
    opentelemetry::global::meter_with_scope(
        InstrumentationScope::builder(SCOPE)
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
    )
}

/// Whether the provider behind a meter records: `shared` was just captured by the callbacks
/// of the observable instruments built from that meter.
///
/// The API's no-op meter (no provider installed) drops an observable instrument's callbacks
/// as soon as it is built, while an SDK keeps them for as long as it may collect; a view that
/// drops the instrument also drops them. So a callback still holding its `Arc` is the one
/// sign, readable through the API alone, that recording goes somewhere. The layers read it
/// once, when they are built, and skip their clock readings and instrument calls when
/// nothing records.
pub(crate) fn records<T: ?Sized>(shared: &std::sync::Arc<T>) -> bool {
    std::sync::Arc::strong_count(shared) > 1
}

/// The values of `http.request.method`: the standard methods by name, anything else
/// `_OTHER` (semantic conventions: a client cannot grow the metric's series).
pub(crate) const METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE", "_OTHER",
];

/// The index of a method's `http.request.method` value in [`METHODS`].
pub(crate) fn method_index(method: &http::Method) -> usize {
    use http::Method;
    match *method {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::DELETE => 3,
        Method::HEAD => 4,
        Method::OPTIONS => 5,
        Method::PATCH => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => 9,
    }
}

/// Adds one to a count a layer keeps for an observable counter (relaxed: the counts order
/// nothing).
pub(crate) fn bump(count: &std::sync::atomic::AtomicU64) {
    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Reports `count` with `attributes` from an observable counter's callback, once it has
/// counted anything (a synchronous counter has no series before its first increment
/// either).
pub(crate) fn observe(
    observer: &dyn opentelemetry::metrics::AsyncInstrument<u64>,
    count: &std::sync::atomic::AtomicU64,
    attributes: &[KeyValue],
) {
    let n = count.load(std::sync::atomic::Ordering::Relaxed);
    if n > 0 {
        observer.observe(n, attributes);
    }
}

/// A `KeyValue` of static strings (no allocation).
pub(crate) fn kv(key: &'static str, value: &'static str) -> KeyValue {
    KeyValue::new(key, value)
}

/// `error.type` for a 5xx status: the code as text (static, so no allocation).
pub(crate) fn server_error_type(status: u16) -> &'static str {
    const CODES: [&str; 12] = [
        "500", "501", "502", "503", "504", "505", "506", "507", "508", "509", "510", "511",
    ];
    CODES
        .get(usize::from(status.wrapping_sub(500)))
        .copied()
        .unwrap_or("_OTHER")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds an observable counter on `meter` holding a clone of a fresh `Arc` in its
    /// callback, and says what [`records`] makes of it.
    fn probe(meter: &Meter) -> bool {
        let shared = std::sync::Arc::new(());
        let held = std::sync::Arc::clone(&shared);
        meter
            .u64_observable_counter("probe")
            .with_callback(move |_| {
                let _ = &held;
            })
            .build();
        records(&shared)
    }

    #[test]
    fn records_tells_a_recording_provider_from_the_noop_one() {
        use opentelemetry::metrics::MeterProvider;
        use opentelemetry_sdk::metrics::{
            Aggregation, InMemoryMetricExporter, Instrument, PeriodicReader, SdkMeterProvider,
            Stream,
        };

        let noop = opentelemetry::metrics::NoopMeterProvider::new();
        assert!(
            !probe(&noop.meter("t")),
            "the API's no-op meter records nothing"
        );

        let sdk = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(InMemoryMetricExporter::default()).build())
            .build();
        assert!(probe(&sdk.meter("t")), "an SDK with a reader records");

        let unread = SdkMeterProvider::builder().build();
        assert!(
            !probe(&unread.meter("t")),
            "an SDK without a reader records nothing"
        );

        let dropped = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(InMemoryMetricExporter::default()).build())
            .with_view(|i: &Instrument| {
                (i.name() == "probe")
                    .then(|| {
                        Stream::builder()
                            .with_aggregation(Aggregation::Drop)
                            .build()
                    })
                    .and_then(Result::ok)
            })
            .build();
        assert!(
            !probe(&dropped.meter("t")),
            "an instrument a view drops records nothing"
        );
        for p in [sdk, unread, dropped] {
            let _ = p.shutdown();
        }
    }

    #[test]
    fn error_types_are_the_codes() {
        assert_eq!(server_error_type(500), "500");
        assert_eq!(server_error_type(503), "503");
        assert_eq!(server_error_type(511), "511");
        assert_eq!(server_error_type(599), "_OTHER");
        assert_eq!(METHODS[method_index(&http::Method::GET)], "GET");
        assert_eq!(METHODS[method_index(&http::Method::TRACE)], "TRACE");
        let odd = http::Method::from_bytes(b"PURGE").unwrap();
        assert_eq!(METHODS[method_index(&odd)], "_OTHER");
    }
}
