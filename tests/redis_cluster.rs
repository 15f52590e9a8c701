//! `RedisConnection` against a real Redis Cluster (3 masters, 1 replica each, from the test
//! support): topology detection from one seed and from a list, the explicit modes, the
//! database refusal, routing of commands and scripts by key, `NOSCRIPT` recovery, pipelines
//! across slots, health counts, an outage of every node, and a TLS cluster.
#![cfg(feature = "redis")]

mod common;
use rampart_test_support as support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::Capture;
use support::{RedisCluster, keys_on_different_masters};
use tower_rampart::redis::driver::{self, Script};
use tower_rampart::redis::{
    ClusterMode, NodeCounts, RedisConfig, RedisConnection, RedisErrorKind, RedisHealth, Topology,
};

/// How long a cluster may take to settle after nodes restart.
const SETTLE: Duration = Duration::from_secs(30);

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

async fn set(conn: &RedisConnection, key: &str, value: &str) {
    let () = conn
        .query(driver::cmd("SET").arg(key).arg(value))
        .await
        .unwrap_or_else(|e| panic!("SET {key}: {e}"));
}

async fn get(conn: &RedisConnection, key: &str) -> Option<String> {
    conn.query(driver::cmd("GET").arg(key))
        .await
        .unwrap_or_else(|e| panic!("GET {key}: {e}"))
}

/// The value of `key` read directly on the master that serves it.
fn get_on_its_master(cluster: &RedisCluster, key: &str) -> Option<String> {
    let master = cluster.master_of_key(key.as_bytes());
    cluster.run_on(master, driver::cmd("GET").arg(key))
}

/// Polls `conn` until a SET succeeds; panics after `within`.
async fn wait_until_usable(conn: &RedisConnection, key: &str, within: Duration) {
    let started = Instant::now();
    loop {
        match conn
            .query::<()>(driver::cmd("SET").arg(key).arg("back"))
            .await
        {
            Ok(()) => return,
            Err(e) => {
                assert!(
                    started.elapsed() < within,
                    "the cluster is not usable again after {within:?}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_detects_a_cluster_from_one_seed_and_from_a_list() {
    let cluster = RedisCluster::start(3, 1);
    let (a, b) = keys_on_different_masters(&cluster, "auto:");

    // One seed, the default mode: unknown until the first connection, then a cluster.
    let config = cluster.config();
    assert_eq!(config.cluster_mode(), ClusterMode::Auto);
    let conn = config.connect_lazy().expect("lazy");
    assert_eq!(conn.topology(), None);
    assert!(!conn.is_cluster());
    set(&conn, &a, "va").await;
    set(&conn, &b, "vb").await;
    assert_eq!(conn.topology(), Some(Topology::Cluster));
    assert!(conn.is_cluster());
    assert_eq!(get(&conn, &a).await.as_deref(), Some("va"));
    assert_eq!(get(&conn, &b).await.as_deref(), Some("vb"));
    // Each key was written on the master serving its slot.
    assert_eq!(get_on_its_master(&cluster, &a).as_deref(), Some("va"));
    assert_eq!(get_on_its_master(&cluster, &b).as_deref(), Some("vb"));

    // A comma-separated list of seeds, spaces allowed; its first seed is not even
    // listening: the next one answers.
    let dead = format!("redis://127.0.0.1:{}", support::free_port());
    let mut urls = vec![dead];
    urls.extend(cluster.seed_urls());
    let list = RedisConfig::from_url(&urls.join(" , "))
        .expect("seed list")
        .connect_timeout(Duration::from_secs(2))
        .command_timeout(Duration::from_secs(1));
    assert_eq!(list.seeds().count(), 4);
    let conn = list.connect().await.expect("connect through the list");
    assert_eq!(conn.topology(), Some(Topology::Cluster));
    assert_eq!(get(&conn, &a).await.as_deref(), Some("va"));
    assert_eq!(get(&conn, &b).await.as_deref(), Some("vb"));

    // REDIS_CLUSTER=auto read from the environment gives the same.
    let seed = cluster.seed_url();
    let vars = HashMap::from([("REDIS_URL", seed.as_str()), ("REDIS_CLUSTER", "AUTO")]);
    let from_env = RedisConfig::from_env_with(|n| vars.get(n).map(|v| (*v).to_owned()))
        .unwrap()
        .unwrap();
    assert_eq!(from_env.cluster_mode(), ClusterMode::Auto);
    let conn = from_env.connect().await.expect("connect from env");
    assert!(conn.is_cluster());
    assert_eq!(get(&conn, &b).await.as_deref(), Some("vb"));

    // Enabled: known from the configuration, before any connection.
    let enabled = cluster.config().cluster(ClusterMode::Enabled);
    let conn = enabled.connect_lazy().unwrap();
    assert_eq!(conn.topology(), Some(Topology::Cluster));
    assert_eq!(get(&conn, &a).await.as_deref(), Some("va"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_mode_answers_other_slots_with_moved_and_database_1_is_refused() {
    let captured = captured_logs();
    let cluster = RedisCluster::start(3, 1);
    let seed_port = cluster.config().port();
    let (a, b) = keys_on_different_masters(&cluster, "mode:");
    let (here, elsewhere) = if cluster.master_of_key(a.as_bytes()) == seed_port {
        (a, b)
    } else if cluster.master_of_key(b.as_bytes()) == seed_port {
        (b, a)
    } else {
        // Neither key is on the seed: find one that is.
        let here = (0..10_000)
            .map(|i| format!("mode:here:{i}"))
            .find(|k| cluster.master_of_key(k.as_bytes()) == seed_port)
            .unwrap();
        (here, a)
    };

    // REDIS_CLUSTER=false against a cluster node: a single-server connection, honest about
    // what the node answers: its own slots work, the others are the server's MOVED errors,
    // returned as command errors that do not open the breaker.
    let vars = HashMap::from([
        ("REDIS_URL", cluster.seed_url()),
        ("REDIS_CLUSTER", "False".to_owned()),
    ]);
    let config = RedisConfig::from_env_with(|n| vars.get(n).cloned())
        .unwrap()
        .unwrap();
    assert_eq!(config.cluster_mode(), ClusterMode::Disabled);
    let conn = config.connect().await.expect("connect");
    assert_eq!(conn.topology(), Some(Topology::Single));
    set(&conn, &here, "ok").await;
    for _ in 0..5 {
        let err = conn
            .query::<()>(driver::cmd("SET").arg(&elsewhere).arg("x"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), RedisErrorKind::Command, "{err}");
        assert_eq!(err.server_code(), Some("MOVED"), "{err}");
    }
    assert!(conn.is_available());
    assert_eq!(get_on_its_master(&cluster, &elsewhere), None);

    // REDIS_CLUSTER with a bad value names the variable.
    let err = RedisConfig::from_env_with(|n| match n {
        "REDIS_URL" => Some(cluster.seed_url()),
        "REDIS_CLUSTER" => Some("sometimes".to_owned()),
        _ => None,
    })
    .unwrap_err();
    assert_eq!(err.variable(), "REDIS_CLUSTER");

    // Database 1 with the cluster mode enabled: refused by the configuration.
    let password = "Db-Secret-42";
    let url = format!("redis://:{password}@127.0.0.1:{seed_port}/1");
    let err = RedisConfig::from_env_with(|n| match n {
        "REDIS_URL" => Some(url.clone()),
        "REDIS_CLUSTER" => Some("true".to_owned()),
        _ => None,
    })
    .unwrap_err();
    assert_eq!(err.variable(), "REDIS_URL");
    assert!(err.to_string().contains("database 0"), "{err}");
    assert!(!err.to_string().contains(password), "{err}");
    let err = cluster
        .config()
        .database(1)
        .cluster(ClusterMode::Enabled)
        .connect_lazy()
        .unwrap_err();
    assert_eq!(err.kind(), RedisErrorKind::Config);

    // Database 1 in auto mode: refused when the server turns out to be a cluster, with a
    // clear configuration error, logged once however often it is tried.
    let conn = cluster
        .config()
        .database(1)
        .connect_lazy()
        .expect("lazy: the topology is not known yet");
    for _ in 0..3 {
        let err = conn
            .query::<Option<String>>(driver::cmd("GET").arg("k"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), RedisErrorKind::Config, "{err}");
        assert!(err.to_string().contains("only database 0"), "{err}");
    }
    let err = cluster.config().database(1).connect().await.unwrap_err();
    assert_eq!(err.kind(), RedisErrorKind::Config, "{err}");
    let logs = String::from_utf8(captured.bytes()).unwrap();
    let refusals = logs
        .lines()
        .filter(|l| l.contains("redis configuration refused"))
        .count();
    // One per connection (two connections above), not one per call.
    assert_eq!(refusals, 2, "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_route_by_key_reload_after_script_flush_and_pipelines_stay_in_one_slot() {
    let mut cluster = RedisCluster::start(3, 1);
    let conn = cluster.config().connect().await.expect("connect");
    assert!(conn.is_cluster());
    let (a, b) = keys_on_different_masters(&cluster, "script:");
    let script =
        Script::new("redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[1])");

    // Each script call runs on the master of its key, which keeps the value.
    for (key, value) in [(&a, "one"), (&b, "two")] {
        let got: String = conn
            .invoke_script(script.key(key.as_str()).arg(value))
            .await
            .expect("script");
        assert_eq!(got, value);
        assert_eq!(get_on_its_master(&cluster, key).as_deref(), Some(value));
        assert_eq!(get(&conn, key).await.as_deref(), Some(value));
    }

    // SCRIPT FLUSH on every node (a restart or a promoted replica looks the same): the next
    // calls load the script again and succeed; NOSCRIPT never reaches the caller.
    for port in cluster.ports() {
        let () = cluster.run_on(port, driver::cmd("SCRIPT").arg("FLUSH"));
    }
    cluster.reset_stats();
    for (key, value) in [(&a, "three"), (&b, "four")] {
        let got: String = conn
            .invoke_script(script.key(key.as_str()).arg(value))
            .await
            .expect("script after SCRIPT FLUSH");
        assert_eq!(got, value);
        assert_eq!(get_on_its_master(&cluster, key).as_deref(), Some(value));
    }
    // The script was loaded on the two masters that needed it, not on every node.
    assert_eq!(cluster.command_count("script|load"), 2);

    // Again, with a node of the cluster down (a replica that is not even needed): loading
    // only where the script runs keeps working.
    for port in cluster.ports() {
        let () = cluster.run_on(port, driver::cmd("SCRIPT").arg("FLUSH"));
    }
    let replica = cluster.replica_ports()[0];
    cluster.kill_node(replica);
    for (key, value) in [(&a, "five"), (&b, "six")] {
        let got: String = conn
            .invoke_script(script.key(key.as_str()).arg(value))
            .await
            .expect("script after SCRIPT FLUSH with a replica down");
        assert_eq!(got, value);
    }

    // A pipeline whose keys share a slot (one hash tag) runs on its node.
    let mut pipe = driver::pipe();
    pipe.atomic()
        .cmd("SET")
        .arg("{user42}:a")
        .arg("1")
        .ignore()
        .cmd("INCR")
        .arg("{user42}:b");
    let (n,): (i64,) = conn.query_pipeline(&pipe).await.expect("one-slot pipeline");
    assert_eq!(n, 1);

    // Keys on different slots in one pipeline: refused before anything runs.
    let mut pipe = driver::pipe();
    pipe.cmd("SET")
        .arg(format!("{a}:p"))
        .arg("1")
        .cmd("SET")
        .arg(format!("{b}:p"))
        .arg("1");
    let err = conn.query_pipeline::<()>(&pipe).await.unwrap_err();
    assert_eq!(err.kind(), RedisErrorKind::Command, "{err}");
    assert_eq!(err.server_code(), Some("CROSSSLOT"), "{err}");
    assert_eq!(get(&conn, &format!("{a}:p")).await, None);
    assert_eq!(get(&conn, &format!("{b}:p")).await, None);
    assert!(conn.is_available());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_counts_masters_and_an_outage_of_every_node_opens_the_breaker_until_restart() {
    let mut cluster = RedisCluster::start(3, 1);
    let conn = cluster
        .config()
        .connect_timeout(Duration::from_millis(500))
        .command_timeout(Duration::from_millis(300))
        .connect()
        .await
        .expect("connect");

    let report = conn.health_report().await;
    assert!(report.health.is_connected(), "{report:?}");
    assert_eq!(report.topology, Some(Topology::Cluster));
    assert_eq!(
        report.nodes,
        Some(NodeCounts {
            expected: 3,
            reachable: 3
        })
    );
    assert!(conn.health_check().await.is_connected());

    // One master down (its replica not promoted yet): not connected, 2 of 3.
    let masters = cluster.master_ports();
    cluster.kill_node(masters[0]);
    let report = conn.health_report().await;
    assert!(!report.health.is_connected(), "{report:?}");
    assert_eq!(
        report.nodes,
        Some(NodeCounts {
            expected: 3,
            reachable: 2
        }),
        "{report:?}"
    );
    match &report.health {
        RedisHealth::Disconnected { reason } => {
            assert!(reason.contains("2 of 3"), "{reason}");
            assert!(reason.contains(&masters[0].to_string()), "{reason}");
        }
        other => panic!("{other:?}"),
    }

    // Every node down: calls fail within the timeouts, then at once (breaker open).
    for port in cluster.ports() {
        cluster.kill_node(port);
    }
    let started = Instant::now();
    let mut last = None;
    for _ in 0..6 {
        let call = Instant::now();
        let err = conn
            .query::<Option<String>>(driver::cmd("GET").arg("k"))
            .await
            .unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        assert!(
            call.elapsed() < Duration::from_millis(500 + 300 + 700),
            "{:?}",
            call.elapsed()
        );
        last = Some(err);
    }
    assert!(!conn.is_available(), "breaker open after repeated failures");
    let err = last.unwrap();
    assert_eq!(err.kind(), RedisErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains("circuit breaker open"), "{err}");
    let fast = Instant::now();
    let err = conn
        .query::<Option<String>>(driver::cmd("GET").arg("k"))
        .await
        .unwrap_err();
    assert!(fast.elapsed() < Duration::from_millis(50), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));

    let report = conn.health_report().await;
    assert!(!report.health.is_connected());
    assert_eq!(report.topology, Some(Topology::Cluster));
    assert_eq!(report.nodes.map(|n| n.reachable), Some(0), "{report:?}");

    // Every node back (same ports, same nodes.conf): the same connection recovers.
    for port in cluster.ports() {
        cluster.restart_node(port);
    }
    cluster.wait_until_ok(SETTLE);
    wait_until_usable(&conn, "after-outage", SETTLE).await;
    assert_eq!(get(&conn, "after-outage").await.as_deref(), Some("back"));
    let deadline = Instant::now() + SETTLE;
    loop {
        let report = conn.health_report().await;
        if report.health.is_connected() {
            assert_eq!(
                report.nodes.map(|n| (n.expected, n.reachable)),
                Some((3, 3))
            );
            break;
        }
        assert!(Instant::now() < deadline, "{report:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(conn.is_available());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_cluster_with_the_test_ca() {
    let cluster = RedisCluster::start_tls(3, 1);
    assert!(cluster.seed_url().starts_with("rediss://"));
    let conn = cluster.config().connect().await.expect("connect over TLS");
    assert!(conn.is_cluster());
    let (a, b) = keys_on_different_masters(&cluster, "tls:");
    let script = Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
    for key in [&a, &b] {
        set(&conn, key, "1").await;
        let n: i64 = conn
            .invoke_script(script.key(key.as_str()).arg(2))
            .await
            .expect("script over TLS");
        assert_eq!(n, 3);
        assert_eq!(get_on_its_master(&cluster, key).as_deref(), Some("3"));
    }
    let report = conn.health_report().await;
    assert!(report.health.is_connected(), "{report:?}");
    assert_eq!(
        report.nodes.map(|n| (n.expected, n.reachable)),
        Some((3, 3))
    );

    // Without the CA (system trust store only) the certificate is refused.
    let untrusted = RedisConfig::from_url(&cluster.seed_url())
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap_err();
    assert!(untrusted.is_unavailable(), "{untrusted}");
}
