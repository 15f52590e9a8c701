//! The Redis Cluster harness of `rampart-test-support` against real `redis-server` nodes:
//! slots served, key slots as the crate computes them, failover and rejoin, TLS only.
#![cfg(feature = "redis")]

use rampart_test_support as support;

use std::time::Instant;

use support::RedisCluster;
use tower_rampart::redis::driver;

#[test]
fn plain_cluster_serves_every_slot() {
    let started = Instant::now();
    let cluster = RedisCluster::start(3, 1);
    eprintln!("3+1 cluster started in {:?}", started.elapsed());
    assert_eq!(cluster.ports().len(), 6);
    let masters = cluster.master_ports();
    assert_eq!(masters.len(), 3, "{}", cluster.describe());
    assert_eq!(cluster.replica_ports().len(), 3, "{}", cluster.describe());
    let pong: String = cluster.run_on(masters[0], &driver::cmd("PING"));
    assert_eq!(pong, "PONG");
}
