//! The Redis Sentinel harness of `rampart-test-support` against real processes: the setup
//! starts ready (sentinels agree, replica in sync), passwords are enforced, `SENTINEL
//! FAILOVER` moves the primary and keeps the data, a killed primary is replaced and comes
//! back as a replica.
//!
//! Every wait in the harness has a deadline, so a broken setup fails these tests instead of
//! hanging them.
#![cfg(feature = "redis")]

use rampart_test_support as support;

use std::time::{Duration, Instant};

use support::RedisSentinel;
use support::sentinel::MASTER_NAME;
use tower_rampart::redis::driver;

/// A graceful or forced failover on loopback: down-after 1 s, then the election and the
/// promotion, on a loaded 2-core machine.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(20);
/// The setup is ready in about 2-4 s here (sentinels discover each other through hello
/// messages every 2 s); this bound catches a harness that got slow.
const START_BUDGET: Duration = Duration::from_secs(15);

fn role(setup: &RedisSentinel, port: u16) -> String {
    let role: driver::Value = setup.run_on(port, &driver::cmd("ROLE"));
    match role {
        driver::Value::Array(f) => match f.first() {
            Some(driver::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            other => format!("{other:?}"),
        },
        other => format!("{other:?}"),
    }
}

#[test]
fn starts_ready_and_fails_over_gracefully() {
    let started = Instant::now();
    let setup = RedisSentinel::start();
    let took = started.elapsed();
    eprintln!("sentinel setup ready in {took:?}");
    assert!(took < START_BUDGET, "start took {took:?}");

    let nodes = setup.node_ports();
    assert_eq!(nodes.len(), 2);
    let primary = setup.primary_port();
    assert_eq!(primary, nodes[0], "the first node starts as the primary");
    assert_eq!(setup.named_primaries(), vec![Some(primary); 3]);
    assert_eq!(role(&setup, nodes[1]), "slave");
    assert_eq!(setup.sentinel_addrs().len(), 3);
    assert_eq!(setup.sentinels_var().split(',').count(), 3);

    let config = setup.config();
    assert_eq!(config.sentinel_master(), Some(MASTER_NAME));
    assert_eq!(config.seeds().count(), 3);

    // A write on the primary reaches the replica.
    let () = setup.run_on(primary, driver::cmd("SET").arg("h:k").arg("v1"));
    let acked: i64 = setup.run_on(primary, driver::cmd("WAIT").arg(1).arg(2000));
    assert_eq!(acked, 1, "the replica acknowledged the write");

    let started = Instant::now();
    setup.failover();
    let new = setup.wait_for_new_primary(primary, FAILOVER_DEADLINE);
    eprintln!(
        "SENTINEL FAILOVER: new primary after {:?}",
        started.elapsed()
    );
    assert_eq!(new, nodes[1]);
    assert_eq!(role(&setup, new), "master");
    let v: Option<String> = setup.run_on(new, driver::cmd("GET").arg("h:k"));
    assert_eq!(
        v.as_deref(),
        Some("v1"),
        "a replicated write survives the failover"
    );
    // The old primary becomes a replica of the new one.
    let started = Instant::now();
    setup.wait_until_replica(primary, FAILOVER_DEADLINE);
    eprintln!(
        "old primary demoted {:?} after the switch",
        started.elapsed()
    );
    assert_eq!(role(&setup, primary), "slave");
    setup.wait_ready(FAILOVER_DEADLINE);
}

#[test]
fn a_killed_primary_is_replaced_and_rejoins_as_a_replica() {
    let mut setup = RedisSentinel::start();
    let started = Instant::now();
    let old = setup.kill_primary();
    let new = setup.wait_for_new_primary(old, FAILOVER_DEADLINE);
    eprintln!("killed primary replaced after {:?}", started.elapsed());
    assert_ne!(new, old);
    setup.restart_node(old);
    let until = Instant::now() + FAILOVER_DEADLINE;
    while role(&setup, old) != "slave" {
        assert!(
            Instant::now() < until,
            "restarted node not a replica:\n{}",
            setup.describe()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    setup.wait_ready(FAILOVER_DEADLINE);
    assert_eq!(setup.primary_port(), new);
}

#[test]
fn passwords_are_required() {
    let data_pw = "data s3cret:@/";
    let sentinel_pw = "sentinel s3cret";
    let setup = RedisSentinel::start_with_passwords(Some(data_pw), Some(sentinel_pw));
    let primary = setup.primary_port();
    assert_eq!(setup.password(), Some(data_pw));
    assert_eq!(setup.sentinel_password(), Some(sentinel_pw));
    // Without the passwords both refuse.
    let sentinel = setup.sentinel_addrs()[0].1;
    let mut plain = driver::Client::open(format!("redis://127.0.0.1:{sentinel}"))
        .unwrap()
        .get_connection()
        .unwrap();
    let err = driver::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(MASTER_NAME)
        .query::<driver::Value>(&mut plain)
        .unwrap_err();
    assert_eq!(err.code(), Some("NOAUTH"), "{err}");
    let mut plain = driver::Client::open(format!("redis://127.0.0.1:{primary}"))
        .unwrap()
        .get_connection()
        .unwrap();
    let err = driver::cmd("GET")
        .arg("k")
        .query::<driver::Value>(&mut plain)
        .unwrap_err();
    assert_eq!(err.code(), Some("NOAUTH"), "{err}");
    // The replica authenticated to the primary (readiness waited for it to be online), and
    // the sentinels to the primary and to each other (they agree and know each other).
    assert_eq!(setup.named_primaries(), vec![Some(primary); 3]);
}
