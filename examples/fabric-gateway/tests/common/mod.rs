//! Helpers of the gateway's end-to-end tests: a gateway served on loopback, a browser-like
//! client, a JWKS server, and a process-wide log capture that every test scans for secrets.
#![allow(dead_code)] // each test binary uses a different subset

pub mod documented;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use fabric_gateway::config::{Config, LogFormat};
use fabric_gateway::{App, AppHandle, app, app_with_clock, logging};
use reqwest::header::{HeaderMap, SET_COOKIE};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tower_rampart::clock::ManualClock;

/// The session cookie's name (the default `SESSION_COOKIE_NAME`).
pub const SESSION_COOKIE: &str = "fabric_session_id";

/// A gateway served on a loopback port. Dropping it stops the server.
pub struct Gateway {
    pub base: String,
    pub addr: SocketAddr,
    pub handle: AppHandle,
    task: JoinHandle<()>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Gateway {
    /// Builds the service for `config` and serves it on `127.0.0.1:0`.
    pub async fn start(config: Config) -> Self {
        capture_logs();
        Self::serve(app(config).await.expect("the gateway starts")).await
    }

    /// [`Gateway::start`] without the process-wide log capture: for a test that installs a
    /// subscriber of its own (the fault run keeps only warnings, a long run's debug lines
    /// would fill its memory).
    pub async fn start_uncaptured(config: Config) -> Self {
        Self::serve(app(config).await.expect("the gateway starts")).await
    }

    /// Local mode with these variables (nothing else set).
    pub async fn local(vars: &[(&str, &str)]) -> Self {
        Self::start(config(vars)).await
    }

    /// Builds the service for `config` with every time-dependent part on `clock` (see
    /// [`app_with_clock`]) and serves it on `127.0.0.1:0`.
    pub async fn start_with_clock(config: Config, clock: ManualClock) -> Self {
        capture_logs();
        let service = app_with_clock(config, Arc::new(clock)).await;
        Self::serve(service.expect("the gateway starts")).await
    }

    /// Serves an already built service on `127.0.0.1:0`.
    async fn serve(service: App) -> Self {
        let (router, handle) = service.into_parts();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            fabric_gateway::app::serve(router, listener, std::future::pending())
                .await
                .unwrap();
        });
        Self {
            base: format!("http://{addr}"),
            addr,
            handle,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// A configuration from exactly these variables.
pub fn config(vars: &[(&str, &str)]) -> Config {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Config::from_lookup(|name| map.get(name).cloned()).expect("valid test configuration")
}

/// A client that keeps cookies like a browser (not `Secure` ones over http).
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A client without a cookie store (cookies are sent by hand).
pub fn plain() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// `POST /dev/token` → the access token.
pub async fn dev_token(client: &reqwest::Client, gw: &Gateway, email: &str, name: &str) -> String {
    let resp = client
        .post(gw.url("/dev/token"))
        .json(&json!({"email": email, "name": name}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

/// `POST path` with the JSON `body`.
pub async fn post_json(
    client: &reqwest::Client,
    gw: &Gateway,
    path: &str,
    body: &Value,
) -> reqwest::Response {
    client.post(gw.url(path)).json(body).send().await.unwrap()
}

/// `GET url` → the JSON body.
pub async fn get_json(client: &reqwest::Client, url: String) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// `POST /auth/client-login` with `access_token`; returns the response.
pub async fn login(client: &reqwest::Client, gw: &Gateway, token: &str) -> reqwest::Response {
    post_json(
        client,
        gw,
        "/auth/client-login",
        &json!({ "access_token": token }),
    )
    .await
}

/// Logs `client` in with `token` (asserting a 200); returns the session cookie's value.
pub async fn sign_in(client: &reqwest::Client, gw: &Gateway, token: &str) -> String {
    let resp = login(client, gw, token).await;
    assert_eq!(resp.status(), 200, "login");
    session_cookie(&resp)
}

/// A browser signed in as Ada with a fresh dev token; returns it and the token.
pub async fn signed_in(gw: &Gateway) -> (reqwest::Client, String) {
    let client = browser();
    let token = dev_token(&client, gw, "ada@example.com", "Ada Lovelace").await;
    sign_in(&client, gw, &token).await;
    (client, token)
}

/// `POST /query` with `question`.
pub async fn query(client: &reqwest::Client, gw: &Gateway, question: &str) -> reqwest::Response {
    post_json(client, gw, "/query", &json!({ "query": question })).await
}

/// `POST /query/detailed` with `question`.
pub async fn query_detailed(
    client: &reqwest::Client,
    gw: &Gateway,
    question: &str,
) -> reqwest::Response {
    post_json(client, gw, "/query/detailed", &json!({ "query": question })).await
}

/// `GET /auth/status` as `client` (with whatever cookies it keeps).
pub async fn auth_status(client: &reqwest::Client, gw: &Gateway) -> Value {
    get_json(client, gw.url("/auth/status")).await
}

/// `GET /auth/status` with exactly this session cookie (no browser state).
pub async fn auth_status_with(gw: &Gateway, session: &str) -> Value {
    let resp = with_session(plain().get(gw.url("/auth/status")), session)
        .send()
        .await
        .unwrap();
    resp.json().await.unwrap()
}

/// `GET /health`.
pub async fn health(gw: &Gateway) -> Value {
    get_json(&plain(), gw.url("/health")).await
}

/// `req` carrying exactly this session cookie (sent by hand: no cookie store involved).
pub fn with_session(req: reqwest::RequestBuilder, session: &str) -> reqwest::RequestBuilder {
    req.header("cookie", format!("{SESSION_COOKIE}={session}"))
}

/// The value of the session cookie `resp` sets (panics without one).
pub fn session_cookie(resp: &reqwest::Response) -> String {
    cookie_value(&set_cookie(resp.headers(), SESSION_COOKIE).expect("a session cookie"))
}

/// Whether `resp` removes the session cookie (`Max-Age=0`).
pub fn removes_session_cookie(resp: &reqwest::Response) -> bool {
    set_cookie(resp.headers(), SESSION_COOKIE).is_some_and(|c| c.contains("Max-Age=0"))
}

/// The `Set-Cookie` header of `name`, if the response has one.
pub fn set_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

/// The value of a `Set-Cookie` line (`name=value; ...` → `value`).
pub fn cookie_value(set_cookie: &str) -> String {
    let pair = set_cookie.split(';').next().unwrap();
    pair.split_once('=').unwrap().1.to_owned()
}

/// The attributes of a `Set-Cookie` line, lower-cased names, without the lifetime ones.
pub fn cookie_attributes(set_cookie: &str) -> Vec<String> {
    let mut attrs: Vec<String> = set_cookie
        .split(';')
        .skip(1)
        .map(|a| a.trim().to_owned())
        .filter(|a| {
            let lower = a.to_ascii_lowercase();
            !lower.starts_with("max-age") && !lower.starts_with("expires")
        })
        .collect();
    attrs.sort();
    attrs
}

/// Serves a JWKS document at `http://127.0.0.1:<port>/keys` on an already bound listener.
pub fn serve_jwks(listener: tokio::net::TcpListener, jwks: Value) -> JoinHandle<()> {
    serve_jwks_recording(listener, jwks).0
}

/// The `X-Correlation-ID` (if any) of each request a test server received.
pub type SeenIds = Arc<Mutex<Vec<Option<String>>>>;

/// [`serve_jwks`], also recording the `X-Correlation-ID` of each request for the keys.
pub fn serve_jwks_recording(
    listener: tokio::net::TcpListener,
    jwks: Value,
) -> (JoinHandle<()>, SeenIds) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let app = Router::new().route(
        "/keys",
        get(move |headers: HeaderMap| {
            let jwks = jwks.clone();
            let id = headers
                .get("x-correlation-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            record.lock().unwrap().push(id);
            async move { axum::Json(jwks) }
        }),
    );
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (task, seen)
}

// ---------------------------------------------------------------------------------------
// Log capture: every event of the process, as the production JSON lines.

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

static LOGS: OnceLock<Buffer> = OnceLock::new();

/// Installs (once per test binary) the production JSON subscriber writing into memory.
/// Debug level for the gateway and the crate, so that even debug lines are checked.
pub fn capture_logs() {
    LOGS.get_or_init(|| {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = logging::subscriber(
            LogFormat::Json,
            "info,fabric_gateway=debug,tower_rampart=debug,tower_http=debug,axum=debug",
            move || writer.clone(),
        )
        .unwrap();
        tracing::subscriber::set_global_default(subscriber).expect("no other subscriber");
        buffer
    });
}

/// Every log line captured so far in this test binary.
pub fn log_lines() -> Vec<String> {
    let buffer = LOGS.get().expect("capture_logs was called");
    let bytes = buffer.0.lock().unwrap().clone();
    String::from_utf8(bytes)
        .expect("log output is UTF-8")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Asserts that no captured line contains any of `secrets` (those under 8 bytes ignored).
pub fn assert_no_secret_logged(secrets: &[&str]) {
    let lines = log_lines();
    assert!(!lines.is_empty(), "nothing was logged at all");
    for secret in secrets.iter().filter(|s| s.len() >= 8) {
        for line in &lines {
            if line.contains(secret) {
                // Say where, without repeating the secret.
                let v: Value = serde_json::from_str(line).unwrap_or_default();
                panic!(
                    "a secret ({}...) appears in a log line: target {}, message {}",
                    &secret[..4],
                    v["target"],
                    v["message"]
                );
            }
        }
    }
}

/// Every captured line parses as one JSON object.
pub fn parsed_log_lines() -> Vec<Value> {
    log_lines()
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {l}"));
            assert!(v.is_object(), "a log line is not an object: {l}");
            v
        })
        .collect()
}
