//! A real Redis Sentinel setup on loopback ports: one primary, one replica and three
//! sentinels (`redis-server --sentinel` with a generated configuration file).
//!
//! ```no_run
//! use rampart_test_support as support;
//! let mut sentinel = support::RedisSentinel::start();
//! let config = sentinel.config(); // the sentinels, the master name, the passwords
//! let old = sentinel.primary_port();
//! sentinel.failover(); // SENTINEL FAILOVER
//! let new = sentinel.wait_for_new_primary(old, std::time::Duration::from_secs(20));
//! assert_ne!(old, new);
//! # drop(config);
//! ```
//!
//! The sentinels run with `down-after-milliseconds` [`DOWN_AFTER`] and `failover-timeout`
//! [`FAILOVER_TIMEOUT`], so a killed primary is replaced within a few seconds. The data
//! nodes run with persistence off and diskless replication without delay (a demoted primary
//! resyncs at once). Every process logs into one temporary directory, removed with the
//! processes when the [`RedisSentinel`] is dropped. [`RedisSentinel::start_tls`] runs every
//! process TLS-only (clients, replication and the sentinels' own connections), with a CA
//! generated per setup.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::ErrorKind;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tower_rampart::redis::{RedisConfig, driver};

use super::{
    PORT_ATTEMPTS, START_DEADLINE, TEST_COMMAND_TIMEOUT, TEST_CONNECT_TIMEOUT, TlsFiles,
    generate_tls_files, parse_commandstats, random_u64, read_log, sync_connection_to,
    unique_temp_dir,
};

/// The master name the sentinels monitor.
pub const MASTER_NAME: &str = "rampart-primary";
/// `sentinel down-after-milliseconds`: a primary silent this long is subjectively down.
/// Two seconds, not one: on a loaded 2-core CI machine, a newly promoted primary forking for
/// the diskless sync of the restarted old one was once silent for over a second, and the
/// sentinels failed over a second time (`+new-epoch 2`), back to the restarted node.
pub const DOWN_AFTER: Duration = Duration::from_millis(2000);
/// `sentinel failover-timeout`: also the pause before the same master is failed over again
/// (twice this), so tests that fail over twice wait for it.
pub const FAILOVER_TIMEOUT: Duration = Duration::from_millis(3000);
/// How long the setup may take to be ready (replica in sync, sentinels aware of each other).
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// Ports are picked here: below Linux's ephemeral range (outgoing connections never hold
/// them, so a killed node can restart on its port), apart from the cluster's client ports.
const PORT_RANGE: std::ops::Range<u16> = 22000..32000;
const POLL: Duration = Duration::from_millis(25);

/// One process (data node or sentinel).
#[derive(Debug)]
struct Proc {
    port: u16,
    conf: PathBuf,
    log: PathBuf,
    sentinel: bool,
    child: Option<Child>,
}

impl Proc {
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One primary, one replica and three sentinels, each a child process on `127.0.0.1`.
/// Dropping it kills them and removes the temporary directory.
///
/// Data nodes are named by their port, which stays the same across
/// [`RedisSentinel::kill_primary`] and [`RedisSentinel::restart_node`].
#[derive(Debug)]
pub struct RedisSentinel {
    dir: PathBuf,
    password: Option<String>,
    sentinel_password: Option<String>,
    tls: Option<TlsFiles>,
    nodes: Vec<Proc>,
    sentinels: Vec<Proc>,
}

impl RedisSentinel {
    /// Starts the setup without passwords and waits until it is ready (see
    /// [`RedisSentinel::start_with_passwords`]).
    pub fn start() -> Self {
        Self::start_with_passwords(None, None)
    }

    /// Starts the setup: the data nodes require `password` (the replica and the sentinels
    /// use it too), the sentinels require `sentinel_password`. Returns once the replica is
    /// in sync and every sentinel knows the replica and the two other sentinels.
    pub fn start_with_passwords(password: Option<&str>, sentinel_password: Option<&str>) -> Self {
        Self::launch(password, sentinel_password, false)
    }

    /// [`RedisSentinel::start_with_passwords`] with every process TLS-only (a CA and a
    /// certificate for `127.0.0.1` generated now); [`RedisSentinel::config`] trusts the CA.
    pub fn start_tls(password: Option<&str>, sentinel_password: Option<&str>) -> Self {
        Self::launch(password, sentinel_password, true)
    }

    fn launch(password: Option<&str>, sentinel_password: Option<&str>, tls: bool) -> Self {
        let dir = unique_temp_dir();
        let tls = tls.then(|| generate_tls_files(&dir));
        let mut setup = Self {
            dir,
            password: password.map(str::to_owned),
            sentinel_password: sentinel_password.map(str::to_owned),
            tls,
            nodes: Vec::new(),
            sentinels: Vec::new(),
        };
        let mut taken = BTreeSet::new();
        let primary = setup.spawn_new(false, None, &mut taken);
        setup.spawn_new(false, Some(primary), &mut taken);
        for _ in 0..3 {
            setup.spawn_new(true, Some(primary), &mut taken);
        }
        setup.wait_ready(READY_DEADLINE);
        setup
    }

    /// Writes the configuration of a new process, starts it on a free port (another one if
    /// that fails) and adds it; returns its port.
    fn spawn_new(
        &mut self,
        sentinel: bool,
        primary: Option<u16>,
        taken: &mut BTreeSet<u16>,
    ) -> u16 {
        let mut last_log = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = pick_port(taken);
            let kind = if sentinel { "sentinel" } else { "node" };
            let mut proc = Proc {
                port,
                conf: self.dir.join(format!("{kind}-{port}.conf")),
                log: self.dir.join(format!("{kind}-{port}.log")),
                sentinel,
                child: None,
            };
            fs::write(&proc.conf, self.conf_text(sentinel, port, primary))
                .expect("write a redis configuration file");
            match self.spawn(&mut proc) {
                Ok(()) => {
                    taken.insert(port);
                    if sentinel {
                        self.sentinels.push(proc);
                    } else {
                        self.nodes.push(proc);
                    }
                    return port;
                }
                Err(log) => last_log = log,
            }
        }
        panic!(
            "a redis process did not start after {PORT_ATTEMPTS} attempts; last log:\n{last_log}"
        );
    }

    fn conf_text(&self, sentinel: bool, port: u16, primary: Option<u16>) -> String {
        let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
        let mut conf = format!(
            "bind 127.0.0.1\ndaemonize no\nlogfile \"\"\ndir {}\n",
            quote(&self.dir.display().to_string())
        );
        match &self.tls {
            None => conf += &format!("port {port}\n"),
            Some(tls) => {
                conf += &format!(
                    "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\n\
                     tls-ca-cert-file {}\ntls-auth-clients no\ntls-replication yes\n",
                    quote(&tls.cert_file.display().to_string()),
                    quote(&tls.key_file.display().to_string()),
                    quote(&tls.ca_file.display().to_string()),
                );
            }
        }
        if sentinel {
            let primary = primary.expect("a sentinel monitors a primary");
            conf += &format!(
                "sentinel monitor {MASTER_NAME} 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds {MASTER_NAME} {}\n\
                 sentinel failover-timeout {MASTER_NAME} {}\n\
                 sentinel parallel-syncs {MASTER_NAME} 1\n",
                DOWN_AFTER.as_millis(),
                FAILOVER_TIMEOUT.as_millis()
            );
            if let Some(pw) = &self.password {
                conf += &format!("sentinel auth-pass {MASTER_NAME} {}\n", quote(pw));
            }
            if let Some(pw) = &self.sentinel_password {
                conf += &format!(
                    "requirepass {}\nsentinel sentinel-pass {}\n",
                    quote(pw),
                    quote(pw)
                );
            }
        } else {
            conf +=
                "save \"\"\nappendonly no\nrepl-diskless-sync yes\nrepl-diskless-sync-delay 0\n";
            if let Some(pw) = &self.password {
                conf += &format!("requirepass {}\nmasterauth {}\n", quote(pw), quote(pw));
            }
            if let Some(primary) = primary {
                conf += &format!("replicaof 127.0.0.1 {primary}\n");
            }
        }
        conf
    }

    /// Starts `proc` from its configuration file and waits for its first `PING` answer. On
    /// failure the process is killed and its log returned.
    fn spawn(&self, proc: &mut Proc) -> Result<(), String> {
        let log = File::create(&proc.log).expect("create a redis log file");
        let log_err = log.try_clone().expect("clone a redis log file");
        let mut cmd = Command::new("redis-server");
        cmd.arg(&proc.conf);
        if proc.sentinel {
            cmd.arg("--sentinel");
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == ErrorKind::NotFound => panic!(
                "`redis-server` was not found on PATH: the Sentinel tests need a real server \
                 (install redis-server, e.g. `apt-get install redis-server`)"
            ),
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        proc.child = Some(child);
        let deadline = Instant::now() + START_DEADLINE;
        let password = if proc.sentinel {
            self.sentinel_password.as_deref()
        } else {
            self.password.as_deref()
        };
        loop {
            if let Some(status) = proc
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                proc.child = None;
                return Err(format!(
                    "redis-server exited with {status}:\n{}",
                    read_log(&proc.log)
                ));
            }
            let ping = sync_connection_to(proc.port, self.tls.as_ref(), password)
                .and_then(|mut c| driver::cmd("PING").query::<()>(&mut c));
            if ping.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                proc.kill();
                return Err(format!(
                    "redis-server did not answer PING within {START_DEADLINE:?}:\n{}",
                    read_log(&proc.log)
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until the primary the sentinels agree on has a replica in sync and every
    /// running sentinel knows that replica and the other running sentinels.
    pub fn wait_ready(&self, deadline: Duration) {
        let until = Instant::now() + deadline;
        loop {
            match self.readiness() {
                Ok(()) => return,
                Err(why) if Instant::now() >= until => {
                    panic!(
                        "the Sentinel setup is not ready after {deadline:?}: {why}\n{}",
                        self.describe()
                    )
                }
                Err(_) => std::thread::sleep(POLL * 4),
            }
        }
    }

    fn readiness(&self) -> Result<(), String> {
        let primary = self
            .agreed_primary()
            .ok_or("the sentinels do not agree on a primary")?;
        let info: String = self
            .try_run_on(primary, driver::cmd("INFO").arg("replication"))
            .map_err(|e| format!("INFO on {primary}: {e}"))?;
        let online = info
            .lines()
            .any(|l| l.starts_with("slave0:") && l.contains("state=online"));
        if !info.contains("role:master") || !online {
            return Err(format!("{primary} is not a primary with a replica online"));
        }
        let running = self.sentinels.iter().filter(|s| s.child.is_some()).count();
        for s in self.sentinels.iter().filter(|s| s.child.is_some()) {
            let fields = self.sentinel_master_fields(s.port)?;
            let num = |k: &str| {
                fields
                    .get(k)
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0)
            };
            if num("num-slaves") < 1 || num("num-other-sentinels") + 1 < running {
                return Err(format!(
                    "sentinel {} does not know everyone yet: {fields:?}",
                    s.port
                ));
            }
            if fields
                .get("flags")
                .is_some_and(|f| f.contains("down") || f.contains("failover"))
            {
                return Err(format!("sentinel {} sees {fields:?}", s.port));
            }
        }
        Ok(())
    }

    /// `SENTINEL MASTER` of one sentinel as a map.
    fn sentinel_master_fields(&self, port: u16) -> Result<HashMap<String, String>, String> {
        let flat: Vec<String> = self
            .try_sentinel(port, driver::cmd("SENTINEL").arg("MASTER").arg(MASTER_NAME))
            .map_err(|e| format!("SENTINEL MASTER on {port}: {e}"))?;
        Ok(flat
            .chunks(2)
            .filter_map(|kv| Some((kv.first()?.clone(), kv.get(1)?.clone())))
            .collect())
    }

    /// The primary's port as each running sentinel names it.
    pub fn named_primaries(&self) -> Vec<Option<u16>> {
        self.sentinels
            .iter()
            .filter(|s| s.child.is_some())
            .map(|s| {
                self.try_sentinel::<Option<(String, u16)>>(
                    s.port,
                    driver::cmd("SENTINEL")
                        .arg("get-master-addr-by-name")
                        .arg(MASTER_NAME),
                )
                .ok()
                .flatten()
                .map(|(_, port)| port)
            })
            .collect()
    }

    /// The primary every running sentinel names, if they agree and it answers `ROLE` as a
    /// primary.
    pub fn agreed_primary(&self) -> Option<u16> {
        let named = self.named_primaries();
        let first = (*named.first()?)?;
        if named.iter().any(|p| *p != Some(first)) {
            return None;
        }
        let role: driver::Value = self.try_run_on(first, &driver::cmd("ROLE")).ok()?;
        let is_master = matches!(&role, driver::Value::Array(f)
            if matches!(f.first(), Some(driver::Value::BulkString(b)) if b == b"master"));
        is_master.then_some(first)
    }

    /// The current primary's port (waits up to 10 s for the sentinels to agree).
    pub fn primary_port(&self) -> u16 {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(port) = self.agreed_primary() {
                return port;
            }
            assert!(
                Instant::now() < until,
                "no agreed primary:\n{}",
                self.describe()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Waits until every running sentinel names the same primary other than `old`, and it
    /// answers `ROLE` as a primary; returns its port.
    pub fn wait_for_new_primary(&self, old: u16, deadline: Duration) -> u16 {
        let until = Instant::now() + deadline;
        loop {
            if let Some(port) = self.agreed_primary().filter(|p| *p != old) {
                return port;
            }
            assert!(
                Instant::now() < until,
                "no new primary after {deadline:?}:\n{}",
                self.describe()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Waits until the data node on `port` answers `ROLE` as a replica.
    pub fn wait_until_replica(&self, port: u16, deadline: Duration) {
        let until = Instant::now() + deadline;
        loop {
            let role = self.try_run_on::<driver::Value>(port, &driver::cmd("ROLE"));
            if matches!(&role, Ok(driver::Value::Array(f))
                if matches!(f.first(), Some(driver::Value::BulkString(b)) if b == b"slave"))
            {
                return;
            }
            assert!(
                Instant::now() < until,
                "node {port} is not a replica after {deadline:?}:\n{}",
                self.describe()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Asks a sentinel for a failover (`SENTINEL FAILOVER`), retrying while the sentinel
    /// refuses it for a passing reason (no replica ready yet, a failover in progress), for up
    /// to 15 s. Does not wait for the failover to finish: see
    /// [`RedisSentinel::wait_for_new_primary`].
    pub fn failover(&self) {
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            let mut last = String::new();
            for s in self.sentinels.iter().filter(|s| s.child.is_some()) {
                match self.try_sentinel::<()>(
                    s.port,
                    driver::cmd("SENTINEL").arg("FAILOVER").arg(MASTER_NAME),
                ) {
                    Ok(()) => return,
                    Err(e) => last = e.to_string(),
                }
            }
            assert!(
                Instant::now() < until,
                "SENTINEL FAILOVER refused: {last}\n{}",
                self.describe()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills every sentinel (SIGKILL); the data nodes keep running.
    pub fn stop_sentinels(&mut self) {
        for s in &mut self.sentinels {
            s.kill();
        }
    }

    /// Starts every stopped sentinel again on its port, from the configuration it rewrote
    /// (it remembers the primary, the replica and the other sentinels), and waits until the
    /// setup is ready.
    pub fn restart_sentinels(&mut self) {
        let mut sentinels = std::mem::take(&mut self.sentinels);
        for s in sentinels.iter_mut().filter(|s| s.child.is_none()) {
            let until = Instant::now() + START_DEADLINE;
            loop {
                match self.spawn(s) {
                    Ok(()) => break,
                    Err(log) if Instant::now() < until => {
                        let _ = log;
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Err(log) => panic!("sentinel did not restart on port {}:\n{log}", s.port),
                }
            }
        }
        self.sentinels = sentinels;
        self.wait_ready(READY_DEADLINE);
    }

    /// Freezes sentinel `index` (SIGSTOP): its port still accepts connections, it answers
    /// nothing, as a hung host would. [`RedisSentinel::resume_sentinel`] thaws it.
    pub fn pause_sentinel(&self, index: usize) {
        self.signal_sentinel(index, "-STOP");
    }

    /// Thaws a sentinel frozen by [`RedisSentinel::pause_sentinel`] (SIGCONT).
    pub fn resume_sentinel(&self, index: usize) {
        self.signal_sentinel(index, "-CONT");
    }

    fn signal_sentinel(&self, index: usize, signal: &str) {
        let pid = self.sentinels[index]
            .child
            .as_ref()
            .expect("a running sentinel")
            .id();
        let status = Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Kills the current primary (SIGKILL; its data is lost) and returns its port.
    pub fn kill_primary(&mut self) -> u16 {
        let port = self.primary_port();
        self.kill_node(port);
        port
    }

    /// Kills the data node on `port` (SIGKILL).
    pub fn kill_node(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a data node port");
        node.kill();
    }

    /// Starts the data node on `port` again (it comes back empty, as a primary; the
    /// sentinels turn it into a replica of the current primary).
    pub fn restart_node(&mut self, port: u16) {
        let index = self
            .nodes
            .iter()
            .position(|n| n.port == port)
            .expect("a data node port");
        let mut node = std::mem::replace(
            &mut self.nodes[index],
            Proc {
                port,
                conf: PathBuf::new(),
                log: PathBuf::new(),
                sentinel: false,
                child: None,
            },
        );
        node.kill();
        let until = Instant::now() + START_DEADLINE;
        loop {
            match self.spawn(&mut node) {
                Ok(()) => break,
                Err(log) if Instant::now() < until => {
                    let _ = log;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(log) => panic!("redis-server did not restart on port {port}:\n{log}"),
            }
        }
        self.nodes[index] = node;
    }

    /// A configuration for the crate: the sentinels, the master name, the data and sentinel
    /// passwords, TLS with the test CA trusted (for a TLS setup), and short timeouts
    /// (connect 2 s, command 1 s).
    pub fn config(&self) -> RedisConfig {
        let mut config = RedisConfig::from_sentinels(MASTER_NAME, self.sentinel_addrs())
            .expect("a valid Sentinel configuration")
            .connect_timeout(TEST_CONNECT_TIMEOUT)
            .command_timeout(TEST_COMMAND_TIMEOUT);
        if let Some(pw) = &self.password {
            config = config.password(pw.clone());
        }
        if let Some(pw) = &self.sentinel_password {
            config = config.sentinel_password(pw.clone());
        }
        if let Some(tls) = &self.tls {
            config = config
                .tls(true)
                .ca_certificate_pem(tls.ca_pem.clone().into_bytes());
        }
        config
    }

    /// Whether every process is TLS-only.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The sentinels' addresses, `("127.0.0.1", port)`.
    pub fn sentinel_addrs(&self) -> Vec<(String, u16)> {
        self.sentinels
            .iter()
            .map(|s| ("127.0.0.1".to_owned(), s.port))
            .collect()
    }

    /// The sentinels as `REDIS_SENTINELS` takes them: `127.0.0.1:port,...`.
    pub fn sentinels_var(&self) -> String {
        let addrs: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        addrs.join(",")
    }

    /// The data nodes' ports (primary and replica, in start order).
    pub fn node_ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The data password, if any.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The sentinels' password, if any.
    pub fn sentinel_password(&self) -> Option<&str> {
        self.sentinel_password.as_deref()
    }

    /// Runs a command on the data node on `port` (a test helper: panics on failure).
    pub fn run_on<T: driver::FromRedisValue>(&self, port: u16, cmd: &driver::Cmd) -> T {
        self.try_run_on(port, cmd)
            .unwrap_or_else(|e| panic!("command on node {port}: {e}"))
    }

    /// Runs a command on the data node on `port`.
    pub fn try_run_on<T: driver::FromRedisValue>(
        &self,
        port: u16,
        cmd: &driver::Cmd,
    ) -> driver::RedisResult<T> {
        let mut conn = sync_connection_to(port, self.tls.as_ref(), self.password.as_deref())?;
        cmd.query(&mut conn)
    }

    /// Runs a command on the sentinel on `port`.
    pub fn try_sentinel<T: driver::FromRedisValue>(
        &self,
        port: u16,
        cmd: &driver::Cmd,
    ) -> driver::RedisResult<T> {
        let mut conn =
            sync_connection_to(port, self.tls.as_ref(), self.sentinel_password.as_deref())?;
        cmd.query(&mut conn)
    }

    /// Calls of `command` (lower case) on the current primary since its last reset.
    pub fn command_count(&self, command: &str) -> u64 {
        let info: String =
            self.run_on(self.primary_port(), driver::cmd("INFO").arg("commandstats"));
        parse_commandstats(&info)
            .get(&command.to_ascii_lowercase())
            .map_or(0, |&(calls, _)| calls)
    }

    /// Clears the command statistics of every running data node.
    pub fn reset_stats(&self) {
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            let _ = self.try_run_on::<()>(n.port, driver::cmd("CONFIG").arg("RESETSTAT"));
        }
    }

    /// Roles, named primaries and the tail of each log, for assertion messages.
    pub fn describe(&self) -> String {
        let mut out = format!("sentinels name: {:?}\n", self.named_primaries());
        for n in &self.nodes {
            let role = self
                .try_run_on::<driver::Value>(n.port, &driver::cmd("ROLE"))
                .map(|v| format!("{v:?}"))
                .unwrap_or_else(|e| format!("({e})"));
            let role: String = role.chars().take(160).collect();
            out += &format!(
                "node {} running={} role={role}\n",
                n.port,
                n.child.is_some()
            );
        }
        for p in self.nodes.iter().chain(&self.sentinels) {
            let log = read_log(&p.log);
            let tail: Vec<&str> = log.lines().rev().take(12).collect();
            out += &format!("--- {} log tail:\n", p.log.display());
            for line in tail.into_iter().rev() {
                out += line;
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        for p in self.sentinels.iter_mut().chain(self.nodes.iter_mut()) {
            p.kill();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A free loopback port in [`PORT_RANGE`] that `taken` does not hold.
fn pick_port(taken: &BTreeSet<u16>) -> u16 {
    let span = u64::from(PORT_RANGE.end - PORT_RANGE.start);
    for _ in 0..1000 {
        let port = PORT_RANGE.start + (random_u64() % span) as u16;
        if !taken.contains(&port) && TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("found no free loopback port in {PORT_RANGE:?}");
}
