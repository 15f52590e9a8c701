//! Each Lua script of the Redis rate limiter, run by hand: the checked-in assembled file
//! (`src/rate_limit/redis/lua/assembled/*.lua`, the very text the code sends, a unit test
//! checks) is sent with a plain `EVAL` and fixed arguments, and must answer what the Rust path
//! (`RedisBackend` on the same server, on a fixed client clock) answers for the same requests,
//! and leave the same bytes in Redis.
//!
//! The replies are read here from the formats the scripts' headers document, independently of
//! the crate's decoders, so these tests also pin the reply formats.
#![cfg(all(feature = "rate-limit", feature = "redis"))]

mod rate_limit_common;
use rampart_test_support as support;

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use rate_limit_common::{T0, cost_header, req_with};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_rampart::clock::ManualClock;
use tower_rampart::rate_limit::{
    Key, Limit, LimitKey, MissingKey, Quota, QuotaDecision, RateLimitDecision, RateLimitLayer,
    RedisBackend,
};
use tower_rampart::redis::{RedisConnection, driver};

const GCRA_KEYS: &str = include_str!("../src/rate_limit/redis/lua/assembled/gcra_keys.lua");
const GCRA_ONE: &str = include_str!("../src/rate_limit/redis/lua/assembled/gcra_one.lua");
const WINDOW_KEYS: &str = include_str!("../src/rate_limit/redis/lua/assembled/window_keys.lua");
const WINDOW_ONE: &str = include_str!("../src/rate_limit/redis/lua/assembled/window_one.lua");
const MULTI: &str = include_str!("../src/rate_limit/redis/lua/assembled/multi.lua");
const BATCH: &str = include_str!("../src/rate_limit/redis/lua/assembled/batch.lua");

/// The window quota of these tests: 3 per 10 s, exact (granularity 1 µs, at most 3 slots).
fn window_quota() -> Quota {
    Quota::window(3, Duration::from_secs(10))
}
/// Its five definition values (multi, batch) and four per-key arguments (window_keys).
const WINDOW_DEF: [u64; 5] = [1, 3, 10_000_000, 1, 3];

/// A bucketed window: 12 per minute in 4 slots of 15 s (at most 5 slots kept).
fn bucketed_quota() -> Quota {
    Quota::window(12, Duration::from_secs(60)).max_slots(4)
}
const BUCKETED_DEF: [u64; 5] = [1, 12, 60_000_000, 15_000_000, 5];

/// The GCRA quota of these tests: 10 per minute (one unit per 6 s), burst 2.
fn gcra_quota() -> Quota {
    Quota::rate(10, Duration::from_secs(60)).burst(2)
}
const GCRA_DEF: [u64; 5] = [2, 6_000_000, 2, 0, 0];
const T: u64 = 6_000_000;
const B: u64 = 2;

/// What the tests compare of one quota's decision.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    allowed: bool,
    remaining: u64,
    reset_us: u64,
    /// `None` when admitted or never.
    retry_us: Option<u64>,
    impossible: bool,
}

fn seen(d: &QuotaDecision) -> Seen {
    Seen {
        allowed: d.is_allowed(),
        remaining: d.remaining(),
        reset_us: d.reset_after().as_micros() as u64,
        retry_us: d.retry_after().map(|r| r.as_micros() as u64),
        impossible: d.is_impossible(),
    }
}

/// A window decision from window_keys' three integers: remaining (`-1 - remaining` if
/// refused), reset, retry (0 if admitted, -1: never).
fn window_reply(v: i64, reset: i64, retry: i64) -> Seen {
    let allowed = v >= 0;
    Seen {
        allowed,
        remaining: if allowed { v } else { -1 - v } as u64,
        reset_us: reset as u64,
        retry_us: (!allowed && retry >= 0).then_some(retry as u64),
        impossible: !allowed && retry < 0,
    }
}

/// A GCRA decision from the microseconds of the bucket in use after it.
fn gcra_used(allowed: bool, used: u64, retry_us: Option<u64>, impossible: bool) -> Seen {
    let units = used.div_ceil(T);
    Seen {
        allowed,
        remaining: B.saturating_sub(units),
        reset_us: if used == 0 { 0 } else { used - (units - 1) * T },
        retry_us,
        impossible,
    }
}

/// A GCRA decision from gcra_keys' one integer: admitted, the microseconds in use (>= 0);
/// refused, minus the retry time; -2^52 minus the microseconds in use if the cost exceeds the
/// burst.
fn gcra_reply(v: i64, cost: u64) -> Seen {
    const IMPOSSIBLE: i64 = -(1 << 52);
    if v >= 0 {
        gcra_used(true, v as u64, None, false)
    } else if v <= IMPOSSIBLE {
        gcra_used(false, (IMPOSSIBLE - v) as u64, None, true)
    } else {
        let retry = (-v) as u64;
        gcra_used(false, retry + B * T - cost * T, Some(retry), false)
    }
}

/// `EVAL script` with `keys` and `args`.
async fn eval(conn: &RedisConnection, script: &str, keys: &[&str], args: &[u64]) -> Vec<i64> {
    conn.query(
        driver::cmd("EVAL")
            .arg(script)
            .arg(keys.len())
            .arg(keys)
            .arg(args),
    )
    .await
    .unwrap()
}

/// The raw bytes stored under `key`.
async fn raw(conn: &RedisConnection, key: &str) -> Option<Vec<u8>> {
    conn.query(driver::cmd("GET").arg(key)).await.unwrap()
}

/// A Redis, a raw connection to it, and a backend deciding on `clock` (no deny cache, one
/// script call per request) with keys under `<prefix>rust:`.
async fn setup(clock: &ManualClock) -> (support::TestRedis, RedisConnection, RedisBackend) {
    let redis = support::shared();
    let conn = redis.config.connect().await.unwrap();
    let backend = RedisBackend::builder(redis.config.connect().await.unwrap())
        .prefix(format!("{}rust:", redis.prefix))
        .client_clock(clock.clone())
        .deny_cache_capacity(0)
        .batching(false)
        .build();
    (redis, conn, backend)
}

/// Steps of the single-quota traces: (microseconds to advance, cost). Admissions, refusals,
/// a probe of cost 0, a cost above the limit, the window's first admissions leaving, a long
/// quiet period.
const STEPS: [(u64, u64); 12] = [
    (0, 1),
    (0, 1),
    (1_000_000, 1),
    (0, 1),
    (2_000_000, 0),
    (500_000, 2),
    (6_000_000, 1),
    (0, 5),
    (4_000_000, 2),
    (7_000_000, 1),
    (0, 1),
    (30_000_000, 3),
];

/// A window decision from window_one's reply: admitted, one integer `reset * (limit + 1) +
/// remaining`; otherwise window_keys' three integers.
fn window_one_reply(limit: u64, reply: &driver::Value) -> Seen {
    match reply {
        driver::Value::Int(v) => {
            let v = *v as u64;
            Seen {
                allowed: true,
                remaining: v % (limit + 1),
                reset_us: v / (limit + 1),
                retry_us: None,
                impossible: false,
            }
        }
        driver::Value::Array(values) => {
            let [
                driver::Value::Int(v),
                driver::Value::Int(reset),
                driver::Value::Int(retry),
            ] = values.as_slice()
            else {
                panic!("window_one replied {values:?}");
            };
            assert!(*v < 0, "an admission that fits is packed: {values:?}");
            window_reply(*v, *reset, *retry)
        }
        other => panic!("window_one replied {other:?}"),
    }
}

/// `window_keys` for one key and `window_one` (what the backend sends for a request decided
/// alone), each run by hand on a key of its own, decide and store exactly what the backend
/// does, exact and bucketed.
#[tokio::test]
async fn window_keys_and_window_one_run_by_hand_answer_like_the_backend() {
    for (quota, def) in [
        (window_quota(), WINDOW_DEF),
        (bucketed_quota(), BUCKETED_DEF),
    ] {
        let clock = ManualClock::new(T0);
        let (redis, conn, backend) = setup(&clock).await;
        let limiter = backend.keyed("w", quota).unwrap();
        let key = LimitKey::new("client");
        let ours = backend.key_name("w", &key);
        let by_hand = format!("{}eval:{{client}}:w", redis.prefix);
        let by_hand_one = format!("{}one:{{client}}:w", redis.prefix);
        let mut refused = 0;
        for (step, &(gap, cost)) in STEPS.iter().enumerate() {
            clock.advance(Duration::from_micros(gap));
            let now = T0 + STEPS[..=step].iter().map(|s| s.0).sum::<u64>();
            let want = seen(&limiter.check(&key, cost).await.unwrap());
            let mut args = vec![cost, now];
            args.extend_from_slice(&def[1..]);
            let reply = eval(&conn, WINDOW_KEYS, &[&by_hand], &args).await;
            assert_eq!(reply.len(), 3, "{quota:?} step {step}");
            assert_eq!(
                window_reply(reply[0], reply[1], reply[2]),
                want,
                "{quota:?} step {step}"
            );
            let one: driver::Value = conn
                .query(
                    driver::cmd("EVAL")
                        .arg(WINDOW_ONE)
                        .arg(1)
                        .arg(&by_hand_one)
                        .arg(&args),
                )
                .await
                .unwrap();
            assert_eq!(
                window_one_reply(def[1], &one),
                want,
                "{quota:?} step {step}: window_one"
            );
            assert_eq!(
                raw(&conn, &by_hand).await,
                raw(&conn, &ours).await,
                "{quota:?} step {step}"
            );
            assert_eq!(
                raw(&conn, &by_hand_one).await,
                raw(&conn, &ours).await,
                "{quota:?} step {step}: window_one"
            );
            refused += usize::from(!want.allowed);
        }
        assert!(refused >= 3, "{quota:?}: refusals took part");
    }
}

/// `gcra_keys` for one key and `gcra_one` (what the backend sends for a request decided
/// alone), each run by hand on a key of its own, decide and store exactly what the backend
/// does.
#[tokio::test]
async fn gcra_keys_and_gcra_one_run_by_hand_answer_like_the_backend() {
    let clock = ManualClock::new(T0);
    let (redis, conn, backend) = setup(&clock).await;
    let limiter = backend.keyed("g", gcra_quota()).unwrap();
    let key = LimitKey::new("client");
    let ours = backend.key_name("g", &key);
    let by_hand = format!("{}eval:{{client}}:g", redis.prefix);
    let by_hand_one = format!("{}one:{{client}}:g", redis.prefix);
    let mut outcomes = Vec::new();
    for (step, &(gap, cost)) in STEPS.iter().enumerate() {
        clock.advance(Duration::from_micros(gap));
        let now = T0 + STEPS[..=step].iter().map(|s| s.0).sum::<u64>();
        let want = seen(&limiter.check(&key, cost).await.unwrap());
        let reply = eval(&conn, GCRA_KEYS, &[&by_hand], &[cost, now, T, B]).await;
        assert_eq!(reply.len(), 1, "step {step}");
        assert_eq!(gcra_reply(reply[0], cost), want, "step {step}");
        let one: i64 = conn
            .query(
                driver::cmd("EVAL")
                    .arg(GCRA_ONE)
                    .arg(1)
                    .arg(&by_hand_one)
                    .arg(&[cost, now, T, B]),
            )
            .await
            .unwrap();
        assert_eq!(gcra_reply(one, cost), want, "step {step}: gcra_one");
        assert_eq!(
            raw(&conn, &by_hand).await,
            raw(&conn, &ours).await,
            "step {step}"
        );
        assert_eq!(
            raw(&conn, &by_hand_one).await,
            raw(&conn, &ours).await,
            "step {step}: gcra_one"
        );
        outcomes.push((want.allowed, want.impossible));
    }
    // Admissions, refusals and a cost above the burst all took part.
    for outcome in [(true, false), (false, false), (false, true)] {
        assert!(outcomes.contains(&outcome), "{outcome:?} in {outcomes:?}");
    }
}

/// A layer in shadow mode (every decision reaches the handler, refused ones too) with a
/// window quota per address ("ip") and a GCRA quota per `x-user` header when present
/// ("user"), the `x-cost` header as cost; the handler records each request's decision.
fn recording_layer(
    backend: RedisBackend,
    clock: &ManualClock,
    log: &Arc<Mutex<Vec<RateLimitDecision>>>,
) -> impl Service<Request<Full<Bytes>>, Error = Infallible> {
    let layer = RateLimitLayer::builder()
        .quota("ip", window_quota(), Key::peer_ip())
        .limit(
            Limit::new("user", gcra_quota(), Key::header("x-user"))
                .on_missing_key(MissingKey::Skip),
        )
        .cost_with(cost_header)
        .shadow(true)
        .backend(backend)
        .clock(clock.clone())
        .build()
        .unwrap();
    let log = log.clone();
    layer.layer(service_fn(move |req: Request<Full<Bytes>>| {
        let log = log.clone();
        async move {
            let d = req.extensions().get::<RateLimitDecision>().unwrap().clone();
            log.lock().unwrap().push(d);
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        }
    }))
}

/// The recorded decision of one request: all admitted, then (quota name, decision) in the
/// order of the layer's quotas.
fn recorded(d: &RateLimitDecision) -> (bool, Vec<(String, Seen)>) {
    let quotas = d
        .quotas()
        .iter()
        .map(|q| (q.name().to_owned(), seen(q.decision())))
        .collect();
    (d.is_allowed(), quotas)
}

/// The key the backend stores quota `name` of a request under (found by its suffix: the
/// header key's text is the crate's business).
async fn stored_key(conn: &RedisConnection, prefix: &str, name: &str) -> String {
    let keys: Vec<String> = conn
        .query(driver::cmd("KEYS").arg(format!("{prefix}rust:*:{name}")))
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    keys.into_iter().next().unwrap()
}

#[tokio::test]
async fn multi_run_by_hand_answers_like_the_backend() {
    let clock = ManualClock::new(T0);
    let (redis, conn, backend) = setup(&clock).await;
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut svc = recording_layer(backend, &clock, &log);
    let ip_key = format!("{}eval:{{ip}}:ip", redis.prefix);
    let user_key = format!("{}eval:{{user}}:user", redis.prefix);
    // Both quotas on every request (the user header is always there): the "multi" script.
    let mut outcomes = Vec::new();
    for (step, &(gap, cost)) in STEPS.iter().enumerate() {
        clock.advance(Duration::from_micros(gap));
        let now = T0 + STEPS[..=step].iter().map(|s| s.0).sum::<u64>();
        let req = req_with(
            "198.51.100.1:1",
            &[("x-user", "alice"), ("x-cost", &cost.to_string())],
        );
        svc.ready().await.unwrap().call(req).await.unwrap();
        let want = recorded(log.lock().unwrap().last().unwrap());
        let mut args = vec![cost, now];
        args.extend_from_slice(&WINDOW_DEF);
        args.extend_from_slice(&GCRA_DEF);
        let reply = eval(&conn, MULTI, &[&ip_key, &user_key], &args).await;
        // All admitted, then per quota: admitted, a, b, retry (-1: never), with (a, b) =
        // (remaining, reset) for a window and (microseconds in use, 0) for GCRA.
        assert_eq!(reply.len(), 9, "step {step}");
        let [
            all,
            w_ok,
            w_rem,
            w_reset,
            w_retry,
            g_ok,
            g_used,
            g_zero,
            g_retry,
        ] = reply[..]
        else {
            unreachable!()
        };
        assert_eq!(g_zero, 0);
        let window = if w_ok == 1 {
            window_reply(w_rem, w_reset, 0)
        } else {
            window_reply(-1 - w_rem, w_reset, w_retry)
        };
        let gcra = gcra_used(
            g_ok == 1,
            g_used as u64,
            (g_ok == 0 && g_retry >= 0).then_some(g_retry as u64),
            g_ok == 0 && g_retry < 0,
        );
        let got = (
            all == 1,
            vec![("ip".to_owned(), window), ("user".to_owned(), gcra)],
        );
        if want.1.is_empty() {
            // A cost above a quota's limit: the layer refuses without asking Redis.
            assert!(
                !got.0 && got.1.iter().any(|(_, s)| s.impossible),
                "step {step}"
            );
        } else {
            assert_eq!(got, want, "step {step}");
        }
        // The first step admits, so both paths hold both keys from then on.
        for (by_hand, name) in [(&ip_key, "ip"), (&user_key, "user")] {
            let ours = stored_key(&conn, &redis.prefix, name).await;
            let (a, b) = (raw(&conn, by_hand).await, raw(&conn, &ours).await);
            assert!(a.is_some(), "{name}, step {step}");
            assert_eq!(a, b, "{name}, step {step}");
        }
        outcomes.push((all == 1, w_ok != g_ok));
    }
    // Admitted, refused, and refused by one quota only (which then consumed nothing).
    assert!(outcomes.iter().any(|o| o.0));
    assert!(outcomes.iter().any(|o| !o.0 && o.1));
}

#[tokio::test]
async fn batch_run_by_hand_answers_like_the_same_requests_one_by_one() {
    let clock = ManualClock::new(T0);
    let (redis, conn, backend) = setup(&clock).await;
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut svc = recording_layer(backend, &clock, &log);
    // Requests: (time after T0, address, with the user, cost). The batch decides them in
    // order against the state the ones before left; the layer gets them one by one.
    let requests: [(u64, u8, bool, u64); 8] = [
        (0, 1, true, 1),
        (0, 1, true, 1),
        (1_000_000, 1, true, 1), // refused by the user's burst: consumes nothing
        (1_000_000, 1, false, 1),
        (2_000_000, 2, false, 2),
        (2_000_000, 1, false, 1), // the address is full
        (3_000_000, 2, false, 2), // 2 + 2 > 3
        (12_000_000, 1, true, 1), // the first admissions have left; the bucket refilled
    ];
    let mut want = Vec::new();
    let mut at = 0;
    for &(time, addr, user, cost) in &requests {
        clock.advance(Duration::from_micros(time - at));
        at = time;
        let cost_text = cost.to_string();
        let mut headers = vec![("x-cost", cost_text.as_str())];
        if user {
            headers.push(("x-user", "alice"));
        }
        let req = req_with(&format!("198.51.100.{addr}:1"), &headers);
        svc.ready().await.unwrap().call(req).await.unwrap();
        want.push(recorded(log.lock().unwrap().last().unwrap()));
    }
    // The batch: mode 1 (each request carries its time); two definitions; three shapes.
    let keys = [
        format!("{}eval:{{ip:1}}:ip", redis.prefix),
        format!("{}eval:{{user}}:user", redis.prefix),
        format!("{}eval:{{ip:2}}:ip", redis.prefix),
    ];
    let mut args = vec![1, 2, 3];
    args.extend_from_slice(&WINDOW_DEF);
    args.extend_from_slice(&GCRA_DEF);
    // Shapes: cost 1 on both quotas; cost 1 on the address alone; cost 2 on it alone.
    args.extend_from_slice(&[1, 2, 1, 2, 1, 1, 1, 2, 1, 1]);
    for &(time, addr, user, cost) in &requests {
        let shape = match (user, cost) {
            (true, 1) => 1,
            (false, 1) => 2,
            _ => 3,
        };
        args.extend_from_slice(&[shape, T0 + time, if addr == 1 { 1 } else { 3 }]);
        if user {
            args.push(2);
        }
    }
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let reply = eval(&conn, BATCH, &keys, &args).await;
    // Per request and check, the per-key formats: three integers for the window, one for
    // GCRA. A request is admitted iff all its checks are.
    let mut rest = &reply[..];
    for (i, &(_, _, user, cost)) in requests.iter().enumerate() {
        let window = window_reply(rest[0], rest[1], rest[2]);
        rest = &rest[3..];
        let mut got = vec![("ip".to_owned(), window)];
        if user {
            got.push(("user".to_owned(), gcra_reply(rest[0], cost)));
            rest = &rest[1..];
        }
        let all = got.iter().all(|(_, s)| s.allowed);
        assert_eq!((all, got), want[i], "request {i}");
    }
    assert!(rest.is_empty());
    // Both paths left the same state.
    let ip1 = backend_key(&redis.prefix, "198.51.100.1", "ip");
    let ip2 = backend_key(&redis.prefix, "198.51.100.2", "ip");
    let user = stored_key(&conn, &redis.prefix, "user").await;
    for (by_hand, ours) in keys.iter().zip([&ip1, &user, &ip2]) {
        let (a, b) = (raw(&conn, by_hand).await, raw(&conn, ours).await);
        assert!(a.is_some());
        assert_eq!(a, b, "{by_hand} and {ours}");
    }
}

/// The backend's key of quota `name` for the address `ip` (see `RedisBackend::key_name`).
fn backend_key(prefix: &str, ip: &str, name: &str) -> String {
    let key = LimitKey::ip(ip.parse::<IpAddr>().unwrap());
    format!("{prefix}rust:{{{key}}}:{name}")
}
