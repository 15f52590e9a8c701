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

/// Once a majority of the sentinels answered, how much longer the others are waited for.
const ASK_GRACE: Duration = Duration::from_millis(50);

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

    /// Asks every sentinel at once (`SENTINEL MASTER`, each within half the connect
    /// timeout; once a majority has named a primary the others get [`ASK_GRACE`] more),
    /// reusing the open connections in `conns` (one slot per sentinel) and keeping those
    /// that answered.
    async fn ask_all(&self, conns: &mut [Option<MultiplexedConnection>]) -> Vec<Answer> {
        let mut tasks = tokio::task::JoinSet::new();
        for (index, (_, client)) in self.sentinels.iter().enumerate() {
            let conn = conns.get_mut(index).and_then(Option::take);
            let client = client.clone();
            let config = self.ask_config.clone();
            let master = self.master.clone();
            let limit = self.ask_timeout;
            tasks.spawn(async move {
                let answer = timeout(limit, async move {
                    let mut conn = match conn {
                        Some(conn) => conn,
                        None => {
                            client
                                .get_multiplexed_async_connection_with_config(&config)
                                .await?
                        }
                    };
                    let fields: driver::RedisResult<Vec<String>> = driver::cmd("SENTINEL")
                        .arg("MASTER")
                        .arg(&master)
                        .query_async(&mut conn)
                        .await;
                    Ok::<_, driver::RedisError>((conn, fields))
                })
                .await;
                (index, answer)
            });
        }
        let mut answers = Vec::with_capacity(self.sentinels.len());
        let majority = self.sentinels.len() / 2 + 1;
        let mut named = 0;
        let mut grace_until: Option<tokio::time::Instant> = None;
        loop {
            let next = match grace_until {
                None => tasks.join_next().await,
                Some(until) => match tokio::time::timeout_at(until, tasks.join_next()).await {
                    Ok(next) => next,
                    // A majority answered and the rest is slow: not waited for (dropping the
                    // set aborts their tasks); a silent sentinel does not slow every connect.
                    Err(_) => break,
                },
            };
            let Some(joined) = next else { break };
            let Ok((index, outcome)) = joined else {
                continue;
            };
            if matches!(&outcome, Ok(Ok((_, Ok(_))))) {
                named += 1;
                if named >= majority && grace_until.is_none() {
                    grace_until = Some(tokio::time::Instant::now() + ASK_GRACE);
                }
            }
            let sentinel = self.sentinels[index].0.clone();
            let reply = match outcome {
                Err(_) => Err(RedisError::timeout(
                    &format!("asking sentinel {sentinel}"),
                    self.ask_timeout,
                )),
                Ok(Err(e)) => Err(self.error(&e)),
                Ok(Ok((conn, fields))) => {
                    if let Some(slot) = conns.get_mut(index) {
                        *slot = Some(conn);
                    }
                    match fields {
                        Ok(fields) => Ok(parse_master(&fields)),
                        Err(e) if e.to_string().contains("No such master") => Ok(None),
                        Err(e) => Err(self.error(&e)),
                    }
                }
            };
            answers.push(Answer {
                index,
                sentinel,
                reply,
            });
        }
        answers.sort_by_key(|a| a.index);
        answers
    }

    /// The primary: every sentinel is asked, the addresses named are tried from the highest
    /// configuration epoch down (Sentinel's rule: the latest failover wins; a sentinel that
    /// has not heard of it yet still names the old primary), and the first that answers
    /// `ROLE` with `master` is connected to (with the data password, database and TLS of
    /// the configuration). Returns the connection and the primary's `host:port`.
    pub(crate) async fn connect_primary(
        &self,
        async_config: &driver::AsyncConnectionConfig,
    ) -> Result<(MultiplexedConnection, String), RedisError> {
        let mut conns: Vec<Option<MultiplexedConnection>> =
            self.sentinels.iter().map(|_| None).collect();
        let answers = self.ask_all(&mut conns).await;
        drop(conns);
        let mut problems = Vec::new();
        let mut auth = false;
        let mut candidates: Vec<(u64, Seed, String)> = Vec::new();
        for answer in answers {
            match answer.reply {
                Ok(Some(named)) => candidates.push((named.epoch, named.seed, answer.sentinel)),
                Ok(None) => problems.push(format!(
                    "sentinel {} does not know a primary named {:?}",
                    answer.sentinel, self.master
                )),
                Err(e) => {
                    auth |= e.kind() == RedisErrorKind::Auth;
                    problems.push(format!("sentinel {}: {e}", answer.sentinel));
                }
            }
        }
        // Highest epoch first; the configured order among equals.
        candidates.sort_by_key(|c| std::cmp::Reverse(c.0));
        let mut tried: Vec<String> = Vec::new();
        for (_, seed, sentinel) in candidates {
            let primary = seed.addr();
            if tried.contains(&primary) {
                continue;
            }
            tried.push(primary.clone());
            match self.open_verified(&seed, async_config).await {
                Ok(conn) => return Ok((conn, primary)),
                Err(e) => {
                    auth |= e.kind() == RedisErrorKind::Auth;
                    problems.push(format!("{primary} (named by sentinel {sentinel}): {e}"));
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

    /// A watch over the sentinels' answers (see [`Watch::look`]).
    pub(crate) fn watch(&self) -> Watch {
        Watch {
            conns: self.sentinels.iter().map(|_| None).collect(),
        }
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

/// What the sentinels say at one moment (see [`Watch::look`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct View {
    /// The primary's `host:port` as named by the answering sentinel with the highest
    /// configuration epoch (Sentinel's own rule: the latest failover wins).
    pub(crate) primary: String,
    /// Whether a sentinel is failing the primary over right now (flag
    /// `failover_in_progress`, set by the sentinel that leads the failover before it
    /// promotes the replica, cleared when it switches to the new primary).
    pub(crate) failover: bool,
}

/// Keeps one connection to each sentinel to ask them all, again and again, for the
/// primary's address and whether a failover is under way (`SENTINEL MASTER`).
pub(crate) struct Watch {
    conns: Vec<Option<MultiplexedConnection>>,
}

impl Watch {
    /// Asks every sentinel at once; `None` when none answered with an address.
    pub(crate) async fn look(&mut self, sentinels: &Sentinels) -> Option<View> {
        let answers = sentinels.ask_all(&mut self.conns).await;
        let mut best: Option<&Named> = None;
        let mut failover = false;
        for answer in &answers {
            if let Ok(Some(named)) = &answer.reply {
                failover |= named.failover;
                if best.is_none_or(|b| named.epoch > b.epoch) {
                    best = Some(named);
                }
            }
        }
        best.map(|named| View {
            primary: named.seed.addr(),
            failover,
        })
    }
}

/// One sentinel's answer to `SENTINEL MASTER`: `Ok(None)` when it does not know the name.
struct Answer {
    index: usize,
    sentinel: String,
    reply: Result<Option<Named>, RedisError>,
}

/// The primary as one sentinel names it.
struct Named {
    seed: Seed,
    epoch: u64,
    failover: bool,
}

/// The address, configuration epoch and failover flag of a `SENTINEL MASTER` reply (a flat
/// list of field names and values).
fn parse_master(fields: &[String]) -> Option<Named> {
    let field = |name: &str| {
        fields
            .chunks(2)
            .find(|kv| kv[0] == name)
            .and_then(|kv| kv.get(1))
    };
    let host = field("ip")?.clone();
    let port = field("port")?.parse::<u16>().ok()?;
    Some(Named {
        seed: Seed { host, port },
        epoch: field("config-epoch")
            .and_then(|e| e.parse().ok())
            .unwrap_or(0),
        failover: field("flags").is_some_and(|f| f.contains("failover_in_progress")),
    })
}
