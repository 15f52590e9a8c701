//! The gateway in a real browser, cross-site: a headless Chromium loads a page from
//! `http://127.0.0.1:<A>` (a site of its own) whose script calls the gateway on
//! `http://localhost:<G>` with `fetch(..., {credentials: "include"})`, as the browser app of
//! "Browser app on another site" (the gateway's README) does. Each scenario runs against
//! the in-memory configuration and against a real `redis-server`.
//!
//! - **flow**: `COOKIE_SAMESITE=none` (so the cookie is `Partitioned`): dev token, sign-in,
//!   status, user, ten questions answered and the eleventh refused 429 with its headers
//!   readable from JavaScript, logout; afterwards the browser sends no session cookie at
//!   all (a removal cookie without `Partitioned` would leave the partitioned one in place).
//! - **control**: the sign-in with `COOKIE_PARTITIONED=false`: Chromium (a fresh profile
//!   blocks third-party cookies) drops the unpartitioned cookie, so the session is lost right
//!   after the sign-in. Should a Chromium version keep it, the test fails and says so.
//! - **foreign**: a page on a third origin (`http://127.0.0.2:<B>`, not in
//!   `ALLOWED_ORIGINS`): its fetches fail through CORS, and a form post or a no-cors fetch
//!   to `/auth/client-login` (no preflight) is refused 403 by the Origin check, with no
//!   session created. (Their `text/plain` body would also be refused by the handler, 415:
//!   the 403 is the Origin check's own.)
//!
//! The page cannot see everything (cookies are `HttpOnly` and on another site, opaque
//! answers), so the gateway runs in-process with one extra outermost layer that records,
//! per request, the method, path, `Origin`, whether a session cookie came with it (never
//! its value), the status and what the answer's `Set-Cookie` did.
//!
//! The browser is `chromium` (Debian package `chromium`; `scripts/test.sh` installs it), or
//! the executable `CHROMIUM` names. Each run has its own profile directory; Chromium and
//! every process it started (its process group) are killed at the end of the run.

mod common;
use rampart_test_support as support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{Html, Response};
use axum::routing::{get, post};
use common::*;
use serde_json::Value;
use support::RedisServer;
use tokio::sync::mpsc;
use tower_rampart::redis::driver;

const SECRET_KEY: &str = "browser-test-secret-key-0123456789abcdef01";
/// The page's script, served by the test's own site.
const PAGE: &str = include_str!("browser/page.html");
/// Chromium starting, loading the page and running a scenario (each call has 10 s inside).
const PAGE_DEADLINE: Duration = Duration::from_secs(60);
/// Chromium and its children gone after the kill.
const KILL_DEADLINE: Duration = Duration::from_secs(10);
/// Questions answered before the limit (the default quotas: 10 a minute per IP and per session).
const QUERY_QUOTA: usize = 10;

// ---------------------------------------------------------------------------------------
// The gateway, in-process, with a recorder around it.

/// What the gateway saw of one request (no cookie values).
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    origin: Option<String>,
    /// The request carried a `fabric_session_id` cookie.
    session_cookie: bool,
    status: u16,
    /// The answer set the session cookie: `Some(removal)` (`Max-Age=0` or not).
    set_session_cookie: Option<SetCookie>,
    correlation_id: Option<String>,
}

#[derive(Clone, Debug)]
struct SetCookie {
    removal: bool,
    partitioned: bool,
}

type Recorder = Arc<Mutex<Vec<Seen>>>;

async fn record(State(seen): State<Recorder>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let session_cookie = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .any(|pair| pair.trim().split('=').next() == Some(SESSION_COOKIE));
    let resp = next.run(req).await;
    let set_session_cookie = set_cookie(resp.headers(), SESSION_COOKIE).map(|c| {
        let attrs = cookie_attributes(&c);
        SetCookie {
            removal: c.contains("Max-Age=0"),
            partitioned: attrs.iter().any(|a| a.eq_ignore_ascii_case("partitioned")),
        }
    });
    let correlation_id = resp
        .headers()
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    seen.lock().unwrap().push(Seen {
        method,
        path,
        origin,
        session_cookie,
        status: resp.status().as_u16(),
        set_session_cookie,
        correlation_id,
    });
    resp
}

/// A gateway on `http://localhost:<port>` (bound on 127.0.0.1) with its recorder.
struct RecordedGateway {
    /// `http://localhost:<port>`: the origin the page calls.
    origin: String,
    seen: Recorder,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RecordedGateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RecordedGateway {
    async fn start(vars: &[(&str, &str)]) -> (Self, fabric_gateway::AppHandle) {
        capture_logs();
        let service = fabric_gateway::app(config(vars))
            .await
            .expect("the gateway starts");
        let (router, handle) = service.into_parts();
        let seen = Recorder::default();
        let router = router.layer(middleware::from_fn_with_state(seen.clone(), record));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            fabric_gateway::app::serve(router, listener, std::future::pending())
                .await
                .unwrap();
        });
        let gw = Self {
            origin: format!("http://localhost:{port}"),
            seen,
            task,
        };
        (gw, handle)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// What the gateway saw of `method path`, in order (CORS preflights are `OPTIONS`).
    fn requests(&self, method: &str, path: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.method == method && s.path == path)
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// The app's site: serves the page and receives its results.

struct Site {
    addr: SocketAddr,
    results: mpsc::Receiver<Value>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Site {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Site {
    /// Serves the page on `ip`:0; `form_token` goes into the foreign mode's requests.
    async fn start(ip: &str, form_token: &str) -> Self {
        let (tx, results) = mpsc::channel(4);
        let page = PAGE.replace("__FORM_TOKEN__", form_token);
        let app = Router::new()
            .route("/page.html", get(move || async move { Html(page) }))
            .route(
                "/results",
                post(move |axum::Json(body): axum::Json<Value>| async move {
                    let _ = tx.send(body).await;
                    "ok"
                }),
            );
        let listener = tokio::net::TcpListener::bind((ip, 0))
            .await
            .unwrap_or_else(|e| panic!("cannot bind the page's site on {ip}: {e}"));
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            addr,
            results,
            task,
        }
    }

    fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn page_url(&self, gateway: &str, mode: &str) -> String {
        format!("{}/page.html?gateway={gateway}&mode={mode}", self.origin())
    }
}

// ---------------------------------------------------------------------------------------
// Chromium.

/// The browser executable: `CHROMIUM`, else `chromium` on the PATH.
fn chromium_path() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("chromium"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "chromium is not installed: these tests need a real browser. Install the Debian \
             package `chromium` (`apt-get install chromium`; scripts/test.sh does it when run \
             as root) or set CHROMIUM to a Chromium or Chrome executable."
        )
    })
}

/// A headless Chromium in a process group of its own, with a fresh profile. Dropping it
/// kills the whole group and removes the profile.
struct Browser {
    child: tokio::process::Child,
    pgid: i32,
    profile: PathBuf,
}

impl Browser {
    fn launch(url: &str) -> Self {
        let profile = std::env::temp_dir().join(format!(
            "fabric-gateway-browser-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        std::fs::create_dir_all(&profile).unwrap();
        let log = std::fs::File::create(profile.join("chromium.log")).unwrap();
        let chromium = chromium_path();
        let child = tokio::process::Command::new(&chromium)
            // Loopback only: no proxy, no background traffic, nothing from a first run.
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--mute-audio",
                "--no-proxy-server",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                let _ = std::fs::remove_dir_all(&profile);
                panic!(
                    "cannot start {} ({e}): install the Debian package `chromium` or set CHROMIUM",
                    chromium.display()
                )
            });
        let pgid = i32::try_from(child.id().expect("a running child")).unwrap();
        Self {
            child,
            pgid,
            profile,
        }
    }

    /// The end of Chromium's output (for failure messages).
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.profile.join("chromium.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Waits for the page's results, or fails with Chromium's output.
    async fn results(&mut self, site: &mut Site) -> Value {
        tokio::select! {
            r = site.results.recv() => r.expect("the site is running"),
            status = self.child.wait() => panic!(
                "chromium exited ({status:?}) before the page reported; its output:\n{}",
                self.log_tail()
            ),
            () = tokio::time::sleep(PAGE_DEADLINE) => panic!(
                "the page did not report within {PAGE_DEADLINE:?}; chromium's output:\n{}",
                self.log_tail()
            ),
        }
    }

    /// Kills the process group and waits until none of it is left.
    async fn kill(&mut self) {
        // Chromium is running here: a check that cannot see it could not see leftovers either.
        assert!(
            group_alive(self.pgid),
            "chromium's process group {} is not visible: cannot check that it is gone",
            self.pgid
        );
        kill_group(self.pgid, "-KILL");
        let _ = self.child.start_kill();
        // Reaps the leader so that it does not stay in the group as a zombie.
        let _ = tokio::time::timeout(KILL_DEADLINE, self.child.wait()).await;
        let start = Instant::now();
        while group_alive(self.pgid) {
            assert!(
                start.elapsed() < KILL_DEADLINE,
                "chromium's processes (group {}) still run {KILL_DEADLINE:?} after SIGKILL",
                self.pgid
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if group_alive(self.pgid) {
            kill_group(self.pgid, "-KILL");
            let _ = self.child.start_kill();
            let _ = self.child.try_wait();
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// `kill <signal> -- -<pgid>`: the whole group of the Chromium this test started.
fn kill_group(pgid: i32, signal: &str) -> bool {
    std::process::Command::new("kill")
        .args([signal, "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A process of the group still runs. Zombies do not count: once killed, Chromium's
/// children are orphans that PID 1 reaps when it gets to it (lazily in some containers, never
/// under a PID 1 that reaps nothing). Read from `/proc`; `kill -0` (zombies included) where
/// there is none.
fn group_alive(pgid: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return kill_group(pgid, "-0");
    };
    entries.flatten().any(|entry| {
        let is_pid = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
        // `pid (comm) state ppid pgrp ...`; comm may hold spaces and parentheses.
        let stat = is_pid
            .then(|| std::fs::read_to_string(entry.path().join("stat")).ok())
            .flatten();
        stat.as_deref()
            .and_then(|s| s.rsplit_once(')'))
            .map(|(_, rest)| rest.split_whitespace().collect::<Vec<_>>())
            .is_some_and(|fields| {
                fields.len() > 2
                    && !matches!(fields[0], "Z" | "X")
                    && fields[2].parse::<i32>() == Ok(pgid)
            })
    })
}

/// Loads `page` in a fresh headless Chromium and returns what the page reported.
async fn run_page(site: &mut Site, gateway: &str, mode: &str) -> Value {
    let mut browser = Browser::launch(&site.page_url(gateway, mode));
    let results = browser.results(site).await;
    browser.kill().await;
    assert_eq!(results["mode"], mode);
    assert!(
        results["error"].is_null(),
        "the page's script failed: {}\nsteps: {:#}",
        results["error"],
        results["steps"]
    );
    results
}

/// The step `name` of a page's results.
fn step<'a>(results: &'a Value, name: &str) -> &'a Value {
    results["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {:#}", results["steps"]))
}

fn status(results: &Value, name: &str) -> u64 {
    let s = step(results, name);
    s["status"]
        .as_u64()
        .unwrap_or_else(|| panic!("step {name} got no answer: {s:#}"))
}

fn read_header<'a>(results: &'a Value, name: &str, header: &str) -> &'a str {
    step(results, name)["headers"][header]
        .as_str()
        .unwrap_or_else(|| panic!("JavaScript cannot read {header} on step {name}"))
}

// ---------------------------------------------------------------------------------------
// The scenarios.

/// Where sessions live.
enum Backend {
    Memory,
    Redis(RedisServer),
}

impl Backend {
    async fn redis() -> Self {
        let server = tokio::task::spawn_blocking(RedisServer::start)
            .await
            .unwrap();
        Self::Redis(server)
    }

    fn url(&self) -> Option<String> {
        match self {
            Self::Memory => None,
            Self::Redis(server) => Some(server.url()),
        }
    }

    /// Session records in the store (Redis only; `None` in memory).
    fn session_keys(&self) -> Option<usize> {
        match self {
            Self::Memory => None,
            Self::Redis(server) => Some(
                server
                    .run::<Vec<String>>(driver::cmd("KEYS").arg("rampart:session:*"))
                    .len(),
            ),
        }
    }
}

/// The gateway for the app on `app_origin`, cross-site cookies, `partitioned` or not.
async fn gateway(
    backend: &Backend,
    app_origin: &str,
    partitioned: bool,
) -> (RecordedGateway, fabric_gateway::AppHandle) {
    let redis_url = backend.url();
    let mut vars = vec![
        ("SECRET_KEY", SECRET_KEY),
        ("COOKIE_SAMESITE", "none"),
        ("ALLOWED_ORIGINS", app_origin),
        (
            "COOKIE_PARTITIONED",
            if partitioned { "true" } else { "false" },
        ),
    ];
    if let Some(url) = &redis_url {
        vars.push(("REDIS_URL", url));
    }
    RecordedGateway::start(&vars).await
}

async fn flow(backend: Backend) {
    let mut site = Site::start("127.0.0.1", "").await;
    let (gw, _handle) = gateway(&backend, &site.origin(), true).await;
    let results = run_page(&mut site, &gw.origin, "flow").await;

    // Sign-in: the cookie was partitioned, and the browser sent it back.
    assert_eq!(status(&results, "dev_token"), 200);
    assert_eq!(
        step(&results, "dev_token")["body"]["access_token"],
        "<present>"
    );
    assert_eq!(
        status(&results, "login"),
        200,
        "{:#}",
        step(&results, "login")
    );
    let login = gw.requests("POST", "/auth/client-login");
    assert_eq!(login.len(), 1, "{login:?}");
    let set = login[0]
        .set_session_cookie
        .as_ref()
        .expect("login sets the cookie");
    assert!(!set.removal && set.partitioned, "{set:?}");
    assert_eq!(
        step(&results, "status_after_login")["body"]["authenticated"],
        true,
        "the browser did not send the partitioned session cookie back: {:#}",
        step(&results, "status_after_login")
    );
    assert_eq!(status(&results, "user"), 200);
    assert_eq!(
        step(&results, "user")["body"]["user"]["email"],
        "ada@example.com"
    );
    if let Some(keys) = backend.session_keys() {
        assert!(keys > 0, "signed in, yet no session record in Redis");
    }

    // Ten questions answered, the eleventh refused with headers the app can read.
    for i in 1..=QUERY_QUOTA {
        let name = format!("query_{i}");
        assert_eq!(status(&results, &name), 200, "{:#}", step(&results, &name));
        read_header(&results, &name, "x-correlation-id");
    }
    let refused = format!("query_{}", QUERY_QUOTA + 1);
    assert_eq!(
        status(&results, &refused),
        429,
        "{:#}",
        step(&results, &refused)
    );
    let retry_after: u64 = read_header(&results, &refused, "retry-after")
        .parse()
        .expect("Retry-After is a number of seconds");
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    let ratelimit = read_header(&results, &refused, "ratelimit");
    assert!(ratelimit.contains("r=0"), "RateLimit: {ratelimit}");
    let policy = read_header(&results, &refused, "ratelimit-policy");
    assert!(policy.contains("q=10"), "RateLimit-Policy: {policy}");
    // The id the page read is the one the gateway answered with.
    let page_id = read_header(&results, &refused, "x-correlation-id");
    let queries = gw.requests("POST", "/query");
    assert_eq!(queries.len(), QUERY_QUOTA + 1, "{queries:?}");
    assert!(queries.iter().all(|q| q.session_cookie));
    assert_eq!(queries[QUERY_QUOTA].status, 429);
    assert_eq!(
        queries[QUERY_QUOTA].correlation_id.as_deref(),
        Some(page_id)
    );

    // Logout removes the partitioned cookie: nothing comes with the next calls.
    assert_eq!(status(&results, "logout"), 200);
    let logout = gw.requests("POST", "/auth/logout");
    assert_eq!(logout.len(), 1, "{logout:?}");
    assert!(logout[0].session_cookie, "logout came without the cookie");
    let removal = logout[0]
        .set_session_cookie
        .as_ref()
        .expect("a removal cookie");
    assert!(removal.removal && removal.partitioned, "{removal:?}");
    assert_eq!(
        step(&results, "status_after_logout")["body"]["authenticated"],
        false
    );
    assert_eq!(status(&results, "user_after_logout"), 401);
    let statuses = gw.requests("GET", "/auth/status");
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    assert!(
        statuses[0].session_cookie,
        "status after login without the cookie"
    );
    assert!(
        !statuses[1].session_cookie,
        "the browser still sends a session cookie after logout: the removal cookie did not \
         remove it"
    );
    let users = gw.requests("GET", "/auth/user");
    assert_eq!(users.len(), 2, "{users:?}");
    assert!(!users[1].session_cookie, "session cookie sent after logout");

    // Every call came from the app's origin.
    let origin = site.origin();
    assert!(
        gw.seen()
            .iter()
            .filter(|s| s.method != "GET")
            .all(|s| s.origin.as_deref() == Some(origin.as_str())),
        "{:?}",
        gw.seen()
    );
    assert_no_secret_logged(&[SECRET_KEY]);
}

async fn control(backend: Backend) {
    let mut site = Site::start("127.0.0.1", "").await;
    let (gw, _handle) = gateway(&backend, &site.origin(), false).await;
    let results = run_page(&mut site, &gw.origin, "control").await;

    assert_eq!(
        status(&results, "login"),
        200,
        "{:#}",
        step(&results, "login")
    );
    let login = gw.requests("POST", "/auth/client-login");
    assert_eq!(login.len(), 1, "{login:?}");
    let set = login[0]
        .set_session_cookie
        .as_ref()
        .expect("login sets the cookie");
    assert!(!set.removal && !set.partitioned, "{set:?}");
    let after = step(&results, "status_after_login");
    assert_eq!(after["status"], 200, "{after:#}");
    let statuses = gw.requests("GET", "/auth/status");
    assert_eq!(statuses.len(), 1, "{statuses:?}");
    if after["body"]["authenticated"] == true || statuses[0].session_cookie {
        panic!(
            "the browser now keeps unpartitioned third-party cookies: with \
             COOKIE_PARTITIONED=false the session survived the sign-in (status {after}). The \
             README's account of Chromium (a fresh profile blocks third-party cookies) and \
             this control need updating."
        );
    }
    assert_eq!(status(&results, "user"), 401);
}

async fn foreign(backend: Backend) {
    let allowed = Site::start("127.0.0.1", "").await;
    // The page's form post and no-cors fetch carry a valid token.
    let (gw, handle) = gateway(&backend, &allowed.origin(), true).await;
    let token = handle
        .dev_identity()
        .expect("development mode")
        .mint("eve@example.com", "Eve")
        .unwrap();
    let mut site = Site::start("127.0.0.2", &token).await;
    assert_ne!(site.origin(), allowed.origin());
    let results = run_page(&mut site, &gw.origin, "foreign").await;

    // The page's fetches fail through CORS: no answer reaches its script.
    for name in ["dev_token", "login_fetch", "status"] {
        let s = step(&results, name);
        assert!(
            s["status"].is_null() && s["error"].as_str().is_some_and(|e| !e.is_empty()),
            "a fetch from a foreign origin was answered to the page: {s:#}"
        );
    }
    // The JSON POSTs stopped at their preflight; the GET went out, its answer unreadable.
    assert!(gw.requests("POST", "/dev/token").is_empty());
    assert_eq!(gw.requests("OPTIONS", "/dev/token").len(), 1);
    let logins = gw.requests("POST", "/auth/client-login");
    // The form post and the no-cors fetch reached the gateway and were refused.
    assert_eq!(step(&results, "form_post")["loaded"], true, "{results:#}");
    assert_eq!(
        step(&results, "no_cors_post")["type"],
        "opaque",
        "{results:#}"
    );
    assert_eq!(logins.len(), 2, "{logins:?}");
    for login in &logins {
        assert_eq!(login.origin.as_deref(), Some(site.origin().as_str()));
        assert_eq!(login.status, 403, "{login:?}");
        assert!(login.set_session_cookie.is_none(), "{login:?}");
    }
    if let Some(keys) = backend.session_keys() {
        assert_eq!(keys, 0, "a session record was created in Redis");
    }
    assert_no_secret_logged(&[&token, SECRET_KEY]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_session_flow_in_memory() {
    flow(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_session_flow_on_redis() {
    flow(Backend::redis().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpartitioned_cookie_is_lost_in_memory() {
    control(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpartitioned_cookie_is_lost_on_redis() {
    control(Backend::redis().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_origin_cannot_sign_in_in_memory() {
    foreign(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_origin_cannot_sign_in_on_redis() {
    foreign(Backend::redis().await).await;
}
