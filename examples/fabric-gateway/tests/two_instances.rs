//! Two gateway instances sharing one real Redis, as behind a load balancer: the same
//! scale-out behaviour on one server and on a 3-master Redis Cluster with a replica each
//! (the same test bodies, parametrized by topology), a master of that cluster killed while
//! both instances serve (its replica promoted, no restart); and a Redis outage with
//! recovery.

mod common;
use rampart_test_support as support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use serde_json::Value;
use support::{RedisCluster, RedisServer};
use tower_rampart::redis::driver;

const SECRET_KEY: &str = "two-instances-test-secret-key-0123456789abcdef";
const REDIS_PASSWORD: &str = "redis-pass-7d1e9c0a55";
/// Each cluster test (cluster start included) finishes well within this.
const DEADLINE: Duration = Duration::from_secs(55);

/// The Redis two instances share: one server, or a Redis Cluster (3 masters, a replica
/// each) that the gateway finds from one seed node (`REDIS_URL`, `REDIS_CLUSTER` unset).
enum SharedRedis {
    Single(RedisServer),
    Cluster(RedisCluster),
}

impl SharedRedis {
    async fn single(password: Option<&'static str>) -> Self {
        tokio::task::spawn_blocking(move || match password {
            Some(pw) => Self::Single(RedisServer::start_with_password(pw)),
            None => Self::Single(RedisServer::start()),
        })
        .await
        .unwrap()
    }

    async fn cluster(password: Option<&'static str>) -> Self {
        tokio::task::spawn_blocking(move || match password {
            Some(pw) => Self::Cluster(RedisCluster::start_with_password(3, 1, pw)),
            None => Self::Cluster(RedisCluster::start(3, 1)),
        })
        .await
        .unwrap()
    }

    /// The same over TLS only (a CA generated for the test, handed to the gateway's Redis
    /// configuration as an application would; `REDIS_URL` is `rediss://`).
    async fn single_tls(password: &'static str) -> Self {
        tokio::task::spawn_blocking(move || {
            Self::Single(RedisServer::start_tls_with_password(password))
        })
        .await
        .unwrap()
    }

    async fn cluster_tls(password: &'static str) -> Self {
        tokio::task::spawn_blocking(move || {
            Self::Cluster(RedisCluster::start_tls_with_password(3, 1, password))
        })
        .await
        .unwrap()
    }

    /// The CA of a TLS setup.
    fn ca_pem(&self) -> Option<&str> {
        match self {
            Self::Single(server) => server.ca_pem(),
            Self::Cluster(cluster) => cluster.ca_pem(),
        }
    }

    /// `REDIS_URL` for the gateway: the server, or one seed node of the cluster.
    fn url(&self) -> String {
        match self {
            Self::Single(server) => server.url(),
            Self::Cluster(cluster) => cluster.seed_url(),
        }
    }

    /// What `/health` reports as `redis_topology`, and the nodes it expects.
    fn topology(&self) -> (&'static str, u64) {
        match self {
            Self::Single(_) => ("single", 1),
            Self::Cluster(_) => ("cluster", 3),
        }
    }

    /// Every key and every value, as bytes (on a cluster, from every master).
    fn dump(&self) -> Vec<u8> {
        match self {
            Self::Single(server) => dump(&mut server.sync_connection().unwrap()),
            Self::Cluster(cluster) => {
                let mut all = Vec::new();
                for port in cluster.master_ports() {
                    all.extend(dump(&mut cluster.sync_connection(port).unwrap()));
                }
                all
            }
        }
    }
}

async fn instance(redis: &SharedRedis) -> Gateway {
    instance_with(redis, &[]).await
}

async fn instance_with(redis: &SharedRedis, extra: &[(&str, &str)]) -> Gateway {
    let url = redis.url();
    let mut vars = vec![("REDIS_URL", url.as_str()), ("SECRET_KEY", SECRET_KEY)];
    vars.extend_from_slice(extra);
    gateway_trusting(&vars, redis.ca_pem()).await
}

/// Every key and every value the node behind `conn` holds, as bytes.
fn dump(conn: &mut driver::Connection) -> Vec<u8> {
    let keys: Vec<Vec<u8>> = driver::cmd("KEYS").arg("*").query(conn).unwrap();
    let mut all = Vec::new();
    for key in keys {
        let kind: String = driver::cmd("TYPE").arg(&key).query(conn).unwrap();
        let values: Vec<Vec<u8>> = match kind.as_str() {
            "string" => vec![driver::cmd("GET").arg(&key).query(conn).unwrap()],
            "hash" => driver::cmd("HGETALL").arg(&key).query(conn).unwrap(),
            "set" => driver::cmd("SMEMBERS").arg(&key).query(conn).unwrap(),
            "list" => driver::cmd("LRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query(conn)
                .unwrap(),
            "zset" => driver::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query(conn)
                .unwrap(),
            other => panic!(
                "unexpected Redis type {other} at {}",
                String::from_utf8_lossy(&key)
            ),
        };
        all.extend_from_slice(&key);
        all.push(b'\n');
        for v in values {
            all.extend_from_slice(&v);
            all.push(b'\n');
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn two_instances_share_sessions_quotas_and_logouts() {
    share_sessions_quotas_and_logouts(SharedRedis::single(Some(REDIS_PASSWORD)).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_sessions_quotas_and_logouts_on_a_cluster() {
    let redis = SharedRedis::cluster(Some(REDIS_PASSWORD)).await;
    tokio::time::timeout(DEADLINE, share_sessions_quotas_and_logouts(redis))
        .await
        .expect("deadline");
}

#[tokio::test]
async fn two_instances_share_sessions_quotas_and_logouts_over_tls() {
    let redis = SharedRedis::single_tls(REDIS_PASSWORD).await;
    assert!(redis.url().starts_with("rediss://"));
    tokio::time::timeout(DEADLINE, share_sessions_quotas_and_logouts(redis))
        .await
        .expect("deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_sessions_quotas_and_logouts_on_a_tls_cluster() {
    let redis = SharedRedis::cluster_tls(REDIS_PASSWORD).await;
    assert!(redis.url().starts_with("rediss://"));
    tokio::time::timeout(DEADLINE, share_sessions_quotas_and_logouts(redis))
        .await
        .expect("deadline");
}

/// Sign-in on one instance works on the other, the `/query` quota is one for both, logout
/// on one ends the session on both, and Redis holds no secret.
async fn share_sessions_quotas_and_logouts(redis: SharedRedis) {
    let a = instance(&redis).await;
    let b = instance(&redis).await;
    let (topology, nodes) = redis.topology();
    for gw in [&a, &b] {
        let health = health(gw).await;
        assert_eq!(health["status"], "healthy", "{health}");
        assert_eq!(health["redis_connected"], true);
        assert_eq!(health["session_store"], "redis");
        assert_eq!(health["redis_topology"], topology, "{health}");
        assert_eq!(health["redis_nodes"]["reachable"], nodes, "{health}");
    }

    // Sign in on A. (Cookies do not depend on the port: one browser talks to both.)
    let client = browser();
    let token = dev_token(&client, &a, "ada@example.com", "Ada Lovelace").await;
    let value = sign_in(&client, &a, &token).await;

    // The session works on B.
    let user = get_json(&client, b.url("/auth/user")).await;
    assert_eq!(user["user"]["email"], "ada@example.com");

    // The quota is global: 10 across both instances, the 11th refused wherever it lands.
    for i in 0..10 {
        let gw = if i % 2 == 0 { &b } else { &a };
        let resp = query(&client, gw, &format!("question {i}")).await;
        assert_eq!(resp.status(), 200, "query #{i}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["success"], true);
    }
    for gw in [&a, &b] {
        let resp = query(&client, gw, "one too many").await;
        assert_eq!(resp.status(), 429);
        let h = resp.headers();
        let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry));
        assert_eq!(
            h["ratelimit-policy"],
            r#""query-ip";q=10;w=60, "query-user";q=10;w=60"#
        );
        let status = h["ratelimit"].to_str().unwrap();
        assert!(status.contains("r=0"), "{status}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["detail"], "Rate limit exceeded: 10 per 1 minute");
    }

    // Redis holds neither the cookie (nor the id inside it) nor the Fabric token nor the
    // user's email: keys are hashes, records are encrypted.
    let all = redis.dump();
    assert!(!all.is_empty(), "Redis holds the session and the limits");
    let raw = URL_SAFE_NO_PAD
        .decode(&value)
        .expect("the cookie is base64url");
    let id = &raw[..16];
    assert!(!contains(&all, value.as_bytes()), "cookie value in Redis");
    assert!(!contains(&all, id), "raw session id in Redis");
    assert!(
        !contains(&all, hex(id).as_bytes()),
        "hex session id in Redis"
    );
    assert!(!contains(&all, token.as_bytes()), "Fabric token in Redis");
    for part in token.split('.') {
        assert!(
            !contains(&all, part.as_bytes()),
            "a part of the token in Redis"
        );
    }
    assert!(!contains(&all, b"ada@example.com"), "the email in Redis");

    // Logout on B ends the session on A.
    let resp = client.post(b.url("/auth/logout")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    for gw in [&a, &b] {
        let resp = with_session(plain().get(gw.url("/auth/user")), &value)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        let status = auth_status_with(gw, &value).await;
        assert_eq!(status["authenticated"], false);
    }

    assert_no_secret_logged(&[&token, &value, SECRET_KEY, REDIS_PASSWORD]);
    drop((a, b));
    drop(redis);
}

async fn single_instance(redis: &RedisServer) -> Gateway {
    let url = redis.url();
    Gateway::local(&[("REDIS_URL", url.as_str()), ("SECRET_KEY", SECRET_KEY)]).await
}

async fn timed<F: std::future::Future<Output = reqwest::Response>>(
    f: F,
) -> (reqwest::Response, Duration) {
    let started = Instant::now();
    let resp = f.await;
    (resp, started.elapsed())
}

#[tokio::test]
async fn a_redis_outage_degrades_fast_and_recovers() {
    let mut redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let gw = single_instance(&redis).await;
    let (client, token) = signed_in(&gw).await;
    assert_eq!(query(&client, &gw, "before").await.status(), 200);

    let redis = tokio::task::spawn_blocking(move || {
        redis.stop();
        redis
    })
    .await
    .unwrap();
    let mut redis = redis;

    // /health says degraded within a few seconds (still 200).
    let h = health_reaches(&gw, "degraded", Duration::from_secs(5)).await;
    assert_eq!(h["redis_connected"], false);

    // Session-backed endpoints answer 503 fast, never hang.
    for _ in 0..3 {
        let (resp, took) = timed(client.get(gw.url("/auth/status")).send().map_ok()).await;
        assert_eq!(resp.status(), 503);
        assert!(took < Duration::from_secs(3), "took {took:?}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["detail"], "Session store unavailable");
        let (resp, took) = timed(query(&client, &gw, "during")).await;
        assert_eq!(resp.status(), 503);
        assert!(took < Duration::from_secs(3), "took {took:?}");
        let (resp, took) = timed(login(&client, &gw, &token)).await;
        assert_eq!(resp.status(), 503, "the token is fine: the store is not");
        assert!(took < Duration::from_secs(3), "took {took:?}");
    }

    // Redis comes back (empty: the test server keeps nothing); the service recovers by itself.
    redis = tokio::task::spawn_blocking(move || {
        redis.restart();
        redis
    })
    .await
    .unwrap();
    let h = health_reaches(&gw, "healthy", Duration::from_secs(30)).await;
    assert_eq!(h["redis_connected"], true);
    login_succeeds_within(&client, &gw, &token, Duration::from_secs(30)).await;
    let resp = query(&client, &gw, "after").await;
    assert_eq!(resp.status(), 200);
    drop(redis);
    assert_no_secret_logged(&[&token, SECRET_KEY]);
}

/// Polls `/health` (Redis reconnects in real time) until its status is `status`; fails after
/// `within`. Returns the last answer.
async fn health_reaches(gw: &Gateway, status: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let h = health(gw).await;
        if h["status"] == status {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "not {status} within {within:?}: {h}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Retries logging in until it succeeds (Redis is back); fails after `within`.
async fn login_succeeds_within(
    client: &reqwest::Client,
    gw: &Gateway,
    token: &str,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    while login(client, gw, token).await.status() != 200 {
        assert!(
            Instant::now() < deadline,
            "login not back within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `send()` futures as `Response` futures (panicking on transport errors).
trait MapOk {
    fn map_ok(self) -> impl std::future::Future<Output = reqwest::Response>;
}

impl<F> MapOk for F
where
    F: std::future::Future<Output = reqwest::Result<reqwest::Response>>,
{
    async fn map_ok(self) -> reqwest::Response {
        self.await.expect("the request completes")
    }
}

#[tokio::test]
async fn the_session_quota_is_shared_by_instances_for_one_session() {
    session_quota_is_shared(SharedRedis::single(None).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_quota_is_shared_by_instances_for_one_session_on_a_cluster() {
    let redis = SharedRedis::cluster(None).await;
    tokio::time::timeout(DEADLINE, session_quota_is_shared(redis))
        .await
        .expect("deadline");
}

/// Two browsers on the same address share the per-IP quota; one session's quota follows it
/// across instances even when the IP quota is larger.
async fn session_quota_is_shared(redis: SharedRedis) {
    let limits = [
        ("RATE_LIMIT_QUERY_IP", "100/minute"),
        ("RATE_LIMIT_QUERY_SESSION", "3/minute"),
    ];
    let a = instance_with(&redis, &limits).await;
    let b = instance_with(&redis, &limits).await;
    let first = browser();
    let token = dev_token(&first, &a, "ada@example.com", "Ada").await;
    login(&first, &a, &token).await;
    for gw in [&a, &b, &a] {
        assert_eq!(query(&first, gw, "q").await.status(), 200);
    }
    let resp = query(&first, &b, "q").await;
    assert_eq!(resp.status(), 429);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["detail"],
        "Rate limit exceeded: 3 per 1 minute"
    );
    // Another session from the same address is not affected.
    let second = browser();
    // (Each local-mode instance has its own dev identity: A's tokens are signed in on A.)
    assert_eq!(login(&second, &a, &token).await.status(), 200);
    assert_eq!(query(&second, &b, "mine").await.status(), 200);
    drop((a, b));
    drop(redis);
}

#[tokio::test]
async fn starts_degraded_without_redis_and_connects_when_it_answers() {
    let mut redis = tokio::task::spawn_blocking(|| {
        let mut server = RedisServer::start();
        server.stop();
        server
    })
    .await
    .unwrap();
    let started = Instant::now();
    let gw = single_instance(&redis).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "an unreachable Redis does not hold up start-up"
    );
    let h = health(&gw).await;
    assert_eq!(h["status"], "degraded");
    assert_eq!(h["redis_connected"], false);
    assert_eq!(h["session_store"], "redis");
    let client = browser();
    let token = dev_token(&client, &gw, "ada@example.com", "Ada").await;
    assert_eq!(login(&client, &gw, &token).await.status(), 503);

    redis = tokio::task::spawn_blocking(move || {
        redis.restart();
        redis
    })
    .await
    .unwrap();
    login_succeeds_within(&client, &gw, &token, Duration::from_secs(30)).await;
    assert_eq!(health(&gw).await["status"], "healthy");
    assert_eq!(query(&client, &gw, "hello").await.status(), 200);
    drop(redis);
}

/// What one request of the failover run saw.
struct Seen {
    /// Since the master was killed (negative: before).
    at_ms: i64,
    instance: char,
    route: &'static str,
    /// `None`: no HTTP answer at all (the client's own timeout).
    status: Option<u16>,
}

/// Two instances on a 3-master cluster while the master holding the signed-in session dies
/// (SIGKILL) and its replica is promoted: both instances keep serving without a restart.
/// Requests alternate between the instances (`/auth/user`, a session load, and `/query`,
/// the limiter and the fake agent) before, during and after; every one is answered (no
/// hang), the errors are `503`s confined to a window that closes once the cluster has
/// failed over, the session survives (it was replicated long before the kill), and
/// afterwards sign-in, the quota and logout across instances work as before. The statuses
/// and the window are printed (`--no-capture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_master_dies_and_both_instances_keep_working() {
    tokio::time::timeout(DEADLINE, master_dies_mid_run(Seeds::AllMasters, false))
        .await
        .expect("deadline");
}

/// The same run with `REDIS_URL` naming one node, and that node the master that dies: the
/// instances keep their cluster connections, which reach the cluster through the nodes they
/// learnt, not only the configured seed. (Before the cluster connection was kept, an
/// instance whose circuit breaker opened while the master was dead rebuilt its connection
/// from the dead seed alone and answered `503` until that node came back: 4 runs of 5.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_the_only_seed_dies_and_both_instances_keep_working() {
    tokio::time::timeout(DEADLINE, master_dies_mid_run(Seeds::OneThatDies, false))
        .await
        .expect("deadline");
}

/// The same run on a TLS-only cluster (the gateway trusts the test CA).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_tls_cluster_a_master_dies_and_both_instances_keep_working() {
    tokio::time::timeout(DEADLINE, master_dies_mid_run(Seeds::AllMasters, true))
        .await
        .expect("deadline");
}

/// A gateway for `vars`, trusting `ca` (PEM) for Redis's TLS when given, as an application
/// with a private CA configures it.
async fn gateway_trusting(vars: &[(&str, &str)], ca: Option<&str>) -> Gateway {
    let mut config = config(vars);
    if let Some(pem) = ca {
        config.redis = config
            .redis
            .map(|r| r.ca_certificate_pem(pem.as_bytes().to_vec()));
    }
    Gateway::start(config).await
}

/// What `REDIS_URL` lists in a failover run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seeds {
    /// Every master, comma-separated.
    AllMasters,
    /// One master: the one holding the session, which the run kills.
    OneThatDies,
}

/// Requests alternating between the two instances with `session` (`/auth/user`, a session
/// load, and `/query`, the limiter and the fake agent), one every 20 ms until the sender is
/// told `true`; each with its status and its time relative to the instant in `mark` once
/// set. The task returns what it saw.
fn spawn_load(
    a: &Gateway,
    b: &Gateway,
    session: &str,
    mark: std::sync::Arc<std::sync::Mutex<Option<Instant>>>,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<Vec<Seen>>,
) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (a_url, b_url) = (a.base.clone(), b.base.clone());
    let session = session.to_owned();
    let load = tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let mut seen = Vec::new();
        let mut i = 0u64;
        while !*stop_rx.borrow() {
            let (instance, base) = if i.is_multiple_of(2) {
                ('A', &a_url)
            } else {
                ('B', &b_url)
            };
            let (route, req) = if i % 4 < 2 {
                ("/auth/user", http.get(format!("{base}/auth/user")))
            } else {
                (
                    "/query",
                    http.post(format!("{base}/query"))
                        .json(&serde_json::json!({ "query": format!("q{i}") })),
                )
            };
            let status = with_session(req, &session)
                .send()
                .await
                .ok()
                .map(|r| r.status().as_u16());
            let now = Instant::now();
            let at_ms = match *mark.lock().unwrap() {
                Some(k) if now >= k => (now - k).as_millis() as i64,
                Some(k) => -((k - now).as_millis() as i64),
                None => -1,
            };
            seen.push(Seen {
                at_ms,
                instance,
                route,
                status,
            });
            i += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seen
    });
    (stop_tx, load)
}

async fn master_dies_mid_run(seeds: Seeds, tls: bool) {
    let cluster = tokio::task::spawn_blocking(move || {
        if tls {
            RedisCluster::start_tls(3, 1)
        } else {
            RedisCluster::start(3, 1)
        }
    })
    .await
    .unwrap();
    let url = match seeds {
        Seeds::AllMasters => cluster.seed_urls().join(","),
        Seeds::OneThatDies => cluster.seed_url(),
    };
    let vars = [
        ("REDIS_URL", url.as_str()),
        ("SECRET_KEY", SECRET_KEY),
        ("RATE_LIMIT_QUERY_IP", "100000/minute"),
        ("RATE_LIMIT_QUERY_SESSION", "100000/minute"),
        ("RATE_LIMIT_LOGIN_IP", "1000/minute"),
    ];
    let a = gateway_trusting(&vars, cluster.ca_pem()).await;
    let b = gateway_trusting(&vars, cluster.ca_pem()).await;
    // The master holding a session's record (a hash-tagged key of its own slot).
    let master_of = |cluster: &RedisCluster| {
        cluster
            .master_ports()
            .into_iter()
            .filter(|&port| {
                let keys: Vec<String> =
                    cluster.run_on(port, driver::cmd("KEYS").arg("rampart:session:{*"));
                !keys.is_empty()
            })
            .collect::<Vec<u16>>()
    };
    let client = browser();
    let token = dev_token(&client, &a, "ada@example.com", "Ada Lovelace").await;
    let mut attempts = 0;
    let (session, victim) = loop {
        cluster.flushall();
        let session = sign_in(&client, &a, &token).await;
        let holders = master_of(&cluster);
        assert_eq!(holders.len(), 1, "one master holds the one session");
        let seed_port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
        if seeds == Seeds::AllMasters || holders[0] == seed_port {
            break (session, holders[0]);
        }
        attempts += 1;
        assert!(attempts < 50, "no session landed on the seed");
    };
    let mut cluster = cluster;
    // Requests flow from here until the end of the run.
    let kill_at = std::sync::Arc::new(std::sync::Mutex::new(None::<Instant>));
    let (stop_tx, load) = spawn_load(&a, &b, &session, kill_at.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    *kill_at.lock().unwrap() = Some(Instant::now());
    let killed = Instant::now();
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.kill_node(victim);
        cluster.wait_until_ok(Duration::from_secs(30));
        cluster
    })
    .await
    .unwrap();
    let failed_over = killed.elapsed();
    // Keep the load on until both instances answered 20 requests in a row with 200 after
    // the failover (or fail at the deadline).
    let recovered_by = Instant::now() + Duration::from_secs(20);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let h = (health(&a).await, health(&b).await);
        if h.0["status"] == "healthy" && h.1["status"] == "healthy" {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            break;
        }
        assert!(
            Instant::now() < recovered_by,
            "not healthy again 20 s after the failover: {} / {}",
            h.0,
            h.1
        );
    }
    stop_tx.send(true).unwrap();
    let seen = load.await.unwrap();

    // Every request was answered: no hang, no transport error.
    assert!(
        seen.iter().all(|s| s.status.is_some()),
        "a request got no answer"
    );
    let statuses: std::collections::BTreeMap<(char, &str, u16), usize> =
        seen.iter().fold(Default::default(), |mut m, s| {
            *m.entry((s.instance, s.route, s.status.unwrap()))
                .or_default() += 1;
            m
        });
    let errors: Vec<&Seen> = seen.iter().filter(|s| s.status != Some(200)).collect();
    // Errors are 503s ("session store unavailable"), nothing else, all after the kill.
    for e in &errors {
        assert_eq!(
            e.status,
            Some(503),
            "{} {} at {} ms",
            e.instance,
            e.route,
            e.at_ms
        );
        assert!(e.at_ms >= 0, "an error before the kill");
    }
    let window = errors
        .first()
        .zip(errors.last())
        .map(|(f, l)| (f.at_ms, l.at_ms));
    println!(
        "failover run ({seeds:?}): {} requests, cluster failed over (wait_until_ok) {failed_over:?} after the kill; statuses {statuses:?}; error window after the kill: {window:?} ms",
        seen.len()
    );
    // The last 20 requests (10 per instance) all succeeded.
    assert!(
        seen.iter().rev().take(20).all(|s| s.status == Some(200)),
        "not recovered at the end of the run"
    );

    // After the failover, without a restart: the session still works on both, a new
    // sign-in on B works on A, one quota for both, and logout on B ends it on A.
    for gw in [&a, &b] {
        let resp = with_session(plain().get(gw.url("/auth/user")), &session)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "the session survived the failover");
    }
    let second = browser();
    let token_b = dev_token(&second, &b, "grace@example.com", "Grace Hopper").await;
    let value = sign_in(&second, &b, &token_b).await;
    let user = get_json(&second, a.url("/auth/user")).await;
    assert_eq!(user["user"]["email"], "grace@example.com");
    let resp = second.post(b.url("/auth/logout")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    for gw in [&a, &b] {
        let resp = with_session(plain().get(gw.url("/auth/user")), &value)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "logged out everywhere");
    }
    drop((a, b));
    drop(cluster);
}

/// `REDIS_WAIT_REPLICAS=1` against a primary with one replica: a sign-in on one instance is
/// on the replica when it is answered and works on the other instance; with the replica
/// gone, a sign-in is answered `503` ("Session store unavailable") after the wait timeout,
/// while `/health` and session loads keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_wait_replicas_sign_ins_wait_for_the_replica() {
    tokio::time::timeout(DEADLINE, wait_replicas_run())
        .await
        .expect("deadline");
}

async fn wait_replicas_run() {
    let (primary, replica) = tokio::task::spawn_blocking(|| {
        let primary = RedisServer::start();
        let replica = RedisServer::start_replica_of(&primary);
        (primary, replica)
    })
    .await
    .unwrap();
    let url = primary.url();
    let vars = [
        ("REDIS_URL", url.as_str()),
        ("SECRET_KEY", SECRET_KEY),
        ("REDIS_WAIT_REPLICAS", "1"),
        ("REDIS_WAIT_TIMEOUT_MS", "300"),
    ];
    let a = Gateway::local(&vars).await;
    let b = Gateway::local(&vars).await;
    let client = browser();
    let token = dev_token(&client, &a, "ada@example.com", "Ada Lovelace").await;
    let session = sign_in(&client, &a, &token).await;
    // The session record is on the replica already (read there, no waiting).
    let keys: Vec<String> = replica.run(driver::cmd("KEYS").arg("rampart:session:{*"));
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(primary.command_count("wait") >= 1);
    let user = get_json(&client, b.url("/auth/user")).await;
    assert_eq!(user["user"]["email"], "ada@example.com");

    let mut replica = replica;
    let replica = tokio::task::spawn_blocking(move || {
        replica.stop();
        replica
    })
    .await
    .unwrap();
    let other = browser();
    let token_b = dev_token(&other, &b, "grace@example.com", "Grace").await;
    let started = Instant::now();
    let resp = login(&other, &b, &token_b).await;
    assert_eq!(resp.status(), 503);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["detail"], "Session store unavailable");
    // Loads do not wait: the existing session still works, and Redis is healthy.
    let resp = with_session(plain().get(a.url("/auth/user")), &session)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(health(&a).await["status"], "healthy");
    drop((a, b));
    drop((primary, replica));
}

/// Two instances on a 3-master cluster while the slot of the signed-in session moves to
/// another master and back (keys migrated in rounds, as `redis-cli --cluster reshard` does),
/// with requests alternating between the instances throughout: every request succeeds (the
/// connection follows `ASK`/`MOVED` and waits out `TRYAGAIN` within the command timeout),
/// and the session is intact on the new master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_the_sessions_slot_moves_and_no_request_fails() {
    slot_moves_run(false).await;
}

/// The same on a TLS-only cluster (`MIGRATE` over TLS between the masters).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_tls_cluster_the_sessions_slot_moves_and_no_request_fails() {
    slot_moves_run(true).await;
}

async fn slot_moves_run(tls: bool) {
    tokio::time::timeout(DEADLINE, async {
        let cluster = tokio::task::spawn_blocking(move || {
            if tls {
                RedisCluster::start_tls(3, 0)
            } else {
                RedisCluster::start(3, 0)
            }
        })
        .await
        .unwrap();
        let url = cluster.seed_url();
        let vars = [
            ("REDIS_URL", url.as_str()),
            ("SECRET_KEY", SECRET_KEY),
            ("RATE_LIMIT_QUERY_IP", "100000/minute"),
            ("RATE_LIMIT_QUERY_SESSION", "100000/minute"),
        ];
        let a = gateway_trusting(&vars, cluster.ca_pem()).await;
        let b = gateway_trusting(&vars, cluster.ca_pem()).await;
        let client = browser();
        let token = dev_token(&client, &a, "ada@example.com", "Ada Lovelace").await;
        let session = sign_in(&client, &a, &token).await;
        // The session record's key, its slot and master, and a master to move it to.
        let (record_key, from) = cluster
            .master_ports()
            .into_iter()
            .find_map(|port| {
                let keys: Vec<String> =
                    cluster.run_on(port, driver::cmd("KEYS").arg("rampart:session:{*"));
                keys.into_iter().next().map(|k| (k, port))
            })
            .expect("the session is in Redis");
        let slot = cluster.slot_of(record_key.as_bytes());
        let to = cluster
            .master_ports()
            .into_iter()
            .find(|&p| p != from)
            .unwrap();

        let moved_at = std::sync::Arc::new(std::sync::Mutex::new(None::<Instant>));
        let (stop_tx, load) = spawn_load(&a, &b, &session, moved_at.clone());
        tokio::time::sleep(Duration::from_millis(300)).await;
        *moved_at.lock().unwrap() = Some(Instant::now());
        let cluster = tokio::task::spawn_blocking(move || {
            cluster.move_slot(slot, to);
            std::thread::sleep(Duration::from_millis(300));
            cluster.move_slot(slot, from);
            std::thread::sleep(Duration::from_millis(300));
            cluster.move_slot(slot, to);
            cluster
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop_tx.send(true).unwrap();
        let seen = load.await.unwrap();

        let failed: Vec<&Seen> = seen.iter().filter(|s| s.status != Some(200)).collect();
        let during = seen.iter().filter(|s| s.at_ms >= 0).count();
        println!(
            "reshard run (tls {tls}): {} requests, {during} after the first move began, {} failed",
            seen.len(),
            failed.len()
        );
        assert!(during >= 10, "requests flowed while the slot moved");
        assert!(
            failed.is_empty(),
            "requests failed while the slot moved: {:?}",
            failed
                .iter()
                .map(|s| (s.instance, s.route, s.status, s.at_ms))
                .collect::<Vec<_>>()
        );
        // The record now lives on the target, and the session works on both instances.
        let keys: Vec<String> = cluster.run_on(to, driver::cmd("KEYS").arg(&record_key));
        assert_eq!(keys, std::slice::from_ref(&record_key));
        for gw in [&a, &b] {
            let user = get_json(&client, gw.url("/auth/user")).await;
            assert_eq!(user["user"]["email"], "ada@example.com");
        }
        drop(cluster);
    })
    .await
    .expect("deadline");
}
