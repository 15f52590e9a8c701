//! A real Redis Cluster of `redis-server --cluster-enabled yes` processes on loopback ports,
//! joined by `redis-cli --cluster create`.
//!
//! ```no_run
//! use rampart_test_support as support;
//! let cluster = support::RedisCluster::start(3, 1);
//! let config = cluster.config(); // seed: the first master
//! let (a, b) = support::keys_on_different_masters(&cluster, "test:");
//! assert_ne!(
//!     cluster.master_of_slot(cluster.slot_of(a.as_bytes())),
//!     cluster.master_of_slot(cluster.slot_of(b.as_bytes())),
//! );
//! # drop(config);
//! ```
//!
//! Every node runs with persistence off, `cluster-node-timeout 1000` (a dead master is
//! replaced by its replica within a few seconds) and `cluster-replica-validity-factor 0` (a
//! replica always takes over, however long ago it last heard from its master), and logs into
//! its own directory under one temporary directory, removed with the processes when the
//! [`RedisCluster`] is dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::ErrorKind;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tower_rampart::redis::{RedisConfig, SLOTS, driver, key_slot};

use super::{
    PORT_ATTEMPTS, START_DEADLINE, TEST_COMMAND_TIMEOUT, TEST_CONNECT_TIMEOUT, TlsFiles,
    generate_tls_files, parse_commandstats, percent_encode, random_u64, read_log,
    sync_connection_to, unique_temp_dir,
};

/// The nodes' `cluster-node-timeout`: a master unreachable this long is suspected, and
/// failed over once a majority of masters agree (a few seconds in all on loopback).
pub const CLUSTER_NODE_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long the whole cluster may take to form (`redis-cli --cluster create`, then every
/// node reporting `cluster_state:ok`).
const CLUSTER_DEADLINE: Duration = Duration::from_secs(30);
/// Client ports are picked in `PORT_RANGE`; their bus ports (port + 10000) then fall in
/// 22000..32000. Both stay below Linux's ephemeral range (32768..), so outgoing connections
/// never hold them, and below 55536 as the cluster bus requires.
const PORT_RANGE: std::ops::Range<u16> = 12000..22000;
/// Offset of the cluster bus port.
const BUS_OFFSET: u16 = 10000;
/// Polling interval while waiting for a state.
const POLL: Duration = Duration::from_millis(30);

/// One node of a [`RedisCluster`].
#[derive(Debug)]
struct Node {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A Redis Cluster of `masters` masters with `replicas_per_master` replicas each, every node
/// a `redis-server` child process on `127.0.0.1`. Dropping it kills every node and removes
/// the temporary directories.
///
/// Nodes are named by their (client) port, which stays the same across
/// [`RedisCluster::kill_node`] and [`RedisCluster::restart_node`]. For a TLS cluster the
/// port is the TLS port: the nodes accept no plain TCP at all, and the cluster bus and
/// replication run over TLS as well.
#[derive(Debug)]
pub struct RedisCluster {
    dir: PathBuf,
    tls: Option<TlsFiles>,
    password: Option<String>,
    nodes: Vec<Node>,
    /// The masters as created (ports), in `redis-cli --cluster create` order.
    initial_masters: Vec<u16>,
}

/// One line of `CLUSTER NODES`.
#[derive(Clone, Debug)]
struct NodeLine {
    id: String,
    port: u16,
    flags: Vec<String>,
    master_id: Option<String>,
    connected: bool,
    slots: Vec<(u16, u16)>,
}

impl NodeLine {
    fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    fn is_master(&self) -> bool {
        self.has_flag("master")
    }

    fn is_failing(&self) -> bool {
        self.has_flag("fail") || self.has_flag("fail?")
    }
}

fn parse_cluster_nodes(text: &str) -> Vec<NodeLine> {
    let mut lines = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            continue;
        }
        // `ip:port@cport[,hostname]`
        let addr = fields[1].split(',').next().unwrap_or("");
        let addr = addr.split('@').next().unwrap_or("");
        let port = addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(0);
        let mut slots = Vec::new();
        for slot in &fields[8..] {
            // `[slot->-id]` / `[slot-<-id]`: a migration in progress, not an owned slot.
            if slot.starts_with('[') {
                continue;
            }
            let range = match slot.split_once('-') {
                Some((a, b)) => a.parse().ok().zip(b.parse().ok()),
                None => slot.parse().ok().map(|s| (s, s)),
            };
            if let Some(range) = range {
                slots.push(range);
            }
        }
        lines.push(NodeLine {
            id: fields[0].to_owned(),
            port,
            flags: fields[2].split(',').map(str::to_owned).collect(),
            master_id: (fields[3] != "-").then(|| fields[3].to_owned()),
            connected: fields[7] == "connected",
            slots,
        });
    }
    lines
}

/// Slot ranges `(first, last, master port)`, sorted by slot.
type SlotMap = Vec<(u16, u16, u16)>;

/// Slot ranges and the port of the master serving each, sorted by slot.
fn slot_map(view: &[NodeLine]) -> SlotMap {
    let mut map: SlotMap = view
        .iter()
        .filter(|n| n.is_master())
        .flat_map(|n| n.slots.iter().map(move |&(a, b)| (a, b, n.port)))
        .collect();
    map.sort_unstable();
    map
}

impl RedisCluster {
    /// Starts `masters` masters (at least 3, as `redis-cli --cluster create` requires) with
    /// `replicas_per_master` replicas each, and waits (30 s at most) until every node reports
    /// `cluster_state:ok`, every slot is served and every replica is in sync with its master.
    ///
    /// Panics with the nodes' logs when the cluster does not form, and with a clear message
    /// when `redis-server` or `redis-cli` is missing.
    pub fn start(masters: usize, replicas_per_master: usize) -> Self {
        Self::launch(masters, replicas_per_master, false, None)
    }

    /// Like [`RedisCluster::start`], with every node requiring `password` (`requirepass`,
    /// and `masterauth` for the replicas). [`RedisCluster::config`] and the URLs carry it.
    pub fn start_with_password(masters: usize, replicas_per_master: usize, password: &str) -> Self {
        Self::launch(masters, replicas_per_master, false, Some(password))
    }

    /// Like [`RedisCluster::start`], with TLS-only nodes: no plain TCP port, `tls-cluster`
    /// and `tls-replication` on, a CA and a server certificate for `127.0.0.1` and
    /// `localhost` generated now. [`RedisCluster::config`] trusts that CA.
    pub fn start_tls(masters: usize, replicas_per_master: usize) -> Self {
        Self::launch(masters, replicas_per_master, true, None)
    }

    /// [`RedisCluster::start_tls`] with every node requiring `password`.
    pub fn start_tls_with_password(
        masters: usize,
        replicas_per_master: usize,
        password: &str,
    ) -> Self {
        Self::launch(masters, replicas_per_master, true, Some(password))
    }

    fn launch(
        masters: usize,
        replicas_per_master: usize,
        tls: bool,
        password: Option<&str>,
    ) -> Self {
        assert!(
            masters >= 3,
            "a Redis Cluster made by `redis-cli --cluster create` needs at least 3 masters, got {masters}"
        );
        check_redis_cli();
        let dir = unique_temp_dir();
        let tls = tls.then(|| generate_tls_files(&dir));
        let count = masters * (1 + replicas_per_master);
        let mut cluster = Self {
            dir,
            tls,
            password: password.map(str::to_owned),
            nodes: Vec::with_capacity(count),
            initial_masters: Vec::new(),
        };
        cluster.spawn_all(count);
        cluster.create(replicas_per_master);
        cluster.initial_masters = cluster.nodes[..masters].iter().map(|n| n.port).collect();
        cluster.wait_until_ok(CLUSTER_DEADLINE);
        cluster
    }

    /// Spawns `count` nodes on fresh port pairs and waits until each answers PING; a node
    /// that exits (its port or bus port was taken meanwhile) is moved to another pair.
    fn spawn_all(&mut self, count: usize) {
        self.spawn_all_from(count, &mut pick_port_pair);
    }

    /// [`RedisCluster::spawn_all`] with the first port of each node chosen by `first_pick`
    /// (a test forces a taken bus port with it); replacements come from [`pick_port_pair`].
    fn spawn_all_from(&mut self, count: usize, first_pick: &mut dyn FnMut(&BTreeSet<u16>) -> u16) {
        let mut taken = BTreeSet::new();
        for i in 0..count {
            let port = first_pick(&taken);
            taken.insert(port);
            let dir = self.dir.join(format!("node-{i}"));
            fs::create_dir_all(&dir).expect("create redis node directory");
            let mut node = Node {
                port,
                dir,
                child: None,
            };
            node.child = Some(self.spawn(&node));
            self.nodes.push(node);
        }
        let deadline = Instant::now() + START_DEADLINE;
        let mut attempts = vec![1; count];
        let mut ready = vec![false; count];
        while ready.iter().any(|r| !r) {
            for i in 0..count {
                if ready[i] {
                    continue;
                }
                let exited = self.nodes[i]
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                if let Some(status) = exited {
                    let log = read_log(&self.nodes[i].log_path());
                    assert!(
                        attempts[i] < PORT_ATTEMPTS,
                        "redis-server (cluster node) did not start after {PORT_ATTEMPTS} \
                         attempts; it exited with {status}, last log:\n{log}"
                    );
                    attempts[i] += 1;
                    let port = pick_port_pair(&taken);
                    taken.insert(port);
                    let node = &mut self.nodes[i];
                    node.child = None;
                    let _ = fs::remove_dir_all(&node.dir);
                    fs::create_dir_all(&node.dir).expect("create redis node directory");
                    node.port = port;
                    let child = self.spawn(&self.nodes[i]);
                    self.nodes[i].child = Some(child);
                    continue;
                }
                if self.ping(self.nodes[i].port).is_ok() {
                    ready[i] = true;
                }
            }
            if Instant::now() >= deadline {
                let mut logs = String::new();
                for (node, ready) in self.nodes.iter().zip(&ready) {
                    if !ready {
                        let _ = writeln!(
                            logs,
                            "--- node {} ---\n{}",
                            node.port,
                            read_log(&node.log_path())
                        );
                    }
                }
                panic!("cluster nodes did not answer PING within {START_DEADLINE:?}:\n{logs}");
            }
            std::thread::sleep(POLL);
        }
    }

    /// Starts `redis-server` for `node` (its port, its directory, its `nodes.conf`).
    fn spawn(&self, node: &Node) -> Child {
        let log = File::create(node.log_path()).expect("create redis-server log file");
        let log_err = log.try_clone().expect("clone redis-server log file");
        let mut cmd = Command::new("redis-server");
        cmd.arg("--bind")
            .arg("127.0.0.1")
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            .arg("--daemonize")
            .arg("no")
            .arg("--logfile")
            .arg("")
            .arg("--dir")
            .arg(&node.dir)
            .arg("--cluster-enabled")
            .arg("yes")
            .arg("--cluster-config-file")
            .arg("nodes.conf")
            .arg("--cluster-node-timeout")
            .arg(CLUSTER_NODE_TIMEOUT.as_millis().to_string())
            .arg("--cluster-replica-validity-factor")
            .arg("0")
            // A replica's full sync starts at once instead of after the 5 s default.
            .arg("--repl-diskless-sync-delay")
            .arg("0");
        match &self.tls {
            None => {
                cmd.arg("--port").arg(node.port.to_string());
            }
            Some(tls) => {
                cmd.arg("--port")
                    .arg("0")
                    .arg("--tls-port")
                    .arg(node.port.to_string())
                    .arg("--tls-cert-file")
                    .arg(&tls.cert_file)
                    .arg("--tls-key-file")
                    .arg(&tls.key_file)
                    .arg("--tls-ca-cert-file")
                    .arg(&tls.ca_file)
                    .arg("--tls-auth-clients")
                    .arg("no")
                    .arg("--tls-cluster")
                    .arg("yes")
                    .arg("--tls-replication")
                    .arg("yes");
            }
        }
        if let Some(password) = &self.password {
            cmd.arg("--requirepass")
                .arg(password)
                .arg("--masterauth")
                .arg(password);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        match cmd.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == ErrorKind::NotFound => panic!(
                "`redis-server` was not found on PATH: the Redis Cluster tests need a real server \
                 (install redis-server, e.g. `apt-get install redis-server`, or run scripts/test.sh)"
            ),
            Err(e) => panic!("cannot start redis-server: {e}"),
        }
    }

    /// `redis-cli --cluster create … --cluster-replicas N --cluster-yes`, killed past 30 s.
    fn create(&self, replicas_per_master: usize) {
        let out_path = self.dir.join("cluster-create.log");
        let out = File::create(&out_path).expect("create redis-cli log file");
        let out_err = out.try_clone().expect("clone redis-cli log file");
        let mut cmd = Command::new("redis-cli");
        if let Some(tls) = &self.tls {
            cmd.arg("--tls").arg("--cacert").arg(&tls.ca_file);
        }
        if let Some(password) = &self.password {
            // From the environment rather than `-a`, which `ps` shows.
            cmd.env("REDISCLI_AUTH", password);
        }
        cmd.arg("--cluster").arg("create");
        for node in &self.nodes {
            cmd.arg(format!("127.0.0.1:{}", node.port));
        }
        cmd.arg("--cluster-replicas")
            .arg(replicas_per_master.to_string())
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(out_err));
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == ErrorKind::NotFound => panic!("{REDIS_CLI_MISSING}"),
            Err(e) => panic!("cannot start redis-cli: {e}"),
        };
        let deadline = Instant::now() + CLUSTER_DEADLINE;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for redis-cli") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "`redis-cli --cluster create` did not finish within {CLUSTER_DEADLINE:?} \
                     (killed); its output:\n{}\n{}",
                    read_log(&out_path),
                    self.describe()
                );
            }
            std::thread::sleep(POLL);
        };
        assert!(
            status.success(),
            "`redis-cli --cluster create` failed ({status}); its output:\n{}\n{}",
            read_log(&out_path),
            self.describe()
        );
    }

    /// `redis://127.0.0.1:PORT` (`rediss://` for a TLS cluster; `redis://:PASSWORD@…` with
    /// a password) of a master that is running:
    /// the first master as created while it is alive and a master, else the first running
    /// master the cluster reports.
    pub fn seed_url(&self) -> String {
        self.url_of(self.seed_port())
    }

    /// [`RedisCluster::seed_url`] of every master the cluster reports that is running.
    pub fn seed_urls(&self) -> Vec<String> {
        self.live_master_ports()
            .into_iter()
            .map(|p| self.url_of(p))
            .collect()
    }

    fn url_of(&self, port: u16) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        match &self.password {
            Some(pw) => format!("{scheme}://:{}@127.0.0.1:{port}", percent_encode(pw)),
            None => format!("{scheme}://127.0.0.1:{port}"),
        }
    }

    fn seed_port(&self) -> u16 {
        let live = self.live_master_ports();
        self.initial_masters
            .iter()
            .copied()
            .find(|p| live.contains(p))
            .or_else(|| live.first().copied())
            .unwrap_or_else(|| panic!("no running master in the cluster\n{}", self.describe()))
    }

    /// A configuration ready to use: [`RedisConfig::from_url`] of
    /// [`RedisCluster::seed_url`], the test CA trusted for a TLS cluster, and the same short
    /// timeouts as [`RedisServer::config`](crate::RedisServer::config) (connect 2 s,
    /// command 1 s).
    pub fn config(&self) -> RedisConfig {
        let mut config = RedisConfig::from_url(&self.seed_url())
            .expect("the cluster's seed URL is valid")
            .connect_timeout(TEST_CONNECT_TIMEOUT)
            .command_timeout(TEST_COMMAND_TIMEOUT);
        if let Some(tls) = &self.tls {
            config = config.ca_certificate_pem(tls.ca_pem.clone().into_bytes());
        }
        config
    }

    /// The PEM of the CA that signed a TLS cluster's certificate.
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.ca_pem.as_str())
    }

    /// The nodes' password, if they have one.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// Whether the nodes speak TLS only.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The port of every node, running or killed, in creation order (masters first).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Whether the node on `port` is running (between [`RedisCluster::kill_node`] and
    /// [`RedisCluster::restart_node`] it is not).
    pub fn is_running(&self, port: u16) -> bool {
        self.node(port).child.is_some()
    }

    /// The ports of the masters serving slots now, as a running node sees the cluster,
    /// ordered by their first slot. Right after [`RedisCluster::kill_node`] this may still
    /// name the killed master: call [`RedisCluster::wait_until_ok`] first.
    pub fn master_ports(&self) -> Vec<u16> {
        let view = self.view();
        let mut firsts: BTreeMap<u16, u16> = BTreeMap::new();
        for (start, _, port) in slot_map(&view) {
            let first = firsts.entry(port).or_insert(start);
            *first = (*first).min(start);
        }
        let mut masters: Vec<(u16, u16)> = firsts.into_iter().map(|(p, s)| (s, p)).collect();
        masters.sort_unstable();
        masters.into_iter().map(|(_, p)| p).collect()
    }

    /// The ports of the running nodes that are replicas now (as a running node sees it).
    pub fn replica_ports(&self) -> Vec<u16> {
        let view = self.view();
        let mut ports: Vec<u16> = view
            .iter()
            .filter(|n| n.has_flag("slave") && self.is_known_running(n.port))
            .map(|n| n.port)
            .collect();
        ports.sort_unstable();
        ports
    }

    /// The port of the master that `replica_port` replicates now.
    pub fn master_of_replica(&self, replica_port: u16) -> Option<u16> {
        let view = self.view();
        let replica = view.iter().find(|n| n.port == replica_port)?;
        let master_id = replica.master_id.as_ref()?;
        view.iter().find(|n| &n.id == master_id).map(|n| n.port)
    }

    fn live_master_ports(&self) -> Vec<u16> {
        self.master_ports()
            .into_iter()
            .filter(|&p| self.is_known_running(p))
            .collect()
    }

    /// `CLUSTER KEYSLOT key`, asked of a running node.
    pub fn slot_of(&self, key: &[u8]) -> u16 {
        self.run_on(
            self.any_live_port(),
            driver::cmd("CLUSTER").arg("KEYSLOT").arg(key),
        )
    }

    /// The port of the master serving `slot` now (as a running node sees the cluster).
    pub fn master_of_slot(&self, slot: u16) -> u16 {
        slot_map(&self.view())
            .into_iter()
            .find(|&(a, b, _)| (a..=b).contains(&slot))
            .map(|(_, _, port)| port)
            .unwrap_or_else(|| panic!("no master serves slot {slot}\n{}", self.describe()))
    }

    /// The port of the master serving `key` now (its slot computed by
    /// [`key_slot`](tower_rampart::redis::key_slot)).
    pub fn master_of_key(&self, key: &[u8]) -> u16 {
        self.master_of_slot(key_slot(key))
    }

    /// The slot map now, as `(first slot, last slot, master port)` ranges sorted by slot (as a
    /// running node sees the cluster): one read, for tests that place many keys.
    pub fn slot_ranges(&self) -> Vec<(u16, u16, u16)> {
        slot_map(&self.view())
    }

    /// The cluster node id of the node on `port` (`CLUSTER MYID`).
    pub fn node_id(&self, port: u16) -> String {
        self.run_on(port, driver::cmd("CLUSTER").arg("MYID"))
    }

    /// Moves `slot` and its keys to the master on `to_port` while the cluster keeps serving:
    /// [`RedisCluster::begin_slot_move`], then [`RedisCluster::migrate_slot_keys`] in rounds
    /// of 100 keys until none is left, then [`RedisCluster::finish_slot_move`]. What
    /// `redis-cli --cluster reshard` does for one slot. Panics (naming the step) on failure.
    pub fn move_slot(&self, slot: u16, to_port: u16) {
        let from = self.begin_slot_move(slot, to_port);
        while self.migrate_slot_keys(slot, from, to_port, 100) > 0 {}
        self.finish_slot_move(slot, from, to_port);
    }

    /// First step of a slot move: `CLUSTER SETSLOT slot IMPORTING` on the master on `to_port`,
    /// then `MIGRATING` on the slot's master now, whose port it returns. From here on the
    /// source answers `ASK` for keys of the slot it no longer holds, and `TRYAGAIN` for a
    /// multi-key command whose keys are partly moved.
    pub fn begin_slot_move(&self, slot: u16, to_port: u16) -> u16 {
        let from = self.master_of_slot(slot);
        assert_ne!(from, to_port, "slot {slot} is already on {to_port}");
        let (from_id, to_id) = (self.node_id(from), self.node_id(to_port));
        let () = self.run_on(
            to_port,
            driver::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("IMPORTING")
                .arg(&from_id),
        );
        let () = self.run_on(
            from,
            driver::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("MIGRATING")
                .arg(&to_id),
        );
        from
    }

    /// Moves up to `max` keys of `slot` from the master on `from_port` to the one on
    /// `to_port` (`CLUSTER GETKEYSINSLOT`, then one `MIGRATE … KEYS`), between
    /// [`RedisCluster::begin_slot_move`] and [`RedisCluster::finish_slot_move`]. Returns how
    /// many keys it moved (0: the slot is empty on the source). On a TLS cluster `MIGRATE`
    /// runs over TLS (`tls-cluster`).
    pub fn migrate_slot_keys(&self, slot: u16, from_port: u16, to_port: u16, max: usize) -> usize {
        let keys: Vec<Vec<u8>> = self.run_on(
            from_port,
            driver::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(max),
        );
        self.migrate_keys(from_port, to_port, &keys);
        keys.len()
    }

    /// Moves `keys` (all of one slot being moved, see [`RedisCluster::begin_slot_move`]) from
    /// the master on `from_port` to the one on `to_port` with one `MIGRATE … KEYS`: a test
    /// chooses which keys of a slot move first. Keys not on the source are skipped by Redis.
    pub fn migrate_keys(&self, from_port: u16, to_port: u16, keys: &[impl AsRef<[u8]>]) {
        if keys.is_empty() {
            return;
        }
        let mut cmd = driver::cmd("MIGRATE");
        cmd.arg("127.0.0.1").arg(to_port).arg("").arg(0).arg(5000);
        if let Some(password) = &self.password {
            cmd.arg("AUTH").arg(password);
        }
        cmd.arg("KEYS");
        for key in keys {
            cmd.arg(key.as_ref());
        }
        let _: driver::Value = self.run_on(from_port, &cmd);
    }

    /// Last step of a slot move: `CLUSTER SETSLOT slot NODE <target>` on the target, then the
    /// source, then every other running master (the order `redis-cli` uses), then waits
    /// (10 s at most) until every running node sees the target serving the slot.
    pub fn finish_slot_move(&self, slot: u16, from_port: u16, to_port: u16) {
        let to_id = self.node_id(to_port);
        let mut order = vec![to_port, from_port];
        order.extend(
            self.live_master_ports()
                .into_iter()
                .filter(|p| *p != to_port && *p != from_port),
        );
        for port in order {
            let () = self.run_on(
                port,
                driver::cmd("CLUSTER")
                    .arg("SETSLOT")
                    .arg(slot)
                    .arg("NODE")
                    .arg(&to_id),
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let agreed = self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                self.try_run_on::<String>(n.port, driver::cmd("CLUSTER").arg("NODES"))
                    .is_ok_and(|text| {
                        slot_map(&parse_cluster_nodes(&text))
                            .iter()
                            .any(|&(a, b, p)| (a..=b).contains(&slot) && p == to_port)
                    })
            });
            if agreed {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "slot {slot}: not every node sees {to_port} serving it within 10 s\n{}",
                self.describe()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Runs one command on the node on `port` over a fresh blocking connection (TLS for a TLS
    /// cluster). A test helper: panics on failure, naming the node and the command.
    pub fn run_on<T: driver::FromRedisValue>(&self, port: u16, cmd: &driver::Cmd) -> T {
        self.try_run_on(port, cmd)
            .unwrap_or_else(|e| panic!("command on cluster node {port} failed: {e}"))
    }

    /// [`RedisCluster::run_on`] that returns the error instead of panicking.
    pub fn try_run_on<T: driver::FromRedisValue>(
        &self,
        port: u16,
        cmd: &driver::Cmd,
    ) -> driver::RedisResult<T> {
        let mut conn = self.sync_connection(port)?;
        cmd.query(&mut conn)
    }

    /// A blocking connection to the node on `port` (TLS for a TLS cluster). It speaks to that
    /// node only: keys of other nodes' slots answer `MOVED`.
    pub fn sync_connection(&self, port: u16) -> driver::RedisResult<driver::Connection> {
        sync_connection_to(port, self.tls.as_ref(), self.password.as_deref())
    }

    /// `FLUSHALL` on every running master (the replicas follow).
    pub fn flushall(&self) {
        for port in self.live_master_ports() {
            let () = self.run_on(port, &driver::cmd("FLUSHALL"));
        }
    }

    /// Number of calls of `command` (lower case, e.g. `"evalsha"`, `"get"`,
    /// `"script|load"`), summed over the running masters, since start or the last
    /// [`RedisCluster::reset_stats`], from `INFO commandstats`.
    pub fn command_count(&self, command: &str) -> u64 {
        let command = command.to_ascii_lowercase();
        self.live_master_ports()
            .into_iter()
            .map(|port| self.command_count_on(port, &command))
            .sum()
    }

    /// Number of calls of `command` on the node on `port` alone.
    pub fn command_count_on(&self, port: u16, command: &str) -> u64 {
        let info: String = self.run_on(port, driver::cmd("INFO").arg("commandstats"));
        parse_commandstats(&info)
            .get(&command.to_ascii_lowercase())
            .map_or(0, |&(calls, _)| calls)
    }

    /// Clears the command statistics (`CONFIG RESETSTAT`) on every running node.
    pub fn reset_stats(&self) {
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let () = self.run_on(node.port, driver::cmd("CONFIG").arg("RESETSTAT"));
        }
    }

    /// Kills the node on `port` (SIGKILL) and waits for the process to exit. Its directory
    /// and `nodes.conf` stay, so [`RedisCluster::restart_node`] brings the same node back;
    /// its data is lost (persistence is off).
    pub fn kill_node(&mut self, port: u16) {
        self.node_mut(port).kill();
    }

    /// Starts the node on `port` again (after [`RedisCluster::kill_node`]; kills it first if
    /// it runs) with the same port and `nodes.conf`, and waits until it answers PING. It
    /// rejoins the cluster by itself (a former master whose replica took over comes back as
    /// a replica); call [`RedisCluster::wait_until_ok`] to wait for that.
    pub fn restart_node(&mut self, port: u16) {
        let index = self.index(port);
        self.nodes[index].kill();
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let child = self.spawn(&self.nodes[index]);
            self.nodes[index].child = Some(child);
            let failure = loop {
                let exited = self.nodes[index]
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                if let Some(status) = exited {
                    self.nodes[index].child = None;
                    break format!("exited with {status}");
                }
                if self.ping(port).is_ok() {
                    return;
                }
                if Instant::now() >= deadline {
                    self.nodes[index].kill();
                    break format!("did not answer PING within {START_DEADLINE:?}");
                }
                std::thread::sleep(POLL);
            };
            // The port may linger briefly after the kill: try again until the deadline.
            if Instant::now() >= deadline {
                panic!(
                    "cluster node {port} did not restart: {failure}; log:\n{}",
                    read_log(&self.nodes[index].log_path())
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every running node reports `cluster_state:ok` with all 16384 slots
    /// served, they all agree on which running master serves each slot, none of them sees
    /// another running node as failing or disconnected, and every running replica is in sync
    /// with its master (`master_link_status:up`). Panics after `deadline` with every
    /// running node's `CLUSTER NODES` view and the unmet condition.
    pub fn wait_until_ok(&self, deadline: Duration) {
        let started = Instant::now();
        loop {
            let problem = match self.check_ok() {
                Ok(()) => return,
                Err(problem) => problem,
            };
            if started.elapsed() >= deadline {
                panic!(
                    "the Redis Cluster was not ok within {deadline:?}: {problem}\n{}",
                    self.describe()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// One check of [`RedisCluster::wait_until_ok`]'s conditions: the first unmet one.
    fn check_ok(&self) -> Result<(), String> {
        let live: Vec<u16> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect();
        if live.is_empty() {
            return Err("no node is running".to_owned());
        }
        let mut agreed: Option<(u16, SlotMap)> = None;
        for &port in &live {
            let info: String = self
                .try_run_on(port, driver::cmd("CLUSTER").arg("INFO"))
                .map_err(|e| format!("node {port}: CLUSTER INFO failed: {e}"))?;
            if !info.lines().any(|l| l.trim() == "cluster_state:ok") {
                return Err(format!("node {port} does not report cluster_state:ok"));
            }
            let slots_ok = format!("cluster_slots_ok:{SLOTS}");
            if !info.lines().any(|l| l.trim() == slots_ok) {
                return Err(format!("node {port} does not report {slots_ok}"));
            }
            let text: String = self
                .try_run_on(port, driver::cmd("CLUSTER").arg("NODES"))
                .map_err(|e| format!("node {port}: CLUSTER NODES failed: {e}"))?;
            let view = parse_cluster_nodes(&text);
            for &other in &live {
                match view.iter().find(|n| n.port == other) {
                    None => return Err(format!("node {port} does not know node {other}")),
                    Some(n) if n.is_failing() || !n.connected => {
                        return Err(format!(
                            "node {port} sees node {other} as {} ({})",
                            n.flags.join(","),
                            if n.connected {
                                "connected"
                            } else {
                                "disconnected"
                            }
                        ));
                    }
                    Some(_) => {}
                }
            }
            let map = slot_map(&view);
            let covered: u32 = map.iter().map(|&(a, b, _)| u32::from(b - a) + 1).sum();
            if covered != u32::from(SLOTS) {
                return Err(format!(
                    "node {port} sees {covered} of {SLOTS} slots assigned"
                ));
            }
            // Every running node serves slots or is a replica: a node of neither kind is one
            // that `redis-cli --cluster create` (or a restart) has not yet made a replica.
            if let Some(n) = view.iter().find(|n| {
                live.contains(&n.port)
                    && !n.has_flag("slave")
                    && !map.iter().any(|&(_, _, m)| m == n.port)
            }) {
                return Err(format!(
                    "node {port} sees node {} as a master without slots (not yet a replica)",
                    n.port
                ));
            }
            if let Some(&(a, b, master)) = map.iter().find(|&&(_, _, m)| !live.contains(&m)) {
                return Err(format!(
                    "node {port} sees slots {a}-{b} served by node {master}, which is not running"
                ));
            }
            match &agreed {
                None => agreed = Some((port, map)),
                Some((first, first_map)) if *first_map != map => {
                    return Err(format!(
                        "nodes {first} and {port} disagree on which master serves which slots"
                    ));
                }
                Some(_) => {}
            }
            let me = view.iter().find(|n| n.has_flag("myself"));
            if me.is_some_and(|n| n.has_flag("slave")) {
                let info: String = self
                    .try_run_on(port, driver::cmd("INFO").arg("replication"))
                    .map_err(|e| format!("node {port}: INFO replication failed: {e}"))?;
                if !info.lines().any(|l| l.trim() == "master_link_status:up") {
                    return Err(format!("replica {port} is not in sync with its master"));
                }
            }
        }
        Ok(())
    }

    /// Every node's port, state and (when running) `CLUSTER NODES` view, for panic messages.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            if node.child.is_none() {
                let _ = writeln!(out, "--- node {}: not running", node.port);
                continue;
            }
            match self.try_run_on::<String>(node.port, driver::cmd("CLUSTER").arg("NODES")) {
                Ok(view) => {
                    let _ = write!(
                        out,
                        "--- CLUSTER NODES as node {} sees it:\n{view}",
                        node.port
                    );
                }
                Err(e) => {
                    let _ = writeln!(out, "--- node {}: CLUSTER NODES failed: {e}", node.port);
                }
            }
        }
        out
    }

    /// The log of the node on `port` so far (for assertion messages).
    pub fn node_log(&self, port: u16) -> String {
        read_log(&self.node(port).log_path())
    }

    /// `CLUSTER NODES` as a running node sees it, parsed. Asks the nodes in order and uses
    /// the first that answers.
    fn view(&self) -> Vec<NodeLine> {
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            if let Ok(text) =
                self.try_run_on::<String>(node.port, driver::cmd("CLUSTER").arg("NODES"))
            {
                return parse_cluster_nodes(&text);
            }
        }
        panic!("no cluster node answers CLUSTER NODES\n{}", self.describe());
    }

    fn any_live_port(&self) -> u16 {
        self.nodes
            .iter()
            .find(|n| n.child.is_some())
            .map(|n| n.port)
            .expect("no cluster node is running")
    }

    fn is_known_running(&self, port: u16) -> bool {
        self.nodes
            .iter()
            .any(|n| n.port == port && n.child.is_some())
    }

    fn index(&self, port: u16) -> usize {
        self.nodes
            .iter()
            .position(|n| n.port == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port} (nodes: {:?})", self.ports()))
    }

    fn node(&self, port: u16) -> &Node {
        &self.nodes[self.index(port)]
    }

    fn node_mut(&mut self, port: u16) -> &mut Node {
        let index = self.index(port);
        &mut self.nodes[index]
    }

    fn ping(&self, port: u16) -> driver::RedisResult<()> {
        let mut conn = self.sync_connection(port)?;
        driver::cmd("PING").query::<()>(&mut conn)
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Two keys, `prefix` followed by a number, whose hash slots are served by different masters
/// now. `prefix` must not hold a hash tag (`{…}`), or every key would share its slot.
pub fn keys_on_different_masters(cluster: &RedisCluster, prefix: &str) -> (String, String) {
    keys_on_different_masters_with(cluster, |i| format!("{prefix}{i}"))
}

/// Two keys made by `make` (called with 0, 1, 2, …) whose hash slots are served by different
/// masters now: `make(0)` and the first later key on another master. Panics when none of the
/// first 10 000 keys qualifies (e.g. every key carries the same hash tag).
pub fn keys_on_different_masters_with(
    cluster: &RedisCluster,
    make: impl Fn(u64) -> String,
) -> (String, String) {
    let map = slot_map(&cluster.view());
    let master = |key: &str| {
        let slot = key_slot(key.as_bytes());
        map.iter()
            .find(|&&(a, b, _)| (a..=b).contains(&slot))
            .map(|&(_, _, port)| port)
            .unwrap_or_else(|| panic!("no master serves slot {slot}"))
    };
    let first = make(0);
    let first_master = master(&first);
    (1..10_000)
        .map(&make)
        .find(|key| master(key) != first_master)
        .map(|second| (first.clone(), second))
        .unwrap_or_else(|| {
            panic!("no key among the first 10 000 lives on another master than {first:?}")
        })
}

/// A client port in [`PORT_RANGE`] whose bus port (port + 10000) is free as well, and that
/// `taken` (this cluster's ports) does not hold.
pub(crate) fn pick_port_pair(taken: &BTreeSet<u16>) -> u16 {
    let span = u64::from(PORT_RANGE.end - PORT_RANGE.start);
    for _ in 0..1000 {
        let port = PORT_RANGE.start + (random_u64() % span) as u16;
        if taken.contains(&port) {
            continue;
        }
        let free = |p: u16| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok();
        if free(port) && free(port + BUS_OFFSET) {
            return port;
        }
    }
    panic!("found no free loopback port pair (port, port + {BUS_OFFSET}) in {PORT_RANGE:?}");
}

const REDIS_CLI_MISSING: &str = "`redis-cli` was not found on PATH: the Redis Cluster tests \
     need it to create the cluster (it comes with redis-server: `apt-get install redis-server` \
     or `redis-tools`)";

fn check_redis_cli() {
    match Command::new("redis-cli")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => panic!("{REDIS_CLI_MISSING}"),
        Err(e) => panic!("cannot run redis-cli: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cluster_nodes_lines() {
        let text = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,hostname4 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@31003 master,fail? - 0 1426238318243 3 disconnected 10923-16383 [93->-e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca]
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460 16000
:0@0 noaddr - 0 0 0 disconnected
";
        let view = parse_cluster_nodes(text);
        assert_eq!(view.len(), 4, "the short line is skipped");
        assert_eq!(view[0].port, 30004);
        assert!(view[0].has_flag("slave") && !view[0].is_master());
        assert_eq!(
            view[0].master_id.as_deref(),
            Some("e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca")
        );
        assert!(view[2].is_failing() && !view[2].connected);
        assert_eq!(
            view[2].slots,
            vec![(10923, 16383)],
            "migrations are not owned slots"
        );
        assert_eq!(view[3].slots, vec![(0, 5460), (16000, 16000)]);
        assert!(view[3].has_flag("myself"));
        assert_eq!(
            slot_map(&view),
            vec![
                (0, 5460, 30001),
                (5461, 10922, 30002),
                (10923, 16383, 30003),
                (16000, 16000, 30001)
            ]
        );
    }

    #[test]
    fn a_node_whose_bus_port_is_taken_moves_to_another_port_pair() {
        let dir = unique_temp_dir();
        let mut cluster = RedisCluster {
            dir,
            tls: None,
            password: None,
            nodes: Vec::new(),
            initial_masters: Vec::new(),
        };
        // Hold the bus port of the first pair offered: that node cannot start there.
        let blocked = pick_port_pair(&BTreeSet::new());
        let _holder = TcpListener::bind((Ipv4Addr::LOCALHOST, blocked + BUS_OFFSET))
            .expect("hold a bus port");
        cluster.spawn_all_from(1, &mut |_| blocked);
        let port = cluster.ports()[0];
        assert_ne!(port, blocked);
        assert!(cluster.ping(port).is_ok());
        assert!(cluster.is_running(port));
    }
}
