//! `RedisStore::with_wait_replicas` (the gateway's `REDIS_WAIT_REPLICAS`) on real servers:
//! a primary with a replica, and a 3-master cluster with a replica each. Writes wait for
//! the replica and are on it once acknowledged; with the replica gone a write fails (and
//! stays on the master); the rate limiter on the same `RedisConnection` is not held up while
//! a write waits; on a cluster, acknowledged writes survive the death of their master.
//!
//! Every test runs within a deadline; the latency measurement is `#[ignore]`d (run it with
//! `cargo nextest run --test session_wait --run-ignored only --no-capture`).
#![cfg(all(
    feature = "session",
    feature = "redis",
    feature = "testing",
    feature = "rate-limit"
))]

mod rate_limit_common;
use rampart_test_support as support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use rate_limit_common::{limited, req_from, send};
use support::{RedisCluster, RedisServer};
use tower_rampart::rate_limit::{Key, Quota, RateLimitLayer, RedisBackend};
use tower_rampart::redis::{RedisConnection, driver};
use tower_rampart::session::store::testing;
use tower_rampart::session::{
    RedisStore, SessionKey, SessionRecord, SessionStore, StoreErrorKind, WriteOutcome,
};

const DEADLINE: Duration = Duration::from_secs(50);
const SEC: u64 = 1_000_000;
const T0: u64 = 1_700_000_000 * SEC;

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(DEADLINE, f).await.expect("deadline")
}

fn key(n: u32) -> SessionKey {
    SessionKey::parse(&format!("{n:032x}")).unwrap()
}

fn record(user: Option<&str>, data: &[u8]) -> SessionRecord {
    SessionRecord {
        version: 0,
        created_micros: T0,
        accessed_micros: T0,
        idle_micros: 600 * SEC,
        expires_micros: T0 + 3600 * SEC,
        user_id: user.map(str::to_owned),
        data: data.to_vec(),
        binding: None,
    }
}

/// A primary and a replica in sync, started off the async runtime.
async fn primary_and_replica() -> (RedisServer, RedisServer) {
    tokio::task::spawn_blocking(|| {
        let primary = RedisServer::start();
        let replica = RedisServer::start_replica_of(&primary);
        (primary, replica)
    })
    .await
    .unwrap()
}

fn connection(server: &RedisServer) -> RedisConnection {
    server.config().connect_lazy().unwrap()
}

/// The version field of `redis_key` as `server` holds it (`None`: no such key).
fn version_on(server: &RedisServer, redis_key: &str) -> Option<u64> {
    server.run(driver::cmd("HGET").arg(redis_key).arg("v"))
}

/// Clients of `server` blocked in `WAIT` now.
fn clients_in_wait(server: &RedisServer) -> usize {
    let list: String = server.run(driver::cmd("CLIENT").arg("LIST"));
    list.lines().filter(|l| l.contains(" cmd=wait ")).count()
}

/// Create, save and delete wait for the replica: right after each call returns, the
/// replica holds its result (no sleep, no polling), and the primary ran one `WAIT` per write.
#[tokio::test]
async fn writes_wait_and_the_replica_has_them_when_they_return() {
    within(async {
        let (primary, replica) = primary_and_replica().await;
        let store = RedisStore::new(connection(&primary))
            .with_prefix("w:")
            .with_wait_replicas(1)
            // Generous: success is expected, and a loaded machine can be slow to acknowledge.
            .with_wait_timeout(Duration::from_secs(2));
        assert_eq!(store.wait_replicas(), 1);
        // Load the scripts first (a node's first EVALSHA of a script answers NOSCRIPT, and
        // the write is sent again with EVAL: two WAITs that once).
        let warm = key(0);
        assert!(
            store
                .create(&warm, &record(Some("bob"), b"{}"), T0)
                .await
                .unwrap()
        );
        let mut r = store.load(&warm, T0, false).await.unwrap().unwrap();
        r.data = b"{\"n\":0}".to_vec();
        assert_eq!(
            store.save(&warm, &r, T0).await.unwrap(),
            WriteOutcome::Written
        );
        assert_eq!(
            store.delete(&warm, None, T0).await.unwrap(),
            WriteOutcome::Written
        );
        primary.reset_stats();
        let k = key(1);
        let rk = store.redis_key(&k);
        // What the master holds, read through the store.
        let version =
            async |store: &RedisStore| store.load(&k, T0, false).await.unwrap().map(|r| r.version);
        assert!(store.create(&k, &record(None, b"{}"), T0).await.unwrap());
        let created = version(&store).await;
        assert!(created.is_some());
        assert_eq!(version_on(&replica, &rk), created);
        let mut r = store.load(&k, T0, false).await.unwrap().unwrap();
        r.data = b"{\"n\":1}".to_vec();
        assert_eq!(store.save(&k, &r, T0).await.unwrap(), WriteOutcome::Written);
        let saved = version(&store).await;
        assert_ne!(saved, created);
        assert_eq!(version_on(&replica, &rk), saved);
        // A save that gives the session a user writes the index entry first, waiting too.
        let mut r = store.load(&k, T0, false).await.unwrap().unwrap();
        r.user_id = Some("ada".into());
        assert_eq!(store.save(&k, &r, T0).await.unwrap(), WriteOutcome::Written);
        let signed_in = version(&store).await;
        assert_ne!(signed_in, saved);
        assert_eq!(version_on(&replica, &rk), signed_in);
        assert_eq!(
            store.delete(&k, signed_in, T0).await.unwrap(),
            WriteOutcome::Written
        );
        assert_eq!(version_on(&replica, &rk), None);
        // create, save, (refused save, index, save), delete: 6 writes, each with its WAIT.
        assert_eq!(primary.command_count("wait"), 6);
        // Without the setting, nothing waits.
        primary.reset_stats();
        let plain = RedisStore::new(connection(&primary)).with_prefix("p:");
        assert!(plain.create(&k, &record(None, b"{}"), T0).await.unwrap());
        assert_eq!(primary.command_count("wait"), 0);
        drop(replica);
    })
    .await;
}

/// Ending one of a user's sessions is a write like the others: it waits for the replica,
/// which no longer holds the session when the call returns; listing only reads and never
/// waits.
#[tokio::test]
async fn ending_one_user_session_waits_and_listing_does_not() {
    within(async {
        let (primary, replica) = primary_and_replica().await;
        let store = RedisStore::new(connection(&primary))
            .with_prefix("e:")
            .with_wait_replicas(1)
            // Generous: success is expected, and a loaded machine can be slow to acknowledge.
            .with_wait_timeout(Duration::from_secs(2));
        let (ended, kept) = (key(21), key(22));
        for k in [&ended, &kept] {
            assert!(
                store
                    .create(k, &record(Some("ada"), b"{}"), T0)
                    .await
                    .unwrap()
            );
        }
        primary.reset_stats();
        assert_eq!(store.list_user_sessions("ada", T0).await.unwrap().len(), 2);
        assert_eq!(primary.command_count("wait"), 0, "listing does not wait");
        assert!(store.delete_user_session("ada", &ended, T0).await.unwrap());
        assert!(primary.command_count("wait") >= 1, "ending one waits");
        assert_eq!(version_on(&replica, &store.redis_key(&ended)), None);
        assert!(version_on(&replica, &store.redis_key(&kept)).is_some());
        assert!(!store.delete_user_session("bob", &kept, T0).await.unwrap());
        let left = store.list_user_sessions("ada", T0).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].key, kept);
    })
    .await;
}

/// The whole conformance suite with every write waiting for a replica.
#[tokio::test]
async fn conformance_suite_with_wait() {
    within(async {
        let (primary, replica) = primary_and_replica().await;
        let store = RedisStore::new(connection(&primary))
            .with_prefix(support::unique_prefix())
            .with_wait_replicas(1)
            // Generous: success is expected, and a loaded machine can be slow to acknowledge.
            .with_wait_timeout(Duration::from_secs(2));
        testing::run_all(Arc::new(store)).await;
        assert!(primary.command_count("wait") > 0);
        drop(replica);
    })
    .await;
}

/// With the replica gone, a write waits for the wait timeout and fails as "unavailable"
/// (answered 503), naming how many replicas acknowledged; the master keeps the write.
/// Asking for more replicas than exist fails the same way.
#[tokio::test]
async fn without_the_replica_a_write_fails_after_the_wait_timeout_and_the_master_keeps_it() {
    within(async {
        let (primary, mut replica) = primary_and_replica().await;
        let store = RedisStore::new(connection(&primary))
            .with_prefix("w:")
            .with_wait_replicas(1)
            .with_wait_timeout(Duration::from_secs(1));
        let k = key(2);
        assert!(store.create(&k, &record(None, b"{}"), T0).await.unwrap());
        let replica = tokio::task::spawn_blocking(move || {
            replica.stop();
            replica
        })
        .await
        .unwrap();
        let mut r = store.load(&k, T0, false).await.unwrap().unwrap();
        r.data = b"{\"n\":2}".to_vec();
        let started = Instant::now();
        let err = store.save(&k, &r, T0).await.unwrap_err();
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "WAIT ran its timeout"
        );
        assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err}");
        assert!(
            err.to_string()
                .contains("acknowledged by 0 of the 1 replicas"),
            "{err}"
        );
        // The write itself happened on the master.
        let now = store.load(&k, T0, false).await.unwrap().unwrap();
        assert_eq!(
            (now.version, now.data.as_slice()),
            (r.version + 1, &b"{\"n\":2}"[..])
        );
        // Loads do not wait: they keep working.
        assert!(store.touch(&k, T0 + SEC).await.unwrap());

        // Two replicas asked, one running: fails too, and succeeds once both are there.
        let mut replica = replica;
        let replica = tokio::task::spawn_blocking(move || {
            replica.restart();
            let second = RedisServer::start_replica_of(&primary);
            (primary, replica, second)
        })
        .await
        .unwrap();
        let (primary, replica, second) = replica;
        replica.wait_in_sync(&primary);
        let two = store.clone().with_wait_replicas(2);
        let k3 = key(3);
        assert!(two.create(&k3, &record(None, b"{}"), T0).await.unwrap());
        let three = store.clone().with_wait_replicas(3);
        let err = three.delete(&k3, None, T0).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("acknowledged by 2 of the 3 replicas"),
            "{err}"
        );
        drop((primary, replica, second));
    })
    .await;
}

/// While a save is blocked in `WAIT` (its replica paused by `DEBUG SLEEP`), rate-limit
/// decisions through the same `RedisConnection` complete: all of them finish before the
/// save returns. The save then succeeds once the replica wakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limiter_is_not_held_up_while_a_save_waits() {
    within(async {
        let (primary, replica) = primary_and_replica().await;
        let conn = connection(&primary);
        let store = RedisStore::new(conn.clone())
            .with_prefix("w:")
            .with_wait_replicas(1)
            .with_wait_timeout(Duration::from_secs(20));
        let backend = RedisBackend::builder(conn.clone())
            .prefix("rl:".to_owned())
            .build();
        let layer = RateLimitLayer::builder()
            .quota("ip", Quota::parse("100000/minute").unwrap(), Key::peer_ip())
            .backend(backend)
            .build()
            .unwrap();
        let mut svc = limited(&layer);
        // The decisions' latency before any save waits, for the printed comparison.
        let mut before = Vec::new();
        for i in 0..200 {
            let started = Instant::now();
            let (status, _, _) =
                send(&mut svc, req_from(&format!("198.51.100.{}:1", i % 50))).await;
            before.push(started.elapsed());
            assert_eq!(status, StatusCode::OK);
        }
        before.sort();
        let k = key(4);
        assert!(store.create(&k, &record(None, b"{}"), T0).await.unwrap());
        let mut r = store.load(&k, T0, false).await.unwrap().unwrap();
        r.data = b"{\"n\":4}".to_vec();

        // Pause the replica: its replication stream and acknowledgements stop.
        let mut sleeper = replica.sync_connection().unwrap();
        let pause = std::thread::spawn(move || {
            driver::cmd("DEBUG")
                .arg("SLEEP")
                .arg(4)
                .query::<()>(&mut sleeper)
        });
        // Make sure the replica is asleep before the save is sent.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let saver = store.clone();
        let save = tokio::spawn(async move { saver.save(&k, &r, T0).await });
        let seen = Instant::now();
        while clients_in_wait(&primary) == 0 {
            assert!(seen.elapsed() < Duration::from_secs(3), "no client in WAIT");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut during = Vec::new();
        for i in 0..200 {
            let started = Instant::now();
            let (status, _, _) =
                send(&mut svc, req_from(&format!("198.51.100.{}:1", i % 50))).await;
            during.push(started.elapsed());
            assert_eq!(status, StatusCode::OK);
        }
        during.sort();
        assert_eq!(layer.metrics().degraded, 0, "every decision came from Redis");
        assert!(
            !save.is_finished() && clients_in_wait(&primary) == 1,
            "the save still waits after 200 decisions"
        );
        println!(
            "limiter decisions, p50 / max of 200: before {:?} / {:?}; while a save waits {:?} / {:?}",
            percentile(&before, 0.5),
            percentile(&before, 1.0),
            percentile(&during, 0.5),
            percentile(&during, 1.0)
        );
        assert_eq!(save.await.unwrap().unwrap(), WriteOutcome::Written);
        pause.join().unwrap().unwrap();
        drop(replica);
    })
    .await;
}

/// On a 3-master cluster with a replica each: the conformance suite with every write
/// waiting; then sessions on every master saved with wait are on their master's replica
/// when the save returns, and survive that master being killed (its replica promoted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_writes_wait_on_the_slot_master_and_survive_its_death() {
    within(async {
        let mut cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 1))
            .await
            .unwrap();
        let conn = cluster.config().connect_lazy().unwrap();
        let store = RedisStore::new(conn)
            .with_prefix(support::unique_prefix())
            .with_wait_replicas(1)
            // Generous: success is expected, and a loaded machine can be slow to acknowledge.
            .with_wait_timeout(Duration::from_secs(2));
        testing::run_all(Arc::new(store.clone())).await;
        assert!(store.connection().is_cluster());

        // One session per master (the first keys found on each).
        let masters = cluster.master_ports();
        let mut keys: Vec<(SessionKey, u16)> = Vec::new();
        for n in 100.. {
            let k = key(n);
            let master = cluster.master_of_key(store.redis_key(&k).as_bytes());
            if !keys.iter().any(|(_, m)| *m == master) {
                keys.push((k, master));
            }
            if keys.len() == masters.len() {
                break;
            }
        }
        cluster.reset_stats();
        for (k, master) in &keys {
            assert!(
                store
                    .create(k, &record(Some("ada"), b"{\"n\":0}"), T0)
                    .await
                    .unwrap()
            );
            let mut r = store.load(k, T0, false).await.unwrap().unwrap();
            r.data = b"{\"n\":1}".to_vec();
            assert_eq!(store.save(k, &r, T0).await.unwrap(), WriteOutcome::Written);
            let saved = r.version + 1;
            assert_eq!(
                store.load(k, T0, false).await.unwrap().unwrap().version,
                saved
            );
            // On the replica of its master now, read there directly.
            let replica = cluster
                .replica_ports()
                .into_iter()
                .find(|p| cluster.master_of_replica(*p) == Some(*master))
                .expect("a replica of the master");
            let mut c = cluster.sync_connection(replica).unwrap();
            let () = driver::cmd("READONLY").query(&mut c).unwrap();
            let v: Option<u64> = driver::cmd("HGET")
                .arg(store.redis_key(k))
                .arg("v")
                .query(&mut c)
                .unwrap();
            assert_eq!(v, Some(saved), "the save is on the replica of {master}");
            assert!(cluster.command_count_on(*master, "wait") >= 2);
        }

        // Kill the master of the first session right away: its replica takes over with it.
        let (victim_key, victim) = keys[0].clone();
        cluster.kill_node(victim);
        let cluster = tokio::task::spawn_blocking(move || {
            cluster.wait_until_ok(Duration::from_secs(30));
            cluster
        })
        .await
        .unwrap();
        let started = Instant::now();
        let survivor = loop {
            match store.load(&victim_key, T0, false).await {
                Ok(found) => break found,
                Err(e) => {
                    assert!(started.elapsed() < Duration::from_secs(15), "{e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let survivor = survivor.expect("the acknowledged save survived the failover");
        assert_eq!(survivor.data.as_slice(), &b"{\"n\":1}"[..]);
        // The promoted master has no replica yet: a waiting write to it fails (the price of
        // the setting), until the old master rejoins as its replica.
        let mut again = survivor.clone();
        again.data = b"{\"n\":2}".to_vec();
        let err = store.save(&victim_key, &again, T0).await.unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err}");
        assert!(
            err.to_string().contains("acknowledged by 0 of the 1"),
            "{err}"
        );
        let mut cluster = cluster;
        let cluster = tokio::task::spawn_blocking(move || {
            cluster.restart_node(victim);
            cluster.wait_until_ok(Duration::from_secs(30));
            cluster
        })
        .await
        .unwrap();
        let mut again = store.load(&victim_key, T0, false).await.unwrap().unwrap();
        again.data = b"{\"n\":3}".to_vec();
        assert_eq!(
            store.save(&victim_key, &again, T0).await.unwrap(),
            WriteOutcome::Written
        );
        // Sign out everywhere (waiting too) ends the user's session on every master.
        assert_eq!(
            store.delete_user_sessions("ada", T0 + SEC).await.unwrap(),
            keys.len() as u64
        );
        drop(cluster);
    })
    .await;
}

/// Cuts `master` off from its replica for good (the replica's link killed, and a password
/// it does not know set on the master, so it cannot reconnect): from now on the master's
/// writes reach no replica. Existing client connections stay authenticated.
fn cut_replication(cluster: &RedisCluster, master: u16) {
    let mut c = cluster.sync_connection(master).unwrap();
    let () = driver::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("replicas-do-not-know-this")
        .query(&mut c)
        .unwrap();
    let _: i64 = driver::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query(&mut c)
        .unwrap();
}

/// Loads `k` through `store` until the cluster answers again after a failover.
async fn load_after_failover(store: &RedisStore, k: &SessionKey) -> Option<SessionRecord> {
    let started = Instant::now();
    loop {
        match store.load(k, T0, false).await {
            Ok(found) => return found,
            Err(e) => {
                assert!(started.elapsed() < Duration::from_secs(15), "{e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// What a failover loses, with the setting off and on, under the same fault: a master whose
/// replica stopped receiving its writes dies and that replica is promoted.
///
/// - Off: the save the master acknowledged after the cut is lost; the session is back at
///   its previous version (one acknowledged save lost, the last one).
/// - On: the same save is *not* acknowledged (it fails after the wait timeout, as no
///   replica has it), and it is lost too: nothing the application was told succeeded is
///   lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_loses_an_acknowledged_save_only_without_wait() {
    within(async {
        let mut cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 1))
            .await
            .unwrap();
        let conn = cluster.config().connect_lazy().unwrap();
        let prefix = support::unique_prefix();
        let off = RedisStore::new(conn.clone()).with_prefix(prefix.clone());
        // 5 s: the set-up's writes must not time out on a loaded machine (the refused save
        // below waits that long, once).
        let on = RedisStore::new(conn)
            .with_prefix(prefix)
            .with_wait_replicas(1)
            .with_wait_timeout(Duration::from_secs(5));
        // Two sessions on two different masters.
        let mut keys: Vec<(SessionKey, u16)> = Vec::new();
        for n in 200.. {
            let k = key(n);
            let master = cluster.master_of_key(on.redis_key(&k).as_bytes());
            if keys.iter().all(|(_, m)| *m != master) {
                keys.push((k, master));
            }
            if keys.len() == 2 {
                break;
            }
        }
        // Both created and saved once with wait: on their replicas (and the dedicated
        // connection of `on` is open before the fault).
        let mut before = Vec::new();
        for (k, _) in &keys {
            assert!(on.create(k, &record(None, b"{\"n\":0}"), T0).await.unwrap());
            let mut r = on.load(k, T0, false).await.unwrap().unwrap();
            r.data = b"{\"n\":1}".to_vec();
            assert_eq!(on.save(k, &r, T0).await.unwrap(), WriteOutcome::Written);
            before.push(on.load(k, T0, false).await.unwrap().unwrap());
        }

        // Off: acknowledged, then lost with its master.
        let (k, master) = keys[0].clone();
        cluster_cut_and(&cluster, master);
        let mut r = before[0].clone();
        r.data = b"{\"n\":2}".to_vec();
        assert_eq!(off.save(&k, &r, T0).await.unwrap(), WriteOutcome::Written);
        assert_eq!(off.load(&k, T0, false).await.unwrap().unwrap().data, r.data);
        cluster.kill_node(master);
        cluster = tokio::task::spawn_blocking(move || {
            cluster.wait_until_ok(Duration::from_secs(30));
            cluster
        })
        .await
        .unwrap();
        let after = load_after_failover(&off, &k).await.unwrap();
        assert_eq!(
            (after.version, after.data.as_slice()),
            (before[0].version, &b"{\"n\":1}"[..]),
            "without wait the acknowledged save is lost: the session is back at its previous version"
        );

        // On: the same fault; the save is refused, never acknowledged.
        let (k, master) = keys[1].clone();
        cluster_cut_and(&cluster, master);
        let mut r = before[1].clone();
        r.data = b"{\"n\":2}".to_vec();
        let err = on.save(&k, &r, T0).await.unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err}");
        cluster.kill_node(master);
        let cluster = tokio::task::spawn_blocking(move || {
            cluster.wait_until_ok(Duration::from_secs(30));
            cluster
        })
        .await
        .unwrap();
        let after = load_after_failover(&on, &k).await.unwrap();
        assert_eq!(
            (after.version, after.data.as_slice()),
            (before[1].version, &b"{\"n\":1}"[..]),
            "the refused save is lost; every acknowledged one survived"
        );
        drop(cluster);
    })
    .await;
}

/// [`cut_replication`], then wait until the master sees no replica.
fn cluster_cut_and(cluster: &RedisCluster, master: u16) {
    cut_replication(cluster, master);
    let mut c = cluster.sync_connection(master).unwrap();
    let () = driver::cmd("AUTH")
        .arg("replicas-do-not-know-this")
        .query(&mut c)
        .unwrap();
    let started = Instant::now();
    loop {
        let info: String = driver::cmd("INFO")
            .arg("replication")
            .query(&mut c)
            .unwrap();
        if info.contains("connected_slaves:0") {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{info}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Moves `slot` (and its keys) from the master on `from` to the master on `to`:
/// `CLUSTER SETSLOT … IMPORTING/MIGRATING`, `MIGRATE`, then `SETSLOT … NODE` on every
/// master, and waits until the cluster agrees.
fn move_slot(cluster: &RedisCluster, slot: u16, from: u16, to: u16) {
    let id = |port: u16| -> String { cluster.run_on(port, driver::cmd("CLUSTER").arg("MYID")) };
    let (from_id, to_id) = (id(from), id(to));
    let () = cluster.run_on(
        to,
        driver::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("IMPORTING")
            .arg(&from_id),
    );
    let () = cluster.run_on(
        from,
        driver::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("MIGRATING")
            .arg(&to_id),
    );
    let keys: Vec<String> = cluster.run_on(
        from,
        driver::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(1000),
    );
    if !keys.is_empty() {
        let mut migrate = driver::cmd("MIGRATE");
        migrate
            .arg("127.0.0.1")
            .arg(to)
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(&keys);
        let _: String = cluster.run_on(from, &migrate);
    }
    for port in cluster.master_ports() {
        let () = cluster.run_on(
            port,
            driver::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("NODE")
                .arg(&to_id),
        );
    }
    cluster.wait_until_ok(Duration::from_secs(20));
}

/// A session's slot moved to another master (a resharding) after the dedicated
/// connections learned the slot map: the next waiting saves follow it (the driver follows a
/// `MOVED` reply inside a pipeline and refreshes its slot map) and land on the new master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_save_follows_a_slot_moved_to_another_master() {
    within(async {
        let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 1))
            .await
            .unwrap();
        let store = RedisStore::new(cluster.config().connect_lazy().unwrap())
            .with_prefix(support::unique_prefix())
            .with_wait_replicas(1)
            // Generous: success is expected, and a loaded machine can be slow to acknowledge.
            .with_wait_timeout(Duration::from_secs(2));
        let k = key(300);
        let rk = store.redis_key(&k);
        assert!(store.create(&k, &record(None, b"{}"), T0).await.unwrap());
        let slot = cluster.slot_of(rk.as_bytes());
        let from = cluster.master_of_slot(slot);
        let to = *cluster.master_ports().iter().find(|p| **p != from).unwrap();
        let cluster = tokio::task::spawn_blocking(move || {
            move_slot(&cluster, slot, from, to);
            cluster
        })
        .await
        .unwrap();
        assert_eq!(cluster.master_of_slot(slot), to);
        for n in 1..=3u8 {
            let mut r = store.load(&k, T0, false).await.unwrap().unwrap();
            r.data = format!("{{\"n\":{n}}}").into_bytes();
            assert_eq!(store.save(&k, &r, T0).await.unwrap(), WriteOutcome::Written);
        }
        let keys: Vec<String> = cluster.run_on(to, driver::cmd("KEYS").arg("*"));
        assert!(keys.contains(&rk), "the session is on its new master");
        assert_eq!(
            store.load(&k, T0, false).await.unwrap().unwrap().data,
            b"{\"n\":3}"
        );
        drop(cluster);
    })
    .await;
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Save latency with and without waiting for one replica, in the same run on the same
/// primary and replica (a measurement, not an assertion): prints p50 and p99 of 3000
/// sequential saves each, alternating blocks of 500 so that machine load hits both alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --run-ignored only --no-capture"]
async fn measure_save_latency_with_and_without_wait() {
    let (primary, replica) = primary_and_replica().await;
    measure("one primary + one replica", connection(&primary)).await;
    drop(replica);
}

/// The same measurement on a 3-master cluster with a replica each (one session key, so
/// one master and its replica).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --run-ignored only --no-capture"]
async fn measure_save_latency_with_and_without_wait_on_a_cluster() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 1))
        .await
        .unwrap();
    measure("3+3 cluster", cluster.config().connect_lazy().unwrap()).await;
    drop(cluster);
}

async fn measure(what: &str, conn: RedisConnection) {
    let off = RedisStore::new(conn.clone()).with_prefix("off:");
    let on = RedisStore::new(conn)
        .with_prefix("on:")
        .with_wait_replicas(1);
    let k = key(9);
    let mut versions = [0u64; 2];
    for (i, store) in [&off, &on].into_iter().enumerate() {
        assert!(store.create(&k, &record(None, b"{}"), T0).await.unwrap());
        versions[i] = store.load(&k, T0, false).await.unwrap().unwrap().version;
    }
    let data = vec![b'x'; 512];
    let mut times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for round in 0..12 {
        let i = round % 2;
        let store = [&off, &on][i];
        for _ in 0..500 {
            let mut r = record(None, &data);
            r.version = versions[i];
            let started = Instant::now();
            assert_eq!(store.save(&k, &r, T0).await.unwrap(), WriteOutcome::Written);
            times[i].push(started.elapsed());
            versions[i] += 1;
        }
    }
    for (name, t) in ["wait off", "wait on (1 replica)"].iter().zip(&mut times) {
        t.sort();
        println!(
            "{what}: save latency, {name}: p50 {:?}, p99 {:?}, n {}",
            percentile(t, 0.5),
            percentile(t, 0.99),
            t.len()
        );
    }
    let ratio = percentile(&times[1], 0.5).as_secs_f64() / percentile(&times[0], 0.5).as_secs_f64();
    println!("{what}: p50 ratio on/off: {ratio:.2}");
}

/// Behind Sentinel the dedicated connections go to the primary the sentinels name, and
/// follow a failover: before it a write waits for the replica and is there when it returns;
/// after `SENTINEL FAILOVER` (once the old primary serves as the new one's replica) the
/// same store's writes land on the new primary and wait for the old one, which holds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_sentinel_waiting_writes_follow_the_primary() {
    within(async {
        let setup = tokio::task::spawn_blocking(support::RedisSentinel::start)
            .await
            .unwrap();
        let conn = setup.config().connect_lazy().unwrap();
        let store = RedisStore::new(conn)
            .with_prefix(support::unique_prefix())
            .with_wait_replicas(1)
            .with_wait_timeout(Duration::from_secs(2));
        let old = setup.primary_port();
        let replica = *setup.node_ports().iter().find(|&&p| p != old).unwrap();
        let version_of = |port: u16, redis_key: &str| -> Option<u64> {
            setup.run_on(port, driver::cmd("HGET").arg(redis_key).arg("v"))
        };

        let first = key(1);
        assert!(store.create(&first, &record(None, b"1"), T0).await.unwrap());
        assert_eq!(version_of(replica, &store.redis_key(&first)), Some(1));

        let setup = tokio::task::spawn_blocking(move || {
            setup.failover();
            let new = setup.wait_for_new_primary(old, Duration::from_secs(15));
            setup.wait_until_replica(old, Duration::from_secs(25));
            (setup, new)
        })
        .await
        .unwrap();
        let (setup, new) = setup;
        assert_eq!(new, replica);

        // A demoted node answers READONLY, after which the pool drops that connection: a
        // few attempts at most, until the write lands on the new primary.
        let second = key(2);
        let mut created = false;
        for _ in 0..20 {
            if let Ok(true) = store.create(&second, &record(None, b"2"), T0).await {
                created = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(created, "no waiting write succeeded after the failover");
        let redis_key = store.redis_key(&second);
        let on = |port: u16| -> Option<u64> {
            setup.run_on(port, driver::cmd("HGET").arg(&redis_key).arg("v"))
        };
        assert_eq!(on(new), Some(1), "on the new primary");
        assert_eq!(
            on(old),
            Some(1),
            "on the old primary, now its replica, when acknowledged"
        );
    })
    .await;
}

/// The dedicated connections reach a cluster through the masters the shared connection
/// sees, not only the configured seed: with the only seed dead and its replica promoted, a
/// store created afterwards on the same connection (a fresh pool) still writes and waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_fresh_pool_gets_past_a_dead_seed() {
    within(async {
        let mut cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 1))
            .await
            .unwrap();
        let seed_port: u16 = cluster
            .seed_url()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let conn = cluster.config().connect().await.unwrap();
        assert!(conn.is_cluster());
        // A session on a master other than the seed, whose replica stays.
        let probe = RedisStore::new(conn.clone()).with_prefix("fresh:");
        let k = (1..)
            .map(key)
            .find(|k| cluster.master_of_key(probe.redis_key(k).as_bytes()) != seed_port)
            .unwrap();
        let cluster = tokio::task::spawn_blocking(move || {
            cluster.kill_node(seed_port);
            cluster.wait_until_ok(Duration::from_secs(20));
            cluster
        })
        .await
        .unwrap();
        let store = RedisStore::new(conn)
            .with_prefix("fresh:")
            .with_wait_replicas(1)
            .with_wait_timeout(Duration::from_secs(2));
        let mut created = Err(None);
        for _ in 0..20 {
            match store.create(&k, &record(None, b"x"), T0).await {
                Ok(true) => {
                    created = Ok(());
                    break;
                }
                other => created = Err(Some(format!("{other:?}"))),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(created, Ok(()), "the seed {seed_port} is dead");
        drop(cluster);
    })
    .await;
}
