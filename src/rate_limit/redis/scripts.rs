//! The Lua scripts of the Redis backend, what they are sent and what they answer, and the
//! format of the state they store.
//!
//! # The scripts
//!
//! Six scripts, each assembled at compile time from files in `lua/` (shared fragments and
//! the script's own pieces; every file opens with what it reads and what it leaves), and
//! checked in whole as `lua/assembled/<name>.lua` (a test requires that file to be exactly
//! what is sent; `lua/README.md` says how to update it). Each can be tried by hand:
//! `redis-cli --eval lua/assembled/window_keys.lua rl:{demo}:ip , 1 0 10 60000000 1 10`.
//!
//! | script | decides | arguments | reply, per key or quota |
//! |---|---|---|---|
//! | [`GCRA_KEYS`] | one GCRA quota, each key on its own | cost, now, interval, burst | one integer |
//! | [`GCRA_ONE`] | one GCRA quota, one key (a request decided alone) | as `GCRA_KEYS` | one integer, not in a table |
//! | [`WINDOW_KEYS`] | one window quota, each key on its own | cost, now, limit, window, granularity, slot bound | three integers |
//! | [`WINDOW_ONE`] | one window quota, one key (a request decided alone) | as `WINDOW_KEYS` | admitted: one integer, not in a table; refused: as `WINDOW_KEYS` |
//! | [`MULTI`] | several quotas of one request, all or nothing | cost, now, five values per [`Definition`] | all admitted, then four integers per quota |
//! | [`BATCH`] | the requests of a batch, in arrival order | see [`BATCH`] | the per-key formats, request after request |
//!
//! Two more run only on a Redis Cluster, for a request whose quotas span hash slots (the
//! backend's "Redis Cluster" docs): [`RESERVE`] (`MULTI`'s pieces, one slot's share, replying
//! also what it wrote) and [`RELEASE`] (undoes exactly that). They store nothing new: the
//! states they write are those of the formats below.
//!
//! They are the Lua twins of `gcra::decide` and `window::decide`/`admit`. Every number they
//! handle stays below 2^53, where Lua's doubles are exact integers, and their only roundings
//! (a window's granularity, the TTL in milliseconds) are corrected to exact integers, so they
//! compute exactly what the Rust functions compute: tested by replaying traces through both.
//!
//! Common arguments: `ARGV[1]` the cost; `ARGV[2]` "now" in microseconds, 0 meaning the
//! server's `TIME` (production; a non-zero value is for tests replaying a trace on a
//! controlled clock). Each key expires (`PX`, rounded up) when its bucket is full again.
//!
//! # Stored state
//!
//! This is a stored format: instances of different versions share it during a rolling
//! deploy, `tests/golden_rate_limit.rs` pins its bytes, and a change is a CHANGELOG entry.
//!
//! **GCRA**: the TAT (theoretical arrival time, microseconds) as a decimal integer.
//!
//! **Window**: the (time, count) slots, oldest first, in a compact binary form, so that a
//! state of a few slots fits Redis's inline strings (at most 44 bytes: "10/minute" admitted
//! one unit at a time, at distinct times, takes at most 44, "10 per 10 s" 35), which makes it
//! markedly cheaper to read and write than a long one:
//!
//! * byte 1, the tag: 128 + 16·(wt - 1) + wc, where wt (1..=6) is the width of a slot's time
//!   and wc (0..=4) that of a count, in bytes; wc = 0 means every count is 1 (no counts are
//!   stored, the usual case);
//! * `7 - wt` bytes: the newest slot's time divided by M = 256^wt (the "high" part);
//! * `wc` bytes: the total count (absent when wc = 0: the total is the number of slots);
//! * the slots, `wt + wc` bytes each: the time modulo M, then the count.
//!
//! All integers are little-endian. A slot's time is the newest time minus (newest - stored)
//! mod M, exact because every state spans less than M: the widths are chosen from the quota,
//! M >= window + granularity, and a state never spans more than window + granularity - 1
//! (the slots kept are inside the window, and a new slot is recorded at most a granule late;
//! a clock stepping back records at the newest slot's time, which spans nothing more). So an
//! admission appends a slot and rewrites the header, never the other slots: the new state is
//! the new header, a slice of the old string, and the new slot. A state in another form (a
//! changed quota, a cost above 1 or two admissions at one time in a state without counts) is
//! re-encoded, slot by slot, with wider times if the clock stepped back across a quota
//! change (the one way to span more). Anything unreadable (another meaning's state) reads as
//! no admission.
//!
//! For example "10/minute" (W = 60 s, so wt = 4: 256^4 µs is 71 minutes) admitted once at
//! t = 1 700 000 000 000 000 µs stores 8 bytes: the tag `0xb0` (128 + 16·3 + 0), the high
//! part `t / 2^32` in 3 bytes, and one slot, `t mod 2^32` in 4 bytes; ten admissions store
//! 4 + 10·4 = 44 bytes. With counts (tag `0xb1`, one byte each, and the total after the high
//! part), ten slots would take 5 + 10·5 = 55 bytes. `tests/golden/rate_limit_window.txt`
//! walks through a trace byte by byte.
//!
//! # Cost
//!
//! Redis CPU is the budget, and the Lua interpreter is a third of it (the rest is the key's
//! read and write, which every design with per-key expiry pays): library functions are read
//! into locals (`unpk`, `pk`, `sub`, `byte`, which every script using the window fragments
//! defines), formats and constant strings are built once per call, a decision unpacks only
//! the slots it needs (two in the usual case), no closures, no table per key. The fragments
//! are inlined text, never Lua functions: a call per key would cost more than the decision.

use std::collections::HashMap;
use std::sync::LazyLock;

use std::future::Future;

use super::batch::Batchable;
use super::split::Router;
use crate::rate_limit::decision::{NEVER, QuotaDecision};
use crate::rate_limit::quota::{Meaning, Quota};
use crate::rate_limit::window;
use crate::redis::driver::{self, Script, ScriptInvocation};
use crate::redis::{RedisError, RedisErrorKind};

/// One script's source: the files of `lua/` it is assembled from, in order, and the text
/// sent to Redis (their concatenation).
#[derive(Debug)]
pub(super) struct Source {
    /// The script's name: its whole text is checked in as `lua/assembled/<name>.lua`.
    #[cfg_attr(not(test), expect(dead_code, reason = "read by the tests"))]
    pub(super) name: &'static str,
    /// Its files, in order.
    #[cfg_attr(not(test), expect(dead_code, reason = "read by the tests"))]
    pub(super) parts: &'static [&'static str],
    /// The text sent.
    pub(super) text: &'static str,
}

/// A [`Source`] from files of `lua/`, concatenated at compile time.
macro_rules! lua_script {
    ($name:literal: $($part:literal),+ $(,)?) => {
        Source {
            name: $name,
            parts: &[$($part),+],
            text: concat!($(include_str!(concat!("lua/", $part))),+),
        }
    };
}

/// One GCRA quota for one or more distinct keys, each decided on its own (a single request,
/// or a batch of single-quota requests on keys of their own). `ARGV[3]` interval, `ARGV[4]`
/// burst. Reply, one integer per key, decoded by [`decode_gcra`].
pub(super) const GCRA_KEYS: Source = lua_script!("gcra_keys":
    "gcra_keys_0_about.lua",
    "clock_prelude.lua",
    "keys_prelude.lua",
    "gcra_keys_1_args.lua",
    "gcra_step.lua",
    "gcra_keys_2_write.lua",
);

/// [`GCRA_KEYS`] for one key: a request with one GCRA quota decided alone (batching off, or
/// nothing else waiting). Without the loop, the `MGET` and the reply table, which cost Redis
/// about a sixth of the call (measured with `redis-benchmark`: 4.9–5.3 µs against
/// 5.9–6.1 µs). Stores what `GCRA_KEYS` stores; replies its one integer bare.
pub(super) const GCRA_ONE: Source = lua_script!("gcra_one":
    "gcra_one_0_about.lua",
    "clock_prelude.lua",
    "gcra_one_1_read.lua",
    "gcra_step.lua",
    "gcra_one_2_write.lua",
);

/// One window quota for one or more distinct keys, each decided on its own. `ARGV[3]` limit,
/// `ARGV[4]` window, `ARGV[5]` granularity, `ARGV[6]` slot bound. A decision unpacks only the
/// slots it needs (the expired prefix, the oldest live one, the newest) and an admission
/// rewrites the string by slicing, so the cost does not grow with the number of live
/// admissions. Reply, three integers per key, decoded by [`decode_window`].
pub(super) const WINDOW_KEYS: Source = lua_script!("window_keys":
    "window_keys_0_about.lua",
    "clock_prelude.lua",
    "keys_prelude.lua",
    "window_keys_1_args.lua",
    "window_tables.lua",
    "window_widths.lua",
    "window_stamp.lua",
    "window_keys_2_pieces.lua",
    "window_fresh.lua",
    "window_keys_3_loop.lua",
    "window_scan.lua",
    "window_keys_4_decide.lua",
    "window_admit.lua",
    "window_keys_5_write.lua",
    "window_retry.lua",
    "window_keys_6_refused.lua",
);

/// [`WINDOW_KEYS`] for one key: a request with one window quota decided alone (batching off,
/// or nothing else waiting). Without the loop and the `MGET`, and an admission replies one
/// integer, `reset * (limit + 1) + remaining`, instead of a table of three (a table reply
/// alone costs Redis about 0.5 µs). Stores what `WINDOW_KEYS` stores; a refusal, or an
/// admission whose packed integer would reach 2^53, replies `WINDOW_KEYS`'s three integers.
/// Decoded by [`decode_window_one`].
pub(super) const WINDOW_ONE: Source = lua_script!("window_one":
    "window_one_0_about.lua",
    "clock_prelude.lua",
    "window_one_1_read.lua",
    "window_tables.lua",
    "window_widths.lua",
    "window_stamp.lua",
    "window_keys_2_pieces.lua",
    "window_fresh.lua",
    "window_scan.lua",
    "window_one_2_decide.lua",
    "window_admit.lua",
    "window_one_3_write.lua",
    "window_retry.lua",
    "window_one_4_refused.lua",
);

/// Several quotas of one request, all or nothing: after cost and now, five values per quota
/// ([`Definition::push_args`]). Reply decoded by [`decode_multi`].
pub(super) const MULTI: Source = lua_script!("multi":
    "multi_0_about.lua",
    "clock_prelude.lua",
    "keys_prelude.lua",
    "multi_1_setup.lua",
    "window_tables.lua",
    "multi_2_loop.lua",
    "gcra_step.lua",
    "multi_3_window.lua",
    "window_scan.lua",
    "multi_4_admit.lua",
    "window_widths.lua",
    "window_stamp.lua",
    "multi_5_pieces.lua",
    "window_fresh.lua",
    "window_admit.lua",
    "multi_6_write.lua",
    "window_retry.lua",
    "multi_7_refused.lua",
);

/// The batch script: the requests of a batch ([`Ask`]s), decided in arrival order.
///
/// KEYS: the distinct keys of the batch, in order of first use.
///
/// ARGV: the mode: `0`, all requests use the server's time (one `TIME`); `1`, every request
/// carries its own time (a client clock or a replay; `0` there still means the server's
/// time); `2`, "simple": the server's time, one shape, and every check on a key of its own,
/// request `i`'s checks on keys `i·n + 1 ..= i·n + n` (the common case, which then needs no
/// per-request argument at all). Then the number of quota definitions and of request shapes;
/// the definitions, five values each ([`Definition::push_args`]); the shapes: cost, number
/// of checks, that many definition indices; then (modes 0 and 1) the requests in arrival
/// order: shape index, the time (mode 1 only), one key index per check.
///
/// Reply, flat, per request and check: the per-key formats ([`decode_gcra`],
/// [`decode_window`]). A request is admitted iff all its checks are; only then are its
/// writes applied, to the batch's copy of the state, which later requests read. The
/// decision steps are the fragments the other scripts use.
///
/// Cost notes (Redis CPU is the budget): library functions are read into locals once;
/// numbers are formatted in Lua with `%d` (exact below 2^53, the same text Redis would write)
/// and memoised per batch, since the TTL and the new state of fresh keys admitted at the
/// batch's time repeat, whereas Redis formats every number argument with `%.17g`; the pieces
/// of a new window state are built once per time, cost and quota.
pub(super) const BATCH: Source = lua_script!("batch":
    "batch_0_about.lua",
    "batch_1_locals.lua",
    "window_tables.lua",
    "batch_2_loop.lua",
    "gcra_step.lua",
    "batch_3_window.lua",
    "window_scan.lua",
    "batch_4_admit.lua",
    "window_widths.lua",
    "window_stamp.lua",
    "batch_5_fresh_memo.lua",
    "window_fresh.lua",
    "batch_6_fresh_end.lua",
    "window_admit.lua",
    "batch_7_write.lua",
    "window_retry.lua",
    "batch_8_refused.lua",
);

/// The share of a request's quotas on one hash slot of a Redis Cluster, when its quotas span
/// several slots: [`MULTI`]'s pieces, deciding exactly as [`MULTI`] does, whose reply adds,
/// when it admitted (and cost > 0), each key's value before and the value written, so that
/// [`RELEASE`] can undo exactly this admission. Never sent on a single server. Reply decoded
/// by [`decode_reserve`].
pub(super) const RESERVE: Source = lua_script!("reserve":
    "reserve_0_about.lua",
    "clock_prelude.lua",
    "keys_prelude.lua",
    "multi_1_setup.lua",
    "window_tables.lua",
    "multi_2_loop.lua",
    "gcra_step.lua",
    "multi_3_window.lua",
    "window_scan.lua",
    "multi_4_admit.lua",
    "window_widths.lua",
    "window_stamp.lua",
    "multi_5_pieces.lua",
    "window_fresh.lua",
    "window_admit.lua",
    "multi_6_write.lua",
    "window_retry.lua",
    "reserve_7_refused.lua",
);

/// Undoes one admission [`RESERVE`] made on one key, and never anyone else's (the file's
/// header says how, for each meaning; the backend's docs prove it). One file.
pub(super) const RELEASE: Source = lua_script!("release": "release.lua");

/// Every script, for the tests.
#[cfg(test)]
const SCRIPTS: [&Source; 8] = [
    &GCRA_KEYS,
    &GCRA_ONE,
    &WINDOW_KEYS,
    &WINDOW_ONE,
    &MULTI,
    &BATCH,
    &RESERVE,
    &RELEASE,
];

static GCRA_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(GCRA_KEYS.text));
static GCRA_ONE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(GCRA_ONE.text));
static WINDOW_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(WINDOW_KEYS.text));
static WINDOW_ONE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(WINDOW_ONE.text));
static MULTI_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(MULTI.text));
static BATCH_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(BATCH.text));
static RESERVE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RESERVE.text));
static RELEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE.text));

/// A quota as the scripts decide it: its meaning and the parameters the script reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Definition {
    /// A rolling window (`window::decide`/`admit`).
    Window {
        /// Most units admitted in any window.
        limit: u64,
        /// The window, in microseconds.
        window_us: u64,
        /// The granularity of recorded times, in microseconds (1: exact).
        granularity_us: u64,
        /// Most slots kept (`window::max_slots`).
        max_slots: u64,
    },
    /// GCRA (`gcra::decide`).
    Gcra {
        /// The emission interval (one unit), in microseconds.
        interval_us: u64,
        /// The burst, in units.
        burst: u64,
    },
}

impl Definition {
    /// The definition of `q`.
    pub(super) fn of(q: &Quota) -> Self {
        match q.meaning() {
            Meaning::Window => Self::Window {
                limit: q.limit,
                window_us: q.window_us,
                granularity_us: q.granularity_us(),
                max_slots: window::max_slots(q) as u64,
            },
            Meaning::Gcra => Self::Gcra {
                interval_us: q.emission_interval_us(),
                burst: q.burst_size(),
            },
        }
    }

    /// The kind code `MULTI` and `BATCH` read first in a definition (they test `== 2` for
    /// GCRA): the one place these codes are written.
    fn kind(&self) -> u8 {
        match self {
            Self::Window { .. } => 1,
            Self::Gcra { .. } => 2,
        }
    }

    /// Appends the five arguments `MULTI` and `BATCH` read per definition: the kind, then for
    /// a window its limit, window, granularity and slot bound; for GCRA its interval, burst,
    /// 0, 0.
    fn push_args(&self, inv: &mut ScriptInvocation<'_>) {
        inv.arg(self.kind());
        match *self {
            Self::Window {
                limit,
                window_us,
                granularity_us,
                max_slots,
            } => inv
                .arg(limit)
                .arg(window_us)
                .arg(granularity_us)
                .arg(max_slots),
            Self::Gcra { interval_us, burst } => inv.arg(interval_us).arg(burst).arg(0).arg(0),
        };
    }

    /// Values one decision takes in a reply of `GCRA_KEYS`, `WINDOW_KEYS` or `BATCH`.
    pub(super) fn width(&self) -> usize {
        match self {
            Self::Window { .. } => 3,
            Self::Gcra { .. } => 1,
        }
    }

    /// `script` called for this quota with the arguments of the per-key scripts (`GCRA_KEYS`,
    /// `GCRA_ONE`: cost, now, interval, burst; `WINDOW_KEYS`, `WINDOW_ONE`: cost, now, limit,
    /// window, granularity, slot bound), without its keys.
    fn per_key_invocation(
        &self,
        script: &'static Script,
        cost: u64,
        now: u64,
    ) -> ScriptInvocation<'static> {
        let mut inv = script.prepare_invoke();
        inv.arg(cost).arg(now);
        match *self {
            Self::Window {
                limit,
                window_us,
                granularity_us,
                max_slots,
            } => inv
                .arg(limit)
                .arg(window_us)
                .arg(granularity_us)
                .arg(max_slots),
            Self::Gcra { interval_us, burst } => inv.arg(interval_us).arg(burst),
        };
        inv
    }

    /// The call of `GCRA_KEYS` or `WINDOW_KEYS` (one quota, keys each decided on their own)
    /// for this quota, without its keys.
    pub(super) fn keys_invocation(&self, cost: u64, now: u64) -> ScriptInvocation<'static> {
        let script = match self {
            Self::Window { .. } => &*WINDOW_SCRIPT,
            Self::Gcra { .. } => &*GCRA_SCRIPT,
        };
        self.per_key_invocation(script, cost, now)
    }

    /// The call of [`GCRA_ONE`] or [`WINDOW_ONE`] for this quota, without its key, and how
    /// to read its reply (`None`: a reply of another shape).
    pub(super) fn one_key_invocation(
        &self,
        cost: u64,
        now: u64,
    ) -> (
        ScriptInvocation<'static>,
        impl Fn(&driver::Value) -> Option<QuotaDecision> + use<>,
    ) {
        let def = *self;
        let script = match def {
            Self::Window { .. } => &*WINDOW_ONE_SCRIPT,
            Self::Gcra { .. } => &*GCRA_ONE_SCRIPT,
        };
        let inv = def.per_key_invocation(script, cost, now);
        let decode = move |reply: &driver::Value| match (def, reply) {
            (Self::Gcra { interval_us, burst }, &driver::Value::Int(v)) => {
                Some(decode_gcra(interval_us, burst, cost, v))
            }
            (Self::Window { limit, .. }, reply) => decode_window_one(limit, reply),
            _ => None,
        };
        (inv, decode)
    }

    /// One decision from the front of a per-key reply (`GCRA_KEYS`, `WINDOW_KEYS`, `BATCH`),
    /// and the values after it; `None` if the reply is too short.
    fn decode<'v>(&self, cost: u64, values: &'v [i64]) -> Option<(QuotaDecision, &'v [i64])> {
        match *self {
            Self::Gcra { interval_us, burst } => {
                let [v, ref rest @ ..] = *values else {
                    return None;
                };
                Some((decode_gcra(interval_us, burst, cost, v), rest))
            }
            Self::Window { .. } => {
                let [v, reset, retry, ref rest @ ..] = *values else {
                    return None;
                };
                Some((decode_window([v, reset, retry]), rest))
            }
        }
    }
}

/// The call of `MULTI` for one request's quotas, without its keys (one per definition, in
/// order).
pub(super) fn multi_invocation(
    defs: impl Iterator<Item = Definition>,
    cost: u64,
    now: u64,
) -> ScriptInvocation<'static> {
    let mut inv = MULTI_SCRIPT.prepare_invoke();
    inv.arg(cost).arg(now);
    for def in defs {
        def.push_args(&mut inv);
    }
    inv
}

/// The call of `RESERVE` for one slot's share of a request's quotas, without its keys (one
/// per definition, in order).
pub(super) fn reserve_invocation(
    defs: impl Iterator<Item = Definition>,
    cost: u64,
    now: u64,
) -> ScriptInvocation<'static> {
    let mut inv = RESERVE_SCRIPT.prepare_invoke();
    inv.arg(cost).arg(now);
    for def in defs {
        def.push_args(&mut inv);
    }
    inv
}

/// What `RESERVE` wrote to one key: the value before (`None`: no key) and the value written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Written {
    pub(super) old: Option<Vec<u8>>,
    pub(super) new: Vec<u8>,
}

/// `RESERVE`'s reply for `n` quotas: `MULTI`'s integers, and what it wrote per quota (empty
/// unless it admitted with cost > 0).
pub(super) fn decode_reserve(
    n: usize,
    reply: Vec<driver::Value>,
) -> Result<(Vec<i64>, Vec<Written>), RedisError> {
    let ints = 1 + 4 * n;
    let len = reply.len();
    let bad = || replied(len);
    if reply.len() != ints && reply.len() != ints + 2 * n {
        return Err(bad());
    }
    let mut values = reply.into_iter();
    let mut head = Vec::with_capacity(ints);
    for v in values.by_ref().take(ints) {
        match v {
            driver::Value::Int(i) => head.push(i),
            _ => return Err(bad()),
        }
    }
    let bytes = |v: driver::Value| match v {
        driver::Value::Nil => Ok(None),
        driver::Value::BulkString(b) => Ok(Some(b)),
        driver::Value::SimpleString(s) => Ok(Some(s.into_bytes())),
        driver::Value::Int(i) => Ok(Some(i.to_string().into_bytes())),
        _ => Err(bad()),
    };
    let mut written = Vec::new();
    while let (Some(old), Some(new)) = (values.next(), values.next()) {
        written.push(Written {
            old: bytes(old)?,
            new: bytes(new)?.ok_or_else(bad)?,
        });
    }
    Ok((head, written))
}

/// The call of `RELEASE` undoing what `RESERVE` wrote to one key for quota `def`, without
/// its key.
pub(super) fn release_invocation(
    def: Definition,
    cost: u64,
    now: u64,
    written: &Written,
) -> ScriptInvocation<'static> {
    let mut inv = RELEASE_SCRIPT.prepare_invoke();
    inv.arg(now)
        .arg(cost)
        .arg(u8::from(written.old.is_some()))
        .arg(written.old.as_deref().unwrap_or_default())
        .arg(&written.new[..]);
    def.push_args(&mut inv);
    inv
}

/// `MULTI`'s four values for one quota (admitted, a, b, retry) in the per-key format of
/// `GCRA_KEYS`/`WINDOW_KEYS`/`BATCH` (what a batch's reply holds per check): the same
/// decision once decoded.
pub(super) fn multi_to_keys(def: Definition, c: &[i64], out: &mut Vec<i64>) {
    let admitted = c[0] == 1;
    match def {
        Definition::Gcra { .. } => out.push(if admitted {
            c[1]
        } else if c[3] < 0 {
            IMPOSSIBLE - c[1]
        } else {
            -c[3]
        }),
        Definition::Window { .. } => {
            if admitted {
                out.extend([c[1], c[2], 0]);
            } else {
                out.extend([-1 - c[1], c[2], c[3]]);
            }
        }
    }
}

/// A script replied a number of values its request cannot have.
pub(super) fn replied(n: usize) -> RedisError {
    RedisError::new(
        RedisErrorKind::Protocol,
        format!("rate limit script replied {n} values"),
    )
}

/// A non-negative integer of a reply (anything else: 0).
fn num(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A retry time from a script (-1: never).
fn retry(v: i64) -> u64 {
    if v < 0 { NEVER } else { num(v) }
}

/// `GCRA_KEYS`'s reply floor for "can never be admitted" (-2^52).
const IMPOSSIBLE: i64 = -(1 << 52);

/// A GCRA decision from its one-integer reply (`GCRA_KEYS`, and `BATCH` for a GCRA check):
/// admitted, the microseconds of the bucket in use (>= 0); refused, minus the retry time
/// (<= -1); refused because the cost exceeds the burst, -2^52 minus the microseconds in use.
/// The remaining count and reset time are derived from these here, not sent.
fn decode_gcra(interval_us: u64, burst: u64, cost: u64, reply: i64) -> QuotaDecision {
    let (t, b) = (interval_us, burst);
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

/// A window decision from its three-integer reply (`WINDOW_KEYS`, and `BATCH` for a window
/// check): remaining (`-1 - remaining` if refused), reset, retry (-1: never; 0 if admitted).
fn decode_window([v, reset, r]: [i64; 3]) -> QuotaDecision {
    if v >= 0 {
        QuotaDecision::new(true, num(v), num(reset), 0)
    } else {
        QuotaDecision::new(false, num(-1 - v), num(reset), retry(r))
    }
}

/// A window decision from [`WINDOW_ONE`]'s reply: one integer `reset * (limit + 1) +
/// remaining` (admitted), or [`WINDOW_KEYS`]'s three integers; `None` for anything else.
fn decode_window_one(limit: u64, reply: &driver::Value) -> Option<QuotaDecision> {
    match reply {
        &driver::Value::Int(v) => {
            let v = u64::try_from(v).ok()?;
            let base = limit.checked_add(1)?;
            Some(QuotaDecision::new(true, v % base, v / base, 0))
        }
        driver::Value::Array(values) => match values.as_slice() {
            [
                driver::Value::Int(v),
                driver::Value::Int(reset),
                driver::Value::Int(retry),
            ] => Some(decode_window([*v, *reset, *retry])),
            _ => None,
        },
        _ => None,
    }
}

/// A one-key script replied something its formats do not allow.
pub(super) fn replied_shape() -> RedisError {
    RedisError::new(
        RedisErrorKind::Protocol,
        "rate limit script replied a value of an unexpected shape",
    )
}

/// One request's decisions from its part of a per-key reply (`GCRA_KEYS`, `WINDOW_KEYS`, or
/// its share of `BATCH`'s), its quotas' definitions in order.
pub(super) fn decode_keys(
    defs: impl ExactSizeIterator<Item = Definition>,
    cost: u64,
    values: &[i64],
) -> Result<(bool, Vec<QuotaDecision>), RedisError> {
    let mut rest = values;
    let mut all = true;
    let mut out = Vec::with_capacity(defs.len());
    for def in defs {
        let Some((d, tail)) = def.decode(cost, rest) else {
            return Err(RedisError::new(
                RedisErrorKind::Protocol,
                "rate limit batch reply too short",
            ));
        };
        rest = tail;
        all &= d.allowed;
        out.push(d);
    }
    Ok((all, out))
}

/// A request's decisions from `MULTI`'s reply: all admitted (1 or 0), then per quota:
/// admitted, a, b, retry (-1: never) with (a, b) = (remaining, reset) for a window and
/// (microseconds in use, 0) for GCRA.
pub(super) fn decode_multi(
    defs: impl ExactSizeIterator<Item = Definition>,
    reply: &[i64],
) -> Result<(bool, Vec<QuotaDecision>), RedisError> {
    if reply.len() != 1 + 4 * defs.len() {
        return Err(replied(reply.len()));
    }
    let decisions = reply[1..]
        .chunks_exact(4)
        .zip(defs)
        .map(|(c, def)| match def {
            Definition::Gcra { interval_us, burst } => {
                QuotaDecision::gcra(c[0] == 1, num(c[1]), interval_us, burst, retry(c[3]))
            }
            Definition::Window { .. } => {
                QuotaDecision::new(c[0] == 1, num(c[1]), num(c[2]), retry(c[3]))
            }
        })
        .collect();
    Ok((reply[0] == 1, decisions))
}

/// One quota check of a request: the Redis key and the quota.
#[derive(Debug)]
pub(super) struct Check {
    pub(super) key: String,
    pub(super) def: Definition,
}

/// One request for the [`Batcher`](super::batch::Batcher): its checks (decided all or
/// nothing), cost and time (0: the server's).
#[derive(Debug)]
pub(super) struct Ask {
    pub(super) checks: Vec<Check>,
    pub(super) cost: u64,
    pub(super) now: u64,
    /// Its checks span hash slots on a cluster (decided in two steps, alone).
    pub(super) exclusive: bool,
}

impl Batchable for Ask {
    /// Most quota checks in one call (bounds the script's `unpack` of the keys).
    const MAX_SIZE: usize = 512;

    fn size(&self) -> usize {
        self.checks.len()
    }

    fn width(&self) -> usize {
        self.checks.iter().map(|c| c.def.width()).sum()
    }

    fn exclusive(&self) -> bool {
        self.exclusive
    }

    type Ctx = std::sync::Arc<Router>;

    fn call<'a>(
        router: &'a Self::Ctx,
        asks: Vec<&'a Self>,
    ) -> impl Future<Output = Result<Vec<i64>, RedisError>> + Send + 'a {
        router.call_batch(asks)
    }
}

impl Ask {
    /// The one script call deciding `asks` (keys of one slot on a cluster), in order: the
    /// per-key script for the common batch, else `BATCH`.
    pub(super) fn invocation<'a>(
        asks: impl Iterator<Item = &'a Self> + Clone,
    ) -> ScriptInvocation<'static> {
        if let Some(call) = keys_only(asks.clone()) {
            return call;
        }
        batch_invocation(asks)
    }
}

/// The `BATCH` call of `asks`.
fn batch_invocation<'a>(asks: impl Iterator<Item = &'a Ask> + Clone) -> ScriptInvocation<'static> {
    let mut inv = BATCH_SCRIPT.prepare_invoke();
    let mut keys: HashMap<&str, u32> = HashMap::new();
    let mut defs: Vec<Definition> = Vec::new();
    // Shapes: (cost, definition indices).
    let mut shapes: Vec<(u64, Vec<u32>)> = Vec::new();
    let mut per_request: Vec<u32> = Vec::new();
    let mut key_refs: Vec<u32> = Vec::new();
    let mut client_time = false;
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
        d.push_args(&mut inv);
    }
    for (cost, defs) in &shapes {
        inv.arg(*cost).arg(defs.len()).arg(&defs[..]);
    }
    if simple {
        return inv;
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
    inv
}

/// The common batch, one per-key script: requests of one quota each, the same quota, cost
/// and time, every one on a key of its own. Then each key is decided on its own (no request
/// reads another's state), which `GCRA_KEYS` and `WINDOW_KEYS` do at a fraction of `BATCH`'s
/// cost in Redis. `None` for any other batch.
fn keys_only<'a>(mut asks: impl Iterator<Item = &'a Ask>) -> Option<ScriptInvocation<'static>> {
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
    let mut inv = check.def.keys_invocation(first.cost, first.now);
    for k in &keys {
        inv.key(*k);
    }
    Some(inv)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each script's whole text is checked in (`lua/assembled/<name>.lua`) so that it can be
    /// read, linted and run with `redis-cli --eval`: it must be exactly what is sent. This
    /// test never writes the file; `lua/README.md` says how to update it.
    #[test]
    fn the_checked_in_assembled_scripts_are_what_is_sent() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/rate_limit/redis/lua");
        for s in SCRIPTS {
            let path = format!("{dir}/assembled/{}.lua", s.name);
            // The script's header lists its files: those of the code, in order (a script
            // of one file lists none).
            if s.parts.len() > 1 {
                let about = std::fs::read_to_string(format!("{dir}/{}", s.parts[0])).unwrap();
                let listed = about
                    .replace("--", " ")
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                let listed = listed.split("Assembled from ").nth(1).unwrap_or_default();
                assert!(
                    listed.starts_with(&format!("{} (", s.parts[1..].join(" "))),
                    "the header of {} must list its files as scripts.rs does: {:?}",
                    s.parts[0],
                    &s.parts[1..]
                );
            }
            let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                on_disk == s.text,
                "{path} is not the script the code sends. If the change of the lua/ files is \
                 meant, update it by hand (and review the diff):\n  cd src/rate_limit/redis/lua \
                 && cat {} > assembled/{}.lua",
                s.parts.join(" "),
                s.name,
            );
        }
    }

    /// The kind codes the scripts test (`== 2` for GCRA) are those `Definition` sends.
    #[test]
    fn the_scripts_read_the_kind_codes_definition_sends() {
        let gcra = Definition::Gcra {
            interval_us: 1,
            burst: 1,
        };
        let test = format!("== {}", gcra.kind());
        for s in [&MULTI, &BATCH] {
            assert!(s.text.contains(&test), "{} tests {test}", s.name);
        }
        assert_eq!(
            Definition::Window {
                limit: 1,
                window_us: 1,
                granularity_us: 1,
                max_slots: 1
            }
            .kind(),
            1
        );
    }

    #[test]
    fn gcra_replies_decode_to_the_three_outcomes() {
        // 10/minute, burst 4: T = 6 s.
        let t = 6_000_000;
        let ok = decode_gcra(t, 4, 1, 12_000_000);
        assert_eq!(ok, QuotaDecision::gcra(true, 12_000_000, t, 4, 0));
        // Refused: retry 2 s, so in use = 2 s + 4·T - 1·T = 20 s.
        let refused = decode_gcra(t, 4, 1, -2_000_000);
        assert_eq!(
            refused,
            QuotaDecision::gcra(false, 20_000_000, t, 4, 2_000_000)
        );
        let never = decode_gcra(t, 4, 5, IMPOSSIBLE - 6_000_000);
        assert_eq!(never, QuotaDecision::gcra(false, 6_000_000, t, 4, NEVER));
    }

    #[test]
    fn window_and_multi_replies_decode() {
        assert_eq!(
            decode_window([9, 60_000_000, 0]),
            QuotaDecision::new(true, 9, 60_000_000, 0)
        );
        assert_eq!(
            decode_window([-1, 5, 7]),
            QuotaDecision::new(false, 0, 5, 7)
        );
        assert_eq!(
            decode_window([-3, 5, -1]),
            QuotaDecision::new(false, 2, 5, NEVER)
        );
        let defs = [
            Definition::Window {
                limit: 10,
                window_us: 60_000_000,
                granularity_us: 1,
                max_slots: 10,
            },
            Definition::Gcra {
                interval_us: 6,
                burst: 4,
            },
        ];
        let (all, d) = decode_multi(defs.into_iter(), &[0, 1, 9, 60, 0, 0, 24, 0, 3]).unwrap();
        assert!(!all);
        assert_eq!(d[0], QuotaDecision::new(true, 9, 60, 0));
        assert_eq!(d[1], QuotaDecision::gcra(false, 24, 6, 4, 3));
        assert!(decode_multi(defs.into_iter(), &[1, 1]).is_err());
        assert!(decode_keys(defs.into_iter(), 1, &[9, 60, 0]).is_err());
    }

    #[test]
    fn window_one_replies_decode() {
        use driver::Value::{Array, Int, Nil};
        // 10 per minute: admitted with 7 left, a unit back in 59 s.
        let packed = Int(59_000_000 * 11 + 7);
        assert_eq!(
            decode_window_one(10, &packed),
            Some(QuotaDecision::new(true, 7, 59_000_000, 0))
        );
        assert_eq!(
            decode_window_one(10, &Int(0)),
            Some(QuotaDecision::new(true, 0, 0, 0))
        );
        // The three integers of window_keys: a refusal, and an admission too large to pack.
        let refused = Array(vec![Int(-1), Int(5), Int(7)]);
        assert_eq!(
            decode_window_one(10, &refused),
            Some(QuotaDecision::new(false, 0, 5, 7))
        );
        let wide = Array(vec![Int(3), Int(5), Int(0)]);
        assert_eq!(
            decode_window_one(u64::MAX - 1, &wide),
            Some(QuotaDecision::new(true, 3, 5, 0))
        );
        for bad in [Nil, Int(-4), Array(vec![Int(1), Int(2)])] {
            assert_eq!(decode_window_one(10, &bad), None, "{bad:?}");
        }
        assert_eq!(decode_window_one(u64::MAX, &Int(3)), None);
    }
}
