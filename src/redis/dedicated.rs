//! Dedicated connections for calls that block the connection they run on, kept off the
//! shared multiplexed connection.
//!
//! `WAIT` (the session store's optional durability) blocks its connection until enough
//! replicas acknowledge or its timeout passes: on the shared connection it would hold up
//! every command pipelined behind it, the rate limiter's included. Such calls run on a
//! small [`bb8`] pool of connections of their own instead, each used by one call at a time,
//! opened from the same addresses, password, TLS and CA as the shared connection:
//!
//! - single server: one multiplexed connection per pool entry;
//! - Redis Cluster: one cluster connection per pool entry, so that a pipeline goes, over a
//!   connection no other call uses, to the master of its first key's slot (`MOVED`, `ASK`
//!   and failovers followed by the driver) and a `WAIT` in it runs on the connection that
//!   made the write.
//!
//! The pool honours the shared connection's circuit breaker (no call while it is open),
//! and drops a connection after a transport error or a timeout (a late reply could
//! otherwise still be pending on it).

use std::fmt;
use std::time::Duration;

use ::redis as driver;
use driver::aio::{ConnectionLike, MultiplexedConnection};
use driver::cluster::ClusterClient;
use driver::cluster_async::ClusterConnection;
use tokio::time::timeout;

use super::connection::{RedisConnection, Topology};
use super::error::{RedisError, RedisErrorKind};

/// What dedicated connections are opened from: the shared connection's clients and seeds.
#[derive(Clone)]
pub(crate) struct DedicatedSource {
    /// One single-server client per seed (TLS and CA applied).
    pub(crate) clients: Vec<driver::Client>,
    /// The seeds, for a cluster client.
    pub(crate) cluster_seeds: Vec<driver::ConnectionInfo>,
    /// The CA to trust instead of the system store, when configured.
    pub(crate) root_cert: Option<Vec<u8>>,
    pub(crate) connect_timeout: Duration,
    /// Only used to scrub driver messages.
    pub(crate) password: Option<String>,
    pub(crate) addr: String,
}

/// One dedicated connection.
enum Link {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// A pooled connection, and whether it must be dropped instead of reused.
pub(crate) struct Dedicated {
    link: Link,
    broken: bool,
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a driver::Cmd,
    ) -> driver::RedisFuture<'a, driver::Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a driver::Pipeline,
        offset: usize,
        count: usize,
    ) -> driver::RedisFuture<'a, Vec<driver::Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// `addr` with another host and port, keeping its TLS settings.
fn with_host_port(
    addr: &driver::ConnectionAddr,
    host: String,
    port: u16,
) -> driver::ConnectionAddr {
    match addr {
        driver::ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => driver::ConnectionAddr::TcpTls {
            host,
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => driver::ConnectionAddr::Tcp(host, port),
    }
}

/// Opens dedicated connections for the pool.
struct Manager {
    shared: RedisConnection,
    /// The driver's own bound on one reply: the pool's call timeout (ours applies too).
    response_timeout: Duration,
}

impl Manager {
    async fn open(&self) -> Result<Dedicated, RedisError> {
        let topology = self.shared.detect_topology().await?;
        let source = self.shared.dedicated_source();
        let scrub = |e: &driver::RedisError| RedisError::from_driver(e, source.password.as_deref());
        let link = match topology {
            Topology::Sentinel => match self.shared.sentinel_primary(self.response_timeout).await {
                Some(result) => Link::Single(result?),
                None => {
                    return Err(RedisError::new(RedisErrorKind::Config, "no sentinels"));
                }
            },
            Topology::Cluster => {
                // The masters the shared connection sees now, then the configured seeds: a
                // seed that died in a failover must not keep the pool from the cluster.
                let learnt = self.shared.cluster_masters().await;
                let template = source.cluster_seeds.first().cloned();
                let mut seeds: Vec<driver::ConnectionInfo> = Vec::new();
                if let Some(template) = &template {
                    for (host, port) in learnt {
                        seeds.push(template.clone().set_addr(with_host_port(
                            template.addr(),
                            host,
                            port,
                        )));
                    }
                }
                seeds.extend(source.cluster_seeds.iter().cloned());
                let seeds = seeds.into_iter().map(|info| {
                    let settings = info.redis_settings().clone().set_db(0);
                    info.set_redis_settings(settings)
                });
                let mut builder = ClusterClient::builder(seeds)
                    .connection_timeout(source.connect_timeout)
                    .response_timeout(self.response_timeout);
                if let Some(pem) = &source.root_cert {
                    builder = builder.certs(driver::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem.clone()),
                    });
                }
                let client = builder
                    .build()
                    .map_err(|e| scrub(&e).with_kind(RedisErrorKind::Config))?;
                Link::Cluster(client.get_async_connection().await.map_err(|e| scrub(&e))?)
            }
            _ => {
                let config = driver::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(source.connect_timeout))
                    .set_response_timeout(Some(self.response_timeout));
                let mut last = None;
                let mut link = None;
                for client in &source.clients {
                    match client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                    {
                        Ok(conn) => {
                            link = Some(Link::Single(conn));
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                match (link, last) {
                    (Some(link), _) => link,
                    (None, Some(e)) => return Err(scrub(&e)),
                    (None, None) => {
                        return Err(RedisError::new(RedisErrorKind::Config, "no Redis address"));
                    }
                }
            }
        };
        Ok(Dedicated {
            link,
            broken: false,
        })
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = Dedicated;
    type Error = RedisError;

    async fn connect(&self) -> Result<Dedicated, RedisError> {
        let source = self.shared.dedicated_source();
        match timeout(source.connect_timeout, self.open()).await {
            Ok(result) => {
                result.map_err(|e| e.context(&format!("cannot connect to {}", source.addr)))
            }
            Err(_) => Err(RedisError::timeout(
                &format!("connecting to {}", source.addr),
                source.connect_timeout,
            )),
        }
    }

    async fn is_valid(&self, conn: &mut Dedicated) -> Result<(), RedisError> {
        driver::cmd("PING")
            .query_async::<()>(&mut conn.link)
            .await
            .map_err(|e| {
                let source = self.shared.dedicated_source();
                RedisError::from_driver(&e, source.password.as_deref())
            })
    }

    fn has_broken(&self, conn: &mut Dedicated) -> bool {
        conn.broken
    }
}

/// A small pool of dedicated connections for calls that block their connection.
pub(crate) struct DedicatedPool {
    pool: bb8::Pool<Manager>,
    shared: RedisConnection,
    /// Bound on one call on a dedicated connection (the command timeout plus the time the
    /// call may block).
    call_timeout: Duration,
    /// Bound on waiting for a free connection (all busy) or opening one.
    get_timeout: Duration,
}

impl fmt::Debug for DedicatedPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.pool.state();
        f.debug_struct("DedicatedPool")
            .field("connections", &state.connections)
            .field("idle", &state.idle_connections)
            .field("call_timeout", &self.call_timeout)
            .finish()
    }
}

impl DedicatedPool {
    /// A pool of at most `size` connections whose calls may block up to `blocking` beyond
    /// the command timeout. Connects lazily; must be called inside a Tokio runtime.
    pub(crate) fn new(shared: RedisConnection, size: u32, blocking: Duration) -> Self {
        let call_timeout = shared.command_timeout() + blocking;
        let get_timeout = shared.dedicated_source().connect_timeout + call_timeout;
        let pool = bb8::Pool::builder()
            .max_size(size.max(1))
            .min_idle(None)
            // No PING per checkout (a round trip per call); broken connections are dropped
            // on return instead, and a dead one fails its next call, which drops it.
            .test_on_check_out(false)
            .retry_connection(false)
            .connection_timeout(get_timeout)
            .build_unchecked(Manager {
                shared: shared.clone(),
                response_timeout: call_timeout,
            });
        Self {
            pool,
            shared,
            call_timeout,
            get_timeout,
        }
    }

    /// Runs `pipe` on one dedicated connection, within the call timeout. Replies that are
    /// server errors stay in the result as [`driver::Value::ServerError`] (build the
    /// pipeline with `ignore_errors()`); transport failures and timeouts are errors.
    pub(crate) async fn pipeline(
        &self,
        pipe: &driver::Pipeline,
    ) -> Result<Vec<driver::Value>, RedisError> {
        if !self.shared.is_available() {
            return Err(RedisError::new(
                RedisErrorKind::Unavailable,
                "circuit breaker open after repeated failures of Redis",
            ));
        }
        let mut conn = match self.pool.get().await {
            Ok(conn) => conn,
            Err(bb8::RunError::User(e)) => return Err(e),
            Err(bb8::RunError::TimedOut) => {
                return Err(RedisError::timeout(
                    "waiting for a dedicated Redis connection",
                    self.get_timeout,
                ));
            }
        };
        let source = self.shared.dedicated_source();
        let result = timeout(
            self.call_timeout,
            pipe.query_async::<Vec<driver::Value>>(&mut conn.link),
        )
        .await;
        match result {
            Ok(Ok(values)) => {
                // A node that stopped being a primary (demoted behind Sentinel, or a cluster
                // master turned replica): this connection will never write again there.
                if values.iter().any(|v| {
                    matches!(v, driver::Value::ServerError(e) if matches!(e.code(), "READONLY" | "MASTERDOWN"))
                }) {
                    conn.broken = true;
                }
                Ok(values)
            }
            Ok(Err(e)) => {
                let err = RedisError::from_driver(&e, source.password.as_deref());
                if !matches!(err.kind(), RedisErrorKind::Command | RedisErrorKind::Auth) {
                    conn.broken = true;
                }
                Err(err)
            }
            Err(_) => {
                // The reply may still come: never reuse this connection.
                conn.broken = true;
                Err(RedisError::timeout("pipeline", self.call_timeout))
            }
        }
    }
}
