//! `RedisConnection` behind Redis Sentinel (one primary, one replica, three sentinels from the
//! test support): the connection finds the primary through the sentinels (passwords,
//! a dead sentinel first in the list, wrong passwords as clear errors); it follows a
//! `SENTINEL FAILOVER` and a killed primary under continuous writes without a restart, with
//! the error window and the acknowledged writes lost measured; a script missing on the new
//! primary is loaded and retried; the health report names the topology and the primary;
//! with every sentinel down the breaker opens and the connection recovers by itself; a hung
//! sentinel slows nothing; `READONLY` from a primary demoted behind the sentinels' back
//! leads to the new primary (`ROLE` refuses the old one meanwhile); the same over TLS.
//!
//! Each test starts its own setup (about 2-3 s) and runs within [`DEADLINE`].
#![cfg(feature = "redis")]

mod common;
use rampart_test_support as support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Capture;
use support::RedisSentinel;
use tower_rampart::redis::driver::{self, Script};
use tower_rampart::redis::{
    NodeCounts, RedisConfig, RedisConnection, RedisErrorKind, RedisHealth, Topology,
};

/// Each test finishes well within this, setup included, on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(45);
/// Time for the sentinels to agree on a new primary.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(20);
/// The longest the writes may fail (or not be answered) around a failover. Measured here:
/// see the `eprintln!` of each test; this bound leaves room for a loaded machine.
const GRACEFUL_WINDOW_BOUND: Duration = Duration::from_secs(4);
/// With a killed primary the sentinels first wait `down-after-milliseconds` (1 s), then
/// elect a leader and promote the replica.
const KILL_WINDOW_BOUND: Duration = Duration::from_secs(8);

const DATA_PASSWORD: &str = "data pa55:@/";
const SENTINEL_PASSWORD: &str = "sentinel pa55";

fn captured_logs() -> &'static Capture {
    static CAPTURED: std::sync::OnceLock<Capture> = std::sync::OnceLock::new();
    CAPTURED.get_or_init(|| {
        let captured = Capture::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("global subscriber");
        captured
    })
}

/// Runs a blocking harness call (process management, polling) off the async workers.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

async fn with_deadline(test: impl Future<Output = ()>) {
    tokio::time::timeout(DEADLINE, test)
        .await
        .expect("deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finds_the_primary_through_the_sentinels() {
    with_deadline(async {
        let logs = captured_logs();
        let setup = blocking(|| {
            RedisSentinel::start_with_passwords(Some(DATA_PASSWORD), Some(SENTINEL_PASSWORD))
        });
        let primary = setup.primary_port();
        let conn = setup
            .config()
            .connect()
            .await
            .expect("connect through the sentinels");
        assert_eq!(conn.topology(), Some(Topology::Sentinel));
        assert_eq!(conn.detect_topology().await.unwrap(), Topology::Sentinel);
        assert!(!conn.is_cluster());
        let () = conn
            .query(driver::cmd("SET").arg("s:k").arg("v"))
            .await
            .unwrap();
        let on_primary: Option<String> =
            blocking(|| setup.run_on(primary, driver::cmd("GET").arg("s:k")));
        assert_eq!(
            on_primary.as_deref(),
            Some("v"),
            "the write went to the primary"
        );

        let report = conn.health_report().await;
        assert!(report.health.is_connected(), "{report:?}");
        assert_eq!(report.topology, Some(Topology::Sentinel));
        assert_eq!(
            report.nodes,
            Some(NodeCounts {
                expected: 1,
                reachable: 1
            })
        );

        // A dead sentinel first in the list: the next one answers.
        let dead = support::free_port();
        let mut sentinels = vec![("127.0.0.1".to_owned(), dead)];
        sentinels.extend(setup.sentinel_addrs());
        let config = RedisConfig::from_sentinels(support::sentinel::MASTER_NAME, sentinels)
            .unwrap()
            .password(DATA_PASSWORD)
            .sentinel_password(SENTINEL_PASSWORD);
        let conn = config.connect().await.expect("the second sentinel answers");
        let v: Option<String> = conn.query(driver::cmd("GET").arg("s:k")).await.unwrap();
        assert_eq!(v.as_deref(), Some("v"));

        // Wrong passwords and an unknown name: clear errors, no secret in them.
        let wrong_sentinel_pw = setup.config().sentinel_password("nope-sentinel");
        let err = wrong_sentinel_pw.connect().await.unwrap_err();
        assert_eq!(err.kind(), RedisErrorKind::Auth, "{err}");
        let wrong_data_pw = setup.config().password("nope-data");
        let err = wrong_data_pw.connect().await.unwrap_err();
        assert_eq!(err.kind(), RedisErrorKind::Auth, "{err}");
        assert!(!err.to_string().contains("nope-data"), "{err}");
        let unknown = RedisConfig::from_sentinels("no-such-primary", setup.sentinel_addrs())
            .unwrap()
            .sentinel_password(SENTINEL_PASSWORD);
        let err = unknown.connect().await.unwrap_err();
        assert_eq!(err.kind(), RedisErrorKind::Unavailable, "{err}");
        assert!(err.to_string().contains("does not know"), "{err}");

        let text = logs.text();
        for secret in [
            DATA_PASSWORD,
            SENTINEL_PASSWORD,
            "nope-sentinel",
            "nope-data",
        ] {
            assert!(!text.contains(secret), "a password in the logs");
        }
        drop(setup);
    })
    .await;
}

/// What a writer saw: acknowledged increments, failed calls, and the longest time without
/// an acknowledged write.
#[derive(Debug, Default)]
struct WriteLoad {
    acked: u64,
    failed: u64,
    /// From the send of the first failed call to the answer of the last one.
    error_window: Duration,
    /// The longest time between two acknowledged writes (the unavailability as a client
    /// sees it).
    longest_gap: Duration,
    /// Error kinds seen, in order of first appearance.
    kinds: Vec<RedisErrorKind>,
}

/// Four tasks `INCR` `key` back to back until `stop`; returns what they saw together.
async fn write_continuously(
    conn: RedisConnection,
    key: &'static str,
    stop: Arc<AtomicBool>,
) -> WriteLoad {
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (conn, stop) = (conn.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut events = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let result: Result<i64, _> = conn.query(driver::cmd("INCR").arg(key)).await;
                events.push((sent, Instant::now(), result.map(drop).map_err(|e| e.kind())));
                if events.last().is_some_and(|e| e.2.is_err()) {
                    // A failing call returns at once (breaker, refused connect): do not spin.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            events
        }));
    }
    let mut events = Vec::new();
    for t in tasks {
        events.extend(t.await.unwrap());
    }
    events.sort_by_key(|e| e.1);
    let mut load = WriteLoad::default();
    let mut first_failure: Option<Instant> = None;
    let mut last_failure: Option<Instant> = None;
    let mut last_ack: Option<Instant> = None;
    for (sent, answered, result) in events {
        match result {
            Ok(()) => {
                load.acked += 1;
                if let Some(prev) = last_ack {
                    load.longest_gap = load.longest_gap.max(answered - prev);
                }
                last_ack = Some(answered);
            }
            Err(kind) => {
                load.failed += 1;
                first_failure = Some(first_failure.map_or(sent, |f| f.min(sent)));
                last_failure = Some(answered);
                if !load.kinds.contains(&kind) {
                    load.kinds.push(kind);
                }
            }
        }
    }
    if let (Some(first), Some(last)) = (first_failure, last_failure) {
        load.error_window = last - first;
    }
    load
}

/// Writes under load across `fail_over` (which returns the old primary's port); returns
/// what the writers saw, the increments the new primary holds and the new primary's port.
async fn across_a_failover(
    setup: &mut RedisSentinel,
    key: &'static str,
    fail_over: impl FnOnce(&mut RedisSentinel) -> u16,
) -> (WriteLoad, i64, u16) {
    let conn = setup.config().connect().await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = tokio::spawn(write_continuously(conn.clone(), key, stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let old = blocking(|| fail_over(setup));
    let new = blocking(|| setup.wait_for_new_primary(old, FAILOVER_DEADLINE));
    // Keep writing until the connection has written on the new primary for a while.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let on_new: Option<i64> = blocking(|| setup.run_on(new, driver::cmd("GET").arg(key)));
        let before = on_new.unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after: Option<i64> = blocking(|| setup.run_on(new, driver::cmd("GET").arg(key)));
        if after.unwrap_or(0) > before {
            break;
        }
        assert!(
            Instant::now() < until,
            "the connection does not write on the new primary {new}:\n{}",
            setup.describe()
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let load = writers.await.unwrap();
    let held: Option<i64> = blocking(|| setup.run_on(new, driver::cmd("GET").arg(key)));
    assert!(conn.is_available(), "the breaker is closed again");
    (load, held.unwrap_or(0), new)
}

fn report(what: &str, load: &WriteLoad, held: i64) {
    let lost = load.acked as i64 - held;
    eprintln!(
        "{what}: {} writes acknowledged, {} failed ({:?}); error window {:?} (first failed send \
         to last failed answer); longest time without an acknowledged write {:?}; the new \
         primary holds {held}: {} acknowledged writes lost",
        load.acked,
        load.failed,
        load.kinds,
        load.error_window,
        load.longest_gap,
        lost.max(0),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_a_sentinel_failover_under_load() {
    with_deadline(async {
        let logs = captured_logs();
        let mut setup = blocking(RedisSentinel::start);
        let (load, held, new) = across_a_failover(&mut setup, "load:graceful", |s| {
            let old = s.primary_port();
            s.failover();
            old
        })
        .await;
        report("SENTINEL FAILOVER", &load, held);
        assert!(load.acked > 100, "{load:?}");
        // The old primary stays writable until the sentinels demote it; the fence (calls
        // fail while a sentinel reports the failover in progress) keeps the writers off it
        // from before the promotion. Without it about a third of this test's acknowledged
        // writes were lost (9840 of 27741 in one run).
        assert_eq!(
            held, load.acked as i64,
            "acknowledged writes lost (or failed writes applied) across SENTINEL FAILOVER"
        );
        assert!(
            load.longest_gap < GRACEFUL_WINDOW_BOUND,
            "writes stopped for {:?}",
            load.longest_gap
        );
        assert!(
            load.error_window < GRACEFUL_WINDOW_BOUND,
            "errors for {:?}",
            load.error_window
        );
        assert!(
            logs.text().contains("redis primary changed"),
            "the change of primary is logged"
        );
        // The old primary is a replica now: it holds what the new one holds, nothing is
        // written to it directly any more.
        assert_ne!(new, setup.node_ports()[0]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_a_killed_primary_under_load() {
    with_deadline(async {
        let mut setup = blocking(RedisSentinel::start);
        let (load, held, _) =
            across_a_failover(&mut setup, "load:killed", RedisSentinel::kill_primary).await;
        report("primary killed", &load, held);
        assert!(load.acked > 100, "{load:?}");
        assert!(
            load.failed > 0,
            "killing the primary fails some calls: {load:?}"
        );
        assert!(
            load.longest_gap < KILL_WINDOW_BOUND,
            "writes stopped for {:?}",
            load.longest_gap
        );
    })
    .await;
}

/// The new primary lacks a script the old one had (flushed here, as after a restart): the
/// call loads it there and retries; the caller never sees `NOSCRIPT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_missing_on_the_new_primary_is_loaded_and_retried() {
    with_deadline(async {
        let setup = blocking(RedisSentinel::start);
        let conn = setup.config().connect().await.unwrap();
        let script = Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
        let n: i64 = conn.invoke_script(script.key("sc:k").arg(2)).await.unwrap();
        assert_eq!(n, 2);
        let old = setup.primary_port();
        blocking(|| setup.failover());
        let new = blocking(|| setup.wait_for_new_primary(old, FAILOVER_DEADLINE));
        // Wait until the connection writes on the new primary (the old one stays up, and a
        // primary, until the sentinels demote it some seconds later).
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let _ = conn
                .query::<()>(driver::cmd("SET").arg("sc:probe").arg(new))
                .await;
            let on_new: Option<u16> =
                blocking(|| setup.run_on(new, driver::cmd("GET").arg("sc:probe")));
            if on_new == Some(new) {
                break;
            }
            assert!(
                Instant::now() < until,
                "the connection never moved to {new}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let () = blocking(|| setup.run_on(new, driver::cmd("SCRIPT").arg("FLUSH")));
        let until = Instant::now() + Duration::from_secs(10);
        let n = loop {
            match conn.invoke_script::<i64>(script.key("sc:k").arg(3)).await {
                Ok(n) => break n,
                Err(e) => {
                    assert_ne!(e.server_code(), Some("NOSCRIPT"), "{e}");
                    assert!(Instant::now() < until, "no success after the failover: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        assert_eq!(
            n, 5,
            "ran once on the new primary, which holds the replicated 2"
        );
        let loaded: Vec<bool> = blocking(|| {
            setup.run_on(
                new,
                driver::cmd("SCRIPT").arg("EXISTS").arg(script.get_hash()),
            )
        });
        assert_eq!(loaded, [true], "the script was loaded on the new primary");
    })
    .await;
}

/// Health behind Sentinel: the primary is checked with `ROLE`; while the killed primary is
/// not replaced the report says 0 of 1 reachable; afterwards 1 of 1 on the new primary,
/// without a restart. A connection that stays on a demoted primary is noticed by the check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_primary() {
    with_deadline(async {
        let mut setup = blocking(RedisSentinel::start);
        let conn = setup.config().connect().await.unwrap();
        assert!(conn.health_check().await.is_connected());
        let old = blocking(|| setup.kill_primary());
        let report = conn.health_report().await;
        assert!(!report.health.is_connected(), "{report:?}");
        assert_eq!(report.topology, Some(Topology::Sentinel));
        assert_eq!(
            report.nodes,
            Some(NodeCounts {
                expected: 1,
                reachable: 0
            })
        );
        let new = blocking(|| setup.wait_for_new_primary(old, FAILOVER_DEADLINE));
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let report = conn.health_report().await;
            if let RedisHealth::Connected { .. } = report.health {
                assert_eq!(
                    report.nodes,
                    Some(NodeCounts {
                        expected: 1,
                        reachable: 1
                    })
                );
                break;
            }
            assert!(
                Instant::now() < until,
                "health after the failover: {report:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let () = conn
            .query(driver::cmd("SET").arg("h:after").arg("1"))
            .await
            .unwrap();
        let v: Option<String> = blocking(|| setup.run_on(new, driver::cmd("GET").arg("h:after")));
        assert_eq!(v.as_deref(), Some("1"));
    })
    .await;
}

/// The sentinels all down: the connection already established keeps serving (the primary
/// is up); a new one fails with a clear error, opens its breaker after repeated failures
/// and then fails fast; once the sentinels are back the breaker's probe asks them again
/// and the calls work, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_and_reconnect_while_the_sentinels_are_down() {
    with_deadline(async {
        let mut setup = blocking(RedisSentinel::start);
        let config = setup.config();
        let established = config.connect().await.unwrap();
        blocking(|| setup.stop_sentinels());
        let () = established
            .query(driver::cmd("SET").arg("b:k").arg("1"))
            .await
            .expect("the established connection keeps serving");

        let fresh = config.connect_lazy().unwrap();
        for _ in 0..3 {
            let err = fresh
                .query::<Option<String>>(driver::cmd("GET").arg("b:k"))
                .await
                .unwrap_err();
            assert_eq!(err.kind(), RedisErrorKind::Unavailable, "{err}");
            assert!(err.to_string().contains("sentinel"), "{err}");
        }
        assert!(!fresh.is_available(), "the breaker opened");
        let started = Instant::now();
        let err = fresh
            .query::<Option<String>>(driver::cmd("GET").arg("b:k"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("circuit breaker open"), "{err}");
        assert!(started.elapsed() < Duration::from_millis(100), "fails fast");
        let report = fresh.health_report().await;
        assert!(!report.health.is_connected());
        assert_eq!(report.topology, Some(Topology::Sentinel));
        assert_eq!(
            report.nodes,
            Some(NodeCounts {
                expected: 1,
                reachable: 0
            })
        );

        blocking(|| setup.restart_sentinels());
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            match fresh
                .query::<Option<String>>(driver::cmd("GET").arg("b:k"))
                .await
            {
                Ok(v) => {
                    assert_eq!(v.as_deref(), Some("1"));
                    break;
                }
                Err(e) => assert!(Instant::now() < until, "not back: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(fresh.is_available(), "the breaker closed");
    })
    .await;
}

/// TLS-only (sentinels, primary, replica, replication), with both passwords: the
/// connection finds the primary over TLS with the test CA and follows a `SENTINEL
/// FAILOVER`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sentinels_and_primary() {
    with_deadline(async {
        let setup =
            blocking(|| RedisSentinel::start_tls(Some(DATA_PASSWORD), Some(SENTINEL_PASSWORD)));
        assert!(setup.is_tls());
        let config = setup.config();
        assert!(config.is_tls());
        let conn = config.connect().await.expect("connect over TLS");
        let () = conn
            .query(driver::cmd("SET").arg("t:k").arg("1"))
            .await
            .unwrap();
        // Without the CA the sentinels' certificate is not trusted.
        let untrusted =
            RedisConfig::from_sentinels(support::sentinel::MASTER_NAME, setup.sentinel_addrs())
                .unwrap()
                .tls(true)
                .password(DATA_PASSWORD)
                .sentinel_password(SENTINEL_PASSWORD);
        assert!(untrusted.connect().await.is_err());

        let old = setup.primary_port();
        let new = blocking(|| {
            setup.failover();
            setup.wait_for_new_primary(old, FAILOVER_DEADLINE)
        });
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let written = conn
                .query::<i64>(driver::cmd("INCR").arg("t:k"))
                .await
                .is_ok();
            let on_new: Option<i64> = blocking(|| setup.run_on(new, driver::cmd("GET").arg("t:k")));
            if written && on_new.unwrap_or(0) > 1 {
                break;
            }
            assert!(
                Instant::now() < until,
                "no write on the new primary over TLS"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

/// A hung sentinel (frozen: it accepts connections and never answers) first in the list:
/// connecting waits for the majority that answers, not for the hung one's timeout, and the
/// watch still follows a `SENTINEL FAILOVER`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_sentinel_slows_nothing() {
    with_deadline(async {
        let setup = blocking(RedisSentinel::start);
        let old = setup.primary_port();
        setup.pause_sentinel(0);
        let config = setup.config();
        let started = Instant::now();
        let conn = config
            .connect()
            .await
            .expect("connect past a hung sentinel");
        let took = started.elapsed();
        eprintln!("connect with a hung sentinel first: {took:?}");
        assert!(
            took < Duration::from_millis(500),
            "waited {took:?} for the hung sentinel (its timeout is 1 s)"
        );
        let () = conn
            .query(driver::cmd("SET").arg("hung:k").arg("1"))
            .await
            .unwrap();
        // The harness's own helpers ask every sentinel: ask a live one directly.
        let live = setup.sentinel_addrs()[1].1;
        let () = blocking(|| {
            setup.try_sentinel(
                live,
                driver::cmd("SENTINEL")
                    .arg("FAILOVER")
                    .arg(support::sentinel::MASTER_NAME),
            )
        })
        .expect("SENTINEL FAILOVER");
        let until = Instant::now() + FAILOVER_DEADLINE;
        loop {
            let _ = conn.query::<i64>(driver::cmd("INCR").arg("hung:k")).await;
            let moved = setup
                .node_ports()
                .into_iter()
                .filter(|p| *p != old)
                .any(|new| {
                    blocking(|| {
                        setup.try_run_on::<Option<i64>>(new, driver::cmd("GET").arg("hung:k"))
                    })
                    .ok()
                    .flatten()
                    .is_some_and(|v| v > 1)
                        && blocking(|| setup.try_run_on::<driver::Value>(new, &driver::cmd("ROLE")))
                            .is_ok_and(|r| format!("{r:?}").contains("master"))
                });
            if moved {
                break;
            }
            assert!(
                Instant::now() < until,
                "never followed:\n{}",
                setup.describe()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        setup.resume_sentinel(0);
    })
    .await;
}

/// The primary demoted behind the sentinels' back (`REPLICAOF` by hand, the replica made a
/// primary): the next write is answered `READONLY` and the connection is dropped; the
/// reconnect asks the sentinels, which still name the demoted node, and `ROLE` refuses it
/// (never a connection to a replica); once the sentinels switch (`SENTINEL FAILOVER`), the
/// calls go to the new primary, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readonly_from_a_demoted_primary_leads_to_the_new_one() {
    with_deadline(async {
        let setup = blocking(RedisSentinel::start);
        let conn = setup.config().connect().await.unwrap();
        let old = setup.primary_port();
        let new = setup.node_ports().into_iter().find(|p| *p != old).unwrap();
        let () = conn
            .query(driver::cmd("SET").arg("ro:k").arg("1"))
            .await
            .unwrap();
        blocking(|| {
            let () = setup.run_on(new, driver::cmd("REPLICAOF").arg("NO").arg("ONE"));
            let () = setup.run_on(old, driver::cmd("REPLICAOF").arg("127.0.0.1").arg(new));
        });
        let err = conn
            .query::<()>(driver::cmd("SET").arg("ro:k").arg("2"))
            .await
            .unwrap_err();
        assert_eq!(err.server_code(), Some("READONLY"), "{err}");
        assert_eq!(err.kind(), RedisErrorKind::Unavailable, "{err}");
        // Reconnecting: the sentinels still name the old node, which is a replica now.
        let err = conn
            .query::<()>(driver::cmd("SET").arg("ro:k").arg("3"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not a primary"), "{err}");
        blocking(|| setup.failover());
        let until = Instant::now() + FAILOVER_DEADLINE;
        loop {
            if conn
                .query::<()>(driver::cmd("SET").arg("ro:k").arg("4"))
                .await
                .is_ok()
            {
                break;
            }
            assert!(
                Instant::now() < until,
                "no write after the switch:\n{}",
                setup.describe()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let v: Option<String> = blocking(|| setup.run_on(new, driver::cmd("GET").arg("ro:k")));
        assert_eq!(v.as_deref(), Some("4"), "the write went to the new primary");
    })
    .await;
}
