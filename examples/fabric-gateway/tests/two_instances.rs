//! Two gateway instances sharing one real Redis, as behind a load balancer; and a Redis
//! outage with recovery.

mod common;
use rampart_test_support as support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use serde_json::Value;
use support::RedisServer;
use tower_rampart::redis::driver;

const SECRET_KEY: &str = "two-instances-test-secret-key-0123456789abcdef";
const REDIS_PASSWORD: &str = "redis-pass-7d1e9c0a55";

async fn instance(redis: &RedisServer) -> Gateway {
    let url = redis.url();
    Gateway::local(&[("REDIS_URL", url.as_str()), ("SECRET_KEY", SECRET_KEY)]).await
}

/// Every key and every value in Redis, as bytes.
fn dump(redis: &RedisServer) -> Vec<u8> {
    let mut conn = redis.sync_connection().unwrap();
    let keys: Vec<Vec<u8>> = driver::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    let mut all = Vec::new();
    for key in keys {
        let kind: String = driver::cmd("TYPE").arg(&key).query(&mut conn).unwrap();
        let values: Vec<Vec<u8>> = match kind.as_str() {
            "string" => vec![driver::cmd("GET").arg(&key).query(&mut conn).unwrap()],
            "hash" => driver::cmd("HGETALL").arg(&key).query(&mut conn).unwrap(),
            "set" => driver::cmd("SMEMBERS").arg(&key).query(&mut conn).unwrap(),
            "list" => driver::cmd("LRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query(&mut conn)
                .unwrap(),
            "zset" => driver::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query(&mut conn)
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
    let redis = tokio::task::spawn_blocking(|| RedisServer::start_with_password(REDIS_PASSWORD))
        .await
        .unwrap();
    let a = instance(&redis).await;
    let b = instance(&redis).await;
    for gw in [&a, &b] {
        let health = health(gw).await;
        assert_eq!(health["status"], "healthy");
        assert_eq!(health["redis_connected"], true);
        assert_eq!(health["session_store"], "redis");
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
            r#""query-ip";q=10;w=60, "query-session";q=10;w=60"#
        );
        let status = h["ratelimit"].to_str().unwrap();
        assert!(status.contains("r=0"), "{status}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["detail"], "Rate limit exceeded: 10 per 1 minute");
    }

    // Redis holds neither the cookie (nor the id inside it) nor the Fabric token nor the
    // user's email: keys are hashes, records are encrypted.
    let all = dump(&redis);
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
    let gw = instance(&redis).await;
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
    // Two browsers on the same address share the per-IP quota; one session's quota follows
    // it across instances even when the IP quota is larger.
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let url = redis.url();
    let vars = [
        ("REDIS_URL", url.as_str()),
        ("SECRET_KEY", SECRET_KEY),
        ("RATE_LIMIT_QUERY_IP", "100/minute"),
        ("RATE_LIMIT_QUERY_SESSION", "3/minute"),
    ];
    let a = Gateway::local(&vars).await;
    let b = Gateway::local(&vars).await;
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
    let gw = instance(&redis).await;
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
