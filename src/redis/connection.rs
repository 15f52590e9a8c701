//! [`RedisConnection`]: one shared multiplexed connection with reconnects, timeouts and a
//! circuit breaker.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ::redis as driver;
use driver::aio::MultiplexedConnection;
use tokio::time::{Instant, timeout};

use super::breaker::{Admission, Breaker, Transition};
use super::config::RedisConfig;
use super::error::{RedisError, RedisErrorKind};

/// Consecutive failures that open the circuit breaker.
const BREAKER_THRESHOLD: u32 = 3;
/// First cool-down of an open breaker; doubles after each failed probe.
const BREAKER_MIN_COOL_DOWN: Duration = Duration::from_secs(1);
/// Longest cool-down: Redis coming back is noticed within this (plus one connect).
const BREAKER_MAX_COOL_DOWN: Duration = Duration::from_secs(5);

/// A handle to one Redis server, cheap to clone and share between tasks.
///
/// All clones share one multiplexed connection (commands of concurrent callers are
/// pipelined on it), established on first use, re-established after it breaks, with every
/// call bounded by the command timeout and a circuit breaker in front. See the
/// [module docs](super) for the behaviour on failures and for why this shape.
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
    /// Whether `PING` answered.
    pub fn is_connected(&self) -> bool {
        matches!(self, Self::Connected { .. })
    }
}

#[derive(Clone)]
struct Slot {
    conn: MultiplexedConnection,
    generation: u64,
}

/// A call admitted by the breaker, holding the connection it runs on.
struct Lease {
    conn: MultiplexedConnection,
    generation: u64,
    probe: bool,
}

struct Inner {
    client: driver::Client,
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
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let connected = self.slot.read().map(|s| s.is_some()).unwrap_or(false);
        f.debug_struct("RedisConnection")
            .field("addr", &self.addr)
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
        let info = config.connection_info().map_err(config_error)?;
        let client = match (&config.ca_pem, config.tls) {
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
                driver::Client::build_with_tls(
                    info,
                    driver::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem.to_vec()),
                    },
                )
                .map_err(config_error)?
            }
            (_, tls) => {
                if tls {
                    ensure_crypto_provider()?;
                }
                driver::Client::open(info).map_err(config_error)?
            }
        };
        let async_config = driver::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.command_timeout));
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                async_config,
                addr: config.addr(),
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
                    config.connect_timeout + config.command_timeout,
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
            .call(false, "command", async |conn| cmd.query_async(conn).await)
            .await
    }

    /// Runs a pipeline (atomic if built with `.atomic()`) in one round trip.
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
                invocation.invoke_async(conn).await
            })
            .await
    }

    /// Sends `PING` within the command timeout (connecting first if needed). Runs even
    /// while the circuit breaker is open, and closes it on success: a readiness probe
    /// calling it also speeds up recovery.
    pub async fn health_check(&self) -> RedisHealth {
        let started = Instant::now();
        let result: Result<String, RedisError> = self
            .inner
            .call(true, "PING", async |conn| {
                driver::cmd("PING").query_async(conn).await
            })
            .await;
        match result {
            Ok(_) => RedisHealth::Connected {
                latency: started.elapsed(),
            },
            Err(e) => RedisHealth::Disconnected {
                reason: e.to_string(),
            },
        }
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
        false
    }

    /// The command timeout this connection applies to every call.
    pub fn command_timeout(&self) -> Duration {
        self.inner.command_timeout
    }

    /// Connects now (for [`RedisConfig::connect`]).
    pub(crate) async fn connect_now(&self) -> Result<(), RedisError> {
        let lease = self.inner.begin(true).await?;
        drop(lease);
        Ok(())
    }
}

impl Inner {
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
        run: impl AsyncFnOnce(&mut MultiplexedConnection) -> driver::RedisResult<T>,
    ) -> Result<T, RedisError> {
        let mut lease = self.begin(bypass).await?;
        let result = timeout(self.command_timeout, run(&mut lease.conn)).await;
        self.finish(lease, result, what)
    }

    /// Admission by the breaker, then the shared connection (established if needed).
    /// `bypass` lets the call through an open breaker (health checks, eager connect).
    async fn begin(&self, bypass: bool) -> Result<Lease, RedisError> {
        let probe = match self.breaker.admit(Instant::now()) {
            Admission::Pass => false,
            Admission::Probe => true,
            Admission::Reject(_) if bypass => false,
            Admission::Reject(next) => {
                return Err(RedisError::new(
                    RedisErrorKind::Unavailable,
                    format!(
                        "circuit breaker open after repeated failures of {}; next attempt in {} ms",
                        self.addr,
                        next.as_millis()
                    ),
                ));
            }
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

    /// Establishes the shared connection; one attempt at a time. Callers arriving while an
    /// attempt is in flight wait for it (bounded by the connect timeout) and share its
    /// outcome instead of starting their own.
    async fn establish(&self) -> Result<Slot, RedisError> {
        let seen = self.attempts.load(Ordering::Acquire);
        let Ok(_guard) = timeout(self.connect_timeout, self.connecting.lock()).await else {
            return Err(RedisError::timeout(
                &format!("connecting to {}", self.addr),
                self.connect_timeout,
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
        let attempt = timeout(
            self.connect_timeout,
            self.client
                .get_multiplexed_async_connection_with_config(&self.async_config),
        )
        .await;
        let outcome = match attempt {
            Ok(Ok(conn)) => {
                let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
                let slot = Slot { conn, generation };
                *self.slot.write().unwrap_or_else(|p| p.into_inner()) = Some(slot.clone());
                if self.ever_connected.swap(true, Ordering::Relaxed) {
                    tracing::info!(addr = %self.addr, tls = self.tls, "redis reconnected");
                } else {
                    tracing::info!(addr = %self.addr, tls = self.tls, "redis connected");
                }
                Ok(slot)
            }
            Ok(Err(e)) => {
                let err = RedisError::from_driver(&e, self.password.as_deref())
                    .context(&format!("cannot connect to {}", self.addr));
                // A connect that the driver timed out is a timeout; a refused or reset
                // connection is "unavailable".
                Err(err)
            }
            Err(_) => Err(RedisError::timeout(
                &format!("connecting to {}", self.addr),
                self.connect_timeout,
            )),
        };
        *self
            .last_connect_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = outcome.as_ref().err().cloned();
        self.attempts.fetch_add(1, Ordering::Release);
        outcome
    }

    /// Turns the outcome of a call into our result, and tells the breaker.
    fn finish<T>(
        &self,
        lease: Lease,
        result: Result<driver::RedisResult<T>, tokio::time::error::Elapsed>,
        what: &str,
    ) -> Result<T, RedisError> {
        let err = match result {
            Ok(Ok(value)) => {
                self.report_success();
                return Ok(value);
            }
            Ok(Err(e)) => RedisError::from_driver(&e, self.password.as_deref()),
            Err(_) => RedisError::timeout(what, self.command_timeout),
        };
        match err.kind() {
            // The server answered: it is healthy, the request was at fault.
            RedisErrorKind::Command | RedisErrorKind::Protocol | RedisErrorKind::Auth => {
                self.report_success();
            }
            RedisErrorKind::Unavailable => {
                // Connection broken (or the server is loading / read-only after a
                // failover): replace it on the next call.
                self.invalidate(lease.generation, &err);
                self.report_failure(lease.probe, &err);
            }
            RedisErrorKind::Timeout | RedisErrorKind::Config => {
                // A single slow call does not condemn the connection; repeated ones open
                // the breaker, which drops it.
                self.report_failure(lease.probe, &err);
            }
        }
        Err(err)
    }

    /// Drops the shared connection if it is still the one of `generation`.
    fn invalidate(&self, generation: u64, err: &RedisError) {
        let mut slot = self.slot.write().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|s| s.generation == generation) {
            *slot = None;
            drop(slot);
            tracing::warn!(addr = %self.addr, error = %err, "redis connection lost");
        }
    }

    fn report_success(&self) {
        if let Some(Transition::Closed) = self.breaker.on_success() {
            tracing::info!(addr = %self.addr, "redis recovered: circuit breaker closed");
        }
    }

    fn report_failure(&self, probe: bool, err: &RedisError) {
        match self.breaker.on_failure(probe, Instant::now()) {
            Some(Transition::Opened(cool_down)) => {
                tracing::warn!(
                    addr = %self.addr,
                    error = %err,
                    cool_down_ms = cool_down.as_millis() as u64,
                    "redis circuit breaker open: calls fail fast until a probe succeeds"
                );
                self.drop_connection();
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

    /// Forgets the connection so the next probe establishes a fresh one (a connection that
    /// only times out may be a dead peer that never sent a reset).
    fn drop_connection(&self) {
        *self.slot.write().unwrap_or_else(|p| p.into_inner()) = None;
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
