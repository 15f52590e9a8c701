//! Finding the primary through Redis Sentinel: the lookup (`SENTINEL
//! get-master-addr-by-name`, then `ROLE` on the address named) and the watch that notices a
//! new primary. Built on the driver's plain connections: the driver's own Sentinel client
//! resolves the primary once and does not follow a failover by itself (redis-rs#1438).

use std::time::Duration;

use ::redis as driver;
use driver::aio::MultiplexedConnection;
use tokio::time::timeout;

use super::config::{RedisConfig, Seed};
use super::error::{RedisError, RedisErrorKind};

/// The sentinels of one primary, and how to reach the primary they name.
pub(crate) struct Sentinels {
    /// One client per sentinel (sentinel password, TLS), in the configured order, with the
    /// sentinel's `host:port`.
    sentinels: Vec<(String, driver::Client)>,
    /// The primary's name.
    master: String,
    /// The configuration (data credentials, database, TLS, CA) the primary is reached with.
    config: RedisConfig,
    root_cert: Option<Vec<u8>>,
    /// Connection settings for asking a sentinel: each sentinel gets half the connect
    /// timeout, so that one silent sentinel leaves time to ask the next.
    ask_config: driver::AsyncConnectionConfig,
    ask_timeout: Duration,
    data_password: Option<String>,
    sentinel_password: Option<String>,
}

/// Builds a driver client for `info`, trusting `root_cert` only when given.
pub(crate) fn client_for(
    info: driver::ConnectionInfo,
    root_cert: Option<&Vec<u8>>,
) -> driver::RedisResult<driver::Client> {
    match root_cert {
        Some(pem) => driver::Client::build_with_tls(
            info,
            driver::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            },
        ),
        None => driver::Client::open(info),
    }
}

impl Sentinels {
    /// The sentinels of `config` (which must be a Sentinel configuration).
    pub(crate) fn new(
        config: &RedisConfig,
        root_cert: Option<Vec<u8>>,
    ) -> driver::RedisResult<Option<Self>> {
        let Some(settings) = &config.sentinel else {
            return Ok(None);
        };
        let mut sentinels = Vec::with_capacity(config.seeds.len());
        for seed in &config.seeds {
            let addr = if config.tls {
                driver::ConnectionAddr::TcpTls {
                    host: seed.host.clone(),
                    port: seed.port,
                    insecure: false,
                    tls_params: None,
                }
            } else {
                driver::ConnectionAddr::Tcp(seed.host.clone(), seed.port)
            };
            let mut redis_settings =
                driver::RedisConnectionInfo::default().set_protocol(config.protocol);
            if let Some(pw) = &settings.password {
                redis_settings = redis_settings.set_password(pw);
            }
            let info = driver::IntoConnectionInfo::into_connection_info(addr)?
                .set_redis_settings(redis_settings);
            sentinels.push((seed.addr(), client_for(info, root_cert.as_ref())?));
        }
        let ask_timeout = (config.connect_timeout / 2).max(Duration::from_millis(50));
        Ok(Some(Self {
            sentinels,
            master: settings.master.clone(),
            config: config.clone(),
            root_cert,
            ask_config: driver::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(ask_timeout))
                .set_response_timeout(Some(ask_timeout)),
            ask_timeout,
            data_password: config.password.clone(),
            sentinel_password: settings.password.clone(),
        }))
    }

    /// A driver error as ours, with both passwords scrubbed.
    fn error(&self, err: &driver::RedisError) -> RedisError {
        RedisError::from_driver(err, self.data_password.as_deref())
            .scrub(self.sentinel_password.as_deref())
    }

    /// Asks sentinel `index` for the primary's address: `Ok(None)` when it does not know
    /// the name.
    async fn ask(&self, index: usize) -> Result<Option<Seed>, RedisError> {
        let (addr, client) = &self.sentinels[index];
        let attempt = timeout(self.ask_timeout, async {
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&self.ask_config)
                .await
                .map_err(|e| self.error(&e))?;
            self.query_master(&mut conn).await
        })
        .await;
        match attempt {
            Ok(result) => result,
            Err(_) => Err(RedisError::timeout(
                &format!("asking sentinel {addr}"),
                self.ask_timeout,
            )),
        }
    }

    /// `SENTINEL get-master-addr-by-name` on an open sentinel connection.
    async fn query_master(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> Result<Option<Seed>, RedisError> {
        let reply: Option<(String, String)> = driver::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.master)
            .query_async(conn)
            .await
            .map_err(|e| self.error(&e))?;
        let Some((host, port)) = reply else {
            return Ok(None);
        };
        let port = port.parse::<u16>().map_err(|_| {
            RedisError::new(
                RedisErrorKind::Protocol,
                format!("a sentinel answered the port {port:?}"),
            )
        })?;
        Ok(Some(Seed { host, port }))
    }

    /// The primary: each sentinel in turn names it, and the first address named that
    /// answers `ROLE` with `master` is connected to (with the data password, database and
    /// TLS of the configuration). Returns the connection and the primary's `host:port`.
    pub(crate) async fn connect_primary(
        &self,
        async_config: &driver::AsyncConnectionConfig,
    ) -> Result<(MultiplexedConnection, String), RedisError> {
        let mut problems = Vec::new();
        let mut auth = false;
        let mut not_primary: Vec<String> = Vec::new();
        for (index, (sentinel, _)) in self.sentinels.iter().enumerate() {
            let seed = match self.ask(index).await {
                Ok(Some(seed)) => seed,
                Ok(None) => {
                    problems.push(format!(
                        "sentinel {sentinel} does not know a primary named {:?}",
                        self.master
                    ));
                    continue;
                }
                Err(e) => {
                    auth |= e.kind() == RedisErrorKind::Auth;
                    problems.push(format!("sentinel {sentinel}: {e}"));
                    continue;
                }
            };
            let primary = seed.addr();
            if not_primary.contains(&primary) {
                continue;
            }
            match self.open_verified(&seed, async_config).await {
                Ok(conn) => return Ok((conn, primary)),
                Err(e) => {
                    auth |= e.kind() == RedisErrorKind::Auth;
                    problems.push(format!("{primary} (named by sentinel {sentinel}): {e}"));
                    not_primary.push(primary);
                }
            }
        }
        let kind = if auth {
            RedisErrorKind::Auth
        } else {
            RedisErrorKind::Unavailable
        };
        Err(RedisError::new(
            kind,
            format!(
                "no primary {:?} found through the sentinels: {}",
                self.master,
                problems.join("; ")
            ),
        ))
    }

    /// Connects to `seed` and checks that it is a primary (`ROLE`).
    async fn open_verified(
        &self,
        seed: &Seed,
        async_config: &driver::AsyncConnectionConfig,
    ) -> Result<MultiplexedConnection, RedisError> {
        let info = self
            .config
            .connection_info(seed)
            .map_err(|e| self.error(&e))?;
        let client = client_for(info, self.root_cert.as_ref()).map_err(|e| self.error(&e))?;
        let mut conn = client
            .get_multiplexed_async_connection_with_config(async_config)
            .await
            .map_err(|e| self.error(&e))?;
        check_primary(&mut conn)
            .await
            .map_err(|e| self.error(&e))??;
        Ok(conn)
    }

    /// A watch over the sentinels' answer (see [`Watch::primary`]).
    pub(crate) fn watch(&self) -> Watch {
        Watch { conn: None }
    }
}

/// `ROLE` on `conn`: `Ok(Ok(()))` for a primary, `Ok(Err(_))` (unavailable) for a replica
/// or a sentinel.
pub(crate) async fn check_primary<C: driver::aio::ConnectionLike>(
    conn: &mut C,
) -> driver::RedisResult<Result<(), RedisError>> {
    let role: driver::Value = driver::cmd("ROLE").query_async(conn).await?;
    let name = match &role {
        driver::Value::Array(fields) => match fields.first() {
            Some(driver::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(driver::Value::SimpleString(s)) => s.clone(),
            _ => String::new(),
        },
        _ => String::new(),
    };
    if name == "master" {
        Ok(Ok(()))
    } else {
        Ok(Err(RedisError::new(
            RedisErrorKind::Unavailable,
            format!("not a primary (ROLE: {name:?}); a failover may be under way"),
        )))
    }
}

/// Keeps one connection to a sentinel to ask, again and again, which address is the
/// primary; moves to the next sentinel when one fails.
pub(crate) struct Watch {
    conn: Option<(usize, MultiplexedConnection)>,
}

impl Watch {
    /// The primary's `host:port` as the sentinels name it now, `None` when no sentinel
    /// answered (each is tried once per call).
    pub(crate) async fn primary(&mut self, sentinels: &Sentinels) -> Option<String> {
        let count = sentinels.sentinels.len();
        let start = self.conn.as_ref().map_or(0, |(i, _)| *i);
        for step in 0..count {
            let index = (start + step) % count;
            let conn = match self.conn.take() {
                Some((i, conn)) if i == index => conn,
                _ => {
                    let client = &sentinels.sentinels[index].1;
                    match timeout(
                        sentinels.ask_timeout,
                        client.get_multiplexed_async_connection_with_config(&sentinels.ask_config),
                    )
                    .await
                    {
                        Ok(Ok(conn)) => conn,
                        _ => continue,
                    }
                }
            };
            let mut conn = conn;
            let answer = timeout(sentinels.ask_timeout, sentinels.query_master(&mut conn)).await;
            if let Ok(Ok(Some(seed))) = answer {
                self.conn = Some((index, conn));
                return Some(seed.addr());
            }
        }
        None
    }
}
