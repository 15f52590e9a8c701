//! A master of a 3-master + 3-replica Redis Cluster killed under load (its replica takes
//! over): sessions and the rate limiter recover on the same `RedisConnection`, without a
//! restart, within a bounded error window; what the failover lost is measured.
//!
//! Load: tasks writing sessions (create, then save) through the store, and requests through
//! the real rate limit layer (failure mode `Closed`, so a Redis failure is a `503` and never
//! an admission), on keys of the master that dies, plus requests whose two quotas live on a
//! surviving master and on the dying one (the multi-slot reserve/release path). The master
//! killed is the seed of the configuration, the worst case: the connection must find the
//! cluster through the nodes it learnt, not through its configured address.
//!
//! Figures (printed with `eprintln!`, labelled `FAILOVER`): the error window of every layer
//! (first failed call to first success after it, and to the last failure), acknowledged
//! session writes missing afterwards (replication is asynchronous: the last writes a master
//! acknowledged may not have reached its replica), increments of the limiter lost (each a
//! possible admission beyond a quota), and the units a refused multi-slot request left
//! behind.
//!
//! Run alone to see the figures: `cargo nextest run --all-features --test cluster_failover
//! --no-capture`.
#![cfg(all(feature = "session", feature = "rate-limit", feature = "redis"))]

mod rate_limit_common;
use rampart_test_support as support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use rate_limit_common::accounting::AdmissionLog;
use rate_limit_common::{header, limited, req_with, send};
use support::RedisCluster;
use tower_rampart::clock::{Clock, ManualClock};
use tower_rampart::rate_limit::{
    FailureMode, Key, Limit, LimitKey, MissingKey, Quota, RateLimitLayer, RedisBackend,
};
use tower_rampart::redis::{RedisConnection, driver, key_slot};
use tower_rampart::session::{RedisStore, SessionKey, SessionRecord, SessionStore, WriteOutcome};

/// The whole test, cluster start included.
const DEADLINE: Duration = Duration::from_secs(45);
/// Every layer answers again within this after the kill (node timeout 1 s, election, slot
/// map refresh, the breaker's cool-down).
const WINDOW_BOUND: Duration = Duration::from_secs(15);
/// Load keeps flowing this long after every layer recovered, to see it stays recovered.
const AFTER_RECOVERY: Duration = Duration::from_secs(2);
const SEC: u64 = 1_000_000;
/// The "tight" quota: exhausted long before the kill; nothing may be admitted after it.
const TIGHT: u32 = 40;
/// The "hot" quota, never reached: every admission increments the key, so what the key
/// counts afterwards against what the clients saw admitted is what the failover lost.
const HOT: u32 = 1_000_000;

/// Outcomes of one layer's calls, in time order.
#[derive(Default)]
struct Track {
    calls: Mutex<Vec<(Instant, bool)>>,
    errors: Mutex<BTreeMap<String, u64>>,
}

/// What a layer went through around the kill.
#[derive(Debug)]
struct Window {
    failures: usize,
    /// First failure to first success after it.
    first_success: Option<Duration>,
    /// First failure to last failure.
    last_failure: Duration,
}

impl Track {
    fn ok(&self) {
        self.calls.lock().unwrap().push((Instant::now(), true));
    }

    fn fail(&self, error: impl std::fmt::Display) {
        self.calls.lock().unwrap().push((Instant::now(), false));
        // Error texts without numbers (ports, times), counted.
        let text: String = error
            .to_string()
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .take(160)
            .collect();
        *self.errors.lock().unwrap().entry(text).or_default() += 1;
    }

    /// Calls that ended between `margin` before the first failure and `margin` after the
    /// last one.
    fn calls_around_failures(&self, margin: Duration) -> u64 {
        let calls = self.calls.lock().unwrap();
        let Some(first) = calls.iter().find(|(_, ok)| !ok).map(|(t, _)| *t) else {
            return 0;
        };
        let last = calls.iter().rev().find(|(_, ok)| !ok).unwrap().0;
        calls
            .iter()
            .filter(|(t, _)| *t + margin >= first && *t <= last + margin)
            .count() as u64
    }

    fn successes_since(&self, t: Instant) -> usize {
        let calls = self.calls.lock().unwrap();
        calls.iter().filter(|(at, ok)| *at >= t && *ok).count()
    }

    /// Recovered: some success after `kill` and after the last failure.
    fn recovered_after(&self, kill: Instant) -> Option<Instant> {
        let calls = self.calls.lock().unwrap();
        let last_failure = calls.iter().rev().find(|(_, ok)| !ok).map(|(t, _)| *t);
        let from = last_failure.map_or(kill, |f| f.max(kill));
        calls
            .iter()
            .find(|(t, ok)| *ok && *t > from)
            .map(|(t, _)| *t)
    }

    fn window(&self) -> Option<Window> {
        let calls = self.calls.lock().unwrap();
        let first = calls.iter().position(|(_, ok)| !ok)?;
        let start = calls[first].0;
        let first_success = calls[first..]
            .iter()
            .find(|(_, ok)| *ok)
            .map(|(t, _)| *t - start);
        let last = calls.iter().rev().find(|(_, ok)| !ok).unwrap().0;
        Some(Window {
            failures: calls.iter().filter(|(_, ok)| !ok).count(),
            first_success,
            last_failure: last - start,
        })
    }

    fn report(&self, layer: &str, kill: Instant) -> Option<Window> {
        let total = self.calls.lock().unwrap().len();
        let window = self.window();
        let first_failure_after_kill = {
            let calls = self.calls.lock().unwrap();
            calls
                .iter()
                .find(|(_, ok)| !ok)
                .map(|(t, _)| t.saturating_duration_since(kill))
        };
        eprintln!(
            "FAILOVER error window [{layer}]: {window:?} ({total} calls; first failure {first_failure_after_kill:?} after the kill); errors: {:?}",
            self.errors.lock().unwrap()
        );
        window
    }
}

fn now_micros() -> u64 {
    ManualClock::starting_now().now_micros()
}

fn record(now: u64, version: u64, data: &[u8]) -> SessionRecord {
    SessionRecord {
        version,
        created_micros: now,
        accessed_micros: now,
        idle_micros: 600 * SEC,
        expires_micros: now + 3600 * SEC,
        user_id: None,
        data: data.to_vec(),
        binding: None,
    }
}

/// The master port serving `key` in a slot map snapshot.
fn master_in(ranges: &[(u16, u16, u16)], key: &str) -> u16 {
    let slot = key_slot(key.as_bytes());
    ranges
        .iter()
        .find(|&&(a, b, _)| (a..=b).contains(&slot))
        .map(|&(_, _, p)| p)
        .expect("every slot is served")
}

/// The first client key `{stem}{i}` whose key name for quota `name` lives on `port`.
fn client_key_on(
    backend: &RedisBackend,
    ranges: &[(u16, u16, u16)],
    name: &str,
    stem: &str,
    port: u16,
) -> String {
    (0..100_000)
        .map(|i| format!("{stem}{i}"))
        .find(|k| master_in(ranges, &backend.key_name(name, &LimitKey::new(k.clone()))) == port)
        .expect("a key on that master")
}

/// A session acknowledged by the store: its version and when the acknowledgement came.
#[derive(Clone, Copy, Debug)]
struct Acked {
    version: u64,
    at: Instant,
}

type AckLog = Mutex<BTreeMap<String, Acked>>;

/// Creates sessions on `port`'s slots and saves each once, until `stop`.
async fn session_writer(
    store: RedisStore,
    ranges: Vec<(u16, u16, u16)>,
    port: u16,
    seed: u64,
    stop: Arc<AtomicBool>,
    track: Arc<Track>,
    acked: Arc<AckLog>,
) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let key = SessionKey::parse(&format!("{seed:016x}{i:016x}")).unwrap();
        if master_in(&ranges, &store.redis_key(&key)) != port {
            continue;
        }
        let hex = format!("{seed:016x}{i:016x}");
        let t = now_micros();
        match store.create(&key, &record(t, 0, b"{}"), t).await {
            Ok(true) => {
                track.ok();
                let at = Instant::now();
                acked
                    .lock()
                    .unwrap()
                    .insert(hex.clone(), Acked { version: 1, at });
            }
            Ok(false) => track.fail("create: key taken"),
            Err(e) => {
                track.fail(e);
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        }
        match store.save(&key, &record(t, 1, b"{\"n\":2}"), t).await {
            Ok(WriteOutcome::Written) => {
                track.ok();
                let at = Instant::now();
                acked.lock().unwrap().insert(hex, Acked { version: 2, at });
            }
            Ok(other) => track.fail(format!("save: {other:?}")),
            Err(e) => track.fail(e),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A request carrying `headers` (name, client key).
fn request(headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    req_with("192.0.2.1:1", headers)
}

/// Sends requests with `headers` through `layer` until `stop`, logging admissions under
/// `log_keys`.
#[allow(clippy::too_many_arguments)]
async fn limiter_load(
    layer: RateLimitLayer,
    headers: Vec<(&'static str, String)>,
    log_keys: Vec<&'static str>,
    stop: Arc<AtomicBool>,
    track: Arc<Track>,
    log: Arc<AdmissionLog>,
    pause: Duration,
) {
    let mut svc = limited(&layer);
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        let (status, _, body) = send(&mut svc, request(&headers)).await;
        assert!(!body.contains("degraded"), "failure mode Closed: {body}");
        match status {
            StatusCode::OK => {
                track.ok();
                for k in &log_keys {
                    log.record(k, sent, 1);
                }
            }
            StatusCode::TOO_MANY_REQUESTS => track.ok(),
            other => {
                track.fail(format!("status {other}"));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        tokio::time::sleep(pause).await;
    }
}

/// Units Redis counts on `quota` for client key `key` (through a cost-0 request).
async fn counted(
    layer: &RateLimitLayer,
    header_name: &str,
    quota: &str,
    key: &str,
    limit: u32,
) -> u64 {
    let mut svc = limited(layer);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, h, _) = send(&mut svc, request(&[(header_name, key), ("x-cost", "0")])).await;
        if status == StatusCode::OK {
            let h = header(&h, "ratelimit");
            let left: u64 = h
                .split(&format!("\"{quota}\";r="))
                .nth(1)
                .and_then(|r| r.split(';').next())
                .and_then(|r| r.parse().ok())
                .unwrap_or_else(|| panic!("no remaining count for {quota} in {h:?}"));
            return u64::from(limit) - left;
        }
        assert!(
            Instant::now() < deadline,
            "cost-0 read of {quota}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_layer_recovers_from_a_master_failover_on_the_same_connection() {
    let started = Instant::now();
    tokio::time::timeout(DEADLINE, failover(RedisCluster::start(3, 1)))
        .await
        .expect("deadline");
    eprintln!("FAILOVER test took {:?}", started.elapsed());
}

/// The same on a TLS-only cluster (as Azure's managed clusters are).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_layer_recovers_from_a_master_failover_on_a_tls_cluster() {
    let started = Instant::now();
    tokio::time::timeout(DEADLINE, failover(RedisCluster::start_tls(3, 1)))
        .await
        .expect("deadline");
    eprintln!("FAILOVER (TLS) test took {:?}", started.elapsed());
}

async fn failover(mut cluster: RedisCluster) {
    let conn: RedisConnection = cluster.config().connect().await.unwrap();
    assert!(conn.is_cluster());
    let ranges = cluster.slot_ranges();
    // The seed (the address in the configuration) dies.
    let victim: u16 = cluster
        .seed_url()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap();
    assert!(ranges.iter().any(|&(_, _, p)| p == victim));
    let survivor = ranges
        .iter()
        .map(|&(_, _, p)| p)
        .find(|&p| p != victim)
        .unwrap();

    // Sessions.
    let store = RedisStore::new(conn.clone()).with_prefix("fo:");
    let stop = Arc::new(AtomicBool::new(false));
    let sessions = Arc::new(Track::default());
    let acked: Arc<AckLog> = Arc::default();
    let mut tasks = Vec::new();
    for seed in 0..2u64 {
        tasks.push(tokio::spawn(session_writer(
            store.clone(),
            ranges.clone(),
            victim,
            now_micros() ^ (seed << 60),
            stop.clone(),
            sessions.clone(),
            acked.clone(),
        )));
    }
    // Sessions on a surviving master: what the failover of another master costs them (the
    // circuit breaker is one for the whole cluster).
    let elsewhere = Arc::new(Track::default());
    tasks.push(tokio::spawn(session_writer(
        store.clone(),
        ranges.clone(),
        survivor,
        now_micros() ^ (3 << 60),
        stop.clone(),
        elsewhere.clone(),
        Arc::default(),
    )));

    // The limiter: one backend (the same connection) behind two layers.
    let backend = RedisBackend::builder(conn.clone())
        .prefix("fo:rl:")
        .deny_cache_capacity(0)
        .build();
    let by = |name: &'static str| {
        Key::custom(move |req: &Request<()>| {
            req.headers()
                .get(name)
                .map(|v| LimitKey::new(v.to_str().unwrap_or_default()))
        })
    };
    let cost = rate_limit_common::cost_header;
    let single = RateLimitLayer::builder()
        .limit(
            Limit::new("hot", Quota::per_minute(HOT), by("x-h")).on_missing_key(MissingKey::Skip),
        )
        .limit(
            Limit::new("tight", Quota::per_minute(TIGHT), by("x-t"))
                .on_missing_key(MissingKey::Skip),
        )
        .cost_with(cost)
        .failure_mode(FailureMode::Closed)
        .backend(backend.clone())
        .build()
        .unwrap();
    let multi = RateLimitLayer::builder()
        .limit(Limit::new("ma", Quota::per_minute(HOT), by("x-a")).on_missing_key(MissingKey::Skip))
        .limit(Limit::new("mb", Quota::per_minute(HOT), by("x-b")).on_missing_key(MissingKey::Skip))
        .cost_with(cost)
        .failure_mode(FailureMode::Closed)
        .backend(backend.clone())
        .build()
        .unwrap();
    // Requests refused by a spent quota on the surviving master while their other quota, on
    // the master that dies, reserves and then releases: a release that cannot reach it
    // leaves the reservation. A backend of their own, for its count of failed releases.
    let log = Arc::new(AdmissionLog::new());
    let releasing_backend = RedisBackend::builder(conn.clone())
        .prefix("fo:rl:")
        .deny_cache_capacity(0)
        .build();
    let releasing = RateLimitLayer::builder()
        .limit(Limit::new("ra", Quota::per_minute(1), by("x-a")).on_missing_key(MissingKey::Skip))
        .limit(Limit::new("rb", Quota::per_minute(HOT), by("x-b")).on_missing_key(MissingKey::Skip))
        .cost_with(cost)
        .failure_mode(FailureMode::Closed)
        .backend(releasing_backend.clone())
        .build()
        .unwrap();
    let ra = client_key_on(&backend, &ranges, "ra", "ra", survivor);
    let rb = client_key_on(&backend, &ranges, "rb", "rb", victim);
    let (status, _, _) = send(&mut limited(&releasing), request(&[("x-a", ra.as_str())])).await;
    assert_eq!(status, StatusCode::OK, "ra's one unit");
    let released = Arc::new(Track::default());
    tasks.push(tokio::spawn(limiter_load(
        releasing.clone(),
        vec![("x-a", ra.clone()), ("x-b", rb.clone())],
        vec!["ra", "rb"],
        stop.clone(),
        released.clone(),
        log.clone(),
        Duration::from_millis(2),
    )));
    let hot = client_key_on(&backend, &ranges, "hot", "h", victim);
    let tight = client_key_on(&backend, &ranges, "tight", "t", victim);
    let ma = client_key_on(&backend, &ranges, "ma", "a", survivor);
    let mb = client_key_on(&backend, &ranges, "mb", "b", victim);
    let limiter = Arc::new(Track::default());
    let split = Arc::new(Track::default());
    for _ in 0..2 {
        tasks.push(tokio::spawn(limiter_load(
            single.clone(),
            vec![("x-h", hot.clone())],
            vec!["hot"],
            stop.clone(),
            limiter.clone(),
            log.clone(),
            Duration::from_millis(1),
        )));
    }
    tasks.push(tokio::spawn(limiter_load(
        single.clone(),
        vec![("x-t", tight.clone())],
        vec!["tight"],
        stop.clone(),
        limiter.clone(),
        log.clone(),
        Duration::from_millis(2),
    )));
    tasks.push(tokio::spawn(limiter_load(
        multi.clone(),
        vec![("x-a", ma.clone()), ("x-b", mb.clone())],
        vec!["ma", "mb"],
        stop.clone(),
        split.clone(),
        log.clone(),
        Duration::from_millis(2),
    )));

    // Load until the tight quota is spent and a few hundred writes were acknowledged.
    let warm = Instant::now();
    while log.total("tight") < u64::from(TIGHT)
        || acked.lock().unwrap().len() < 100
        || log.total("hot") < 200
    {
        assert!(
            warm.elapsed() < Duration::from_secs(10),
            "load did not start: {} sessions, {} tight",
            acked.lock().unwrap().len(),
            log.total("tight")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let replica = cluster
        .replica_ports()
        .into_iter()
        .find(|&r| cluster.master_of_replica(r) == Some(victim))
        .expect("the victim has a replica");
    let hot_before_kill = log.total("hot");
    let kill = Instant::now();
    cluster.kill_node(victim);
    eprintln!(
        "FAILOVER killed master {victim} (the seed) after {:?} of load",
        kill - warm
    );

    // Every layer answers again, on the same connection.
    let mut promoted = None;
    loop {
        if promoted.is_none() {
            let role: Vec<driver::Value> = cluster.run_on(replica, &driver::cmd("ROLE"));
            if role.first() == Some(&driver::Value::BulkString(b"master".to_vec())) {
                promoted = Some(kill.elapsed());
                eprintln!(
                    "FAILOVER replica {replica} is master {:?} after the kill",
                    kill.elapsed()
                );
            }
        }
        let recovered = [&sessions, &limiter, &split, &released].iter().all(|t| {
            t.recovered_after(kill)
                .is_some_and(|at| at.elapsed() >= AFTER_RECOVERY)
        });
        if recovered {
            break;
        }
        if kill.elapsed() >= WINDOW_BOUND + AFTER_RECOVERY {
            for (layer, track) in [
                ("sessions", &sessions),
                ("limiter", &limiter),
                ("limiter multi-slot", &split),
            ] {
                track.report(layer, kill);
            }
        }
        assert!(
            kill.elapsed() < WINDOW_BOUND + AFTER_RECOVERY,
            "not every layer recovered within {WINDOW_BOUND:?}: sessions {:?}, limiter {:?}, split {:?}\n{}",
            sessions.window(),
            limiter.window(),
            split.window(),
            cluster.describe()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert!(promoted.is_some(), "the replica took over");

    // The other masters keep serving, apart from the moments the whole cluster answers
    // CLUSTERDOWN (just before the promotion; the connection rides most of them out) and a
    // breaker opened by timeouts toward the dead master (it is one for the whole cluster:
    // seen on TLS, where reaching the dead node times out rather than being refused). Not
    // asserted: the figure goes into the docs.
    elsewhere.report("sessions on a surviving master (not asserted)", kill);
    for (layer, track) in [
        ("sessions", &sessions),
        ("limiter", &limiter),
        ("limiter multi-slot", &split),
        ("limiter multi-slot refused", &released),
    ] {
        let window = track.report(layer, kill);
        let Some(window) = window else { continue };
        assert!(
            window.last_failure < WINDOW_BOUND
                && window.first_success.is_some_and(|d| d < WINDOW_BOUND),
            "{layer}: {} failures, for {:?} after the first, first success after {:?}",
            window.failures,
            window.last_failure,
            window.first_success
        );
        assert!(track.successes_since(kill + window.last_failure) > 0);
    }

    // Acknowledged session writes missing afterwards.
    let acked = acked.lock().unwrap().clone();
    let t = now_micros();
    let mut lost = Vec::new();
    for (hex, a) in &acked {
        let key = SessionKey::parse(hex).unwrap();
        let found = store
            .load(&key, t, false)
            .await
            .expect("load after the failover");
        let version = found.map_or(0, |r| r.version);
        if version < a.version {
            let ms = if a.at <= kill {
                -((kill - a.at).as_micros() as i64)
            } else {
                (a.at - kill).as_micros() as i64
            };
            lost.push((hex.clone(), a.version, version, ms));
        }
    }
    let writes: u64 = acked.values().map(|a| a.version).sum();
    let lost_writes: u64 = lost.iter().map(|(_, want, got, _)| want - got).sum();
    eprintln!(
        "FAILOVER sessions: {lost_writes} of {writes} acknowledged writes lost ({} sessions affected; (session, acknowledged version, version found, µs of the acknowledgement relative to the kill): {lost:?})",
        lost.len()
    );
    // Only writes acknowledged shortly before the kill can be lost (replication lags by
    // microseconds on loopback): none acknowledged after it, none a second before it.
    for (hex, _, _, us) in &lost {
        assert!(
            *us <= 0 && *us > -1_000_000,
            "{hex}: lost a write acknowledged {us} µs from the kill"
        );
    }

    // The limiter: what Redis counts against what the clients saw admitted.
    let hot_redis = counted(&single, "x-h", "hot", &hot, HOT).await;
    let hot_logged = log.total("hot");
    let hot_lost = hot_logged.saturating_sub(hot_redis);
    eprintln!(
        "FAILOVER limiter: {hot_logged} admissions on the hot key ({hot_before_kill} before the kill), Redis counts {hot_redis}: {hot_lost} increments lost (each one admission a quota could exceed by)"
    );
    assert!(
        hot_redis <= hot_logged,
        "Redis counts {hot_redis}, clients saw {hot_logged}"
    );
    let tight_most = log.most_in_any_window("tight", Duration::from_secs(60));
    eprintln!(
        "FAILOVER limiter: quota {TIGHT}/min spent before the kill: {tight_most} admitted within 60 s across the failover"
    );
    log.check_window("tight", u64::from(TIGHT), Duration::from_secs(60));

    // Multi-slot: a request whose slot B died after slot A reserved.
    let ma_redis = counted(&multi, "x-a", "ma", &ma, HOT).await;
    let ma_logged = log.total("ma");
    let unreleased = backend.unreleased_reservations();
    eprintln!(
        "FAILOVER multi-slot: {ma_logged} admissions on the surviving slot, Redis counts {ma_redis}: {} units leaked; the backend reports {unreleased} unreleased reservations",
        ma_redis as i64 - ma_logged as i64
    );
    assert!(ma_redis >= ma_logged, "the surviving master lost nothing");
    // A unit left behind is a release the backend knows it could not make, or a
    // reservation that ran unseen: one whose call failed after it ran, or one the driver
    // sent twice (it resends a command after a connection error, also one that had run).
    // Both happen only around the failover: at most one per multi-slot call made then.
    let disrupted = split.calls_around_failures(Duration::from_secs(1));
    assert!(
        ma_redis - ma_logged <= unreleased + disrupted,
        "{} units left behind; {unreleased} unreleased, {disrupted} calls around the failures",
        ma_redis - ma_logged
    );

    // Multi-slot: refused requests whose reservation sat on the master that died.
    let rb_redis = counted(&releasing, "x-b", "rb", &rb, HOT).await;
    let rb_unreleased = releasing_backend.unreleased_reservations();
    let rb_failed = released.window().map_or(0, |w| w.failures) as u64;
    eprintln!(
        "FAILOVER multi-slot refused: {} admitted (quota ra spent), {rb_redis} units left counted on the dying master's key after the failover; {rb_unreleased} releases failed, {rb_failed} requests failed (503)",
        log.total("rb")
    );
    assert_eq!(log.total("rb"), 0, "every such request is refused");
    assert!(
        rb_redis <= rb_unreleased + rb_failed,
        "a unit left behind is a release that failed or a reservation whose answer was lost"
    );

    // Still the one connection, healthy: the replica took over, every master answers.
    let report = conn.health_report().await;
    assert!(report.health.is_connected(), "{report:?}");
    assert!(conn.is_available());
    drop(cluster);
}

/// What "acknowledged but not replicated" means, made certain: the replication link of a
/// master is cut (the master starts requiring a password its replica does not have, then
/// drops it), sessions are saved and created on that master and acknowledged, then the
/// master dies and the replica takes over. Every write acknowledged before the cut is
/// there; every write acknowledged after it is lost: with replication asynchronous (no
/// `WAIT`), a failover loses exactly the writes its replica had not received. The same
/// for a rate limit quota on that master: the increments made after the cut are lost, and
/// the quota admits that many again (over-admission = lost increments, exactly).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_acknowledged_while_the_replica_lagged_are_lost_in_a_failover() {
    tokio::time::timeout(DEADLINE, lagging_replica())
        .await
        .expect("deadline");
}

async fn lagging_replica() {
    let mut cluster = RedisCluster::start(3, 1);
    let conn = cluster.config().connect().await.unwrap();
    let store = RedisStore::new(conn.clone()).with_prefix("lag:");
    let ranges = cluster.slot_ranges();
    let seed: u16 = cluster
        .seed_url()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap();
    let victim = ranges
        .iter()
        .map(|&(_, _, p)| p)
        .find(|&p| p != seed)
        .unwrap();
    let replica = cluster
        .replica_ports()
        .into_iter()
        .find(|&r| cluster.master_of_replica(r) == Some(victim))
        .expect("the victim has a replica");
    let base = now_micros();
    let keys: Vec<SessionKey> = (0u64..)
        .map(|i| SessionKey::parse(&format!("{base:016x}{i:016x}")).unwrap())
        .filter(|k| master_in(&ranges, &store.redis_key(k)) == victim)
        .take(20)
        .collect();
    let (before, after) = keys.split_at(10);
    let t = now_micros();
    for key in before {
        assert!(store.create(key, &record(t, 0, b"{}"), t).await.unwrap());
    }
    // A quota of 10 on the same master: 4 admitted before the cut, 6 after.
    let backend = RedisBackend::builder(conn.clone())
        .prefix("lag:rl:")
        .deny_cache_capacity(0)
        .build();
    let layer = RateLimitLayer::builder()
        .limit(Limit::new(
            "q",
            Quota::per_minute(10),
            Key::custom(|req: &Request<()>| {
                req.headers()
                    .get("x-c")
                    .map(|v| LimitKey::new(v.to_str().unwrap_or_default()))
            }),
        ))
        .failure_mode(FailureMode::Closed)
        .backend(backend.clone())
        .build()
        .unwrap();
    let client = client_key_on(&backend, &ranges, "q", "lag", victim);
    let log = AdmissionLog::new();
    let mut svc = limited(&layer);
    for _ in 0..4 {
        let sent = Instant::now();
        let (status, _, _) = send(&mut svc, request(&[("x-c", client.as_str())])).await;
        assert_eq!(status, StatusCode::OK);
        log.record("q", sent, 1);
    }
    // Replicated: the replica's offset reaches the master's.
    let offset = |port: u16, field: &str| -> i64 {
        let info: String = cluster.run_on(port, driver::cmd("INFO").arg("replication"));
        info.lines()
            .find_map(|l| l.strip_prefix(field)?.trim().parse().ok())
            .unwrap_or(-1)
    };
    let waited = Instant::now();
    while offset(replica, "slave_repl_offset:") < offset(victim, "master_repl_offset:") {
        assert!(waited.elapsed() < Duration::from_secs(5), "replica in sync");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Cut the link for good: the replica cannot authenticate when it reconnects. The
    // connection used here (and the store's) stay authenticated.
    let mut admin = cluster.sync_connection(victim).unwrap();
    let () = driver::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("lagging-replica-test")
        .query(&mut admin)
        .unwrap();
    let killed: i64 = driver::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query(&mut admin)
        .unwrap();
    assert_eq!(killed, 1, "the replica's link");
    let waited = Instant::now();
    loop {
        let info: String = cluster.run_on(replica, driver::cmd("INFO").arg("replication"));
        if info.lines().any(|l| l.trim() == "master_link_status:down") {
            break;
        }
        assert!(waited.elapsed() < Duration::from_secs(5), "link down");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = now_micros();
    let mut acknowledged = 0;
    for key in before {
        let outcome = store
            .save(key, &record(t, 1, b"{\"n\":2}"), t)
            .await
            .unwrap();
        assert!(matches!(outcome, WriteOutcome::Written));
        acknowledged += 1;
    }
    for key in after {
        assert!(store.create(key, &record(t, 0, b"{}"), t).await.unwrap());
        acknowledged += 1;
    }
    for _ in 0..6 {
        let sent = Instant::now();
        let (status, _, _) = send(&mut svc, request(&[("x-c", client.as_str())])).await;
        assert_eq!(status, StatusCode::OK);
        log.record("q", sent, 1);
    }
    let (status, _, _) = send(&mut svc, request(&[("x-c", client.as_str())])).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "the quota is spent");

    let kill = Instant::now();
    cluster.kill_node(victim);
    loop {
        let role: Vec<driver::Value> = cluster.run_on(replica, &driver::cmd("ROLE"));
        if role.first() == Some(&driver::Value::BulkString(b"master".to_vec())) {
            break;
        }
        assert!(kill.elapsed() < WINDOW_BOUND, "the replica took over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Through the same connection, once it answers again.
    let t = now_micros();
    let mut versions = Vec::new();
    for key in &keys {
        let found = loop {
            match store.load(key, t, false).await {
                Ok(found) => break found,
                Err(e) => {
                    assert!(
                        kill.elapsed() < WINDOW_BOUND,
                        "load after the failover: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        versions.push(found.map_or(0, |r| r.version));
    }
    let lost = versions[..10].iter().filter(|&&v| v < 2).count()
        + versions[10..].iter().filter(|&&v| v < 1).count();
    eprintln!(
        "FAILOVER lagging replica: {lost} of {acknowledged} writes acknowledged after the replication link was cut are lost (versions found: {versions:?})"
    );
    // The quota: the promoted replica counts the 4 admissions before the cut only, so 6
    // more are admitted, as many as the increments lost.
    let mut again = 0;
    loop {
        let sent = Instant::now();
        let (status, _, _) = send(&mut svc, request(&[("x-c", client.as_str())])).await;
        match status {
            StatusCode::OK => {
                log.record("q", sent, 1);
                again += 1;
            }
            StatusCode::TOO_MANY_REQUESTS => break,
            other => assert!(
                kill.elapsed() < WINDOW_BOUND,
                "limiter after the failover: {other}"
            ),
        }
        assert!(again <= 10, "the quota holds after the failover");
    }
    let most = log.most_in_any_window("q", Duration::from_secs(60));
    eprintln!(
        "FAILOVER lagging replica: quota 10/min, 6 admissions made after the cut lost with the master: {again} admitted again after the failover, {most} within one window"
    );
    assert_eq!(again, 6, "exactly the lost increments are admitted again");
    assert_eq!(most, 16);
    assert_eq!(
        &versions[..10],
        &[1; 10],
        "the creates replicated before the cut survive, their later saves do not"
    );
    assert_eq!(
        &versions[10..],
        &[0; 10],
        "the creates after the cut are lost"
    );
}

/// While the cluster refuses calls as `CLUSTERDOWN` (a slot not served, as in the moments
/// before a dead master's replica takes over), each call fails within the command timeout
/// and none counts toward the circuit breaker: the refusals come from nodes that answer, and
/// counting them opened the breaker for every slot. Made certain here by unassigning a slot
/// on every master, then assigning it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusterdown_refusals_keep_the_breaker_closed() {
    tokio::time::timeout(DEADLINE, async {
        let cluster = RedisCluster::start(3, 0);
        let conn = cluster.config().connect().await.unwrap();
        let key = "{fo:down}:k";
        let () = conn
            .query(driver::cmd("SET").arg(key).arg("v"))
            .await
            .unwrap();
        let slot = key_slot(key.as_bytes());
        let owner = cluster.master_of_slot(slot);
        for port in cluster.master_ports() {
            let () = cluster.run_on(port, driver::cmd("CLUSTER").arg("DELSLOTS").arg(slot));
        }
        let waited = Instant::now();
        loop {
            let info: String = cluster.run_on(owner, driver::cmd("CLUSTER").arg("INFO"));
            if info.lines().any(|l| l.trim() == "cluster_state:fail") {
                break;
            }
            assert!(waited.elapsed() < Duration::from_secs(10), "cluster down");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for _ in 0..5 {
            let started = Instant::now();
            let err = conn
                .query::<Option<String>>(driver::cmd("GET").arg(key))
                .await
                .expect_err("the cluster is down");
            assert_eq!(err.server_code(), Some("CLUSTERDOWN"), "{err}");
            assert!(started.elapsed() <= conn.command_timeout() + Duration::from_millis(100));
        }
        assert!(conn.is_available(), "CLUSTERDOWN opened the breaker");
        let () = cluster.run_on(owner, driver::cmd("CLUSTER").arg("ADDSLOTS").arg(slot));
        cluster.wait_until_ok(Duration::from_secs(20));
        let waited = Instant::now();
        let value = loop {
            // The slot's keys went with it (DELSLOTS keeps them, ADDSLOTS on the same node
            // serves them again).
            match conn
                .query::<Option<String>>(driver::cmd("GET").arg(key))
                .await
            {
                Ok(v) => break v,
                Err(e) => assert!(waited.elapsed() < Duration::from_secs(10), "{e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(value.as_deref(), Some("v"));
    })
    .await
    .expect("deadline");
}
