//! The Redis Cluster harness of `rampart-test-support` against real `redis-server` nodes:
//! every slot served, key slots as the crate computes them, keys on different masters,
//! failover and rejoin, TLS only.
//!
//! Every wait in the harness has a deadline (30 s to form a cluster, the deadlines below for
//! a failover), so a broken cluster fails these tests instead of hanging them.
#![cfg(feature = "redis")]

use rampart_test_support as support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use support::{RedisCluster, keys_on_different_masters};
use tower_rampart::redis::{SLOTS, driver, key_slot};

/// Time for a killed master's replica to take over (node timeout 1 s, then the election),
/// or for a restarted node to rejoin and sync, on a loaded 2-core machine.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(20);
/// A 6-node cluster forms in about 2 s here; this bound catches a harness that got slow.
const START_BUDGET: Duration = Duration::from_secs(10);

const PASSWORD: &str = "cluster s3cr3t/:@";

fn start(masters: usize, replicas: usize, tls: bool, password: bool) -> RedisCluster {
    let started = Instant::now();
    let cluster = match (tls, password) {
        (false, false) => RedisCluster::start(masters, replicas),
        (false, true) => RedisCluster::start_with_password(masters, replicas, PASSWORD),
        (true, false) => RedisCluster::start_tls(masters, replicas),
        (true, true) => RedisCluster::start_tls_with_password(masters, replicas, PASSWORD),
    };
    let took = started.elapsed();
    eprintln!(
        "{masters}+{replicas} cluster (tls: {tls}, password: {password}) started in {took:?}"
    );
    assert!(
        took < START_BUDGET,
        "a {masters}+{replicas} cluster took {took:?} to start"
    );
    cluster
}

/// `CLUSTER SLOTS` of the node on `port` as `(first, last, master port)` ranges.
fn cluster_slots(cluster: &RedisCluster, port: u16) -> Vec<(u16, u16, u16)> {
    let value: driver::Value = cluster.run_on(port, driver::cmd("CLUSTER").arg("SLOTS"));
    let driver::Value::Array(ranges) = value else {
        panic!("CLUSTER SLOTS is not an array: {value:?}");
    };
    let int = |v: &driver::Value| match v {
        driver::Value::Int(i) => u16::try_from(*i).expect("slot or port fits u16"),
        other => panic!("not an integer in CLUSTER SLOTS: {other:?}"),
    };
    let mut out: Vec<(u16, u16, u16)> = ranges
        .iter()
        .map(|range| {
            let driver::Value::Array(fields) = range else {
                panic!("CLUSTER SLOTS range is not an array: {range:?}");
            };
            let driver::Value::Array(master) = &fields[2] else {
                panic!("CLUSTER SLOTS master is not an array: {range:?}");
            };
            (int(&fields[0]), int(&fields[1]), int(&master[1]))
        })
        .collect();
    out.sort_unstable();
    out
}

/// A key whose slot the master on `port` serves.
fn key_on(cluster: &RedisCluster, port: u16, prefix: &str) -> String {
    (0..10_000)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| cluster.master_of_key(k.as_bytes()) == port)
        .unwrap_or_else(|| panic!("no key of master {port}"))
}

/// The port a `MOVED` or `ASK` error points at.
fn redirected_to(err: &driver::RedisError) -> Option<u16> {
    let (addr, _slot) = err.redirect_node()?;
    addr.strip_prefix("127.0.0.1:")?.parse().ok()
}

/// Every node answers `NOAUTH` to a client without the password.
fn refuses_unauthenticated(cluster: &RedisCluster) {
    for port in cluster.ports() {
        let url = if cluster.is_tls() {
            format!("rediss://127.0.0.1:{port}")
        } else {
            format!("redis://127.0.0.1:{port}")
        };
        let client = match cluster.ca_pem() {
            None => driver::Client::open(url),
            Some(ca) => driver::Client::build_with_tls(
                url,
                driver::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.as_bytes().to_vec()),
                },
            ),
        }
        .unwrap();
        let mut conn = client
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("connect without a password");
        let err = driver::cmd("PING")
            .query::<String>(&mut conn)
            .expect_err("PING without the password");
        assert!(err.to_string().contains("NOAUTH"), "node {port}: {err}");
    }
}

#[test]
fn plain_cluster_serves_every_slot_on_three_masters() {
    let cluster = start(3, 1, false, false);
    assert_eq!(cluster.ports().len(), 6);
    let masters = cluster.master_ports();
    assert_eq!(masters.len(), 3, "{}", cluster.describe());
    let replicas = cluster.replica_ports();
    assert_eq!(replicas.len(), 3, "{}", cluster.describe());
    let all: BTreeSet<u16> = cluster.ports().into_iter().collect();
    let split: BTreeSet<u16> = masters.iter().chain(&replicas).copied().collect();
    assert_eq!(all, split, "every node is a master or a replica");
    // Each master has its own replica.
    let replicated: BTreeSet<u16> = replicas
        .iter()
        .map(|&r| cluster.master_of_replica(r).expect("replica has a master"))
        .collect();
    assert_eq!(replicated, masters.iter().copied().collect());

    // Every node's CLUSTER SLOTS covers the 16384 slots exactly once, with the same masters.
    let reference = cluster_slots(&cluster, masters[0]);
    let mut next = 0u32;
    for &(first, last, master) in &reference {
        assert_eq!(u32::from(first), next, "slots {next}..{first} unassigned");
        assert!(masters.contains(&master), "slot {first} served by {master}");
        next = u32::from(last) + 1;
    }
    assert_eq!(next, u32::from(SLOTS));
    for port in cluster.ports() {
        assert_eq!(cluster_slots(&cluster, port), reference, "node {port}");
    }

    // A key is served by its slot's master only: the others answer MOVED.
    for &master in &masters {
        let key = key_on(&cluster, master, "harness:served:");
        let () = cluster.run_on(master, driver::cmd("SET").arg(&key).arg("v"));
        let got: String = cluster.run_on(master, driver::cmd("GET").arg(&key));
        assert_eq!(got, "v");
        for &other in masters.iter().filter(|&&m| m != master) {
            let err = cluster
                .try_run_on::<()>(other, driver::cmd("GET").arg(&key))
                .expect_err("a key of another master's slot");
            assert_eq!(err.code(), Some("MOVED"), "{err}");
            assert_eq!(redirected_to(&err), Some(master), "{err}");
        }
    }

    // seed_url names the first master; seed_urls every master.
    assert_eq!(
        cluster.seed_url(),
        format!("redis://127.0.0.1:{}", cluster.ports()[0])
    );
    let urls: BTreeSet<String> = cluster.seed_urls().into_iter().collect();
    let expected: BTreeSet<String> = masters
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}"))
        .collect();
    assert_eq!(urls, expected);
    assert!(cluster.ca_pem().is_none());
}

#[test]
fn slots_and_keys_agree_with_the_crate_and_the_stats_add_up() {
    let cluster = start(3, 0, false, true);
    assert_eq!(cluster.master_ports().len(), 3);
    assert_eq!(cluster.password(), Some(PASSWORD));
    refuses_unauthenticated(&cluster);

    let mut keys: Vec<Vec<u8>> = (0..300)
        .map(|i| format!("rl:{{ip:10.0.{}.{}}}:q{i}", i / 256, i % 256).into_bytes())
        .collect();
    keys.extend((0..100).map(|i| format!("session:{i:x}").into_bytes()));
    keys.extend([
        b"foo".to_vec(),
        b"{}foo".to_vec(),
        b"{user1000}.following".to_vec(),
        b"a{b}c{d}".to_vec(),
        b"{".to_vec(),
        b"}{".to_vec(),
        vec![0xff, 0x00, b'{', 0x80, b'}'],
        Vec::new(),
    ]);
    for key in &keys {
        assert_eq!(
            cluster.slot_of(key),
            key_slot(key),
            "slot of {:?}",
            String::from_utf8_lossy(key)
        );
    }

    let (a, b) = keys_on_different_masters(&cluster, "harness:pair:");
    assert!(a.starts_with("harness:pair:") && b.starts_with("harness:pair:"));
    let (ma, mb) = (
        cluster.master_of_slot(cluster.slot_of(a.as_bytes())),
        cluster.master_of_slot(cluster.slot_of(b.as_bytes())),
    );
    assert_ne!(ma, mb);
    assert_ne!(key_slot(a.as_bytes()), key_slot(b.as_bytes()));

    // The stats count on the master that ran the command; flushall empties every master.
    cluster.reset_stats();
    assert_eq!(cluster.command_count("set"), 0);
    let () = cluster.run_on(ma, driver::cmd("SET").arg(&a).arg("1"));
    let () = cluster.run_on(mb, driver::cmd("SET").arg(&b).arg("2"));
    let () = cluster.run_on(mb, driver::cmd("SET").arg(&b).arg("3"));
    assert_eq!(cluster.command_count("set"), 3);
    assert_eq!(cluster.command_count_on(ma, "SET"), 1);
    assert_eq!(cluster.command_count_on(mb, "set"), 2);
    cluster.flushall();
    for port in cluster.master_ports() {
        let size: u64 = cluster.run_on(port, &driver::cmd("DBSIZE"));
        assert_eq!(size, 0, "master {port} after flushall");
    }
}

#[test]
fn a_killed_master_is_replaced_by_its_replica_and_rejoins_as_a_replica() {
    let mut cluster = start(3, 1, false, false);
    let (key, _) = keys_on_different_masters(&cluster, "harness:failover:");
    let slot = key_slot(key.as_bytes());
    let old_master = cluster.master_of_slot(slot);
    let replica = cluster
        .replica_ports()
        .into_iter()
        .find(|&r| cluster.master_of_replica(r) == Some(old_master))
        .expect("the master has a replica");
    let () = cluster.run_on(old_master, driver::cmd("SET").arg(&key).arg("kept"));
    // WAIT: the write reached the replica before the master dies.
    let acked: i64 = cluster.run_on(old_master, driver::cmd("WAIT").arg(1).arg(5000));
    assert_eq!(acked, 1);

    let killed = Instant::now();
    cluster.kill_node(old_master);
    assert!(!cluster.is_running(old_master));
    cluster.wait_until_ok(FAILOVER_DEADLINE);
    eprintln!("failover took {:?}", killed.elapsed());
    assert_eq!(
        cluster.master_of_slot(slot),
        replica,
        "{}",
        cluster.describe()
    );
    assert!(!cluster.master_ports().contains(&old_master));
    let got: String = cluster.run_on(replica, driver::cmd("GET").arg(&key));
    assert_eq!(got, "kept");
    assert_eq!(cluster.seed_urls().len(), 3);

    let restarted = Instant::now();
    cluster.restart_node(old_master);
    assert!(cluster.is_running(old_master));
    cluster.wait_until_ok(FAILOVER_DEADLINE);
    eprintln!("rejoin took {:?}", restarted.elapsed());
    assert!(
        cluster.replica_ports().contains(&old_master),
        "{}",
        cluster.describe()
    );
    assert_eq!(cluster.master_of_replica(old_master), Some(replica));
    // It synced from the new master (its own data died with it): it holds the key, and
    // refuses writes of its slot.
    let mut conn = cluster
        .sync_connection(old_master)
        .expect("connect to the replica");
    let () = driver::cmd("READONLY").query(&mut conn).expect("READONLY");
    let got: String = driver::cmd("GET").arg(&key).query(&mut conn).expect("GET");
    assert_eq!(got, "kept");
    let role: Vec<driver::Value> = cluster.run_on(old_master, &driver::cmd("ROLE"));
    assert_eq!(
        role.first(),
        Some(&driver::Value::BulkString(b"slave".to_vec()))
    );
    let err = cluster
        .try_run_on::<()>(old_master, driver::cmd("SET").arg(&key).arg("x"))
        .expect_err("a replica refuses writes");
    assert_eq!(err.code(), Some("MOVED"), "{err}");
    assert_eq!(redirected_to(&err), Some(replica), "{err}");
}

/// `move_slot` moves a slot with its keys while the cluster serves: midway (`begin_slot_move`
/// and half the keys migrated) the source answers `ASK` for a moved key and `TRYAGAIN` for a
/// multi-key command over moved and unmoved keys; afterwards every node sees the target
/// serving the slot, the keys are there with their values, and the source answers `MOVED`.
#[test]
fn a_slot_moves_with_its_keys_between_masters() {
    let cluster = start(3, 0, false, false);
    let slot = key_slot(b"{harness:move}");
    let from = cluster.master_of_slot(slot);
    let to = cluster
        .master_ports()
        .into_iter()
        .find(|&p| p != from)
        .unwrap();
    let keys: Vec<String> = (0..10).map(|i| format!("{{harness:move}}:{i}")).collect();
    for key in &keys {
        let () = cluster.run_on(from, driver::cmd("SET").arg(key).arg(key.len() + 1));
    }
    let began = cluster.begin_slot_move(slot, to);
    assert_eq!(began, from);
    let moved = cluster.migrate_slot_keys(slot, from, to, 5);
    assert_eq!(moved, 5);
    let remaining: i64 = cluster.run_on(
        from,
        driver::cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(slot),
    );
    assert_eq!(remaining, 5);
    let gone: Vec<String> = keys
        .iter()
        .filter(|k| {
            cluster
                .try_run_on::<Option<String>>(from, driver::cmd("GET").arg(*k))
                .is_err()
        })
        .cloned()
        .collect();
    assert_eq!(gone.len(), 5, "the moved keys answer ASK on the source");
    let err = cluster
        .try_run_on::<String>(from, driver::cmd("GET").arg(&gone[0]))
        .expect_err("ASK");
    assert_eq!(err.code(), Some("ASK"), "{err}");
    assert_eq!(redirected_to(&err), Some(to), "{err}");
    let here = keys.iter().find(|k| !gone.contains(k)).unwrap();
    let err = cluster
        .try_run_on::<Vec<Option<String>>>(from, driver::cmd("MGET").arg(here).arg(&gone[0]))
        .expect_err("TRYAGAIN");
    assert_eq!(err.code(), Some("TRYAGAIN"), "{err}");

    cluster.move_slot(slot, to);
    assert_eq!(cluster.master_of_slot(slot), to);
    for port in cluster.master_ports() {
        let ranges = cluster_slots(&cluster, port);
        assert!(
            ranges
                .iter()
                .any(|&(a, b, p)| (a..=b).contains(&slot) && p == to),
            "node {port}: {ranges:?}"
        );
    }
    for key in &keys {
        let got: String = cluster.run_on(to, driver::cmd("GET").arg(key));
        assert_eq!(got, (key.len() + 1).to_string());
    }
    let err = cluster
        .try_run_on::<String>(from, driver::cmd("GET").arg(&keys[0]))
        .expect_err("MOVED");
    assert_eq!(err.code(), Some("MOVED"), "{err}");
    assert_eq!(redirected_to(&err), Some(to), "{err}");
    cluster.wait_until_ok(FAILOVER_DEADLINE);
}

#[test]
fn a_tls_cluster_answers_over_tls_only() {
    let cluster = start(3, 1, true, true);
    assert!(cluster.is_tls());
    let ca = cluster.ca_pem().expect("TLS cluster has a CA");
    assert!(ca.contains("BEGIN CERTIFICATE"));
    assert_eq!(cluster.master_ports().len(), 3, "{}", cluster.describe());
    assert_eq!(cluster.replica_ports().len(), 3, "{}", cluster.describe());
    assert_eq!(
        cluster.seed_url(),
        format!(
            "rediss://:cluster%20s3cr3t%2F%3A%40@127.0.0.1:{}",
            cluster.ports()[0]
        )
    );
    // The replicas synced (wait_until_ok saw to it), so masterauth works over TLS.
    refuses_unauthenticated(&cluster);

    for port in cluster.ports() {
        let pong: String = cluster.run_on(port, &driver::cmd("PING"));
        assert_eq!(pong, "PONG");
        // Plain TCP on the same port: the connection is refused or the PING fails.
        let plain = driver::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let answered = plain
            .get_connection_with_timeout(Duration::from_secs(2))
            .and_then(|mut conn| {
                conn.set_read_timeout(Some(Duration::from_secs(2)))?;
                driver::cmd("PING").query::<String>(&mut conn)
            });
        assert!(
            answered.is_err(),
            "node {port} answered plain TCP: {answered:?}"
        );
    }

    // The crate's own connection reaches the seed over TLS with the test CA.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let conn = cluster.config().connect().await.expect("connect over TLS");
        let pong: String = conn.query(&driver::cmd("PING")).await.expect("PING");
        assert_eq!(pong, "PONG");
    });
}
