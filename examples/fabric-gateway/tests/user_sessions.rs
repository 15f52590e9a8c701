//! A user's sessions through the gateway (`GET /auth/sessions`, `DELETE /auth/sessions/{id}`,
//! `POST /auth/logout?everywhere=true`) and the `RATE_LIMIT_AUTH_IP` quota: with the memory
//! store, and with a real Redis (one server, and a 3-master cluster with a replica each),
//! the same test body for each. Each signed-in client is a browser-like client with its own
//! cookie jar.

mod common;
use rampart_test_support as support;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use support::{RedisCluster, RedisServer};

const SECRET_KEY: &str = "user-sessions-test-secret-key-0123456789abcdef";
/// Each test finishes well within this, a cluster start included.
const DEADLINE: Duration = Duration::from_secs(90);
/// The test signs in more often than the default login quota (5 a minute) allows.
const LOGINS: (&str, &str) = ("RATE_LIMIT_LOGIN_IP", "100/minute");

/// `GET /auth/sessions` as `client`: the status and the body.
async fn sessions(client: &reqwest::Client, gw: &Gateway) -> (u16, Value) {
    let resp = client.get(gw.url("/auth/sessions")).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

/// `DELETE /auth/sessions/{handle}` as `client`: the response.
async fn end(client: &reqwest::Client, gw: &Gateway, handle: &str) -> reqwest::Response {
    client
        .delete(gw.url(&format!("/auth/sessions/{handle}")))
        .send()
        .await
        .unwrap()
}

/// The listed sessions of `client`, asserting a 200.
async fn listed(client: &reqwest::Client, gw: &Gateway) -> Vec<Value> {
    let (status, body) = sessions(client, gw).await;
    assert_eq!(status, 200, "{body}");
    body["sessions"].as_array().unwrap().clone()
}

/// Whether `text` looks like `2026-12-05T03:05:27Z`.
fn is_rfc3339(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// The whole contract on one gateway: two sign-ins of Ada (two browsers) list two sessions,
/// one current; Bob cannot end Ada's; Ada's first browser ends the second, which is signed
/// out; `logout?everywhere=true` signs out every browser of Ada and none of Bob's.
async fn list_end_one_and_sign_out_everywhere(gw: &Gateway) {
    let (phone, laptop, bob) = (browser(), browser(), browser());
    let ada_token = dev_token(&phone, gw, "ada@example.com", "Ada Lovelace").await;
    let bob_token = dev_token(&bob, gw, "bob@example.com", "Bob").await;
    let phone_cookie = sign_in(&phone, gw, &ada_token).await;
    let laptop_cookie = sign_in(&laptop, gw, &ada_token).await;
    let bob_cookie = sign_in(&bob, gw, &bob_token).await;

    // Without a session: 401 on all three session routes (logout still answers 200).
    let (status, body) = sessions(&plain(), gw).await;
    assert_eq!(status, 401);
    assert_eq!(body["detail"], "Not authenticated. Please login first.");
    assert_eq!(end(&plain(), gw, "anything").await.status(), 401);

    let seen = listed(&phone, gw).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    let current: Vec<bool> = seen
        .iter()
        .map(|s| s["current"].as_bool().unwrap())
        .collect();
    assert_eq!(
        current,
        [true, false],
        "oldest first, the phone's own marked"
    );
    for s in &seen {
        let keys: Vec<&str> = s.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys.len(),
            5,
            "id, current, created_at, last_seen_at, expires_at: {s}"
        );
        for field in ["created_at", "last_seen_at", "expires_at"] {
            assert!(is_rfc3339(s[field].as_str().unwrap()), "{field}: {s}");
        }
        assert!(s["created_at"].as_str() <= s["expires_at"].as_str());
        let id = s["id"].as_str().unwrap();
        for cookie in [&phone_cookie, &laptop_cookie] {
            assert!(
                !cookie.contains(id) && !id.contains(cookie.as_str()),
                "{id}"
            );
        }
    }
    let (phone_id, laptop_id) = (
        seen[0]["id"].as_str().unwrap().to_owned(),
        seen[1]["id"].as_str().unwrap().to_owned(),
    );
    // The laptop sees the same two, itself current.
    let from_laptop = listed(&laptop, gw).await;
    assert_eq!(from_laptop[1]["id"], laptop_id.as_str());
    assert_eq!(from_laptop[1]["current"], true);
    // Bob sees only his own, and cannot end Ada's.
    let bobs = listed(&bob, gw).await;
    assert_eq!(bobs.len(), 1);
    assert!(bobs[0]["id"] != phone_id.as_str() && bobs[0]["id"] != laptop_id.as_str());
    let resp = end(&bob, gw, &laptop_id).await;
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body, json!({"detail": "Session not found"}));
    assert_eq!(auth_status(&laptop, gw).await["authenticated"], true);
    assert_eq!(end(&phone, gw, "not-a-handle").await.status(), 404);

    // The phone ends the laptop's session: the laptop is signed out, the phone is not.
    let resp = end(&phone, gw, &laptop_id).await;
    assert_eq!(resp.status(), 200);
    assert!(!removes_session_cookie(&resp));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body, json!({"success": true}));
    assert_eq!(auth_status(&laptop, gw).await["authenticated"], false);
    assert_eq!(
        auth_status_with(gw, &laptop_cookie).await["authenticated"],
        false
    );
    assert_eq!(auth_status(&phone, gw).await["authenticated"], true);
    assert_eq!(
        end(&phone, gw, &laptop_id).await.status(),
        404,
        "already ended"
    );
    let seen = listed(&phone, gw).await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["id"], phone_id.as_str());

    // Sign out everywhere: both of Ada's browsers, none of Bob's.
    sign_in(&laptop, gw, &ada_token).await;
    assert_eq!(listed(&phone, gw).await.len(), 2);
    let resp = phone
        .post(gw.url("/auth/logout?everywhere=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(removes_session_cookie(&resp));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["success"], true);
    assert_eq!(body["user"], Value::Null);
    assert_eq!(body["session_id"], Value::Null);
    assert_eq!(auth_status(&phone, gw).await["authenticated"], false);
    assert_eq!(auth_status(&laptop, gw).await["authenticated"], false);
    assert_eq!(
        auth_status_with(gw, &phone_cookie).await["authenticated"],
        false
    );
    assert_eq!(auth_status(&bob, gw).await["authenticated"], true);
    assert_eq!(
        auth_status_with(gw, &bob_cookie).await["authenticated"],
        true
    );
    assert_eq!(sessions(&phone, gw).await.0, 401);

    // Ending one's own session by its handle is a logout (the cookie is expired).
    sign_in(&phone, gw, &ada_token).await;
    let seen = listed(&phone, gw).await;
    assert_eq!(seen.len(), 1);
    let resp = end(&phone, gw, seen[0]["id"].as_str().unwrap()).await;
    assert_eq!(resp.status(), 200);
    assert!(removes_session_cookie(&resp));
    assert_eq!(auth_status(&phone, gw).await["authenticated"], false);

    // A plain logout still ends only its own session.
    let (one, two) = (browser(), browser());
    sign_in(&one, gw, &ada_token).await;
    sign_in(&two, gw, &ada_token).await;
    let resp = one.post(gw.url("/auth/logout")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(auth_status(&one, gw).await["authenticated"], false);
    assert_eq!(auth_status(&two, gw).await["authenticated"], true);
    assert_no_secret_logged(&[&ada_token, &bob_token, &phone_cookie, &laptop_cookie]);
}

#[tokio::test]
async fn memory_store() {
    let gw = Gateway::local(&[LOGINS]).await;
    tokio::time::timeout(DEADLINE, list_end_one_and_sign_out_everywhere(&gw))
        .await
        .expect("deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_single_server() {
    tokio::time::timeout(DEADLINE, async {
        let server = tokio::task::spawn_blocking(RedisServer::start)
            .await
            .unwrap();
        let url = server.url();
        let gw = Gateway::local(&[
            ("REDIS_URL", url.as_str()),
            ("SECRET_KEY", SECRET_KEY),
            LOGINS,
        ])
        .await;
        assert_eq!(health(&gw).await["session_store"], "redis");
        list_end_one_and_sign_out_everywhere(&gw).await;
        drop(server);
    })
    .await
    .expect("deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster() {
    tokio::time::timeout(DEADLINE, async {
        let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 1))
            .await
            .unwrap();
        let url = cluster.seed_url();
        let gw = Gateway::local(&[
            ("REDIS_URL", url.as_str()),
            ("SECRET_KEY", SECRET_KEY),
            LOGINS,
        ])
        .await;
        list_end_one_and_sign_out_everywhere(&gw).await;
        assert_eq!(health(&gw).await["redis_topology"], "cluster");
        drop(cluster);
    })
    .await
    .expect("deadline");
}

/// `RATE_LIMIT_AUTH_IP` is one per-IP bucket over `/auth/status`, `/auth/user` and
/// `/auth/sessions*`; logout (also everywhere) is never refused, and logins have their own.
#[tokio::test]
async fn the_auth_quota_covers_the_session_routes_and_never_logout() {
    let gw = Gateway::local(&[("RATE_LIMIT_AUTH_IP", "2/minute")]).await;
    let (client, _) = signed_in(&gw).await;
    let resp = client.get(gw.url("/auth/status")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["ratelimit-policy"], r#""auth-ip";q=2;w=60"#);
    let resp = client.get(gw.url("/auth/user")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // The third request, on any of the routes, from any client of that address: 429.
    let resp = client.get(gw.url("/auth/sessions")).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["detail"], "Rate limit exceeded: 2 per 1 minute");
    assert_eq!(end(&client, &gw, "x").await.status(), 429);
    assert_eq!(
        plain()
            .get(gw.url("/auth/status"))
            .send()
            .await
            .unwrap()
            .status(),
        429
    );
    // Signing out is never refused, and carries no rate-limit header.
    let resp = client
        .post(gw.url("/auth/logout?everywhere=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(!resp.headers().contains_key("ratelimit"));
    let resp = client.post(gw.url("/auth/logout")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // Logins keep their own quota.
    let (other, _) = signed_in(&gw).await;
    drop(other);
}

/// `everywhere` takes `true`/`false` (or `1`/`0`); another value is refused before anything
/// is ended, so a client never gets less than it asked for without knowing.
#[tokio::test]
async fn logout_everywhere_refuses_other_values() {
    let gw = Gateway::local(&[]).await;
    let (client, _) = signed_in(&gw).await;
    let resp = client
        .post(gw.url("/auth/logout?everywhere=yes"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["detail"], "everywhere must be true or false");
    assert_eq!(auth_status(&client, &gw).await["authenticated"], true);
    let resp = client
        .post(gw.url("/auth/logout?everywhere=false"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(auth_status(&client, &gw).await["authenticated"], false);
}

/// The browser app on its allowed origin may send `DELETE` (CORS preflight), and a foreign
/// origin's `DELETE` is refused by the CSRF guard before the handler runs.
#[tokio::test]
async fn delete_is_allowed_for_the_app_and_guarded_against_other_origins() {
    let gw = Gateway::local(&[]).await;
    let resp = plain()
        .request(reqwest::Method::OPTIONS, gw.url("/auth/sessions/x"))
        .header("origin", "http://localhost:4200")
        .header("access-control-request-method", "DELETE")
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let methods = resp.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(methods.contains("DELETE"), "{methods}");
    let (client, _) = signed_in(&gw).await;
    let id = listed(&client, &gw).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let resp = client
        .delete(gw.url(&format!("/auth/sessions/{id}")))
        .header("origin", "https://evil.example.net")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(auth_status(&client, &gw).await["authenticated"], true);
}
