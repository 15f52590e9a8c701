//! The Redis backend: every quota of a request decided atomically by a Lua script, in one
//! round trip; concurrent requests share script calls (natural batching, `redis/batch.rs`).

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::{Arc, LazyLock, Mutex};

use super::decision::{NEVER, QuotaDecision};
use super::key::LimitKey;
use super::quota::{Meaning, Quota, QuotaError};
use super::{Names, lock, window};
use crate::clock::Clock;
use crate::redis::driver::{Script, ScriptInvocation};
use crate::redis::{RedisConnection, RedisError, RedisErrorKind};

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "rampart:rl:";

/// Default bound on the deny cache.
pub const DEFAULT_DENY_CACHE: usize = 100_000;

const DENY_SHARDS: usize = 16;

/// Default bound on concurrent script calls when batching.
const DEFAULT_MAX_IN_FLIGHT: usize = 2;

/// Default bound on the decisions of one batched call.
const DEFAULT_MAX_BATCH: usize = 128;

// The Lua twins of `gcra::decide` and `window::decide`/`admit`. Every number they handle stays
// below 2^53, where Lua's doubles are exact integers, and their only roundings (a window's
// granularity, the TTL in milliseconds) are corrected to exact integers, so they compute
// exactly what the Rust functions compute: tested by replaying traces through both.
//
// Common arguments: ARGV[1] the cost; ARGV[2] "now" in microseconds, 0 meaning the server's
// `TIME` (production; a non-zero value is for tests replaying a trace on a controlled clock).
// Each key expires (`PX`, rounded up) when its bucket is full again.
//
// GCRA state: the TAT as a decimal integer.
//
// Window state: the (time, count) slots, oldest first, in a compact binary form, so that a
// state of a few slots fits Redis's inline strings (at most 44 bytes: "10/minute" takes 44,
// "10 per 10 s" 35), which makes it markedly cheaper to read and write than a long one:
//
// * byte 1, the tag: 128 + 16·(wt - 1) + wc, where wt (1..=6) is the width of a slot's time
//   and wc (0..=4) that of a count, in bytes; wc = 0 means every count is 1 (no counts are
//   stored, the usual case);
// * `7 - wt` bytes: the newest slot's time divided by M = 256^wt (the "high" part);
// * `wc` bytes: the total count (absent when wc = 0: the total is the number of slots);
// * the slots, `wt + wc` bytes each: the time modulo M, then the count.
//
// All integers are little-endian. A slot's time is the newest time minus (newest - stored)
// mod M, exact because every state spans less than M: the widths are chosen from the quota,
// M >= window + granularity, and a state never spans more than window + granularity - 1 (the
// slots kept are inside the window, and a new slot is recorded at most a granule late; a
// clock stepping back records at the newest slot's time, which spans nothing more). So an
// admission appends a slot and rewrites the header, never the other slots: the new state is
// the new header, a slice of the old string, and the new slot. A state in another form (a
// changed quota, a cost above 1 or two admissions at one time in a state without counts) is
// re-encoded, slot by slot, with wider times if the clock stepped back across a quota change
// (the one way to span more). Anything unreadable (another meaning's state) reads as no
// admission.
//
// Redis CPU is the budget, and the Lua interpreter is a third of it (the rest is the key's
// read and write, which every design with per-key expiry pays): library functions are read
// into locals (`unpk`, `pk`, `sub`, `byte`, which every script using the window fragments
// below defines), formats and constant strings are built once per call, a decision unpacks
// only the slots it needs (two in the usual case), no closures, no table per key.

/// Lua shared by the GCRA scripts: one decision (`gcra::decide`) for the state in `raw` (the
/// TAT, or nothing), with `T` the interval, `B` the burst and `BT = B·T`. Leaves `d` (the
/// microseconds in use before), `nd` (after admitting `cost`) and `v`, the reply integer of
/// `GCRA_KEYS`: `nd` if admitted (`v >= 0` exactly then), minus the retry time if refused,
/// -2^52 minus `d` if the cost exceeds the burst.
macro_rules! lua_gcra_step {
    () => {
        r#"
local d = 0
if raw then
  local tat = tonumber(raw) or 0
  if tat > now then d = tat - now end
end
local nd = d + cost * T
local v = nd
if cost > B then
  v = -4503599627370496 - d
elseif nd > BT then
  v = BT - nd
end
"#
    };
}

/// Lua shared by the window scripts, once per script: the format strings (`F[w]`, an unsigned
/// integer of `w` bytes), the powers of 256 (`P[w]`) and the per-tag format memos.
macro_rules! lua_window_tables {
    () => {
        r#"
local F = {'<I1', '<I2', '<I3', '<I4', '<I5', '<I6', '<I7'}
local P = {256, 65536, 16777216, 4294967296, 1099511627776, 281474976710656}
local HF, FS = {}, {}
"#
    };
}

/// Lua shared by the window scripts: the state's widths for a quota (limit `N`, window `W`,
/// granularity `g`). Leaves `wt0`, `wc0` and `M0 = 256^wt0 >= W + g`.
macro_rules! lua_window_widths {
    () => {
        r#"
local wt0, wc0 = 1, 1
while P[wt0] < W + g do wt0 = wt0 + 1 end
while P[wc0] <= N do wc0 = wc0 + 1 end
local M0 = P[wt0]
"#
    };
}

/// Lua shared by the window scripts: the time an admission at `now` is recorded at
/// (`window::stamp`), for granularity `g`. Leaves `stamp`.
macro_rules! lua_window_stamp {
    () => {
        r#"
local stamp = now
if g > 1 then
  local rr = now % g
  if rr < 0 then rr = rr + g elseif rr >= g then rr = rr - g end
  if rr > 0 then stamp = now - rr + g end
end
"#
    };
}

/// Lua shared by the window scripts: the pieces of a state written at `stamp` with `cost`
/// (needs the widths). Assigns (the script declares them) `ones_head` (tag and high part of a
/// state without counts), `ones_slot` (its new slot), `counts_tag`, `counts_head`,
/// `counts_slot` (the same with counts of `wc0` bytes) and `fresh`, the state holding only the
/// new slot.
macro_rules! lua_window_fresh {
    () => {
        r#"
local high0 = pk(F[7 - wt0], (stamp - stamp % M0) / M0)
ones_head = string.char(112 + 16 * wt0) .. high0
ones_slot = pk(F[wt0], stamp % M0)
counts_tag = 112 + 16 * wt0 + wc0
counts_head = string.char(counts_tag) .. high0
counts_slot = pk(F[wt0] .. sub(F[wc0], 2), stamp % M0, cost)
if cost == 1 then
  fresh = ones_head .. ones_slot
else
  fresh = counts_head .. pk(F[wc0], cost) .. counts_slot
end
"#
    };
}

/// Lua shared by the window scripts: decodes the state in `raw` and skips the slots that
/// have left the window (`W` microseconds before `now`). Leaves `m` (slots; 0 if none or
/// unreadable), `first` (oldest live slot), `at1`, `c1` (its time and count, if `first <= m`),
/// `count` (live admissions), `newest` and `lastc` (the newest slot's time and count), and the
/// form: `tag`, `wt`, `wc`, `hz` (header bytes), `ss` (slot bytes), `M`.
macro_rules! lua_window_scan {
    () => {
        r#"
local m, total, first, gone, at1, c1 = 0, 0, 1, 0, 0, 0
local tag, wt, wc, hz, ss, M, newest, lastc = -1, 1, 0, 0, 0, 1, 0, 0
local len = raw and #raw or 0
if len > 1 then
  tag = byte(raw, 1)
  local t = tag - 128
  wc = t % 16
  wt = (t - wc) / 16 + 1
  hz, ss = 8 - wt + wc, wt + wc
  if t >= 0 and wt <= 6 and wc <= 4 and len > hz and (len - hz) % ss == 0 then
    m, M = (len - hz) / ss, P[wt]
    local hf = HF[tag]
    if not hf then
      local c = wc > 0 and sub(F[wc], 2) or ''
      hf = F[7 - wt] .. c .. sub(F[wt], 2) .. c
      HF[tag], FS[tag] = hf, F[wt] .. c
    end
    local high, tm
    if wc > 0 then
      high, total, at1, c1 = unpk(hf, raw, 2)
      tm, lastc = unpk(FS[tag], raw, len - ss + 1)
    else
      high, at1 = unpk(hf, raw, 2)
      total, c1, lastc = m, 1, 1
      tm = unpk(F[wt], raw, len - wt + 1)
    end
    newest = high * M + tm
    at1 = newest - (newest - at1) % M
    while at1 + W <= now do
      gone = gone + c1
      first = first + 1
      if first > m then break end
      if wc > 0 then
        at1, c1 = unpk(FS[tag], raw, hz + (first - 1) * ss + 1)
      else
        at1 = unpk(F[wt], raw, hz + (first - 1) * wt + 1)
      end
      at1 = newest - (newest - at1) % M
    end
  else
    tag, wc = -1, 0
  end
end
local count = total - gone
"#
    };
}

/// Lua shared by the window scripts: the new state after admitting `cost` at `stamp` (needs
/// the scan's variables, `bound` the slot bound, the widths and the fresh pieces). Leaves
/// `value` (the new state) and `nn` (the time of its newest slot).
macro_rules! lua_window_admit {
    () => {
        r#"
local live = m - first + 1
local merge = live > 0 and stamp <= newest
local drop = live - bound
if not merge then drop = drop + 1 end
local kept = count + cost
if drop > 0 then
  kept = kept - c1
  for j = first + 1, first + drop - 1 do
    if wc > 0 then
      local _, c = unpk(FS[tag], raw, hz + (j - 1) * ss + 1)
      kept = kept - c
    else
      kept = kept - 1
    end
  end
else
  drop = 0
end
local from, value, nn = first + drop, nil, stamp
local p = hz + (from - 1) * ss + 1
if merge then nn = newest end
if from > m then
  value = fresh
elseif tag == counts_tag then
  if merge then
    value = sub(raw, 1, 8 - wt) .. pk(F[wc], kept) .. sub(raw, p, len - wc) .. pk(F[wc], lastc + cost)
  else
    value = counts_head .. pk(F[wc], kept) .. sub(raw, p) .. counts_slot
  end
elseif tag == counts_tag - wc0 and cost == 1 and not merge then
  value = ones_head .. sub(raw, p) .. ones_slot
else
  -- Another form: re-encode the kept slots (with the new admission) in the quota's form.
  local ts, cs, n = {}, {}, 0
  for j = from, m do
    local q = hz + (j - 1) * ss + 1
    local t, c = unpk(F[wt], raw, q), 1
    if wc > 0 then c = unpk(F[wc], raw, q + wt) end
    n = n + 1
    ts[n], cs[n] = newest - (newest - t) % M, c
  end
  if merge then
    cs[n] = cs[n] + cost
  else
    n = n + 1
    ts[n], cs[n] = stamp, cost
  end
  -- Only a clock stepping back (the newest slot ahead of now) across a quota change can span
  -- M0 or more: the times are then written wider. Slots more than 2^48 µs (8.9 years) older
  -- than the newest, which only a clock stepping back by more than that could keep, are
  -- forgotten.
  local s, ones, w, v = 1, true, 0, wt0
  while P[v] <= nn - ts[s] and v < 6 do v = v + 1 end
  while P[v] <= nn - ts[s] do
    kept = kept - cs[s]
    s = s + 1
  end
  for j = s, n do
    if cs[j] ~= 1 then ones = false end
  end
  if not ones then
    w = wc0
    while P[w] <= kept do w = w + 1 end
  end
  local Mv = P[v]
  local parts = {string.char(112 + 16 * v + w), pk(F[7 - v], (nn - nn % Mv) / Mv)}
  if w > 0 then parts[3] = pk(F[w], kept) end
  for j = s, n do
    parts[#parts + 1] = pk(F[v], ts[j] % Mv)
    if w > 0 then parts[#parts + 1] = pk(F[w], cs[j]) end
  end
  value = table.concat(parts)
end
"#
    };
}

/// Lua shared by the window scripts, for a refused request: `rem`, the units left, and
/// `wait`, the time until `cost` fits (-1: never; needs the scan's variables, `N` and `b`,
/// the time until the oldest live slot leaves).
macro_rules! lua_window_retry {
    () => {
        r#"
local rem = N - count
if rem < 0 then rem = 0 end
local wait = -1
if cost <= N then
  local excess, acc = count + cost - N, 0
  wait = b
  if wc == 0 then
    local j = first + excess - 1
    if j <= m then
      local t = unpk(F[wt], raw, hz + (j - 1) * wt + 1)
      wait = newest - (newest - t) % M + W - now
    end
  else
    for j = first, m do
      local t, c = unpk(FS[tag], raw, hz + (j - 1) * ss + 1)
      acc = acc + c
      if acc >= excess then
        wait = newest - (newest - t) % M + W - now
        break
      end
    end
  end
end
"#
    };
}

/// The start of the per-key scripts: locals, cost, time, and every key's state (one `MGET`).
macro_rules! lua_keys_prelude {
    () => {
        r#"
local call, keys = redis.call, KEYS
local unpk, pk, sub, byte = struct.unpack, struct.pack, string.sub, string.byte
local cost, now = tonumber(ARGV[1]), tonumber(ARGV[2])
if now == 0 then
  local t = call('TIME')
  now = t[1] * 1000000 + t[2]
end
local state = call('MGET', unpack(keys))
local reply = {}
"#
    };
}

mod batch;

use self::batch::{Ask, Batcher, Check, Turn};

/// One GCRA quota for one or more distinct keys, each decided on its own (a single request,
/// or a batch of single-quota requests on keys of their own). ARGV[3] interval, ARGV[4] burst.
/// Reply, one integer per key (cheaper for Redis to build and send than a table): admitted,
/// the microseconds of the bucket in use (>= 0); refused, minus the retry time (<= -1);
/// refused because the cost exceeds the burst, -2^52 minus the microseconds in use. The
/// remaining count and reset time are derived from these on the client.
const GCRA_KEYS: &str = concat!(
    lua_keys_prelude!(),
    r#"
local T, B = tonumber(ARGV[3]), tonumber(ARGV[4])
local BT, inc = B * T, cost * T
-- The state and TTL of a key whose bucket was full (the common case), formatted once.
local fresh = string.format('%d', now + inc)
local fresh_ms = string.format('%d', (inc - inc % 1000) / 1000 + 1)
for i = 1, #keys do
  local raw = state[i]
"#,
    lua_gcra_step!(),
    r#"
  reply[i] = v
  if v < 0 or cost == 0 then
  elseif d == 0 then
    call('SET', keys[i], fresh, 'PX', fresh_ms)
  else
    call('SET', keys[i], now + nd, 'PX', (nd - nd % 1000) / 1000 + 1)
  end
end
return reply
"#
);

/// One window quota for one or more distinct keys, each decided on its own. ARGV[3] limit,
/// ARGV[4] window, ARGV[5] granularity, ARGV[6] slot bound.
/// State: the compact form described above; a decision unpacks only the slots it needs (the
/// expired prefix, the oldest live one, the newest) and an admission rewrites the string by
/// slicing, so the cost does not grow with the number of live admissions.
/// Reply, three integers per key: remaining (`-1 - remaining` if refused), reset, retry (-1:
/// never; 0 if admitted).
const WINDOW_KEYS: &str = concat!(
    lua_keys_prelude!(),
    r#"
local N, W = tonumber(ARGV[3]), tonumber(ARGV[4])
local g, bound = tonumber(ARGV[5]), tonumber(ARGV[6])
"#,
    lua_window_tables!(),
    lua_window_widths!(),
    lua_window_stamp!(),
    r#"
local ones_head, ones_slot, counts_tag, counts_head, counts_slot, fresh
"#,
    lua_window_fresh!(),
    r#"
-- The TTL of a state whose newest slot is the one added now (all but merges), formatted once.
local ttl = stamp + W - now
local stamp_ms = string.format('%d', (ttl - ttl % 1000) / 1000 + 1)
local r = 0
for i = 1, #keys do
  local raw = state[i]
"#,
    lua_window_scan!(),
    r#"
  local b = 0
  if first <= m then b = at1 + W - now end
  if cost <= N and count + cost <= N then
    if cost > 0 then
"#,
    lua_window_admit!(),
    r#"
      if first > m then b = stamp + W - now end
      if nn == stamp then
        call('SET', keys[i], value, 'PX', stamp_ms)
      else
        ttl = nn + W - now
        call('SET', keys[i], value, 'PX', (ttl - ttl % 1000) / 1000 + 1)
      end
    end
    reply[r + 1], reply[r + 2], reply[r + 3] = N - count - cost, b, 0
  else
"#,
    lua_window_retry!(),
    r#"
    reply[r + 1], reply[r + 2], reply[r + 3] = -1 - rem, b, wait
  end
  r = r + 3
end
return reply
"#
);

/// Several quotas of one request, all or nothing. Then five values per quota: kind (1 window,
/// 2 GCRA) and its parameters (window: limit, window, granularity, slot bound; GCRA: interval,
/// burst, 0, 0). Reply: {all admitted, then per quota: admitted, a, b, retry (-1: never)} with
/// (a, b) = (remaining, reset) for a window and (microseconds in use, 0) for GCRA.
const MULTI: &str = concat!(
    lua_keys_prelude!(),
    r#"
reply[1] = 1
local writes = {}
"#,
    lua_window_tables!(),
    r#"
for i = 1, #keys do
  local p = 2 + (i - 1) * 5
  local raw = state[i]
  local ok, a, b, retry = 0, 0, 0, 0
  if tonumber(ARGV[p + 1]) == 2 then
    local T, B = tonumber(ARGV[p + 2]), tonumber(ARGV[p + 3])
    local BT = B * T
"#,
    lua_gcra_step!(),
    r#"
    if v >= 0 then
      ok, a = 1, nd
      if cost > 0 then writes[#writes + 1] = {keys[i], now + nd, nd} end
    else
      a = d
      if cost <= B then retry = nd - BT else retry = -1 end
    end
  else
    local N, W = tonumber(ARGV[p + 2]), tonumber(ARGV[p + 3])
    local g, bound = tonumber(ARGV[p + 4]), tonumber(ARGV[p + 5])
"#,
    lua_window_scan!(),
    r#"
    if first <= m then b = at1 + W - now end
    if cost <= N and count + cost <= N then
      ok, a = 1, N - count - cost
      if cost > 0 then
"#,
    lua_window_widths!(),
    lua_window_stamp!(),
    r#"
        local ones_head, ones_slot, counts_tag, counts_head, counts_slot, fresh
"#,
    lua_window_fresh!(),
    lua_window_admit!(),
    r#"
        if first > m then b = stamp + W - now end
        writes[#writes + 1] = {keys[i], value, nn + W - now}
      end
    else
"#,
    lua_window_retry!(),
    r#"
      a, retry = rem, wait
    end
  end
  if ok == 0 then reply[1] = 0 end
  local r = #reply
  reply[r + 1], reply[r + 2], reply[r + 3], reply[r + 4] = ok, a, b, retry
end
if reply[1] == 1 then
  for _, w in ipairs(writes) do
    call('SET', w[1], w[2], 'PX', (w[3] - w[3] % 1000) / 1000 + 1)
  end
end
return reply
"#
);

/// `GCRA_KEYS`'s reply floor for "can never be admitted" (-2^52).
const IMPOSSIBLE: i64 = -(1 << 52);

static GCRA_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(GCRA_KEYS));
static WINDOW_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(WINDOW_KEYS));
static MULTI_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(MULTI));

/// Quota state in Redis, shared by every instance: limits are global.
///
/// * **One round trip per decision**: all the quotas of a request are decided by one Lua
///   script (`EVALSHA`, loading it on `NOSCRIPT`), atomically: a refused request consumes
///   nothing. The script computes exactly the pure functions the memory backend uses, with the
///   Redis server's clock (`TIME`, integer microseconds), so instances with skewed clocks
///   agree. Under load, concurrent decisions share script calls: see
///   [natural batching](#natural-batching) below.
/// * **Small state that cleans itself up**: GCRA keeps one integer per key (16 digits); a
///   window keeps at most `min(limit, max_slots)` (time, count) slots in a compact binary form:
///   times modulo 256^w under one shared high part, w from the window (3 bytes up to 16.7 s, 4
///   up to 71 minutes), and counts only once one differs from 1. "10/minute" takes at most 44
///   bytes, so Redis stores it inline, "100/hour" at most 404. Each key expires (`PX`) when
///   its bucket is full again.
/// * **Key names** are `<prefix>{<key>}:<quota name>` (e.g. `rampart:rl:{ip:203.0.113.7}:ip`):
///   the hash tag is the client key, so all quotas of one client key live in one Redis Cluster
///   slot. A request whose quotas use *different* keys (per IP and per session) touches
///   several slots: the single-script design needs a single server (plain or TLS, including
///   managed single-shard services), the supported deployment today. On a Cluster, such a
///   request would need one script per slot, losing cross-key atomicity.
/// * **Exact local deny cache**: once Redis answers that a key has no unit left until `t`, this
///   instance answers that key locally until `t`, with no round trip. Exact because limiter
///   state only moves forward (other instances can only add admissions): no unit can come
///   back before `t`. `t` is measured from when the request was *sent*, so the cache never
///   outlives the truth. Bounded ([`RedisBackendBuilder::deny_cache_capacity`]).
///
/// Failures (timeouts, connection loss, the connection's circuit breaker) are handled by the
/// layer's [`FailureMode`](super::FailureMode).
///
/// # Natural batching
///
/// On by default ([`RedisBackendBuilder::batching`]). Redis spends much of a rate-limit
/// script call on the call itself (the `EVALSHA`, `TIME`, argument handling) rather than on
/// the decision, so concurrent decisions share calls:
///
/// * At most [2 script calls](RedisBackendBuilder::max_calls_in_flight) are in flight per
///   backend. A decision that finds a free slot and nobody waiting is sent **at once**, by its
///   own task, alone, with the single-request script: exactly the call made without batching.
///   There is no timer: at low load nothing waits and nothing changes.
/// * A decision that finds both slots busy queues. When a call returns, its slot takes the
///   whole queue (up to [128 decisions](RedisBackendBuilder::max_batch)) into **one**
///   `EVALSHA`, driven by a spawned task. Under load the batches grow by themselves, to about
///   half the number of concurrent callers.
/// * A batch reads the server's `TIME` once (all decisions of a batch are taken at one
///   instant) and every distinct key with one `MGET`, and writes each changed key once (`SET
///   key value PX ttl`; refused requests write nothing). The common batch, requests of one
///   quota on keys of their own (one limit per client IP, say), runs the single-request
///   script with all its keys, each decided on its own. Any other batch (IP plus session
///   quotas, one key twice) runs a general script that decides the requests **in arrival
///   order**, each one's quotas all or nothing against the state left by the requests before
///   it. Either way the decisions are those of the same requests sent one by one (tested, on
///   a client clock, against single calls). Key names and state encodings are those of the
///   single-request scripts: instances with batching on and off share state.
/// * Failures: an error or timeout of a call fails every decision in it, each through the
///   layer's failure mode. The circuit breaker sees one call per batch. A queued decision that
///   waited longer than the command timeout for a slot fails as a timeout, so a decision waits
///   at most about two command timeouts (plus the connect timeout when a connection must be
///   made). The deny cache answers before anything is queued.
/// * A caller that goes away (its future dropped) loses only its own decision: a queued one
///   is left out of its batch (it consumes nothing), one in flight is decided and its answer
///   dropped; a dropped caller that held a slot hands it on to the queue.
/// * Latency: at low load, none added. Under load, a decision waits for at most one call in
///   flight to return before it is sent, in exchange for far fewer, larger calls, which keeps
///   Redis and the connection below saturation. On the 2-core VM this crate is measured on
///   (`limiter_bench`, GCRA, 100 000 keys, local `redis-server`, batching on vs off): 1
///   caller, p50 83 µs vs 85 µs; 8 callers, p50 171 µs vs 143 µs and 48 000 vs 54 000
///   decisions/s (while Redis has room, the wait for a slot costs more than it saves); 64
///   callers, p50 317 µs vs 451 µs, p99 0.68 ms vs 0.85 ms, 199 000 vs 137 000 decisions/s.
/// * Throughput and Redis CPU (`cargo bench --all-features --bench rate_limit_redis`, 64
///   callers, 100 000 keys, interleaved in one run; Redis CPU from `INFO commandstats`,
///   `usec_per_call` of `EVALSHA` divided by the decisions per call): a redis_rate-style float
///   GCRA script called once per decision did 113 000 decisions/s at 5.9 µs of Redis CPU per
///   decision; batched GCRA 224 000/s (2.0x) with 21 decisions per call at 2.5 µs (0.43x);
///   batched window (N = 10) 185 000/s (1.6x) at 3.5 µs (0.60x); without batching 150 000/s
///   at 5.4 µs and 104 000/s at 8.1 µs. What remains per decision is mostly the key's read
///   and its `SET` with an expiry, which every design with per-key expiry pays, and the
///   interpreter's share of the decision.
/// * Redis Cluster: a batch holds keys of many clients, hence many hash slots; like the
///   multi-key requests above, it needs a single server (plain or TLS). Cluster support would
///   batch per slot. `batching(false)` restores one call per decision.
///
/// ```no_run
/// use tower_rampart::net::TrustedProxies;
/// use tower_rampart::rate_limit::{FailureMode, Key, Quota, RateLimitLayer, RedisBackend};
/// use tower_rampart::redis::RedisConfig;
///
/// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let conn = RedisConfig::from_url("redis://127.0.0.1:6379")?.connect_lazy()?;
/// let layer = RateLimitLayer::builder()
///     .quota("ip", Quota::parse("10/minute")?, Key::client_ip(TrustedProxies::none()))
///     .backend(RedisBackend::new(conn))
///     .failure_mode(FailureMode::Local)
///     .build()?;
/// # let _ = layer; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    conn: RedisConnection,
    prefix: String,
    clock: Option<Arc<dyn Clock>>,
    deny: DenyCache,
    names: Names,
    /// `None`: one script call per decision.
    batcher: Option<Arc<Batcher>>,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("conn", &self.inner.conn)
            .field("prefix", &self.inner.prefix)
            .field("client_clock", &self.inner.clock.is_some())
            .field("deny_cache_capacity", &self.inner.deny.capacity)
            .field("batching", &self.inner.batcher)
            .finish()
    }
}

/// Builder of a [`RedisBackend`].
#[derive(Debug, Clone)]
pub struct RedisBackendBuilder {
    conn: RedisConnection,
    prefix: String,
    deny_cache: usize,
    clock: Option<Arc<dyn Clock>>,
    batching: bool,
    max_in_flight: usize,
    max_batch: usize,
}

impl RedisBackendBuilder {
    /// Prefix of every key name (default `"rampart:rl:"`). Layers that must share quotas
    /// (several instances of one service) use the same prefix and quota names.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Bound on the local deny cache (default 100 000 keys; 0 disables it).
    pub fn deny_cache_capacity(mut self, n: usize) -> Self {
        self.deny_cache = n;
        self
    }

    /// Decides at `clock`'s time instead of the Redis server's `TIME`.
    ///
    /// For tests and replays on a [`ManualClock`](crate::clock::ManualClock) only: in
    /// production every instance's clock would have to agree to the microsecond, which is the
    /// problem the server clock solves.
    pub fn client_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Coalesces concurrent decisions into shared script calls (default on; see
    /// [natural batching](RedisBackend#natural-batching)). Off, every decision is one script
    /// call of its own.
    pub fn batching(mut self, on: bool) -> Self {
        self.batching = on;
        self
    }

    /// Most script calls in flight at once when batching (default 2, at least 1): a
    /// decision that finds a free slot and no queue is sent at once, alone; the others queue
    /// for the next free slot.
    ///
    /// The trade-off, measured with `limiter_bench` (GCRA, 100 000 keys, local Redis, 2-core
    /// VM): with 8 callers, 4 slots gave 58 000 decisions/s at p50 130 µs against 50 000 at
    /// 165 µs with 2; with 64 callers both gave 200 000/s at p50 about 310 µs, but 4 slots
    /// halve the batches (11 decisions per call instead of 21), which cost Redis about 8% more
    /// CPU per decision. Raise it when Redis has CPU to spare and latency under moderate load
    /// matters more.
    pub fn max_calls_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// Most decisions in one batched call (default 128, at least 1).
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    /// Builds the backend.
    pub fn build(self) -> RedisBackend {
        let batcher = self.batching.then(|| {
            Arc::new(Batcher::new(
                self.conn.clone(),
                self.max_in_flight,
                self.max_batch,
            ))
        });
        RedisBackend {
            inner: Arc::new(Inner {
                batcher,
                conn: self.conn,
                prefix: self.prefix,
                clock: self.clock,
                deny: DenyCache::new(self.deny_cache),
                names: Names::default(),
            }),
        }
    }
}

/// One quota check of a multi-quota decision.
pub(crate) struct RedisItem<'a> {
    pub(crate) id: u32,
    pub(crate) name: &'a str,
    pub(crate) quota: &'a Quota,
    pub(crate) key: &'a LimitKey,
}

impl RedisBackend {
    /// A backend with the default prefix and deny cache.
    pub fn new(conn: RedisConnection) -> Self {
        Self::builder(conn).build()
    }

    /// A builder.
    pub fn builder(conn: RedisConnection) -> RedisBackendBuilder {
        RedisBackendBuilder {
            conn,
            prefix: DEFAULT_PREFIX.to_owned(),
            deny_cache: DEFAULT_DENY_CACHE,
            clock: None,
            batching: true,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_batch: DEFAULT_MAX_BATCH,
        }
    }

    /// The connection.
    pub fn connection(&self) -> &RedisConnection {
        &self.inner.conn
    }

    /// A limiter for one named quota that asks Redis on every call (no deny cache, no failure
    /// mode: errors are returned).
    pub fn keyed(&self, name: &str, quota: Quota) -> Result<RedisKeyedLimiter, QuotaError> {
        quota.validate()?;
        Ok(RedisKeyedLimiter {
            backend: self.clone(),
            name: name.into(),
            id: self.intern(name),
            quota,
        })
    }

    /// Number of keys in the deny cache.
    pub fn deny_cache_len(&self) -> usize {
        self.inner.deny.len()
    }

    /// The Redis key holding the state of quota `name` for `key`.
    pub fn key_name(&self, name: &str, key: &LimitKey) -> String {
        format!("{}{{{key}}}:{name}", self.inner.prefix)
    }

    /// Interns a quota name: quotas of the same name share buckets.
    pub(crate) fn intern(&self, name: &str) -> u32 {
        self.inner.names.intern(name)
    }

    /// A denial known locally for a request of cost >= 1 (see the deny cache above).
    pub(crate) fn cached_denial(&self, id: u32, key: &LimitKey, now: u64) -> Option<QuotaDecision> {
        let until = self.inner.deny.get(id, key, now)?;
        let wait = until - now;
        Some(QuotaDecision::new(false, 0, wait, wait))
    }

    /// Decides every item in one script call. `sent_at` (local clock) anchors deny-cache
    /// entries.
    pub(crate) async fn decide(
        &self,
        items: &[RedisItem<'_>],
        cost: u64,
        sent_at: u64,
    ) -> Result<(bool, Vec<QuotaDecision>), RedisError> {
        let now = self.inner.clock.as_ref().map_or(0, |c| c.now_micros());
        let (all, decisions) = self.run(items, cost, now).await?;
        if cost > 0 {
            for (item, d) in items.iter().zip(&decisions) {
                if d.remaining() == 0 && d.reset_us() > 0 {
                    self.inner.deny.put(
                        item.id,
                        item.key,
                        sent_at.saturating_add(d.reset_us()),
                        sent_at,
                    );
                }
            }
        }
        Ok((all, decisions))
    }

    async fn run(
        &self,
        items: &[RedisItem<'_>],
        cost: u64,
        now: u64,
    ) -> Result<(bool, Vec<QuotaDecision>), RedisError> {
        if let Some(batcher) = &self.inner.batcher {
            let ask = || Ask {
                checks: items
                    .iter()
                    .map(|item| Check {
                        key: self.key_name(item.name, item.key),
                        def: definition(item.quota),
                    })
                    .collect(),
                cost,
                now,
            };
            match batcher.enqueue(ask) {
                Turn::Alone(slot) => {
                    // Nobody waiting: this call goes out now, alone, with the single-request
                    // scripts (exactly the call made without batching); the slot is passed
                    // on when it is dropped, at the end of the call or if this future is.
                    let decided = self.run_alone(items, cost, now).await;
                    drop(slot);
                    return decided;
                }
                Turn::Queued(pending) => {
                    let answer = pending.answer().await?;
                    return decode(items, cost, answer.values());
                }
            }
        }
        self.run_alone(items, cost, now).await
    }

    /// One script call for one request (`GCRA_KEYS` or `WINDOW_KEYS` with one key, or `MULTI`).
    async fn run_alone(
        &self,
        items: &[RedisItem<'_>],
        cost: u64,
        now: u64,
    ) -> Result<(bool, Vec<QuotaDecision>), RedisError> {
        let protocol = |n: usize| {
            RedisError::new(
                RedisErrorKind::Protocol,
                format!("rate limit script replied {n} values"),
            )
        };
        let gcra = |q: &Quota, allowed: bool, used: i64, r: i64| {
            QuotaDecision::gcra(
                allowed,
                num(used),
                q.emission_interval_us(),
                q.burst_size(),
                retry(r),
            )
        };
        if let [item] = items {
            let mut inv = keys_invocation(&definition(item.quota), cost, now);
            inv.key(self.key_name(item.name, item.key));
            let reply: Vec<i64> = self.inner.conn.invoke_script(&inv).await?;
            if reply.len() != width(item.quota) {
                return Err(protocol(reply.len()));
            }
            return decode(items, cost, &reply);
        }
        let mut inv = MULTI_SCRIPT.prepare_invoke();
        for item in items {
            inv.key(self.key_name(item.name, item.key));
        }
        inv.arg(cost).arg(now);
        for item in items {
            let q = item.quota;
            match q.meaning() {
                Meaning::Window => inv
                    .arg(1)
                    .arg(q.limit)
                    .arg(q.window_us)
                    .arg(q.granularity_us())
                    .arg(window::max_slots(q)),
                Meaning::Gcra => inv
                    .arg(2)
                    .arg(q.emission_interval_us())
                    .arg(q.burst_size())
                    .arg(0)
                    .arg(0),
            };
        }
        let reply: Vec<i64> = self.inner.conn.invoke_script(&inv).await?;
        if reply.len() != 1 + 4 * items.len() {
            return Err(protocol(reply.len()));
        }
        let decisions = reply[1..]
            .chunks_exact(4)
            .zip(items)
            .map(|(c, item)| match item.quota.meaning() {
                Meaning::Gcra => gcra(item.quota, c[0] == 1, c[1], c[3]),
                Meaning::Window => QuotaDecision::new(c[0] == 1, num(c[1]), num(c[2]), retry(c[3])),
            })
            .collect();
        Ok((reply[0] == 1, decisions))
    }
}

/// The call of `GCRA_KEYS` or `WINDOW_KEYS` (one quota, keys each decided on their own) for
/// the quota of [`definition`] `def`, without its keys.
pub(crate) fn keys_invocation(def: &[u64; 5], cost: u64, now: u64) -> ScriptInvocation<'static> {
    let (script, params) = if def[0] == batch::GCRA {
        (&*GCRA_SCRIPT, &def[1..3])
    } else {
        (&*WINDOW_SCRIPT, &def[1..5])
    };
    let mut inv = script.prepare_invoke();
    inv.arg(cost).arg(now).arg(params);
    inv
}

/// Values a decision of `q` takes in a reply of `GCRA_KEYS`, `WINDOW_KEYS` or the batch script.
pub(crate) fn width(q: &Quota) -> usize {
    match q.meaning() {
        Meaning::Gcra => 1,
        Meaning::Window => 3,
    }
}

fn num(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A retry time from a script (-1: never).
fn retry(v: i64) -> u64 {
    if v < 0 { NEVER } else { num(v) }
}

/// A GCRA decision from its one-integer reply (see `GCRA_KEYS`).
fn gcra_reply(q: &Quota, cost: u64, reply: i64) -> QuotaDecision {
    let (t, b) = (q.emission_interval_us(), q.burst_size());
    match reply {
        used @ 0.. => QuotaDecision::gcra(true, num(used), t, b, 0),
        ..=IMPOSSIBLE => QuotaDecision::gcra(false, num(IMPOSSIBLE - reply), t, b, NEVER),
        minus_retry => {
            // Refused: in use = retry + burst·T - cost·T.
            let retry = num(-minus_retry);
            let used = (retry + b * t).saturating_sub(cost.saturating_mul(t));
            QuotaDecision::gcra(false, used, t, b, retry)
        }
    }
}

/// A quota as the batch script's definition: kind, then its four parameters.
fn definition(q: &Quota) -> [u64; 5] {
    match q.meaning() {
        Meaning::Window => [
            batch::WINDOW,
            q.limit,
            q.window_us,
            q.granularity_us(),
            window::max_slots(q) as u64,
        ],
        Meaning::Gcra => [batch::GCRA, q.emission_interval_us(), q.burst_size(), 0, 0],
    }
}

/// One request's decisions from its part of a reply of `GCRA_KEYS`, `WINDOW_KEYS` or the batch
/// script (see `batch::BATCH`).
fn decode(
    items: &[RedisItem<'_>],
    cost: u64,
    values: &[i64],
) -> Result<(bool, Vec<QuotaDecision>), RedisError> {
    let short = || RedisError::new(RedisErrorKind::Protocol, "rate limit batch reply too short");
    let mut rest = values;
    let mut all = true;
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let d = match item.quota.meaning() {
            Meaning::Gcra => {
                let [v, ref tail @ ..] = *rest else {
                    return Err(short());
                };
                rest = tail;
                gcra_reply(item.quota, cost, v)
            }
            Meaning::Window => {
                let [v, reset, r, ref tail @ ..] = *rest else {
                    return Err(short());
                };
                rest = tail;
                if v >= 0 {
                    QuotaDecision::new(true, num(v), num(reset), 0)
                } else {
                    QuotaDecision::new(false, num(-1 - v), num(reset), retry(r))
                }
            }
        };
        all &= d.allowed;
        out.push(d);
    }
    Ok((all, out))
}

/// A single-quota limiter over a [`RedisBackend`] (see [`RedisBackend::keyed`]).
#[derive(Clone, Debug)]
pub struct RedisKeyedLimiter {
    backend: RedisBackend,
    name: Arc<str>,
    id: u32,
    quota: Quota,
}

impl RedisKeyedLimiter {
    /// Checks (and, if admitted, records) a request of `cost` units for `key`, at the Redis
    /// server's time (or the backend's client clock).
    pub async fn check(&self, key: &LimitKey, cost: u64) -> Result<QuotaDecision, RedisError> {
        let now = self
            .backend
            .inner
            .clock
            .as_ref()
            .map_or(0, |c| c.now_micros());
        self.check_at(key, cost, now).await
    }

    /// Checks a request at `now_micros` instead of the server's time (tests and replays;
    /// `0` means the server's time).
    pub async fn check_at(
        &self,
        key: &LimitKey,
        cost: u64,
        now_micros: u64,
    ) -> Result<QuotaDecision, RedisError> {
        let item = RedisItem {
            id: self.id,
            name: &self.name,
            quota: &self.quota,
            key,
        };
        let (_, mut d) = self.backend.run(&[item], cost, now_micros).await?;
        d.pop()
            .ok_or_else(|| RedisError::new(RedisErrorKind::Protocol, "empty script reply"))
    }

    /// The quota.
    pub fn quota(&self) -> &Quota {
        &self.quota
    }
}

/// Per key: (quota id, denied until) pairs.
type DenyShard = Mutex<HashMap<LimitKey, Vec<(u32, u64)>>>;

/// Keys known to have no unit left until a local time.
struct DenyCache {
    capacity: usize,
    per_shard: usize,
    hasher: RandomState,
    shards: Box<[DenyShard]>,
}

impl DenyCache {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            per_shard: capacity.div_ceil(DENY_SHARDS),
            hasher: RandomState::new(),
            shards: (0..DENY_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
        }
    }

    fn shard(&self, key: &LimitKey) -> &DenyShard {
        let h = self.hasher.hash_one(key);
        &self.shards[(h % DENY_SHARDS as u64) as usize]
    }

    fn get(&self, id: u32, key: &LimitKey, now: u64) -> Option<u64> {
        if self.capacity == 0 {
            return None;
        }
        let shard = lock(self.shard(key));
        let until = shard.get(key)?.iter().find(|e| e.0 == id)?.1;
        (until > now).then_some(until)
    }

    fn put(&self, id: u32, key: &LimitKey, until: u64, now: u64) {
        if self.capacity == 0 {
            return;
        }
        let mut shard = lock(self.shard(key));
        if let Some(list) = shard.get_mut(key) {
            list.retain(|e| e.0 != id && e.1 > now);
            list.push((id, until));
            return;
        }
        if shard.len() >= self.per_shard {
            shard.retain(|_, list| {
                list.retain(|e| e.1 > now);
                !list.is_empty()
            });
            if shard.len() >= self.per_shard {
                // Full of live denials: this one is simply not cached (Redis is asked again).
                return;
            }
        }
        shard.insert(key.clone(), vec![(id, until)]);
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }
}
