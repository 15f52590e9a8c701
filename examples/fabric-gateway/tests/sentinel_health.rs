//! The gateway behind Redis Sentinel, configured by environment only (`REDIS_SENTINELS`,
//! `REDIS_SENTINEL_MASTER`, `REDIS_SENTINEL_PASSWORD`, `REDIS_PASSWORD`): `/health` names
//! the topology and counts the primary; a signed-in session keeps working across a
//! `SENTINEL FAILOVER`, without a restart; bad Sentinel variables stop start-up naming the
//! variable; no password is logged.

mod common;
use rampart_test_support as support;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use support::RedisSentinel;

const SECRET_KEY: &str = "sentinel-health-test-secret-key-0123456789abcdef";
const DATA_PASSWORD: &str = "gw-data-pass-5c1a";
const SENTINEL_PASSWORD: &str = "gw-sentinel-pass-77e0";
const DEADLINE: Duration = Duration::from_secs(45);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_sessions_behind_sentinel() {
    tokio::time::timeout(DEADLINE, behind_sentinel())
        .await
        .expect("deadline");
}

async fn behind_sentinel() {
    capture_logs();
    let setup = tokio::task::spawn_blocking(|| {
        RedisSentinel::start_with_passwords(Some(DATA_PASSWORD), Some(SENTINEL_PASSWORD))
    })
    .await
    .unwrap();
    let sentinels = setup.sentinels_var();
    let master = support::sentinel::MASTER_NAME;
    let vars = [
        ("REDIS_SENTINELS", sentinels.as_str()),
        ("REDIS_SENTINEL_MASTER", master),
        ("REDIS_SENTINEL_PASSWORD", SENTINEL_PASSWORD),
        ("REDIS_PASSWORD", DATA_PASSWORD),
        ("SECRET_KEY", SECRET_KEY),
    ];
    let gw = Gateway::local(&vars).await;
    let h = health(&gw).await;
    assert_eq!(h["status"], "healthy", "{h}");
    assert_eq!(h["redis_connected"], true, "{h}");
    assert_eq!(h["session_store"], "redis", "{h}");
    assert_eq!(h["redis_topology"], "sentinel", "{h}");
    assert_eq!(
        h["redis_nodes"],
        json!({"expected": 1, "reachable": 1}),
        "{h}"
    );

    // A session made before the failover is still signed in after it, on the new primary.
    let (client, _) = signed_in(&gw).await;
    assert_eq!(auth_status(&client, &gw).await["authenticated"], true);
    let old = setup.primary_port();
    let new = tokio::task::block_in_place(|| {
        setup.failover();
        setup.wait_for_new_primary(old, Duration::from_secs(20))
    });
    let started = Instant::now();
    loop {
        let h = health(&gw).await;
        if h["status"] == "healthy" {
            assert_eq!(h["redis_topology"], "sentinel", "{h}");
            assert_eq!(
                h["redis_nodes"],
                json!({"expected": 1, "reachable": 1}),
                "{h}"
            );
            break;
        }
        assert_eq!(
            h["redis_nodes"],
            json!({"expected": 1, "reachable": 0}),
            "{h}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "health after the failover: {h}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = auth_status(&client, &gw).await;
    assert_eq!(status["authenticated"], true, "{status}");
    // New writes land on the new primary.
    let keys: Vec<String> = setup.run_on(
        new,
        tower_rampart::redis::driver::cmd("KEYS").arg("*session*"),
    );
    assert!(!keys.is_empty(), "sessions on the new primary");
    drop(gw);
    drop(setup);

    // Bad Sentinel variables stop start-up, naming the variable.
    for (bad, variable) in [
        (
            vec![
                ("REDIS_SENTINELS", "127.0.0.1:0"),
                ("REDIS_SENTINEL_MASTER", "m"),
            ],
            "REDIS_SENTINELS",
        ),
        (
            vec![("REDIS_SENTINELS", "127.0.0.1:26379")],
            "REDIS_SENTINEL_MASTER",
        ),
        (
            vec![
                ("REDIS_SENTINELS", "127.0.0.1:26379"),
                ("REDIS_SENTINEL_MASTER", "m"),
                ("REDIS_CLUSTER", "true"),
            ],
            "REDIS_CLUSTER",
        ),
    ] {
        let mut all = bad.clone();
        all.push(("SECRET_KEY", SECRET_KEY));
        all.push(("REDIS_PASSWORD", DATA_PASSWORD));
        let err = fabric_gateway::config::Config::from_lookup(|name| {
            all.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains(variable), "{bad:?}: {err}");
        assert!(!err.contains(DATA_PASSWORD), "{err}");
    }
    assert_no_secret_logged(&[SECRET_KEY, DATA_PASSWORD, SENTINEL_PASSWORD]);
}
