//! The Redis rate limiter's stored format, pinned: old and new instances share Redis during a
//! rolling deploy, so the bytes a key holds are a contract (the format is specified in the
//! docs of `src/rate_limit/redis/scripts.rs`).
//!
//! A fixed trace runs on a manual client clock against a real `redis-server`; after each step
//! the raw value of one window key and one GCRA key is compared with the checked-in
//! expectation in `tests/golden/rate_limit_*.txt`. The tests never write those files: a
//! deliberate format change edits them by hand (the failure message prints the new lines) and
//! says so in the CHANGELOG.
#![cfg(all(feature = "rate-limit", feature = "redis"))]

use rampart_test_support as support;

use std::fmt::Write as _;
use std::time::Duration;

use tower_rampart::clock::ManualClock;
use tower_rampart::rate_limit::{LimitKey, Quota, RedisBackend, RedisKeyedLimiter};
use tower_rampart::redis::{RedisConnection, driver};

/// The trace's start: 2023-11-14T22:13:20Z, in microseconds.
const T0: u64 = 1_700_000_000_000_000;

/// The window trace, (microseconds to advance, cost): ten admissions a second apart (the
/// compact form without counts, appended slot by slot), one refused, the oldest leaving and a
/// new one appended, a cost of 2 (re-encoded with counts), two at one time (merged into one
/// slot), a refusal of a cost above the limit, and a quiet minute (a fresh state).
const WINDOW_TRACE: [(u64, u64); 18] = [
    (0, 1),
    (1_000_000, 1),
    (1_000_000, 1),
    (1_000_000, 1),
    (1_000_000, 1),
    (1_000_000, 1),
    (1_000_000, 1),
    (1_000_000, 1),
    (1_000_000, 1),
    (1_000_000, 1),
    (1_000_000, 1),
    (50_000_000, 1),
    (1_000_000, 1),
    (1_500_000, 2),
    (500_000, 1),
    (0, 1),
    (0, 11),
    (60_000_000, 1),
];

/// The GCRA trace (10 per minute, burst 4): a burst, a refusal, a refill, a cost of 3, a cost
/// above the burst, a quiet period.
const GCRA_TRACE: [(u64, u64); 10] = [
    (0, 1),
    (0, 1),
    (1_000_000, 1),
    (0, 1),
    (0, 1),
    (6_000_000, 1),
    (20_000_000, 3),
    (0, 5),
    (3_000_000, 0),
    (120_000_000, 1),
];

/// A backend on a manual clock starting at [`T0`] (no deny cache, one call per decision).
async fn setup() -> (
    support::TestRedis,
    RedisConnection,
    RedisBackend,
    ManualClock,
) {
    let redis = support::shared();
    let clock = ManualClock::new(T0);
    let conn = redis.config.connect().await.unwrap();
    let backend = RedisBackend::builder(redis.config.connect().await.unwrap())
        .prefix(redis.prefix.clone())
        .client_clock(clock.clone())
        .deny_cache_capacity(0)
        .batching(false)
        .build();
    (redis, conn, backend, clock)
}

/// The raw value of `key` as lowercase hex (`-` when absent).
async fn stored_hex(conn: &RedisConnection, key: &str) -> String {
    let v: Option<Vec<u8>> = conn.query(driver::cmd("GET").arg(key)).await.unwrap();
    v.map_or("-".to_owned(), |bytes| {
        bytes.iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    })
}

/// Runs `trace` through `limiter` and returns one line per step: step, time since T0 (µs),
/// cost, admitted, the key's value in hex.
async fn run(
    trace: &[(u64, u64)],
    limiter: &RedisKeyedLimiter,
    key_name: &str,
    conn: &RedisConnection,
    clock: &ManualClock,
) -> Vec<String> {
    let key = LimitKey::new("golden");
    let mut at = 0;
    let mut lines = Vec::new();
    for (step, &(gap, cost)) in trace.iter().enumerate() {
        clock.advance(Duration::from_micros(gap));
        at += gap;
        let d = limiter.check(&key, cost).await.unwrap();
        let admitted = if d.is_allowed() { "yes" } else { "no" };
        let hex = stored_hex(conn, key_name).await;
        lines.push(format!("{step} {at} {cost} {admitted} {hex}"));
    }
    lines
}

/// Compares `lines` with the data lines (not `#` comments, not blank) of the golden file.
fn assert_golden(file: &str, expected: &str, lines: &[String]) {
    let want: Vec<&str> = expected
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(
        want == lines,
        "the bytes Redis holds differ from tests/golden/{file}: the stored format (a contract \
         between instances of different versions) changed. If that is deliberate, edit the \
         file by hand with the lines below and add a CHANGELOG entry.\nexpected:\n{}\ngot:\n{}",
        want.join("\n"),
        lines.join("\n"),
    );
}

#[tokio::test]
async fn window_state_bytes_match_the_golden_file() {
    let (_redis, conn, backend, clock) = setup().await;
    let limiter = backend.keyed("w", Quota::per_minute(10)).unwrap();
    let key_name = backend.key_name("w", &LimitKey::new("golden"));
    let lines = run(&WINDOW_TRACE, &limiter, &key_name, &conn, &clock).await;
    assert_golden(
        "rate_limit_window.txt",
        include_str!("golden/rate_limit_window.txt"),
        &lines,
    );
}

#[tokio::test]
async fn gcra_state_bytes_match_the_golden_file() {
    let (_redis, conn, backend, clock) = setup().await;
    let quota = Quota::rate(10, Duration::from_secs(60)).burst(4);
    let limiter = backend.keyed("g", quota).unwrap();
    let key_name = backend.key_name("g", &LimitKey::new("golden"));
    let lines = run(&GCRA_TRACE, &limiter, &key_name, &conn, &clock).await;
    assert_golden(
        "rate_limit_gcra.txt",
        include_str!("golden/rate_limit_gcra.txt"),
        &lines,
    );
}

/// "10/minute" at its worst (ten live admissions of one unit each, the most it holds) takes
/// 44 bytes, the longest string Redis stores inline (`embstr`), which keeps its reads and
/// writes cheap.
#[tokio::test]
async fn ten_per_minute_fits_an_inline_redis_string() {
    let (_redis, conn, backend, clock) = setup().await;
    let limiter = backend.keyed("w", Quota::per_minute(10)).unwrap();
    let key = LimitKey::new("embstr");
    let key_name = backend.key_name("w", &key);
    // Admissions spread over the whole minute (the widest times), then refusals and slides:
    // the state never grows past ten slots.
    let mut longest = 0;
    for i in 0..40u64 {
        clock.advance(Duration::from_micros(if i == 0 {
            0
        } else {
            5_999_999 + i % 3
        }));
        limiter.check(&key, 1).await.unwrap();
        let len: usize = conn
            .query(driver::cmd("STRLEN").arg(&key_name))
            .await
            .unwrap();
        assert!(len <= 44, "step {i}: {len} bytes");
        longest = longest.max(len);
        let encoding: String = conn
            .query(driver::cmd("OBJECT").arg("ENCODING").arg(&key_name))
            .await
            .unwrap();
        assert_eq!(encoding, "embstr", "step {i}: {len} bytes");
    }
    assert_eq!(longest, 44, "the worst case was reached");
}
