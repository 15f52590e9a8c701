//! Sessions behind Redis Sentinel (one primary, one replica, three sentinels, started by the
//! test support): the whole session store conformance suite, and sign-ins that keep coming
//! across a `SENTINEL FAILOVER`: every sign-in the store acknowledged is still there on the
//! new primary, and sign out everywhere finds every one of them.
//!
//! Each test starts its own setup (about 2-3 s) and runs within a deadline.
#![cfg(all(feature = "session", feature = "redis", feature = "testing"))]

use rampart_test_support as support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::RedisSentinel;
use tower_rampart::redis::Topology;
use tower_rampart::session::store::testing;
use tower_rampart::session::{RedisStore, SessionKey, SessionRecord, SessionStore};

/// Each test finishes well within this, setup included, on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(45);
const FAILOVER_DEADLINE: Duration = Duration::from_secs(20);
const SEC: u64 = 1_000_000;

fn store(setup: &RedisSentinel, prefix: &str) -> RedisStore {
    let conn = setup.config().connect_lazy().expect("sentinel connection");
    RedisStore::new(conn).with_prefix(prefix)
}

/// The conformance suite, every check, on the primary the sentinels name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_behind_sentinel() {
    tokio::time::timeout(DEADLINE, async {
        let setup = tokio::task::block_in_place(RedisSentinel::start);
        let store = store(&setup, &support::unique_prefix());
        testing::run_all(Arc::new(store.clone())).await;
        assert_eq!(store.connection().topology(), Some(Topology::Sentinel));
        drop(setup);
    })
    .await
    .expect("deadline");
}

/// Sign-ins of one user keep coming (four tasks, back to back) while the sentinels fail the
/// primary over. Every sign-in acknowledged is loadable afterwards, through the same store
/// (no restart), and sign out everywhere deletes exactly those; the failed ones are counted
/// and their window printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_across_a_sentinel_failover() {
    tokio::time::timeout(DEADLINE, across_failover())
        .await
        .expect("deadline");
}

async fn across_failover() {
    let setup = tokio::task::block_in_place(RedisSentinel::start);
    let s = store(&setup, "fo:");
    let t = now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for task in 0..4u64 {
        let (s, stop) = (s.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut failed: Vec<(Instant, Instant)> = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let key = SessionKey::parse(&format!("{t:016x}{:016x}", task << 48 | i)).unwrap();
                let sent = Instant::now();
                match s.create(&key, &record(t, Some("dave")), t).await {
                    Ok(true) => acked.push(key),
                    Ok(false) => panic!("a fresh key collided"),
                    Err(_) => {
                        failed.push((sent, Instant::now()));
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            (acked, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let old = setup.primary_port();
    let new = tokio::task::block_in_place(|| {
        setup.failover();
        setup.wait_for_new_primary(old, FAILOVER_DEADLINE)
    });
    // Keep signing in for a while on the new primary.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    let mut failed = Vec::new();
    for task in tasks {
        let (a, f) = task.await.unwrap();
        acked.extend(a);
        failed.extend(f);
    }
    let window = match (
        failed.iter().map(|f| f.0).min(),
        failed.iter().map(|f| f.1).max(),
    ) {
        (Some(first), Some(last)) => last - first,
        _ => Duration::ZERO,
    };
    let mut missing = 0;
    for key in &acked {
        if s.load(key, t + SEC, false).await.unwrap().is_none() {
            missing += 1;
        }
    }
    eprintln!(
        "sessions across SENTINEL FAILOVER ({old} -> {new}): {} sign-ins acknowledged, {} \
         failed within {window:?}, {missing} acknowledged sessions missing afterwards",
        acked.len(),
        failed.len()
    );
    assert!(acked.len() > 50, "{} sign-ins", acked.len());
    assert_eq!(missing, 0, "acknowledged sessions lost across the failover");
    assert!(
        window < Duration::from_secs(4),
        "sign-ins failed for {window:?}"
    );
    let deleted = s.delete_user_sessions("dave", t + SEC).await.unwrap();
    assert!(
        deleted >= acked.len() as u64,
        "sign out everywhere deleted {deleted} of {} acknowledged sessions",
        acked.len()
    );
    for key in &acked {
        assert!(s.load(key, t + SEC, false).await.unwrap().is_none());
    }
}

fn now() -> u64 {
    use tower_rampart::clock::{Clock, ManualClock};
    ManualClock::starting_now().now_micros()
}

fn record(now: u64, user: Option<&str>) -> SessionRecord {
    SessionRecord {
        version: 0,
        created_micros: now,
        accessed_micros: now,
        idle_micros: 600 * SEC,
        expires_micros: now + 3600 * SEC,
        user_id: user.map(str::to_owned),
        data: b"{}".to_vec(),
        binding: None,
    }
}
