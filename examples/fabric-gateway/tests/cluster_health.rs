//! `/health` names the Redis topology and counts the nodes it needs: on a real 3-master
//! Redis Cluster (REDIS_URL = one node, REDIS_CLUSTER unset or `auto`), on one server, and
//! before Redis was ever reached.

mod common;
use rampart_test_support as support;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use support::{RedisCluster, RedisServer};

const SECRET_KEY: &str = "cluster-health-test-secret-key-0123456789abcdef";

/// Polls `/health` until `status` is `want`; panics after `within`.
async fn health_reaches(gw: &Gateway, want: &str, within: Duration) -> Value {
    let started = Instant::now();
    loop {
        let h = health(gw).await;
        if h["status"] == want {
            return h;
        }
        assert!(started.elapsed() < within, "health never {want}: {h}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_on_a_cluster_counts_the_masters() {
    let mut cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 1))
        .await
        .unwrap();
    let seed = cluster.seed_url();
    for mode in [None, Some("auto"), Some("TRUE")] {
        let mut vars = vec![("REDIS_URL", seed.as_str()), ("SECRET_KEY", SECRET_KEY)];
        if let Some(mode) = mode {
            vars.push(("REDIS_CLUSTER", mode));
        }
        let gw = Gateway::local(&vars).await;
        let h = health(&gw).await;
        assert_eq!(h["status"], "healthy", "{mode:?}: {h}");
        assert_eq!(h["redis_connected"], true, "{h}");
        assert_eq!(h["session_store"], "redis", "{h}");
        assert_eq!(h["redis_topology"], "cluster", "{h}");
        assert_eq!(
            h["redis_nodes"],
            json!({"expected": 3, "reachable": 3}),
            "{h}"
        );
    }

    // One master down, before its replica is promoted: degraded (still 200), 2 of 3.
    let gw = Gateway::local(&[("REDIS_URL", seed.as_str()), ("SECRET_KEY", SECRET_KEY)]).await;
    assert_eq!(health(&gw).await["status"], "healthy");
    let master = cluster.master_ports()[1];
    cluster.kill_node(master);
    let h = health(&gw).await;
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(h["redis_connected"], false, "{h}");
    assert_eq!(h["redis_topology"], "cluster", "{h}");
    assert_eq!(
        h["redis_nodes"],
        json!({"expected": 3, "reachable": 2}),
        "{h}"
    );
    drop(gw);
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_on_one_server_and_before_the_first_connection() {
    let mut redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let url = redis.url();
    let gw = Gateway::local(&[("REDIS_URL", url.as_str()), ("SECRET_KEY", SECRET_KEY)]).await;
    let h = health(&gw).await;
    assert_eq!(h["status"], "healthy", "{h}");
    assert_eq!(h["redis_topology"], "single", "{h}");
    assert_eq!(
        h["redis_nodes"],
        json!({"expected": 1, "reachable": 1}),
        "{h}"
    );
    // Down: still a single server, none of one reachable.
    redis = tokio::task::spawn_blocking(move || {
        redis.stop();
        redis
    })
    .await
    .unwrap();
    let h = health_reaches(&gw, "degraded", Duration::from_secs(5)).await;
    assert_eq!(h["redis_topology"], "single", "{h}");
    assert_eq!(
        h["redis_nodes"],
        json!({"expected": 1, "reachable": 0}),
        "{h}"
    );
    drop(gw);
    drop(redis);

    // Never reached (nothing listens): a degraded start, the topology not known yet.
    let dead = format!("redis://127.0.0.1:{}", support::free_port());
    let gw = Gateway::local(&[("REDIS_URL", dead.as_str()), ("SECRET_KEY", SECRET_KEY)]).await;
    let h = health(&gw).await;
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(h["redis_connected"], false, "{h}");
    assert_eq!(h["redis_topology"], Value::Null, "{h}");
    assert_eq!(h["redis_nodes"], Value::Null, "{h}");

    // Without Redis, neither field appears.
    let gw = Gateway::local(&[("SECRET_KEY", SECRET_KEY)]).await;
    let h = health(&gw).await;
    assert_eq!(h["redis_connected"], Value::Null, "{h}");
    assert!(h.get("redis_topology").is_none(), "{h}");
    assert!(h.get("redis_nodes").is_none(), "{h}");
    assert_no_secret_logged(&[SECRET_KEY]);
}
