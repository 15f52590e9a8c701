//! The Lua scripts of the Redis backend (in `lua/`), their arguments and their replies.

use std::sync::LazyLock;

use super::RedisItem;
use crate::rate_limit::decision::{NEVER, QuotaDecision};
use crate::rate_limit::quota::{Meaning, Quota};
use crate::rate_limit::window;
use crate::redis::driver::{Script, ScriptInvocation};
use crate::redis::{RedisError, RedisErrorKind};

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

/// Quota kinds in the script's quota definitions.
pub(crate) const WINDOW: u64 = 1;
pub(crate) const GCRA: u64 = 2;

/// One GCRA quota for one or more distinct keys, each decided on its own (a single request,
/// or a batch of single-quota requests on keys of their own). ARGV[3] interval, ARGV[4] burst.
/// Reply, one integer per key (cheaper for Redis to build and send than a table): admitted,
/// the microseconds of the bucket in use (>= 0); refused, minus the retry time (<= -1);
/// refused because the cost exceeds the burst, -2^52 minus the microseconds in use. The
/// remaining count and reset time are derived from these on the client.
const GCRA_KEYS: &str = concat!(
    include_str!("lua/keys_prelude.lua"),
    include_str!("lua/gcra_keys_1_args.lua"),
    include_str!("lua/gcra_step.lua"),
    include_str!("lua/gcra_keys_2_write.lua"),
);

/// One window quota for one or more distinct keys, each decided on its own. ARGV[3] limit,
/// ARGV[4] window, ARGV[5] granularity, ARGV[6] slot bound.
/// State: the compact form described above; a decision unpacks only the slots it needs (the
/// expired prefix, the oldest live one, the newest) and an admission rewrites the string by
/// slicing, so the cost does not grow with the number of live admissions.
/// Reply, three integers per key: remaining (`-1 - remaining` if refused), reset, retry (-1:
/// never; 0 if admitted).
const WINDOW_KEYS: &str = concat!(
    include_str!("lua/keys_prelude.lua"),
    include_str!("lua/window_keys_1_args.lua"),
    include_str!("lua/window_tables.lua"),
    include_str!("lua/window_widths.lua"),
    include_str!("lua/window_stamp.lua"),
    include_str!("lua/window_keys_2_pieces.lua"),
    include_str!("lua/window_fresh.lua"),
    include_str!("lua/window_keys_3_loop.lua"),
    include_str!("lua/window_scan.lua"),
    include_str!("lua/window_keys_4_decide.lua"),
    include_str!("lua/window_admit.lua"),
    include_str!("lua/window_keys_5_write.lua"),
    include_str!("lua/window_retry.lua"),
    include_str!("lua/window_keys_6_refused.lua"),
);

/// Several quotas of one request, all or nothing. Then five values per quota: kind (1 window,
/// 2 GCRA) and its parameters (window: limit, window, granularity, slot bound; GCRA: interval,
/// burst, 0, 0). Reply: {all admitted, then per quota: admitted, a, b, retry (-1: never)} with
/// (a, b) = (remaining, reset) for a window and (microseconds in use, 0) for GCRA.
const MULTI: &str = concat!(
    include_str!("lua/keys_prelude.lua"),
    include_str!("lua/multi_1_setup.lua"),
    include_str!("lua/window_tables.lua"),
    include_str!("lua/multi_2_loop.lua"),
    include_str!("lua/gcra_step.lua"),
    include_str!("lua/multi_3_window.lua"),
    include_str!("lua/window_scan.lua"),
    include_str!("lua/multi_4_admit.lua"),
    include_str!("lua/window_widths.lua"),
    include_str!("lua/window_stamp.lua"),
    include_str!("lua/multi_5_pieces.lua"),
    include_str!("lua/window_fresh.lua"),
    include_str!("lua/window_admit.lua"),
    include_str!("lua/multi_6_write.lua"),
    include_str!("lua/window_retry.lua"),
    include_str!("lua/multi_7_refused.lua"),
);

/// `GCRA_KEYS`'s reply floor for "can never be admitted" (-2^52).
const IMPOSSIBLE: i64 = -(1 << 52);

static GCRA_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(GCRA_KEYS));
static WINDOW_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(WINDOW_KEYS));
pub(super) static MULTI_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(MULTI));

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
    include_str!("lua/batch_1_locals.lua"),
    include_str!("lua/window_tables.lua"),
    include_str!("lua/batch_2_loop.lua"),
    include_str!("lua/gcra_step.lua"),
    include_str!("lua/batch_3_window.lua"),
    include_str!("lua/window_scan.lua"),
    include_str!("lua/batch_4_admit.lua"),
    include_str!("lua/window_widths.lua"),
    include_str!("lua/window_stamp.lua"),
    include_str!("lua/batch_5_fresh_memo.lua"),
    include_str!("lua/window_fresh.lua"),
    include_str!("lua/batch_6_fresh_end.lua"),
    include_str!("lua/window_admit.lua"),
    include_str!("lua/batch_7_write.lua"),
    include_str!("lua/window_retry.lua"),
    include_str!("lua/batch_8_refused.lua"),
);

pub(super) static BATCH_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(BATCH));

/// The call of `GCRA_KEYS` or `WINDOW_KEYS` (one quota, keys each decided on their own) for
/// the quota of [`definition`] `def`, without its keys.
pub(crate) fn keys_invocation(def: &[u64; 5], cost: u64, now: u64) -> ScriptInvocation<'static> {
    let (script, params) = if def[0] == GCRA {
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

pub(super) fn num(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A retry time from a script (-1: never).
pub(super) fn retry(v: i64) -> u64 {
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
pub(super) fn definition(q: &Quota) -> [u64; 5] {
    match q.meaning() {
        Meaning::Window => [
            WINDOW,
            q.limit,
            q.window_us,
            q.granularity_us(),
            window::max_slots(q) as u64,
        ],
        Meaning::Gcra => [GCRA, q.emission_interval_us(), q.burst_size(), 0, 0],
    }
}

/// One request's decisions from its part of a reply of `GCRA_KEYS`, `WINDOW_KEYS` or the batch
/// script (see `batch::BATCH`).
pub(super) fn decode(
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
