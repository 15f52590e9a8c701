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
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::lock;
use crate::redis::driver::{Script, ScriptInvocation};
use crate::redis::{RedisConnection, RedisError, RedisErrorKind};

/// Most quota checks in one call (bounds the script's `unpack` of the keys).
const MAX_CHECKS: usize = 512;

/// Quota kinds in the script's quota definitions.
pub(crate) const WINDOW: u64 = 1;
pub(crate) const GCRA: u64 = 2;

/// The batch script.
///
/// KEYS: the distinct keys of the batch, in order of first use.
///
/// ARGV: the mode: `0`, all requests use the server's time (one `TIME`); `1`, every request
/// carries its own time (a client clock or a replay; `0` there still means the server's
/// time); `2`, "simple": the server's time, one shape, and every check on a key of its own,
/// request `i`'s checks on keys `i·n + 1 ..= i·n + n` (the common case, which then needs no
/// per-request argument at all). Then the number of quota definitions and of request shapes;
/// the definitions, five values each: kind (1 window, 2 GCRA), then window: limit, window,
/// granularity, slot bound; GCRA: interval, burst, 0, 0; the shapes: cost, number of checks,
/// that many definition indices; then (modes 0 and 1) the requests in arrival order: shape
/// index, the time (mode 1 only), one key index per check.
///
/// Reply, flat, per request and check: GCRA, one integer (the encoding of the single GCRA
/// script: used microseconds if admitted, minus the retry time if refused, -2^52 minus the
/// used microseconds if the cost exceeds the burst); window, three: remaining (`-1 -
/// remaining` if refused), reset, retry (-1: never). A request is admitted iff all its checks
/// are; only then are its writes applied, to the batch's copy of the state, which later
/// requests read. The decision steps are the Lua fragments of `redis.rs`, shared with its
/// scripts.
///
/// Cost notes (Redis CPU is the budget): library functions are read into locals once; numbers
/// are formatted in Lua with `%d` (exact below 2^53, the same text Redis would write) and
/// memoised per batch, since the TTL and the new state of fresh keys admitted at the batch's
/// time repeat, whereas Redis formats every number argument with `%.17g`; the pieces of a new
/// window state are built once per time, cost and quota.
pub(crate) const BATCH: &str = concat!(
    r#"
local call, num, fmt = redis.call, tonumber, string.format
local unpk, pk, sub, byte = struct.unpack, struct.pack, string.sub, string.byte
"#,
    lua_window_tables!(),
    r#"
local argv, keys = ARGV, KEYS
local client, simple = argv[1] == '1', argv[1] == '2'
local nq, ns = num(argv[2]), num(argv[3])
-- D: six values per definition at offset 6 (q - 1): kind, its four parameters, and the
-- GCRA capacity (interval times burst). S: the offset of each shape, then per shape: cost,
-- number of checks, the definitions' offsets in D.
local D, S = {}, {}
local a = 4
for q = 0, 6 * (nq - 1), 6 do
  D[q + 1], D[q + 2], D[q + 3] = num(argv[a]), num(argv[a + 1]), num(argv[a + 2])
  D[q + 4], D[q + 5], D[q + 6] = num(argv[a + 3]), num(argv[a + 4]), D[q + 2] * D[q + 3]
  a = a + 5
end
local o = ns
for s = 1, ns do
  local n = num(argv[a + 1])
  S[s], S[o + 1], S[o + 2] = o + 1, num(argv[a]), n
  for j = 1, n do S[o + 2 + j] = 6 * (num(argv[a + 1 + j]) - 1) end
  o = o + 2 + n
  a = a + 2 + n
end
local state = call('MGET', unpack(keys))
local clock = 0
if not client then
  local t = call('TIME')
  clock = t[1] * 1000000 + t[2]
end
local px, dirty, ndirty = {}, {}, 0
local text = {}
local ls, lc, lq = -1, -1, -1
local ones_head, ones_slot, counts_tag, counts_head, counts_slot, fresh
local reply, r = {}, 0
local stage = {}
local last, nreq, i = #argv, -1, 0
if simple then nreq = #keys / S[S[1] + 1] end
while true do
  local s, now = 1, clock
  if simple then
    if i == nreq then break end
  else
    if a > last then break end
    s = num(argv[a])
    if client then
      a = a + 1
      now = num(argv[a])
      if now == 0 then
        if clock == 0 then
          local t = call('TIME')
          clock = t[1] * 1000000 + t[2]
        end
        now = clock
      end
    end
    a = a + 1
  end
  local so = S[s]
  local cost, n = S[so], S[so + 1]
  local all, nw = true, 0
  for j = 0, n - 1 do
    local k, q = i * n + j + 1, S[so + 2 + j]
    if not simple then k = num(argv[a + j]) end
    local raw = state[k]
    if D[q + 1] == 2 then
      local T, B, BT = D[q + 2], D[q + 3], D[q + 6]
"#,
    lua_gcra_step!(),
    r#"
      r = r + 1
      reply[r] = v
      if v < 0 then
        all = false
      elseif cost > 0 then
        local tat = now + nd
        local sv = text[tat]
        if not sv then
          sv = fmt('%d', tat)
          text[tat] = sv
        end
        local ms = (nd - nd % 1000) / 1000 + 1
        local sp = text[ms]
        if not sp then
          sp = fmt('%d', ms)
          text[ms] = sp
        end
        stage[nw + 1], stage[nw + 2], stage[nw + 3] = k, sv, sp
        nw = nw + 3
      end
    else
      local N, W = D[q + 2], D[q + 3]
"#,
    lua_window_scan!(),
    r#"
      local b = 0
      if first <= m then b = at1 + W - now end
      if cost <= N and count + cost <= N then
        if cost > 0 then
          local g, bound = D[q + 4], D[q + 5]
"#,
    lua_window_widths!(),
    lua_window_stamp!(),
    r#"
          if stamp ~= ls or cost ~= lc or q ~= lq then
            ls, lc, lq = stamp, cost, q
"#,
    lua_window_fresh!(),
    r#"
          end
"#,
    lua_window_admit!(),
    r#"
          if first > m then b = stamp + W - now end
          local ttl = nn + W - now
          local ms = (ttl - ttl % 1000) / 1000 + 1
          local sp = text[ms]
          if not sp then
            sp = fmt('%d', ms)
            text[ms] = sp
          end
          stage[nw + 1], stage[nw + 2], stage[nw + 3] = k, value, sp
          nw = nw + 3
        end
        reply[r + 1], reply[r + 2], reply[r + 3] = N - count - cost, b, 0
      else
"#,
    lua_window_retry!(),
    r#"
        reply[r + 1], reply[r + 2], reply[r + 3] = -1 - rem, b, wait
        all = false
      end
      r = r + 3
    end
  end
  i = i + 1
  if not simple then a = a + n end
  if all then
    for j = 1, nw, 3 do
      local k = stage[j]
      if not px[k] then
        ndirty = ndirty + 1
        dirty[ndirty] = k
      end
      state[k], px[k] = stage[j + 1], stage[j + 2]
    end
  end
end
for i = 1, ndirty do
  local k = dirty[i]
  call('SET', keys[k], state[k], 'PX', px[k])
end
return reply
"#
);

static BATCH_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(BATCH));

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
    let mut inv = super::keys_invocation(&check.def, first.cost, first.now);
    for k in &keys {
        inv.key(*k);
    }
    Some((inv, keys.len() * check.width()))
}
