//! The decision pipeline of the layer, in the order a request goes through it:
//!
//! 1. [`plan`](Shared::plan): the request's cost and one key per quota; requests that need
//!    no backend (no quota applies, a missing key, a cost above a burst) are settled here;
//! 2. decide now, else decide later: the backends, behind the seam in `engine.rs`;
//! 3. [`settle`](Shared::settle): count, then either call the inner service (with the
//!    [`RateLimitDecision`] in the request and the headers for its response) or refuse;
//! 4. the rejection response (status, headers, body).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Request};

use super::Few;
use super::config::{CostFn, FailureMode, MissingKey};
use super::decision::{QuotaStatus, RateLimitDecision};
use super::engine::{Checks, Engine, QuotaIds, Source, Verdict};
use super::key::{KeyExtractor, NoKey};
use super::memory::MemoryBackend;
use super::metrics::{Counters, bump};
use super::quota::Quota;
use super::response::{
    RATELIMIT_NAME, RATELIMIT_POLICY_NAME, RejectReason, Rejection, RejectionBody, push_status,
    rejection_response, status_len,
};
use crate::clock::{Clock, Throttle};
use crate::lasting::Text;

/// One quota of the layer, ready to check.
pub(super) struct Slot {
    pub(super) name: Text,
    /// `"name";r=`, the start of this quota's `RateLimit` item.
    pub(super) status_prefix: Box<str>,
    /// The default JSON body of a refusal by this quota ([`RejectReason::Exceeded`]), rendered
    /// when the layer is built; `None` with a custom [`RejectionBody`].
    pub(super) exceeded_body: Option<Vec<u8>>,
    pub(super) quota: Quota,
    pub(super) key: Arc<dyn KeyExtractor>,
    pub(super) missing: MissingKey,
    pub(super) ids: QuotaIds,
}

/// The layer's settings and state, shared by every clone of the layer and its services.
pub(super) struct Shared {
    pub(super) limits: Box<[Slot]>,
    pub(super) engine: Engine,
    /// The memory backend (the engine itself, or the local fallback of Redis).
    pub(super) memory: MemoryBackend,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) cost: Option<Arc<dyn CostFn>>,
    pub(super) fixed_cost: u64,
    pub(super) shadow: bool,
    pub(super) headers_on_success: bool,
    pub(super) failure_mode: FailureMode,
    pub(super) rejection: Arc<dyn RejectionBody>,
    pub(super) policy: HeaderValue,
    pub(super) counters: Counters,
    #[cfg(feature = "opentelemetry")]
    pub(super) otel: super::metrics::otel::LayerMetrics,
    pub(super) missing_log: Throttle,
    /// Set once the "no client address" error has been logged: a deployment mistake is
    /// logged once with its fix, not per request.
    pub(super) no_address_logged: std::sync::atomic::AtomicBool,
    pub(super) shadow_log: Throttle,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.limits.iter().map(|l| (&*l.name, l.quota)).collect();
        f.debug_struct("RateLimit")
            .field("quotas", &names)
            .field("backend", self.engine.backend(&self.memory))
            .field("shadow", &self.shadow)
            .field("failure_mode", &self.failure_mode)
            .finish_non_exhaustive()
    }
}

/// What [`plan`](Shared::plan) found.
pub(super) enum Plan {
    /// Settled without a backend.
    Done(Verdict),
    /// To be decided by the backend.
    Check(Checks),
}

impl Shared {
    /// Extracts keys and cost; settles requests that need no backend.
    pub(super) fn plan(&self, head: &Request<()>) -> Plan {
        let cost = match &self.cost {
            Some(f) => f.cost(head),
            None => self.fixed_cost,
        };
        let mut checks = Checks {
            idx: Few::new(),
            keys: Few::new(),
            cost,
        };
        for (i, l) in self.limits.iter().enumerate() {
            match l.key.key(head) {
                Ok(k) => {
                    if cost > l.quota.burst_size() {
                        return Plan::Done(Verdict {
                            allowed: false,
                            statuses: Few::new(),
                            source: Source::Refused(RejectReason::CostTooHigh, Some(i)),
                            cost,
                        });
                    }
                    checks.idx.push(i);
                    checks.keys.push(k);
                }
                Err(NoKey::NoClientAddress) => {
                    bump(&self.counters.here().missing_key);
                    self.log_no_client_address(&l.name);
                    return Plan::Done(Verdict {
                        allowed: false,
                        statuses: Few::new(),
                        source: Source::Refused(RejectReason::NoClientAddress, Some(i)),
                        cost,
                    });
                }
                Err(NoKey::Unusable) => {
                    bump(&self.counters.here().missing_key);
                    if self.missing_log.allow(self.clock.now_micros()) {
                        tracing::info!(
                            quota = %l.name,
                            "rate limit: the request's key is unusable (a key header sent twice with different values, or a malformed forwarding header): answering 400"
                        );
                    }
                    return Plan::Done(Verdict {
                        allowed: false,
                        statuses: Few::new(),
                        source: Source::Refused(RejectReason::UnusableKey, Some(i)),
                        cost,
                    });
                }
                Err(_) => {
                    bump(&self.counters.here().missing_key);
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
                        statuses: Few::new(),
                        source: Source::Refused(RejectReason::MissingKey, Some(i)),
                        cost,
                    });
                }
            }
        }
        if checks.idx.is_empty() {
            return Plan::Done(Verdict {
                allowed: true,
                statuses: Few::new(),
                source: Source::Pass,
                cost,
            });
        }
        Plan::Check(checks)
    }

    fn log_no_client_address(&self, quota: &str) {
        use std::sync::atomic::Ordering;
        if self.no_address_logged.swap(true, Ordering::Relaxed) {
            return;
        }
        tracing::error!(
            quota,
            "rate limit: this quota keys clients by address, but the server records no client \
             address, so every request is answered 500. Fix the server: axum: serve with \
             `app.into_make_service_with_connect_info::<SocketAddr>()` (and tower-rampart's \
             `axum` feature); tonic: enable tower-rampart's `tonic` feature; hyper or another \
             server: insert the peer `SocketAddr` (or `tower_rampart::net::PeerAddr`) into each \
             request's extensions. Logged once."
        );
    }

    /// Turns a verdict into either "call the inner service" (with the extension set and the
    /// headers to add) or a rejection response.
    pub(super) fn settle<B>(&self, verdict: Verdict, req: &mut Request<B>, grpc: bool) -> Settled {
        let enforce = !self.shadow;
        #[cfg(feature = "opentelemetry")]
        self.record(&verdict);
        if verdict.allowed {
            bump(&self.counters.here().allowed);
        } else if enforce {
            bump(&self.counters.here().denied);
        } else {
            bump(&self.counters.here().shadow_denied);
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
            bump(&self.counters.here().allowed);
        }
        let headers = (enforce && self.headers_on_success && verdict.source != Source::Pass)
            .then(|| self.rate_headers(&verdict, false));
        req.extensions_mut().insert(self.public_decision(&verdict));
        Settled::Call(headers)
    }

    /// Counts a verdict in the layer's metrics: once per quota that admitted the request,
    /// or once per quota that refused it.
    #[cfg(feature = "opentelemetry")]
    fn record(&self, verdict: &Verdict) {
        use super::metrics::otel::Outcome;
        if !self.otel.on() {
            return;
        }
        let degraded = matches!(
            verdict.source,
            Source::Degraded | Source::Refused(RejectReason::Unavailable, _)
        );
        let outcome = match (verdict.allowed, degraded) {
            (true, false) => Outcome::Allowed,
            (true, true) => Outcome::DegradedAllowed,
            (false, true) => Outcome::DegradedRejected,
            (false, false) if self.shadow => Outcome::ShadowRejected,
            (false, false) => Outcome::Rejected,
        };
        let m = &self.otel;
        if verdict.statuses.is_empty() {
            match verdict.source {
                Source::Pass => {}
                Source::Refused(_, Some(i)) => m.decision(i, outcome),
                _ => m.unattributed(outcome),
            }
            return;
        }
        for &(i, d) in &verdict.statuses {
            if verdict.allowed {
                m.decision(i, outcome);
                m.admitted(i, d.remaining());
            } else if !d.is_allowed() {
                m.decision(i, outcome);
            }
        }
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
        let shown = || {
            verdict
                .statuses
                .iter()
                .filter(move |(_, d)| !refused_only || !d.is_allowed())
                .map(|&(i, d)| (&*self.limits[i].status_prefix, d))
        };
        // Measured first, so that the string is allocated once at exactly its length.
        let mut len = 0;
        for (prefix, d) in shown() {
            len += status_len(len == 0, prefix, d.remaining(), d.reset_us());
        }
        let mut status = String::with_capacity(len);
        for (prefix, d) in shown() {
            push_status(&mut status, prefix, d.remaining(), d.reset_us());
        }
        // The string becomes the header's bytes as it is: no copy, and no second allocation
        // (its length is its capacity).
        let status = (!status.is_empty())
            .then(|| HeaderValue::try_from(status).ok())
            .flatten();
        (self.policy.clone(), status)
    }

    fn rejection(&self, verdict: &Verdict, grpc: bool) -> http::Response<Vec<u8>> {
        // RateLimit-Policy, RateLimit, Retry-After, Content-Type (and gRPC's two).
        let mut headers = HeaderMap::with_capacity(6);
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
            headers.insert(RATELIMIT_POLICY_NAME, policy);
            if let Some(s) = status {
                headers.insert(RATELIMIT_NAME, s);
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
        let rendered = quota
            .and_then(|i| self.limits[i].exceeded_body.as_ref())
            .filter(|_| reason == RejectReason::Exceeded);
        rejection_response(&rejection, grpc, headers, |r| match rendered {
            Some(body) => (HeaderValue::from_static("application/json"), body.clone()),
            None => self.rejection.body(r),
        })
    }
}

/// What to do with a request once its verdict is known.
pub(super) enum Settled {
    /// Call the inner service, adding these `RateLimit-Policy` and `RateLimit` values to
    /// its response.
    Call(Option<(HeaderValue, Option<HeaderValue>)>),
    /// Answer with this response.
    Reject(http::Response<Vec<u8>>),
}
