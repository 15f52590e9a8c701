//! The Redis rate limiter on a Redis Cluster (and its split paths forced on a single server,
//! every key in a slot of its own): the replay tests of `rate_limit_redis.rs` on a cluster;
//! a request whose quotas live in different slots is all or nothing (a refused one leaves
//! every key byte-identical); concurrent load never admits beyond a quota on either key,
//! checked from a client-side log of admissions; a failure between a reservation and its
//! release leaks at most the request's cost per quota, until the window passes; the replay
//! tests over TLS (a server and a cluster); one endpoint that enforces slots (a cluster
//! proxy); the failure modes with a master down, and recovery when it is back.
#![cfg(all(feature = "rate-limit", feature = "redis"))]

mod rate_limit_common;
use rampart_test_support as support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use rate_limit_common::accounting::AdmissionLog;
use rate_limit_common::replay::{self, Target};
use rate_limit_common::{T0, cost_header, header, limited, req_from, req_with, send};
use tower_rampart::clock::{Clock, ManualClock};
use tower_rampart::rate_limit::{
    Key, Limit, LimitKey, MissingKey, Quota, RateLimitLayer, RedisBackend,
};
use tower_rampart::redis::{RedisConfig, RedisConnection, driver};

/// Window quota "a": 3 per minute, exact.
fn quota_a() -> Quota {
    Quota::per_minute(3)
}

/// GCRA quota "b": 2 per minute (one unit per 30 s), burst 2.
fn quota_b() -> Quota {
    Quota::rate(2, Duration::from_secs(60)).burst(2)
}

/// A layer with quota `a` keyed by the `x-a` header and quota `b` by `x-b` (each skipped
/// when its header is absent), the `x-cost` header as cost.
fn two_quota_layer(
    backend: RedisBackend,
    a: Quota,
    b: Quota,
    clock: Option<&ManualClock>,
) -> RateLimitLayer {
    let by = |name: &'static str| {
        Key::custom(move |req: &Request<()>| {
            req.headers()
                .get(name)
                .map(|v| LimitKey::new(v.to_str().unwrap_or_default()))
        })
    };
    let mut builder = RateLimitLayer::builder()
        .limit(Limit::new("a", a, by("x-a")).on_missing_key(MissingKey::Skip))
        .limit(Limit::new("b", b, by("x-b")).on_missing_key(MissingKey::Skip))
        .cost_with(cost_header)
        .backend(backend);
    if let Some(clock) = clock {
        builder = builder.clock(clock.clone());
    }
    builder.build().unwrap()
}

/// A request carrying the keys given (`None`: that quota is skipped) and a cost.
fn request(a: Option<&str>, b: Option<&str>, cost: u64) -> Request<Full<Bytes>> {
    let cost = cost.to_string();
    let mut headers = vec![("x-cost", cost.as_str())];
    if let Some(a) = a {
        headers.push(("x-a", a));
    }
    if let Some(b) = b {
        headers.push(("x-b", b));
    }
    req_with("192.0.2.1:1", &headers)
}

/// Two client keys whose "a" and "b" key names live in different slots: on a cluster on
/// different masters (the harness's `keys_on_different_masters_with`), else any two.
fn keys_in_different_slots(
    cluster: Option<&support::RedisCluster>,
    backend: &RedisBackend,
) -> (String, String) {
    let a_name = |i: u64| format!("ca{i}");
    let b_name = |i: u64| format!("cb{i}");
    let Some(cluster) = cluster else {
        return (a_name(0), b_name(0));
    };
    let (first, second) = support::keys_on_different_masters_with(cluster, |i| {
        if i == 0 {
            backend.key_name("a", &LimitKey::new(a_name(0)))
        } else {
            backend.key_name("b", &LimitKey::new(b_name(i)))
        }
    });
    assert!(first.contains("{ca0}"));
    let b = second
        .split('{')
        .nth(1)
        .and_then(|s| s.split('}').next())
        .unwrap()
        .to_owned();
    (a_name(0), b)
}

async fn raw(conn: &RedisConnection, key: &str) -> Option<Vec<u8>> {
    conn.query(driver::cmd("GET").arg(key)).await.unwrap()
}

/// What every key of a refused request holds is exactly what it held before: refused by the
/// GCRA quota while the window quota would admit, then the other way round.
async fn refused_requests_leave_every_key_identical(
    config: &RedisConfig,
    prefix: &str,
    cluster: Option<&support::RedisCluster>,
) {
    let clock = ManualClock::new(T0);
    let conn = config.connect().await.unwrap();
    let backend = RedisBackend::builder(conn.clone())
        .prefix(prefix)
        .client_clock(clock.clone())
        .deny_cache_capacity(0)
        .every_key_in_its_own_slot(cluster.is_none())
        .build();
    let (ka, kb) = keys_in_different_slots(cluster, &backend);
    let (name_a, name_b) = (
        backend.key_name("a", &LimitKey::new(ka.clone())),
        backend.key_name("b", &LimitKey::new(kb.clone())),
    );
    let layer = two_quota_layer(backend.clone(), quota_a(), quota_b(), Some(&clock));
    let mut svc = limited(&layer);
    let (a, b) = (Some(ka.as_str()), Some(kb.as_str()));
    assert_eq!(send(&mut svc, request(a, b, 1)).await.0, StatusCode::OK);
    clock.advance(Duration::from_millis(1_500));
    assert_eq!(send(&mut svc, request(None, b, 1)).await.0, StatusCode::OK);
    clock.advance(Duration::from_millis(700));

    // b is empty, a has 2 left: refused by b alone.
    let before = (raw(&conn, &name_a).await, raw(&conn, &name_b).await);
    assert!(before.0.is_some() && before.1.is_some());
    for cost in [1, 2] {
        let (status, h, _) = send(&mut svc, request(a, b, cost)).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert!(header(&h, "ratelimit").starts_with("\"b\";r=0"), "{h:?}");
        let after = (raw(&conn, &name_a).await, raw(&conn, &name_b).await);
        assert_eq!(
            after, before,
            "cost {cost}: a refused request changed a key"
        );
    }
    // a still has its 2 units.
    for _ in 0..2 {
        assert_eq!(send(&mut svc, request(a, None, 1)).await.0, StatusCode::OK);
    }
    // 30 s later b has one unit back, a (3 admissions in the last minute) none: refused by a.
    clock.advance(Duration::from_secs(30));
    let before = (raw(&conn, &name_a).await, raw(&conn, &name_b).await);
    let (status, h, _) = send(&mut svc, request(a, b, 1)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(header(&h, "ratelimit").starts_with("\"a\";r=0"), "{h:?}");
    let after = (raw(&conn, &name_a).await, raw(&conn, &name_b).await);
    assert_eq!(after, before, "a refused request changed a key");
    // b's unit is still there.
    assert_eq!(send(&mut svc, request(None, b, 1)).await.0, StatusCode::OK);
    assert_eq!(backend.unreleased_reservations(), 0);
}

/// Concurrent load from two instances on two quotas in different slots: requests on both
/// keys, on a alone and on b alone. The client-side log of admissions never shows more than
/// either quota, and the window key's count in Redis is exactly the logged admissions (no
/// reservation left behind).
async fn concurrent_load_never_exceeds_either_quota(
    config: &RedisConfig,
    prefix: &str,
    cluster: Option<&support::RedisCluster>,
) {
    let (limit_a, burst_b, per_min_b) = (20u64, 8u64, 10u32);
    let qa = Quota::per_minute(limit_a as u32);
    let qb = Quota::rate(per_min_b, Duration::from_secs(60)).burst(burst_b as u32);
    let mut instances = Vec::new();
    let mut probe_backend = None;
    for _ in 0..2 {
        let conn = config.connect().await.unwrap();
        let backend = RedisBackend::builder(conn)
            .prefix(prefix)
            .deny_cache_capacity(0)
            .every_key_in_its_own_slot(cluster.is_none())
            .build();
        probe_backend.get_or_insert_with(|| backend.clone());
        instances.push(two_quota_layer(backend, qa, qb, None));
    }
    let backend = probe_backend.unwrap();
    let (ka, kb) = keys_in_different_slots(cluster, &backend);
    let log = Arc::new(AdmissionLog::new());
    let mut tasks = Vec::new();
    for i in 0..240usize {
        let mut svc = limited(&instances[i % 2]);
        let (ka, kb, log) = (ka.clone(), kb.clone(), log.clone());
        tasks.push(tokio::spawn(async move {
            let (a, b) = match i % 3 {
                0 => (Some(ka.as_str()), Some(kb.as_str())),
                1 => (Some(ka.as_str()), None),
                _ => (None, Some(kb.as_str())),
            };
            let cost = 1 + (i % 5 == 0) as u64;
            let sent = Instant::now();
            let (status, _, body) = send(&mut svc, request(a, b, cost)).await;
            assert!(!body.contains("degraded"), "{body}");
            if status == StatusCode::OK {
                for k in [a.map(|_| "a"), b.map(|_| "b")].into_iter().flatten() {
                    log.record(k, sent, cost);
                }
            }
            status
        }));
    }
    let mut refused = 0;
    for t in tasks {
        refused += usize::from(t.await.unwrap() != StatusCode::OK);
    }
    log.check_window("a", limit_a, Duration::from_secs(60));
    log.check_gcra("b", burst_b, Duration::from_secs(60) / per_min_b);
    assert!(log.total("a") > 0 && log.total("b") > 0 && refused > 100);
    // Redis counted exactly what the clients saw admitted on a: a cost-0 request reads it.
    let mut svc = limited(&instances[0]);
    let (status, h, _) = send(&mut svc, request(Some(&ka), None, 0)).await;
    assert_eq!(status, StatusCode::OK);
    let left = limit_a - log.total("a");
    assert!(
        header(&h, "ratelimit").starts_with(&format!("\"a\";r={left};")),
        "{h:?}, {} admitted on a",
        log.total("a")
    );
    assert_eq!(backend.unreleased_reservations(), 0);
}

/// The process "dies" between reserve and release (the test hook skips releases): each
/// refused request leaves at most its cost on the other quota's key, counted, and the units
/// come back when the window has passed (window) or drained (GCRA).
async fn a_failed_release_leaks_at_most_the_cost(
    config: &RedisConfig,
    prefix: &str,
    cluster: Option<&support::RedisCluster>,
) {
    let clock = ManualClock::new(T0);
    let conn = config.connect().await.unwrap();
    let backend = RedisBackend::builder(conn)
        .prefix(prefix)
        .client_clock(clock.clone())
        .deny_cache_capacity(0)
        .every_key_in_its_own_slot(cluster.is_none())
        .skip_releases(true)
        .build();
    let (ka, kb) = keys_in_different_slots(cluster, &backend);
    let layer = two_quota_layer(backend.clone(), quota_a(), quota_b(), Some(&clock));
    let mut svc = limited(&layer);
    let (a, b) = (Some(ka.as_str()), Some(kb.as_str()));
    let left_on = async |svc: &mut _, a: Option<&str>, b: Option<&str>, name: &str| {
        let (status, h, _) = send(svc, request(a, b, 0)).await;
        assert_eq!(status, StatusCode::OK);
        let h = header(&h, "ratelimit");
        let r = h.split(&format!("\"{name}\";r=")).nth(1).unwrap();
        r.split(';').next().unwrap().parse::<u64>().unwrap()
    };
    // b empty: two refused requests (costs 1 and 2) on both keys.
    for _ in 0..2 {
        assert_eq!(send(&mut svc, request(None, b, 1)).await.0, StatusCode::OK);
    }
    assert_eq!(left_on(&mut svc, a, None, "a").await, 3);
    assert_eq!(
        send(&mut svc, request(a, b, 1)).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        left_on(&mut svc, a, None, "a").await,
        2,
        "leaked exactly the cost, 1"
    );
    assert_eq!(backend.unreleased_reservations(), 1);
    assert_eq!(
        send(&mut svc, request(a, b, 2)).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        left_on(&mut svc, a, None, "a").await,
        0,
        "leaked exactly the cost, 2"
    );
    assert_eq!(backend.unreleased_reservations(), 2);
    // A window later (b is full again after its burst time, 60 s) everything is back.
    clock.advance(Duration::from_secs(60));
    assert_eq!(left_on(&mut svc, a, None, "a").await, 3);
    assert_eq!(left_on(&mut svc, None, b, "b").await, 2);
    // Now a empty, b full: a refused request leaks its cost on the GCRA key.
    for _ in 0..3 {
        assert_eq!(send(&mut svc, request(a, None, 1)).await.0, StatusCode::OK);
    }
    assert_eq!(
        send(&mut svc, request(a, b, 1)).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        left_on(&mut svc, None, b, "b").await,
        1,
        "leaked exactly the cost, 1"
    );
    assert_eq!(backend.unreleased_reservations(), 3);
    // Drained like an admission: one interval (30 s) later the unit is back.
    clock.advance(Duration::from_secs(30));
    assert_eq!(left_on(&mut svc, None, b, "b").await, 2);
}

const RELEASE: &str = include_str!("../src/rate_limit/redis/lua/assembled/release.lua");

/// `RELEASE` after other admissions came on the key between the reservation and its release
/// (the case the byte-for-byte restore does not cover): the key is left exactly as the other
/// admissions alone would have left it, byte for byte, for both meanings. The reservation
/// is left behind with the test hook, another admission made, then `RELEASE` run by hand
/// with what the reservation read and wrote.
async fn a_late_release_undoes_only_its_own_admission(config: &RedisConfig, prefix: &str) {
    let clock = ManualClock::new(T0);
    let conn = config.connect().await.unwrap();
    let build = |prefix: String, skip: bool| {
        RedisBackend::builder(conn.clone())
            .prefix(prefix)
            .client_clock(clock.clone())
            .deny_cache_capacity(0)
            .every_key_in_its_own_slot(true)
            .skip_releases(skip)
            .build()
    };
    let b3 = Quota::rate(2, Duration::from_secs(60)).burst(3);
    let backend = build(format!("{prefix}late:"), true);
    let reference = build(format!("{prefix}ref:"), false);
    let mut svc = limited(&two_quota_layer(
        backend.clone(),
        quota_a(),
        b3,
        Some(&clock),
    ));
    let mut alone = limited(&two_quota_layer(
        reference.clone(),
        quota_a(),
        b3,
        Some(&clock),
    ));
    let ok = StatusCode::OK;
    // (meaning, (key a, key b)): the window's reservation is refused by a full GCRA key,
    // the GCRA's by a full window key.
    for (kind, (a, b)) in [
        ("window", (Some("w"), Some("wfull"))),
        ("gcra", (Some("gfull"), Some("g"))),
    ] {
        let (key_a, key_b) = if kind == "window" {
            (a, None)
        } else {
            (None, b)
        };
        // The refusing key is made full.
        let refusing = if kind == "window" {
            (None, b)
        } else {
            (a, None)
        };
        for _ in 0..3 {
            let _ = send(&mut svc, request(refusing.0, refusing.1, 1)).await;
        }
        let name = if kind == "window" {
            backend.key_name("a", &LimitKey::new("w"))
        } else {
            backend.key_name("b", &LimitKey::new("g"))
        };
        // One admission at t, on the key and on the reference.
        assert_eq!(send(&mut svc, request(key_a, key_b, 1)).await.0, ok);
        assert_eq!(send(&mut alone, request(key_a, key_b, 1)).await.0, ok);
        clock.advance(Duration::from_secs(1));
        let old = raw(&conn, &name).await.unwrap();
        let (status, _, _) = send(&mut svc, request(a, b, 1)).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{kind}");
        let written = raw(&conn, &name).await.unwrap();
        assert_ne!(written, old, "{kind}: the reservation stayed (test hook)");
        clock.advance(Duration::from_secs(1));
        assert_eq!(send(&mut svc, request(key_a, key_b, 1)).await.0, ok);
        assert_eq!(send(&mut alone, request(key_a, key_b, 1)).await.0, ok);
        let def: [u64; 5] = if kind == "window" {
            [1, 3, 60_000_000, 1, 3]
        } else {
            [2, 30_000_000, 3, 0, 0]
        };
        let now = clock.now_micros();
        let mut cmd = driver::cmd("EVAL");
        cmd.arg(RELEASE)
            .arg(1)
            .arg(&name)
            .arg(now)
            .arg(1)
            .arg(1)
            .arg(&old)
            .arg(&written);
        for v in def {
            cmd.arg(v);
        }
        let code: i64 = conn.query(&cmd).await.unwrap();
        assert_eq!(code, if kind == "window" { 3 } else { 2 }, "{kind}");
        let want_name = if kind == "window" {
            reference.key_name("a", &LimitKey::new("w"))
        } else {
            reference.key_name("b", &LimitKey::new("g"))
        };
        assert_eq!(
            raw(&conn, &name).await,
            raw(&conn, &want_name).await,
            "{kind}: not the state of the other admissions alone"
        );
    }
}

/// A connection made lazily learns it talks to a cluster on its first call: a first request
/// spanning slots is still decided by Redis (the cluster refuses the unsplit call before
/// running it, and the backend splits it), on a first call alone and in a first batch.
async fn a_lazy_connection_splits_from_the_first_request(config: &RedisConfig, prefix: &str) {
    for batched in [false, true] {
        let conn = config.connect_lazy().unwrap();
        assert!(!conn.is_cluster(), "not known before the first call");
        let backend = RedisBackend::builder(conn)
            .prefix(format!("{prefix}{batched}:"))
            .max_calls_in_flight(1)
            .build();
        let layer = two_quota_layer(backend, quota_a(), quota_b(), None);
        let mut svc = limited(&layer);
        let requests: Vec<_> = (0..if batched { 3 } else { 1 })
            .map(|i| request(Some(&format!("x{i}")), Some(&format!("y{i}")), 1))
            .collect();
        let futures = replay::start_all(&mut svc, requests).await;
        for (status, _, body) in replay::join_in_order(futures).await {
            assert_eq!(status, StatusCode::OK);
            assert_eq!(
                body, "1",
                "decided by Redis (a: 2 left, b: 1 left; the lower)"
            );
        }
        assert_eq!(layer.metrics().degraded, 0);
    }
}

/// The replay tests of `rate_limit_redis.rs` (memory vs Redis, identical responses; batched
/// vs one by one, identical responses), and the tests of the multi-slot guarantee, on one
/// `RedisBackend::reset` on a cluster: for clients on every master, the `DEL` runs on the
/// master that holds the key (one `DEL` there, none elsewhere), the key is gone, and the
/// client is admitted again with a full quota.
async fn a_reset_deletes_on_the_master_of_the_keys_slot(
    cluster: &support::RedisCluster,
    prefix: &str,
) {
    let conn = cluster.config().connect().await.unwrap();
    let clock = ManualClock::new(T0);
    let backend = RedisBackend::builder(conn)
        .prefix(prefix)
        .client_clock(clock.clone())
        .build();
    let limiter = backend.keyed("ip", quota_a()).unwrap();
    // One client on each master.
    let masters = cluster.master_ports();
    let mut clients: Vec<(LimitKey, u16)> = Vec::new();
    for i in 0..1_000u32 {
        let key = LimitKey::ip(std::net::IpAddr::from((0xC000_0200 + i).to_be_bytes()));
        let port = cluster.master_of_key(backend.key_name("ip", &key).as_bytes());
        if !clients.iter().any(|c| c.1 == port) {
            clients.push((key, port));
        }
        if clients.len() == masters.len() {
            break;
        }
    }
    assert_eq!(clients.len(), masters.len());
    for (key, port) in &clients {
        for _ in 0..3 {
            assert!(limiter.check(key, 1).await.unwrap().is_allowed());
        }
        assert!(!limiter.check(key, 1).await.unwrap().is_allowed());
        let name = backend.key_name("ip", key);
        let exists: i64 = cluster.run_on(*port, driver::cmd("EXISTS").arg(&name));
        assert_eq!(exists, 1);
        cluster.reset_stats();
        assert!(backend.reset("ip", key).await.unwrap());
        for &m in &masters {
            let expected = u64::from(m == *port);
            assert_eq!(cluster.command_count_on(m, "del"), expected, "master {m}");
        }
        let exists: i64 = cluster.run_on(*port, driver::cmd("EXISTS").arg(&name));
        assert_eq!(exists, 0);
        let d = limiter.check(key, 1).await.unwrap();
        assert!(d.is_allowed());
        assert_eq!(d.remaining(), 2);
        assert!(
            !backend
                .reset("ip", &LimitKey::new("never-seen"))
                .await
                .unwrap()
        );
    }
}

/// 3-master cluster with a replica each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster() {
    let started = Instant::now();
    let cluster = support::RedisCluster::start(3, 1);
    let config = cluster.config();
    let conn = config.connect().await.unwrap();
    assert!(conn.is_cluster());
    replay::memory_and_redis_give_identical_responses(&config, "replay:").await;
    replay::multi_quota_traces_are_identical(&config, "multi:").await;
    let target = Target {
        config: config.clone(),
        prefix: "batch:".to_owned(),
        servers: &cluster,
        most_batch_calls: None,
    };
    replay::batch_decides_like_one_by_one(&target).await;
    replay::batched_and_single_calls_agree(&config, "agree:").await;
    refused_requests_leave_every_key_identical(&config, "refused:", Some(&cluster)).await;
    concurrent_load_never_exceeds_either_quota(&config, "load:", Some(&cluster)).await;
    a_failed_release_leaks_at_most_the_cost(&config, "leak:", Some(&cluster)).await;
    a_lazy_connection_splits_from_the_first_request(&config, "lazy:").await;
    a_reset_deletes_on_the_master_of_the_keys_slot(&cluster, "reset:").await;
    println!("cluster tests took {:?}", started.elapsed());
}

/// The same multi-slot tests on a single server, every key in a slot of its own (the test
/// switch): the split paths without a cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_paths_on_a_single_server() {
    let redis = support::shared();
    let p = |s: &str| format!("{}{s}", redis.prefix);
    refused_requests_leave_every_key_identical(&redis.config, &p("refused:"), None).await;
    concurrent_load_never_exceeds_either_quota(&redis.config, &p("load:"), None).await;
    a_failed_release_leaks_at_most_the_cost(&redis.config, &p("leak:"), None).await;
    a_late_release_undoes_only_its_own_admission(&redis.config, &p("release:")).await;
}

/// One endpoint that enforces hash slots without speaking the cluster protocol (see
/// `SlottedEndpoint` in the test support), reached with `REDIS_CLUSTER=false`: the connection sees a single
/// server; the limiter learns from the first `CROSSSLOT` refusal that it must split by slot,
/// and decides exactly as on one server (the replay tests), from the very first request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_one_endpoint_that_enforces_slots() {
    let node = support::SlottedEndpoint::start();
    let config = node.config();
    let conn = config.connect().await.unwrap();
    assert_eq!(
        conn.topology(),
        Some(tower_rampart::redis::Topology::Single)
    );
    let refused = conn
        .query::<i64>(
            driver::cmd("EVAL")
                .arg("return 1")
                .arg(2)
                .arg("{a}k")
                .arg("{b}k"),
        )
        .await
        .unwrap_err();
    assert_eq!(refused.server_code(), Some("CROSSSLOT"), "{refused}");

    a_lazy_connection_splits_from_the_first_request(&config, "lazy:").await;
    replay::memory_and_redis_give_identical_responses(&config, "replay:").await;
    replay::multi_quota_traces_are_identical(&config, "multi:").await;
    replay::batched_and_single_calls_agree(&config, "agree:").await;
}

/// The replay tests over TLS: on one TLS-only server with a password, and on a 3-master
/// TLS-only cluster with a password (Azure's managed clusters are TLS-only): decisions
/// identical to the memory backend's and to one call per decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_over_tls_on_a_server_and_a_cluster() {
    let server = support::RedisServer::start_tls_with_password("tls-replay-pw");
    let config = server.config();
    assert!(config.is_tls());
    replay::memory_and_redis_give_identical_responses(&config, "replay:").await;
    replay::multi_quota_traces_are_identical(&config, "multi:").await;
    replay::batched_and_single_calls_agree(&config, "agree:").await;
    drop(server);

    let cluster = support::RedisCluster::start_tls_with_password(3, 0, "tls-replay-pw");
    let config = cluster.config();
    let conn = config.connect().await.unwrap();
    assert!(conn.is_cluster() && config.is_tls());
    replay::memory_and_redis_give_identical_responses(&config, "replay:").await;
    replay::multi_quota_traces_are_identical(&config, "multi:").await;
    replay::batched_and_single_calls_agree(&config, "agree:").await;
    concurrent_load_never_exceeds_either_quota(&config, "load:", Some(&cluster)).await;
}

/// The failure modes on a cluster, as on one server: a master of a 3-master cluster with no
/// replica dies, so the cluster cannot serve every slot; every decision then takes the
/// layer's failure mode, fast (`Local`: this instance's own memory quota; `Open`: admitted;
/// `Closed`: `503` with `Retry-After: 1`), each counted as degraded, and the same layers
/// decide by Redis again once the node is back, with no new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_modes_on_a_cluster_with_a_master_down() {
    use tower_rampart::rate_limit::FailureMode;
    let mut cluster = support::RedisCluster::start(3, 0);
    let conn = cluster.config().connect().await.unwrap();
    assert!(conn.is_cluster());
    let modes = [FailureMode::Local, FailureMode::Open, FailureMode::Closed];
    let layers: Vec<RateLimitLayer> = modes
        .iter()
        .enumerate()
        .map(|(i, &mode)| {
            RateLimitLayer::builder()
                .quota(format!("ip{i}"), Quota::per_minute(2), Key::peer_ip())
                .backend(RedisBackend::builder(conn.clone()).prefix("modes:").build())
                .failure_mode(mode)
                .build()
                .unwrap()
        })
        .collect();
    // The client whose key lives on the master that will die, for each layer.
    let probe = RedisBackend::builder(conn.clone()).prefix("modes:").build();
    let client_key = LimitKey::ip("192.0.2.1".parse().unwrap());
    let victim = cluster.master_of_key(probe.key_name("ip0", &client_key).as_bytes());
    for (i, layer) in layers.iter().enumerate() {
        let mut svc = limited(layer);
        let first = send(&mut svc, req_from("192.0.2.1:1")).await;
        assert_eq!(
            (first.0, first.2.as_str()),
            (StatusCode::OK, "1"),
            "layer {i}"
        );
    }

    cluster.kill_node(victim);
    for (layer, mode) in layers.iter().zip(modes) {
        let mut svc = limited(layer);
        let mut answers = Vec::new();
        for _ in 0..3 {
            let started = Instant::now();
            answers.push(send(&mut svc, req_from("192.0.2.1:1")).await);
            // Connect timeout + command timeout (1 s + 500 ms by default) bound one call.
            assert!(
                started.elapsed() < Duration::from_millis(3_500),
                "{mode:?}: {:?}",
                started.elapsed()
            );
        }
        assert_eq!(layer.metrics().degraded, 3, "{mode:?}: {answers:?}");
        let statuses: Vec<StatusCode> = answers.iter().map(|a| a.0).collect();
        match mode {
            // This instance alone: 2 a minute, not knowing the admission Redis made.
            FailureMode::Local => {
                assert_eq!(
                    statuses,
                    [
                        StatusCode::OK,
                        StatusCode::OK,
                        StatusCode::TOO_MANY_REQUESTS
                    ]
                );
                assert_eq!(answers[0].2, "1 degraded");
            }
            FailureMode::Open => {
                assert!(
                    answers
                        .iter()
                        .all(|a| a.0 == StatusCode::OK && a.2 == "- degraded")
                );
            }
            FailureMode::Closed => {
                for (status, h, body) in &answers {
                    assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE);
                    assert_eq!(header(h, "retry-after"), "1");
                    assert_eq!(body, r#"{"detail": "Rate limiter unavailable"}"#);
                }
            }
        }
    }

    cluster.restart_node(victim);
    cluster.wait_until_ok(Duration::from_secs(20));
    let deadline = Instant::now() + Duration::from_secs(20);
    for (i, layer) in layers.iter().enumerate() {
        let mut svc = limited(layer);
        loop {
            let before = layer.metrics().degraded;
            // A fresh client: the restarted master lost its keys (no persistence).
            let r = send(&mut svc, req_from(&format!("192.0.2.{}:1", 50 + i))).await;
            if layer.metrics().degraded == before {
                assert_eq!((r.0, r.2.as_str()), (StatusCode::OK, "1"), "layer {i}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "layer {i}: no recovery within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
