//! One `redis-server` in cluster mode that serves every slot by itself.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tower_rampart::redis::{ClusterMode, RedisConfig, driver};

/// One `redis-server --cluster-enabled yes` holding all 16 384 slots. To a client that does
/// not speak the cluster protocol (`REDIS_CLUSTER=false`, as [`SlottedEndpoint::config`]
/// sets) it is one endpoint that never answers `MOVED` yet refuses a script or command whose
/// keys span slots (`CROSSSLOT`): what a proxy in front of a cluster does (Azure Managed
/// Redis's Enterprise clustering policy). Killed, and its directory removed, on drop.
#[derive(Debug)]
pub struct SlottedEndpoint {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl SlottedEndpoint {
    /// Starts the node on a free loopback port whose bus port (+10 000) is also free (as the
    /// cluster harness picks them), assigns it every slot and waits for `cluster_state:ok`
    /// (20 s deadline).
    pub fn start() -> Self {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(
                Instant::now() < deadline,
                "no cluster-mode redis-server started within 20 s"
            );
            let port = crate::cluster::pick_port_pair(&Default::default());
            let dir =
                std::env::temp_dir().join(format!("rampart-slotted-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("create the node's directory");
            let child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .arg("--cluster-config-file")
                .arg(dir.join("nodes.conf"))
                .arg("--dir")
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server on PATH (scripts/test.sh installs it)");
            let mut node = Self { child, port, dir };
            if node.claim_every_slot(deadline) {
                return node;
            }
            // Dropping `node` kills the process; another port is tried.
        }
    }

    /// The loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The crate's configuration for this endpoint, as a plain server
    /// ([`ClusterMode::Disabled`]).
    pub fn config(&self) -> RedisConfig {
        RedisConfig::from_parts("127.0.0.1", self.port).cluster(ClusterMode::Disabled)
    }

    fn claim_every_slot(&mut self, deadline: Instant) -> bool {
        let Ok(client) = driver::Client::open(format!("redis://127.0.0.1:{}", self.port)) else {
            return false;
        };
        let mut conn = loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            match client.get_connection() {
                Ok(conn) => break conn,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(_) => return false,
            }
        };
        let added: driver::RedisResult<()> = driver::cmd("CLUSTER")
            .arg("ADDSLOTSRANGE")
            .arg(0)
            .arg(16_383)
            .query(&mut conn);
        if added.is_err() {
            return false;
        }
        while Instant::now() < deadline {
            let info: driver::RedisResult<String> =
                driver::cmd("CLUSTER").arg("INFO").query(&mut conn);
            if info.is_ok_and(|i| i.contains("cluster_state:ok")) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for SlottedEndpoint {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
