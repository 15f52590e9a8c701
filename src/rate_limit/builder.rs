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
use super::response::{
    JsonRejection, RejectReason, Rejection, RejectionBody, policy_value, status_prefix,
};
use super::service::RateLimitLayer;
use crate::clock::{Clock, Throttle};
use crate::lasting::Text;

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
    /// Whether `rejection` was set (else the default bodies are rendered at build).
    custom_rejection: bool,
    #[cfg(feature = "opentelemetry")]
    meter: Option<opentelemetry::metrics::Meter>,
    #[cfg(feature = "opentelemetry")]
    near_limit: f64,
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
    /// The defaults each setter documents.
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
            custom_rejection: false,
            #[cfg(feature = "opentelemetry")]
            meter: None,
            #[cfg(feature = "opentelemetry")]
            near_limit: crate::telemetry::DEFAULT_NEAR_LIMIT,
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
        self.custom_rejection = true;
        self
    }

    /// The meter of the layer's metrics (see [`telemetry`](crate::telemetry)). Default: the
    /// global provider's, taken by [`build`](Self::build).
    #[cfg(feature = "opentelemetry")]
    #[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
    pub fn meter(mut self, meter: opentelemetry::metrics::Meter) -> Self {
        self.meter = Some(meter);
        self
    }

    /// The share of a quota used at or above which an admission counts in
    /// `rampart.rate_limit.near_limit` (default
    /// [`DEFAULT_NEAR_LIMIT`](crate::telemetry::DEFAULT_NEAR_LIMIT), 0.8). Rejected at
    /// build unless in `0.0..=1.0`; any share counts at least the admission that used a
    /// quota's last unit.
    #[cfg(feature = "opentelemetry")]
    #[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
    pub fn near_limit(mut self, share: f64) -> Self {
        self.near_limit = share;
        self
    }

    /// Checks the configuration and builds the layer.
    ///
    /// # Errors
    ///
    /// A [`RateLimitConfigError`] naming the first setting found wrong: no quota
    /// ([`NoQuota`](RateLimitConfigError::NoQuota)), more than 64
    /// ([`TooManyQuotas`](RateLimitConfigError::TooManyQuotas)), a fixed cost of 0
    /// ([`ZeroCost`](RateLimitConfigError::ZeroCost)) or above a quota's burst
    /// ([`CostAboveBurst`](RateLimitConfigError::CostAboveBurst)), or a quota with a bad or
    /// repeated name, bad numbers or a misconfigured key
    /// ([`InvalidQuotaName`](RateLimitConfigError::InvalidQuotaName),
    /// [`DuplicateQuotaName`](RateLimitConfigError::DuplicateQuotaName),
    /// [`InvalidQuota`](RateLimitConfigError::InvalidQuota),
    /// [`InvalidKey`](RateLimitConfigError::InvalidKey)).
    pub fn build(self) -> Result<RateLimitLayer, RateLimitConfigError> {
        MonotonicClock::init();
        if self.limits.is_empty() {
            return Err(RateLimitConfigError::NoQuota);
        }
        if self.limits.len() > 64 {
            return Err(RateLimitConfigError::TooManyQuotas);
        }
        if self.fixed_cost == 0 {
            return Err(RateLimitConfigError::ZeroCost);
        }
        #[cfg(feature = "opentelemetry")]
        if !(0.0..=1.0).contains(&self.near_limit) {
            return Err(RateLimitConfigError::NearLimitShare);
        }
        for (i, l) in self.limits.iter().enumerate() {
            let valid_name = (1..=64).contains(&l.name.len())
                && l.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            let name = || l.name.clone();
            if !valid_name {
                return Err(RateLimitConfigError::InvalidQuotaName { name: name() });
            }
            if self.limits[..i].iter().any(|o| o.name == l.name) {
                return Err(RateLimitConfigError::DuplicateQuotaName { name: name() });
            }
            if let Err(error) = l.quota.validate() {
                return Err(RateLimitConfigError::InvalidQuota {
                    name: name(),
                    error,
                });
            }
            if let Err(reason) = l.key.validate() {
                return Err(RateLimitConfigError::InvalidKey {
                    name: name(),
                    reason,
                });
            }
            if self.fixed_cost > l.quota.burst_size() {
                return Err(RateLimitConfigError::CostAboveBurst {
                    name: name(),
                    quota: l.quota,
                    cost: self.fixed_cost,
                });
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
                status_prefix: status_prefix(&l.name),
                exceeded_body: (!self.custom_rejection).then(|| {
                    let refusal = Rejection {
                        reason: RejectReason::Exceeded,
                        quota: Some((&l.name, &l.quota)),
                        cost: self.fixed_cost,
                        retry_after: None,
                    };
                    JsonRejection.body(&refusal).1
                }),
                name: Text::new(&l.name),
                quota: l.quota,
                key: l.key,
                missing: l.missing,
            })
            .collect();
        #[cfg(feature = "opentelemetry")]
        let otel = super::metrics::otel::LayerMetrics::new(
            &self.meter.unwrap_or_else(crate::telemetry::global_meter),
            limits.iter().map(|l| (&*l.name, l.quota.burst_size())),
            self.near_limit,
        );
        let policy = policy_value(limits.iter().map(|l| (&*l.name, &l.quota)));
        let policy = HeaderValue::from_str(&policy)
            .map(crate::lasting::header_value)
            .map_err(|_| RateLimitConfigError::PolicyHeader)?;
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
                #[cfg(feature = "opentelemetry")]
                otel,
                missing_log: Throttle::new(Duration::from_secs(10)),
                no_address_logged: std::sync::atomic::AtomicBool::new(false),
                shadow_log: Throttle::new(Duration::from_secs(1)),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::key::Key;
    use super::*;

    fn refused(builder: RateLimitBuilder) -> RateLimitConfigError {
        builder.build().unwrap_err()
    }

    fn one(quota: Quota) -> RateLimitBuilder {
        RateLimitLayer::builder().quota("ip", quota, Key::global())
    }

    /// Each wrong setting has its variant, and the message is the one this error always had
    /// (users and tests match on it).
    #[test]
    fn each_wrong_setting_has_its_variant_and_its_message() {
        let cases = [
            (
                refused(RateLimitLayer::builder()),
                RateLimitConfigError::NoQuota,
                "no quota: add one with .quota(name, quota, key)",
            ),
            (
                refused((0..65).fold(RateLimitLayer::builder(), |b, i| {
                    b.quota(format!("q{i}"), Quota::per_minute(5), Key::global())
                })),
                RateLimitConfigError::TooManyQuotas,
                "more than 64 quotas in one layer",
            ),
            (
                refused(one(Quota::per_minute(5)).cost(0)),
                RateLimitConfigError::ZeroCost,
                "the cost of a request must be at least 1",
            ),
            (
                refused(RateLimitLayer::builder().quota(
                    "bad name",
                    Quota::per_minute(5),
                    Key::global(),
                )),
                RateLimitConfigError::InvalidQuotaName {
                    name: "bad name".into(),
                },
                "quota name \"bad name\": use 1 to 64 characters among A-Z a-z 0-9 _ . -",
            ),
            (
                refused(one(Quota::per_minute(5)).quota("ip", Quota::per_minute(9), Key::global())),
                RateLimitConfigError::DuplicateQuotaName { name: "ip".into() },
                "quota name \"ip\" is used twice",
            ),
            (
                refused(one(Quota::per_minute(5)).cost(6)),
                RateLimitConfigError::CostAboveBurst {
                    name: "ip".into(),
                    quota: Quota::per_minute(5),
                    cost: 6,
                },
                "quota \"ip\" (5 per 1 minute): a cost of 6 per request exceeds its burst of 5, \
                 so no request could ever be admitted",
            ),
        ];
        for (err, variant, message) in cases {
            assert_eq!(err, variant);
            assert_eq!(
                err.to_string(),
                format!("rate limit configuration: {message}")
            );
        }
        assert_eq!(
            RateLimitConfigError::PolicyHeader.to_string(),
            "rate limit configuration: cannot build the RateLimit-Policy header"
        );
    }

    #[test]
    fn quota_and_key_errors_carry_the_cause() {
        let bad = Quota::rate(5, Duration::from_secs(1)).burst(0);
        let error = bad.validate().unwrap_err();
        let err = refused(one(bad));
        assert_eq!(
            err.to_string(),
            format!("rate limit configuration: quota \"ip\": {error}")
        );
        assert_eq!(
            err,
            RateLimitConfigError::InvalidQuota {
                name: "ip".into(),
                error
            }
        );

        let err = refused(RateLimitLayer::builder().quota(
            "h",
            Quota::per_minute(5),
            Key::header("bad header"),
        ));
        let RateLimitConfigError::InvalidKey { name, reason } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(name, "h");
        assert!(reason.starts_with("invalid header name"), "{reason}");
        assert_eq!(
            err.to_string(),
            format!("rate limit configuration: quota \"h\": key: {reason}")
        );
    }

    #[test]
    fn the_quota_concerned_is_named() {
        assert_eq!(
            refused(one(Quota::per_minute(5)).cost(6)).quota_name(),
            Some("ip")
        );
        assert_eq!(refused(one(Quota::per_minute(0))).quota_name(), Some("ip"));
        assert_eq!(refused(RateLimitLayer::builder()).quota_name(), None);
        assert_eq!(
            refused(one(Quota::per_minute(5)).cost(0)).quota_name(),
            None
        );
    }
}
