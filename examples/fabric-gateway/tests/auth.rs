//! Token validation against a JWKS served over real HTTP, and the dev identity's routes.

use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fabric_gateway::auth::dev::DevIdentity;
use fabric_gateway::auth::{TokenError, TokenValidator};
use fabric_gateway::config::{AuthSettings, Config, DEV_TENANT_ID};
use serde_json::{Value, json};
use tower_rampart::clock::ManualClock;

const TENANT: &str = "4d4eca3f-1111-2222-3333-444455556666";
const AUDIENCE: &str = "https://api.fabric.microsoft.com";

struct JwksServer {
    url: String,
    fetches: Arc<AtomicUsize>,
    doc: Arc<Mutex<Value>>,
    status: Arc<AtomicU16>,
    _task: tokio::task::JoinHandle<()>,
}

async fn jwks_server(doc: Value) -> JwksServer {
    let fetches = Arc::new(AtomicUsize::new(0));
    let doc = Arc::new(Mutex::new(doc));
    let status = Arc::new(AtomicU16::new(200));
    let (f, d, s) = (fetches.clone(), doc.clone(), status.clone());
    let app = Router::new().route(
        "/keys",
        get(move || {
            let (f, d, s) = (f.clone(), d.clone(), s.clone());
            async move {
                f.fetch_add(1, Ordering::SeqCst);
                let status = StatusCode::from_u16(s.load(Ordering::SeqCst)).unwrap();
                (status, axum::Json(d.lock().unwrap().clone()))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/keys", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    JwksServer {
        url,
        fetches,
        doc,
        status,
        _task: task,
    }
}

fn settings(jwks_url: Option<String>) -> AuthSettings {
    AuthSettings {
        tenant_id: TENANT.to_owned(),
        jwks_url,
        audiences: vec![AUDIENCE.to_owned(), "api://other".to_owned()],
        issuers: vec![
            format!("https://sts.windows.net/{TENANT}/"),
            format!("https://login.microsoftonline.com/{TENANT}/v2.0"),
        ],
    }
}

struct Setup {
    clock: ManualClock,
    identity: DevIdentity,
    server: JwksServer,
    validator: TokenValidator,
}

async fn setup() -> Setup {
    let clock = ManualClock::starting_now();
    let identity = DevIdentity::generate(&settings(None))
        .unwrap()
        .with_clock(Arc::new(clock.clone()));
    let server = jwks_server(identity.jwks().clone()).await;
    let validator = TokenValidator::builder(settings(Some(server.url.clone())))
        .clock(Arc::new(clock.clone()))
        .build();
    Setup {
        clock,
        identity,
        server,
        validator,
    }
}

fn now(clock: &ManualClock) -> u64 {
    use tower_rampart::clock::Clock;
    clock.now_micros() / 1_000_000
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

/// Validation fails with `expected`, and its message does not echo the token.
async fn refused(validator: &TokenValidator, token: &str, expected: TokenError) {
    let e = validator.validate(token).await.unwrap_err();
    assert_eq!(e, expected);
    assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
    if token.len() > 8 {
        assert!(!e.detail().contains(token));
    }
    if let Some(signature) = token.rsplit('.').next().filter(|s| s.len() > 8) {
        assert!(!e.detail().contains(signature));
    }
}

#[tokio::test]
async fn valid_token_yields_the_user_and_keys_are_cached() {
    let s = setup().await;
    let token = s
        .identity
        .mint("ada@example.com", "Ada King Lovelace")
        .unwrap();
    let v = s.validator.validate(&token).await.unwrap();
    assert_eq!(v.user.email, "ada@example.com");
    assert_eq!(v.user.display_name, "Ada King Lovelace");
    assert_eq!(v.user.given_name.as_deref(), Some("Ada"));
    assert_eq!(v.user.surname.as_deref(), Some("King Lovelace"));
    assert!(v.user.id.is_some());
    assert_eq!(v.expires_at, now(&s.clock) + 3600);
    // Serialises to the old service's user shape.
    let user = serde_json::to_value(&v.user).unwrap();
    for field in ["email", "display_name", "given_name", "surname", "id"] {
        assert!(user.get(field).is_some(), "{field}");
    }

    s.validator.validate(&token).await.unwrap();
    assert_eq!(s.server.fetches.load(Ordering::SeqCst), 1);
    assert_eq!(s.validator.jwks_fetch_count(), 1);

    // The identity claims fall back as documented.
    let mut claims = s.identity.claims("bob@example.com", "Bob");
    let obj = claims.as_object_mut().unwrap();
    obj.remove("upn");
    obj.remove("name");
    obj.insert("preferred_username".into(), json!("bob.pref@example.com"));
    let v = s
        .validator
        .validate(&s.identity.sign(&claims).unwrap())
        .await
        .unwrap();
    assert_eq!(v.user.email, "bob.pref@example.com");
    assert_eq!(v.user.display_name, "bob.pref@example.com");
    assert_eq!(v.user.surname, None);
}

#[tokio::test]
async fn bad_signatures_are_refused() {
    let s = setup().await;
    let token = s.identity.mint("ada@example.com", "Ada").unwrap();
    let parts: Vec<&str> = token.split('.').collect();

    // Payload changed after signing.
    let mut claims = s.identity.claims("ada@example.com", "Ada");
    claims["upn"] = json!("admin@example.com");
    let tampered = format!("{}.{}.{}", parts[0], b64(&claims), parts[2]);
    refused(&s.validator, &tampered, TokenError::BadSignature).await;

    // Signed by another key that claims our key's id.
    let other = DevIdentity::generate(&settings(None)).unwrap();
    let foreign = other.mint("ada@example.com", "Ada").unwrap();
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": s.identity.kid()});
    let forged = format!(
        "{}.{}.{}",
        b64(&header),
        foreign.split('.').nth(1).unwrap(),
        foreign.split('.').nth(2).unwrap()
    );
    refused(&s.validator, &forged, TokenError::BadSignature).await;

    // Garbage signature.
    let garbage = format!("{}.{}.{}", parts[0], parts[1], "AAAA");
    refused(&s.validator, &garbage, TokenError::BadSignature).await;
}

#[tokio::test]
async fn alg_none_and_hmac_confusion_are_refused() {
    let s = setup().await;
    let claims = s.identity.claims("ada@example.com", "Ada");
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT", "kid": s.identity.kid()})),
        b64(&claims)
    );
    refused(
        &s.validator,
        &none,
        TokenError::UnsupportedAlgorithm("none".into()),
    )
    .await;

    // HS256 signed with the public key's bytes (what a confused verifier would check).
    let public_n = s.identity.jwks()["keys"][0]["n"]
        .as_str()
        .unwrap()
        .to_owned();
    for secret in [
        public_n.as_bytes().to_vec(),
        serde_json::to_vec(s.identity.jwks()).unwrap(),
    ] {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(s.identity.kid().to_owned());
        let hs = jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&secret),
        )
        .unwrap();
        refused(
            &s.validator,
            &hs,
            TokenError::UnsupportedAlgorithm("HS256".into()),
        )
        .await;
    }
    // No key was fetched for any of these.
    assert_eq!(s.server.fetches.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn exp_and_nbf_have_sixty_seconds_leeway() {
    let s = setup().await;
    let token = s.identity.mint("ada@example.com", "Ada").unwrap();
    s.clock.advance(Duration::from_secs(3600 + 59));
    s.validator.validate(&token).await.unwrap();
    s.clock.advance(Duration::from_secs(2));
    refused(&s.validator, &token, TokenError::Expired).await;

    let t = now(&s.clock);
    let mut claims = s.identity.claims("ada@example.com", "Ada");
    claims["nbf"] = json!(t + 50);
    s.validator
        .validate(&s.identity.sign(&claims).unwrap())
        .await
        .unwrap();
    claims["nbf"] = json!(t + 120);
    refused(
        &s.validator,
        &s.identity.sign(&claims).unwrap(),
        TokenError::NotYetValid,
    )
    .await;

    let obj = claims.as_object_mut().unwrap();
    obj.remove("nbf");
    obj.remove("exp");
    refused(
        &s.validator,
        &s.identity.sign(&claims).unwrap(),
        TokenError::MissingClaim("exp"),
    )
    .await;
}

#[tokio::test]
async fn wrong_tenant_audience_or_issuer_are_refused() {
    let s = setup().await;
    let base = s.identity.claims("ada@example.com", "Ada");
    let with = |field: &str, value: Value| {
        let mut c = base.clone();
        c[field] = value;
        s.identity.sign(&c).unwrap()
    };
    refused(
        &s.validator,
        &with("tid", json!("99999999-0000-0000-0000-000000000000")),
        TokenError::WrongTenant,
    )
    .await;
    refused(
        &s.validator,
        &with("aud", json!("https://graph.microsoft.com")),
        TokenError::WrongAudience,
    )
    .await;
    refused(
        &s.validator,
        &with("iss", json!("https://evil.example/")),
        TokenError::WrongIssuer,
    )
    .await;
    // A list audience containing an accepted value passes; the second accepted issuer too.
    s.validator
        .validate(&with("aud", json!(["x", "api://other"])))
        .await
        .unwrap();
    s.validator
        .validate(&with(
            "iss",
            json!(format!("https://login.microsoftonline.com/{TENANT}/v2.0")),
        ))
        .await
        .unwrap();

    let mut c = base.clone();
    c.as_object_mut().unwrap().remove("tid");
    refused(
        &s.validator,
        &s.identity.sign(&c).unwrap(),
        TokenError::MissingClaim("tid"),
    )
    .await;
    let mut c = base.clone();
    c.as_object_mut().unwrap().remove("aud");
    refused(
        &s.validator,
        &s.identity.sign(&c).unwrap(),
        TokenError::MissingClaim("aud"),
    )
    .await;
}

#[tokio::test]
async fn malformed_tokens_are_refused() {
    let s = setup().await;
    for bad in ["", "abc", "a.b", "a.b.c.d", "!!!.e30.x"] {
        refused(&s.validator, bad, TokenError::Malformed).await;
    }
    let no_kid = format!("{}.{}.x", b64(&json!({"alg": "RS256"})), b64(&json!({})));
    refused(&s.validator, &no_kid, TokenError::MissingKeyId).await;
    let huge = format!("{}.{}.x", "a".repeat(20_000), "b");
    refused(&s.validator, &huge, TokenError::Malformed).await;
}

#[tokio::test]
async fn unknown_kid_refetches_at_most_once_per_interval() {
    let s = setup().await;
    let good = s.identity.mint("ada@example.com", "Ada").unwrap();
    s.validator.validate(&good).await.unwrap();
    assert_eq!(s.server.fetches.load(Ordering::SeqCst), 1);

    // Right after a fetch, an unknown kid does not cause another one.
    let rotated = DevIdentity::generate(&settings(None))
        .unwrap()
        .with_clock(Arc::new(s.clock.clone()));
    let unknown = rotated.mint("ada@example.com", "Ada").unwrap();
    refused(&s.validator, &unknown, TokenError::UnknownKey).await;
    assert_eq!(s.server.fetches.load(Ordering::SeqCst), 1);
    // Later, a key the JWKS does not have: one refetch, then refused.
    s.clock.advance(Duration::from_secs(31));
    refused(&s.validator, &unknown, TokenError::UnknownKey).await;
    assert_eq!(s.server.fetches.load(Ordering::SeqCst), 2);

    // A burst of bogus kids (concurrent too) fetches nothing more within the interval.
    let bogus: Vec<String> = (0..20)
        .map(|i| {
            let header = json!({"alg": "RS256", "kid": format!("bogus-{i}")});
            format!("{}.{}.sig", b64(&header), b64(&json!({})))
        })
        .collect();
    let results = futures_join(&s.validator, &bogus).await;
    assert!(results.iter().all(|r| r == &Err(TokenError::UnknownKey)));
    assert_eq!(s.server.fetches.load(Ordering::SeqCst), 2);
    // Known keys keep working meanwhile.
    s.validator.validate(&good).await.unwrap();

    // Once the interval has passed, a rotated-in key is found by one fetch.
    *s.server.doc.lock().unwrap() = json!({"keys": [
        s.identity.jwks()["keys"][0].clone(), rotated.jwks()["keys"][0].clone()
    ]});
    s.clock.advance(Duration::from_secs(31));
    s.validator.validate(&unknown).await.unwrap();
    assert_eq!(s.server.fetches.load(Ordering::SeqCst), 3);
    s.validator.validate(&unknown).await.unwrap();
    assert_eq!(s.server.fetches.load(Ordering::SeqCst), 3);
}

async fn futures_join(
    validator: &TokenValidator,
    tokens: &[String],
) -> Vec<Result<(), TokenError>> {
    let mut set = tokio::task::JoinSet::new();
    for t in tokens {
        let (v, t) = (validator.clone(), t.clone());
        set.spawn(async move { v.validate(&t).await.map(|_| ()) });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.push(r.unwrap());
    }
    out
}

#[tokio::test]
async fn unreachable_jwks_is_unavailable_not_unauthorized() {
    let clock = ManualClock::starting_now();
    let identity = DevIdentity::generate(&settings(None))
        .unwrap()
        .with_clock(Arc::new(clock.clone()));
    let token = identity.mint("ada@example.com", "Ada").unwrap();

    // Nothing listens on the port.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}/keys", listener.local_addr().unwrap());
    drop(listener);
    let validator = TokenValidator::builder(settings(Some(dead)))
        .clock(Arc::new(clock.clone()))
        .build();
    let e = validator.validate(&token).await.unwrap_err();
    assert_eq!(e, TokenError::KeysUnavailable);
    assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(!e.detail().contains(&token));

    // An erroring JWKS endpoint: 503 too, bounded retries, recovery after the backoff.
    let server = jwks_server(identity.jwks().clone()).await;
    server.status.store(500, Ordering::SeqCst);
    let validator = TokenValidator::builder(settings(Some(server.url.clone())))
        .clock(Arc::new(clock.clone()))
        .build();
    assert_eq!(
        validator.validate(&token).await.unwrap_err(),
        TokenError::KeysUnavailable
    );
    assert_eq!(
        validator.validate(&token).await.unwrap_err(),
        TokenError::KeysUnavailable
    );
    assert_eq!(server.fetches.load(Ordering::SeqCst), 1);
    server.status.store(200, Ordering::SeqCst);
    clock.advance(Duration::from_secs(6));
    validator.validate(&token).await.unwrap();
    assert_eq!(server.fetches.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn dev_routes_mint_tokens_that_validate_against_dev_jwks() {
    // Development defaults: no TENANT_ID, so the dev tenant.
    let config = Config::from_lookup(|_| None).unwrap();
    assert_eq!(config.auth.tenant_id, DEV_TENANT_ID);
    assert_eq!(config.auth.jwks_url, None);
    let identity = Arc::new(DevIdentity::generate(&config.auth).unwrap());
    let app: Router = identity.clone().routes();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let _server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let http = reqwest::Client::new();

    let resp = http
        .post(format!("{base}/dev/token"))
        .json(&json!({"email": "dev@example.com", "name": "Dev User"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let token = resp.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();

    // The JWKS is served over HTTP; a validator fetching it accepts the token.
    let mut auth = config.auth.clone();
    auth.jwks_url = Some(format!("{base}/dev/jwks"));
    let validated = TokenValidator::new(auth).validate(&token).await.unwrap();
    assert_eq!(validated.user.email, "dev@example.com");
    assert_eq!(validated.user.display_name, "Dev User");
    // And so does one trusting the identity's keys directly (local mode).
    let local = TokenValidator::builder(config.auth.clone())
        .trust_key_set(identity.jwks())
        .build();
    local.validate(&token).await.unwrap();

    // Bad bodies get {"detail"} errors.
    for body in [json!({"email": "not-an-email"}), json!({"name": "x"})] {
        let resp = http
            .post(format!("{base}/dev/token"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 422);
        assert!(resp.json::<Value>().await.unwrap()["detail"].is_string());
    }
    let resp = http
        .post(format!("{base}/dev/token"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.json::<Value>().await.unwrap()["detail"].is_string());
}

#[tokio::test]
async fn dev_tokens_carry_the_configured_tenant_audience_and_issuer() {
    let mut s = settings(None);
    s.audiences = vec!["api://custom".to_owned()];
    let identity = DevIdentity::generate(&s).unwrap();
    let claims = identity.claims("a@example.com", "A");
    assert_eq!(claims["tid"], TENANT);
    assert_eq!(claims["aud"], "api://custom");
    assert_eq!(claims["iss"], format!("https://sts.windows.net/{TENANT}/"));
    // A validator without the identity's keys (and no JWKS URL) refuses its tokens.
    let token = identity.mint("a@example.com", "A").unwrap();
    assert_eq!(
        TokenValidator::new(s).validate(&token).await.unwrap_err(),
        TokenError::UnknownKey
    );
}

/// The JWKS is read with a size limit (1 MiB): an oversized document (a compromised or
/// misconfigured endpoint streaming without end) is "keys unavailable" (503), never read into
/// memory whole; a large document under the limit is fine.
#[tokio::test]
async fn an_oversized_jwks_is_unavailable() {
    let s = setup().await;
    let token = s.identity.mint("ada@example.com", "Ada").unwrap();
    let mut doc = s.identity.jwks().clone();
    doc["padding"] = json!("x".repeat(1024 * 1024 + 1));
    *s.server.doc.lock().unwrap() = doc.clone();
    let e = s.validator.validate(&token).await.unwrap_err();
    assert_eq!(e, TokenError::KeysUnavailable);
    assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(!e.detail().contains("xxxx"));
    // Under the limit, after the failure backoff: accepted.
    doc["padding"] = json!("x".repeat(900 * 1024));
    *s.server.doc.lock().unwrap() = doc;
    s.clock.advance(Duration::from_secs(6));
    s.validator.validate(&token).await.unwrap();
    assert_eq!(s.server.fetches.load(Ordering::SeqCst), 2);
}

/// A JWKS endpoint that streams a chunked body without end (no `Content-Length`): the read
/// stops at the limit with "keys unavailable", instead of growing without bound.
#[tokio::test]
async fn an_endless_jwks_stream_is_cut_at_the_limit() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/keys", listener.local_addr().unwrap());
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let _server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 4096];
        let _ = socket.read(&mut request).await;
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                    transfer-encoding: chunked\r\n\r\n";
        socket.write_all(head.as_bytes()).await.unwrap();
        socket.write_all(b"1\r\n[\r\n").await.unwrap();
        let chunk = format!("4000\r\n{}\r\n", " ".repeat(0x4000));
        // At most 64 MiB, so that a reader without a limit fails the test rather than hangs.
        for _ in 0..4096 {
            if socket.write_all(chunk.as_bytes()).await.is_err() {
                return;
            }
            counter.fetch_add(0x4000, Ordering::SeqCst);
        }
    });
    let identity = DevIdentity::generate(&settings(None)).unwrap();
    let token = identity.mint("ada@example.com", "Ada").unwrap();
    let validator = TokenValidator::builder(settings(Some(url)))
        .fetch_timeout(Duration::from_secs(20))
        .build();
    let e = validator.validate(&token).await.unwrap_err();
    assert_eq!(e, TokenError::KeysUnavailable);
    // The server could write little more than the limit and the socket buffers.
    let written = sent.load(Ordering::SeqCst);
    assert!(written < 16 * 1024 * 1024, "{written} bytes were read");
}
