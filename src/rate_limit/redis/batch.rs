//! Natural batching: concurrent decisions of one [`RedisBackend`](super::RedisBackend) share
//! one script call (user-facing description: the backend's "Natural batching" docs).
//!
//! A [`Batcher`] lets at most `max_in_flight` script calls run at once. A decision that finds a
//! free slot and nobody waiting takes the slot ([`Turn::Alone`]) and its caller sends it at
//! once, alone, with the single-request scripts (no timer, nothing added at low load). A
//! decision that finds every slot busy joins a queue ([`Turn::Queued`]); when a call returns,
//! its slot takes the whole queue (up to `max_batch` decisions) into the next call, driven by
//! a spawned task so that no caller's future carries anyone else's decision: a caller that
//! goes away (its future dropped) loses only its own decision, and a dropped [`Slot`] still
//! hands the slot on. Under load the batches grow by themselves, to about
//! `callers / max_in_flight`.
//!
//! This module only coalesces: what a queued request is, which script call a batch of them
//! becomes and which values of the reply are each one's is the [`Batchable`] request's
//! business (the rate limiter's is `scripts::Ask`).

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::rate_limit::lock;
use crate::redis::{RedisConnection, RedisError, RedisErrorKind};

/// A request a [`Batcher`] can coalesce: how a batch of them becomes one script call whose
/// reply, a flat list of integers, holds each request's values in turn.
pub(super) trait Batchable: Send + 'static {
    /// Most [`size`](Self::size) units in one call (a lone request may exceed it).
    const MAX_SIZE: usize;

    /// This request's share of [`MAX_SIZE`](Self::MAX_SIZE).
    fn size(&self) -> usize;

    /// The number of reply values that are this request's.
    fn width(&self) -> usize;

    /// Whether a call holding this request must be the only call in flight (the rate
    /// limiter's requests that span hash slots on a cluster, decided in two steps: no other
    /// call may run between them, so that decisions stay those of the requests one by one in
    /// arrival order).
    fn exclusive(&self) -> bool;

    /// What [`call`](Self::call) needs besides the requests (shared by the batcher).
    type Ctx: Send + Sync + 'static;

    /// Decides `asks`, in order: their reply values, flat (one script call on a single
    /// server; the rate limiter's splits by hash slot on a cluster).
    fn call<'a>(
        ctx: &'a Self::Ctx,
        asks: Vec<&'a Self>,
    ) -> impl Future<Output = Result<Vec<i64>, RedisError>> + Send + 'a;
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

struct Waiting<A> {
    ask: A,
    tx: oneshot::Sender<Reply>,
    since: Instant,
}

struct Queue<A> {
    waiting: VecDeque<Waiting<A>>,
    in_flight: usize,
    /// The call in flight is exclusive (no other may start until it is done).
    exclusive: bool,
}

/// Coalesces concurrent requests into script calls (see the module docs).
pub(crate) struct Batcher<A: Batchable> {
    ctx: A::Ctx,
    queue: Mutex<Queue<A>>,
    max_in_flight: usize,
    max_batch: usize,
    /// Longest a request may wait in the queue before it fails with a timeout.
    max_wait: Duration,
}

impl<A: Batchable> fmt::Debug for Batcher<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batcher")
            .field("max_in_flight", &self.max_in_flight)
            .field("max_batch", &self.max_batch)
            .finish_non_exhaustive()
    }
}

impl<A: Batchable> Batcher<A> {
    /// A batcher whose calls may wait at most `conn`'s command timeout for a slot.
    pub(crate) fn new(
        conn: &RedisConnection,
        ctx: A::Ctx,
        max_in_flight: usize,
        max_batch: usize,
    ) -> Self {
        Self {
            max_wait: conn.command_timeout(),
            ctx,
            queue: Mutex::new(Queue {
                waiting: VecDeque::new(),
                in_flight: 0,
                exclusive: false,
            }),
            max_in_flight: max_in_flight.max(1),
            max_batch: max_batch.max(1),
        }
    }

    /// Takes a free slot for a request to be sent at once, alone, by its caller (when a slot
    /// is free and nobody waits), or queues the request `ask()` builds for the next batch.
    ///
    /// An `exclusive` request (see [`Batchable::exclusive`]) is sent alone only when no other
    /// call is in flight, and no other call starts until it is done.
    pub(crate) fn enqueue(
        self: &Arc<Self>,
        exclusive: bool,
        ask: impl FnOnce() -> A,
    ) -> Turn<'_, A> {
        let mut q = lock(&self.queue);
        let free = q.in_flight < self.max_in_flight && !q.exclusive;
        if free && q.waiting.is_empty() && (!exclusive || q.in_flight == 0) {
            q.in_flight += 1;
            q.exclusive = exclusive;
            return Turn::Alone(Slot {
                batcher: self,
                exclusive,
            });
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
    async fn call_batch(&self, batch: Vec<Waiting<A>>) {
        let len = batch.iter().map(|w| w.ask.width()).sum();
        let result = A::call(&self.ctx, batch.iter().map(|w| &w.ask).collect()).await;
        match result.and_then(|v| check_len(&v, len).map(|()| v)) {
            Ok(values) => {
                let values = Arc::new(values);
                let mut at = 0;
                for w in batch {
                    let width = w.ask.width();
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

    /// Takes the next batch from the queue, for a slot already counted in flight: requests
    /// in arrival order, up to the caps, leaving out those whose caller is gone, and stopping
    /// before an exclusive request while another call is in flight (the batch then holds the
    /// requests before it); returns it with the requests that waited too long (to fail them
    /// outside the lock). A batch holding an exclusive request makes its call exclusive.
    fn take(&self, q: &mut Queue<A>) -> (Vec<Waiting<A>>, Vec<Waiting<A>>) {
        let mut late = Vec::new();
        if q.waiting.is_empty() {
            return (Vec::new(), late);
        }
        // Sized once: a batch grown one push at a time reallocated (and moved its waiting
        // requests, a few hundred bytes each) four or five times per call.
        let mut batch = Vec::with_capacity(q.waiting.len().min(self.max_batch));
        let others = q.in_flight.saturating_sub(1);
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
            let n = w.ask.size();
            if batch.len() == self.max_batch
                || (!batch.is_empty() && checks + n > A::MAX_SIZE)
                || (w.ask.exclusive() && others > 0)
            {
                q.waiting.push_front(w);
                break;
            }
            checks += n;
            q.exclusive |= w.ask.exclusive();
            batch.push(w);
        }
        (batch, late)
    }

    fn fail_late(&self, late: Vec<Waiting<A>>) {
        for w in late {
            let _ = w.tx.send(Err(RedisError::timeout(
                "waiting for a free Redis call slot",
                self.max_wait,
            )));
        }
    }

    /// A call finished: its slot takes the queue into a new call, or is freed.
    fn pass_on(self: &Arc<Self>, exclusive: bool) {
        let mut q = lock(&self.queue);
        if exclusive {
            q.exclusive = false;
        }
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
    fn start_driver(self: &Arc<Self>, batch: Vec<Waiting<A>>) {
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
                let exclusive = batch.iter().any(|w| w.ask.exclusive());
                this.call_batch(batch).await;
                let mut q = lock(&this.queue);
                if exclusive {
                    q.exclusive = false;
                }
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
pub(crate) enum Turn<'a, A: Batchable> {
    /// Send the request now, alone, holding this slot until the reply is in.
    Alone(Slot<'a, A>),
    /// Wait for the request's batch.
    Queued(Pending),
}

/// A call slot held by a request sent alone. Dropping it (after the reply, or when the
/// caller's future is dropped mid-call) passes the slot on to the requests queued meanwhile.
pub(crate) struct Slot<'a, A: Batchable> {
    batcher: &'a Arc<Batcher<A>>,
    exclusive: bool,
}

impl<A: Batchable> Drop for Slot<'_, A> {
    fn drop(&mut self) {
        self.batcher.pass_on(self.exclusive);
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
struct DriverGuard<'a, A: Batchable> {
    batcher: &'a Arc<Batcher<A>>,
}

impl<A: Batchable> Drop for DriverGuard<'_, A> {
    fn drop(&mut self) {
        let mut q = lock(&self.batcher.queue);
        q.in_flight -= 1;
        q.exclusive = false;
        let waiting = std::mem::take(&mut q.waiting);
        drop(q);
        drop(waiting);
    }
}
