//! The Redis rate limiter behind Redis Sentinel (one primary, one replica, three sentinels,
//! from the test support): the replay tests of `rate_limit_redis.rs` (memory vs Redis and
//! batched vs one by one, identical responses), and the accounting check across a
//! failover under load: two instances keep sending requests on a window quota and a GCRA
//! quota while the sentinels fail the primary over; the client-side log of admissions never
//! shows either quota exceeded, and the window quota ends exactly used up (its state crossed
//! the failover).
#![cfg(all(feature = "rate-limit", feature = "redis"))]

mod rate_limit_common;
use rampart_test_support as support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use rate_limit_common::accounting::AdmissionLog;
use rate_limit_common::replay::{self, Target};
use rate_limit_common::{limited, req_with, send};
use support::RedisSentinel;
use tower_rampart::rate_limit::{
    FailureMode, Key, Limit, LimitKey, Quota, RateLimitLayer, RedisBackend,
};
use tower_rampart::redis::Topology;

/// Each test finishes well within this, setup included, on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(45);
const FAILOVER_DEADLINE: Duration = Duration::from_secs(20);

/// The replay tests, on the primary the sentinels name. A current-thread runtime, as the
/// single-server batching test uses: the bound on script calls assumes the requests queue
/// behind the two first calls (the watch task of the connection shares the thread).
#[tokio::test]
async fn replay_tests_behind_sentinel() {
    let setup = RedisSentinel::start();
    tokio::time::timeout(DEADLINE, async {
        let config = setup.config();
        let conn = config.connect().await.unwrap();
        assert_eq!(conn.topology(), Some(Topology::Sentinel));
        replay::memory_and_redis_give_identical_responses(&config, "replay:").await;
        replay::multi_quota_traces_are_identical(&config, "multi:").await;
        let target = Target {
            config: config.clone(),
            prefix: "batch:".to_owned(),
            servers: &setup,
            // As on one server: the first two requests of a round alone, the other 48 in
            // one call.
            most_batch_calls: Some(8 * 3),
        };
        replay::batch_decides_like_one_by_one(&target).await;
        replay::batched_and_single_calls_agree(&config, "agree:").await;
    })
    .await
    .expect("deadline");
}

/// Window quota "a": [`A_LIMIT`] per minute.
const A_LIMIT: u64 = 250;
/// GCRA quota "b": one unit per [`B_INTERVAL`], burst [`B_BURST`].
const B_INTERVAL: Duration = Duration::from_millis(20);
const B_BURST: u64 = 5;

/// Every request carries both keys: "b" paces the admissions (about 50/s), so "a" is used
/// up a few seconds after the failover, and both quotas are deciding while it happens.
/// Redis unreachable: 503 (`FailureMode::Closed`), never a local admission, so that every
/// admission in the log was decided by Redis.
fn layer(backend: RedisBackend) -> RateLimitLayer {
    let by = |name: &'static str| {
        Key::custom(move |req: &Request<()>| {
            req.headers()
                .get(name)
                .map(|v| LimitKey::new(v.to_str().unwrap_or_default()))
        })
    };
    RateLimitLayer::builder()
        .limit(Limit::new(
            "a",
            Quota::per_minute(A_LIMIT as u32),
            by("x-a"),
        ))
        .limit(Limit::new(
            "b",
            Quota::rate(1, B_INTERVAL).burst(B_BURST as u32),
            by("x-b"),
        ))
        .failure_mode(FailureMode::Closed)
        .backend(backend)
        .build()
        .unwrap()
}

fn request() -> Request<Full<Bytes>> {
    req_with("192.0.2.1:1", &[("x-a", "ka"), ("x-b", "kb")])
}

/// Two instances, eight tasks sending back to back, a `SENTINEL FAILOVER` half a second in;
/// the load goes on until "a" is used up and a little longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_quota_exceeded_across_a_sentinel_failover() {
    tokio::time::timeout(
        DEADLINE,
        across("SENTINEL FAILOVER", |setup| {
            let old = setup.primary_port();
            setup.failover();
            old
        }),
    )
    .await
    .expect("deadline");
}

/// The same with the primary killed (SIGKILL): the sentinels promote the replica after
/// `down-after-milliseconds`. Replication is asynchronous, so an admission the old primary
/// acknowledged but had not yet sent to the replica would be forgotten and could let "a"
/// admit beyond its quota; the check below would then fail with the count (on loopback the
/// replica lags by well under a millisecond and none was seen).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_quota_exceeded_across_a_killed_primary() {
    tokio::time::timeout(
        DEADLINE,
        across("primary killed", RedisSentinel::kill_primary),
    )
    .await
    .expect("deadline");
}

async fn across(what: &str, fail_over: impl FnOnce(&mut RedisSentinel) -> u16) {
    let mut setup = tokio::task::block_in_place(RedisSentinel::start);
    let config = setup.config();
    let mut instances = Vec::new();
    for _ in 0..2 {
        let backend = RedisBackend::builder(config.connect().await.unwrap())
            .prefix("acct:")
            .deny_cache_capacity(0)
            .build();
        instances.push(layer(backend));
    }
    let log = Arc::new(AdmissionLog::new());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..8usize {
        let mut svc = limited(&instances[i % 2]);
        let (log, stop) = (log.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let (mut refused, mut unavailable) = (0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let (status, _, body) = send(&mut svc, request()).await;
                match status {
                    StatusCode::OK => {
                        assert!(!body.contains("degraded"), "{body}");
                        log.record("a", sent, 1);
                        log.record("b", sent, 1);
                    }
                    StatusCode::TOO_MANY_REQUESTS => refused += 1,
                    StatusCode::SERVICE_UNAVAILABLE => {
                        unavailable.push((sent, Instant::now()));
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    other => panic!("unexpected status {other}"),
                }
                tokio::task::yield_now().await;
            }
            (refused, unavailable)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let admitted_before = log.total("a");
    let (old, new) = tokio::task::block_in_place(|| {
        let old = fail_over(&mut setup);
        (old, setup.wait_for_new_primary(old, FAILOVER_DEADLINE))
    });
    let admitted_at_switch = log.total("a");
    // Until "a" is used up (it admits about 50/s), and one more second.
    let until = Instant::now() + Duration::from_secs(15);
    while log.total("a") < A_LIMIT && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut refused, mut unavailable) = (0, Vec::new());
    for t in tasks {
        let (r, u) = t.await.unwrap();
        refused += r;
        unavailable.extend(u);
    }
    let window = match (
        unavailable.iter().map(|u| u.0).min(),
        unavailable.iter().map(|u| u.1).max(),
    ) {
        (Some(first), Some(last)) => last - first,
        _ => Duration::ZERO,
    };
    let most = log.most_in_any_window("a", Duration::from_secs(60));
    eprintln!(
        "limiter, {what} ({old} -> {new}): a admitted {} of {A_LIMIT} ({admitted_before} \
         before the failover started, {admitted_at_switch} when the sentinels agreed on the \
         new primary), {refused} refused (429), {} unavailable (503) within {window:?}; most \
         admitted on a in any minute {most} (beyond the quota: {})",
        log.total("a"),
        unavailable.len(),
        most.saturating_sub(A_LIMIT),
    );
    log.check_window("a", A_LIMIT, Duration::from_secs(60));
    log.check_gcra("b", B_BURST, B_INTERVAL);
    assert!(
        admitted_before > 0 && admitted_before < A_LIMIT,
        "a was deciding when the failover started: {admitted_before}"
    );
    assert_eq!(
        log.total("a"),
        A_LIMIT,
        "a used up exactly: its count crossed the failover"
    );
    assert!(refused > 100, "{refused} refused");
    assert!(window < Duration::from_secs(6), "503s for {window:?}");
}
