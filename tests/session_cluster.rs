//! Sessions on a real Redis Cluster (3 masters, 1 replica each, started by the test
//! support): the whole session store conformance suite, plain and TLS; sign out everywhere,
//! and listing a user's sessions and ending one, over sessions whose keys live on every
//! master; and the index regression of issue 14
//! (a sign-in whose index write fails leaves no session that sign out everywhere misses),
//! where the session and the user's index are on different masters.
//!
//! Each test starts its own cluster (about 2-3 s) and runs within a deadline.
#![cfg(all(feature = "session", feature = "redis", feature = "testing"))]

mod session_common;
use rampart_test_support as support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use session_common::*;
use support::RedisCluster;
use tower_rampart::redis::driver;
use tower_rampart::session::store::testing;
use tower_rampart::session::{RedisStore, SessionKey, SessionRecord, SessionStore};

/// Each test finishes well within this, cluster start included, on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(150);
const SEC: u64 = 1_000_000;

fn store(cluster: &RedisCluster, prefix: &str) -> RedisStore {
    let conn = cluster.config().connect_lazy().expect("cluster connection");
    RedisStore::new(conn).with_prefix(prefix)
}

async fn conformance(cluster: RedisCluster) {
    let store = store(&cluster, &support::unique_prefix());
    // The checks use fresh keys and users, so one store serves them all, in order.
    testing::run_all(Arc::new(store.clone())).await;
    assert!(
        store.connection().is_cluster(),
        "the suite ran on a cluster connection"
    );
    drop(cluster);
}

/// The conformance suite, every check, on a 3-master cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_on_a_cluster() {
    tokio::time::timeout(DEADLINE, conformance(RedisCluster::start(3, 1)))
        .await
        .expect("deadline");
}

/// The conformance suite, every check, on a 3-master TLS-only cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_on_a_tls_cluster() {
    tokio::time::timeout(DEADLINE, conformance(RedisCluster::start_tls(3, 1)))
        .await
        .expect("deadline");
}

/// Sign out everywhere on a cluster: a user's sessions on every master (and a few sharing
/// a master) are all deleted, each on the master that owns it, another user's are not, and
/// the user's index (on yet another slot) is emptied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_everywhere_across_masters() {
    tokio::time::timeout(DEADLINE, across_masters())
        .await
        .expect("deadline");
}

async fn across_masters() {
    let cluster = RedisCluster::start(3, 1);
    let s = store(&cluster, "x:");
    let t = now();
    let masters: BTreeSet<u16> = cluster.master_ports().into_iter().collect();
    assert_eq!(masters.len(), 3);
    // Sessions of dave: three on every master.
    let on =
        |mine: &[(SessionKey, u16)], master: u16| mine.iter().filter(|(_, m)| *m == master).count();
    let mut mine: Vec<(SessionKey, u16)> = Vec::new();
    for i in 0u64.. {
        let key = SessionKey::parse(&format!("{t:016x}{i:016x}")).unwrap();
        let master = cluster.master_of_key(s.redis_key(&key).as_bytes());
        if on(&mine, master) < 3 {
            mine.push((key, master));
        }
        if masters.iter().all(|&m| on(&mine, m) == 3) {
            break;
        }
    }
    for (key, _) in &mine {
        assert!(s.create(key, &record(t, Some("dave")), t).await.unwrap());
    }
    let other = SessionKey::parse(&format!("{t:016x}{:016x}", u64::MAX)).unwrap();
    assert!(s.create(&other, &record(t, Some("erin")), t).await.unwrap());
    assert!(s.connection().is_cluster());

    cluster.reset_stats();
    let deleted = s.delete_user_sessions("dave", t + SEC).await.unwrap();
    assert_eq!(deleted, mine.len() as u64);
    for m in &masters {
        assert!(
            cluster.command_count_on(*m, "eval") >= 1,
            "master {m} ran deletes"
        );
    }
    for (key, master) in &mine {
        assert!(s.load(key, t + SEC, false).await.unwrap().is_none());
        let exists: i64 = cluster.run_on(*master, driver::cmd("EXISTS").arg(s.redis_key(key)));
        assert_eq!(exists, 0);
    }
    assert!(s.load(&other, t + SEC, false).await.unwrap().is_some());
    assert_eq!(s.delete_user_sessions("dave", t + SEC).await.unwrap(), 0);
    assert_eq!(s.delete_user_sessions("erin", t + SEC).await.unwrap(), 1);
}

/// Listing a user's sessions and ending one on a cluster: the user's sessions live on
/// every master (and a few share a master), the index on another slot; the listing reads
/// each record on the master that owns it (no `CROSSSLOT`), skips another user's, and
/// ending one session on each master leaves the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_end_one_across_masters() {
    tokio::time::timeout(DEADLINE, list_across_masters())
        .await
        .expect("deadline");
}

async fn list_across_masters() {
    let cluster = RedisCluster::start(3, 1);
    let s = store(&cluster, "l:");
    let t = now();
    let masters: BTreeSet<u16> = cluster.master_ports().into_iter().collect();
    assert_eq!(masters.len(), 3);
    let on =
        |mine: &[(SessionKey, u16)], master: u16| mine.iter().filter(|(_, m)| *m == master).count();
    let mut mine: Vec<(SessionKey, u16)> = Vec::new();
    for i in 0u64.. {
        let key = SessionKey::parse(&format!("{t:016x}{i:016x}")).unwrap();
        let master = cluster.master_of_key(s.redis_key(&key).as_bytes());
        if on(&mine, master) < 2 {
            mine.push((key, master));
        }
        if masters.iter().all(|&m| on(&mine, m) == 2) {
            break;
        }
    }
    for (key, _) in &mine {
        assert!(s.create(key, &record(t, Some("dave")), t).await.unwrap());
    }
    let other = SessionKey::parse(&format!("{t:016x}{:016x}", u64::MAX)).unwrap();
    assert!(s.create(&other, &record(t, Some("erin")), t).await.unwrap());
    assert!(s.connection().is_cluster());

    cluster.reset_stats();
    let listed: BTreeSet<SessionKey> = s
        .list_user_sessions("dave", t + SEC)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.key)
        .collect();
    let all: BTreeSet<SessionKey> = mine.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(listed, all);
    for m in &masters {
        assert!(
            cluster.command_count_on(*m, "hmget") >= 1,
            "master {m} read records"
        );
    }
    // One session ended on each master; the other one there stays.
    let mut left = all.clone();
    for m in &masters {
        let (key, _) = mine.iter().find(|(_, master)| master == m).unwrap();
        assert!(s.delete_user_session("dave", key, t + SEC).await.unwrap());
        assert!(!s.delete_user_session("erin", key, t + SEC).await.unwrap());
        left.remove(key);
    }
    assert!(
        !s.delete_user_session("dave", &other, t + SEC)
            .await
            .unwrap()
    );
    let listed: BTreeSet<SessionKey> = s
        .list_user_sessions("dave", t + SEC)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.key)
        .collect();
    assert_eq!(listed, left);
    assert_eq!(
        s.delete_user_sessions("dave", t + SEC).await.unwrap(),
        left.len() as u64
    );
    assert_eq!(
        s.list_user_sessions("erin", t + SEC).await.unwrap().len(),
        1
    );
}

/// Issue 14, item 5, on a cluster: alice's index (default prefix) is made unwritable on
/// its master while she signs in through `cycle_id` (a create) and by setting the user on
/// the current session (a save), on sessions of other masters; once the index works again
/// sign out everywhere leaves no session of hers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_index_write_leaves_no_session_sign_out_everywhere_misses() {
    tokio::time::timeout(DEADLINE, failed_index_write())
        .await
        .expect("deadline");
}

async fn failed_index_write() {
    use axum::extract::{Extension, Path};
    use axum::routing::post;
    use tower_rampart::session::Session;

    let cluster = RedisCluster::start(3, 1);
    let conn = cluster.config().connect_lazy().unwrap();
    let router = routes()
        .route(
            "/adopt/{user}",
            post(
                |Extension(s): Extension<Session>, Path(user): Path<String>| async move {
                    s.set_user_id(user).await?;
                    Ok::<_, Error>("ok")
                },
            ),
        )
        .route(
            "/everywhere/{user}",
            post(
                |Extension(s): Extension<Session>, Path(user): Path<String>| async move {
                    Ok::<_, Error>(s.delete_user_sessions(&user).await?.to_string())
                },
            ),
        );
    let app = App::with(Arc::new(RedisStore::new(conn)), builder(), router);
    // alice's index under the default prefix (tests/golden/session_plain_record.txt).
    let index = "rampart:session:user:{2e45f5205182f867394a62ed4320ce3e}";
    let index_master = cluster.master_of_key(index.as_bytes());
    let sessions_of = |user: &str| -> usize {
        let mut n = 0;
        for port in cluster.master_ports() {
            let keys: Vec<String> =
                cluster.run_on(port, driver::cmd("KEYS").arg("rampart:session:{*"));
            for k in keys {
                let u: Option<String> = cluster.run_on(port, driver::cmd("HGET").arg(&k).arg("u"));
                n += usize::from(u.as_deref() == Some(user));
            }
        }
        n
    };
    // A session on another master than the index, so the sign-in spans two masters.
    let session_elsewhere = || async {
        loop {
            let cookie = app.new_session().await;
            let key = format!("rampart:session:{{{}}}", app.key_of(&cookie));
            if cluster.master_of_key(key.as_bytes()) != index_master {
                return cookie;
            }
        }
    };

    let ok = session_elsewhere().await;
    assert_eq!(app.post("/login/alice", Some(&ok)).await.status, 200);
    assert_eq!(sessions_of("alice"), 1);
    assert_eq!(app.post("/everywhere/alice", None).await.body, "1");
    assert_eq!(sessions_of("alice"), 0);

    let () = cluster.run_on(
        index_master,
        driver::cmd("SET").arg(index).arg("not a sorted set"),
    );
    let via_cycle = session_elsewhere().await;
    let r = app.post("/login/alice", Some(&via_cycle)).await;
    assert_eq!(r.status, 503, "{}", r.body);
    let via_save = session_elsewhere().await;
    let r = app.post("/adopt/alice", Some(&via_save)).await;
    assert_eq!(r.status, 503, "{}", r.body);

    let _: i64 = cluster.run_on(index_master, driver::cmd("DEL").arg(index));
    let r = app.post("/everywhere/alice", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(sessions_of("alice"), 0, "a session of alice survived");
    for cookie in [&via_cycle, &via_save] {
        assert_eq!(app.get("/user", Some(cookie)).await.body, "");
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

/// The conformance suite on one endpoint that enforces hash slots without the cluster
/// protocol (a cluster proxy such as Azure Managed Redis's Enterprise clustering policy;
/// here the test support's `SlottedEndpoint`): every call of the store keeps its keys in one
/// slot, so nothing is refused as `CROSSSLOT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_on_one_endpoint_that_enforces_slots() {
    tokio::time::timeout(DEADLINE, async {
        let node = support::SlottedEndpoint::start();
        let conn = node.config().connect().await.expect("connect");
        assert!(!conn.is_cluster(), "seen as one server");
        let store = RedisStore::new(conn).with_prefix(support::unique_prefix());
        testing::run_all(Arc::new(store)).await;
    })
    .await
    .expect("deadline");
}
