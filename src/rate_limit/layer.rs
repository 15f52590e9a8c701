//! The tower layer, its builder, service and response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::clock::MonotonicClock;
use super::decision::QuotaDecision;
use super::key::{KeyExtractor, LimitKey};
use super::memory::{Item, MemoryBackend};
use super::quota::Quota;
use super::response::{
    JsonRejection, RATELIMIT, RATELIMIT_POLICY, RateLimitBody, RejectReason, Rejection,
    RejectionBody, is_grpc, policy_value, push_status, rejection_response,
};
use crate::clock::{Clock, Throttle};

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
/// ([`RateLimitMetrics::degraded`]) and logged once per burst.
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

/// The cost of a request, in quota units (see [`RateLimitBuilder::cost_with`]).
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
    name: String,
    quota: Quota,
    key: Arc<dyn KeyExtractor>,
    missing: MissingKey,
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
    msg: String,
}

impl fmt::Display for RateLimitConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rate limit configuration: {}", self.msg)
    }
}

impl std::error::Error for RateLimitConfigError {}

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

#[derive(Debug, Default)]
struct Counters {
    allowed: AtomicU64,
    denied: AtomicU64,
    shadow_denied: AtomicU64,
    degraded: AtomicU64,
    deny_cache_hits: AtomicU64,
    missing_key: AtomicU64,
    backend_calls: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Builder of a [`RateLimitLayer`]; see [`RateLimitLayer::builder`].
///
/// ```
/// use tower_rampart::net::TrustedProxies;
/// use tower_rampart::rate_limit::{Key, Quota, RateLimitLayer};
///
/// let layer = RateLimitLayer::builder()
///     .quota("ip", Quota::parse("10/minute").unwrap(), Key::client_ip(TrustedProxies::none()))
///     .quota("burst", Quota::rate(5, std::time::Duration::from_secs(1)).burst(20), Key::global())
///     .headers_on_success(false)
///     .shadow(true) // observe first, enforce later
///     .build()
///     .expect("a consistent configuration");
/// # let _ = layer;
/// ```
pub struct RateLimitBuilder {
    limits: Vec<Limit>,
    backend: Option<Backend>,
    clock: Arc<dyn Clock>,
    cost: Option<Arc<dyn CostFn>>,
    fixed_cost: u64,
    shadow: bool,
    headers_on_success: bool,
    failure_mode: FailureMode,
    local_fallback: Option<MemoryBackend>,
    rejection: Arc<dyn RejectionBody>,
}

impl fmt::Debug for RateLimitBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitBuilder")
            .field("limits", &self.limits)
            .field("backend", &self.backend)
            .field("shadow", &self.shadow)
            .field("failure_mode", &self.failure_mode)
            .finish_non_exhaustive()
    }
}

impl RateLimitBuilder {
    /// Adds a quota `name` counted per `key`; a request without a key is refused (see
    /// [`Limit`] to choose [`MissingKey::Skip`]).
    pub fn quota(self, name: impl Into<String>, quota: Quota, key: impl KeyExtractor) -> Self {
        self.limit(Limit::new(name, quota, key))
    }

    /// Adds a fully configured quota.
    pub fn limit(mut self, limit: Limit) -> Self {
        self.limits.push(limit);
        self
    }

    /// Where the state lives (default: a new [`MemoryBackend`]).
    pub fn backend(mut self, backend: impl Into<Backend>) -> Self {
        self.backend = Some(backend.into());
        self
    }

    /// The clock (default: [`MonotonicClock`]). Tests pass a
    /// [`ManualClock`](crate::clock::ManualClock).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Every request costs `units` (default 1). Rejected at build if 0 or above a quota's
    /// burst (such requests could never be admitted).
    pub fn cost(mut self, units: u64) -> Self {
        self.fixed_cost = units;
        self
    }

    /// Computes each request's cost from its head. A request whose cost exceeds a quota's
    /// burst is refused (429 without `Retry-After`: it can never succeed); cost 0 is checked
    /// without being counted.
    pub fn cost_with(mut self, f: impl CostFn) -> Self {
        self.cost = Some(Arc::new(f));
        self
    }

    /// Shadow mode: decide, count and log as usual, but never refuse and add no header. To
    /// try limits on production traffic before enforcing them.
    pub fn shadow(mut self, on: bool) -> Self {
        self.shadow = on;
        self
    }

    /// Adds `RateLimit-Policy` and `RateLimit` to admitted responses too (default true;
    /// refusals always carry them).
    pub fn headers_on_success(mut self, on: bool) -> Self {
        self.headers_on_success = on;
        self
    }

    /// What to do when Redis cannot be reached (default [`FailureMode::Local`]). Ignored with
    /// the memory backend.
    pub fn failure_mode(mut self, mode: FailureMode) -> Self {
        self.failure_mode = mode;
        self
    }

    /// The in-process backend [`FailureMode::Local`] decides with (default: a new
    /// [`MemoryBackend`]).
    pub fn local_fallback(mut self, backend: MemoryBackend) -> Self {
        self.local_fallback = Some(backend);
        self
    }

    /// The body of refusals (default [`JsonRejection`]).
    pub fn rejection_body(mut self, body: impl RejectionBody) -> Self {
        self.rejection = Arc::new(body);
        self
    }

    /// Checks the configuration and builds the layer.
    pub fn build(self) -> Result<RateLimitLayer, RateLimitConfigError> {
        MonotonicClock::init();
        let err = |msg: String| Err(RateLimitConfigError { msg });
        if self.limits.is_empty() {
            return err("no quota: add one with .quota(name, quota, key)".into());
        }
        if self.limits.len() > 64 {
            return err("more than 64 quotas in one layer".into());
        }
        if self.fixed_cost == 0 {
            return err("the cost of a request must be at least 1".into());
        }
        for (i, l) in self.limits.iter().enumerate() {
            let valid_name = (1..=64).contains(&l.name.len())
                && l.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !valid_name {
                return err(format!(
                    "quota name {:?}: use 1 to 64 characters among A-Z a-z 0-9 _ . -",
                    l.name
                ));
            }
            if self.limits[..i].iter().any(|o| o.name == l.name) {
                return err(format!("quota name {:?} is used twice", l.name));
            }
            if let Err(e) = l.quota.validate() {
                return err(format!("quota {:?}: {e}", l.name));
            }
            if let Err(e) = l.key.validate() {
                return err(format!("quota {:?}: key: {e}", l.name));
            }
            if self.fixed_cost > l.quota.burst_size() {
                return err(format!(
                    "quota {:?} ({}): a cost of {} per request exceeds its burst of {}, \
                     so no request could ever be admitted",
                    l.name,
                    l.quota,
                    self.fixed_cost,
                    l.quota.burst_size()
                ));
            }
        }
        let memory = match (&self.backend, self.local_fallback) {
            (Some(Backend::Memory(m)), _) => m.clone(),
            (_, Some(m)) => m,
            _ => MemoryBackend::new(),
        };
        let engine = match self.backend {
            None | Some(Backend::Memory(_)) => Engine::Memory,
            #[cfg(feature = "redis")]
            Some(Backend::Redis(r)) => Engine::Redis(r),
        };
        let limits: Box<[Slot]> = self
            .limits
            .into_iter()
            .map(|l| Slot {
                mem_id: memory.intern(&l.name),
                #[cfg(feature = "redis")]
                redis_id: match &engine {
                    Engine::Redis(r) => r.intern(&l.name),
                    Engine::Memory => 0,
                },
                name: l.name.into(),
                quota: l.quota,
                key: l.key,
                missing: l.missing,
            })
            .collect();
        let policy = policy_value(limits.iter().map(|l| (&*l.name, &l.quota)));
        let policy = HeaderValue::from_str(&policy).map_err(|_| RateLimitConfigError {
            msg: "cannot build the RateLimit-Policy header".into(),
        })?;
        Ok(RateLimitLayer {
            shared: Arc::new(Shared {
                limits,
                engine,
                memory,
                clock: self.clock,
                cost: self.cost,
                fixed_cost: self.fixed_cost,
                shadow: self.shadow,
                headers_on_success: self.headers_on_success,
                failure_mode: self.failure_mode,
                rejection: self.rejection,
                policy,
                counters: Counters::default(),
                degraded_log: Throttle::new(Duration::from_secs(10)),
                missing_log: Throttle::new(Duration::from_secs(10)),
                shadow_log: Throttle::new(Duration::from_secs(1)),
            }),
        })
    }
}

/// Rate limiting layer: checks every request's quotas in one atomic step and answers 429
/// itself when one is used up. See the [module docs](super).
///
/// ```
/// use tower::ServiceBuilder;
/// use tower_rampart::rate_limit::{Key, Quota, RateLimitLayer};
///
/// let limits = RateLimitLayer::builder()
///     .quota("ip", Quota::per_minute(10), Key::peer_ip())
///     .build()
///     .unwrap();
/// let service = ServiceBuilder::new()
///     .layer(limits)
///     .service_fn(|_req: http::Request<String>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
///     });
/// # let _ = service;
/// ```
#[derive(Clone)]
pub struct RateLimitLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("shared", &self.shared)
            .finish()
    }
}

impl RateLimitLayer {
    /// Starts a configuration.
    pub fn builder() -> RateLimitBuilder {
        RateLimitBuilder {
            limits: Vec::new(),
            backend: None,
            clock: Arc::new(MonotonicClock),
            cost: None,
            fixed_cost: 1,
            shadow: false,
            headers_on_success: true,
            failure_mode: FailureMode::Local,
            local_fallback: None,
            rejection: Arc::new(JsonRejection),
        }
    }

    /// The decision counters so far.
    pub fn metrics(&self) -> RateLimitMetrics {
        self.shared.metrics()
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            shared: self.shared.clone(),
        }
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
    allowed: bool,
    shadow: bool,
    degraded: bool,
    quotas: Vec<QuotaStatus>,
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
    name: Arc<str>,
    quota: Quota,
    decision: QuotaDecision,
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

/// Middleware of [`RateLimitLayer`].
#[derive(Clone)]
pub struct RateLimitService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for RateLimitService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitService")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S> RateLimitService<S> {
    /// The decision counters so far.
    pub fn metrics(&self) -> RateLimitMetrics {
        self.shared.metrics()
    }
}

// ---------------------------------------------------------------------------------------------
// Shared state and the decision pipeline.

struct Slot {
    name: Arc<str>,
    quota: Quota,
    key: Arc<dyn KeyExtractor>,
    missing: MissingKey,
    mem_id: u32,
    #[cfg(feature = "redis")]
    redis_id: u32,
}

enum Engine {
    Memory,
    #[cfg(feature = "redis")]
    Redis(RedisBackend),
}

pub(crate) struct Shared {
    limits: Box<[Slot]>,
    engine: Engine,
    /// The memory backend (the engine itself, or the local fallback of Redis).
    memory: MemoryBackend,
    clock: Arc<dyn Clock>,
    cost: Option<Arc<dyn CostFn>>,
    fixed_cost: u64,
    shadow: bool,
    headers_on_success: bool,
    failure_mode: FailureMode,
    rejection: Arc<dyn RejectionBody>,
    policy: HeaderValue,
    counters: Counters,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    degraded_log: Throttle,
    missing_log: Throttle,
    shadow_log: Throttle,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.limits.iter().map(|l| (&*l.name, l.quota)).collect();
        let mut d = f.debug_struct("RateLimit");
        d.field("quotas", &names);
        match &self.engine {
            Engine::Memory => d.field("backend", &self.memory),
            #[cfg(feature = "redis")]
            Engine::Redis(r) => d.field("backend", r),
        };
        d.field("shadow", &self.shadow)
            .field("failure_mode", &self.failure_mode)
            .finish_non_exhaustive()
    }
}

/// The keys of one request.
pub(crate) struct Checks {
    idx: Vec<usize>,
    keys: Vec<LimitKey>,
    cost: u64,
}

/// Why a verdict was reached without (or despite) the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Backend,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    DenyCache,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Degraded,
    Refused(RejectReason, Option<usize>),
    Pass,
}

pub(crate) struct Verdict {
    allowed: bool,
    /// (limit index, decision) for each checked quota.
    statuses: Vec<(usize, QuotaDecision)>,
    source: Source,
    /// The request's cost.
    cost: u64,
}

enum Plan {
    Done(Verdict),
    Check(Checks),
}

impl Shared {
    fn metrics(&self) -> RateLimitMetrics {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RateLimitMetrics {
            allowed: l(&c.allowed),
            denied: l(&c.denied),
            shadow_denied: l(&c.shadow_denied),
            degraded: l(&c.degraded),
            deny_cache_hits: l(&c.deny_cache_hits),
            missing_key: l(&c.missing_key),
            backend_calls: l(&c.backend_calls),
        }
    }

    /// Extracts keys and cost; settles requests that need no backend.
    fn plan(&self, head: &Request<()>) -> Plan {
        let cost = match &self.cost {
            Some(f) => f.cost(head),
            None => self.fixed_cost,
        };
        let mut checks = Checks {
            idx: Vec::with_capacity(self.limits.len()),
            keys: Vec::with_capacity(self.limits.len()),
            cost,
        };
        for (i, l) in self.limits.iter().enumerate() {
            match l.key.extract(head) {
                Some(k) => {
                    if cost > l.quota.burst_size() {
                        return Plan::Done(Verdict {
                            allowed: false,
                            statuses: Vec::new(),
                            source: Source::Refused(RejectReason::CostTooHigh, Some(i)),
                            cost,
                        });
                    }
                    checks.idx.push(i);
                    checks.keys.push(k);
                }
                None => {
                    bump(&self.counters.missing_key);
                    if l.missing == MissingKey::Skip {
                        // Expected (e.g. no session yet): the quota simply does not apply.
                        tracing::trace!(quota = %l.name, "rate limit: no key, quota skipped");
                        continue;
                    }
                    if self.missing_log.allow(self.clock.now_micros()) {
                        tracing::warn!(
                            quota = %l.name,
                            "rate limit: request without a key for this quota refused"
                        );
                    }
                    return Plan::Done(Verdict {
                        allowed: false,
                        statuses: Vec::new(),
                        source: Source::Refused(RejectReason::MissingKey, Some(i)),
                        cost,
                    });
                }
            }
        }
        if checks.idx.is_empty() {
            return Plan::Done(Verdict {
                allowed: true,
                statuses: Vec::new(),
                source: Source::Pass,
                cost,
            });
        }
        Plan::Check(checks)
    }

    fn decide_memory(&self, checks: &Checks, source: Source) -> Verdict {
        let now = self.clock.now_micros();
        let items: Vec<Item<'_>> = checks
            .idx
            .iter()
            .zip(&checks.keys)
            .map(|(&i, key)| Item {
                id: self.limits[i].mem_id,
                quota: &self.limits[i].quota,
                key,
            })
            .collect();
        let mut out = Vec::with_capacity(items.len());
        let allowed = self.memory.decide_all(&items, checks.cost, now, &mut out);
        Verdict {
            allowed,
            statuses: checks.idx.iter().copied().zip(out).collect(),
            source,
            cost: checks.cost,
        }
    }

    /// A synchronous verdict if there is one (memory backend, deny cache hit).
    fn decide_now(&self, checks: &Checks) -> Option<Verdict> {
        match &self.engine {
            Engine::Memory => Some(self.decide_memory(checks, Source::Backend)),
            #[cfg(feature = "redis")]
            Engine::Redis(redis) => {
                let now = self.clock.now_micros();
                let mut statuses = Vec::new();
                for (&i, key) in checks.idx.iter().zip(&checks.keys) {
                    if let Some(d) = redis.cached_denial(self.limits[i].redis_id, key, now) {
                        statuses.push((i, d));
                    }
                }
                if statuses.is_empty() {
                    return None;
                }
                bump(&self.counters.deny_cache_hits);
                Some(Verdict {
                    allowed: false,
                    statuses,
                    source: Source::DenyCache,
                    cost: checks.cost,
                })
            }
        }
    }

    /// The failure mode's verdict.
    #[cfg(feature = "redis")]
    fn degraded(&self, checks: &Checks, error: &crate::redis::RedisError) -> Verdict {
        bump(&self.counters.degraded);
        if self.degraded_log.allow(self.clock.now_micros()) {
            tracing::warn!(
                error = %error,
                failure_mode = ?self.failure_mode,
                "rate limit: Redis unreachable, deciding with the failure mode"
            );
        }
        match self.failure_mode {
            FailureMode::Local => self.decide_memory(checks, Source::Degraded),
            FailureMode::Open => Verdict {
                allowed: true,
                statuses: Vec::new(),
                source: Source::Degraded,
                cost: checks.cost,
            },
            FailureMode::Closed => Verdict {
                allowed: false,
                statuses: Vec::new(),
                source: Source::Refused(RejectReason::Unavailable, None),
                cost: checks.cost,
            },
        }
    }

    /// The Redis round trip, as an owned future.
    #[cfg(feature = "redis")]
    fn decide_later(self: &Arc<Self>, checks: Checks) -> DecisionFuture {
        let shared = self.clone();
        Box::pin(async move {
            let Engine::Redis(redis) = &shared.engine else {
                return shared.decide_memory(&checks, Source::Backend);
            };
            let items: Vec<super::redis::RedisItem<'_>> = checks
                .idx
                .iter()
                .zip(&checks.keys)
                .map(|(&i, key)| super::redis::RedisItem {
                    id: shared.limits[i].redis_id,
                    name: &shared.limits[i].name,
                    quota: &shared.limits[i].quota,
                    key,
                })
                .collect();
            bump(&shared.counters.backend_calls);
            let sent_at = shared.clock.now_micros();
            match redis.decide(&items, checks.cost, sent_at).await {
                Ok((allowed, decisions)) => Verdict {
                    allowed,
                    statuses: checks.idx.iter().copied().zip(decisions).collect(),
                    source: Source::Backend,
                    cost: checks.cost,
                },
                Err(e) => shared.degraded(&checks, &e),
            }
        })
    }

    #[cfg(not(feature = "redis"))]
    fn decide_later(self: &Arc<Self>, checks: Checks) -> DecisionFuture {
        let verdict = self.decide_memory(&checks, Source::Backend);
        Box::pin(std::future::ready(verdict))
    }

    /// Turns a verdict into either "call the inner service" (with the extension set and the
    /// headers to add) or a rejection response.
    fn settle<B>(&self, verdict: Verdict, req: &mut Request<B>, grpc: bool) -> Settled {
        let enforce = !self.shadow;
        if verdict.allowed {
            bump(&self.counters.allowed);
        } else if enforce {
            bump(&self.counters.denied);
        } else {
            bump(&self.counters.shadow_denied);
            if self.shadow_log.allow(self.clock.now_micros()) {
                tracing::info!(
                    reason = ?verdict.source,
                    "rate limit (shadow mode): a request would have been refused"
                );
            }
        }
        if !verdict.allowed && enforce {
            return Settled::Reject(self.rejection(&verdict, grpc));
        }
        if !verdict.allowed {
            // Shadow: the handler runs; the count above is the only trace.
            bump(&self.counters.allowed);
        }
        let headers = (enforce && self.headers_on_success && verdict.source != Source::Pass)
            .then(|| self.rate_headers(&verdict, false));
        req.extensions_mut().insert(self.public_decision(&verdict));
        Settled::Call(headers)
    }

    fn public_decision(&self, verdict: &Verdict) -> RateLimitDecision {
        RateLimitDecision {
            allowed: verdict.allowed,
            shadow: self.shadow,
            degraded: verdict.source == Source::Degraded,
            quotas: verdict
                .statuses
                .iter()
                .map(|&(i, decision)| QuotaStatus {
                    name: self.limits[i].name.clone(),
                    quota: self.limits[i].quota,
                    decision,
                })
                .collect(),
        }
    }

    /// `RateLimit-Policy` (every quota) and `RateLimit` (the checked quotas; on a refusal only
    /// the refusing ones).
    fn rate_headers(
        &self,
        verdict: &Verdict,
        refused_only: bool,
    ) -> (HeaderValue, Option<HeaderValue>) {
        let mut status = String::new();
        for &(i, d) in &verdict.statuses {
            if refused_only && d.is_allowed() {
                continue;
            }
            push_status(
                &mut status,
                &self.limits[i].name,
                d.remaining(),
                d.reset_us(),
            );
        }
        let status = (!status.is_empty())
            .then(|| HeaderValue::from_str(&status).ok())
            .flatten();
        (self.policy.clone(), status)
    }

    fn rejection(&self, verdict: &Verdict, grpc: bool) -> http::Response<Vec<u8>> {
        let mut headers = HeaderMap::new();
        let (reason, quota, retry) = match verdict.source {
            Source::Refused(reason, idx) => (reason, idx, None),
            _ => {
                // The refusing quota with the longest wait names the refusal.
                let worst = verdict
                    .statuses
                    .iter()
                    .filter(|(_, d)| !d.is_allowed())
                    .max_by_key(|(_, d)| d.retry_us);
                let reason = if worst.is_some_and(|(_, d)| d.is_impossible()) {
                    RejectReason::CostTooHigh
                } else {
                    RejectReason::Exceeded
                };
                let retry = worst.and_then(|(_, d)| d.retry_after());
                (reason, worst.map(|w| w.0), retry)
            }
        };
        if reason != RejectReason::Unavailable {
            let (policy, status) = self.rate_headers(verdict, true);
            headers.insert(&RATELIMIT_POLICY, policy);
            if let Some(s) = status {
                headers.insert(&RATELIMIT, s);
            }
        }
        let retry = match reason {
            RejectReason::Unavailable => Some(Duration::from_secs(1)),
            _ => retry,
        };
        if tracing::enabled!(tracing::Level::DEBUG)
            && let Some(i) = quota
        {
            tracing::debug!(quota = %self.limits[i].name, ?reason, "rate limit: request refused");
        }
        let rejection = Rejection {
            reason,
            quota: quota.map(|i| (&*self.limits[i].name, &self.limits[i].quota)),
            cost: verdict.cost,
            retry_after: retry,
        };
        rejection_response(&rejection, grpc, &*self.rejection, headers)
    }
}

enum Settled {
    Call(Option<(HeaderValue, Option<HeaderValue>)>),
    Reject(http::Response<Vec<u8>>),
}

type DecisionFuture = Pin<Box<dyn Future<Output = Verdict> + Send + 'static>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimitService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
{
    type Response = Response<RateLimitBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is the inner service's: per-client limits are decided in `call` and
        // answered with a 429, never by withholding readiness.
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let (parts, body) = req.into_parts();
        let head = Request::from_parts(parts, ());
        let grpc = is_grpc(head.headers());
        let plan = self.shared.plan(&head);
        let (parts, ()) = head.into_parts();
        let mut req = Request::from_parts(parts, body);
        let verdict = match plan {
            Plan::Done(v) => v,
            Plan::Check(checks) => match self.shared.decide_now(&checks) {
                Some(v) => v,
                None => {
                    // The decision needs a Redis round trip before the inner call: move the
                    // service that `poll_ready` prepared into the future and leave a fresh
                    // clone behind (the clone is made ready by the next `poll_ready`).
                    let clone = self.inner.clone();
                    let ready = std::mem::replace(&mut self.inner, clone);
                    return ResponseFuture {
                        state: State::Deciding {
                            decision: self.shared.decide_later(checks),
                            inner: Some(ready),
                            req: Some(req),
                            shared: self.shared.clone(),
                            grpc,
                        },
                    };
                }
            },
        };
        match self.shared.settle(verdict, &mut req, grpc) {
            Settled::Call(headers) => ResponseFuture {
                state: State::Inner {
                    fut: self.inner.call(req),
                    headers,
                },
            },
            Settled::Reject(resp) => ResponseFuture {
                state: State::Reject {
                    response: Some(resp),
                },
            },
        }
    }
}

pin_project! {
    /// Response future of [`RateLimitService`].
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        // The inner service is running; the headers are added to its response.
        Inner {
            #[pin]
            fut: S::Future,
            headers: Option<(HeaderValue, Option<HeaderValue>)>,
        },
        // Waiting for Redis (the only boxed future: the round trip is async work).
        Deciding {
            decision: DecisionFuture,
            inner: Option<S>,
            req: Option<Request<ReqBody>>,
            shared: Arc<Shared>,
            grpc: bool,
        },
        // Refused: the response is ready.
        Reject {
            response: Option<http::Response<Vec<u8>>>,
        },
    }
}

impl<S, ReqBody> fmt::Debug for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Inner { .. } => "inner",
            State::Deciding { .. } => "deciding",
            State::Reject { .. } => "reject",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Output = Result<Response<RateLimitBody<ResBody>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::Inner { fut, headers } => {
                    let resp = ready!(fut.poll(cx))?;
                    let mut resp = resp.map(RateLimitBody::inner);
                    if let Some((policy, status)) = headers.take() {
                        let h = resp.headers_mut();
                        h.append(&RATELIMIT_POLICY, policy);
                        if let Some(s) = status {
                            h.append(&RATELIMIT, s);
                        }
                    }
                    return Poll::Ready(Ok(resp));
                }
                StateProj::Reject { response } => {
                    let resp = response.take().unwrap_or_default();
                    return Poll::Ready(Ok(resp.map(RateLimitBody::full)));
                }
                StateProj::Deciding {
                    decision,
                    inner,
                    req,
                    shared,
                    grpc,
                } => {
                    let verdict = ready!(decision.as_mut().poll(cx));
                    let (Some(mut svc), Some(mut req)) = (inner.take(), req.take()) else {
                        // Polled after completion.
                        return Poll::Pending;
                    };
                    match shared.settle(verdict, &mut req, *grpc) {
                        Settled::Call(headers) => State::Inner {
                            fut: svc.call(req),
                            headers,
                        },
                        Settled::Reject(resp) => State::Reject {
                            response: Some(resp),
                        },
                    }
                }
            };
            self.as_mut().project().state.set(next);
        }
    }
}
