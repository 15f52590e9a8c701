//! The seam between the decision pipeline and the backends.
//!
//! The pipeline hands the engine the [`Checks`] of a request and gets a [`Verdict`] back:
//! [`decide_now`](Shared::decide_now) when one can be had without waiting (the memory backend
//! always; Redis when the deny cache already knows the answer), else
//! [`decide_later`](Shared::decide_later), the Redis round trip, whose errors end in the
//! failure mode. Everything the layer knows about Redis is in this file, so it holds every
//! `feature = "redis"` gate of the layer's code (apart from the public
//! [`Backend::Redis`](super::Backend) variant). The memory path stays synchronous; the only
//! boxed future is the round trip's, as before the seam.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::Few;
use super::config::{Backend, ResetError};
use super::decision::QuotaDecision;
use super::key::LimitKey;
use super::memory::{Item, MemoryBackend};
use super::pipeline::Shared;
use super::response::RejectReason;

#[cfg(feature = "redis")]
use {
    super::config::FailureMode,
    super::metrics::bump,
    super::redis::{RedisBackend, RedisItem},
    crate::clock::Throttle,
    crate::redis::RedisError,
    std::time::Duration,
};

/// Where the layer's quota state lives.
pub(super) enum Engine {
    /// The memory backend decides, synchronously.
    Memory,
    /// Redis decides, one round trip per request.
    #[cfg(feature = "redis")]
    Redis(Remote),
}

/// The Redis engine: the backend and the throttle of its "Redis unreachable" log.
#[cfg(feature = "redis")]
pub(super) struct Remote {
    backend: RedisBackend,
    degraded_log: Throttle,
}

/// A quota's interned id in each backend the layer may ask.
#[derive(Clone, Copy)]
pub(super) struct QuotaIds {
    /// In the memory backend (the engine itself, or the local fallback of Redis).
    memory: u32,
    #[cfg(feature = "redis")]
    redis: u32,
}

impl Engine {
    /// The engine of a configured backend (`None`: a memory backend).
    pub(super) fn new(backend: Option<Backend>) -> Self {
        match backend {
            None | Some(Backend::Memory(_)) => Engine::Memory,
            #[cfg(feature = "redis")]
            Some(Backend::Redis(backend)) => Engine::Redis(Remote {
                backend,
                degraded_log: Throttle::new(Duration::from_secs(10)),
            }),
        }
    }

    /// Interns a quota name in `memory` and, for Redis, in the Redis backend.
    pub(super) fn intern(&self, memory: &MemoryBackend, name: &str) -> QuotaIds {
        QuotaIds {
            memory: memory.intern(name),
            #[cfg(feature = "redis")]
            redis: match self {
                Engine::Redis(r) => r.backend.intern(name),
                Engine::Memory => 0,
            },
        }
    }

    /// The backend that decides, for `Debug`.
    pub(super) fn backend<'a>(&'a self, memory: &'a MemoryBackend) -> &'a dyn fmt::Debug {
        match self {
            Engine::Memory => memory,
            #[cfg(feature = "redis")]
            Engine::Redis(r) => &r.backend,
        }
    }
}

/// The keys of one request.
pub(super) struct Checks {
    /// The index of each checked quota in the layer's limits.
    pub(super) idx: Few<usize>,
    /// Its key, in the same order.
    pub(super) keys: Few<LimitKey>,
    /// The request's cost.
    pub(super) cost: u64,
}

/// Why a verdict was reached without (or despite) the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Source {
    /// The backend decided.
    Backend,
    /// The deny cache knew the refusal (Redis, no round trip).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    DenyCache,
    /// Redis could not be reached: the failure mode decided.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Degraded,
    /// Refused before any backend (or by `FailureMode::Closed`), for this reason, naming
    /// this quota (an index in the layer's limits).
    Refused(RejectReason, Option<usize>),
    /// No quota applied to the request.
    Pass,
}

/// What was decided for a request.
pub(super) struct Verdict {
    pub(super) allowed: bool,
    /// (limit index, decision) for each checked quota.
    pub(super) statuses: Few<(usize, QuotaDecision)>,
    pub(super) source: Source,
    /// The request's cost.
    pub(super) cost: u64,
}

/// A verdict that needs a round trip.
pub(super) type DecisionFuture = Pin<Box<dyn Future<Output = Verdict> + Send + 'static>>;

impl Shared {
    fn decide_memory(&self, checks: &Checks, source: Source) -> Verdict {
        let now = self.clock.now_micros();
        let items: Few<Item<'_>> = checks
            .idx
            .iter()
            .zip(&checks.keys)
            .map(|(&i, key)| Item {
                id: self.limits[i].ids.memory,
                quota: &self.limits[i].quota,
                key,
            })
            .collect();
        let mut out = Few::new();
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
            Engine::Memory => {
                #[cfg(feature = "opentelemetry")]
                let started = self.otel.stopwatch();
                let verdict = self.decide_memory(checks, Source::Backend);
                #[cfg(feature = "opentelemetry")]
                self.otel.memory_duration(started);
                Some(verdict)
            }
            #[cfg(feature = "redis")]
            Engine::Redis(redis) => self.cached_denials(&redis.backend, checks),
        }
    }

    /// The verdict [`decide_now`](Self::decide_now) did not have, as an owned future.
    pub(super) fn decide_later(self: &Arc<Self>, checks: Checks) -> DecisionFuture {
        match &self.engine {
            // `decide_now` always answers for memory: kept only so that every engine has one.
            Engine::Memory => Box::pin(std::future::ready(
                self.decide_memory(&checks, Source::Backend),
            )),
            #[cfg(feature = "redis")]
            Engine::Redis(_) => Box::pin(Arc::clone(self).round_trip(checks)),
        }
    }
}

impl Shared {
    /// Forgets quota `name`'s state for `key` in the backend that decides and in the local
    /// fallback (see [`RateLimitLayer::reset`](super::RateLimitLayer::reset)).
    pub(super) async fn reset(&self, name: &str, key: &LimitKey) -> Result<bool, ResetError> {
        if !self.limits.iter().any(|l| &*l.name == name) {
            return Err(ResetError::UnknownQuota {
                name: name.to_owned(),
            });
        }
        // The deciding memory backend, or the one `FailureMode::Local` decides with.
        let local = self.memory.reset(name, key);
        match &self.engine {
            Engine::Memory => Ok(local),
            #[cfg(feature = "redis")]
            Engine::Redis(r) => {
                let remote = r
                    .backend
                    .reset(name, key)
                    .await
                    .map_err(ResetError::Redis)?;
                Ok(remote || local)
            }
        }
    }
}

#[cfg(feature = "redis")]
impl Shared {
    /// A refusal the local deny cache already knows, without a round trip. Never for a
    /// request of cost 0: it is checked without being counted, and Redis (like the memory
    /// backend) admits it even on a used-up key, reporting 0 left.
    fn cached_denials(&self, redis: &RedisBackend, checks: &Checks) -> Option<Verdict> {
        if checks.cost == 0 {
            return None;
        }
        let now = self.clock.now_micros();
        let mut statuses = Few::new();
        for (&i, key) in checks.idx.iter().zip(&checks.keys) {
            if let Some(d) = redis.cached_denial(self.limits[i].ids.redis, key, now) {
                statuses.push((i, d));
            }
        }
        if statuses.is_empty() {
            return None;
        }
        bump(&self.counters.here().deny_cache_hits);
        #[cfg(feature = "opentelemetry")]
        self.otel.deny_cache_hit();
        Some(Verdict {
            allowed: false,
            statuses,
            source: Source::DenyCache,
            cost: checks.cost,
        })
    }

    /// The Redis round trip; its errors are decided by the failure mode.
    async fn round_trip(self: Arc<Self>, checks: Checks) -> Verdict {
        let Engine::Redis(redis) = &self.engine else {
            return self.decide_memory(&checks, Source::Backend);
        };
        let items: Few<RedisItem<'_>> = checks
            .idx
            .iter()
            .zip(&checks.keys)
            .map(|(&i, key)| RedisItem {
                id: self.limits[i].ids.redis,
                name: &self.limits[i].name,
                quota: &self.limits[i].quota,
                key,
            })
            .collect();
        bump(&self.counters.here().backend_calls);
        let sent_at = self.clock.now_micros();
        #[cfg(feature = "opentelemetry")]
        let started = self.otel.stopwatch();
        let answer = redis.backend.decide(&items, checks.cost, sent_at).await;
        #[cfg(feature = "opentelemetry")]
        self.otel.redis_duration(started);
        match answer {
            Ok((allowed, decisions)) => Verdict {
                allowed,
                statuses: checks.idx.iter().copied().zip(decisions).collect(),
                source: Source::Backend,
                cost: checks.cost,
            },
            Err(e) => self.degraded(redis, &checks, &e),
        }
    }

    /// The failure mode's verdict.
    fn degraded(&self, redis: &Remote, checks: &Checks, error: &RedisError) -> Verdict {
        bump(&self.counters.here().degraded);
        if redis.degraded_log.allow(self.clock.now_micros()) {
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
                statuses: Few::new(),
                source: Source::Degraded,
                cost: checks.cost,
            },
            FailureMode::Closed => Verdict {
                allowed: false,
                statuses: Few::new(),
                source: Source::Refused(RejectReason::Unavailable, None),
                cost: checks.cost,
            },
        }
    }
}
