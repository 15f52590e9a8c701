//! [`RateLimitBuilder`]: collects the settings and checks them when the layer is built.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use super::clock::MonotonicClock;
use super::config::{Backend, CostFn, FailureMode, Limit, RateLimitConfigError};
use super::engine::Engine;
use super::key::KeyExtractor;
use super::memory::MemoryBackend;
use super::metrics::Counters;
use super::pipeline::{Shared, Slot};
use super::quota::Quota;
use super::response::{JsonRejection, RejectionBody, policy_value};
use super::service::RateLimitLayer;
use crate::clock::{Clock, Throttle};

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
    pub(super) fn new() -> Self {
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

    /// Adds a quota `name` counted per `key`; a request without a key is refused (see
    /// [`Limit`] to choose [`MissingKey::Skip`](super::MissingKey::Skip)).
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
        let engine = Engine::new(self.backend);
        let limits: Box<[Slot]> = self
            .limits
            .into_iter()
            .map(|l| Slot {
                ids: engine.intern(&memory, &l.name),
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
                missing_log: Throttle::new(Duration::from_secs(10)),
                shadow_log: Throttle::new(Duration::from_secs(1)),
            }),
        })
    }
}
