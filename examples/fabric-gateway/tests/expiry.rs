//! Time end to end over real HTTP, on one manual clock injected into the whole service
//! (`app_with_clock`): a stored token that expires after login, the session idle timeout
//! and absolute lifetime, and the `/query` quota window. Every scenario runs on the memory
//! store and on a real Redis (sessions and limits there; the limiter then decides at the
//! injected clock's time instead of the server's).

mod common;
use rampart_test_support as support;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use support::RedisServer;
use tower_rampart::clock::{Clock, ManualClock};

const NOT_AUTHENTICATED: &str = "Not authenticated. Please login first.";
const SESSION_EXPIRED: &str = "Session expired or invalid. Please login again.";

/// Where sessions and limits live.
#[derive(Clone, Copy, Debug)]
enum Store {
    Memory,
    Redis,
}

/// A gateway on `clock` in local mode with `vars`; with [`Store::Redis`], on its own fresh
/// Redis (the limits count per client IP, all 127.0.0.1: tests must not share one).
async fn gateway(
    store: Store,
    clock: &ManualClock,
    vars: &[(&str, &str)],
) -> (Gateway, Option<RedisServer>) {
    let redis = match store {
        Store::Memory => None,
        Store::Redis => Some(
            tokio::task::spawn_blocking(RedisServer::start)
                .await
                .unwrap(),
        ),
    };
    let url = redis.as_ref().map(RedisServer::url);
    let mut all: Vec<(&str, &str)> = vars.to_vec();
    if let Some(url) = &url {
        all.push(("REDIS_URL", url));
    }
    let gw = Gateway::start_with_clock(config(&all), clock.clone()).await;
    assert_eq!(
        gw.handle.redis().is_some(),
        matches!(store, Store::Redis),
        "the store in use"
    );
    (gw, redis)
}

fn now_secs(clock: &ManualClock) -> u64 {
    clock.now_micros() / 1_000_000
}

/// A dev-identity token (issued now on `clock`) that expires `lifetime` from now.
fn token_expiring_in(gw: &Gateway, clock: &ManualClock, lifetime: Duration) -> String {
    let identity = gw.handle.dev_identity().expect("local mode");
    let mut claims = identity.claims("ada@example.com", "Ada Lovelace");
    claims["exp"] = json!(now_secs(clock) + lifetime.as_secs());
    identity.sign(&claims).unwrap()
}

/// Whether `GET /auth/status` with exactly this session cookie says signed in.
async fn authenticated(gw: &Gateway, cookie: &str) -> bool {
    auth_status_with(gw, cookie).await["authenticated"]
        .as_bool()
        .unwrap()
}

/// Asserts a `401 {"detail": detail}`.
async fn assert_401(resp: reqwest::Response, detail: &str) {
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body, json!({ "detail": detail }));
}

// ---------------------------------------------------------------------------------------
// A token valid at login, expired later.

async fn token_expires_after_login(store: Store) {
    let clock = ManualClock::starting_now();
    let (gw, _redis) = gateway(store, &clock, &[]).await;
    let token = token_expiring_in(&gw, &clock, Duration::from_secs(10 * 60));
    let client = browser();
    let cookie = sign_in(&client, &gw, &token).await;
    let fake = gw.handle.fake_agent().unwrap();

    assert_eq!(query(&client, &gw, "Now?").await.status(), 200);
    // One second before `exp`: still accepted.
    clock.advance(Duration::from_secs(10 * 60 - 1));
    assert_eq!(query(&client, &gw, "Just in time?").await.status(), 200);
    assert!(authenticated(&gw, &cookie).await);
    let asked = fake.controls.rpc_count("tools/call");
    assert_eq!(asked, 2);

    // Past `exp` (no leeway: Fabric would refuse the token): the session is ended.
    clock.advance(Duration::from_secs(2));
    let resp = query(&client, &gw, "Too late?").await;
    assert!(
        removes_session_cookie(&resp),
        "the session cookie is removed"
    );
    assert_401(resp, SESSION_EXPIRED).await;
    assert_eq!(
        fake.controls.rpc_count("tools/call"),
        asked,
        "Fabric was not asked with the expired token"
    );
    // Gone on the server, not only in this browser.
    assert!(!authenticated(&gw, &cookie).await);
    assert_401(query(&client, &gw, "Again?").await, NOT_AUTHENTICATED).await;

    // The same token no longer signs in either (past `exp` + 60 s leeway).
    clock.advance(Duration::from_secs(60));
    assert_eq!(login(&browser(), &gw, &token).await.status(), 401);
    assert_no_secret_logged(&[&token, &cookie]);
}

#[tokio::test]
async fn a_token_expiring_after_login_ends_the_session_memory() {
    token_expires_after_login(Store::Memory).await;
}

#[tokio::test]
async fn a_token_expiring_after_login_ends_the_session_redis() {
    token_expires_after_login(Store::Redis).await;
}

// ---------------------------------------------------------------------------------------
// Idle timeout and absolute lifetime.

const IDLE: Duration = Duration::from_secs(30 * 60);
const LIFETIME: Duration = Duration::from_secs(2 * 3600);
const SESSION_VARS: &[(&str, &str)] = &[
    ("SESSION_IDLE_MINUTES", "30"),
    ("SESSION_EXPIRY_HOURS", "2"),
];

async fn idle_timeout(store: Store) {
    let clock = ManualClock::starting_now();
    let (gw, _redis) = gateway(store, &clock, SESSION_VARS).await;
    // The token outlives the session: only the session's own deadlines can end it.
    let token = token_expiring_in(&gw, &clock, 2 * LIFETIME);
    let client = browser();
    let cookie = sign_in(&client, &gw, &token).await;

    // Used just before the idle deadline: still alive, and the deadline moves on.
    clock.advance(IDLE - Duration::from_secs(1));
    assert_eq!(query(&client, &gw, "Still here?").await.status(), 200);
    clock.advance(IDLE - Duration::from_secs(1));
    assert_eq!(
        query(&client, &gw, "And now?").await.status(),
        200,
        "the last request refreshed the idle deadline"
    );

    // Then no request for longer than the idle timeout: the session is gone.
    clock.advance(IDLE + Duration::from_secs(1));
    assert_401(query(&client, &gw, "Anyone?").await, NOT_AUTHENTICATED).await;
    assert!(!authenticated(&gw, &cookie).await);
    assert_no_secret_logged(&[&token, &cookie]);
}

#[tokio::test]
async fn an_idle_session_expires_memory() {
    idle_timeout(Store::Memory).await;
}

#[tokio::test]
async fn an_idle_session_expires_redis() {
    idle_timeout(Store::Redis).await;
}

async fn absolute_lifetime(store: Store) {
    let clock = ManualClock::starting_now();
    let (gw, _redis) = gateway(store, &clock, SESSION_VARS).await;
    let token = token_expiring_in(&gw, &clock, 2 * LIFETIME);
    let client = browser();
    let cookie = sign_in(&client, &gw, &token).await;

    // A question every 5 minutes keeps the session alive (4 times the idle timeout in
    // all), up to one second before the absolute deadline.
    let step = Duration::from_secs(5 * 60);
    let mut elapsed = Duration::ZERO;
    while elapsed + step < LIFETIME {
        clock.advance(step);
        elapsed += step;
        let resp = query(&client, &gw, "Busy?").await;
        assert_eq!(resp.status(), 200, "alive after {elapsed:?}");
    }
    clock.advance(LIFETIME - elapsed - Duration::from_secs(1));
    assert_eq!(query(&client, &gw, "Last one?").await.status(), 200);
    assert!(authenticated(&gw, &cookie).await);

    // Past the absolute lifetime: over, however busy.
    clock.advance(Duration::from_secs(2));
    assert_401(query(&client, &gw, "One more?").await, NOT_AUTHENTICATED).await;
    assert!(!authenticated(&gw, &cookie).await);
    assert_no_secret_logged(&[&token, &cookie]);
}

#[tokio::test]
async fn a_busy_session_ends_at_its_absolute_lifetime_memory() {
    absolute_lifetime(Store::Memory).await;
}

#[tokio::test]
async fn a_busy_session_ends_at_its_absolute_lifetime_redis() {
    absolute_lifetime(Store::Redis).await;
}

// ---------------------------------------------------------------------------------------
// The `/query` window (10 per minute by default).

/// `Retry-After` of a 429, in seconds.
fn retry_after(resp: &reqwest::Response) -> u64 {
    assert_eq!(resp.status(), 429);
    resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn query_window(store: Store) {
    let clock = ManualClock::starting_now();
    let (gw, _redis) = gateway(store, &clock, &[]).await;
    let token = token_expiring_in(&gw, &clock, Duration::from_secs(3600));
    let client = browser();
    let cookie = sign_in(&client, &gw, &token).await;

    for i in 1..=10 {
        assert_eq!(query(&client, &gw, "q").await.status(), 200, "query #{i}");
    }
    let resp = query(&client, &gw, "one too many").await;
    assert_eq!(retry_after(&resp), 60);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["detail"], "Rate limit exceeded: 10 per 1 minute");

    // 59 s after the first: still refused, for one more second.
    clock.advance(Duration::from_secs(59));
    let resp = query(&client, &gw, "yet?").await;
    assert_eq!(retry_after(&resp), 1);

    // Past 60 s after the first: a whole new window.
    clock.advance(Duration::from_secs(2));
    for i in 1..=10 {
        assert_eq!(query(&client, &gw, "q").await.status(), 200, "query #{i}");
    }
    let resp = query(&client, &gw, "one too many").await;
    assert_eq!(retry_after(&resp), 60);
    assert_no_secret_logged(&[&token, &cookie]);
}

#[tokio::test]
async fn the_query_window_reopens_60_s_after_the_first_query_memory() {
    query_window(Store::Memory).await;
}

#[tokio::test]
async fn the_query_window_reopens_60_s_after_the_first_query_redis() {
    query_window(Store::Redis).await;
}
