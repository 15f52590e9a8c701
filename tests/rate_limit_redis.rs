//! Rate limiting on real `redis-server` processes: the script computes exactly what the memory
//! backend computes, limits are global across instances, the deny cache saves round trips, and
//! a Redis outage follows the configured failure mode.
#![cfg(all(feature = "rate-limit", feature = "redis"))]

mod rate_limit_common;
use rampart_test_support as support;

use std::task::Poll;
use std::time::{Duration, Instant};

use http::StatusCode;
use rate_limit_common::{
    Resp, T0, cost_header, header, limited, refused_by_the_second_quota, req_from, req_with, send,
    status_of,
};
use tower_rampart::clock::ManualClock;
use tower_rampart::rate_limit::{
    FailureMode, Key, Limit, LimitKey, MemoryBackend, MissingKey, Quota, RateLimitLayer,
    RedisBackend,
};
use tower_rampart::redis::driver;

use rate_limit_common::replay::{self, RespFuture, join_in_order, start_all, xorshift};

#[tokio::test]
async fn ten_per_minute_on_the_server_clock() {
    let redis = support::shared();
    let conn = redis.config.connect().await.unwrap();
    let backend = RedisBackend::builder(conn)
        .prefix(redis.prefix.clone())
        .build();
    let layer = RateLimitLayer::builder()
        .quota("ip", Quota::parse("10/minute").unwrap(), Key::peer_ip())
        .backend(backend.clone())
        .build()
        .unwrap();
    let mut svc = limited(&layer);
    for i in 0..10 {
        let (status, h, body) = send(&mut svc, req_from("198.51.100.7:1")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, (9 - i).to_string());
        assert_eq!(header(&h, "ratelimit"), format!(r#""ip";r={};t=60"#, 9 - i));
    }
    let (status, h, body) = send(&mut svc, req_from("198.51.100.7:1")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        body,
        r#"{"detail": "Rate limit exceeded: 10 per 1 minute"}"#
    );
    assert_eq!(header(&h, "retry-after"), "60");
    // The state lives in Redis under a hash-tagged key and expires when the window is empty.
    let key = backend.key_name("ip", &LimitKey::ip("198.51.100.7".parse().unwrap()));
    assert!(key.ends_with("{ip:198.51.100.7}:ip"), "{key}");
    let conn = backend.connection();
    let pttl: i64 = conn.query(driver::cmd("PTTL").arg(&key)).await.unwrap();
    assert!((58_000..=60_001).contains(&pttl), "{pttl}");
    let m = layer.metrics();
    assert_eq!((m.allowed, m.denied, m.degraded), (10, 1, 0));
}

/// Replays one request trace through a memory layer and a Redis layer driven by the same
/// manual clock: every response (status, Retry-After, RateLimit, RateLimit-Policy, body) must be
/// identical, for both meanings.
#[tokio::test]
async fn the_same_trace_gives_identical_responses_on_memory_and_redis() {
    let redis = support::shared();
    replay::memory_and_redis_give_identical_responses(&redis.config, &redis.prefix).await;
}

/// Several quotas per request (a window per IP, a GCRA per user, a bucketed global window),
/// random costs: the all-or-nothing script and the memory backend give identical responses.
#[tokio::test]
async fn multi_quota_traces_are_identical_on_memory_and_redis() {
    let redis = support::shared();
    replay::multi_quota_traces_are_identical(&redis.config, &redis.prefix).await;
}

/// The raw decisions of the script and of the Rust functions agree on random quotas, costs and
/// times, including large values where a float division would go wrong.
#[tokio::test]
async fn script_and_rust_functions_agree_on_random_traces() {
    let redis = support::shared();
    let conn = redis.config.connect().await.unwrap();
    let backend = RedisBackend::builder(conn)
        .prefix(redis.prefix.clone())
        .build();
    let memory = MemoryBackend::new();
    let mut next = xorshift(0xdead_beef_cafe_f00du64);
    let mut checked = 0;
    for round in 0..60u64 {
        let window = Duration::from_micros(1_000 + next(5_000_000_000));
        let n = 1 + next(if round % 3 == 0 { 5_000 } else { 30 }) as u32;
        let quota = match round % 4 {
            0 | 1 => Quota::window(n, window).max_slots(1 + next(40) as u32),
            2 => Quota::rate(n, window).burst(1 + next(20) as u32),
            _ => Quota::rate(1 + next(3) as u32, Duration::from_secs(366 * 86_400))
                .burst(1 + next(8) as u32),
        };
        if quota.validate().is_err() {
            continue;
        }
        let name = format!("q{round}");
        let mem = memory.keyed(&name, quota).unwrap();
        let red = backend.keyed(&name, quota).unwrap();
        // Now: today, or far in the future (year ~2250, close to 2^53 µs).
        let mut now = if round % 5 == 0 && round % 4 != 3 {
            8_800_000_000_000_000 + next(1 << 40)
        } else {
            T0 + next(1 << 40)
        };
        let key = LimitKey::new(format!("k{round}"));
        let step = (quota.window_length().as_micros() as u64 / n as u64).max(1);
        for _ in 0..60 {
            now += match next(4) {
                0 => 0,
                1 => next(step),
                2 => next(step * 4),
                _ => next(quota.window_length().as_micros() as u64 * 2),
            };
            let cost = next(quota.burst_size().min(5) + 2);
            let want = mem.check_at(&key, cost, now);
            let got = red.check_at(&key, cost, now).await.unwrap();
            assert_eq!(got, want, "round {round} {quota:?} now {now} cost {cost}");
            checked += 1;
        }
    }
    assert!(checked > 2_000);
}

/// The window state's compact form is chosen from the quota (the widths of its times and
/// counts): a quota changed under the same name re-encodes the state, and a clock stepping
/// back records at the newest slot's time. Both must decide exactly like the memory backend.
#[tokio::test]
async fn window_state_survives_quota_changes_and_clock_steps_back() {
    let redis = support::shared();
    let conn = redis.config.connect().await.unwrap();
    let backend = RedisBackend::builder(conn)
        .prefix(format!("{}qc:", redis.prefix))
        .build();
    let memory = MemoryBackend::new();
    let mut next = xorshift(0x0dd_ba11_u64);
    let mut checked = 0;
    for round in 0..60u64 {
        // Quotas of very different widths: windows from 10 s to 366 days (times of 3 to 6
        // bytes), limits up to 70 000 (counts of 1 to 3 bytes), exact or with a granularity.
        // (Not shorter: Redis expires a key by its real time, after about one window, while
        // this trace's clock is a client clock.)
        let mut quotas = Vec::new();
        while quotas.len() < 3 {
            let window = Duration::from_micros(match next(3) {
                0 => 10_000_000 + next(6_000_000),
                1 => 20_000_000 + next(3_000_000_000),
                _ => 86_400_000_000 + next(365 * 86_400_000_000),
            });
            let top = [4, 300, 70_000][next(3) as usize];
            let n = 1 + next(top) as u32;
            let q = match next(2) {
                0 => Quota::window(n, window),
                _ => Quota::window(n, window).max_slots(1 + next(12) as u32),
            };
            if q.validate().is_ok() {
                quotas.push(q);
            }
        }
        let name = format!("q{round}");
        let mem: Vec<_> = quotas
            .iter()
            .map(|q| memory.keyed(&name, *q).unwrap())
            .collect();
        let red: Vec<_> = quotas
            .iter()
            .map(|q| backend.keyed(&name, *q).unwrap())
            .collect();
        let key = LimitKey::new(format!("k{round}"));
        let mut now = T0 + next(1 << 40);
        let mut which = 0;
        for _ in 0..80 {
            let span = quotas[which].window_length().as_micros() as u64;
            let step = (span / quotas[which].limit().max(1)).max(1);
            match next(8) {
                0 => now -= next(step * 3),
                1 => which = next(3) as usize,
                2 => now += next(span),
                _ => now += next(step),
            }
            let cost = [1, 1, 1, 0, 2, 3][next(6) as usize];
            let want = mem[which].check_at(&key, cost, now);
            let got = red[which].check_at(&key, cost, now).await.unwrap();
            assert_eq!(
                got, want,
                "round {round} {:?} now {now} cost {cost}",
                quotas[which]
            );
            checked += 1;
        }
    }
    assert!(checked > 3_000);
}

#[tokio::test]
async fn two_instances_sharing_redis_enforce_one_global_quota() {
    let redis = support::shared();
    let mut instances = Vec::new();
    for _ in 0..2 {
        // Each "server" has its own connection, limiter and deny cache.
        let conn = redis.config.connect().await.unwrap();
        let backend = RedisBackend::builder(conn)
            .prefix(redis.prefix.clone())
            .build();
        let layer = RateLimitLayer::builder()
            .quota("ip", Quota::per_minute(10), Key::peer_ip())
            .backend(backend)
            .build()
            .unwrap();
        instances.push(limited(&layer));
    }
    let mut admitted = 0;
    for i in 0..40 {
        let svc = &mut instances[i % 2];
        if status_of(svc, req_from("203.0.113.50:1")).await == StatusCode::OK {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 10, "10 in total, not 10 per instance");
    // Concurrent callers on both instances cannot overshoot either.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let mut svc = instances[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            status_of(&mut svc, req_from("203.0.113.51:1")).await == StatusCode::OK
        }));
    }
    let mut concurrent = 0;
    for t in tasks {
        concurrent += usize::from(t.await.unwrap());
    }
    assert_eq!(concurrent, 10);
}

#[tokio::test]
async fn a_request_refused_by_its_second_quota_consumes_nothing_on_redis() {
    let redis = support::shared();
    let conn = redis.config.connect().await.unwrap();
    let clock = ManualClock::starting_now();
    let backend = RedisBackend::builder(conn)
        .prefix(redis.prefix.clone())
        .client_clock(clock.clone())
        .deny_cache_capacity(0)
        .build();
    let layer = RateLimitLayer::builder()
        .quota("ip", Quota::per_minute(5), Key::peer_ip())
        .quota(
            "user",
            Quota::rate(2, Duration::from_secs(60)).burst(2),
            Key::header("x-user"),
        )
        .backend(backend.clone())
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut svc = limited(&layer);
    refused_by_the_second_quota(&mut svc, 4, r#""user";r=0;t=30"#).await;
}

#[tokio::test]
async fn the_deny_cache_answers_without_a_round_trip_until_the_retry_time() {
    let server = support::RedisServer::start();
    let conn = server.config().connect().await.unwrap();
    let clock = ManualClock::starting_now();
    let backend = RedisBackend::builder(conn)
        .client_clock(clock.clone())
        .build();
    let layer = RateLimitLayer::builder()
        .quota("ip", Quota::per_minute(3), Key::peer_ip())
        .backend(backend.clone())
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut svc = limited(&layer);
    // Warm up (the first call loads the script: EVALSHA, NOSCRIPT, SCRIPT LOAD, EVALSHA).
    assert_eq!(
        status_of(&mut svc, req_from("192.0.2.1:1")).await,
        StatusCode::OK
    );
    server.reset_stats();
    for _ in 0..3 {
        assert_eq!(
            status_of(&mut svc, req_from("192.0.2.77:1")).await,
            StatusCode::OK
        );
    }
    // The third admission left nothing: Redis said so, and nothing can come back for 60 s.
    for s in 0..50u64 {
        clock.advance(Duration::from_secs(1));
        let (status, h, _) = send(&mut svc, req_from("192.0.2.77:1")).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&h, "retry-after"), (60 - s - 1).to_string());
    }
    let calls = server.command_count("evalsha") + server.command_count("eval");
    assert_eq!(calls, 3, "50 refusals, no Redis call");
    assert_eq!(layer.metrics().deny_cache_hits, 50);
    assert_eq!(backend.deny_cache_len(), 1);
    // Other clients still go to Redis.
    assert_eq!(
        status_of(&mut svc, req_from("192.0.2.78:1")).await,
        StatusCode::OK
    );
    // Once the retry time has passed, Redis is asked again and admits.
    clock.advance(Duration::from_secs(10));
    assert_eq!(
        status_of(&mut svc, req_from("192.0.2.77:1")).await,
        StatusCode::OK
    );
    assert_eq!(server.command_count("evalsha"), 5);
}

/// Issue 14: a request refused by one quota reports, for the quotas that passed, what they
/// would have left had it been admitted. A 0 there is no denial (nothing was consumed), so
/// the deny cache must not refuse the next request that needs only those quotas.
#[tokio::test]
async fn a_quota_that_passed_in_a_refused_request_is_not_cached_as_a_denial() {
    let redis = support::shared();
    let clock = ManualClock::starting_now();
    // Two instances sharing Redis, each with its own deny cache.
    let mut instances = Vec::new();
    for _ in 0..2 {
        let conn = redis.config.connect().await.unwrap();
        let backend = RedisBackend::builder(conn)
            .prefix(redis.prefix.clone())
            .client_clock(clock.clone())
            .build();
        let layer = RateLimitLayer::builder()
            .quota("ip", Quota::per_minute(5), Key::peer_ip())
            .limit(
                Limit::new("user", Quota::per_minute(2), Key::header("x-user"))
                    .on_missing_key(MissingKey::Skip),
            )
            .backend(backend)
            .clock(clock.clone())
            .build()
            .unwrap();
        instances.push(layer);
    }
    let (layer, mut other) = (&instances[0], limited(&instances[1]));
    let mut svc = limited(layer);
    let ip = "203.0.113.90:1";
    // alice uses up her user quota, from another address, on the other instance.
    for _ in 0..2 {
        let r = req_with("203.0.113.91:1", &[("x-user", "alice")]);
        assert_eq!(status_of(&mut other, r).await, StatusCode::OK);
    }
    // The address uses 4 of its 5 units (anonymous requests: only "ip" applies).
    for _ in 0..4 {
        assert_eq!(status_of(&mut svc, req_from(ip)).await, StatusCode::OK);
    }
    // alice from that address: refused by "user"; "ip" passed (it would have had 0 left).
    let (status, h, _) = send(&mut svc, req_with(ip, &[("x-user", "alice")])).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&h, "ratelimit"), r#""user";r=0;t=60"#);
    // The address still has 1 unit in Redis: an anonymous request from it is admitted.
    let (status, h, _) = send(&mut svc, req_from(ip)).await;
    assert_eq!(status, StatusCode::OK, "Redis would admit it: {h:?}");
    assert_eq!(header(&h, "ratelimit"), r#""ip";r=0;t=60"#);
    // Now it is really used up: refused (and from then on from the deny cache).
    assert_eq!(
        status_of(&mut svc, req_from(ip)).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    let hits = layer.metrics().deny_cache_hits;
    assert_eq!(
        status_of(&mut svc, req_from(ip)).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(layer.metrics().deny_cache_hits, hits + 1);
}

/// Issue 14: a request of cost 0 is checked without being counted, so Redis admits it even
/// on a used-up key (reporting 0 left); the deny cache must not refuse it.
#[tokio::test]
async fn a_cost_0_request_is_not_refused_by_the_deny_cache() {
    let redis = support::shared();
    let conn = redis.config.connect().await.unwrap();
    let clock = ManualClock::starting_now();
    let backend = RedisBackend::builder(conn)
        .prefix(redis.prefix.clone())
        .client_clock(clock.clone())
        .build();
    let layer = RateLimitLayer::builder()
        .quota("ip", Quota::per_minute(3), Key::peer_ip())
        .cost_with(cost_header)
        .backend(backend.clone())
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut svc = limited(&layer);
    let ip = "203.0.113.95:1";
    for _ in 0..3 {
        assert_eq!(status_of(&mut svc, req_from(ip)).await, StatusCode::OK);
    }
    // Used up, and cached as such: a request of cost 1 is refused locally.
    assert_eq!(backend.deny_cache_len(), 1);
    assert_eq!(
        status_of(&mut svc, req_from(ip)).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(layer.metrics().deny_cache_hits, 1);
    // A probe of cost 0 is admitted, as Redis (and the memory backend) admit it: 0 left.
    clock.advance(Duration::from_secs(1));
    let (status, h, body) = send(&mut svc, req_with(ip, &[("x-cost", "0")])).await;
    assert_eq!(status, StatusCode::OK, "{h:?}");
    assert_eq!(body, "0");
    assert_eq!(header(&h, "ratelimit"), r#""ip";r=0;t=59"#);
    assert_eq!(layer.metrics().deny_cache_hits, 1);
}

#[tokio::test]
async fn the_script_is_reloaded_after_a_flush() {
    let server = support::RedisServer::start();
    let conn = server.config().connect().await.unwrap();
    let backend = RedisBackend::new(conn);
    let layer = RateLimitLayer::builder()
        .quota("ip", Quota::per_minute(3), Key::peer_ip())
        .backend(backend)
        .build()
        .unwrap();
    let mut svc = limited(&layer);
    assert_eq!(send(&mut svc, req_from("192.0.2.1:1")).await.2, "2");
    let () = server.run(driver::cmd("SCRIPT").arg("FLUSH"));
    assert_eq!(send(&mut svc, req_from("192.0.2.1:1")).await.2, "1");
    assert_eq!(layer.metrics().degraded, 0);
}

/// Starts a server and a layer in `mode`; stops Redis mid-test; checks the degraded answers
/// come fast; restarts Redis and waits for Redis decisions to resume.
async fn outage(mode: FailureMode) -> Vec<Resp> {
    let mut server = support::RedisServer::start();
    let conn = server.config().connect().await.unwrap();
    let layer = RateLimitLayer::builder()
        .quota("ip", Quota::per_minute(2), Key::peer_ip())
        .backend(RedisBackend::new(conn))
        .failure_mode(mode)
        .build()
        .unwrap();
    let mut svc = limited(&layer);
    let first = send(&mut svc, req_from("192.0.2.1:1")).await;
    assert_eq!((first.0, first.2.as_str()), (StatusCode::OK, "1"));

    server.stop();
    let mut degraded = Vec::new();
    for _ in 0..4 {
        let started = Instant::now();
        degraded.push(send(&mut svc, req_from("192.0.2.1:1")).await);
        // Connect timeout 2 s + command timeout 1 s is the worst case for one call.
        assert!(
            started.elapsed() < Duration::from_millis(3_500),
            "{:?}",
            started.elapsed()
        );
    }
    let m = layer.metrics();
    assert_eq!(
        m.degraded, 4,
        "{mode:?}: every decision without Redis is counted"
    );

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let before = layer.metrics().degraded;
        let r = send(&mut svc, req_from("192.0.2.99:1")).await;
        if layer.metrics().degraded == before {
            // Decided by the restarted (empty) Redis.
            assert_eq!((r.0, r.2.as_str()), (StatusCode::OK, "1"), "{mode:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{mode:?}: no recovery within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    degraded
}

#[tokio::test]
async fn redis_outage_with_failure_mode_local() {
    let r = outage(FailureMode::Local).await;
    // The same quota, enforced by this instance alone (which never saw the first request).
    let statuses: Vec<_> = r.iter().map(|r| r.0).collect();
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    assert_eq!(r[0].2, "1 degraded");
}

#[tokio::test]
async fn redis_outage_with_failure_mode_open() {
    let r = outage(FailureMode::Open).await;
    assert!(
        r.iter()
            .all(|r| r.0 == StatusCode::OK && r.2 == "- degraded")
    );
}

#[tokio::test]
async fn redis_outage_with_failure_mode_closed() {
    let r = outage(FailureMode::Closed).await;
    for (status, h, body) in &r {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(header(h, "retry-after"), "1");
        assert_eq!(body, r#"{"detail": "Rate limiter unavailable"}"#);
    }
}

/// The acceptance test of natural batching: requests sent concurrently (so that they queue
/// and share script calls, with repeated keys inside one call) get exactly the responses the
/// same requests get when sent one by one, each in its own script call, on the test-only
/// client clock.
#[tokio::test]
async fn a_concurrent_batch_decides_exactly_like_the_same_requests_one_by_one() {
    let server = support::RedisServer::start();
    // The first two requests of a round go out at once, alone, in calls of their own (two
    // calls may be in flight); the other 48 queue and share one call.
    let target = replay::Target {
        config: server.config(),
        prefix: String::new(),
        servers: &server,
        most_batch_calls: Some(8 * 3),
    };
    replay::batch_decides_like_one_by_one(&target).await;
}

/// The raw decisions of the batch scripts and of the single-request scripts agree on random
/// quotas, costs and times (single-quota requests; the multi-quota script is compared above).
#[tokio::test]
async fn batched_and_single_call_scripts_agree_on_random_traces() {
    let redis = support::shared();
    replay::batched_and_single_calls_agree(&redis.config, &redis.prefix).await;
}

/// Concurrent requests on the server clock: one global quota, many requests queued into
/// shared calls, never more admitted than the quota.
#[tokio::test]
async fn concurrent_requests_on_the_server_clock_never_overshoot() {
    let redis = support::shared();
    let conn = redis.config.connect().await.unwrap();
    let backend = RedisBackend::builder(conn)
        .prefix(redis.prefix.clone())
        .deny_cache_capacity(0)
        .build();
    let layer = RateLimitLayer::builder()
        .quota("all", Quota::per_minute(25), Key::global())
        .quota(
            "ip",
            Quota::rate(12, Duration::from_secs(60)).burst(12),
            Key::peer_ip(),
        )
        .backend(backend)
        .build()
        .unwrap();
    let mut svc = limited(&layer);
    let requests = (0..120)
        .map(|i| req_from(&format!("203.0.113.{}:1", 60 + i % 3)))
        .collect();
    let futures = start_all(&mut svc, requests).await;
    let responses = join_in_order(futures).await;
    let admitted = responses.iter().filter(|r| r.0 == StatusCode::OK).count();
    assert_eq!(admitted, 25, "the global window admits exactly its 25");
    let m = layer.metrics();
    assert_eq!((m.allowed, m.denied, m.degraded), (25, 95, 0));
}

/// A caller that goes away (its future dropped) while queued or even while its own call is
/// in flight takes nothing down with it: every other request of the batch is decided by
/// Redis, and the queued dropped ones consume nothing.
#[tokio::test]
async fn dropped_requests_do_not_break_their_batch() {
    let server = support::RedisServer::start();
    let conn = server.config().connect().await.unwrap();
    let backend = RedisBackend::builder(conn).deny_cache_capacity(0).build();
    let layer = RateLimitLayer::builder()
        .quota("all", Quota::per_minute(100), Key::global())
        .backend(backend)
        .build()
        .unwrap();
    let mut svc = limited(&layer);
    assert_eq!(
        status_of(&mut svc, req_from("192.0.2.1:1")).await,
        StatusCode::OK
    );

    let requests = (0..30).map(|_| req_from("192.0.2.2:1")).collect();
    let mut futures: Vec<Option<RespFuture>> = start_all(&mut svc, requests)
        .await
        .into_iter()
        .map(Some)
        .collect();
    // First poll: request 0 and 1 go out alone (its own call each), the others queue.
    std::future::poll_fn(|cx| {
        for fut in futures.iter_mut().flatten() {
            assert!(fut.as_mut().poll(cx).is_pending());
        }
        Poll::Ready(())
    })
    .await;
    // Every third queued request goes away, then request 0, mid-call (its slot is handed on
    // to the queue when its future is dropped).
    let mut dropped_queued = 0;
    for (i, fut) in futures.iter_mut().enumerate().skip(2) {
        if i % 3 == 0 {
            *fut = None;
            dropped_queued += 1;
        }
    }
    futures[0] = None;
    let kept: Vec<RespFuture> = futures.into_iter().flatten().collect();
    let kept_count = kept.len();
    let responses = join_in_order(kept).await;
    for (status, _, body) in &responses {
        assert_eq!(*status, StatusCode::OK);
        assert!(!body.contains("degraded"), "{body}");
    }
    assert_eq!(layer.metrics().degraded, 0);
    // 1 warm-up + the kept ones, + 1 if request 0's call reached Redis before it went away;
    // the dropped queued requests were never sent.
    let (status, _, body) = send(&mut svc, req_from("192.0.2.3:1")).await;
    assert_eq!(status, StatusCode::OK);
    let remaining: usize = body.parse().unwrap();
    let used = 100 - remaining - 1;
    assert!(
        used == 1 + kept_count || used == 2 + kept_count,
        "{used} units used; {kept_count} kept, {dropped_queued} dropped while queued"
    );
}

/// A batch that fails (Redis gone) fails every decision in it through the failure mode, fast.
#[tokio::test]
async fn a_failed_batch_fails_every_decision_through_the_failure_mode() {
    let mut server = support::RedisServer::start();
    let conn = server.config().connect().await.unwrap();
    let layer = RateLimitLayer::builder()
        .quota("ip", Quota::per_minute(100), Key::peer_ip())
        .backend(RedisBackend::new(conn))
        .failure_mode(FailureMode::Closed)
        .build()
        .unwrap();
    let mut svc = limited(&layer);
    assert_eq!(
        status_of(&mut svc, req_from("192.0.2.1:1")).await,
        StatusCode::OK
    );
    server.stop();
    let started = Instant::now();
    let requests = (0..40)
        .map(|i| req_from(&format!("192.0.2.{}:1", 10 + i % 4)))
        .collect();
    let futures = start_all(&mut svc, requests).await;
    let responses = join_in_order(futures).await;
    // A call bounded by connect + command timeout (2 s + 1 s), a queued request by one call's
    // wait plus its own.
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "{:?}",
        started.elapsed()
    );
    for (status, h, _) in &responses {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(header(h, "retry-after"), "1");
    }
    assert_eq!(layer.metrics().degraded, 40);
}

/// `RedisBackend::reset`: a refused client starts over with exactly a full quota (window and
/// GCRA meanings); other clients' and other quotas' stored bytes are untouched; unknown keys
/// and names are `Ok(false)`.
#[tokio::test]
async fn reset_gives_a_refused_client_exactly_a_full_quota_and_nothing_else() {
    let redis = support::shared();
    let conn = redis.config.connect().await.unwrap();
    let clock = ManualClock::new(T0);
    let backend = RedisBackend::builder(conn.clone())
        .prefix(format!("{}reset:", redis.prefix))
        .client_clock(clock.clone())
        .build();
    let raw = async |key: String| -> Option<Vec<u8>> {
        conn.query(driver::cmd("GET").arg(key)).await.unwrap()
    };
    let meanings = [
        ("window", Quota::per_minute(3)),
        ("gcra", Quota::rate(3, Duration::from_secs(60)).burst(3)),
    ];
    for (name, quota) in meanings {
        let login = backend.keyed(name, quota).unwrap();
        let other = backend
            .keyed(&format!("{name}-other"), Quota::per_minute(5))
            .unwrap();
        let client = LimitKey::ip("192.0.2.10".parse().unwrap());
        let neighbour = LimitKey::new("user:bob");
        for _ in 0..3 {
            assert!(login.check(&client, 1).await.unwrap().is_allowed());
            assert!(login.check(&neighbour, 1).await.unwrap().is_allowed());
        }
        assert!(!login.check(&client, 1).await.unwrap().is_allowed());
        assert!(other.check(&client, 2).await.unwrap().is_allowed());
        let neighbour_before = raw(backend.key_name(name, &neighbour)).await;
        let other_name = format!("{name}-other");
        let other_before = raw(backend.key_name(&other_name, &client)).await;
        assert!(neighbour_before.is_some() && other_before.is_some());

        assert!(backend.reset(name, &client).await.unwrap(), "{name}");
        assert_eq!(raw(backend.key_name(name, &client)).await, None);
        for left in (0..3).rev() {
            let d = login.check(&client, 1).await.unwrap();
            assert!(d.is_allowed(), "{name}");
            assert_eq!(d.remaining(), left);
        }
        assert!(!login.check(&client, 1).await.unwrap().is_allowed());
        // Other keys hold exactly the bytes they held.
        assert_eq!(
            raw(backend.key_name(name, &neighbour)).await,
            neighbour_before
        );
        assert_eq!(
            raw(backend.key_name(&other_name, &client)).await,
            other_before
        );
        assert!(!login.check(&neighbour, 1).await.unwrap().is_allowed());
        // Nothing to reset is fine.
        assert!(
            !backend
                .reset(name, &LimitKey::new("user:nobody"))
                .await
                .unwrap()
        );
        assert!(!backend.reset("no-such-quota", &client).await.unwrap());
    }
}

/// Two instances on one Redis, each with its deny cache. Instance A resets a refused client
/// (`RateLimitLayer::reset`):
/// A admits it at once; B, which had cached the client's denial, refuses it locally until
/// that cached time (when, by Redis's last answer to B, the client's next unit was due), then
/// asks Redis and sees the reset state (not merely the unit that came back).
#[tokio::test]
async fn after_a_reset_other_instances_refuse_until_their_cached_time() {
    let redis = support::shared();
    let clock = ManualClock::new(T0);
    let prefix = format!("{}reset2:", redis.prefix);
    let mut instances = Vec::new();
    for _ in 0..2 {
        let conn = redis.config.connect().await.unwrap();
        let backend = RedisBackend::builder(conn)
            .prefix(prefix.clone())
            .client_clock(clock.clone())
            .build();
        let layer = RateLimitLayer::builder()
            .quota("ip", Quota::per_minute(3), Key::peer_ip())
            .backend(backend.clone())
            .clock(clock.clone())
            .build()
            .unwrap();
        let svc = limited(&layer);
        instances.push((backend, layer, svc));
    }
    let [(a_backend, a_layer, mut a), (b_backend, b_layer, mut b)] =
        <[_; 2]>::try_from(instances).ok().unwrap();
    let peer = "192.0.2.99:1";
    let client = LimitKey::ip("192.0.2.99".parse().unwrap());
    // Admissions at 0 s, 20 s and 40 s, through A: the quota is used up until 60 s.
    for step in 0..3 {
        if step > 0 {
            clock.advance(Duration::from_secs(20));
        }
        assert_eq!(status_of(&mut a, req_from(peer)).await, StatusCode::OK);
    }
    // B asks Redis, is refused until 60 s and caches that.
    let (status, h, _) = send(&mut b, req_from(peer)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&h, "retry-after"), "20");
    assert_eq!(b_backend.deny_cache_len(), 1);
    assert_eq!(a_backend.deny_cache_len(), 1);

    clock.advance(Duration::from_secs(5));
    // Through A's layer (its Redis backend and its local fallback).
    assert!(a_layer.reset("ip", &client).await.unwrap());
    assert_eq!(a_backend.deny_cache_len(), 0);
    // A admits at once, with the whole quota but this request left.
    let (status, h, _) = send(&mut a, req_from(peer)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&h, "ratelimit"), r#""ip";r=2;t=60"#);
    // B refuses from its cache, without asking Redis, until 60 s.
    let hits = b_layer.metrics().deny_cache_hits;
    let (status, h, _) = send(&mut b, req_from(peer)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&h, "retry-after"), "15");
    clock.advance(Duration::from_micros(15_000_000 - 1));
    assert_eq!(
        status_of(&mut b, req_from(peer)).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(b_layer.metrics().deny_cache_hits, hits + 2);
    // At 60 s B asks Redis: one admission (A's at 45 s) is counted, not the three before the
    // reset (without it, the ones at 20 s and 40 s would leave r=0 here).
    clock.advance(Duration::from_micros(1));
    let (status, h, _) = send(&mut b, req_from(peer)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&h, "ratelimit"), r#""ip";r=1;t=45"#);
}

/// While Redis is unreachable, `FailureMode::Local` decides in memory; a layer reset clears
/// that local state too (and reports that Redis could not be reached), so the client is
/// admitted again during the outage.
#[tokio::test]
async fn a_layer_reset_during_an_outage_clears_the_local_fallback() {
    let started = Instant::now();
    let mut server = support::RedisServer::start();
    let config = server
        .config()
        .connect_timeout(Duration::from_millis(500))
        .command_timeout(Duration::from_millis(500));
    let conn = config.connect().await.unwrap();
    let layer = RateLimitLayer::builder()
        .quota("ip", Quota::per_minute(2), Key::peer_ip())
        .backend(RedisBackend::new(conn))
        .failure_mode(FailureMode::Local)
        .build()
        .unwrap();
    let mut svc = limited(&layer);
    assert_eq!(
        status_of(&mut svc, req_from("192.0.2.5:1")).await,
        StatusCode::OK
    );
    server.stop();
    for expected in [
        StatusCode::OK,
        StatusCode::OK,
        StatusCode::TOO_MANY_REQUESTS,
    ] {
        assert_eq!(status_of(&mut svc, req_from("192.0.2.5:1")).await, expected);
    }
    let degraded = layer.metrics().degraded;
    assert_eq!(degraded, 3, "decided by the local fallback");
    let client = LimitKey::ip("192.0.2.5".parse().unwrap());
    let reset = layer.reset("ip", &client).await;
    assert!(
        matches!(reset, Err(tower_rampart::rate_limit::ResetError::Redis(_))),
        "{reset:?}"
    );
    assert_eq!(
        status_of(&mut svc, req_from("192.0.2.5:1")).await,
        StatusCode::OK
    );
    assert_eq!(layer.metrics().degraded, degraded + 1);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

/// Per-user quotas on Redis: one count across a user's sessions, and what reaches Redis is a
/// hash of the user tag: neither the user id, nor the tag, nor the cookie.
#[cfg(feature = "session")]
#[tokio::test]
async fn per_user_limits_survive_a_new_sign_in_on_redis() {
    use rate_limit_common::user::a_users_count_survives_a_new_sign_in;
    let redis = support::shared();
    let conn = redis.config.connect().await.unwrap();
    let backend = RedisBackend::builder(conn)
        .prefix(redis.prefix.clone())
        .build();
    let builder = RateLimitLayer::builder().backend(backend.clone());
    let outcome = a_users_count_survives_a_new_sign_in(builder, true).await;
    let m = outcome.layer.metrics();
    assert_eq!((m.denied, m.degraded), (4, 0));

    let mut headers = http::HeaderMap::new();
    headers.insert("cookie", outcome.alice[0].parse().unwrap());
    let tag = outcome.reader.user_tag(&headers).unwrap();
    let key = backend.key_name("user", &LimitKey::hashed("u", tag.as_bytes()));
    let conn = backend.connection();
    let exists: i64 = conn.query(driver::cmd("EXISTS").arg(&key)).await.unwrap();
    assert_eq!(exists, 1, "{key}");
    let keys: Vec<String> = conn
        .query(driver::cmd("KEYS").arg(format!("{}*", redis.prefix)))
        .await
        .unwrap();
    // Alice's and bob's user counts, the anonymous session's count.
    assert_eq!(keys.len(), 3, "{keys:?}");
    let tag_hex: String = tag.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    for k in &keys {
        assert!(!k.contains("alice") && !k.contains("bob"), "{k}");
        assert!(!k.contains(&tag_hex), "{k}");
        for cookie in &outcome.alice {
            let value = cookie.split_once('=').unwrap().1;
            assert!(!k.contains(value), "{k}");
        }
    }
}
