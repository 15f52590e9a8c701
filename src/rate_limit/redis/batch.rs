//! Natural batching: concurrent decisions of one [`RedisBackend`](super::RedisBackend) share
//! one script call (user-facing description: the backend's "Natural batching" docs).
//!
//! A [`Batcher`] lets at most `max_in_flight` script calls run at once. A decision that finds a
//! free slot and nobody waiting takes the slot ([`Turn::Alone`]) and its caller sends it at
//! once, alone, with the single-request scripts of `redis.rs` (no timer, nothing added at low
//! load). A decision that finds every slot busy joins a queue ([`Turn::Queued`]); when a call
//! returns, its slot takes the whole queue (up to `max_batch` decisions) into the next call,
//! driven by a spawned task so that no caller's future carries anyone else's decision: a
//! caller that goes away (its future dropped) loses only its own decision, and a dropped
//! [`Slot`] still hands the slot on. Under load the batches grow by themselves, to about
//! `callers / max_in_flight`.
//!
//! The common batch (requests of one quota each, all of the same quota, cost and time, each on
//! a key of its own) runs the per-key script of `redis.rs` (`GCRA_KEYS` or `WINDOW_KEYS`, the
//! very script a single request runs) with all its keys: no request reads another's state,
//! so each key is decided on its own, at the least cost to Redis. Any other batch (requests
//! with several quotas, one key twice, mixed quotas or costs) runs [`BATCH`]: one `TIME`, one
//! `MGET` of every distinct key, each request's quotas decided all or nothing **in arrival
//! order** against the state left by the requests before it (so the decisions are those of
//! the same requests sent one by one), then one `SET key value PX ttl` per key that changed.
//! The key names and value encodings are those of the single-request scripts, so both modes
//! (and instances running either) share state.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::scripts::{BATCH_SCRIPT, GCRA, keys_invocation};
use crate::rate_limit::lock;
use crate::redis::driver::ScriptInvocation;
use crate::redis::{RedisConnection, RedisError, RedisErrorKind};

/// Most quota checks in one call (bounds the script's `unpack` of the keys).
const MAX_CHECKS: usize = 512;

/// One quota check of a request: the Redis key and the quota's definition (kind, then its
/// four parameters, as the script reads them).
pub(crate) struct Check {
    pub(crate) key: String,
    pub(crate) def: [u64; 5],
}

impl Check {
    /// Values this check adds to the reply.
    fn width(&self) -> usize {
        if self.def[0] == GCRA { 1 } else { 3 }
    }
}

/// One request: its checks (decided all or nothing), cost and time (0: the server's).
pub(crate) struct Ask {
    pub(crate) checks: Vec<Check>,
    pub(crate) cost: u64,
    pub(crate) now: u64,
}

/// The reply values of one request: `values[at..]`, its checks in order.
pub(crate) struct Answer {
    values: Arc<Vec<i64>>,
    at: usize,
}

impl Answer {
    pub(crate) fn values(&self) -> &[i64] {
        self.values.get(self.at..).unwrap_or_default()
    }
}

type Reply = Result<Answer, RedisError>;

struct Waiting {
    ask: Ask,
    tx: oneshot::Sender<Reply>,
    since: Instant,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiting>,
    in_flight: usize,
}

/// Coalesces concurrent requests into script calls (see the module docs).
pub(crate) struct Batcher {
    conn: RedisConnection,
    queue: Mutex<Queue>,
    max_in_flight: usize,
    max_batch: usize,
    /// Longest a request may wait in the queue before it fails with a timeout.
    max_wait: Duration,
}

impl fmt::Debug for Batcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batcher")
            .field("max_in_flight", &self.max_in_flight)
            .field("max_batch", &self.max_batch)
            .finish_non_exhaustive()
    }
}

impl Batcher {
    pub(crate) fn new(conn: RedisConnection, max_in_flight: usize, max_batch: usize) -> Self {
        Self {
            max_wait: conn.command_timeout(),
            conn,
            queue: Mutex::new(Queue::default()),
            max_in_flight: max_in_flight.max(1),
            max_batch: max_batch.max(1),
        }
    }

    /// Takes a free slot for a request to be sent at once, alone, by its caller (when a slot
    /// is free and nobody waits), or queues the request `ask()` builds for the next batch.
    pub(crate) fn enqueue(self: &Arc<Self>, ask: impl FnOnce() -> Ask) -> Turn<'_> {
        let mut q = lock(&self.queue);
        let free = q.in_flight < self.max_in_flight;
        if free && q.waiting.is_empty() {
            q.in_flight += 1;
            return Turn::Alone(Slot { batcher: self });
        }
        let (tx, rx) = oneshot::channel();
        q.waiting.push_back(Waiting {
            ask: ask(),
            tx,
            since: Instant::now(),
        });
        if free {
            // A free slot with requests waiting (after a hand-over that could not spawn).
            q.in_flight += 1;
            let (batch, late) = self.take(&mut q);
            drop(q);
            self.fail_late(late);
            self.start_driver(batch);
        }
        Turn::Queued(Pending { rx })
    }

    /// One batch's call; every request in it gets its part of the reply or the error.
    async fn call_batch(&self, batch: Vec<Waiting>) {
        let (inv, len) = invocation(batch.iter().map(|w| &w.ask));
        let result: Result<Vec<i64>, RedisError> = self.conn.invoke_script(&inv).await;
        match result.and_then(|v| check_len(&v, len).map(|()| v)) {
            Ok(values) => {
                let values = Arc::new(values);
                let mut at = 0;
                for w in batch {
                    let width: usize = w.ask.checks.iter().map(Check::width).sum();
                    // A receiver gone away is fine: its decision was made, nobody reads it.
                    let _ = w.tx.send(Ok(Answer {
                        values: values.clone(),
                        at,
                    }));
                    at += width;
                }
            }
            Err(e) => {
                for w in batch {
                    let _ = w.tx.send(Err(e.clone()));
                }
            }
        }
    }

    /// Takes the next batch from the queue: requests in arrival order, up to the caps,
    /// leaving out those whose caller is gone; returns it with the requests that waited too
    /// long (to fail them outside the lock).
    fn take(&self, q: &mut Queue) -> (Vec<Waiting>, Vec<Waiting>) {
        let mut batch = Vec::new();
        let mut late = Vec::new();
        if q.waiting.is_empty() {
            return (batch, late);
        }
        let now = Instant::now();
        let mut checks = 0;
        while let Some(w) = q.waiting.pop_front() {
            if w.tx.is_closed() {
                continue;
            }
            if now.saturating_duration_since(w.since) > self.max_wait {
                late.push(w);
                continue;
            }
            let n = w.ask.checks.len();
            if batch.len() == self.max_batch || (!batch.is_empty() && checks + n > MAX_CHECKS) {
                q.waiting.push_front(w);
                break;
            }
            checks += n;
            batch.push(w);
        }
        (batch, late)
    }

    fn fail_late(&self, late: Vec<Waiting>) {
        for w in late {
            let _ = w.tx.send(Err(RedisError::timeout(
                "waiting for a free Redis call slot",
                self.max_wait,
            )));
        }
    }

    /// A call finished: its slot takes the queue into a new call, or is freed.
    fn pass_on(self: &Arc<Self>) {
        let mut q = lock(&self.queue);
        let (batch, late) = self.take(&mut q);
        if batch.is_empty() {
            q.in_flight -= 1;
        }
        drop(q);
        self.fail_late(late);
        if !batch.is_empty() {
            self.start_driver(batch);
        }
    }

    /// Runs `batch`, then further batches while requests are waiting, on a task of its own
    /// (holding one slot).
    fn start_driver(self: &Arc<Self>, batch: Vec<Waiting>) {
        if batch.is_empty() {
            lock(&self.queue).in_flight -= 1;
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime (a future dropped outside of one): the batch's callers get an
            // error; the slot is freed for the next caller, who takes the rest of the queue.
            lock(&self.queue).in_flight -= 1;
            drop(batch);
            return;
        };
        let this = self.clone();
        runtime.spawn(async move {
            let guard = DriverGuard { batcher: &this };
            let mut batch = batch;
            loop {
                this.call_batch(batch).await;
                let mut q = lock(&this.queue);
                let (next, late) = this.take(&mut q);
                if next.is_empty() {
                    q.in_flight -= 1;
                    std::mem::forget(guard);
                    drop(q);
                    this.fail_late(late);
                    return;
                }
                drop(q);
                this.fail_late(late);
                batch = next;
            }
        });
    }
}

fn check_len(values: &[i64], len: usize) -> Result<(), RedisError> {
    if values.len() == len {
        Ok(())
    } else {
        Err(RedisError::new(
            RedisErrorKind::Protocol,
            format!(
                "rate limit batch script replied {} values, expected {len}",
                values.len()
            ),
        ))
    }
}

/// The outcome of [`Batcher::enqueue`].
pub(crate) enum Turn<'a> {
    /// Send the request now, alone, holding this slot until the reply is in.
    Alone(Slot<'a>),
    /// Wait for the request's batch.
    Queued(Pending),
}

/// A call slot held by a request sent alone. Dropping it (after the reply, or when the
/// caller's future is dropped mid-call) passes the slot on to the requests queued meanwhile.
pub(crate) struct Slot<'a> {
    batcher: &'a Arc<Batcher>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.batcher.pass_on();
    }
}

/// A queued request's answer to come.
pub(crate) struct Pending {
    rx: oneshot::Receiver<Reply>,
}

impl Pending {
    /// The request's part of its batch's reply, or the batch's error.
    pub(crate) async fn answer(self) -> Reply {
        match self.rx.await {
            Ok(reply) => reply,
            Err(_) => Err(RedisError::new(
                RedisErrorKind::Unavailable,
                "rate limit batch abandoned before Redis answered (runtime shutting down)",
            )),
        }
    }
}

/// A driver task dropped before it finished (its runtime shutting down): frees its slot and
/// fails the queue rather than leave it without a driver.
struct DriverGuard<'a> {
    batcher: &'a Arc<Batcher>,
}

impl Drop for DriverGuard<'_> {
    fn drop(&mut self) {
        let mut q = lock(&self.batcher.queue);
        q.in_flight -= 1;
        let waiting = std::mem::take(&mut q.waiting);
        drop(q);
        drop(waiting);
    }
}

/// The script call of `asks` and the length of its reply.
fn invocation<'a>(
    asks: impl Iterator<Item = &'a Ask> + Clone,
) -> (ScriptInvocation<'static>, usize) {
    if let Some(call) = keys_only(asks.clone()) {
        return call;
    }
    let mut inv = BATCH_SCRIPT.prepare_invoke();
    let mut keys: HashMap<&str, u32> = HashMap::new();
    let mut defs: Vec<[u64; 5]> = Vec::new();
    // Shapes: (cost, definition indices).
    let mut shapes: Vec<(u64, Vec<u32>)> = Vec::new();
    let mut per_request: Vec<u32> = Vec::new();
    let mut key_refs: Vec<u32> = Vec::new();
    let mut client_time = false;
    let mut len = 0;
    let mut shape = Vec::new();
    for ask in asks.clone() {
        client_time |= ask.now != 0;
        shape.clear();
        for c in &ask.checks {
            let next = keys.len() as u32 + 1;
            let k = *keys.entry(c.key.as_str()).or_insert_with(|| {
                inv.key(c.key.as_str());
                next
            });
            key_refs.push(k);
            let d = match defs.iter().position(|d| *d == c.def) {
                Some(i) => i,
                None => {
                    defs.push(c.def);
                    defs.len() - 1
                }
            };
            shape.push(d as u32 + 1);
            len += c.width();
        }
        let s = match shapes
            .iter()
            .position(|(cost, s)| *cost == ask.cost && *s == shape)
        {
            Some(i) => i,
            None => {
                shapes.push((ask.cost, shape.clone()));
                shapes.len() - 1
            }
        };
        per_request.push(s as u32 + 1);
    }
    // Simple: one shape, the server's time, every check on a key of its own (so request `i`'s
    // checks use keys `i·n + 1 ..= i·n + n`): no per-request arguments at all.
    let simple = !client_time && shapes.len() == 1 && keys.len() == key_refs.len();
    let mode: u8 = if simple { 2 } else { u8::from(client_time) };
    inv.arg(mode).arg(defs.len()).arg(shapes.len());
    for d in &defs {
        inv.arg(&d[..]);
    }
    for (cost, defs) in &shapes {
        inv.arg(*cost).arg(defs.len()).arg(&defs[..]);
    }
    if simple {
        return (inv, len);
    }
    let mut key_refs = key_refs.into_iter();
    for (ask, s) in asks.zip(per_request) {
        inv.arg(s);
        if client_time {
            inv.arg(ask.now);
        }
        for k in key_refs.by_ref().take(ask.checks.len()) {
            inv.arg(k);
        }
    }
    (inv, len)
}

/// The common batch, one script of `redis.rs` per key: requests of one quota each, the same
/// quota, cost and time, every one on a key of its own. Then each key is decided on its own
/// (no request reads another's state), which `GCRA_KEYS` and `WINDOW_KEYS` do at a fraction of
/// the batch script's cost in Redis. `None` for any other batch.
fn keys_only<'a>(
    mut asks: impl Iterator<Item = &'a Ask>,
) -> Option<(ScriptInvocation<'static>, usize)> {
    let first = asks.next()?;
    let [check] = &first.checks[..] else {
        return None;
    };
    let mut keys = vec![check.key.as_str()];
    for ask in asks {
        match &ask.checks[..] {
            [c] if c.def == check.def && ask.cost == first.cost && ask.now == first.now => {
                keys.push(c.key.as_str());
            }
            _ => return None,
        }
    }
    let mut distinct: Vec<&str> = keys.clone();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() != keys.len() {
        return None;
    }
    let mut inv = keys_invocation(&check.def, first.cost, first.now);
    for k in &keys {
        inv.key(*k);
    }
    Some((inv, keys.len() * check.width()))
}
