//! [`RedisConfig`]: where the server is and how to reach it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ::redis as driver;

use super::connection::RedisConnection;
use super::error::RedisError;

/// Default time allowed for TCP connect + TLS handshake + `AUTH`/`SELECT`.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default time allowed for one command, script or pipeline (see the module docs).
pub(crate) const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(500);
/// Port of a plain Redis server.
const DEFAULT_PORT: u16 = 6379;
/// Port of a TLS Redis server by convention (Azure Cache for Redis listens here).
const DEFAULT_TLS_PORT: u16 = 6380;
/// Port of a Redis Sentinel when `REDIS_SENTINELS` names a host without one.
const DEFAULT_SENTINEL_PORT: u16 = 26379;

/// How to reach one Redis server, a Redis Cluster or a primary behind Redis Sentinel:
/// address (seed nodes, or sentinels), credentials, TLS, cluster mode and timeouts.
///
/// Build it from a URL ([`RedisConfig::from_url`]), from parts
/// ([`RedisConfig::from_parts`] and the builder methods), from sentinels
/// ([`RedisConfig::from_sentinels`]), or from the environment ([`RedisConfig::from_env`]);
/// then open a [`RedisConnection`] with
/// [`RedisConfig::connect_lazy`] or [`RedisConfig::connect`].
///
/// `Debug` and `Display` never show the password (it appears as `***`):
///
/// ```
/// use tower_rampart::redis::RedisConfig;
///
/// let config = RedisConfig::from_url("rediss://app:s3cret@cache.example.net:6380/2").unwrap();
/// assert_eq!(config.to_string(), "rediss://app:***@cache.example.net:6380/2");
/// assert!(!format!("{config:?}").contains("s3cret"));
/// assert!(config.is_tls());
/// ```
#[derive(Clone)]
pub struct RedisConfig {
    /// The nodes to connect to, in order; never empty. One server, or the seed nodes of a
    /// cluster (any of them tells the whole topology).
    pub(crate) seeds: Vec<Seed>,
    pub(crate) cluster: ClusterMode,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) db: i64,
    pub(crate) tls: bool,
    pub(crate) ca_pem: Option<Arc<[u8]>>,
    pub(crate) protocol: driver::ProtocolVersion,
    pub(crate) connect_timeout: Duration,
    pub(crate) command_timeout: Duration,
    /// With Redis Sentinel: the primary's name and the sentinels' password; `seeds` are
    /// then the sentinels.
    pub(crate) sentinel: Option<SentinelSettings>,
    /// The meter of the connection's metrics (`None`: the global provider's).
    #[cfg(feature = "opentelemetry")]
    pub(crate) meter: Option<opentelemetry::metrics::Meter>,
}

/// What a Sentinel configuration adds (see [`RedisConfig::from_sentinels`]).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct SentinelSettings {
    /// The name the sentinels monitor the primary under (`REDIS_SENTINEL_MASTER`).
    pub(crate) master: String,
    /// The sentinels' own password (`REDIS_SENTINEL_PASSWORD`), not the data password.
    pub(crate) password: Option<String>,
}

impl RedisConfig {
    /// Parses a `redis://` (plain) or `rediss://` (TLS) URL:
    /// `redis[s]://[[username]:password@]host[:port][/db]`, or a comma-separated list of
    /// such URLs: the seed nodes of a Redis Cluster (any one of them is enough to learn the
    /// whole cluster; several keep the start-up working while one is down).
    ///
    /// User name and password are percent-decoded. The port defaults to 6379. The error
    /// never contains the URL (it may hold a password).
    ///
    /// In a list, every URL has the same scheme; credentials and database may be given on
    /// any of them (once is enough) but must not differ; spaces around the commas are
    /// ignored.
    ///
    /// ```
    /// use tower_rampart::redis::RedisConfig;
    ///
    /// let config = RedisConfig::from_url("redis://:pw@10.0.0.5/3").unwrap();
    /// assert_eq!(config.to_string(), "redis://:***@10.0.0.5:6379/3");
    /// assert!(RedisConfig::from_url("http://10.0.0.5").is_err());
    ///
    /// let seeds = RedisConfig::from_url("redis://:pw@10.0.0.5:7000, redis://10.0.0.6:7001").unwrap();
    /// assert_eq!(seeds.seeds().count(), 2);
    /// assert_eq!(seeds.to_string(), "redis://:***@10.0.0.5:7000/0,redis://:***@10.0.0.6:7001/0");
    /// assert!(RedisConfig::from_url("redis://a:7000,rediss://b:7001").is_err());
    /// ```
    pub fn from_url(url: &str) -> Result<Self, RedisConfigError> {
        let invalid = |reason: &str| RedisConfigError::new("Redis URL", reason);
        let mut parts = url.split(',').map(str::trim);
        let mut config = parse_one_url(parts.next().unwrap_or_default())?;
        let mut position = 1;
        for part in parts {
            position += 1;
            if part.is_empty() {
                return Err(invalid(&format!("seed {position} of the list is empty")));
            }
            let other = parse_one_url(part)?;
            if other.tls != config.tls {
                return Err(invalid(
                    "the seed URLs mix redis:// and rediss://; use one scheme for every node",
                ));
            }
            merge_setting(&mut config.username, other.username, "user names")?;
            merge_setting(&mut config.password, other.password, "passwords")?;
            match (config.db, other.db) {
                (a, b) if a == b || b == 0 => {}
                (0, b) => config.db = b,
                _ => return Err(invalid("the seed URLs give different database numbers")),
            }
            if other.protocol != config.protocol {
                return Err(invalid("the seed URLs give different protocols"));
            }
            config.seeds.extend(other.seeds);
        }
        Ok(config)
    }

    /// A configuration for `host:port`: plain TCP, no credentials, database 0, default
    /// timeouts (connect 1 s, command 500 ms). Adjust it with the builder methods.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_rampart::redis::RedisConfig;
    ///
    /// let config = RedisConfig::from_parts("mycache.redis.cache.windows.net", 6380)
    ///     .tls(true)
    ///     .password("access-key")
    ///     .command_timeout(Duration::from_millis(250));
    /// assert_eq!(config.to_string(), "rediss://:***@mycache.redis.cache.windows.net:6380/0");
    /// ```
    pub fn from_parts(host: impl Into<String>, port: u16) -> Self {
        Self {
            seeds: vec![Seed {
                host: host.into(),
                port,
            }],
            cluster: ClusterMode::Auto,
            username: None,
            password: None,
            db: 0,
            tls: false,
            ca_pem: None,
            protocol: driver::ProtocolVersion::RESP2,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            sentinel: None,
            #[cfg(feature = "opentelemetry")]
            meter: None,
        }
    }

    /// A configuration for a primary found through Redis Sentinel: `master` is the name the
    /// sentinels monitor it under, `sentinels` their addresses, asked in order. The data
    /// password, user name, database and TLS are set with the usual builder methods and
    /// apply to the primary; [`RedisConfig::sentinel_password`] is the sentinels' own
    /// password. TLS (and a CA) applies to the sentinels and to the primary alike.
    ///
    /// The connection asks the sentinels for the primary's address
    /// (`SENTINEL get-master-addr-by-name`), checks with `ROLE` that it is a primary, and
    /// asks again after every lost connection and whenever the sentinels name another
    /// primary (see the [module docs](super#redis-sentinel)).
    ///
    /// Fails when the master name is empty or holds spaces, when no sentinel is given, or
    /// when a sentinel has no host or port 0.
    ///
    /// ```
    /// use tower_rampart::redis::RedisConfig;
    ///
    /// let config = RedisConfig::from_sentinels("mymaster", [("10.0.0.5", 26379), ("10.0.0.6", 26379)])
    ///     .unwrap()
    ///     .password("data-password")
    ///     .sentinel_password("sentinel-password");
    /// assert_eq!(config.sentinel_master(), Some("mymaster"));
    /// assert_eq!(config.to_string(), "redis+sentinel://:***@10.0.0.5:26379,10.0.0.6:26379/mymaster/0");
    /// assert!(RedisConfig::from_sentinels("", [("10.0.0.5", 26379)]).is_err());
    /// assert!(RedisConfig::from_sentinels("mymaster", Vec::<(String, u16)>::new()).is_err());
    /// ```
    pub fn from_sentinels(
        master: impl Into<String>,
        sentinels: impl IntoIterator<Item = (impl Into<String>, u16)>,
    ) -> Result<Self, RedisConfigError> {
        let invalid = |reason: &str| RedisConfigError::new("Sentinel configuration", reason);
        let master = master.into();
        check_master_name(&master).map_err(|r| invalid(&r))?;
        let mut seeds = Vec::new();
        for (host, port) in sentinels {
            let host: String = host.into();
            let host = host
                .trim()
                .trim_matches(|c| c == '[' || c == ']')
                .to_owned();
            if host.is_empty() {
                return Err(invalid("a sentinel has no host"));
            }
            if port == 0 {
                return Err(invalid(&format!("sentinel {host} has port 0")));
            }
            seeds.push(Seed { host, port });
        }
        if seeds.is_empty() {
            return Err(invalid("no sentinel address"));
        }
        let mut config = Self::from_parts("", 0);
        config.seeds = seeds;
        config.sentinel = Some(SentinelSettings {
            master,
            password: None,
        });
        Ok(config)
    }

    /// The sentinels' own password (`requirepass` of the sentinels,
    /// `REDIS_SENTINEL_PASSWORD`); the primary's password stays [`RedisConfig::password`].
    /// Has no effect without [`RedisConfig::from_sentinels`].
    pub fn sentinel_password(mut self, password: impl Into<String>) -> Self {
        if let Some(sentinel) = &mut self.sentinel {
            sentinel.password = Some(password.into());
        }
        self
    }

    /// The primary's name with Redis Sentinel, `None` otherwise.
    pub fn sentinel_master(&self) -> Option<&str> {
        self.sentinel.as_ref().map(|s| s.master.as_str())
    }

    /// Whether the primary is found through Redis Sentinel ([`RedisConfig::from_sentinels`]).
    pub fn is_sentinel(&self) -> bool {
        self.sentinel.is_some()
    }

    /// Sets the password (`AUTH`); for Azure Cache for Redis, the access key.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Sets the ACL user name (Redis 6+); without it `AUTH` uses the `default` user.
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// Turns TLS on or off. With TLS on, the server certificate is verified against the
    /// system trust store, or only against [`RedisConfig::ca_certificate_pem`] if set.
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }

    /// Selects the logical database (`SELECT db`).
    pub fn database(mut self, db: i64) -> Self {
        self.db = db;
        self
    }

    /// Trusts the CA certificate(s) in this PEM for TLS, **instead of** the system trust
    /// store: for a private CA, or the CA a test generated. Has no effect without TLS.
    ///
    /// A malformed PEM is reported by [`RedisConfig::connect_lazy`].
    pub fn ca_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into().into());
        self
    }

    /// Time allowed to establish a connection (TCP, TLS handshake, `AUTH`, `SELECT`).
    /// Default 1 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The meter of the connection's metrics (`rampart.redis.*`, see
    /// [`telemetry`](crate::telemetry)). Default: the global provider's, taken when the
    /// connection is created ([`connect`](Self::connect) and its siblings).
    #[cfg(feature = "opentelemetry")]
    #[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
    pub fn meter(mut self, meter: opentelemetry::metrics::Meter) -> Self {
        self.meter = Some(meter);
        self
    }

    /// Time allowed for one command, pipeline or script call, from sending to the full
    /// reply. Default 500 ms; see the [module docs](super#timeouts-and-failures) for why.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Whether connections use TLS (`rediss://`).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Whether the server is a Redis Cluster: [`ClusterMode::Auto`] (the default) asks the
    /// server on the first successful connection. A non-zero [database](Self::database)
    /// with [`ClusterMode::Enabled`] is refused by [`RedisConfig::connect_lazy`] (a cluster
    /// has only database 0), and so is [`ClusterMode::Enabled`] with Sentinel
    /// ([`RedisConfig::from_sentinels`], which never asks: the sentinels name one primary).
    ///
    /// ```
    /// use tower_rampart::redis::{ClusterMode, RedisConfig};
    ///
    /// let config = RedisConfig::from_url("redis://10.0.0.5:7000,redis://10.0.0.6:7000")
    ///     .unwrap()
    ///     .cluster(ClusterMode::Enabled);
    /// assert_eq!(config.cluster_mode(), ClusterMode::Enabled);
    /// assert!(config.clone().database(1).connect_lazy().is_err());
    /// ```
    pub fn cluster(mut self, mode: ClusterMode) -> Self {
        self.cluster = mode;
        self
    }

    /// Adds a seed node (same credentials, TLS and database as the others): another node
    /// of the cluster to ask for the topology, another server to try in order, or (with
    /// [`RedisConfig::from_sentinels`]) another sentinel.
    pub fn seed(mut self, host: impl Into<String>, port: u16) -> Self {
        self.seeds.push(Seed {
            host: host.into(),
            port,
        });
        self
    }

    /// The cluster mode (see [`RedisConfig::cluster`]).
    pub fn cluster_mode(&self) -> ClusterMode {
        self.cluster
    }

    /// The seed nodes, `(host, port)`, in order: the server, the nodes a cluster
    /// connection starts from, or the sentinels.
    pub fn seeds(&self) -> impl Iterator<Item = (&str, u16)> {
        self.seeds.iter().map(|s| (s.host.as_str(), s.port))
    }

    /// The host name or address (of the first seed).
    pub fn host(&self) -> &str {
        &self.seeds[0].host
    }

    /// The port (of the first seed).
    pub fn port(&self) -> u16 {
        self.seeds[0].port
    }

    /// Reads the configuration from the process environment:
    ///
    /// - `REDIS_URL` if set and not empty ([`RedisConfig::from_url`]);
    /// - else `REDIS_HOST` with `REDIS_PORT`, `REDIS_PASSWORD`, `REDIS_SSL` (`true`/`false`,
    ///   `1`/`0`, `yes`/`no`), and optionally `REDIS_USERNAME` and `REDIS_DB`, as Azure
    ///   deployments set them. `REDIS_PORT` defaults to 6379, or to 6380 (the port of Azure
    ///   Cache for Redis) when `REDIS_SSL` is on;
    /// - `REDIS_CLUSTER`: `auto` (default), `true` or `false` (case-insensitive), see
    ///   [`RedisConfig::cluster`]; `true` with a non-zero database is refused;
    /// - Redis Sentinel ([`RedisConfig::from_sentinels`]) when `REDIS_SENTINELS` is set:
    ///   the sentinels as `host:port,host:port` (port 26379 when left out, `[v6]:port` for
    ///   IPv6), with `REDIS_SENTINEL_MASTER` (required: the primary's name) and optionally
    ///   `REDIS_SENTINEL_PASSWORD` (the sentinels' own password). `REDIS_PASSWORD`,
    ///   `REDIS_USERNAME` and `REDIS_DB` apply to the primary, `REDIS_SSL` to both. Sentinel
    ///   excludes `REDIS_URL`, `REDIS_HOST`/`REDIS_PORT` and `REDIS_CLUSTER=true`;
    /// - `Ok(None)` if neither `REDIS_URL`, `REDIS_HOST` nor `REDIS_SENTINELS` is set (and
    ///   none of the others).
    ///
    /// Errors name the variable and never contain the password.
    pub fn from_env() -> Result<Option<Self>, RedisConfigError> {
        Self::from_env_with(|name| std::env::var(name).ok())
    }

    /// [`RedisConfig::from_env`] reading variables through `lookup` instead of the process
    /// environment (for tests, or configuration from another source).
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use tower_rampart::redis::RedisConfig;
    ///
    /// let vars = HashMap::from([
    ///     ("REDIS_HOST", "mycache.redis.cache.windows.net"),
    ///     ("REDIS_PASSWORD", "key"),
    ///     ("REDIS_SSL", "true"),
    /// ]);
    /// let config = RedisConfig::from_env_with(|name| vars.get(name).map(|v| v.to_string()))
    ///     .unwrap()
    ///     .unwrap();
    /// assert_eq!(config.port(), 6380);
    /// assert!(config.is_tls());
    ///
    /// let err = RedisConfig::from_env_with(|name| (name == "REDIS_HOST" || name == "REDIS_PORT")
    ///     .then(|| "x".to_owned()))
    ///     .unwrap_err();
    /// assert_eq!(err.variable(), "REDIS_PORT");
    /// ```
    pub fn from_env_with<F>(lookup: F) -> Result<Option<Self>, RedisConfigError>
    where
        F: Fn(&str) -> Option<String>,
    {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let cluster = match get("REDIS_CLUSTER") {
            None => ClusterMode::Auto,
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "auto" => ClusterMode::Auto,
                "true" => ClusterMode::Enabled,
                "false" => ClusterMode::Disabled,
                _ => {
                    return Err(RedisConfigError::new(
                        "REDIS_CLUSTER",
                        &format!("{:?} is not one of auto/true/false", v.trim()),
                    ));
                }
            },
        };
        if get("REDIS_SENTINELS").is_some() {
            return Self::sentinel_from_env(&get, &lookup, cluster).map(Some);
        }
        for other in ["REDIS_SENTINEL_MASTER", "REDIS_SENTINEL_PASSWORD"] {
            if get(other).is_some() {
                return Err(RedisConfigError::new(
                    "REDIS_SENTINELS",
                    &format!("is not set, but {other} is"),
                ));
            }
        }
        let config = Self::from_env_parts(&get, &lookup)?;
        let Some(config) = config else {
            if cluster != ClusterMode::Auto {
                return Err(RedisConfigError::new(
                    "REDIS_HOST",
                    "is not set, but REDIS_CLUSTER is",
                ));
            }
            return Ok(None);
        };
        if cluster == ClusterMode::Enabled && config.db != 0 {
            let variable = if get("REDIS_URL").is_some() {
                "REDIS_URL"
            } else {
                "REDIS_DB"
            };
            return Err(RedisConfigError::new(
                variable,
                &format!(
                    "database {} with REDIS_CLUSTER=true: a Redis Cluster has only database 0",
                    config.db
                ),
            ));
        }
        Ok(Some(config.cluster(cluster)))
    }

    /// [`RedisConfig::from_env_with`] when `REDIS_SENTINELS` is set.
    fn sentinel_from_env(
        get: &impl Fn(&str) -> Option<String>,
        lookup: &impl Fn(&str) -> Option<String>,
        cluster: ClusterMode,
    ) -> Result<Self, RedisConfigError> {
        for other in ["REDIS_URL", "REDIS_HOST", "REDIS_PORT"] {
            if get(other).is_some() {
                return Err(RedisConfigError::new(
                    "REDIS_SENTINELS",
                    &format!(
                        "is set together with {other}: the sentinels name the primary, \
                         so give either REDIS_SENTINELS or a direct address"
                    ),
                ));
            }
        }
        if cluster == ClusterMode::Enabled {
            return Err(RedisConfigError::new(
                "REDIS_CLUSTER",
                "is true, but REDIS_SENTINELS is set: Sentinel and Redis Cluster exclude each other",
            ));
        }
        let sentinels = parse_sentinels(&get("REDIS_SENTINELS").unwrap_or_default())
            .map_err(|reason| RedisConfigError::new("REDIS_SENTINELS", &reason))?;
        let master = get("REDIS_SENTINEL_MASTER").ok_or_else(|| {
            RedisConfigError::new(
                "REDIS_SENTINEL_MASTER",
                "is not set (or empty), but REDIS_SENTINELS is: name the primary the sentinels monitor",
            )
        })?;
        let master = master.trim();
        check_master_name(master)
            .map_err(|reason| RedisConfigError::new("REDIS_SENTINEL_MASTER", &reason))?;
        let mut config = Self::from_sentinels(master, sentinels)
            .map_err(|e| RedisConfigError::new("REDIS_SENTINELS", &e.reason))?;
        config.tls = match get("REDIS_SSL") {
            None => false,
            Some(v) => parse_bool(&v).ok_or_else(|| {
                RedisConfigError::new(
                    "REDIS_SSL",
                    &format!("{:?} is not one of true/false/1/0/yes/no", v.trim()),
                )
            })?,
        };
        if let Some(pw) = lookup("REDIS_PASSWORD").filter(|v| !v.is_empty()) {
            config = config.password(pw);
        }
        if let Some(pw) = lookup("REDIS_SENTINEL_PASSWORD").filter(|v| !v.is_empty()) {
            config = config.sentinel_password(pw);
        }
        if let Some(user) = get("REDIS_USERNAME") {
            config = config.username(user.trim());
        }
        if let Some(db) = get("REDIS_DB") {
            config = config.database(parse_db(&db)?);
        }
        Ok(config.cluster(cluster))
    }

    /// [`RedisConfig::from_env_with`] without `REDIS_CLUSTER`.
    fn from_env_parts(
        get: &impl Fn(&str) -> Option<String>,
        lookup: &impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, RedisConfigError> {
        if let Some(url) = get("REDIS_URL") {
            return Self::from_url(&url)
                .map(Some)
                .map_err(|e| RedisConfigError::new("REDIS_URL", &e.reason));
        }
        let Some(host) = get("REDIS_HOST") else {
            for other in [
                "REDIS_PORT",
                "REDIS_PASSWORD",
                "REDIS_SSL",
                "REDIS_USERNAME",
                "REDIS_DB",
            ] {
                if get(other).is_some() {
                    return Err(RedisConfigError::new(
                        "REDIS_HOST",
                        &format!("is not set, but {other} is"),
                    ));
                }
            }
            return Ok(None);
        };
        let tls = match get("REDIS_SSL") {
            None => false,
            Some(v) => parse_bool(&v).ok_or_else(|| {
                RedisConfigError::new(
                    "REDIS_SSL",
                    &format!("{:?} is not one of true/false/1/0/yes/no", v.trim()),
                )
            })?,
        };
        let port = match get("REDIS_PORT") {
            None if tls => DEFAULT_TLS_PORT,
            None => DEFAULT_PORT,
            Some(v) => match v.trim().parse::<u16>() {
                Ok(p) if p != 0 => p,
                _ => {
                    return Err(RedisConfigError::new(
                        "REDIS_PORT",
                        &format!("{:?} is not a port number (1-65535)", v.trim()),
                    ));
                }
            },
        };
        let mut config = Self::from_parts(host.trim(), port).tls(tls);
        if let Some(pw) = lookup("REDIS_PASSWORD").filter(|v| !v.is_empty()) {
            config = config.password(pw);
        }
        if let Some(user) = get("REDIS_USERNAME") {
            config = config.username(user.trim());
        }
        if let Some(db) = get("REDIS_DB") {
            config = config.database(parse_db(&db)?);
        }
        Ok(Some(config))
    }

    /// A connection that connects on first use: never touches the network, fails only on
    /// invalid configuration (an unreadable CA PEM). Connection errors surface on the first
    /// call instead.
    ///
    /// A non-zero database with [`ClusterMode::Enabled`] is refused here
    /// ([`RedisErrorKind::Config`](super::RedisErrorKind::Config)).
    pub fn connect_lazy(&self) -> Result<RedisConnection, RedisError> {
        RedisConnection::new(self)
    }

    /// Opens a connection now and fails if it cannot (unreachable server, wrong password,
    /// TLS failure), within the connect timeout. Use it at start-up to fail fast on
    /// misconfiguration; the returned connection still reconnects by itself later.
    pub async fn connect(&self) -> Result<RedisConnection, RedisError> {
        let conn = RedisConnection::new(self)?;
        conn.connect_now().await?;
        Ok(conn)
    }

    /// `host:port` of every seed, comma-separated, for log fields.
    pub(crate) fn addrs(&self) -> String {
        let addrs: Vec<String> = self.seeds.iter().map(Seed::addr).collect();
        addrs.join(",")
    }

    /// The driver's connection info for `seed` (holds the password: never log it).
    pub(crate) fn connection_info(
        &self,
        seed: &Seed,
    ) -> Result<driver::ConnectionInfo, driver::RedisError> {
        let addr = if self.tls {
            driver::ConnectionAddr::TcpTls {
                host: seed.host.clone(),
                port: seed.port,
                insecure: false,
                tls_params: None,
            }
        } else {
            driver::ConnectionAddr::Tcp(seed.host.clone(), seed.port)
        };
        let mut settings = driver::RedisConnectionInfo::default()
            .set_db(self.db)
            .set_protocol(self.protocol);
        if let Some(user) = &self.username {
            settings = settings.set_username(user);
        }
        if let Some(pw) = &self.password {
            settings = settings.set_password(pw);
        }
        Ok(driver::IntoConnectionInfo::into_connection_info(addr)?.set_redis_settings(settings))
    }
}

/// Whether the server is a Redis Cluster (see [`RedisConfig::cluster`], `REDIS_CLUSTER`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ClusterMode {
    /// Ask the server on the first successful connection (`INFO cluster`): a cluster node
    /// gets a cluster connection, anything else the single-server connection. Until the
    /// first connection succeeds the topology is unknown, so a Redis unreachable at
    /// start-up still gives a lazy, degraded start.
    #[default]
    Auto,
    /// Always a cluster connection (`REDIS_CLUSTER=true`); database 0 only.
    Enabled,
    /// Never a cluster connection, never asks (`REDIS_CLUSTER=false`): a cluster node
    /// then answers the keys of other nodes' slots with `MOVED`, which the calls return
    /// as [`RedisErrorKind::Command`](super::RedisErrorKind::Command) errors.
    Disabled,
}

/// One node to connect to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Seed {
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl Seed {
    /// `host:port` (`[v6]:port`).
    pub(crate) fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// One `redis[s]://` URL (no list).
fn parse_one_url(url: &str) -> Result<RedisConfig, RedisConfigError> {
    let invalid = |reason: &str| RedisConfigError::new("Redis URL", reason);
    let url = url.trim();
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("redis" | "rediss" | "valkey" | "valkeys") => {}
        Some("unix" | "redis+unix" | "valkey+unix") => {
            return Err(invalid(
                "unix sockets are not supported, use redis:// or rediss://",
            ));
        }
        _ => return Err(invalid("the scheme must be redis:// or rediss://")),
    }
    let info = driver::IntoConnectionInfo::into_connection_info(url)
        // The driver's URL errors are fixed texts (plus the bad `protocol=` value); they
        // never quote the URL itself.
        .map_err(|e| invalid(&e.to_string().replace(" - InvalidClientConfig", "")))?;
    let (host, port, tls) = match info.addr() {
        driver::ConnectionAddr::Tcp(host, port) => (host.clone(), *port, false),
        driver::ConnectionAddr::TcpTls {
            host,
            port,
            insecure,
            ..
        } => {
            if *insecure {
                return Err(invalid(
                    "#insecure (no certificate verification) is not supported; \
                     trust a private CA with ca_certificate_pem instead",
                ));
            }
            (host.clone(), *port, true)
        }
        _ => return Err(invalid("only TCP addresses are supported")),
    };
    if host.is_empty() {
        return Err(invalid("the host is missing"));
    }
    let settings = info.redis_settings();
    Ok(RedisConfig {
        username: settings.username().map(str::to_owned),
        password: settings.password().map(str::to_owned),
        db: settings.db(),
        protocol: settings.protocol(),
        ..RedisConfig::from_parts(host, port).tls(tls)
    })
}

/// Merges a credential given on another seed URL: the same value, or given only once.
fn merge_setting(
    mine: &mut Option<String>,
    other: Option<String>,
    what: &str,
) -> Result<(), RedisConfigError> {
    match (mine.as_ref(), other) {
        (_, None) => Ok(()),
        (None, Some(other)) => {
            *mine = Some(other);
            Ok(())
        }
        (Some(a), Some(b)) if *a == b => Ok(()),
        (Some(_), Some(_)) => Err(RedisConfigError::new(
            "Redis URL",
            &format!("the seed URLs give different {what}; a cluster has one set of credentials"),
        )),
    }
}

/// `REDIS_DB`: a database number, 0 or more.
fn parse_db(db: &str) -> Result<i64, RedisConfigError> {
    db.trim()
        .parse::<i64>()
        .ok()
        .filter(|d| *d >= 0)
        .ok_or_else(|| {
            RedisConfigError::new(
                "REDIS_DB",
                &format!("{:?} is not a database number", db.trim()),
            )
        })
}

/// `REDIS_SENTINELS`: `host:port,host:port,...`; the port defaults to 26379; an IPv6
/// address is written `[::1]:26379`. The reason of an error names the bad entry.
fn parse_sentinels(list: &str) -> Result<Vec<(String, u16)>, String> {
    let mut sentinels = Vec::new();
    for (i, entry) in list.split(',').map(str::trim).enumerate() {
        let position = i + 1;
        if entry.is_empty() {
            return Err(format!("entry {position} of the list is empty"));
        }
        if entry.contains("://") || entry.contains('@') || entry.contains('/') {
            return Err(format!(
                "entry {position} is not host:port (give addresses, not URLs; the sentinels' \
                 password goes into REDIS_SENTINEL_PASSWORD)"
            ));
        }
        let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
            let Some((host, after)) = rest.split_once(']') else {
                return Err(format!("entry {position} ({entry:?}) misses the closing ]"));
            };
            match after {
                "" => (host, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None => return Err(format!("entry {position} ({entry:?}) is not host:port")),
                },
            }
        } else {
            match entry.split_once(':') {
                None => (entry, None),
                Some((_, port)) if port.contains(':') => {
                    return Err(format!(
                        "entry {position} ({entry:?}) is not host:port (write an IPv6 address as [addr]:port)"
                    ));
                }
                Some((host, port)) => (host, Some(port)),
            }
        };
        if host.trim().is_empty() {
            return Err(format!("entry {position} ({entry:?}) has no host"));
        }
        let port = match port {
            None => DEFAULT_SENTINEL_PORT,
            Some(port) => match port.trim().parse::<u16>() {
                Ok(p) if p != 0 => p,
                _ => {
                    return Err(format!(
                        "entry {position} ({entry:?}): {:?} is not a port number (1-65535)",
                        port.trim()
                    ));
                }
            },
        };
        sentinels.push((host.trim().to_owned(), port));
    }
    Ok(sentinels)
}

/// A primary's name as the sentinels know it: not empty, no spaces or control characters
/// (the sentinels' configuration and commands separate words by spaces).
fn check_master_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the primary's name (master name) is empty".to_owned());
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "the primary's name {name:?} holds spaces or control characters"
        ));
    }
    Ok(())
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

impl fmt::Display for RedisConfig {
    /// `redis[s]://[user:***@]host:port/db`, comma-separated for several seeds; with
    /// Sentinel `redis[s]+sentinel://[user:***@]sentinel,sentinel/master/db` (the data
    /// credentials; the sentinels' password is never shown). The password is always `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "rediss" } else { "redis" };
        if let Some(sentinel) = &self.sentinel {
            write!(f, "{scheme}+sentinel://")?;
            match (&self.username, &self.password) {
                (Some(user), Some(_)) => write!(f, "{user}:***@")?,
                (Some(user), None) => write!(f, "{user}@")?,
                (None, Some(_)) => f.write_str(":***@")?,
                (None, None) => {}
            }
            return write!(f, "{}/{}/{}", self.addrs(), sentinel.master, self.db);
        }
        for (i, seed) in self.seeds.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{scheme}://")?;
            match (&self.username, &self.password) {
                (Some(user), Some(_)) => write!(f, "{user}:***@")?,
                (Some(user), None) => write!(f, "{user}@")?,
                (None, Some(_)) => f.write_str(":***@")?,
                (None, None) => {}
            }
            write!(f, "{}/{}", seed.addr(), self.db)?;
        }
        Ok(())
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("seeds", &self.addrs())
            .field("cluster", &self.cluster)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("db", &self.db)
            .field("tls", &self.tls)
            .field(
                "ca_certificate_pem",
                &self
                    .ca_pem
                    .as_ref()
                    .map(|pem| format!("{} bytes", pem.len())),
            )
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field(
                "sentinel_master",
                &self.sentinel.as_ref().map(|s| s.master.as_str()),
            )
            .field(
                "sentinel_password",
                &self
                    .sentinel
                    .as_ref()
                    .map(|s| s.password.as_ref().map(|_| "***")),
            )
            .finish()
    }
}

/// An invalid Redis configuration value. Names the variable or field (`REDIS_PORT`,
/// `Redis URL`, ...) and never contains a password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisConfigError {
    variable: String,
    reason: String,
}

impl RedisConfigError {
    fn new(variable: &str, reason: &str) -> Self {
        Self {
            variable: variable.to_owned(),
            reason: reason.to_owned(),
        }
    }

    /// The environment variable (`REDIS_PORT`, ...) or `"Redis URL"` that is invalid.
    pub fn variable(&self) -> &str {
        &self.variable
    }
}

impl fmt::Display for RedisConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.variable, self.reason)
    }
}

impl std::error::Error for RedisConfigError {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Result<Option<RedisConfig>, RedisConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        RedisConfig::from_env_with(|name| map.get(name).cloned())
    }

    #[test]
    fn url_plain_with_password_and_db() {
        let c = RedisConfig::from_url("redis://:p%40ss@127.0.0.1:7000/4").unwrap();
        assert_eq!(c.host(), "127.0.0.1");
        assert_eq!(c.port(), 7000);
        assert_eq!(c.password.as_deref(), Some("p@ss"));
        assert_eq!(c.username, None);
        assert_eq!(c.db, 4);
        assert!(!c.is_tls());
        assert_eq!(c.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(c.command_timeout, DEFAULT_COMMAND_TIMEOUT);
    }

    #[test]
    fn url_tls_with_user_and_default_port() {
        let c = RedisConfig::from_url("rediss://alice:secret@cache.example.net").unwrap();
        assert!(c.is_tls());
        assert_eq!(c.port(), 6379);
        assert_eq!(c.username.as_deref(), Some("alice"));
        assert_eq!(c.password.as_deref(), Some("secret"));
        assert_eq!(c.to_string(), "rediss://alice:***@cache.example.net:6379/0");
    }

    #[test]
    fn url_ipv6_host() {
        let c = RedisConfig::from_url("redis://[::1]:6390").unwrap();
        assert_eq!(c.host(), "::1");
        assert_eq!(c.to_string(), "redis://[::1]:6390/0");
    }

    #[test]
    fn bad_urls_are_rejected_without_echoing_the_password() {
        for url in [
            "http://:hunter2@host",
            "hunter2",
            "redis://:hunter2@host/notadb",
            "rediss://:hunter2@host/#insecure",
            "unix:///tmp/hunter2.sock",
            "redis://:hunter2@",
        ] {
            let err = RedisConfig::from_url(url).unwrap_err();
            assert_eq!(err.variable(), "Redis URL", "{url}");
            assert!(!err.to_string().contains("hunter2"), "{url}: {err}");
            assert!(!format!("{err:?}").contains("hunter2"), "{url}: {err:?}");
        }
    }

    #[test]
    fn debug_and_display_hide_password() {
        let c = RedisConfig::from_parts("h", 1)
            .username("u")
            .password("hunter2")
            .ca_certificate_pem(b"-----BEGIN CERTIFICATE-----".to_vec());
        let shown = format!("{c} {c:?} {c:#?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
        assert_eq!(c.to_string(), "redis://u:***@h:1/0");
    }

    #[test]
    fn from_parts_builder() {
        let c = RedisConfig::from_parts("h", 6380)
            .tls(true)
            .database(2)
            .connect_timeout(Duration::from_secs(3))
            .command_timeout(Duration::from_millis(100));
        assert!(c.is_tls());
        assert_eq!(c.db, 2);
        assert_eq!(c.connect_timeout, Duration::from_secs(3));
        assert_eq!(c.command_timeout, Duration::from_millis(100));
        assert_eq!(c.password, None);
    }

    #[test]
    fn env_none_when_unset() {
        assert!(env(&[]).unwrap().is_none());
        assert!(env(&[("REDIS_URL", "  ")]).unwrap().is_none());
    }

    #[test]
    fn env_url_wins_over_parts() {
        let c = env(&[
            ("REDIS_URL", "redis://:pw@a:1"),
            ("REDIS_HOST", "b"),
            ("REDIS_PORT", "2"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((c.host(), c.port()), ("a", 1));
        assert_eq!(c.password.as_deref(), Some("pw"));
    }

    #[test]
    fn env_bad_url_names_the_variable_not_the_password() {
        let err = env(&[("REDIS_URL", "http://:hunter2@a")]).unwrap_err();
        assert_eq!(err.variable(), "REDIS_URL");
        assert!(err.to_string().starts_with("invalid REDIS_URL"), "{err}");
        assert!(!err.to_string().contains("hunter2"));
    }

    #[test]
    fn env_azure_parts() {
        let c = env(&[
            ("REDIS_HOST", "x.redis.cache.windows.net"),
            ("REDIS_PASSWORD", "k3y"),
            ("REDIS_SSL", "True"),
        ])
        .unwrap()
        .unwrap();
        assert!(c.is_tls());
        assert_eq!(c.port(), 6380);
        assert_eq!(c.password.as_deref(), Some("k3y"));

        let c = env(&[("REDIS_HOST", "h"), ("REDIS_SSL", "0")])
            .unwrap()
            .unwrap();
        assert!(!c.is_tls());
        assert_eq!(c.port(), 6379);
        assert_eq!(c.password, None);

        let c = env(&[
            ("REDIS_HOST", "h"),
            ("REDIS_PORT", "6400"),
            ("REDIS_SSL", "1"),
            ("REDIS_USERNAME", "app"),
            ("REDIS_DB", "3"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.port(), 6400);
        assert!(c.is_tls());
        assert_eq!(c.username.as_deref(), Some("app"));
        assert_eq!(c.db, 3);
    }

    #[test]
    fn env_invalid_values_name_the_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("REDIS_HOST", "h"), ("REDIS_PORT", "http")], "REDIS_PORT"),
            (&[("REDIS_HOST", "h"), ("REDIS_PORT", "0")], "REDIS_PORT"),
            (
                &[("REDIS_HOST", "h"), ("REDIS_PORT", "70000")],
                "REDIS_PORT",
            ),
            (&[("REDIS_HOST", "h"), ("REDIS_SSL", "maybe")], "REDIS_SSL"),
            (&[("REDIS_HOST", "h"), ("REDIS_DB", "-1")], "REDIS_DB"),
            (&[("REDIS_PASSWORD", "hunter2")], "REDIS_HOST"),
        ];
        for (vars, variable) in cases {
            let mut all = vars.to_vec();
            all.push(("REDIS_PASSWORD", "hunter2"));
            let err = env(&all).unwrap_err();
            assert_eq!(err.variable(), *variable, "{vars:?}");
            assert!(err.to_string().contains(variable), "{err}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn seed_lists() {
        let c =
            RedisConfig::from_url(" redis://:pw@a:7000 ,redis://b:7001,  redis://:pw@c:7002/0 ")
                .unwrap();
        let seeds: Vec<_> = c.seeds().collect();
        assert_eq!(seeds, [("a", 7000), ("b", 7001), ("c", 7002)]);
        assert_eq!(c.password.as_deref(), Some("pw"));
        assert_eq!((c.host(), c.port()), ("a", 7000));
        assert_eq!(
            c.to_string(),
            "redis://:***@a:7000/0,redis://:***@b:7001/0,redis://:***@c:7002/0"
        );
        // Credentials on a later seed only.
        let c = RedisConfig::from_url("rediss://a:1,rediss://u:hunter2@b:2").unwrap();
        assert!(c.is_tls());
        assert_eq!(c.username.as_deref(), Some("u"));
        assert_eq!(c.password.as_deref(), Some("hunter2"));
        let shown = format!("{c} {c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        // A database given once applies to all.
        assert_eq!(
            RedisConfig::from_url("redis://a:1,redis://b:2/3")
                .unwrap()
                .db,
            3
        );
    }

    #[test]
    fn bad_seed_lists_are_rejected_without_the_password() {
        for url in [
            "redis://:hunter2@a:1,rediss://b:2",
            "redis://:hunter2@a:1,redis://:other@b:2",
            "redis://u:hunter2@a:1,redis://v:hunter2@b:2",
            "redis://:hunter2@a:1/1,redis://b:2/2",
            "redis://:hunter2@a:1,,redis://b:2",
            "redis://:hunter2@a:1,",
            "redis://:hunter2@a:1,http://b",
        ] {
            let err = RedisConfig::from_url(url).unwrap_err();
            assert_eq!(err.variable(), "Redis URL", "{url}");
            assert!(!err.to_string().contains("hunter2"), "{url}: {err}");
            assert!(!err.to_string().contains("other"), "{url}: {err}");
        }
    }

    #[test]
    fn cluster_mode_from_env() {
        assert_eq!(
            env(&[("REDIS_URL", "redis://a:1")])
                .unwrap()
                .unwrap()
                .cluster,
            ClusterMode::Auto
        );
        for (value, mode) in [
            ("auto", ClusterMode::Auto),
            ("TRUE", ClusterMode::Enabled),
            (" false ", ClusterMode::Disabled),
        ] {
            let c = env(&[("REDIS_HOST", "h"), ("REDIS_CLUSTER", value)])
                .unwrap()
                .unwrap();
            assert_eq!(c.cluster_mode(), mode, "{value}");
        }
        for vars in [
            &[
                ("REDIS_URL", "redis://:hunter2@a:1"),
                ("REDIS_CLUSTER", "yes"),
            ][..],
            &[
                ("REDIS_URL", "redis://:hunter2@a:1"),
                ("REDIS_CLUSTER", "1"),
            ][..],
        ] {
            let err = env(vars).unwrap_err();
            assert_eq!(err.variable(), "REDIS_CLUSTER");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
        // REDIS_CLUSTER alone configures nothing: a mistake, named.
        assert_eq!(
            env(&[("REDIS_CLUSTER", "true")]).unwrap_err().variable(),
            "REDIS_HOST"
        );
        // A database with the cluster mode on is refused, naming where it came from.
        let err = env(&[
            ("REDIS_URL", "redis://:hunter2@a:1/2"),
            ("REDIS_CLUSTER", "true"),
        ])
        .unwrap_err();
        assert_eq!(err.variable(), "REDIS_URL");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = env(&[
            ("REDIS_HOST", "h"),
            ("REDIS_DB", "2"),
            ("REDIS_CLUSTER", "true"),
        ])
        .unwrap_err();
        assert_eq!(err.variable(), "REDIS_DB");
        // Auto and false keep the database (auto refuses it only against a cluster).
        let c = env(&[("REDIS_HOST", "h"), ("REDIS_DB", "2")])
            .unwrap()
            .unwrap();
        assert_eq!(c.db, 2);
    }

    #[test]
    fn builder_seeds_and_mode() {
        let c = RedisConfig::from_parts("a", 1)
            .seed("b", 2)
            .cluster(ClusterMode::Enabled);
        assert_eq!(c.seeds().count(), 2);
        assert_eq!(c.cluster_mode(), ClusterMode::Enabled);
        assert_eq!(c.to_string(), "redis://a:1/0,redis://b:2/0");
        assert!(c.clone().database(1).connect_lazy().is_err());
        assert!(c.connect_lazy().is_ok());
    }

    #[test]
    fn sentinel_from_env() {
        let c = env(&[
            (
                "REDIS_SENTINELS",
                " 10.0.0.5:26380, sentinel-b ,[::1]:5000 ",
            ),
            ("REDIS_SENTINEL_MASTER", " mymaster "),
            ("REDIS_SENTINEL_PASSWORD", "s3ntinel"),
            ("REDIS_PASSWORD", "hunter2"),
            ("REDIS_SSL", "true"),
            ("REDIS_DB", "2"),
        ])
        .unwrap()
        .unwrap();
        assert!(c.is_sentinel());
        assert_eq!(c.sentinel_master(), Some("mymaster"));
        let seeds: Vec<_> = c.seeds().collect();
        assert_eq!(
            seeds,
            [("10.0.0.5", 26380), ("sentinel-b", 26379), ("::1", 5000)]
        );
        assert!(c.is_tls());
        assert_eq!(c.db, 2);
        assert_eq!(c.password.as_deref(), Some("hunter2"));
        let sentinel = c.sentinel.as_ref().unwrap();
        assert_eq!(sentinel.password.as_deref(), Some("s3ntinel"));
        let shown = format!("{c} {c:?} {c:#?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3ntinel"),
            "{shown}"
        );
        assert_eq!(
            c.to_string(),
            "rediss+sentinel://:***@10.0.0.5:26380,sentinel-b:26379,[::1]:5000/mymaster/2"
        );
        // No passwords, REDIS_CLUSTER=false or auto is accepted (and means nothing here).
        let c = env(&[
            ("REDIS_SENTINELS", "a:1"),
            ("REDIS_SENTINEL_MASTER", "m"),
            ("REDIS_CLUSTER", "false"),
        ])
        .unwrap()
        .unwrap();
        assert!(!c.is_tls());
        assert_eq!(c.password, None);
        assert_eq!(c.sentinel.as_ref().unwrap().password, None);
        assert!(c.connect_lazy().is_ok());
    }

    #[test]
    fn bad_sentinel_settings_name_the_variable() {
        let base = [
            ("REDIS_SENTINELS", "a:26379"),
            ("REDIS_SENTINEL_MASTER", "m"),
        ];
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("REDIS_SENTINELS", "a:26379")], "REDIS_SENTINEL_MASTER"),
            (
                &[
                    ("REDIS_SENTINELS", "a:26379"),
                    ("REDIS_SENTINEL_MASTER", " "),
                ],
                "REDIS_SENTINEL_MASTER",
            ),
            (
                &[
                    ("REDIS_SENTINELS", "a"),
                    ("REDIS_SENTINEL_MASTER", "my master"),
                ],
                "REDIS_SENTINEL_MASTER",
            ),
            (&[("REDIS_SENTINEL_MASTER", "m")], "REDIS_SENTINELS"),
            (&[("REDIS_SENTINEL_PASSWORD", "x")], "REDIS_SENTINELS"),
            (&[("REDIS_SENTINELS", "a:http"), base[1]], "REDIS_SENTINELS"),
            (&[("REDIS_SENTINELS", "a:0"), base[1]], "REDIS_SENTINELS"),
            (
                &[("REDIS_SENTINELS", "a:70000"), base[1]],
                "REDIS_SENTINELS",
            ),
            (
                &[("REDIS_SENTINELS", "a:1,,b:2"), base[1]],
                "REDIS_SENTINELS",
            ),
            (&[("REDIS_SENTINELS", "a:1,"), base[1]], "REDIS_SENTINELS"),
            (&[("REDIS_SENTINELS", ":26379"), base[1]], "REDIS_SENTINELS"),
            (
                &[("REDIS_SENTINELS", "::1:26379"), base[1]],
                "REDIS_SENTINELS",
            ),
            (
                &[("REDIS_SENTINELS", "[::1:26379"), base[1]],
                "REDIS_SENTINELS",
            ),
            (
                &[("REDIS_SENTINELS", "redis://:hunter2@a:1"), base[1]],
                "REDIS_SENTINELS",
            ),
            (
                &[base[0], base[1], ("REDIS_URL", "redis://b:1")],
                "REDIS_SENTINELS",
            ),
            (&[base[0], base[1], ("REDIS_HOST", "b")], "REDIS_SENTINELS"),
            (
                &[base[0], base[1], ("REDIS_CLUSTER", "true")],
                "REDIS_CLUSTER",
            ),
            (&[base[0], base[1], ("REDIS_SSL", "maybe")], "REDIS_SSL"),
            (&[base[0], base[1], ("REDIS_DB", "x")], "REDIS_DB"),
        ];
        for (vars, variable) in cases {
            let mut all = vars.to_vec();
            all.push(("REDIS_PASSWORD", "hunter2"));
            let err = env(&all).unwrap_err();
            assert_eq!(err.variable(), *variable, "{vars:?}: {err}");
            assert!(err.to_string().contains(variable), "{err}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn sentinel_builder() {
        let c = RedisConfig::from_sentinels("m", [("a", 1), ("b", 2)])
            .unwrap()
            .seed("c", 3)
            .username("app")
            .password("pw")
            .sentinel_password("spw");
        assert_eq!(c.seeds().count(), 3);
        assert_eq!(c.to_string(), "redis+sentinel://app:***@a:1,b:2,c:3/m/0");
        assert!(c.clone().connect_lazy().is_ok());
        // Sentinel and an explicit cluster mode exclude each other.
        let err = c.cluster(ClusterMode::Enabled).connect_lazy().unwrap_err();
        assert_eq!(err.kind(), crate::redis::RedisErrorKind::Config);
        for (master, sentinels) in [
            ("", vec![("a", 1)]),
            ("m\n", vec![("a", 1)]),
            ("m", vec![]),
            ("m", vec![("", 1)]),
            ("m", vec![("a", 0)]),
        ] {
            let err = RedisConfig::from_sentinels(master, sentinels).unwrap_err();
            assert_eq!(err.variable(), "Sentinel configuration");
        }
        // The sentinels' password needs a Sentinel configuration.
        assert!(
            !RedisConfig::from_parts("h", 1)
                .sentinel_password("x")
                .is_sentinel()
        );
    }
}
