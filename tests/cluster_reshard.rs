//! Slots holding keys in use move between the masters of a Redis Cluster while requests flow
//! (`CLUSTER SETSLOT … IMPORTING/MIGRATING`, `MIGRATE … KEYS` in two halves, `SETSLOT …
//! NODE`, through the test support's `move_slot` steps): the rate limiter (batched calls with
//! several keys of the moving slot, so a call meets keys on both sides: `TRYAGAIN`) and the
//! session store (loads, saves and creates in the moving slot: `ASK`, then `MOVED`) never fail
//! a call, no quota is exceeded (the accounting checker), and no acknowledged write is lost.
//!
//! The target master starts without the scripts (`SCRIPT FLUSH`), as a master just added to
//! grow the cluster does: the first script redirected there by `ASK` meets `NOSCRIPT`.
//!
//! Figures (labelled `RESHARD`): calls made during the move, the slowest call, and what the
//! servers answered (`TRYAGAIN`/`ASK` counts from the nodes' error stats).
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
    FailureMode, Key, Limit, LimitKey, Quota, RateLimitLayer, RedisBackend,
};
use tower_rampart::redis::{RedisConnection, driver, key_slot};
use tower_rampart::session::{RedisStore, SessionKey, SessionRecord, SessionStore, WriteOutcome};

const DEADLINE: Duration = Duration::from_secs(45);
const SEC: u64 = 1_000_000;
/// Each limiter key's quota: reached during the test, so refusals and admissions both flow.
const LIMIT: u32 = 60;
/// Client keys of the limiter in the moving slot.
const LIMITER_KEYS: usize = 4;
/// Sessions in the moving slot.
const SESSIONS: usize = 6;

/// Failures and the slowest call of one layer.
#[derive(Default)]
struct Track {
    calls: Mutex<u64>,
    slowest: Mutex<Duration>,
    failures: Mutex<Vec<String>>,
}

impl Track {
    fn done(&self, started: Instant, outcome: Result<(), String>) {
        *self.calls.lock().unwrap() += 1;
        let took = started.elapsed();
        let mut slowest = self.slowest.lock().unwrap();
        *slowest = (*slowest).max(took);
        if let Err(e) = outcome {
            self.failures.lock().unwrap().push(e);
        }
    }
}

fn now_micros() -> u64 {
    ManualClock::starting_now().now_micros()
}

fn record(now: u64, version: u64, n: u64) -> SessionRecord {
    SessionRecord {
        version,
        created_micros: now,
        accessed_micros: now,
        idle_micros: 600 * SEC,
        expires_micros: now + 3600 * SEC,
        user_id: None,
        data: format!("{{\"n\":{n}}}").into_bytes(),
        binding: None,
    }
}

/// Session keys whose Redis keys live in `slot`.
fn sessions_in(store: &RedisStore, slot: u16, n: usize) -> Vec<SessionKey> {
    let base = now_micros();
    (0u64..)
        .map(|i| SessionKey::parse(&format!("{base:016x}{i:016x}")).unwrap())
        .filter(|k| key_slot(store.redis_key(k).as_bytes()) == slot)
        .take(n)
        .collect()
}

/// Client keys whose limiter key names (quota `name`) live in `slot`.
fn clients_in(backend: &RedisBackend, name: &str, slot: u16, n: usize) -> Vec<String> {
    (0u64..)
        .map(|i| format!("c{i}"))
        .filter(|c| key_slot(backend.key_name(name, &LimitKey::new(c.clone())).as_bytes()) == slot)
        .take(n)
        .collect()
}

/// Saves each session in turn (load, then save the next version), and creates new ones in
/// the slot, until `stop`; `acked` holds the last acknowledged version of each.
async fn session_load(
    store: RedisStore,
    keys: Vec<SessionKey>,
    stop: Arc<AtomicBool>,
    track: Arc<Track>,
    acked: Arc<Mutex<BTreeMap<String, u64>>>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for key in &keys {
            n += 1;
            let t = now_micros();
            let started = Instant::now();
            let outcome = match store.load(key, t, true).await {
                Ok(Some(r)) => match store.save(key, &record(t, r.version, n), t).await {
                    Ok(WriteOutcome::Written) => {
                        acked
                            .lock()
                            .unwrap()
                            .insert(key.as_str().to_owned(), r.version + 1);
                        Ok(())
                    }
                    // Another task saved in between: an answer, not a failure.
                    Ok(WriteOutcome::Conflict(_)) => Ok(()),
                    Ok(other) => Err(format!("save: {other:?}")),
                    Err(e) => Err(format!("save: {e}")),
                },
                Ok(None) => Err("load: session missing".to_owned()),
                Err(e) => Err(format!("load: {e}")),
            };
            track.done(started, outcome);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

fn request(client: &str) -> Request<Full<Bytes>> {
    req_with("192.0.2.1:1", &[("x-c", client)])
}

/// Requests on the client keys in turn until `stop`.
async fn limiter_load(
    layer: RateLimitLayer,
    clients: Vec<String>,
    offset: usize,
    stop: Arc<AtomicBool>,
    track: Arc<Track>,
    log: Arc<AdmissionLog>,
) {
    let mut svc = limited(&layer);
    let mut i = offset;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let client = &clients[i % clients.len()];
        let sent = Instant::now();
        let (status, _, body) = send(&mut svc, request(client)).await;
        let outcome = match status {
            StatusCode::OK => {
                log.record(client, sent, 1);
                Ok(())
            }
            StatusCode::TOO_MANY_REQUESTS => Ok(()),
            other => Err(format!("status {other}: {body}")),
        };
        track.done(sent, outcome);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// `errorstat_*` counts of a node (`INFO errorstats`), e.g. `TRYAGAIN`, `ASK`, `NOSCRIPT`.
fn error_stats(cluster: &RedisCluster, port: u16) -> BTreeMap<String, u64> {
    let info: String = cluster.run_on(port, driver::cmd("INFO").arg("errorstats"));
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("errorstat_")?.split_once(':')?;
            let count = rest.strip_prefix("count=")?.parse().ok()?;
            Some((name.to_owned(), count))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_in_use_move_while_requests_flow() {
    let started = Instant::now();
    tokio::time::timeout(DEADLINE, reshard(RedisCluster::start(3, 0)))
        .await
        .expect("deadline");
    eprintln!("RESHARD test took {:?}", started.elapsed());
}

/// The same on a TLS-only cluster (`MIGRATE` runs over TLS between the nodes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_in_use_move_while_requests_flow_on_a_tls_cluster() {
    let started = Instant::now();
    tokio::time::timeout(DEADLINE, reshard(RedisCluster::start_tls(3, 0)))
        .await
        .expect("deadline");
    eprintln!("RESHARD (TLS) test took {:?}", started.elapsed());
}

async fn reshard(cluster: RedisCluster) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let conn: RedisConnection = cluster.config().connect().await.unwrap();
    assert!(conn.is_cluster());
    let store = RedisStore::new(conn.clone()).with_prefix("rs:");
    let backend = RedisBackend::builder(conn.clone())
        .prefix("rs:rl:")
        .deny_cache_capacity(0)
        // Batches form at once: calls carry several keys of the moving slot.
        .max_calls_in_flight(1)
        .build();
    let layer = RateLimitLayer::builder()
        .limit(Limit::new(
            "q",
            Quota::per_minute(LIMIT),
            Key::custom(|req: &Request<()>| {
                req.headers()
                    .get("x-c")
                    .map(|v| LimitKey::new(v.to_str().unwrap_or_default()))
            }),
        ))
        .cost_with(rate_limit_common::cost_header)
        .failure_mode(FailureMode::Closed)
        .backend(backend.clone())
        .build()
        .unwrap();

    // The moving slot: the one of the first limiter key; every key in use lives there.
    let slot = key_slot(backend.key_name("q", &LimitKey::new("c0")).as_bytes());
    let clients = clients_in(&backend, "q", slot, LIMITER_KEYS);
    let sessions = sessions_in(&store, slot, SESSIONS);
    let from = cluster.master_of_slot(slot);
    let to = cluster
        .master_ports()
        .into_iter()
        .find(|&p| p != from)
        .unwrap();
    let t = now_micros();
    let acked: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    for key in &sessions {
        assert!(store.create(key, &record(t, 0, 0), t).await.unwrap());
        acked.lock().unwrap().insert(key.as_str().to_owned(), 1);
    }
    // The target knows no script yet, as a master just added to the cluster.
    let () = cluster.run_on(to, driver::cmd("SCRIPT").arg("FLUSH"));
    let () = cluster.run_on(to, driver::cmd("CONFIG").arg("RESETSTAT"));
    let () = cluster.run_on(from, driver::cmd("CONFIG").arg("RESETSTAT"));

    let stop = Arc::new(AtomicBool::new(false));
    let limiter = Arc::new(Track::default());
    let session_track = Arc::new(Track::default());
    let log = Arc::new(AdmissionLog::new());
    let mut tasks = Vec::new();
    for offset in 0..4 {
        tasks.push(tokio::spawn(limiter_load(
            layer.clone(),
            clients.clone(),
            offset,
            stop.clone(),
            limiter.clone(),
            log.clone(),
        )));
    }
    for half in sessions.chunks(SESSIONS / 2) {
        tasks.push(tokio::spawn(session_load(
            store.clone(),
            half.to_vec(),
            stop.clone(),
            session_track.clone(),
            acked.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The move, in steps, with load flowing between them.
    let began = Instant::now();
    let source = cluster.begin_slot_move(slot, to);
    assert_eq!(source, from);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Half the limiter keys and half the sessions first: a batch over both halves meets
    // TRYAGAIN on the source.
    let mut first_half: Vec<String> = clients[..LIMITER_KEYS / 2]
        .iter()
        .map(|c| backend.key_name("q", &LimitKey::new(c.clone())))
        .collect();
    first_half.extend(sessions[..SESSIONS / 2].iter().map(|k| store.redis_key(k)));
    cluster.migrate_keys(from, to, &first_half);
    let left: i64 = cluster.run_on(
        from,
        driver::cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(slot),
    );
    eprintln!(
        "RESHARD slot {slot}: {} keys moved from {from} to {to}, {left} stay for 1 s",
        first_half.len()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    while cluster.migrate_slot_keys(slot, from, to, 100) > 0 {}
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.finish_slot_move(slot, from, to);
    let moving = began.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // And back, in one go.
    cluster.move_slot(slot, from);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }

    let mut stats = BTreeMap::new();
    for port in [from, to] {
        for (name, count) in error_stats(&cluster, port) {
            *stats.entry(name).or_insert(0u64) += count;
        }
    }
    for (layer_name, track) in [("limiter", &limiter), ("sessions", &session_track)] {
        let failures = track.failures.lock().unwrap();
        eprintln!(
            "RESHARD [{layer_name}]: {} calls, slowest {:?}, {} failed: {:?}",
            track.calls.lock().unwrap(),
            track.slowest.lock().unwrap(),
            failures.len(),
            failures.iter().collect::<std::collections::BTreeSet<_>>()
        );
    }
    eprintln!(
        "RESHARD first move took {moving:?}; server error replies on the two masters: {stats:?}"
    );
    for (layer_name, track) in [("limiter", &limiter), ("sessions", &session_track)] {
        let failures = track.failures.lock().unwrap();
        assert!(
            failures.is_empty(),
            "{layer_name}: {} calls failed during the move, e.g. {:?}",
            failures.len(),
            failures.first()
        );
        assert!(
            *track.calls.lock().unwrap() > 50,
            "{layer_name}: load flowed"
        );
    }

    // No quota exceeded; Redis counts exactly what was admitted.
    let mut svc = limited(&layer);
    for client in &clients {
        log.check_window(client, u64::from(LIMIT), Duration::from_secs(60));
        let (status, h, _) = send(
            &mut svc,
            req_with("192.0.2.1:1", &[("x-c", client.as_str()), ("x-cost", "0")]),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let left = u64::from(LIMIT) - log.total(client);
        assert!(
            header(&h, "ratelimit").starts_with(&format!("\"q\";r={left};")),
            "{client}: {h:?}, {} admitted",
            log.total(client)
        );
    }
    // Every acknowledged save is there.
    let t = now_micros();
    for key in &sessions {
        let found = store.load(key, t, false).await.unwrap().expect("session");
        assert_eq!(
            found.version,
            acked.lock().unwrap()[key.as_str()],
            "an acknowledged save is missing"
        );
    }
    assert_eq!(cluster.master_of_slot(slot), from);
}

/// A multi-key command over a slot whose keys are split by a migration is refused with
/// `TRYAGAIN` (within the command timeout: the driver's resends are short), as long as the
/// split lasts; those refusals do not open the circuit breaker (the node answered), so
/// calls to every other slot go on; once the slot has moved the command runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tryagain_reaches_the_caller_fast_and_keeps_the_breaker_closed() {
    tokio::time::timeout(DEADLINE, async {
        let cluster = RedisCluster::start(3, 0);
        let conn = cluster.config().connect().await.unwrap();
        let (a, b) = ("{rs:split}:a", "{rs:split}:b");
        let () = conn
            .query(driver::cmd("MSET").arg(a).arg(1).arg(b).arg(2))
            .await
            .unwrap();
        let slot = key_slot(a.as_bytes());
        let from = cluster.master_of_slot(slot);
        let to = cluster
            .master_ports()
            .into_iter()
            .find(|&p| p != from)
            .unwrap();
        cluster.begin_slot_move(slot, to);
        cluster.migrate_keys(from, to, &[a]);
        let mget = driver::cmd("MGET").arg(a).arg(b).clone();
        for _ in 0..5 {
            let started = Instant::now();
            let err = conn
                .query::<Vec<i64>>(&mget)
                .await
                .expect_err("keys on both sides of the move");
            assert_eq!(err.server_code(), Some("TRYAGAIN"), "{err}");
            assert!(
                started.elapsed() < conn.command_timeout(),
                "{:?}",
                started.elapsed()
            );
        }
        assert!(conn.is_available(), "TRYAGAIN opened the breaker");
        let other: Option<String> = conn
            .query(driver::cmd("GET").arg("elsewhere"))
            .await
            .unwrap();
        assert_eq!(other, None);
        cluster.migrate_keys(from, to, &[b]);
        cluster.finish_slot_move(slot, from, to);
        let both: Vec<i64> = conn.query(&mget).await.unwrap();
        assert_eq!(both, [1, 2]);
    })
    .await
    .expect("deadline");
}
