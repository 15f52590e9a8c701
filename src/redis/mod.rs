//! The Redis connection shared by the Redis backends (feature `redis`).
//!
//! [`RedisConfig`] says where the server is (a `redis://`/`rediss://` URL, host and port,
//! or the `REDIS_*` environment variables of an Azure deployment); [`RedisConnection`] is
//! the handle the session store and the rate limiter call through. It is one shared,
//! multiplexed connection that connects lazily, reconnects by itself, bounds every call by a
//! timeout, and stops calling a Redis that keeps failing (circuit breaker), so that a Redis
//! outage turns into fast errors the layers answer with their degraded policy, never into
//! hanging requests.
//!
//! ```no_run
//! use tower_rampart::redis::{RedisConfig, RedisHealth, driver};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // REDIS_URL, or REDIS_HOST / REDIS_PORT / REDIS_PASSWORD / REDIS_SSL, or REDIS_SENTINELS.
//! let config = RedisConfig::from_env()?
//!     .unwrap_or_else(|| RedisConfig::from_parts("127.0.0.1", 6379));
//! println!("using {config}"); // the password shows as ***
//!
//! // Fail at start-up if Redis is unreachable or the password is wrong...
//! let conn = config.connect().await?;
//! // ...or use `config.connect_lazy()?` to connect on first use.
//!
//! let () = conn.query(driver::cmd("SET").arg("{demo}:k").arg("v")).await?;
//! let v: Option<String> = conn.query(driver::cmd("GET").arg("{demo}:k")).await?;
//! assert_eq!(v.as_deref(), Some("v"));
//!
//! match conn.health_check().await {
//!     RedisHealth::Connected { latency } => println!("redis ok in {latency:?}"),
//!     RedisHealth::Disconnected { reason } => println!("redis down: {reason}"),
//! }
//! # Ok(()) }
//! ```
//!
//! Calls need a Tokio runtime with the time driver enabled (`#[tokio::main]` has it).
//!
//! # TLS
//!
//! `rediss://` URLs, [`RedisConfig::tls`] or `REDIS_SSL=true` use TLS through rustls. The
//! server certificate is checked against the system trust store, or only against
//! [`RedisConfig::ca_certificate_pem`] when given. If the process has not chosen a rustls
//! crypto provider, rustls installs the one its crate features name (`ring`, which this
//! crate enables) as the process default; a build naming several, with none installed, is
//! a configuration error when the connection is built. Azure Cache for Redis
//! listens with TLS on port 6380, the default port when `REDIS_SSL` is on.
//!
//! # Timeouts and failures
//!
//! - **Connect timeout**, default 1 s: TCP connect, TLS handshake, `AUTH` and `SELECT`.
//! - **Command timeout**, default 500 ms: each command, pipeline or script call, from send to
//!   full reply. The rate limiter makes one call per request, so this is the longest a
//!   request waits on Redis before the layer falls back. 500 ms is far above a healthy
//!   round trip (well under 5 ms inside one Azure region) yet short enough for a request to
//!   stay interactive; it also rides out the brief pauses of a managed Redis (patching,
//!   failover replication) without declaring an outage. Lower it when a faster fallback
//!   matters more than riding out hiccups.
//!
//! A call that has to (re)connect first may take up to connect timeout + command timeout.
//! Only one connection attempt is in flight at a time; concurrent callers wait for it
//! (bounded by the connect timeout) and share its result.
//!
//! After **3 consecutive failures** (timeouts, refused or lost connections, failed connects)
//! the circuit breaker opens: calls fail at once with [`RedisErrorKind::Unavailable`] for a
//! cool-down of 1 s, then one call is let through as a probe. A successful probe closes the
//! breaker; a failed one doubles the cool-down, up to 5 s. Besides, while the breaker is
//! open, a background task of the connection sends one `PING` every 200 ms (connecting
//! first); the first that succeeds closes the breaker. So calls fail at once while Redis
//! is down, and a Redis that comes back is used again within about 200 ms (plus one
//! connect), however long the cool-down has grown, without restarting the process and
//! without a call having to arrive. Errors the server answers itself (`WRONGTYPE`, a script
//! error) prove it healthy and do not count. [`RedisConnection::health_check`] runs even
//! while the breaker is open; [`RedisConnection::guarded_health_report`] (for health
//! endpoints anyone can call) answers "unreachable" at once then, without calling Redis.
//!
//! State changes are logged once each, never per request, with the address but never the
//! password (driver messages are scrubbed): `redis connected`, `redis connection lost`,
//! `redis circuit breaker open`, `redis reconnected`, `redis recovered`.
//!
//! # Redis Cluster
//!
//! The same [`RedisConnection`] talks to one server or to a Redis Cluster; the layers never
//! know which. [`RedisConfig::from_url`] takes one URL or a comma-separated list of seed
//! nodes (`REDIS_URL=redis://10.0.0.5:7000,redis://10.0.0.6:7000`), and
//! [`RedisConfig::cluster`] (`REDIS_CLUSTER=auto|true|false`) chooses:
//!
//! - [`ClusterMode::Auto`] (default): the first successful connection asks the server
//!   (`INFO cluster`, `cluster_enabled:1`). A cluster node gets the driver's cluster
//!   connection, built from all the seeds with the same password, TLS, CA and timeouts;
//!   anything else keeps the single-server connection, unchanged. So one address of a
//!   managed cluster (Azure's OSS clustering policy, ElastiCache cluster mode) just works,
//!   and a Redis unreachable at start-up still gives a lazy, degraded start:
//!   [`RedisConnection::topology`] is `None` until then.
//! - [`ClusterMode::Enabled`]: the cluster connection from the start.
//! - [`ClusterMode::Disabled`]: never asks. Against a cluster node, keys of other nodes'
//!   slots are answered by the server's `MOVED` errors, returned as
//!   [`RedisErrorKind::Command`] (server code `MOVED`).
//!
//! A cluster has only database 0: a non-zero database is refused by the configuration with
//! `Enabled`, and with `Auto` when the server turns out to be a cluster (a
//! [`RedisErrorKind::Config`] error on every call, logged once, then the breaker opens).
//! With several seeds and a single server, the seeds are tried in order on each connect.
//!
//! On a cluster every command, script and pipeline is routed by its first key to the master
//! of that key's hash slot (`MOVED`/`ASK` are followed and the slot map refreshed by the
//! driver). The keys of one script or one pipeline must share a slot (hash tags:
//! `{user42}:a`, `{user42}:b`); a pipeline whose keys span slots is refused before anything
//! is sent (server code `CROSSSLOT`), never run in part. [`key_slot`] and
//! [`RedisConnection::is_cluster`] let callers split work by slot. Scripts are loaded on the
//! node that needs them: `NOSCRIPT` (after a failover, a slot move, a restart) loads the
//! script on the master of the call's slot and retries; if the node that answered was
//! another one (a slot migrating to a master without the script, reached through `ASK`),
//! the call is sent once more as `EVAL` with the script's source, which runs wherever it
//! lands. `NOSCRIPT` never surfaces.
//!
//! A call the cluster refused without running it, for a reason a short pause cures
//! (`ASK`/`MOVED` the driver gave up on, `CLUSTERDOWN`, `MASTERDOWN`, `LOADING`,
//! `READONLY`), is sent again by the connection up to 6 times (pauses of 5, 10, … 30 ms),
//! within the call's command timeout. Pipelines are not (part of one may have run). The
//! driver's own resends wait 5-50 ms and stop after 4 (its defaults, 1.28 s and more per
//! wait, exceed any command timeout).
//!
//! **One breaker for the whole cluster.** The circuit breaker, the timeouts and the
//! single-flight connect work as above, per connection, not per node: one request's keys
//! may live on several nodes, so a per-node breaker could not fail a request fast as a
//! whole; per-node breakers are a possible refinement. While one master is dead, calls to
//! its slots fail (time out or are refused) until the cluster promotes its replica (about
//! `cluster-node-timeout` plus an election); timeouts and lost connections count toward the
//! breaker like any other failure, so a burst of them can open it for every slot for a
//! cool-down (`TRYAGAIN`, `CLUSTERDOWN`, `ASK` and `MOVED` do not count: the nodes
//! answered). The cluster
//! connection reconnects to single nodes and refreshes its slot map by itself, from every
//! node it learnt; it is kept when the breaker opens (a new one would start from the
//! configured seeds alone, and the seed may be the master that died).
//!
//! ## What a failover does
//!
//! Measured by `tests/cluster_failover.rs` (3 masters, 1 replica each, `redis-server` 7.0,
//! `cluster-node-timeout` 1 s, command timeout 1 s, on a loaded 2-core machine; the master
//! killed with `SIGKILL` is the configured seed, and holds the keys in use; three runs,
//! each layer under continuous load on the dead master's slots):
//!
//! | figure                                                           | measured            |
//! |------------------------------------------------------------------|---------------------|
//! | kill to replica promoted (`ROLE` polled every 50 ms)             | 2.2-2.5 s           |
//! | every layer answering again, after the kill                      | 2.2-2.6 s           |
//! | error window per layer (first failed call to first success)      | 1.8-2.5 s           |
//! | failed calls per layer (about 2 000 calls each)                  | 2-12                |
//! | failed calls of sessions on a surviving master                   | 1 of about 1 600    |
//! | the same on a TLS-only cluster (two runs)                        | 1; 47 (breaker)     |
//! | acknowledged session writes lost (of those made during the run)  | 0 of 1 750-2 100    |
//! | limiter increments lost; admissions beyond a spent quota         | 0; 0                |
//! | multi-slot units left behind (failed release, or run unseen)     | 0-1                 |
//!
//! - **Every layer recovers on the same connection**, without a restart, as soon as the
//!   replica is promoted (within the 50 ms the test polls at): the driver refreshes its
//!   slot map from the nodes it knows, and the breaker stays closed.
//! - **During the window**, calls to the dead master's slots fail, each after up to the
//!   command timeout (the driver and the connection resend them while the slot map still
//!   names the dead master); the layers answer with their failure policy (`503` or the
//!   limiter's failure mode). Calls to the other masters' slots go on, except during the
//!   moments before the promotion when the whole cluster answers `CLUSTERDOWN` (its slots
//!   not all covered): the connection rides most of those out by resending; they never
//!   open the breaker. Timeouts toward the dead master still count toward it: on a TLS
//!   cluster, where reaching the dead node can time out rather than be refused, one run in
//!   two opened it, and the other masters' calls failed for 0.3 s (the breaker is one for
//!   the whole cluster; a breaker per node would confine this to the dead master's slots).
//!   Before the fixes that came with these tests, the breaker opened on `CLUSTERDOWN` and
//!   `TRYAGAIN` and failed every slot's calls for up to 0.9 s per failover, and a breaker that
//!   opened replaced the connection with one built from the seeds alone: with the seed dead,
//!   the client never recovered without a restart.
//! - **Acknowledged writes lost**: replication is asynchronous, so a master can die after
//!   acknowledging a write its replica has not received. On loopback none was lost in any
//!   run (the replica is microseconds behind). Made certain by cutting the replication link
//!   first (`writes_acknowledged_while_the_replica_lagged_are_lost_in_a_failover`): every
//!   write acknowledged after the cut was lost (20 of 20), every one before it survived. So
//!   a failover loses exactly the writes the replica lagged behind by: on a real network,
//!   the last replication round trip's; with a replica disconnected, everything since. A
//!   session save lost this way reads as the previous version; a lost create as no session
//!   (its user signs in again). Waiting for a replica (`WAIT`) closes that window.
//! - **The limiter**: a lost increment is one admission a quota can exceed by; none was
//!   lost in the runs. A quota spent before the failover stays spent (its state replicated
//!   long before): no admission beyond it in any run. With the replication link cut, a
//!   quota of 10 with 4 admissions before the cut and 6 after admitted 6 again after the
//!   failover: 16 in one window, over-admission equal to the increments lost, exactly.
//! - **Multi-slot requests**: a reservation whose release fails (its node dying between
//!   the reserve and the release) stays counted until its admission would leave the window
//!   (window + granularity), or decays (GCRA); each is counted by
//!   `RedisBackend::unreleased_reservations` and logged. A reservation can also run
//!   unseen: its call failed after it ran, or the driver sent it twice (it resends a call
//!   after a connection error, also one that had run; that also holds for single-key
//!   decisions, which then count one admission twice: a possible false refusal, never an
//!   over-admission). Measured: 0 to 1 unit per failover, sometimes not counted.
//!
//! ## What a resharding does
//!
//! Measured by `tests/cluster_reshard.rs`: a slot holding limiter keys and sessions moves
//! to another master (`CLUSTER SETSLOT … IMPORTING/MIGRATING`, half its keys `MIGRATE`d,
//! one second of load against the split slot, the rest, `SETSLOT … NODE`), then back in
//! one go, while requests flow; the target starts without the scripts. No call failed
//! (sessions and limiter), no quota was exceeded (client-side accounting), Redis counts
//! exactly the admissions the clients saw, and every acknowledged save is there. What
//! makes it hold: `ASK` and `MOVED` are followed by the driver (and resent by the
//! connection when the driver gives up), `NOSCRIPT` on the target is answered with
//! `EVAL`, and a rate limiter batch whose keys straddle the move (`TRYAGAIN` from the
//! source until the last key moved) is decided request by request, in order, which
//! decides exactly as the batch would. Slowest call during the move: 140-200 ms for the
//! limiter (a batch meeting `TRYAGAIN`, then split), 25-75 ms for sessions (six runs);
//! the same on a TLS-only cluster (`MIGRATE` over TLS).
//! `TRYAGAIN` and `CLUSTERDOWN` come from nodes that answer: they do not count toward the
//! circuit breaker.
//!
//! [`RedisConnection::health_check`] on a cluster reads the masters serving slots and pings
//! each: `Connected` only if all answer. [`RedisConnection::health_report`] adds the
//! [`Topology`] and the [`NodeCounts`] (expected and reachable masters; `1` for a single
//! server). A health check may take up to twice the command timeout on a cluster (the slot
//! list, then the pings, each bounded).
//!
//! # Redis Sentinel
//!
//! [`RedisConfig::from_sentinels`] (`REDIS_SENTINELS`, `REDIS_SENTINEL_MASTER`,
//! `REDIS_SENTINEL_PASSWORD`) finds the primary through Redis Sentinel and follows it across
//! failovers without a restart; [`RedisConnection::topology`] is [`Topology::Sentinel`] from
//! the start. The lookup is written here on the driver's plain connections: the driver's
//! own Sentinel client resolves the primary once and does not follow a failover
//! (redis-rs#1438).
//!
//! - **Connect**: every sentinel is asked at once (`SENTINEL MASTER <name>`, with the
//!   sentinels' password and TLS when set, each within half the connect timeout; once a
//!   majority has answered, a silent one is waited for 50 ms at most); the
//!   addresses named are tried from the highest configuration epoch down (a sentinel that
//!   has not heard of the latest failover still names the old primary), and the first that
//!   answers `ROLE` with `master` gets the multiplexed connection, with the data password,
//!   user and database. A connect may take up to twice the connect timeout (the sentinels,
//!   then the primary). Every reconnect asks the sentinels again: after a lost connection, a
//!   `READONLY` answer (a demoted primary), a breaker probe.
//! - **Watch**: while connected, every 100 ms the sentinels are asked again (one kept
//!   connection per sentinel). When they name another primary, the connection is dropped and
//!   the next call connects to the new one. While a sentinel reports a failover in progress
//!   (flag `failover_in_progress`, set by the sentinel leading it before it promotes the
//!   replica), calls are **fenced**: they fail at once with [`RedisErrorKind::Unavailable`]
//!   until the sentinels name the new primary (at most 10 s). This is what keeps a graceful
//!   `SENTINEL FAILOVER` from losing writes: the old primary stays up and writable until the
//!   sentinels demote it, and whatever it acknowledges after the promotion is discarded when
//!   it resyncs; without the fence a test writing continuously lost about a third of its
//!   acknowledged writes across one failover, with it none. Fenced calls do not count toward
//!   the breaker.
//! - **Failures**: timeouts, the breaker and the health check work as for one server, with
//!   one breaker for the primary. One broken connection counts as one failure however many
//!   calls were in flight on it (a failover kills every client of the old primary at once),
//!   so a failover alone does not open the breaker; the calls in flight on the old
//!   connection fail. [`RedisConnection::health_check`] sends `ROLE` instead of `PING`: a
//!   connection still on a demoted primary is reported and dropped.
//!   [`HealthReport::nodes`] is 1 expected, 0 or 1 reachable.
//! - **Scripts**: `NOSCRIPT` on the new primary (a restarted node, a flushed cache) is
//!   answered by loading the script there and retrying, as on one server.
//!
//! Measured on loopback (`tests/redis_sentinel.rs`, four tasks writing back to back,
//! `down-after-milliseconds` 1000): `SENTINEL FAILOVER` fails calls for about 1.1-1.3 s
//! and loses no acknowledged write; a killed primary fails calls for about 3 s (1 s before
//! the sentinels call it down, then the election and the promotion). Replication stays
//! asynchronous: a primary that dies can take its last acknowledged writes with it.
//!
//! # Why one multiplexed connection
//!
//! Measured with `benches/redis_connection.rs` (`cargo bench --bench redis_connection
//! --features redis`, 3 s per variant after a 0.5 s warm-up): 64 concurrent callers run a
//! small GCRA-like Lua script with `EVALSHA` against a local `redis-server` 7.0, on a
//! 2-core machine shared with other builds (hence the spread; the ratios held in every run),
//! three runs:
//!
//! | shape                                                 |         calls/s |
//! |-------------------------------------------------------|-----------------|
//! | bb8-redis pool (10 connections), `test_on_check_out`  |  20 000-39 000  |
//! | the same pool without `test_on_check_out`             |  36 000-53 000  |
//! | one shared `MultiplexedConnection`                    |  70 000-105 000 |
//! | [`RedisConnection`] (multiplexed + timeout + breaker) |  66 000-100 000 |
//!
//! A pool pays a `PING` per checkout by default and, without it, still serialises each
//! connection to one caller at a time; the multiplexed connection pipelines all callers'
//! commands on one socket, and Redis executes commands one at a time anyway. The wrapper's
//! bookkeeping (breaker check, timeout, a read lock to clone the connection) is lost in the
//! noise next to the round trip.
//!
//! The one exception is a call that blocks its connection: `WAIT` (the session store's
//! optional durability, `RedisStore::with_wait_replicas` with the `session` feature)
//! would hold up every command pipelined behind it, so such calls run on a small pool of
//! dedicated connections (bb8, opened from the same configuration; a cluster connection each
//! on a cluster), and the shared connection never carries them.
//!
//! # The driver
//!
//! The `redis` crate is re-exported as [`driver`] (with its `cluster-async` feature), so
//! that commands, pipelines and scripts are built with the same version this crate was
//! compiled against: `tower_rampart::redis::driver::{cmd, Cmd, Pipeline, Script}`.

mod breaker;
mod config;
mod connection;
// Used by the session store's durable writes only.
#[cfg_attr(not(feature = "session"), allow(dead_code))]
mod dedicated;
mod error;
#[cfg(feature = "opentelemetry")]
mod metrics;
mod sentinel;
mod slot;

pub use self::config::{ClusterMode, RedisConfig, RedisConfigError};
pub use self::connection::{HealthReport, NodeCounts, RedisConnection, RedisHealth, Topology};
#[cfg(feature = "session")]
pub(crate) use self::dedicated::DedicatedPool;
pub use self::error::{RedisError, RedisErrorKind};
pub use self::slot::{SLOTS, key_slot};

/// The `redis` crate this module is built on (commands, pipelines, scripts, values).
pub use ::redis as driver;
