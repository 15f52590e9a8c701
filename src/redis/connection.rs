//! [`RedisConnection`]: one shared multiplexed connection with reconnects, timeouts and a
//! circuit breaker.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use ::redis as driver;
use driver::aio::{ConnectionLike, MultiplexedConnection};
use driver::cluster::ClusterClient;
use driver::cluster_async::ClusterConnection;
use driver::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use tokio::time::{Instant, timeout};

use super::breaker::{Admission, Breaker, Transition};
use super::config::{ClusterMode, RedisConfig};
use super::dedicated::DedicatedSource;
use super::error::{RedisError, RedisErrorKind};
use super::sentinel::{self, Sentinels};
use super::slot::key_slot;

/// Consecutive failures that open the circuit breaker.
const BREAKER_THRESHOLD: u32 = 3;
/// First cool-down of an open breaker; doubles after each failed probe.
const BREAKER_MIN_COOL_DOWN: Duration = Duration::from_secs(1);
/// Longest cool-down between two probes made by calls. Redis coming back is noticed sooner,
/// by the recovery watch ([`BREAKER_RECOVERY_PERIOD`]).
const BREAKER_MAX_COOL_DOWN: Duration = Duration::from_secs(5);
/// While the breaker is open, a background task sends one `PING` (connecting first) this
/// often, whatever the cool-down: the first that succeeds closes the breaker, so calls resume
/// within about this long (plus one connect) of Redis answering again, while they still fail
/// at once until then. One connection attempt per period toward a Redis that is down.
const BREAKER_RECOVERY_PERIOD: Duration = Duration::from_millis(200);
/// How often the sentinels are asked which address is the primary and whether a failover
/// is under way, while connected.
const SENTINEL_WATCH_PERIOD: Duration = Duration::from_millis(100);
/// The longest calls are held off while a sentinel reports a failover in progress (a
/// failover that neither ends nor aborts, e.g. a sentinel stuck in it).
const SENTINEL_FENCE_MAX: Duration = Duration::from_secs(10);

/// A handle to one Redis server or one Redis Cluster, cheap to clone and share between
/// tasks.
///
/// All clones share one multiplexed connection (commands of concurrent callers are
/// pipelined on it), established on first use, re-established after it breaks, with every
/// call bounded by the command timeout and a circuit breaker in front. See the
/// [module docs](super) for the behaviour on failures and for why this shape.
///
/// On a Redis Cluster the same handle holds the driver's cluster connection (one
/// multiplexed connection per node) and routes every command, script and pipeline by its
/// first key; see the [module docs](super#redis-cluster).
///
/// Behind Redis Sentinel it holds one multiplexed connection to the primary the sentinels
/// name, and follows the primary across failovers; see the
/// [module docs](super#redis-sentinel).
///
/// Create it with [`RedisConfig::connect_lazy`] or [`RedisConfig::connect`].
#[derive(Clone)]
pub struct RedisConnection {
    inner: Arc<Inner>,
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

/// The result of [`RedisConnection::health_check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisHealth {
    /// `PING` answered.
    Connected {
        /// Time until `PING` answered (including a reconnect if one was needed).
        latency: Duration,
    },
    /// `PING` failed; `reason` says why and never contains a secret.
    Disconnected {
        /// What went wrong, e.g. `redis unavailable: Connection refused (os error 111)`.
        reason: String,
    },
}

impl RedisHealth {
    /// Whether `PING` answered (on a cluster: every master serving slots answered).
    pub fn is_connected(&self) -> bool {
        matches!(self, Self::Connected { .. })
    }
}

/// What a [`RedisConnection`] talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Topology {
    /// One Redis server (or a cluster-mode proxy that hides the cluster).
    Single,
    /// A Redis Cluster: commands are routed by hash slot.
    Cluster,
    /// A primary found through Redis Sentinel, followed across failovers.
    Sentinel,
}

impl Topology {
    /// `"single"`, `"cluster"` or `"sentinel"`, as the gateway's `/health` reports it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Cluster => "cluster",
            Self::Sentinel => "sentinel",
        }
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many nodes a health check needed and how many answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeCounts {
    /// Nodes that must answer: 1 for a single server and for the primary behind Sentinel;
    /// on a cluster, the masters serving slots (as the cluster reported them in the last
    /// check that reached it).
    pub expected: usize,
    /// Of those, how many answered `PING` (behind Sentinel: `ROLE`, as a primary) within
    /// the command timeout.
    pub reachable: usize,
}

/// The result of [`RedisConnection::health_report`]: [`RedisHealth`] plus the topology
/// and the node counts.
///
/// `RedisHealth` itself keeps its two variants and fields as they were (code matching
/// `RedisHealth::Connected { latency }` keeps compiling); the node counts live here.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthReport {
    /// Connected only if every node in [`HealthReport::nodes`] answered.
    pub health: RedisHealth,
    /// `None` until the topology is known (first successful connection, unless the
    /// configuration says it).
    pub topology: Option<Topology>,
    /// `None` while not even the cluster's list of masters could be read (and none was
    /// read before).
    pub nodes: Option<NodeCounts>,
}

/// The driver connection a call runs on.
#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    Cluster {
        conn: ClusterConnection,
        /// The slot of the last `EVALSHA` sent through this handle (each call runs on its
        /// own clone): a `SCRIPT LOAD` that follows its `NOSCRIPT` goes to that slot's
        /// master only, not to every node (one dead node would fail it there).
        script_slot: Option<u16>,
        /// The source of the last script loaded through this handle (its `SCRIPT LOAD`
        /// follows a `NOSCRIPT`), for [`Conn::eval_instead`].
        script_source: Option<Vec<u8>>,
        /// Set by [`Conn::eval_instead`]: an `EVALSHA` of the script in `script_source` is
        /// sent as `EVAL` with its source.
        eval: bool,
    },
}

impl Conn {
    fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster { .. })
    }

    /// After a `NOSCRIPT` that loading the script on its slot's master did not cure: the
    /// node that answered is another one, a migration's target reached through `ASK` (the
    /// slot map still names the source, so the load went there). From now on this handle
    /// sends the script as `EVAL` with its source: whichever node runs it, it runs (and
    /// that node caches the script for the `EVALSHA`s after it). Returns whether it switched
    /// now (a script was loaded through this handle, and it did not switch before).
    fn eval_instead(&mut self) -> bool {
        match self {
            Self::Cluster {
                script_source: Some(_),
                eval,
                ..
            } if !*eval => {
                *eval = true;
                true
            }
            _ => false,
        }
    }
}

/// `EVAL source numkeys key... arg...` for `EVALSHA sha numkeys key... arg...`.
fn evalsha_as_eval(cmd: &driver::Cmd, source: &[u8]) -> Option<driver::Cmd> {
    let mut args = args_of(cmd);
    let name = args.next()?;
    if !name.eq_ignore_ascii_case(b"EVALSHA") {
        return None;
    }
    let _sha = args.next()?;
    let mut eval = driver::cmd("EVAL");
    eval.arg(source);
    for arg in args {
        eval.arg(arg);
    }
    Some(eval)
}

/// The arguments of `cmd` (a cursor argument reads as empty).
fn args_of(cmd: &driver::Cmd) -> impl Iterator<Item = &[u8]> {
    cmd.args_iter().map(|a| match a {
        driver::Arg::Simple(bytes) => bytes,
        _ => &[][..],
    })
}

/// The slot of the first key of an `EVALSHA`/`EVAL` (`EVALSHA sha numkeys key ...`).
fn script_key_slot(cmd: &driver::Cmd) -> Option<u16> {
    let mut args = args_of(cmd);
    let name = args.next()?;
    if !(name.eq_ignore_ascii_case(b"EVALSHA") || name.eq_ignore_ascii_case(b"EVAL")) {
        return None;
    }
    let _script = args.next()?;
    let numkeys: usize = std::str::from_utf8(args.next()?).ok()?.parse().ok()?;
    if numkeys == 0 {
        return None;
    }
    Some(key_slot(args.next()?))
}

fn is_script_load(cmd: &driver::Cmd) -> bool {
    let mut args = args_of(cmd);
    args.next()
        .is_some_and(|a| a.eq_ignore_ascii_case(b"SCRIPT"))
        && args.next().is_some_and(|a| a.eq_ignore_ascii_case(b"LOAD"))
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a driver::Cmd,
    ) -> driver::RedisFuture<'a, driver::Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster {
                conn,
                script_slot,
                script_source,
                eval,
            } => {
                if let Some(slot) = script_key_slot(cmd) {
                    *script_slot = Some(slot);
                    if let Some(eval) = script_source
                        .as_deref()
                        .filter(|_| *eval)
                        .and_then(|source| evalsha_as_eval(cmd, source))
                    {
                        return Box::pin(async move { conn.req_packed_command(&eval).await });
                    }
                } else if let Some(slot) = script_slot.filter(|_| is_script_load(cmd)) {
                    *script_source = args_of(cmd).nth(2).map(<[u8]>::to_vec);
                    let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                        Route::new(slot, SlotAddr::Master),
                    ));
                    return Box::pin(conn.route_command(cmd.clone(), routing));
                }
                conn.req_packed_command(cmd)
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a driver::Pipeline,
        offset: usize,
        count: usize,
    ) -> driver::RedisFuture<'a, Vec<driver::Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster { conn, .. } => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster { conn, .. } => conn.get_db(),
        }
    }
}

/// The masters serving slots in a `CLUSTER SLOTS` reply (`[[start, end, [host, port, id,
/// ...], replicas...], ...]`), as `(host, port)`.
fn masters_of(reply: &driver::Value) -> Vec<(String, u16)> {
    use driver::Value as V;
    let mut masters: Vec<(String, u16)> = Vec::new();
    let V::Array(ranges) = reply else {
        return masters;
    };
    for range in ranges {
        let V::Array(fields) = range else { continue };
        let Some(V::Array(master)) = fields.get(2) else {
            continue;
        };
        let host = match master.first() {
            Some(V::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(V::SimpleString(s)) => s.clone(),
            _ => continue,
        };
        let Some(port) = master.get(1).and_then(|p| match p {
            V::Int(port) => u16::try_from(*port).ok(),
            _ => None,
        }) else {
            continue;
        };
        if !masters.iter().any(|(h, p)| *h == host && *p == port) {
            masters.push((host, port));
        }
    }
    masters
}

const TOPOLOGY_UNKNOWN: u8 = 0;
const TOPOLOGY_SINGLE: u8 = 1;
const TOPOLOGY_CLUSTER: u8 = 2;
const TOPOLOGY_SENTINEL: u8 = 3;

#[derive(Clone)]
struct Slot {
    conn: Conn,
    generation: u64,
    /// Behind Sentinel: the primary's `host:port` this connection goes to.
    primary: Option<Arc<str>>,
}

/// A call admitted by the breaker, holding the connection it runs on.
struct Lease {
    conn: Conn,
    generation: u64,
    probe: bool,
}

struct Inner {
    /// One client per seed, tried in order (single-server connections and detection).
    clients: Vec<driver::Client>,
    /// The cluster client (all seeds), unless the mode is [`ClusterMode::Disabled`].
    cluster_client: Option<ClusterClient>,
    mode: ClusterMode,
    db: i64,
    /// `TOPOLOGY_*`: unknown until the first connection in [`ClusterMode::Auto`].
    topology: AtomicU8,
    /// Masters serving slots at the last cluster health check that read them (0: never).
    last_masters: AtomicUsize,
    /// The "database on a cluster" error is logged once.
    db_refusal_logged: AtomicBool,
    async_config: driver::AsyncConnectionConfig,
    addr: String,
    tls: bool,
    /// Only used to scrub driver messages.
    password: Option<String>,
    connect_timeout: Duration,
    command_timeout: Duration,
    slot: RwLock<Option<Slot>>,
    /// Held while a connection is being established: one attempt in flight at a time.
    connecting: tokio::sync::Mutex<()>,
    /// Number of finished connection attempts, and the error of the last failed one.
    attempts: AtomicU64,
    last_connect_error: Mutex<Option<RedisError>>,
    generation: AtomicU64,
    ever_connected: AtomicBool,
    breaker: Breaker,
    /// Where dedicated connections come from ([`RedisConnection::dedicated_source`]).
    dedicated: DedicatedSource,
    /// With Redis Sentinel: the sentinels and the master name.
    sentinels: Option<Sentinels>,
    /// The primary of the last successful Sentinel connection (to log a change once).
    last_primary: Mutex<Option<Arc<str>>>,
    /// Whether the task that watches the sentinels' answer runs.
    watching: AtomicBool,
    /// Whether the task that probes for recovery while the breaker is open runs.
    recovering: AtomicBool,
    /// Set while a sentinel reports a failover of the primary in progress: calls fail at
    /// once instead of writing to a primary about to be demoted (its writes would be lost).
    fenced: AtomicBool,
    /// This `Inner`, for the watch task (which must not keep it alive).
    me: Weak<Inner>,
    #[cfg(feature = "opentelemetry")]
    metrics: super::metrics::RedisMetrics,
}

#[cfg(feature = "opentelemetry")]
impl super::metrics::BreakerState for Inner {
    fn gauge_value(&self) -> i64 {
        self.breaker.gauge_value(Instant::now())
    }
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let connected = self.slot.read().map(|s| s.is_some()).unwrap_or(false);
        f.debug_struct("RedisConnection")
            .field("addr", &self.addr)
            .field("cluster_mode", &self.mode)
            .field("topology", &self.topology())
            .field("tls", &self.tls)
            .field("connected", &connected)
            .field("breaker_closed", &self.breaker.is_closed())
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .finish_non_exhaustive()
    }
}

impl RedisConnection {
    pub(crate) fn new(config: &RedisConfig) -> Result<Self, RedisError> {
        let password = config.password.clone();
        let config_error = |e: driver::RedisError| {
            RedisError::from_driver(&e, password.as_deref()).with_kind(RedisErrorKind::Config)
        };
        if config.sentinel.is_some() && config.cluster == ClusterMode::Enabled {
            return Err(RedisError::new(
                RedisErrorKind::Config,
                "Sentinel with cluster mode enabled: the sentinels name one primary, \
                 a Redis Cluster has none; choose one",
            ));
        }
        if config.cluster == ClusterMode::Enabled && config.db != 0 {
            return Err(RedisError::new(
                RedisErrorKind::Config,
                format!(
                    "database {} with cluster mode enabled: a Redis Cluster has only database 0",
                    config.db
                ),
            ));
        }
        let root_cert = match (&config.ca_pem, config.tls) {
            (Some(pem), true) => {
                ensure_crypto_provider()?;
                if !pem
                    .windows(b"-----BEGIN CERTIFICATE-----".len())
                    .any(|w| w == b"-----BEGIN CERTIFICATE-----")
                {
                    return Err(RedisError::new(
                        RedisErrorKind::Config,
                        "ca_certificate_pem holds no PEM certificate",
                    ));
                }
                Some(pem.to_vec())
            }
            (_, tls) => {
                if tls {
                    ensure_crypto_provider()?;
                }
                None
            }
        };
        let sentinels = Sentinels::new(config, root_cert.clone()).map_err(config_error)?;
        // Behind Sentinel the seeds are the sentinels: no data client for them.
        let data_seeds = if sentinels.is_some() {
            &[][..]
        } else {
            &config.seeds[..]
        };
        let mut infos = Vec::with_capacity(data_seeds.len());
        let mut clients = Vec::with_capacity(data_seeds.len());
        for seed in data_seeds {
            let info = config.connection_info(seed).map_err(config_error)?;
            infos.push(info.clone());
            let client = match &root_cert {
                Some(pem) => driver::Client::build_with_tls(
                    info,
                    driver::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem.clone()),
                    },
                )
                .map_err(config_error)?,
                None => driver::Client::open(info).map_err(config_error)?,
            };
            clients.push(client);
        }
        // What the dedicated connections of blocking calls are opened from (see `dedicated`).
        let dedicated = DedicatedSource {
            clients: clients.clone(),
            cluster_seeds: infos.clone(),
            root_cert: root_cert.clone(),
            connect_timeout: config.connect_timeout,
            password: config.password.clone(),
            addr: config.addrs(),
        };
        let cluster_client = match config.cluster {
            _ if sentinels.is_some() => None,
            ClusterMode::Disabled => None,
            // Database 0 for the cluster client: a non-zero database is refused above
            // (Enabled) or when the server turns out to be a cluster (Auto).
            ClusterMode::Auto | ClusterMode::Enabled => {
                let infos = infos.into_iter().map(|info| {
                    let settings = info.redis_settings().clone().set_db(0);
                    info.set_redis_settings(settings)
                });
                // The driver waits between its own resends (`TRYAGAIN`, `CLUSTERDOWN`, a
                // node reconnecting) at least 1.28 s by default: longer than a command timeout,
                // so a slot half migrated or a failover under way turned every such call
                // into a timeout. Short waits (5 ms, doubling, at most 50 ms) keep them
                // within it.
                let mut builder = ClusterClient::builder(infos)
                    .connection_timeout(config.connect_timeout)
                    .response_timeout(config.command_timeout)
                    .min_retry_wait(DRIVER_MIN_RETRY_WAIT_MS)
                    .max_retry_wait(DRIVER_MAX_RETRY_WAIT_MS)
                    .retry_wait_formula(DRIVER_MIN_RETRY_WAIT_MS, 2)
                    .retries(DRIVER_RETRIES);
                if let Some(pem) = &root_cert {
                    builder = builder.certs(driver::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem.clone()),
                    });
                }
                Some(builder.build().map_err(config_error)?)
            }
        };
        let topology = match config.cluster {
            _ if sentinels.is_some() => TOPOLOGY_SENTINEL,
            ClusterMode::Auto => TOPOLOGY_UNKNOWN,
            ClusterMode::Enabled => TOPOLOGY_CLUSTER,
            ClusterMode::Disabled => TOPOLOGY_SINGLE,
        };
        let async_config = driver::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.command_timeout));
        // Behind Sentinel a connect asks the sentinels first, then the primary.
        let connect_budget = if sentinels.is_some() {
            config.connect_timeout * 2
        } else {
            config.connect_timeout
        };
        Ok(Self {
            inner: Arc::new_cyclic(|me| Inner {
                clients,
                cluster_client,
                mode: config.cluster,
                db: config.db,
                topology: AtomicU8::new(topology),
                last_masters: AtomicUsize::new(0),
                db_refusal_logged: AtomicBool::new(false),
                async_config,
                addr: config.addrs(),
                tls: config.tls,
                password,
                connect_timeout: config.connect_timeout,
                command_timeout: config.command_timeout,
                slot: RwLock::new(None),
                connecting: tokio::sync::Mutex::new(()),
                attempts: AtomicU64::new(0),
                last_connect_error: Mutex::new(None),
                generation: AtomicU64::new(0),
                ever_connected: AtomicBool::new(false),
                breaker: Breaker::new(
                    BREAKER_THRESHOLD,
                    BREAKER_MIN_COOL_DOWN,
                    BREAKER_MAX_COOL_DOWN,
                    connect_budget + config.command_timeout,
                ),
                dedicated,
                sentinels,
                last_primary: Mutex::new(None),
                watching: AtomicBool::new(false),
                recovering: AtomicBool::new(false),
                fenced: AtomicBool::new(false),
                me: me.clone(),
                #[cfg(feature = "opentelemetry")]
                metrics: super::metrics::RedisMetrics::new(
                    &config
                        .meter
                        .clone()
                        .unwrap_or_else(crate::telemetry::global_meter),
                    &config.addrs(),
                    me.clone(),
                ),
            }),
        })
    }

    /// Runs one command and converts its reply.
    ///
    /// ```no_run
    /// # async fn demo(conn: tower_rampart::redis::RedisConnection) -> Result<(), tower_rampart::redis::RedisError> {
    /// use tower_rampart::redis::driver;
    ///
    /// let () = conn.query(driver::cmd("SET").arg("greeting").arg("hello")).await?;
    /// let value: Option<String> = conn.query(driver::cmd("GET").arg("greeting")).await?;
    /// assert_eq!(value.as_deref(), Some("hello"));
    /// # Ok(()) }
    /// ```
    pub async fn query<T: driver::FromRedisValue>(
        &self,
        cmd: &driver::Cmd,
    ) -> Result<T, RedisError> {
        self.inner
            .call(false, "command", async |conn| {
                let mut attempt = 0;
                loop {
                    match cmd.query_async(conn).await {
                        Err(e) if again(conn, &mut attempt, &e) => drop(e),
                        other => break other,
                    }
                    pause(attempt).await;
                }
            })
            .await
    }

    /// Runs a pipeline (atomic if built with `.atomic()`) in one round trip.
    ///
    /// On a Redis Cluster a pipeline goes to one node: every key of one pipeline must be in
    /// the same hash slot (use a hash tag, `{user42}:a` and `{user42}:b`, or split the work
    /// by [`key_slot`](super::key_slot)). A pipeline whose keys span slots is refused
    /// before anything is sent, with a [`RedisErrorKind::Command`] error whose
    /// [`server_code`](RedisError::server_code) is `CROSSSLOT`: never a partial run.
    pub async fn query_pipeline<T: driver::FromRedisValue>(
        &self,
        pipe: &driver::Pipeline,
    ) -> Result<T, RedisError> {
        self.inner
            .call(false, "pipeline", async |conn| pipe.query_async(conn).await)
            .await
    }

    /// Runs a Lua script with `EVALSHA`; when the server does not know the script
    /// (`NOSCRIPT`, e.g. after a restart or `SCRIPT FLUSH`) loads it and retries once. One
    /// round trip in the normal case; the whole call, retry included, is bounded by the
    /// command timeout.
    ///
    /// On a Redis Cluster the call goes to the master of its first key's slot (every key
    /// of one script must share that slot), and `NOSCRIPT` (a promoted replica, a slot
    /// moved to another node, a restart) loads the script on that master only, then
    /// retries; if the node that answered was another one (a slot migrating to a master
    /// without the script, reached through `ASK`), the call is sent once more as `EVAL`
    /// with the script's source. `NOSCRIPT` never reaches the caller. A call the cluster
    /// refused without running it (a failover or a slot move under way) is sent again, see
    /// the [module docs](super#redis-cluster).
    ///
    /// ```no_run
    /// # async fn demo(conn: tower_rampart::redis::RedisConnection) -> Result<(), tower_rampart::redis::RedisError> {
    /// use tower_rampart::redis::driver::Script;
    ///
    /// // Build scripts once (they hash their source) and reuse them.
    /// let incr = Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
    /// let n: i64 = conn.invoke_script(incr.key("{app}:hits").arg(1)).await?;
    /// # let _ = n; Ok(()) }
    /// ```
    pub async fn invoke_script<T: driver::FromRedisValue>(
        &self,
        invocation: &driver::ScriptInvocation<'_>,
    ) -> Result<T, RedisError> {
        self.inner
            .call(false, "script", async |conn| {
                let cluster = conn.is_cluster();
                let mut attempt = 0;
                loop {
                    match invocation.invoke_async(conn).await {
                        // Loaded on the slot's master, and still unknown where it ran: a node
                        // reached through `ASK` (a slot migrating there), or the slot moved
                        // again. Once.
                        Err(e) if cluster && e.kind() == no_script() && conn.eval_instead() => {
                            drop(e);
                            continue;
                        }
                        Err(e) if again(conn, &mut attempt, &e) => drop(e),
                        other => break other,
                    }
                    pause(attempt).await;
                }
            })
            .await
    }

    /// Sends `PING` within the command timeout (connecting first if needed). Runs even
    /// while the circuit breaker is open, and closes it on success: a readiness probe
    /// calling it also speeds up recovery.
    ///
    /// On a Redis Cluster it reads the masters serving slots (`CLUSTER SLOTS`) and pings
    /// each of them at once, each within the command timeout: `Connected` only if every one
    /// answers. [`RedisConnection::health_report`] also gives the node counts.
    pub async fn health_check(&self) -> RedisHealth {
        self.health_report().await.health
    }

    /// [`RedisConnection::health_check`] with the topology and how many of the nodes it
    /// needs answered.
    ///
    /// ```no_run
    /// # async fn demo(conn: tower_rampart::redis::RedisConnection) {
    /// let report = conn.health_report().await;
    /// if let Some(nodes) = report.nodes {
    ///     println!(
    ///         "{:?}: {} of {} nodes answer",
    ///         report.topology, nodes.reachable, nodes.expected
    ///     );
    /// }
    /// # }
    /// ```
    pub async fn health_report(&self) -> HealthReport {
        let started = Instant::now();
        let mut lease = match self.inner.begin(true).await {
            Ok(lease) => lease,
            Err(e) => return self.inner.unreachable_report(&e),
        };
        if let Conn::Cluster { conn, .. } = &lease.conn {
            let conn = conn.clone();
            return self.inner.cluster_health(lease, conn, started).await;
        }
        if self.inner.sentinels.is_some() {
            return self.inner.sentinel_health(lease, started).await;
        }
        let result = timeout(
            self.inner.command_timeout,
            driver::cmd("PING").query_async::<String>(&mut lease.conn),
        )
        .await;
        let topology = self.topology();
        match self.inner.finish(lease, result, "PING") {
            Ok(_) => HealthReport {
                health: RedisHealth::Connected {
                    latency: started.elapsed(),
                },
                topology,
                nodes: Some(NodeCounts {
                    expected: 1,
                    reachable: 1,
                }),
            },
            Err(e) => self.inner.unreachable_report(&e),
        }
    }

    /// [`RedisConnection::health_report`] through the circuit breaker: while it is open, the
    /// answer is "unreachable" at once, without a call to Redis. For a health endpoint anyone
    /// can call (a flood of it must not reach a Redis that is struggling); the connection's
    /// own recovery watch closes the breaker within about 200 ms of Redis answering again,
    /// so this reports recovery as soon as calls resume. A private readiness probe may use
    /// [`RedisConnection::health_report`], which asks Redis in every state.
    ///
    /// ```no_run
    /// # async fn demo(conn: tower_rampart::redis::RedisConnection) {
    /// let report = conn.guarded_health_report().await;
    /// println!("redis connected: {}", report.health.is_connected());
    /// # }
    /// ```
    pub async fn guarded_health_report(&self) -> HealthReport {
        if let Admission::Reject(next) = self.inner.breaker.peek(Instant::now()) {
            return self
                .inner
                .unreachable_report(&self.inner.breaker_open(next));
        }
        self.health_report().await
    }

    /// False while the circuit breaker is open: calls then fail at once with
    /// [`RedisErrorKind::Unavailable`] (apart from the periodic probe).
    pub fn is_available(&self) -> bool {
        self.inner.breaker.is_closed()
    }

    /// Whether this connection talks to a Redis Cluster (known once it has connected, or
    /// from the configuration). Callers whose keys may span hash slots (batches, multi-key
    /// scripts, pipelines) split them by [`key_slot`](super::key_slot) when it is true.
    pub fn is_cluster(&self) -> bool {
        self.topology() == Some(Topology::Cluster)
    }

    /// What this connection talks to: `None` in [`ClusterMode::Auto`] until the first
    /// successful connection has asked the server; from the configuration otherwise.
    pub fn topology(&self) -> Option<Topology> {
        self.inner.topology()
    }

    /// The topology, connecting first when it is not known yet ([`ClusterMode::Auto`]
    /// before the first successful connection): for a caller that shapes its calls by
    /// topology (splitting a batch by slot on a cluster) and must decide before its first
    /// call. Goes through the circuit breaker like any call; fails like a call would.
    ///
    /// ```no_run
    /// # async fn demo(conn: tower_rampart::redis::RedisConnection) -> Result<(), tower_rampart::redis::RedisError> {
    /// use tower_rampart::redis::Topology;
    ///
    /// if conn.detect_topology().await? == Topology::Cluster {
    ///     // group the keys by `key_slot` ...
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn detect_topology(&self) -> Result<Topology, RedisError> {
        if let Some(topology) = self.topology() {
            return Ok(topology);
        }
        let lease = self.inner.begin(false).await?;
        let topology = if lease.conn.is_cluster() {
            Topology::Cluster
        } else if self.inner.sentinels.is_some() {
            Topology::Sentinel
        } else {
            Topology::Single
        };
        self.inner.settle(lease, Ok(topology))
    }

    /// The command timeout this connection applies to every call.
    pub fn command_timeout(&self) -> Duration {
        self.inner.command_timeout
    }

    /// The clients and settings that dedicated connections (for calls that block their
    /// connection, such as `WAIT`) are opened from: the same addresses, password, TLS and
    /// CA as the shared connection.
    #[cfg_attr(not(feature = "session"), allow(dead_code))]
    pub(crate) fn dedicated_source(&self) -> &DedicatedSource {
        &self.inner.dedicated
    }

    /// Behind Sentinel: a new connection of its own to the primary the sentinels name now
    /// (checked with `ROLE`, as the shared connection's), for the dedicated connections.
    /// `None` for other topologies.
    #[cfg_attr(not(feature = "session"), allow(dead_code))]
    pub(crate) async fn sentinel_primary(
        &self,
        response_timeout: Duration,
    ) -> Option<Result<MultiplexedConnection, RedisError>> {
        let sentinels = self.inner.sentinels.as_ref()?;
        let config = driver::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.inner.connect_timeout))
            .set_response_timeout(Some(response_timeout));
        Some(
            sentinels
                .connect_primary(&config)
                .await
                .map(|(conn, _)| conn),
        )
    }

    /// On a cluster: the masters serving slots now (`CLUSTER SLOTS` through this
    /// connection), as `host:port`; empty when unknown. The dedicated connections reach
    /// the cluster through them as well as through the configured seeds, so that a dead
    /// seed does not stop them.
    #[cfg_attr(not(feature = "session"), allow(dead_code))]
    pub(crate) async fn cluster_masters(&self) -> Vec<(String, u16)> {
        match self
            .query::<driver::Value>(driver::cmd("CLUSTER").arg("SLOTS"))
            .await
        {
            Ok(reply) => masters_of(&reply),
            Err(_) => Vec::new(),
        }
    }

    /// Connects now (for [`RedisConfig::connect`]).
    pub(crate) async fn connect_now(&self) -> Result<(), RedisError> {
        let lease = self.inner.begin(true).await?;
        drop(lease);
        Ok(())
    }
}

/// Shortest wait of the cluster driver before one of its own resends, in ms.
const DRIVER_MIN_RETRY_WAIT_MS: u64 = 5;
/// Longest wait of the cluster driver before one of its own resends, in ms.
const DRIVER_MAX_RETRY_WAIT_MS: u64 = 50;
/// The cluster driver's own resends of one call (16 by default): with the waits above, a
/// `TRYAGAIN` that lasts (a slot half migrated) reaches the caller within about 0.1 s, who can
/// do better than wait (the rate limiter splits its batch).
const DRIVER_RETRIES: u32 = 4;

/// Times a call refused by the cluster without running it is sent again ([`again`]).
const CLUSTER_RETRIES: u32 = 6;
/// Pause before the first resend; the n-th waits n times this (105 ms in all).
const CLUSTER_RETRY_PAUSE: Duration = Duration::from_millis(5);

/// Whether to send a call again after `e`: on a cluster, when the cluster refused it without
/// running it ([`not_run`]), up to [`CLUSTER_RETRIES`] times (`attempt` counts them). All
/// within the command timeout of the call. Pipelines are not sent again (part of one may
/// have run).
fn again(conn: &Conn, attempt: &mut u32, e: &driver::RedisError) -> bool {
    if conn.is_cluster() && *attempt < CLUSTER_RETRIES && not_run(e) {
        *attempt += 1;
        true
    } else {
        false
    }
}

/// The pause before the `attempt`-th resend.
async fn pause(attempt: u32) {
    tokio::time::sleep(CLUSTER_RETRY_PAUSE * attempt).await;
}

/// Whether the cluster refused a command without running it, for a reason a short pause
/// cures: redirections the driver gave up on (an `ASKING` on the shared connection can be
/// taken by another caller's command, so the target answers `MOVED` and the source `ASK`
/// again), a failover or a slot move under way.
///
/// Not `TRYAGAIN` (a multi-key command over a slot half migrated): the driver already sent
/// it again for about 0.1 s, and it lasts until the migration of the slot's keys ends; the
/// caller can do better than wait (the rate limiter splits its batch).
fn not_run(e: &driver::RedisError) -> bool {
    use driver::ServerErrorKind as S;
    matches!(
        e.kind(),
        driver::ErrorKind::Server(
            S::Ask | S::Moved | S::ClusterDown | S::MasterDown | S::BusyLoading | S::ReadOnly
        )
    )
}

fn no_script() -> driver::ErrorKind {
    driver::ErrorKind::Server(driver::ServerErrorKind::NoScript)
}

impl Inner {
    fn topology(&self) -> Option<Topology> {
        match self.topology.load(Ordering::Acquire) {
            TOPOLOGY_SINGLE => Some(Topology::Single),
            TOPOLOGY_CLUSTER => Some(Topology::Cluster),
            TOPOLOGY_SENTINEL => Some(Topology::Sentinel),
            _ => None,
        }
    }

    /// The report when no node could be asked at all.
    fn unreachable_report(&self, err: &RedisError) -> HealthReport {
        let topology = self.topology();
        let expected = match topology {
            Some(Topology::Single | Topology::Sentinel) => Some(1),
            Some(Topology::Cluster) => {
                Some(self.last_masters.load(Ordering::Relaxed)).filter(|n| *n > 0)
            }
            None => None,
        };
        HealthReport {
            health: RedisHealth::Disconnected {
                reason: err.to_string(),
            },
            topology,
            nodes: expected.map(|expected| NodeCounts {
                expected,
                reachable: 0,
            }),
        }
    }

    /// The cluster health check: the masters serving slots, each pinged at once.
    async fn cluster_health(
        &self,
        lease: Lease,
        mut conn: ClusterConnection,
        started: Instant,
    ) -> HealthReport {
        let slots = timeout(
            self.command_timeout,
            driver::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async::<driver::Value>(&mut conn),
        )
        .await;
        let masters = match slots {
            Ok(Ok(value)) => masters_of(&value),
            other => {
                let result = other.map(|r| r.map(drop));
                let err = match self.finish(lease, result, "CLUSTER SLOTS") {
                    Err(e) => e,
                    Ok(()) => RedisError::new(RedisErrorKind::Protocol, "no reply"),
                };
                return self.unreachable_report(&err);
            }
        };
        if masters.is_empty() {
            let err = RedisError::new(
                RedisErrorKind::Unavailable,
                "CLUSTER SLOTS lists no master serving slots",
            );
            let _ = self.settle(lease, Ok(()));
            return self.unreachable_report(&err);
        }
        self.last_masters.store(masters.len(), Ordering::Relaxed);
        let pings: Vec<_> = masters
            .iter()
            .map(|(host, port)| {
                let mut conn = conn.clone();
                // By address: routing by slot would fall back to a replica or any node when
                // the master is not connected, and a dead master would look alive.
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                });
                let command_timeout = self.command_timeout;
                let addr = if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                };
                tokio::spawn(async move {
                    let outcome = timeout(
                        command_timeout,
                        conn.route_command(driver::cmd("PING"), routing),
                    )
                    .await;
                    (addr, outcome)
                })
            })
            .collect();
        let mut failures = Vec::new();
        let mut first_error = None;
        for (ping, (host, port)) in pings.into_iter().zip(&masters) {
            let (addr, err) = match ping.await {
                Ok((_, Ok(Ok(_)))) => continue,
                Ok((addr, Ok(Err(e)))) => {
                    (addr, RedisError::from_driver(&e, self.password.as_deref()))
                }
                Ok((addr, Err(_))) => (addr, RedisError::timeout("PING", self.command_timeout)),
                Err(_) => (
                    format!("{host}:{port}"),
                    RedisError::new(RedisErrorKind::Unavailable, "PING task failed"),
                ),
            };
            failures.push(format!("{addr}: {err}"));
            first_error.get_or_insert(err);
        }
        let expected = masters.len();
        let reachable = expected - failures.len();
        let nodes = Some(NodeCounts {
            expected,
            reachable,
        });
        let topology = Some(Topology::Cluster);
        match first_error {
            None => {
                let _ = self.settle(lease, Ok(()));
                HealthReport {
                    health: RedisHealth::Connected {
                        latency: started.elapsed(),
                    },
                    topology,
                    nodes,
                }
            }
            Some(err) => {
                // Some masters answered: the cluster connection works, calls to the silent
                // masters' slots count their own failures. None answered: a failure.
                if reachable > 0 {
                    let _ = self.settle(lease, Ok(()));
                } else {
                    let _ = self.settle::<()>(lease, Err(err.clone()));
                }
                HealthReport {
                    health: RedisHealth::Disconnected {
                        reason: format!(
                            "{reachable} of {expected} cluster masters answered PING; {}",
                            failures.join("; ")
                        ),
                    },
                    topology,
                    nodes,
                }
            }
        }
    }

    fn current(&self) -> Option<Slot> {
        self.slot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .cloned()
    }

    /// One call: admission and connection ([`Inner::begin`]), `run` on the connection within
    /// the command timeout, then the outcome reported ([`Inner::finish`]).
    async fn call<T>(
        &self,
        bypass: bool,
        what: &str,
        run: impl AsyncFnOnce(&mut Conn) -> driver::RedisResult<T>,
    ) -> Result<T, RedisError> {
        #[cfg(feature = "opentelemetry")]
        let started = self.metrics.stopwatch();
        let mut lease = match self.begin(bypass).await {
            Ok(lease) => lease,
            Err(err) => {
                #[cfg(feature = "opentelemetry")]
                self.metrics.call(started, Some(err.kind()));
                return Err(err);
            }
        };
        let result = timeout(self.command_timeout, run(&mut lease.conn)).await;
        let result = self.finish(lease, result, what);
        #[cfg(feature = "opentelemetry")]
        self.metrics
            .call(started, result.as_ref().err().map(RedisError::kind));
        result
    }

    /// Admission by the breaker, then the shared connection (established if needed).
    /// `bypass` lets the call through an open breaker (health checks, eager connect).
    async fn begin(&self, bypass: bool) -> Result<Lease, RedisError> {
        if self.fenced.load(Ordering::Acquire) {
            // Not a failure of Redis: the breaker is not told.
            return Err(RedisError::new(
                RedisErrorKind::Unavailable,
                format!(
                    "a failover of the primary is in progress (sentinels {}); calls resume on \
                     the new primary",
                    self.addr
                ),
            ));
        }
        let probe = match self.breaker.admit(Instant::now()) {
            Admission::Pass => false,
            Admission::Probe => true,
            Admission::Reject(_) if bypass => false,
            Admission::Reject(next) => return Err(self.breaker_open(next)),
        };
        let slot = match self.current() {
            Some(slot) => slot,
            None => match self.establish().await {
                Ok(slot) => slot,
                Err(err) => {
                    self.report_failure(probe, &err);
                    return Err(err);
                }
            },
        };
        Ok(Lease {
            conn: slot.conn,
            generation: slot.generation,
            probe,
        })
    }

    /// The error of a call the open breaker refuses; the next probe is due in `next`.
    fn breaker_open(&self, next: Duration) -> RedisError {
        RedisError::new(
            RedisErrorKind::Unavailable,
            format!(
                "circuit breaker open after repeated failures of {}; next attempt in {} ms",
                self.addr,
                next.as_millis()
            ),
        )
    }

    /// Establishes the shared connection; one attempt at a time. Callers arriving while an
    /// attempt is in flight wait for it (bounded by the connect timeout) and share its
    /// outcome instead of starting their own.
    async fn establish(&self) -> Result<Slot, RedisError> {
        let seen = self.attempts.load(Ordering::Acquire);
        let budget = self.connect_budget();
        let Ok(_guard) = timeout(budget, self.connecting.lock()).await else {
            return Err(RedisError::timeout(
                &format!("connecting to {}", self.addr),
                budget,
            ));
        };
        if let Some(slot) = self.current() {
            return Ok(slot);
        }
        if self.attempts.load(Ordering::Acquire) != seen {
            let last = self
                .last_connect_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(err) = last {
                return Err(err);
            }
        }
        let attempt = timeout(budget, self.open()).await;
        let outcome = match attempt {
            Ok(Ok((conn, primary))) => {
                let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
                let topology = if conn.is_cluster() {
                    "cluster"
                } else if self.sentinels.is_some() {
                    "sentinel"
                } else {
                    "single"
                };
                let slot = Slot {
                    conn,
                    generation,
                    primary: primary.clone(),
                };
                *self.slot.write().unwrap_or_else(|p| p.into_inner()) = Some(slot.clone());
                if let Some(primary) = &primary {
                    self.note_primary(primary);
                }
                if self.ever_connected.swap(true, Ordering::Relaxed) {
                    #[cfg(feature = "opentelemetry")]
                    self.metrics.reconnect();
                    tracing::info!(addr = %self.addr, tls = self.tls, topology, "redis reconnected");
                } else {
                    tracing::info!(addr = %self.addr, tls = self.tls, topology, "redis connected");
                }
                Ok(slot)
            }
            // A connect that the driver timed out is a timeout; a refused or reset
            // connection is "unavailable".
            Ok(Err(err)) => Err(err),
            Err(_) => Err(RedisError::timeout(
                &format!("connecting to {}", self.addr),
                budget,
            )),
        };
        *self
            .last_connect_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = outcome.as_ref().err().cloned();
        self.attempts.fetch_add(1, Ordering::Release);
        outcome
    }

    /// One connection attempt: the cluster connection when the topology is (or turns out
    /// to be) a cluster, else the multiplexed connection to the first seed that answers.
    /// Behind Sentinel, also the primary's `host:port`.
    async fn open(&self) -> Result<(Conn, Option<Arc<str>>), RedisError> {
        match self.topology() {
            Some(Topology::Sentinel) => return self.open_sentinel().await,
            topology => self.open_direct(topology).await.map(|conn| (conn, None)),
        }
    }

    /// [`Inner::open`] for a single server or a cluster.
    async fn open_direct(&self, topology: Option<Topology>) -> Result<Conn, RedisError> {
        match topology {
            Some(Topology::Cluster) => return self.open_cluster().await,
            Some(Topology::Single) => return self.open_single().await.map(Conn::Single),
            Some(Topology::Sentinel) | None => {}
        }
        // Auto, first connection: ask the server.
        let mut conn = match self.open_single().await {
            Ok(conn) => conn,
            // With a database other than 0, a cluster node refuses the `SELECT` of the
            // handshake: that is the answer too.
            Err(e) if self.db != 0 && e.to_string().contains("cluster mode") => {
                return Err(self.refuse_database());
            }
            Err(e) => return Err(e),
        };
        let info: driver::RedisResult<String> = driver::cmd("INFO")
            .arg("cluster")
            .query_async(&mut conn)
            .await;
        let cluster = match info {
            Ok(info) => info.lines().any(|line| line.trim() == "cluster_enabled:1"),
            Err(e) => {
                let err = RedisError::from_driver(&e, self.password.as_deref());
                if err.kind() != RedisErrorKind::Command {
                    return Err(err.context(&format!("asking {} for its topology", self.addr)));
                }
                // `INFO` refused (renamed or forbidden by an ACL): a managed single server.
                tracing::warn!(addr = %self.addr, error = %err,
                    "redis INFO cluster refused; assuming a single server (set the cluster mode explicitly to silence this)");
                false
            }
        };
        if !cluster {
            self.topology.store(TOPOLOGY_SINGLE, Ordering::Release);
            return Ok(Conn::Single(conn));
        }
        drop(conn);
        if self.db != 0 {
            return Err(self.refuse_database());
        }
        self.topology.store(TOPOLOGY_CLUSTER, Ordering::Release);
        self.open_cluster().await
    }

    /// The multiplexed connection to the primary the sentinels name (verified with
    /// `ROLE`), and the task that watches the sentinels' answer started.
    async fn open_sentinel(&self) -> Result<(Conn, Option<Arc<str>>), RedisError> {
        let Some(sentinels) = &self.sentinels else {
            return Err(RedisError::new(RedisErrorKind::Config, "no sentinels"));
        };
        let (conn, primary) = sentinels.connect_primary(&self.async_config).await?;
        if !self.watching.swap(true, Ordering::AcqRel) {
            tokio::spawn(watch_sentinels(self.me.clone()));
        }
        Ok((Conn::Single(conn), Some(primary.into())))
    }

    /// Logs a primary other than the one of the last Sentinel connection.
    fn note_primary(&self, primary: &Arc<str>) {
        let mut last = self.last_primary.lock().unwrap_or_else(|p| p.into_inner());
        match last.as_deref() {
            Some(old) if old != &**primary => {
                tracing::info!(sentinels = %self.addr, old = %old, new = %primary,
                    "redis primary changed: connected to the primary the sentinels name");
            }
            Some(_) => {}
            None => {
                tracing::info!(sentinels = %self.addr, primary = %primary, "redis primary found through the sentinels");
            }
        }
        *last = Some(primary.clone());
    }

    /// Time allowed for one connection attempt: the connect timeout, twice that behind
    /// Sentinel (the sentinels' answer, then the primary).
    fn connect_budget(&self) -> Duration {
        if self.sentinels.is_some() {
            self.connect_timeout * 2
        } else {
            self.connect_timeout
        }
    }

    /// The health check behind Sentinel: `ROLE` on the connection, which must still go to
    /// a primary (a demoted primary answers `slave`: the connection is then dropped so the
    /// next call asks the sentinels again).
    async fn sentinel_health(&self, mut lease: Lease, started: Instant) -> HealthReport {
        let result = timeout(
            self.command_timeout,
            sentinel::check_primary(&mut lease.conn),
        )
        .await;
        let outcome = match result {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(e)) => Err(RedisError::from_driver(&e, self.password.as_deref())),
            Err(_) => Err(RedisError::timeout("ROLE", self.command_timeout)),
        };
        match self.settle(lease, outcome) {
            Ok(()) => HealthReport {
                health: RedisHealth::Connected {
                    latency: started.elapsed(),
                },
                topology: Some(Topology::Sentinel),
                nodes: Some(NodeCounts {
                    expected: 1,
                    reachable: 1,
                }),
            },
            Err(e) => self.unreachable_report(&e),
        }
    }

    /// The multiplexed connection to the first seed that accepts one.
    async fn open_single(&self) -> Result<MultiplexedConnection, RedisError> {
        let mut last = None;
        for client in &self.clients {
            match client
                .get_multiplexed_async_connection_with_config(&self.async_config)
                .await
            {
                Ok(conn) => return Ok(conn),
                Err(e) => last = Some(e),
            }
        }
        let err = match last {
            Some(e) => RedisError::from_driver(&e, self.password.as_deref()),
            None => RedisError::new(RedisErrorKind::Config, "no Redis address"),
        };
        Err(err.context(&format!("cannot connect to {}", self.addr)))
    }

    /// The driver's cluster connection, from all the seeds.
    async fn open_cluster(&self) -> Result<Conn, RedisError> {
        let Some(client) = &self.cluster_client else {
            return Err(RedisError::new(
                RedisErrorKind::Config,
                "cluster mode is disabled but the server is a cluster",
            ));
        };
        match client.get_async_connection().await {
            Ok(conn) => Ok(Conn::Cluster {
                conn,
                script_slot: None,
                script_source: None,
                eval: false,
            }),
            Err(e) => {
                let mut err = RedisError::from_driver(&e, self.password.as_deref());
                // The driver reports a refused password on every seed as an I/O error
                // ("Failed to create initial connections") that names the cause.
                let text = err.to_string();
                if ["AuthenticationFailed", "WRONGPASS", "NOAUTH", "NOPERM"]
                    .iter()
                    .any(|code| text.contains(code))
                {
                    err = err.with_kind(RedisErrorKind::Auth);
                }
                Err(err.context(&format!("cannot connect to the cluster at {}", self.addr)))
            }
        }
    }

    /// A non-zero database on a cluster: refused, logged once.
    fn refuse_database(&self) -> RedisError {
        let err = RedisError::new(
            RedisErrorKind::Config,
            format!(
                "{} is a Redis Cluster, which has only database 0, but database {} is configured; \
                 remove the database number (REDIS_DB, or /{} in REDIS_URL)",
                self.addr, self.db, self.db
            ),
        );
        if !self.db_refusal_logged.swap(true, Ordering::Relaxed) {
            tracing::error!(addr = %self.addr, db = self.db, error = %err, "redis configuration refused");
        }
        err
    }

    /// Turns the outcome of a call into our result, and tells the breaker.
    fn finish<T>(
        &self,
        lease: Lease,
        result: Result<driver::RedisResult<T>, tokio::time::error::Elapsed>,
        what: &str,
    ) -> Result<T, RedisError> {
        let result = match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(RedisError::from_driver(&e, self.password.as_deref())),
            Err(_) => Err(RedisError::timeout(what, self.command_timeout)),
        };
        self.settle(lease, result)
    }

    /// Tells the breaker how a call ended, and drops a broken single-server connection.
    fn settle<T>(&self, lease: Lease, result: Result<T, RedisError>) -> Result<T, RedisError> {
        let err = match result {
            Ok(value) => {
                self.report_success();
                return Ok(value);
            }
            Err(err) => err,
        };
        match err.kind() {
            // The server answered: it is healthy, the request was at fault.
            RedisErrorKind::Command | RedisErrorKind::Protocol | RedisErrorKind::Auth => {
                self.report_success();
            }
            // A cluster node refused a multi-key call over a slot it is migrating, or the
            // cluster refused a call while a master's slots are not covered (the moments
            // before a replica takes over): the nodes answer, and such refusals come in a
            // row for as long as the migration or the election lasts. Counted as failures,
            // they opened the breaker for every slot, turning one master's failover into
            // an outage of the whole cluster.
            RedisErrorKind::Unavailable
                if matches!(err.server_code(), Some("TRYAGAIN" | "CLUSTERDOWN")) =>
            {
                self.report_success();
            }
            RedisErrorKind::Unavailable => {
                // Connection broken (or the server is loading / read-only after a
                // failover): replace it on the next call. A cluster connection reconnects
                // its nodes and refreshes its slot map by itself; one failing node does not
                // condemn the connection to the others (the breaker still drops it).
                let dropped = !lease.conn.is_cluster() && self.invalidate(lease.generation, &err);
                // Behind Sentinel, one broken connection (a failover kills the clients of the
                // old primary, or it answers READONLY) is one failure, however many calls
                // were in flight on it: the next call asks the sentinels anyway.
                if self.sentinels.is_none() || dropped || lease.probe {
                    self.report_failure(lease.probe, &err);
                }
            }
            RedisErrorKind::Timeout | RedisErrorKind::Config => {
                // A single slow call does not condemn the connection; repeated ones open
                // the breaker, which drops it.
                self.report_failure(lease.probe, &err);
            }
        }
        Err(err)
    }

    /// Drops the shared connection if it is still the one of `generation`; says whether
    /// it did.
    fn invalidate(&self, generation: u64, err: &RedisError) -> bool {
        let mut slot = self.slot.write().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|s| s.generation == generation) {
            *slot = None;
            drop(slot);
            tracing::warn!(addr = %self.addr, error = %err, "redis connection lost");
            true
        } else {
            false
        }
    }

    fn report_success(&self) {
        if let Some(Transition::Closed) = self.breaker.on_success() {
            #[cfg(feature = "opentelemetry")]
            self.metrics.transition(Transition::Closed);
            tracing::info!(addr = %self.addr, "redis recovered: circuit breaker closed");
        }
    }

    fn report_failure(&self, probe: bool, err: &RedisError) {
        let transition = self.breaker.on_failure(probe, Instant::now());
        #[cfg(feature = "opentelemetry")]
        if let Some(t) = transition {
            self.metrics.transition(t);
        }
        match transition {
            Some(Transition::Opened(cool_down)) => {
                tracing::warn!(
                    addr = %self.addr,
                    error = %err,
                    cool_down_ms = cool_down.as_millis() as u64,
                    "redis circuit breaker open: calls fail fast until a probe succeeds"
                );
                self.drop_connection();
                self.watch_recovery();
            }
            Some(Transition::Reopened(cool_down)) => {
                tracing::debug!(
                    addr = %self.addr,
                    error = %err,
                    cool_down_ms = cool_down.as_millis() as u64,
                    "redis probe failed; circuit breaker stays open"
                );
                self.drop_connection();
            }
            Some(Transition::Closed) | None => {}
        }
    }

    /// Starts the recovery watch ([`watch_recovery`]) unless it runs, on the current Tokio
    /// runtime (a breaker opens inside a call, so there is one; without one, the probes made
    /// by calls still close it).
    fn watch_recovery(&self) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        if !self.recovering.swap(true, Ordering::AcqRel) {
            tokio::spawn(watch_recovery(self.me.clone()));
        }
    }

    /// Forgets the connection so the next probe establishes a fresh one (a connection that
    /// only times out may be a dead peer that never sent a reset).
    ///
    /// Not a cluster connection: the driver reconnects its nodes and refreshes its slot map by
    /// itself, from every node it learnt, while a fresh one would start from the configured
    /// seeds only, and the seed may be the master that just died (a failover would then need
    /// a restart of the client).
    fn drop_connection(&self) {
        let mut slot = self.slot.write().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|s| s.conn.is_cluster()) {
            return;
        }
        *slot = None;
    }
}

/// While the breaker is open and any handle of the connection lives: every
/// [`BREAKER_RECOVERY_PERIOD`], one health check through an open breaker (a `PING`, after
/// connecting if needed; on a cluster, every master serving slots). Its success closes the
/// breaker ([`Inner::settle`]); its failure does not lengthen the cool-down. Ends once the
/// breaker is closed.
async fn watch_recovery(me: Weak<Inner>) {
    loop {
        tokio::time::sleep(BREAKER_RECOVERY_PERIOD).await;
        let Some(inner) = me.upgrade() else { return };
        if inner.breaker.is_closed() {
            inner.recovering.store(false, Ordering::Release);
            // Opened again between the check and the store: its opener saw the watch
            // running and did not start one; carry on.
            if inner.breaker.is_closed() || inner.recovering.swap(true, Ordering::AcqRel) {
                return;
            }
            continue;
        }
        let conn = RedisConnection { inner };
        let _ = conn.health_report().await;
    }
}

/// Behind Sentinel, while any handle of the connection lives: every
/// [`SENTINEL_WATCH_PERIOD`] asks every sentinel for the primary and whether a failover is
/// under way (`SENTINEL MASTER`), and
///
/// - while one reports a failover in progress, drops the shared connection and fences the
///   calls (they fail at once with [`RedisErrorKind::Unavailable`]) until the sentinels
///   name the new primary, at most [`SENTINEL_FENCE_MAX`]: a graceful failover leaves the
///   old primary up and writable until the sentinels demote it, and what it acknowledges
///   after the replica's promotion is lost;
/// - drops the shared connection when the sentinels (the highest configuration epoch) name
///   another primary than the one it goes to, so the next call connects to the new one.
async fn watch_sentinels(me: Weak<Inner>) {
    let mut watch = match me.upgrade() {
        Some(inner) => match &inner.sentinels {
            Some(sentinels) => sentinels.watch(),
            None => return,
        },
        None => return,
    };
    let mut fenced_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(SENTINEL_WATCH_PERIOD).await;
        let Some(inner) = me.upgrade() else { return };
        let Some(sentinels) = &inner.sentinels else {
            return;
        };
        let Some(view) = watch.look(sentinels).await else {
            continue;
        };
        let fence =
            view.failover && fenced_since.is_none_or(|since| since.elapsed() < SENTINEL_FENCE_MAX);
        match (fence, fenced_since) {
            (true, None) => {
                fenced_since = Some(Instant::now());
                inner.fenced.store(true, Ordering::Release);
                tracing::warn!(sentinels = %inner.addr, primary = %view.primary,
                    "redis failover in progress: calls fail fast until the sentinels name the new primary");
                if let Some(current) = inner.current() {
                    let err = RedisError::new(RedisErrorKind::Unavailable, "failover in progress");
                    inner.invalidate(current.generation, &err);
                }
            }
            (false, Some(since)) if inner.fenced.swap(false, Ordering::AcqRel) => {
                if view.failover {
                    tracing::warn!(sentinels = %inner.addr, fenced_ms = since.elapsed().as_millis() as u64,
                        "redis failover still reported in progress; calls resume");
                } else {
                    tracing::info!(sentinels = %inner.addr, primary = %view.primary,
                        fenced_ms = since.elapsed().as_millis() as u64, "redis failover over: calls resume");
                    fenced_since = None;
                }
            }
            _ => {}
        }
        if !view.failover {
            fenced_since = None;
        }
        let Some(current) = inner.current() else {
            continue;
        };
        let Some(connected) = current.primary.clone() else {
            continue;
        };
        if *view.primary != *connected {
            let err = RedisError::new(
                RedisErrorKind::Unavailable,
                format!(
                    "the sentinels name {} as the primary, not {connected}",
                    view.primary
                ),
            );
            inner.invalidate(current.generation, &err);
        }
    }
}

/// TLS needs rustls's process-wide `CryptoProvider`. A library does not choose it for the
/// application: one the application installed is used as it is; otherwise rustls installs
/// the one its crate features name (this crate enables `ring`). That fails only when the
/// build also enables another provider (`aws-lc-rs`, through some other dependency) and the
/// application installed neither: reported here, when the connection is built, rather than
/// as a panic inside the first TLS handshake on a request.
fn ensure_crypto_provider() -> Result<(), RedisError> {
    if rustls::crypto::CryptoProvider::get_default().is_some() {
        return Ok(());
    }
    // `ClientConfig::builder` installs the provider the crate features name, or panics with
    // rustls's own explanation when they name several.
    std::panic::catch_unwind(|| drop(rustls::ClientConfig::builder())).map_err(|_| {
        RedisError::new(
            RedisErrorKind::Config,
            "TLS: this build enables several rustls crypto providers and none is installed; \
             call rustls::crypto::CryptoProvider::install_default at start-up",
        )
    })
}
