//! Work split by hash slot, for Redis Cluster (user-facing description and proofs: the
//! backend's "Redis Cluster" docs).
//!
//! A script call may only touch keys of one hash slot. [`Router`] groups keys by slot: a
//! request whose quotas all live in one slot, and every batch of such requests, keep the
//! single-server scripts, one call per slot; a request whose quotas span slots is decided by
//! [`Router::split`]: `RESERVE` on every slot at once, then, if any slot refused (or failed),
//! `RELEASE` of what the others took.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;

use super::scripts::{self, Ask, Check, Definition, Written};
use crate::redis::{RedisConnection, RedisError, RedisErrorKind, driver, key_slot};

/// Routes script calls by hash slot (see the module docs).
pub(super) struct Router {
    pub(super) conn: RedisConnection,
    /// Script calls and the decisions each carries.
    #[cfg(feature = "opentelemetry")]
    pub(super) metrics: super::super::metrics::otel::ScriptMetrics,
    /// Test switch: every distinct key is its own slot, also on a single server, so that the
    /// split path can be exercised there.
    pub(super) every_key_own_slot: bool,
    /// Test hook: reservations of refused requests are not released, as if the process died
    /// between its reserve and its release.
    pub(super) skip_releases: AtomicBool,
    /// Keys whose release failed or was skipped (each may hold `cost` units too many until
    /// that admission leaves its window or decays).
    pub(super) unreleased: AtomicU64,
    /// Set by the first `CROSSSLOT` refusal from a server the connection sees as a single
    /// server: one endpoint that still enforces hash slots (a cluster proxy such as Azure
    /// Managed Redis's Enterprise clustering policy, or a cluster node reached with
    /// `REDIS_CLUSTER=false` that serves every slot). From then on calls are split by slot
    /// up front, as on a cluster.
    pub(super) slotted: AtomicBool,
}

impl Router {
    /// Whether calls must be split by slot.
    pub(super) fn splits(&self) -> bool {
        self.every_key_own_slot || self.conn.is_cluster() || self.slotted.load(Ordering::Relaxed)
    }

    /// Whether `e` is a `CROSSSLOT` refusal (nothing ran); remembers that this server
    /// enforces slots, so that the caller and every later call split by slot.
    pub(super) fn learn_slots(&self, e: &RedisError) -> bool {
        if !crossed_slots(e) {
            return false;
        }
        if !self.conn.is_cluster() && !self.slotted.swap(true, Ordering::Relaxed) {
            tracing::info!(
                "redis refused a rate-limit script whose keys span hash slots (CROSSSLOT): \
                 the server enforces slots behind one endpoint; splitting calls by slot from now on"
            );
        }
        true
    }

    /// The slot of `key` (with the test switch, one per distinct key).
    fn slot(&self, key: &str) -> u64 {
        if self.every_key_own_slot {
            let mut h = DefaultHasher::new();
            key.hash(&mut h);
            h.finish()
        } else {
            u64::from(key_slot(key.as_bytes()))
        }
    }

    /// The indices of `keys` grouped by slot, the groups in slot order, each in key order.
    pub(super) fn groups<'k>(&self, keys: impl Iterator<Item = &'k str>) -> Vec<Vec<usize>> {
        let mut by_slot: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (i, key) in keys.enumerate() {
            by_slot.entry(self.slot(key)).or_default().push(i);
        }
        by_slot.into_values().collect()
    }

    /// One call for a batch of requests; on a cluster, one call per slot (see
    /// [`call_batch_split`](Self::call_batch_split)). Reply: every request's per-key values,
    /// in order.
    pub(super) async fn call_batch(&self, asks: Vec<&Ask>) -> Result<Vec<i64>, RedisError> {
        #[cfg(feature = "opentelemetry")]
        self.metrics.call(asks.len());
        if !self.splits() {
            let result = self
                .conn
                .invoke_script(&Ask::invocation(asks.iter().copied()))
                .await;
            match result {
                // Refused before running: the first call of a connection that had not yet
                // learnt it talks to a cluster (`REDIS_CLUSTER=auto`, connected lazily), or a
                // single endpoint that enforces slots (see `slotted`). Split it now.
                Err(e) if self.learn_slots(&e) => {}
                other => return other,
            }
        }
        self.call_batch_split(&asks).await
    }

    /// A batch on a cluster, decided exactly as the same requests one by one in arrival
    /// order: runs of requests each on one slot are grouped by slot, one call per slot,
    /// concurrently (requests on different slots share no state, so their order does not
    /// matter; on one slot the order is kept); a request spanning slots is decided by
    /// [`split`](Self::split) between the runs before and after it.
    async fn call_batch_split(&self, asks: &[&Ask]) -> Result<Vec<i64>, RedisError> {
        let mut out: Vec<Vec<i64>> = vec![Vec::new(); asks.len()];
        let mut run: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (n, ask) in asks.iter().enumerate() {
            let slots: HashSet<u64> = ask.checks.iter().map(|c| self.slot(&c.key)).collect();
            match slots.len() {
                0 => {}
                1 => run
                    .entry(self.slot(&ask.checks[0].key))
                    .or_default()
                    .push(n),
                _ => {
                    self.flush(&mut run, asks, &mut out).await?;
                    let multi = self.split(&ask.checks, ask.cost, ask.now).await?;
                    for (c, values) in ask.checks.iter().zip(multi[1..].chunks_exact(4)) {
                        scripts::multi_to_keys(c.def, values, &mut out[n]);
                    }
                }
            }
        }
        self.flush(&mut run, asks, &mut out).await?;
        Ok(out.concat())
    }

    /// Decides the queued run: one call per slot, concurrently.
    async fn flush(
        &self,
        run: &mut BTreeMap<u64, Vec<usize>>,
        asks: &[&Ask],
        out: &mut [Vec<i64>],
    ) -> Result<(), RedisError> {
        let groups: Vec<Vec<usize>> = std::mem::take(run).into_values().collect();
        let calls = groups.iter().map(|group| {
            let inv = Ask::invocation(group.iter().map(|&n| asks[n]));
            let conn = &self.conn;
            async move {
                match conn.invoke_script::<Vec<i64>>(&inv).await {
                    // The slot is moving and the batch's keys are on both sides of the
                    // move (`TRYAGAIN` until the last key moved, which can take a while):
                    // each request alone, in order (its keys move together or are one), as
                    // one by one would decide them. Nothing of the batch ran.
                    Err(e) if group.len() > 1 && half_moved(&e) => {
                        let mut reply = Vec::new();
                        for &n in group {
                            let inv = Ask::invocation(std::iter::once(asks[n]));
                            reply.extend(conn.invoke_script::<Vec<i64>>(&inv).await?);
                        }
                        Ok(reply)
                    }
                    other => other,
                }
            }
        });
        for (group, reply) in groups.iter().zip(join_all(calls.collect()).await) {
            let reply = reply?;
            let mut at = 0;
            for &n in group {
                let width: usize = asks[n].checks.iter().map(|c| c.def.width()).sum();
                let Some(values) = reply.get(at..at + width) else {
                    return Err(scripts::replied(reply.len()));
                };
                out[n] = values.to_vec();
                at += width;
            }
            if at != reply.len() {
                return Err(scripts::replied(reply.len()));
            }
        }
        Ok(())
    }

    /// One request whose quotas span slots, all or nothing: `RESERVE` on every slot at once
    /// (each decides its share exactly as `MULTI` would, and takes it only if its share is
    /// admitted); if every slot admitted, done; otherwise `RELEASE` undoes, on each slot that
    /// took its share, exactly that share. Reply: `MULTI`'s, for the checks in order.
    pub(super) async fn split(
        &self,
        checks: &[Check],
        cost: u64,
        now: u64,
    ) -> Result<Vec<i64>, RedisError> {
        let groups = self.groups(checks.iter().map(|c| c.key.as_str()));
        let reserves = groups.iter().map(|group| {
            let mut inv =
                scripts::reserve_invocation(group.iter().map(|&i| checks[i].def), cost, now);
            for &i in group {
                inv.key(checks[i].key.as_str());
            }
            let conn = &self.conn;
            async move {
                let reply: Vec<driver::Value> = conn.invoke_script(&inv).await?;
                scripts::decode_reserve(group.len(), reply)
            }
        });
        let results = join_all(reserves.collect()).await;
        let admitted = results
            .iter()
            .all(|r| matches!(r, Ok((head, _)) if head[0] == 1));
        if !admitted && cost > 0 {
            let mut taken = Vec::new();
            for (group, result) in groups.iter().zip(&results) {
                if let Ok((head, written)) = result
                    && head[0] == 1
                {
                    // A key checked twice (two quotas of one name) was written twice from one
                    // read: its last write is the one to undo, once.
                    let mut seen = HashSet::new();
                    for (&i, w) in group.iter().zip(written).rev() {
                        if seen.insert(checks[i].key.as_str()) {
                            taken.push((&checks[i], w));
                        }
                    }
                }
            }
            self.release(&taken, cost, now).await;
        }
        let mut reply = vec![i64::from(admitted); 1 + 4 * checks.len()];
        for (group, result) in groups.iter().zip(results) {
            let (head, _) = result?;
            for (j, &i) in group.iter().enumerate() {
                reply[1 + 4 * i..5 + 4 * i].copy_from_slice(&head[1 + 4 * j..5 + 4 * j]);
            }
        }
        Ok(reply)
    }

    /// Undoes the shares a refused request took, concurrently; a release that fails (or is
    /// skipped by the test hook) is counted and logged: its units stay counted until they
    /// leave their window (or decay).
    async fn release(&self, taken: &[(&Check, &Written)], cost: u64, now: u64) {
        if self.skip_releases.load(Ordering::Relaxed) {
            self.unreleased
                .fetch_add(taken.len() as u64, Ordering::Relaxed);
            return;
        }
        let calls = taken.iter().map(|(check, written)| {
            let mut inv = scripts::release_invocation(check.def, cost, now, written);
            inv.key(check.key.as_str());
            let conn = &self.conn;
            async move { conn.invoke_script::<i64>(&inv).await }
        });
        for ((check, _), result) in taken.iter().zip(join_all(calls.collect()).await) {
            if let Err(error) = result {
                self.unreleased.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    %error,
                    slot = key_slot(check.key.as_bytes()),
                    cost,
                    hold = %Hold(check.def),
                    "rate limit: could not release a refused request's reservation; its units \
                     stay counted until they leave the window"
                );
            }
        }
    }
}

/// How long an unreleased reservation of a quota can stay counted at most, for the log.
struct Hold(Definition);

impl std::fmt::Display for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Definition::Window {
                window_us,
                granularity_us,
                ..
            } => write!(
                f,
                "at most {} µs (window + granularity)",
                window_us + granularity_us
            ),
            Definition::Gcra { interval_us, burst } => write!(
                f,
                "like an admission: drained within {} µs (burst × interval) of the last one",
                burst.saturating_mul(interval_us)
            ),
        }
    }
}

/// Polls every future until all are done; their outputs in order.
pub(super) async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (f, o) in futures.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *o = Some(v),
                    Poll::Pending => done = false,
                }
            }
        }
        if done { Poll::Ready(()) } else { Poll::Pending }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// Whether a cluster refused a call because its keys span slots (`CROSSSLOT`): nothing ran.
pub(super) fn crossed_slots(e: &RedisError) -> bool {
    e.server_code() == Some("CROSSSLOT")
}

/// The cluster refused a multi-key call because its slot is being migrated and only some
/// of its keys have moved yet.
fn half_moved(e: &RedisError) -> bool {
    e.server_code() == Some("TRYAGAIN")
}

/// A split request's task ended without an answer (its runtime shutting down).
pub(super) fn abandoned() -> RedisError {
    RedisError::new(
        RedisErrorKind::Unavailable,
        "rate limit decision abandoned before Redis answered (runtime shutting down)",
    )
}
