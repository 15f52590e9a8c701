//! Real `redis-server` processes for tower-rampart's integration tests, the gateway's tests
//! and the Redis benchmarks (a workspace crate, `publish = false`).
//!
//! A test starts the servers it needs:
//!
//! ```no_run
//! use rampart_test_support as support;
//! let server = support::RedisServer::start();
//! let conn = server.config().connect_lazy().unwrap();
//! # drop(conn);
//! ```
//!
//! Each server runs on a free loopback port with persistence off (`--save "" --appendonly
//! no`), logs into its own temporary directory, and is killed (and the directory removed)
//! when the [`RedisServer`] is dropped. A missing `redis-server` binary panics with a clear
//! message: Redis tests are never skipped silently.
//!
//! [`RedisCluster`] starts a Redis Cluster the same way (masters and replicas, plain or TLS,
//! joined by `redis-cli --cluster create`), with helpers to kill and restart nodes and to
//! find keys on different masters.
//!
//! [`RedisSentinel`] starts a primary, a replica and three sentinels, with helpers to fail
//! over (`SENTINEL FAILOVER`), kill and restart the primary, and wait for a new one.
//!
//! [`shared`] uses an external server when `REDIS_URL` is set (tests then isolate their data
//! by key prefix), and a fresh [`RedisServer`] otherwise.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tower_rampart::redis::RedisConfig;
use tower_rampart::redis::driver;

mod cluster;
mod fault_proxy;
mod slotted;
pub use cluster::*;
pub use fault_proxy::FaultProxy;
pub use slotted::SlottedEndpoint;
pub mod otlp;
pub mod sentinel;
pub use sentinel::RedisSentinel;

/// How long a server may take to answer its first PING.
const START_DEADLINE: Duration = Duration::from_secs(15);
/// How often a fresh port is tried when another process took it between probe and bind.
const PORT_ATTEMPTS: usize = 8;
/// Timeouts of [`RedisServer::config`]: short, yet roomy enough for a loaded 2-core CI box.
const TEST_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const TEST_COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Password, TLS material and other settings a server is (re)started with.
#[derive(Clone, Debug)]
struct Settings {
    password: Option<String>,
    tls: Option<TlsFiles>,
    /// The port of the primary this server replicates (`--replicaof`).
    replica_of: Option<u16>,
    /// Append-only file with `appendfsync always`: every acknowledged write survives a kill.
    persistent: bool,
}

#[derive(Clone, Debug)]
struct TlsFiles {
    ca_pem: String,
    ca_file: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
}

/// A `redis-server` child process on a loopback port. Dropping it kills the process and
/// removes its temporary directory.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    settings: Settings,
}

impl RedisServer {
    /// Starts a plain server on a free loopback port.
    pub fn start() -> Self {
        Self::launch(Settings {
            password: None,
            tls: None,
            replica_of: None,
            persistent: false,
        })
    }

    /// Starts a plain server that persists every write before acknowledging it (append-only
    /// file, `appendfsync always`): [`RedisServer::restart`] after [`RedisServer::stop`] (a
    /// SIGKILL) comes back with every acknowledged write.
    pub fn start_persistent() -> Self {
        Self::launch(Settings {
            password: None,
            tls: None,
            replica_of: None,
            persistent: true,
        })
    }

    /// Starts a server that requires `password` (`--requirepass`).
    pub fn start_with_password(password: &str) -> Self {
        Self::launch(Settings {
            password: Some(password.to_owned()),
            tls: None,
            replica_of: None,
            persistent: false,
        })
    }

    /// Starts a replica of `primary` (`--replicaof`, with the primary's password and TLS
    /// settings; `DEBUG` allowed from loopback, so that a test can pause it with `DEBUG
    /// SLEEP`), and waits until it is in sync (`master_link_status:up`, and the primary
    /// counts it). [`RedisServer::restart`] brings it back as a replica of the same port.
    pub fn start_replica_of(primary: &RedisServer) -> Self {
        let settings = Settings {
            replica_of: Some(primary.port),
            persistent: false,
            ..primary.settings.clone()
        };
        let replica = Self::launch(settings);
        replica.wait_in_sync(primary);
        replica
    }

    /// Waits (15 s at most) until this replica's link to `primary` is up and `primary`
    /// lists it as an online replica.
    pub fn wait_in_sync(&self, primary: &RedisServer) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let mine: String = self.run(driver::cmd("INFO").arg("replication"));
            let theirs: String = primary.run(driver::cmd("INFO").arg("replication"));
            let needle = format!("port={},state=online", self.port);
            if mine.contains("master_link_status:up") && theirs.contains(&needle) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replica on port {} not in sync with {} within {START_DEADLINE:?}:\n{mine}\n{theirs}",
                self.port,
                primary.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a TLS-only server with a CA and a server certificate (for `127.0.0.1` and
    /// `localhost`) generated now. [`RedisServer::config`] trusts that CA.
    pub fn start_tls() -> Self {
        let dir = unique_temp_dir();
        let tls = generate_tls_files(&dir);
        Self::launch_in(
            dir,
            Settings {
                password: None,
                tls: Some(tls),
                replica_of: None,
                persistent: false,
            },
        )
    }

    /// Starts a TLS-only server that also requires `password`.
    pub fn start_tls_with_password(password: &str) -> Self {
        let dir = unique_temp_dir();
        let tls = generate_tls_files(&dir);
        Self::launch_in(
            dir,
            Settings {
                password: Some(password.to_owned()),
                tls: Some(tls),
                replica_of: None,
                persistent: false,
            },
        )
    }

    fn launch(settings: Settings) -> Self {
        Self::launch_in(unique_temp_dir(), settings)
    }

    fn launch_in(dir: PathBuf, settings: Settings) -> Self {
        let mut server = Self {
            child: None,
            port: 0,
            dir,
            settings,
        };
        let mut last_log = String::new();
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_port();
            match server.spawn_and_wait() {
                Ok(()) => return server,
                // Most likely another process took the port between probe and bind.
                Err(log) => last_log = log,
            }
        }
        panic!("redis-server did not start after {PORT_ATTEMPTS} attempts; last log:\n{last_log}");
    }

    /// Spawns the process on `self.port` and waits for its first PING answer. On failure
    /// the process is killed and its log returned.
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log_path = self.dir.join(format!("redis-{}.log", self.port));
        let log = File::create(&log_path).expect("create redis-server log file");
        let log_err = log.try_clone().expect("clone redis-server log file");
        let mut cmd = Command::new("redis-server");
        cmd.arg("--bind")
            .arg("127.0.0.1")
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg(if self.settings.persistent {
                "yes"
            } else {
                "no"
            })
            .arg("--appendfsync")
            .arg("always")
            .arg("--daemonize")
            .arg("no")
            .arg("--logfile")
            .arg("")
            .arg("--dir")
            .arg(&self.dir);
        match &self.settings.tls {
            None => {
                cmd.arg("--port").arg(self.port.to_string());
            }
            Some(tls) => {
                cmd.arg("--port")
                    .arg("0")
                    .arg("--tls-port")
                    .arg(self.port.to_string())
                    .arg("--tls-cert-file")
                    .arg(&tls.cert_file)
                    .arg("--tls-key-file")
                    .arg(&tls.key_file)
                    .arg("--tls-ca-cert-file")
                    .arg(&tls.ca_file)
                    .arg("--tls-auth-clients")
                    .arg("no");
            }
        }
        if let Some(password) = &self.settings.password {
            cmd.arg("--requirepass").arg(password);
        }
        if let Some(primary) = self.settings.replica_of {
            cmd.arg("--replicaof")
                .arg("127.0.0.1")
                .arg(primary.to_string())
                .arg("--enable-debug-command")
                .arg("local");
            if let Some(password) = &self.settings.password {
                cmd.arg("--masterauth").arg(password);
            }
            if self.settings.tls.is_some() {
                cmd.arg("--tls-replication").arg("yes");
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == ErrorKind::NotFound => panic!(
                "`redis-server` was not found on PATH: the Redis tests need a real server \
                 (install redis-server, e.g. `apt-get install redis-server`, or run scripts/test.sh)"
            ),
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        self.child = Some(child);

        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!(
                    "redis-server exited with {status}:\n{}",
                    read_log(&log_path)
                ));
            }
            if self.ping().is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "redis-server did not answer PING within {START_DEADLINE:?}:\n{}",
                    read_log(&log_path)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://` or `rediss://` URL of this server, with the password if any.
    ///
    /// For a TLS server the URL alone is not enough: the CA is not in the system trust
    /// store. Use [`RedisServer::config`], or add [`RedisServer::ca_pem`].
    pub fn url(&self) -> String {
        let scheme = if self.settings.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        match &self.settings.password {
            Some(pw) => format!("{scheme}://:{}@127.0.0.1:{}", percent_encode(pw), self.port),
            None => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }

    /// A configuration ready to use: address, password, TLS with the test CA trusted, and
    /// short timeouts (connect 2 s, command 1 s).
    pub fn config(&self) -> RedisConfig {
        let mut config = RedisConfig::from_parts("127.0.0.1", self.port)
            .tls(self.settings.tls.is_some())
            .connect_timeout(TEST_CONNECT_TIMEOUT)
            .command_timeout(TEST_COMMAND_TIMEOUT);
        if let Some(pw) = &self.settings.password {
            config = config.password(pw.clone());
        }
        if let Some(tls) = &self.settings.tls {
            config = config.ca_certificate_pem(tls.ca_pem.clone().into_bytes());
        }
        config
    }

    /// The PEM of the CA that signed a TLS server's certificate.
    pub fn ca_pem(&self) -> Option<&str> {
        self.settings.tls.as_ref().map(|t| t.ca_pem.as_str())
    }

    /// The loopback port the server listens on (its TLS port for a TLS server).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's password, if it has one.
    pub fn password(&self) -> Option<&str> {
        self.settings.password.as_deref()
    }

    /// Whether the process is running (between `stop` and `restart` it is not).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (SIGKILL) and waits for the process to exit. Data is lost.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts the server again on the same port with the same settings (after
    /// [`RedisServer::stop`]; stops it first if it is running).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                // The port may linger briefly after the kill; try again for a while.
                Err(log) if Instant::now() < deadline => {
                    let _ = log;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(log) => panic!("redis-server did not restart on port {}:\n{log}", self.port),
            }
        }
    }

    /// Freezes the process (SIGSTOP): connections stay open, nothing is answered, as with a
    /// server stuck in a long fork or a paused VM. [`RedisServer::resume`] ends it.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Lets a [`RedisServer::pause`]d process run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let child = self.child.as_ref().expect("redis-server is running");
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// [`RedisServer::restart`] with no data: the files a persistent server would reload
    /// are removed first, so it comes back empty, as a server without persistence does.
    pub fn restart_empty(&mut self) {
        self.kill();
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with("appendonly") || name.ends_with(".rdb") {
                    if path.is_dir() {
                        let _ = fs::remove_dir_all(&path);
                    } else {
                        let _ = fs::remove_file(&path);
                    }
                }
            }
        }
        self.restart();
    }

    /// Number of calls of `command` (lower case, e.g. `"evalsha"`, `"get"`, `"script|load"`)
    /// since start or the last [`RedisServer::reset_stats`], from `INFO commandstats`.
    pub fn command_count(&self, command: &str) -> u64 {
        self.command_stats()
            .get(&command.to_ascii_lowercase())
            .map_or(0, |&(calls, _)| calls)
    }

    /// `command -> (calls, usec_per_call)` from `INFO commandstats`.
    pub fn command_stats(&self) -> HashMap<String, (u64, f64)> {
        let mut conn = self
            .sync_connection()
            .expect("connect to test redis-server");
        let info: String = driver::cmd("INFO")
            .arg("commandstats")
            .query(&mut conn)
            .expect("INFO commandstats");
        parse_commandstats(&info)
    }

    /// Clears the command statistics (`CONFIG RESETSTAT`).
    pub fn reset_stats(&self) {
        let mut conn = self
            .sync_connection()
            .expect("connect to test redis-server");
        let () = driver::cmd("CONFIG")
            .arg("RESETSTAT")
            .query(&mut conn)
            .expect("CONFIG RESETSTAT");
    }

    /// A blocking connection for test assertions (`FLUSHALL`, `SCRIPT FLUSH`, reading keys).
    pub fn sync_connection(&self) -> driver::RedisResult<driver::Connection> {
        sync_connection_to(
            self.port,
            self.settings.tls.as_ref(),
            self.settings.password.as_deref(),
        )
    }

    /// Runs one command on a blocking connection (a test helper: panics on failure).
    pub fn run<T: driver::FromRedisValue>(&self, cmd: &driver::Cmd) -> T {
        let mut conn = self
            .sync_connection()
            .expect("connect to test redis-server");
        cmd.query(&mut conn).expect("command on test redis-server")
    }

    /// The server's log so far (for assertion messages).
    pub fn log(&self) -> String {
        read_log(&self.dir.join(format!("redis-{}.log", self.port)))
    }

    fn ping(&self) -> driver::RedisResult<()> {
        let mut conn = self.sync_connection()?;
        driver::cmd("PING").query::<()>(&mut conn)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl RedisServer {
    /// Starts watching the commands this server runs (`MONITOR`), to count round trips:
    /// commands sent by clients apart from those run inside scripts. A plain server only
    /// (no TLS). `MONITOR` slows the server: never while timing.
    pub fn monitor(&self) -> CommandMonitor {
        assert!(
            self.settings.tls.is_none(),
            "CommandMonitor: plain servers only"
        );
        let mut stream = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, self.port))
            .expect("connect for MONITOR");
        stream
            .set_read_timeout(None)
            .expect("MONITOR: blocking reads");
        let mut reader = BufReader::new(stream.try_clone().expect("clone the MONITOR stream"));
        if let Some(password) = &self.settings.password {
            stream
                .write_all(
                    format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{password}\r\n", password.len()).as_bytes(),
                )
                .expect("send AUTH");
            let mut ok = String::new();
            reader.read_line(&mut ok).expect("AUTH reply");
            assert!(ok.starts_with("+OK"), "AUTH: {ok}");
        }
        stream.write_all(b"MONITOR\r\n").expect("send MONITOR");
        let mut ok = String::new();
        reader.read_line(&mut ok).expect("MONITOR reply");
        assert!(ok.starts_with("+OK"), "MONITOR: {ok}");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        CommandMonitor {
            lines,
            stream,
            port: self.port,
            password: self.settings.password.clone(),
        }
    }
}

/// The commands a [`RedisServer`] ran since the last [`CommandMonitor::reset`], as `MONITOR`
/// shows them. Commands of the harness itself (`INFO`, `CONFIG`, `ECHO`, `CLIENT`, `HELLO`,
/// `AUTH`, `SELECT`, `MONITOR`) are left out.
pub struct CommandMonitor {
    lines: Arc<Mutex<Vec<String>>>,
    stream: std::net::TcpStream,
    port: u16,
    password: Option<String>,
}

/// What a [`CommandMonitor`] saw, by lower-case command name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandCounts {
    /// Commands sent by clients (script calls included): one round trip each, unless
    /// pipelined.
    pub sent: BTreeMap<String, u64>,
    /// Commands run inside scripts.
    pub nested: BTreeMap<String, u64>,
}

impl CommandCounts {
    /// All commands sent by clients.
    pub fn sent_total(&self) -> u64 {
        self.sent.values().sum()
    }

    /// All commands run inside scripts.
    pub fn nested_total(&self) -> u64 {
        self.nested.values().sum()
    }
}

const HARNESS_COMMANDS: [&str; 8] = [
    "info", "config", "echo", "client", "hello", "auth", "select", "monitor",
];

impl CommandMonitor {
    /// Forgets every command run so far.
    pub fn reset(&self) {
        self.sync();
        self.lines.lock().unwrap().clear();
    }

    /// The commands run since the last [`reset`](Self::reset) (or the start).
    pub fn counts(&self) -> CommandCounts {
        self.sync();
        let mut counts = CommandCounts::default();
        for line in self.lines.lock().unwrap().iter() {
            // +1700000000.123456 [0 127.0.0.1:5555] "evalsha" ... / [0 lua] "hmget" ...
            let Some((source, rest)) = line.split_once("] \"") else {
                continue;
            };
            let name = rest.split('"').next().unwrap_or("").to_ascii_lowercase();
            if source.ends_with(" lua") {
                *counts.nested.entry(name).or_default() += 1;
            } else if !HARNESS_COMMANDS.contains(&name.as_str()) {
                *counts.sent.entry(name).or_default() += 1;
            }
        }
        counts
    }

    /// Waits until `MONITOR` has shown a marker sent now, so every command before it.
    fn sync(&self) {
        static MARKERS: AtomicU64 = AtomicU64::new(0);
        let marker = format!(
            "rampart-monitor-marker-{}",
            MARKERS.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = sync_connection_to(self.port, None, self.password.as_deref())
            .expect("connect to test redis-server");
        let _: String = driver::cmd("ECHO")
            .arg(&marker)
            .query(&mut conn)
            .expect("ECHO");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self
            .lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(&marker))
        {
            assert!(Instant::now() < deadline, "MONITOR did not show the marker");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for CommandMonitor {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// A blocking connection to `127.0.0.1:port` (TLS with the test CA when `tls` is set),
/// connect timeout 2 s, read and write timeouts 5 s.
fn sync_connection_to(
    port: u16,
    tls: Option<&TlsFiles>,
    password: Option<&str>,
) -> driver::RedisResult<driver::Connection> {
    let addr = match tls {
        None => driver::ConnectionAddr::Tcp("127.0.0.1".to_owned(), port),
        Some(_) => driver::ConnectionAddr::TcpTls {
            host: "127.0.0.1".to_owned(),
            port,
            insecure: false,
            tls_params: None,
        },
    };
    let mut redis_settings = driver::RedisConnectionInfo::default();
    if let Some(pw) = password {
        redis_settings = redis_settings.set_password(pw);
    }
    let info =
        driver::IntoConnectionInfo::into_connection_info(addr)?.set_redis_settings(redis_settings);
    let client = match tls {
        None => driver::Client::open(info)?,
        Some(tls) => driver::Client::build_with_tls(
            info,
            driver::TlsCertificates {
                client_tls: None,
                root_cert: Some(tls.ca_pem.clone().into_bytes()),
            },
        )?,
    };
    let conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(conn)
}

/// A Redis to run a test against: `REDIS_URL` if set, else a fresh [`RedisServer`].
#[derive(Debug)]
pub struct TestRedis {
    /// Configuration of the server to use.
    pub config: RedisConfig,
    /// A key prefix unique to this `TestRedis` (ends with `:`); tests must put it in front
    /// of every key, since with `REDIS_URL` several tests share one server.
    pub prefix: String,
    server: Option<RedisServer>,
}

impl TestRedis {
    /// The server owned by this `TestRedis`, `None` when `REDIS_URL` is used.
    pub fn server(&self) -> Option<&RedisServer> {
        self.server.as_ref()
    }

    /// Mutable access to the owned server (to stop and restart it).
    pub fn server_mut(&mut self) -> Option<&mut RedisServer> {
        self.server.as_mut()
    }

    /// `prefix` followed by `name`.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

/// `REDIS_URL` if set (each call gets a unique key prefix), else a fresh [`RedisServer`]
/// owned by the returned [`TestRedis`].
pub fn shared() -> TestRedis {
    let prefix = unique_prefix();
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.trim().is_empty() => {
            let config = RedisConfig::from_url(url.trim())
                .unwrap_or_else(|e| panic!("REDIS_URL is not a valid Redis URL: {e}"));
            // Tests write and flush keys: never point them at a server that is not on this
            // machine (REDIS_URL is also the service's production variable).
            let host = config.host().trim_matches(|c| c == '[' || c == ']');
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            assert!(
                loopback,
                "REDIS_URL points at {host:?}, which is not a loopback address: the tests only \
                 run against a Redis on this machine (unset REDIS_URL to let them start their own)"
            );
            let config = config
                .connect_timeout(TEST_CONNECT_TIMEOUT)
                .command_timeout(TEST_COMMAND_TIMEOUT);
            TestRedis {
                config,
                prefix,
                server: None,
            }
        }
        _ => {
            let server = RedisServer::start();
            TestRedis {
                config: server.config(),
                prefix,
                server: Some(server),
            }
        }
    }
}

/// `test:<pid>-<counter>-<random>:`, unique across processes and calls; no `{}` so that
/// callers can add their own hash tags.
pub fn unique_prefix() -> String {
    format!(
        "test:{}-{}-{:08x}:",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        random_u64() as u32
    )
}

fn random_u64() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    hasher.finish()
}

fn unique_temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "rampart-redis-{}-{}-{:016x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        random_u64()
    ));
    fs::create_dir_all(&dir).expect("create temp dir for redis-server");
    dir
}

/// A port that was free on loopback a moment ago (the OS picks it).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free loopback port");
    listener.local_addr().expect("local addr").port()
}

fn read_log(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| format!("(no log at {}: {e})", path.display()))
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// CA + server certificate for `127.0.0.1`/`localhost`, written as PEM files into `dir`.
fn generate_tls_files(dir: &Path) -> TlsFiles {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };

    let ca_key = KeyPair::generate().expect("generate CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "tower-rampart test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign CA");
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().expect("generate server key");
    let mut server_params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("server params");
    server_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .expect("sign server certificate");

    let files = TlsFiles {
        ca_pem: ca_cert.pem(),
        ca_file: dir.join("ca.crt"),
        cert_file: dir.join("server.crt"),
        key_file: dir.join("server.key"),
    };
    fs::write(&files.ca_file, &files.ca_pem).expect("write ca.crt");
    fs::write(&files.cert_file, server_cert.pem()).expect("write server.crt");
    fs::write(&files.key_file, server_key.serialize_pem()).expect("write server.key");
    files
}

/// Parses `INFO commandstats` lines such as
/// `cmdstat_evalsha:calls=3,usec=40,usec_per_call=13.33,rejected_calls=0,failed_calls=0`.
pub fn parse_commandstats(info: &str) -> HashMap<String, (u64, f64)> {
    let mut stats = HashMap::new();
    for line in info.lines() {
        let Some(rest) = line.trim().strip_prefix("cmdstat_") else {
            continue;
        };
        let Some((name, fields)) = rest.split_once(':') else {
            continue;
        };
        let mut calls = 0;
        let mut per_call = 0.0;
        for field in fields.split(',') {
            match field.split_once('=') {
                Some(("calls", v)) => calls = v.parse().unwrap_or(0),
                Some(("usec_per_call", v)) => per_call = v.parse().unwrap_or(0.0),
                _ => {}
            }
        }
        stats.insert(name.to_ascii_lowercase(), (calls, per_call));
    }
    stats
}
