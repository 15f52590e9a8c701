//! The decision pipeline of the layer: plan (keys and cost) → decide now (memory backend,
//! deny cache) → decide later (the Redis round trip) → settle (call the inner service, or
//! refuse) → the rejection response.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Request};

use super::config::{CostFn, FailureMode, MissingKey};
use super::decision::{QuotaDecision, QuotaStatus, RateLimitDecision};
use super::key::{KeyExtractor, LimitKey};
use super::memory::{Item, MemoryBackend};
use super::metrics::{Counters, bump};
use super::quota::Quota;
use super::response::{
    RATELIMIT, RATELIMIT_POLICY, RejectReason, Rejection, RejectionBody, push_status,
    rejection_response,
};
use crate::clock::{Clock, Throttle};

#[cfg(feature = "redis")]
use super::redis::RedisBackend;

pub(super) struct Slot {
    pub(super) name: Arc<str>,
    pub(super) quota: Quota,
    pub(super) key: Arc<dyn KeyExtractor>,
    pub(super) missing: MissingKey,
    pub(super) mem_id: u32,
    #[cfg(feature = "redis")]
    pub(super) redis_id: u32,
}

pub(super) enum Engine {
    Memory,
    #[cfg(feature = "redis")]
    Redis(RedisBackend),
}

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
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(super) degraded_log: Throttle,
    pub(super) missing_log: Throttle,
    pub(super) shadow_log: Throttle,
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
pub(super) struct Checks {
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

pub(super) struct Verdict {
    allowed: bool,
    /// (limit index, decision) for each checked quota.
    statuses: Vec<(usize, QuotaDecision)>,
    source: Source,
    /// The request's cost.
    cost: u64,
}

pub(super) enum Plan {
    Done(Verdict),
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
    pub(super) fn decide_now(&self, checks: &Checks) -> Option<Verdict> {
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
    pub(super) fn decide_later(self: &Arc<Self>, checks: Checks) -> DecisionFuture {
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
    pub(super) fn decide_later(self: &Arc<Self>, checks: Checks) -> DecisionFuture {
        let verdict = self.decide_memory(&checks, Source::Backend);
        Box::pin(std::future::ready(verdict))
    }

    /// Turns a verdict into either "call the inner service" (with the extension set and the
    /// headers to add) or a rejection response.
    pub(super) fn settle<B>(&self, verdict: Verdict, req: &mut Request<B>, grpc: bool) -> Settled {
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

pub(super) enum Settled {
    Call(Option<(HeaderValue, Option<HeaderValue>)>),
    Reject(http::Response<Vec<u8>>),
}

pub(super) type DecisionFuture = Pin<Box<dyn Future<Output = Verdict> + Send + 'static>>;
