//! The local mode end to end over real HTTP: no configuration, memory sessions, the
//! in-process fake data agent, the dev identity.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use fabric_gateway::fake_agent::fake_answer;
use serde_json::{Value, json};
use tower_rampart::clock::ManualClock;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn the_whole_local_flow() {
    let gw = Gateway::local(&[]).await;
    let client = browser();

    // Health: local mode, memory store, no Redis.
    let resp = client.get(gw.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-correlation-id"));
    assert!(!resp.headers().contains_key("set-cookie"));
    assert!(!resp.headers().contains_key("ratelimit-policy"));
    let health: Value = resp.json().await.unwrap();
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["environment"], "development");
    assert_eq!(health["redis_connected"], Value::Null);
    assert_eq!(health["session_store"], "memory");
    assert_eq!(health["fabric_client_initialized"], true);
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));

    // A dev token, then login: the cookie carries the session, the body does not.
    let token = dev_token(&client, &gw, "ada@example.com", "Ada Lovelace").await;
    let resp = login(&client, &gw, &token).await;
    assert_eq!(resp.status(), 200);
    let cookie = set_cookie(resp.headers(), SESSION_COOKIE).expect("a session cookie");
    let value = cookie_value(&cookie);
    assert!(value.len() >= 32, "an opaque signed id: {cookie}");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Lax"), "{cookie}");
    assert!(cookie.contains("Path=/"), "{cookie}");
    assert!(
        cookie.contains("Max-Age=86400"),
        "absolute lifetime 24 h: {cookie}"
    );
    assert!(!cookie.contains("Secure"), "plain http locally: {cookie}");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert!(resp.headers().contains_key("ratelimit-policy"));
    let text = resp.text().await.unwrap();
    assert!(!text.contains(&value), "the session id is not in the body");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["success"], true);
    assert_eq!(body["session_id"], Value::Null);
    assert_eq!(body["user"]["email"], "ada@example.com");
    assert_eq!(body["user"]["display_name"], "Ada Lovelace");
    assert_eq!(body["user"]["given_name"], "Ada");
    assert_eq!(body["user"]["surname"], "Lovelace");
    assert!(body["user"]["id"].as_str().is_some_and(|id| !id.is_empty()));

    // A question, tagged with our correlation id: the data agent sees it as ActivityId,
    // and the user's token as the bearer.
    let resp = client
        .post(gw.url("/query"))
        .header("x-correlation-id", "flow-test-0001")
        .json(&json!({"query": "How many orders last week?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-correlation-id"], "flow-test-0001");
    assert_eq!(
        resp.headers()["ratelimit-policy"],
        r#""query-ip";q=10;w=60, "query-user";q=10;w=60"#
    );
    assert!(resp.headers().contains_key("ratelimit"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({
            "success": true,
            "response": fake_answer("How many orders last week?"),
            "query": "How many orders last week?",
            "error": null,
        })
    );
    let fake = gw.handle.fake_agent().expect("local mode runs the fake");
    let calls: Vec<_> = fake
        .controls
        .requests()
        .into_iter()
        .filter(|r| r.activity_id.as_deref() == Some("flow-test-0001"))
        .collect();
    assert!(
        !calls.is_empty(),
        "the correlation id is sent as ActivityId"
    );
    // And as X-Correlation-ID, by the crate's outgoing-call layer around the HTTP client,
    // on every call made for that request (MCP initialize, the tool call, the session's
    // close in the background).
    for call in &calls {
        assert_eq!(
            call.correlation_id.as_deref(),
            Some("flow-test-0001"),
            "{} {}",
            call.method,
            call.path
        );
    }
    for call in calls {
        assert_eq!(
            call.authorization.as_deref(),
            Some(&*format!("Bearer {token}"))
        );
    }

    // Detailed: the same plus the run fields.
    let resp = client
        .post(gw.url("/query/detailed"))
        .json(&json!({
            "query": "Sales by region?",
            "conversation_history": [
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi, ask me about sales."}
            ]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["success"], true);
    // MCP has no conversation state: the history is folded into the question.
    let answer = body["response"].as_str().unwrap();
    assert!(answer.starts_with("Fake answer to: "), "{answer}");
    assert!(answer.contains("Hi, ask me about sales.") && answer.ends_with("Sales by region?"));
    for field in [
        "run_status",
        "steps_count",
        "messages_count",
        "sql_query",
        "data_preview",
    ] {
        assert!(body.get(field).is_some(), "detailed has {field}: {body}");
    }
    assert_eq!(body["run_status"], "completed");

    // Status and user.
    let status = auth_status(&client, &gw).await;
    assert_eq!(status["authenticated"], true);
    assert_eq!(status["user"]["email"], "ada@example.com");
    assert_eq!(status["session_id"], Value::Null);
    let resp = client.get(gw.url("/auth/user")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let user: Value = resp.json().await.unwrap();
    assert_eq!(user["success"], true);
    assert_eq!(user["error"], Value::Null);
    assert_eq!(user["user"]["display_name"], "Ada Lovelace");

    // Logout: the cookie is expired with the attributes it was set with.
    let resp = client.post(gw.url("/auth/logout")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let removal = set_cookie(resp.headers(), SESSION_COOKIE).expect("a removal cookie");
    assert!(removal.contains("Max-Age=0"), "{removal}");
    assert_eq!(cookie_attributes(&removal), cookie_attributes(&cookie));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({"success": true, "message": "Logged out successfully", "user": null, "session_id": null})
    );

    // Signed out: the browser forgot the cookie, and the old value is dead on the server.
    let resp = query(&client, &gw, "Still there?").await;
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({"detail": "Not authenticated. Please login first."})
    );
    let resp = with_session(plain().post(gw.url("/query")), &value)
        .json(&json!({"query": "With the old cookie?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "the old session id no longer works");
    let resp = client.get(gw.url("/auth/user")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let status = auth_status(&client, &gw).await;
    assert_eq!(
        status,
        json!({"authenticated": false, "user": null, "session_id": null})
    );

    assert_no_secret_logged(&[&token, &value]);
}

/// With `COOKIE_SAMESITE=none` the session cookie is partitioned (CHIPS) unless
/// `COOKIE_PARTITIONED=false`, and so is its removal at logout (a removal without
/// `Partitioned` leaves a partitioned cookie in the browser); with `lax` neither is.
#[tokio::test]
async fn partitioned_session_cookie_and_its_removal_follow_the_configuration() {
    let cases: &[(&[(&str, &str)], bool)] = &[
        (&[("COOKIE_SAMESITE", "none")], true),
        (
            &[("COOKIE_SAMESITE", "none"), ("COOKIE_PARTITIONED", "false")],
            false,
        ),
        (&[("COOKIE_SAMESITE", "lax")], false),
    ];
    for (vars, partitioned) in cases {
        let gw = Gateway::local(vars).await;
        let client = plain();
        let token = dev_token(&client, &gw, "ada@example.com", "Ada").await;
        let resp = login(&client, &gw, &token).await;
        assert_eq!(resp.status(), 200);
        let cookie = set_cookie(resp.headers(), SESSION_COOKIE).expect("a session cookie");
        // Exactly once: the cookie policy leaves the session layer's `Partitioned` alone.
        let has = |c: &str| match cookie_attributes(c)
            .iter()
            .filter(|a| *a == "Partitioned")
            .count()
        {
            0 => false,
            1 => true,
            n => panic!("Partitioned {n} times: {c}"),
        };
        assert_eq!(has(&cookie), *partitioned, "{vars:?}: {cookie}");
        let resp = with_session(client.post(gw.url("/auth/logout")), &cookie_value(&cookie))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let removal = set_cookie(resp.headers(), SESSION_COOKIE).expect("a removal cookie");
        assert!(removal.contains("Max-Age=0"), "{removal}");
        assert_eq!(has(&removal), *partitioned, "{vars:?}: {removal}");
        assert_eq!(cookie_attributes(&removal), cookie_attributes(&cookie));
        assert_eq!(
            auth_status_with(&gw, &cookie_value(&cookie)).await["authenticated"],
            false
        );
    }
}

#[tokio::test]
async fn login_always_starts_a_fresh_session() {
    let gw = Gateway::local(&[]).await;
    let client = browser();
    let token = dev_token(&client, &gw, "grace@example.com", "Grace Hopper").await;
    let first = sign_in(&client, &gw, &token).await;
    // The browser sends its session cookie with the second login: it gets a new id anyway.
    let second = sign_in(&client, &gw, &token).await;
    assert_ne!(first, second);

    assert_eq!(
        auth_status_with(&gw, &first).await["authenticated"],
        false,
        "the pre-login id is dead"
    );
    assert_eq!(auth_status_with(&gw, &second).await["authenticated"], true);
    assert_no_secret_logged(&[&token, &first, &second]);
}

#[tokio::test]
async fn a_session_over_session_max_bytes_is_refused_never_truncated() {
    // The smallest limit: the user and the stored Fabric token (a signed JWT) do not fit.
    let gw = Gateway::local(&[("SESSION_MAX_BYTES", "1024")]).await;
    let client = browser();
    let token = dev_token(&client, &gw, "mary@example.com", "Mary Somerville").await;
    let resp = login(&client, &gw, &token).await;
    assert_eq!(resp.status(), 500);
    assert!(set_cookie(resp.headers(), SESSION_COOKIE).is_none());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body, json!({"detail": "Session data error"}));
    assert_eq!(auth_status(&client, &gw).await["authenticated"], false);
    let logged = log_lines()
        .into_iter()
        .any(|l| l.contains("session data error") && l.contains("exceeds the limit of 1024 bytes"));
    assert!(logged, "a log line names the limit");
    assert_no_secret_logged(&[&token]);

    // The same sign-in fits the default limit.
    let gw = Gateway::local(&[]).await;
    let client = browser();
    let token = dev_token(&client, &gw, "mary@example.com", "Mary Somerville").await;
    sign_in(&client, &gw, &token).await;
    assert_eq!(auth_status(&client, &gw).await["authenticated"], true);
}

#[tokio::test]
async fn an_expired_stored_token_ends_the_session() {
    let gw = Gateway::local(&[]).await;
    let identity = gw
        .handle
        .dev_identity()
        .expect("local mode has the dev identity");
    // Expired 30 s ago: within the 60 s leeway of the login check, but Fabric would refuse it.
    let mut claims = identity.claims("old@example.com", "Old Token");
    claims["exp"] = json!(now_secs() - 30);
    claims["nbf"] = json!(now_secs() - 3600);
    let token = identity.sign(&claims).unwrap();

    let client = browser();
    let value = sign_in(&client, &gw, &token).await;

    let resp = query(&client, &gw, "Anything?").await;
    assert_eq!(resp.status(), 401);
    assert!(
        removes_session_cookie(&resp),
        "the session is ended and its cookie removed"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({"detail": "Session expired or invalid. Please login again."})
    );
    let fake = gw.handle.fake_agent().unwrap();
    assert_eq!(
        fake.controls.rpc_count("tools/call"),
        0,
        "Fabric was not asked"
    );

    // The session is gone on the server, not just in this browser.
    assert_eq!(auth_status_with(&gw, &value).await["authenticated"], false);

    // /auth/status on a session with an expired token: not authenticated, and ended.
    let client = browser();
    login(&client, &gw, &token).await;
    let resp = client.get(gw.url("/auth/status")).send().await.unwrap();
    assert!(removes_session_cookie(&resp));
    let status: Value = resp.json().await.unwrap();
    assert_eq!(status["authenticated"], false);
    assert_eq!(status["user"], Value::Null);
    assert_no_secret_logged(&[&token, &value]);
}

#[tokio::test]
async fn login_refusals_say_which_check_failed() {
    let gw = Gateway::local(&[]).await;
    let identity = gw.handle.dev_identity().unwrap();
    let client = browser();
    let check = |token: String, expected: &'static str| {
        let client = client.clone();
        let url = gw.url("/auth/client-login");
        async move {
            let resp = client
                .post(url)
                .json(&json!({"access_token": "not-used", "fabric_token": token}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 401);
            assert!(resp.headers().get("set-cookie").is_none());
            let text = resp.text().await.unwrap();
            assert!(!text.contains(&token), "the token is not echoed");
            let body: Value = serde_json::from_str(&text).unwrap();
            let detail = body["detail"].as_str().unwrap();
            assert!(
                detail.contains(expected),
                "{detail:?} should mention {expected:?}"
            );
        }
    };
    let mut expired = identity.claims("a@example.com", "A");
    expired["exp"] = json!(now_secs() - 3600);
    check(identity.sign(&expired).unwrap(), "expired").await;
    let mut foreign = identity.claims("a@example.com", "A");
    foreign["tid"] = json!("11111111-2222-3333-4444-555555555555");
    check(identity.sign(&foreign).unwrap(), "tenant").await;
    let mut audience = identity.claims("a@example.com", "A");
    audience["aud"] = json!("https://graph.microsoft.com");
    check(identity.sign(&audience).unwrap(), "audience").await;
    // The fabric_token is the one checked: a good access_token does not help.
    let good = identity.mint("a@example.com", "A").unwrap();
    let resp = client
        .post(gw.url("/auth/client-login"))
        .json(&json!({"access_token": good, "fabric_token": "garbage"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn data_agent_failures_keep_the_old_shape() {
    let gw = Gateway::local(&[]).await;
    let (client, token) = signed_in(&gw).await;
    let fake = gw.handle.fake_agent().unwrap();

    fake.controls.fail_next_requests(1, 403, Some("Forbidden"));
    let resp = query(&client, &gw, "Am I allowed?").await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["success"], false);
    assert_eq!(body["query"], "Am I allowed?");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("FABRIC_PERMISSION_ERROR:"),
        "{body}"
    );
    assert!(!body["response"].as_str().unwrap().is_empty());

    fake.controls
        .fail_next_requests(1, 404, Some("CapacityNotActive"));
    let resp = query_detailed(&client, &gw, "Paused?").await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["success"], false);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("FABRIC_NOT_FOUND:"),
        "{body}"
    );
    assert_eq!(body["sql_query"], Value::Null);
    assert_eq!(body["steps_count"], 0);

    // And it recovers.
    let resp = query(&client, &gw, "Fine now?").await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["success"], true);
    assert_no_secret_logged(&[&token]);
}

#[tokio::test]
async fn login_is_rate_limited_per_ip_and_health_never_is() {
    let gw = Gateway::local(&[]).await;
    let client = browser();
    let token = dev_token(&client, &gw, "ada@example.com", "Ada").await;
    for i in 1..=5 {
        let resp = login(&client, &gw, &token).await;
        assert_eq!(resp.status(), 200, "login #{i}");
        assert_eq!(resp.headers()["ratelimit-policy"], r#""login-ip";q=5;w=60"#);
    }
    // Another client from the same address shares the quota.
    let resp = login(&browser(), &gw, &token).await;
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(resp.headers().contains_key("ratelimit"));
    assert!(resp.headers().contains_key("ratelimit-policy"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["detail"], "Rate limit exceeded: 5 per 1 minute");

    for _ in 0..30 {
        let resp = client.get(gw.url("/health")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(!resp.headers().contains_key("ratelimit"));
    }
    // The session of the successful logins still answers: only logins are limited.
    let status = auth_status(&client, &gw).await;
    assert_eq!(status["authenticated"], true);
}

#[tokio::test]
async fn the_query_quota_is_one_bucket_for_both_routes() {
    let gw = Gateway::local(&[]).await;
    let (client, _) = signed_in(&gw).await;
    for i in 0..10 {
        let question = format!("q{i}");
        let resp = if i % 2 == 0 {
            query(&client, &gw, &question).await
        } else {
            query_detailed(&client, &gw, &question).await
        };
        assert_eq!(resp.status(), 200, "query #{i}");
    }
    let resp = query_detailed(&client, &gw, "one too many").await;
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["detail"], "Rate limit exceeded: 10 per 1 minute");
    // A 405 on a limited path costs nothing and says so in JSON.
    let resp = client.get(gw.url("/query")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["detail"], "Method Not Allowed");
}

/// The query quota counts per user: signing in again (a fresh session, in another cookie
/// jar) keeps the count, and the 11th query of the minute is refused whichever session asks.
#[tokio::test]
async fn the_query_quota_follows_the_user_across_sign_ins() {
    let clock = ManualClock::starting_now();
    // A larger per-IP quota: the per-user one is the quota that refuses.
    let vars = [("RATE_LIMIT_QUERY_IP", "100/minute")];
    let gw = Gateway::start_with_clock(config(&vars), clock.clone()).await;
    let first = browser();
    let token = dev_token(&first, &gw, "ada@example.com", "Ada Lovelace").await;
    let first_cookie = sign_in(&first, &gw, &token).await;
    for i in 0..6 {
        let resp = query(&first, &gw, &format!("q{i}")).await;
        assert_eq!(resp.status(), 200, "query #{i}");
        let status = resp.headers()["ratelimit"].to_str().unwrap().to_owned();
        assert!(
            status.contains(&format!(r#""query-user";r={};"#, 9 - i)),
            "{status}"
        );
    }
    clock.advance(Duration::from_secs(10));
    // Another browser signs the same user in: a new session, the same count.
    let second = browser();
    let second_cookie = sign_in(&second, &gw, &token).await;
    assert_ne!(second_cookie, first_cookie);
    for i in 6..10 {
        let resp = query_detailed(&second, &gw, &format!("q{i}")).await;
        assert_eq!(resp.status(), 200, "query #{i}");
    }
    let resp = query(&second, &gw, "one too many").await;
    assert_eq!(resp.status(), 429);
    // The first of the ten was 10 s ago: it leaves the rolling minute in 50 s.
    assert_eq!(resp.headers()["retry-after"], "50");
    let status = resp.headers()["ratelimit"].to_str().unwrap().to_owned();
    assert!(status.contains(r#""query-user";r=0;t=50"#), "{status}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["detail"], "Rate limit exceeded: 10 per 1 minute");
    // The first session is the same user: refused too.
    assert_eq!(query(&first, &gw, "me again").await.status(), 429);
    // Another user (same address) has a count of their own.
    let other = browser();
    let grace = dev_token(&other, &gw, "grace@example.com", "Grace Hopper").await;
    sign_in(&other, &gw, &grace).await;
    assert_eq!(query(&other, &gw, "mine").await.status(), 200);
    // Once the minute has passed, the user may ask again.
    clock.advance(Duration::from_secs(51));
    assert_eq!(query(&second, &gw, "later").await.status(), 200);
    assert_no_secret_logged(&[&token, &grace, &first_cookie, &second_cookie]);
}

/// A user without an id (a token without `oid`) has no user tag on their cookie: the quota
/// counts their session instead, so each sign-in has a count of its own.
#[tokio::test]
async fn a_user_without_an_id_falls_back_to_the_session_quota() {
    let clock = ManualClock::starting_now();
    let vars = [("RATE_LIMIT_QUERY_IP", "100/minute")];
    let gw = Gateway::start_with_clock(config(&vars), clock).await;
    let identity = gw
        .handle
        .dev_identity()
        .expect("local mode has the dev identity");
    let mut claims = identity.claims("no-id@example.com", "No Id");
    claims.as_object_mut().unwrap().remove("oid");
    let token = identity.sign(&claims).unwrap();
    let client = browser();
    let cookie = sign_in(&client, &gw, &token).await;
    // The untagged form of the cookie (a tagged one is 86 characters).
    assert_eq!(cookie.len(), 64, "{cookie}");
    assert_eq!(auth_status(&client, &gw).await["authenticated"], true);
    for i in 0..10 {
        assert_eq!(query(&client, &gw, &format!("q{i}")).await.status(), 200);
    }
    let resp = query(&client, &gw, "one too many").await;
    assert_eq!(resp.status(), 429);
    let status = resp.headers()["ratelimit"].to_str().unwrap().to_owned();
    assert!(status.contains(r#""query-user";r=0;"#), "{status}");
    // A new sign-in is a new session: its own count.
    let again = browser();
    sign_in(&again, &gw, &token).await;
    assert_eq!(query(&again, &gw, "fresh").await.status(), 200);
    // While a user with an id gets the tagged cookie.
    let tagged = browser();
    let ada = dev_token(&tagged, &gw, "ada@example.com", "Ada").await;
    assert_eq!(sign_in(&tagged, &gw, &ada).await.len(), 86);
}

#[tokio::test]
async fn cors_serves_only_the_configured_origins() {
    let gw = Gateway::local(&[(
        "ALLOWED_ORIGINS",
        "http://localhost:4200,https://app.example.com",
    )])
    .await;
    let client = plain();
    let preflight = client
        .request(reqwest::Method::OPTIONS, gw.url("/query"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    let h = preflight.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );

    let resp = client
        .get(gw.url("/health"))
        .header("origin", "http://localhost:4200")
        .send()
        .await
        .unwrap();
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], "http://localhost:4200");
    let exposed = h["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for name in [
        "x-correlation-id",
        "retry-after",
        "ratelimit",
        "ratelimit-policy",
    ] {
        assert!(
            exposed.split(',').any(|e| e.trim() == name),
            "{name} exposed: {exposed}"
        );
    }

    let resp = client
        .get(gw.url("/health"))
        .header("origin", "https://evil.example.net")
        .send()
        .await
        .unwrap();
    assert!(!resp.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn root_lists_the_endpoints_and_errors_are_json() {
    let gw = Gateway::local(&[]).await;
    let client = plain();
    let body = get_json(&client, gw.url("/")).await;
    assert_eq!(body["name"], "fabric-gateway");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    let paths: Vec<&str> = body["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    for p in [
        "/health",
        "/auth/client-login",
        "/query",
        "/query/detailed",
        "/dev/token",
    ] {
        assert!(paths.contains(&p), "{p} listed");
    }

    let resp = client.get(gw.url("/no/such/thing")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert!(resp.headers().contains_key("x-correlation-id"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body, json!({"detail": "Not Found"}));
    let resp = client.delete(gw.url("/auth/logout")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body, json!({"detail": "Method Not Allowed"}));
}
