//! Production mode: required configuration, Secure cookies, no dev routes, JSON logs with
//! the correlation id, real JWKS over HTTP, Redis with a password.

mod common;
use rampart_test_support as support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fabric_gateway::auth::dev::DevIdentity;
use fabric_gateway::fake_agent::{FakeAgent, FakeAgentHandle, fake_answer};
use serde_json::{Value, json};
use support::RedisServer;

const TENANT: &str = "4d4eca3f-1111-2222-3333-444455556666";
const SECRET_KEY: &str = "production-test-secret-key-9f8e7d6c5b4a39281706";
const REDIS_PASSWORD: &str = "prod-redis-pw-4c2b8e61";

struct Production {
    gw: Gateway,
    identity: DevIdentity,
    fake: FakeAgentHandle,
    _redis: RedisServer,
    _jwks: tokio::task::JoinHandle<()>,
    /// The `X-Correlation-ID` of each request for the keys.
    jwks_requests: SeenIds,
}

/// A production gateway: Redis with a password, a JWKS served on loopback by a key pair of
/// the test, and a fake data agent reached by URL like the real one.
async fn production(extra: &[(&str, &str)]) -> Production {
    let redis = tokio::task::spawn_blocking(|| RedisServer::start_with_password(REDIS_PASSWORD))
        .await
        .unwrap();
    let fake = FakeAgent::start().await.unwrap();
    let jwks_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_url = format!("http://{}/keys", jwks_listener.local_addr().unwrap());
    let redis_url = redis.url();
    let agent_url = fake.mcp_url();
    let mut vars = vec![
        ("ENVIRONMENT", "production"),
        ("REDIS_URL", redis_url.as_str()),
        ("SECRET_KEY", SECRET_KEY),
        ("TENANT_ID", TENANT),
        ("AUTH_JWKS_URL", jwks_url.as_str()),
        ("DATA_AGENT_URL", agent_url.as_str()),
        // The test's Redis is a plain-text loopback server.
        ("REDIS_ALLOW_PLAINTEXT", "true"),
        ("ALLOWED_ORIGINS", "https://app.example.com"),
    ];
    vars.extend_from_slice(extra);
    let config = config(&vars);
    let identity = DevIdentity::generate(&config.auth).unwrap();
    let (jwks, jwks_requests) = serve_jwks_recording(jwks_listener, identity.jwks().clone());
    fake.controls.set_required_token(None);
    let gw = Gateway::start(config).await;
    Production {
        gw,
        identity,
        fake,
        _redis: redis,
        _jwks: jwks,
        jwks_requests,
    }
}

#[tokio::test]
async fn production_mode_end_to_end() {
    let p = production(&[]).await;
    let gw = &p.gw;
    let client = plain(); // Secure cookies are sent by hand over this plain-http loopback

    let health = health(gw).await;
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["environment"], "production");
    assert_eq!(health["redis_connected"], true);
    assert_eq!(health["session_store"], "redis");
    assert_eq!(health["tenant_id"], "4d4eca3f...");
    let text = health.to_string();
    assert!(!text.contains(REDIS_PASSWORD) && !text.contains(TENANT));

    // No development routes.
    let resp = client
        .post(gw.url("/dev/token"))
        .json(&json!({"email": "eve@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(
        client
            .get(gw.url("/dev/jwks"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let root = get_json(&client, gw.url("/")).await;
    assert!(!root.to_string().contains("/dev/"));

    // Login with a token signed by the keys at AUTH_JWKS_URL: a Secure cookie.
    let token = p.identity.mint("ada@contoso.com", "Ada Lovelace").unwrap();
    let resp = client
        .post(gw.url("/auth/client-login"))
        .header("x-correlation-id", "prod-login-0001")
        .json(&json!({"access_token": "a-graph-token-not-checked", "fabric_token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The keys were fetched for this sign-in, with its correlation id.
    assert_eq!(
        *p.jwks_requests.lock().unwrap(),
        [Some("prod-login-0001".to_owned())]
    );
    let cookie = set_cookie(resp.headers(), SESSION_COOKIE).unwrap();
    for attribute in [
        "Secure",
        "HttpOnly",
        "SameSite=Lax",
        "Path=/",
        "Max-Age=86400",
    ] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    let value = cookie_value(&cookie);
    let body: Value = resp.json().await.unwrap();
    let oid = body["user"]["id"].as_str().unwrap().to_owned();

    // A question with our correlation id; the Fabric token (not the Graph one) is sent.
    let resp = with_session(client.post(gw.url("/query")), &value)
        .header("x-correlation-id", "prod-corr-0001")
        .json(&json!({"query": "Revenue by quarter?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-correlation-id"], "prod-corr-0001");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["response"],
        fake_answer("Revenue by quarter?").as_str()
    );
    let sent: Vec<_> = p
        .fake
        .controls
        .requests()
        .into_iter()
        .filter(|r| r.activity_id.as_deref() == Some("prod-corr-0001"))
        .collect();
    assert!(!sent.is_empty());
    assert!(
        sent.iter()
            .all(|r| r.authorization.as_deref() == Some(&*format!("Bearer {token}")))
    );

    // Logout: the removal cookie is Secure too (same attributes as when set).
    let resp = with_session(client.post(gw.url("/auth/logout")), &value)
        .send()
        .await
        .unwrap();
    let removal = set_cookie(resp.headers(), SESSION_COOKIE).unwrap();
    assert_eq!(cookie_attributes(&removal), cookie_attributes(&cookie));
    let resp = with_session(client.post(gw.url("/query")), &value)
        .json(&json!({"query": "again?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // Logs: every line is one JSON object; the request's lines carry its correlation id,
    // the access line has method, path, status and latency; the user id is logged, never
    // the email.
    let lines = parsed_log_lines();
    let request_lines: Vec<&Value> = lines
        .iter()
        .filter(|l| l["correlation_id"] == "prod-corr-0001")
        .collect();
    assert!(request_lines.len() >= 2, "{request_lines:?}");
    for line in &request_lines {
        for field in ["timestamp", "level", "target", "message"] {
            assert!(line.get(field).is_some(), "{field} in {line}");
        }
        assert_eq!(line["method"], "POST");
        assert_eq!(line["path"], "/query");
    }
    let access = request_lines
        .iter()
        .find(|l| l["target"] == "tower_rampart::access")
        .expect("an access line");
    assert_eq!(access["status"], 200);
    assert!(access["latency_ms"].is_number());
    assert!(
        request_lines.iter().any(|l| l["user_id"] == oid.as_str()),
        "the user id is on the request's lines once known"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["user_id"] == oid.as_str() && l["message"] == "signed in")
    );
    let all = log_lines().join("\n");
    assert!(!all.contains("ada@contoso.com"), "no email in the logs");
    assert_no_secret_logged(&[&token, &value, SECRET_KEY, REDIS_PASSWORD]);
}

#[tokio::test]
async fn login_checks_the_token_against_the_configured_tenant_and_keys() {
    let p = production(&[]).await;
    let client = plain();
    // A token of another tenant, and one signed by a key the JWKS does not have.
    let mut claims = p.identity.claims("eve@fabrikam.com", "Eve");
    claims["tid"] = json!("99999999-8888-7777-6666-555555555555");
    let foreign = p.identity.sign(&claims).unwrap();
    let stranger = DevIdentity::generate(&p.gw.handle.config().auth)
        .unwrap()
        .mint("eve@fabrikam.com", "Eve")
        .unwrap();
    for (token, expected) in [(&foreign, "tenant"), (&stranger, "unknown key")] {
        let resp = client
            .post(p.gw.url("/auth/client-login"))
            .json(&json!({ "access_token": token }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        assert!(resp.headers().get("set-cookie").is_none());
        let body: Value = resp.json().await.unwrap();
        assert!(
            body["detail"].as_str().unwrap().contains(expected),
            "{body}"
        );
    }
}

#[tokio::test]
async fn unreachable_signing_keys_are_503_not_401() {
    // A loopback port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let url = format!("http://{closed}/keys");
    let p = production(&[("AUTH_JWKS_URL", url.as_str())]).await;
    let token = p.identity.mint("ada@contoso.com", "Ada").unwrap();
    let resp = plain()
        .post(p.gw.url("/auth/client-login"))
        .json(&json!({ "access_token": token }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let text = resp.text().await.unwrap();
    assert!(!text.contains(&token));
    let body: Value = serde_json::from_str(&text).unwrap();
    assert!(body["detail"].as_str().unwrap().contains("unavailable"));
}

#[tokio::test]
async fn same_site_none_cookies_are_secure_even_locally() {
    let gw = Gateway::local(&[("COOKIE_SAMESITE", "none")]).await;
    let client = plain();
    let token = dev_token(&client, &gw, "ada@example.com", "Ada").await;
    let resp = login(&client, &gw, &token).await;
    let cookie = set_cookie(resp.headers(), SESSION_COOKIE).unwrap();
    assert!(cookie.contains("SameSite=None"), "{cookie}");
    assert!(cookie.contains("Secure"), "{cookie}");
}

/// Runs the binary with exactly `vars` in an empty directory (no `.env`); returns its exit
/// code and stderr. Fails the test if it does not exit by itself.
fn run_binary(vars: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = std::env::temp_dir().join(format!("gateway-prod-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fabric-gateway"))
        .env_clear()
        .envs(vars.iter().copied())
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let output = child.wait_with_output().unwrap();
            let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
            text.push_str(&String::from_utf8_lossy(&output.stdout));
            return (status.code(), text);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the gateway did not refuse to start: {vars:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn production_refuses_to_start_without_each_required_variable() {
    let all = [
        ("ENVIRONMENT", "production"),
        ("REDIS_URL", "redis://:p4ssw0rd-secret@127.0.0.1:6390"),
        ("SECRET_KEY", SECRET_KEY),
        ("TENANT_ID", TENANT),
        (
            "DATA_AGENT_URL",
            "http://127.0.0.1:9/v1/mcp/workspaces/w/dataagents/a/agent",
        ),
        ("ALLOWED_ORIGINS", "https://app.example.com"),
        ("REDIS_ALLOW_PLAINTEXT", "true"),
    ];
    for missing in [
        "REDIS_URL",
        "SECRET_KEY",
        "TENANT_ID",
        "DATA_AGENT_URL",
        "ALLOWED_ORIGINS",
    ] {
        let vars: Vec<_> = all.iter().copied().filter(|(k, _)| *k != missing).collect();
        let (code, output) = run_binary(&vars);
        assert_eq!(code, Some(2), "exit code without {missing}: {output}");
        assert!(
            output.contains(missing),
            "the message names {missing}: {output}"
        );
        assert!(!output.contains(SECRET_KEY) && !output.contains("p4ssw0rd-secret"));
    }
    // A short key is refused too, naming the variable and not echoing the value.
    let mut vars = all.to_vec();
    vars[2] = ("SECRET_KEY", "too-short-key");
    let (code, output) = run_binary(&vars);
    assert_eq!(code, Some(2));
    assert!(output.contains("SECRET_KEY") && !output.contains("too-short-key"));
    // A bad quota, which only the rate limiter can parse, stops it as well.
    let (code, output) = run_binary(&[("RATE_LIMIT_QUERY_IP", "lots")]);
    assert_eq!(code, Some(2), "{output}");
    assert!(output.contains("RATE_LIMIT_QUERY_IP"), "{output}");
}

/// The README's production recommendation, `SESSION_COOKIE_NAME=__Host-fabric_session_id`: a
/// `__Host-` cookie cannot be set by a sibling subdomain (it must be Secure, Path=/ and have
/// no Domain), and the gateway sets one that satisfies that. Beside it, a planted cookie of
/// the same name that does not verify is ignored; a planted valid cookie of another session
/// signs nobody in.
#[tokio::test]
async fn a_host_prefixed_session_cookie_works_in_production() {
    const NAME: &str = "__Host-fabric_session_id";
    let p = production(&[("SESSION_COOKIE_NAME", NAME)]).await;
    let gw = &p.gw;
    let client = plain(); // Secure cookies are sent by hand over this plain-http loopback
    let sign_in = |email: &'static str| {
        let token = p.identity.mint(email, "Someone").unwrap();
        let client = client.clone();
        let url = gw.url("/auth/client-login");
        async move {
            let resp = client
                .post(url)
                .json(&json!({ "access_token": token }))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            set_cookie(resp.headers(), NAME).expect("a __Host- session cookie")
        }
    };
    let cookie = sign_in("ada@contoso.com").await;
    let mut attributes = cookie_attributes(&cookie);
    attributes.retain(|a| a != "HttpOnly" && !a.starts_with("SameSite"));
    assert_eq!(attributes, ["Path=/", "Secure"], "{cookie}");
    let value = cookie_value(&cookie);
    let query = |cookies: String| {
        client
            .post(gw.url("/query"))
            .header("cookie", cookies)
            .json(&json!({"query": "Revenue by quarter?"}))
            .send()
    };
    let resp = query(format!("{NAME}={value}")).await.unwrap();
    assert_eq!(resp.status(), 200);
    // The default name is not this gateway's session cookie.
    let resp = query(format!("{SESSION_COOKIE}={value}")).await.unwrap();
    assert_eq!(resp.status(), 401);
    // A planted cookie of the name that does not verify, before or after: still signed in.
    for cookies in [
        format!("{NAME}=planted; {NAME}={value}"),
        format!("{NAME}={value}; {NAME}=planted"),
    ] {
        let resp = query(cookies.clone()).await.unwrap();
        assert_eq!(resp.status(), 200, "{cookies}");
    }
    // A planted valid cookie of another session: nobody is signed in.
    let planter = cookie_value(&sign_in("eve@contoso.com").await);
    let resp = query(format!("{NAME}={planter}; {NAME}={value}"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // Logout removes it with the same attributes.
    let resp = client
        .post(gw.url("/auth/logout"))
        .header("cookie", format!("{NAME}={value}"))
        .send()
        .await
        .unwrap();
    let removal = set_cookie(resp.headers(), NAME).unwrap();
    assert_eq!(cookie_attributes(&removal), cookie_attributes(&cookie));
    assert_no_secret_logged(&[&value, &planter]);
}
