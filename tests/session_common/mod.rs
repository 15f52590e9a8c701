//! Helpers shared by the session integration tests: a test app (axum router behind the
//! session layer), a cookie jar of one, a store wrapper counting calls, and the backends.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Extension, Path};
use axum::http::StatusCode;
use axum::routing::{get, post};
use http::{Request, header};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::sync::Notify;
use tower::ServiceExt;
use tower_rampart::clock::ManualClock;
use tower_rampart::session::Session;
use tower_rampart::session::{
    SessionConfig, SessionConfigBuilder, SessionKey, SessionLayer, SessionRecord, SessionStore,
    StoreError, StoreFuture, WriteOutcome,
};

pub const KEY_A: &[u8] = b"test key A: 0123456789abcdef0123456789abcdef";
pub const KEY_B: &[u8] = b"test key B: 0123456789abcdef0123456789abcdef";
pub const COOKIE: &str = "sid";

/// Counts the calls a store receives (delegating every call to the real store).
#[derive(Debug, Default)]
pub struct Counts {
    pub load: AtomicU64,
    pub create: AtomicU64,
    pub save: AtomicU64,
    pub delete: AtomicU64,
    pub touch: AtomicU64,
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.load.load(Ordering::SeqCst)
            + self.create.load(Ordering::SeqCst)
            + self.save.load(Ordering::SeqCst)
            + self.delete.load(Ordering::SeqCst)
            + self.touch.load(Ordering::SeqCst)
    }
    pub fn writes(&self) -> u64 {
        self.create.load(Ordering::SeqCst)
            + self.save.load(Ordering::SeqCst)
            + self.delete.load(Ordering::SeqCst)
            + self.touch.load(Ordering::SeqCst)
    }
    pub fn loads(&self) -> u64 {
        self.load.load(Ordering::SeqCst)
    }
    pub fn reset(&self) {
        for c in [
            &self.load,
            &self.create,
            &self.save,
            &self.delete,
            &self.touch,
        ] {
            c.store(0, Ordering::SeqCst);
        }
    }
}

#[derive(Debug, Clone)]
pub struct Counting {
    pub inner: Arc<dyn SessionStore>,
    pub counts: Arc<Counts>,
}

impl SessionStore for Counting {
    fn load<'a>(
        &'a self,
        key: &'a SessionKey,
        now: u64,
        refresh: bool,
    ) -> StoreFuture<'a, Option<SessionRecord>> {
        self.counts.load.fetch_add(1, Ordering::SeqCst);
        self.inner.load(key, now, refresh)
    }
    fn create<'a>(
        &'a self,
        key: &'a SessionKey,
        record: &'a SessionRecord,
        now: u64,
    ) -> StoreFuture<'a, bool> {
        self.counts.create.fetch_add(1, Ordering::SeqCst);
        self.inner.create(key, record, now)
    }
    fn save<'a>(
        &'a self,
        key: &'a SessionKey,
        record: &'a SessionRecord,
        now: u64,
    ) -> StoreFuture<'a, WriteOutcome> {
        self.counts.save.fetch_add(1, Ordering::SeqCst);
        self.inner.save(key, record, now)
    }
    fn delete<'a>(
        &'a self,
        key: &'a SessionKey,
        expected_version: Option<u64>,
        now: u64,
    ) -> StoreFuture<'a, WriteOutcome> {
        self.counts.delete.fetch_add(1, Ordering::SeqCst);
        self.inner.delete(key, expected_version, now)
    }
    fn touch<'a>(&'a self, key: &'a SessionKey, now: u64) -> StoreFuture<'a, bool> {
        self.counts.touch.fetch_add(1, Ordering::SeqCst);
        self.inner.touch(key, now)
    }
    fn delete_user_sessions<'a>(&'a self, user: &'a str, now: u64) -> StoreFuture<'a, u64> {
        self.inner.delete_user_sessions(user, now)
    }
}

/// Wraps a store to fail chosen operations on demand, and to hold a caller right after a
/// successful `create` until the test releases it (to run a concurrent request in between).
#[derive(Debug, Clone)]
pub struct Faulty {
    pub inner: Arc<dyn SessionStore>,
    pub ctl: Arc<FaultControl>,
}

#[derive(Debug, Default)]
pub struct FaultControl {
    pub fail_create: AtomicBool,
    pub fail_delete: AtomicBool,
    /// `(reached, release)`: taken by the next successful `create`, which notifies
    /// `reached` and waits for `release`.
    pub hold_after_create: std::sync::Mutex<Option<(Arc<Notify>, Arc<Notify>)>>,
    /// Keys of the records created, in order.
    pub created: std::sync::Mutex<Vec<SessionKey>>,
}

impl Faulty {
    pub fn new(inner: Arc<dyn SessionStore>) -> Self {
        Self {
            inner,
            ctl: Arc::new(FaultControl::default()),
        }
    }

    /// Arms the hold; returns `(reached, release)`.
    pub fn hold_next_create(&self) -> (Arc<Notify>, Arc<Notify>) {
        let pair = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        *self.ctl.hold_after_create.lock().unwrap() = Some(pair.clone());
        pair
    }

    pub fn last_created(&self) -> SessionKey {
        self.ctl
            .created
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a record was created")
    }
}

fn injected() -> StoreError {
    StoreError::unavailable("injected failure")
}

impl SessionStore for Faulty {
    fn load<'a>(
        &'a self,
        key: &'a SessionKey,
        now: u64,
        refresh: bool,
    ) -> StoreFuture<'a, Option<SessionRecord>> {
        self.inner.load(key, now, refresh)
    }
    fn create<'a>(
        &'a self,
        key: &'a SessionKey,
        record: &'a SessionRecord,
        now: u64,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            if self.ctl.fail_create.load(Ordering::SeqCst) {
                return Err(injected());
            }
            let created = self.inner.create(key, record, now).await?;
            if created {
                self.ctl.created.lock().unwrap().push(key.clone());
                let hold = self.ctl.hold_after_create.lock().unwrap().take();
                if let Some((reached, release)) = hold {
                    reached.notify_one();
                    release.notified().await;
                }
            }
            Ok(created)
        })
    }
    fn save<'a>(
        &'a self,
        key: &'a SessionKey,
        record: &'a SessionRecord,
        now: u64,
    ) -> StoreFuture<'a, WriteOutcome> {
        self.inner.save(key, record, now)
    }
    fn delete<'a>(
        &'a self,
        key: &'a SessionKey,
        expected_version: Option<u64>,
        now: u64,
    ) -> StoreFuture<'a, WriteOutcome> {
        if self.ctl.fail_delete.load(Ordering::SeqCst) {
            return Box::pin(async { Err(injected()) });
        }
        self.inner.delete(key, expected_version, now)
    }
    fn touch<'a>(&'a self, key: &'a SessionKey, now: u64) -> StoreFuture<'a, bool> {
        self.inner.touch(key, now)
    }
    fn delete_user_sessions<'a>(&'a self, user: &'a str, now: u64) -> StoreFuture<'a, u64> {
        self.inner.delete_user_sessions(user, now)
    }
}

/// The response of one test request.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: String,
    /// Every `Set-Cookie` header.
    pub set_cookies: Vec<String>,
}

impl Reply {
    /// `name=value` of the session cookie set by this response, if any (not a removal).
    pub fn cookie(&self) -> Option<String> {
        self.set_cookies.iter().find_map(|c| {
            let pair = c.split(';').next()?.trim();
            let (name, value) = pair.split_once('=')?;
            (name == COOKIE && !value.is_empty()).then(|| pair.to_owned())
        })
    }

    /// Whether this response removes the session cookie.
    pub fn removes_cookie(&self) -> bool {
        self.set_cookies
            .iter()
            .any(|c| c.starts_with(&format!("{COOKIE}=;")) && c.contains("Max-Age=0"))
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// The standard test routes:
/// - `GET /get/{k}` → the value or null
/// - `POST /set/{k}/{v}`, `POST /remove/{k}`, `POST /clear`
/// - `GET /count/{n}` → how many of `k0..k{n-1}` exist
/// - `POST /login/{user}` → cycle id, set user, insert `user`
/// - `POST /logout`
/// - `GET /user` → user id
/// - `POST /fail/{k}/{v}` → inserts then answers 500
/// - `GET /nothing` → does not touch the session
/// - `POST /cycle` → cycle id only
/// - `POST /expiry/{idle_secs}` → per-session idle override
pub fn routes() -> Router {
    Router::new()
        .route(
            "/get/{k}",
            get(
                |Extension(s): Extension<Session>, Path(k): Path<String>| async move {
                    let v: Option<Value> = s.get(&k).await?;
                    Ok::<_, Error>(v.unwrap_or(Value::Null).to_string())
                },
            ),
        )
        .route(
            "/set/{k}/{v}",
            post(
                |Extension(s): Extension<Session>, Path((k, v)): Path<(String, String)>| async move {
                    s.insert(k, v).await?;
                    Ok::<_, Error>("ok")
                },
            ),
        )
        .route(
            "/remove/{k}",
            post(
                |Extension(s): Extension<Session>, Path(k): Path<String>| async move {
                    Ok::<_, Error>(s.remove(&k).await?.to_string())
                },
            ),
        )
        .route(
            "/clear",
            post(|Extension(s): Extension<Session>| async move {
                s.clear().await?;
                Ok::<_, Error>("ok")
            }),
        )
        .route(
            "/count/{n}",
            get(
                |Extension(s): Extension<Session>, Path(n): Path<usize>| async move {
                    let mut found = 0;
                    for i in 0..n {
                        if s.get::<Value>(&format!("k{i}")).await?.is_some() {
                            found += 1;
                        }
                    }
                    Ok::<_, Error>(found.to_string())
                },
            ),
        )
        .route(
            "/login/{user}",
            post(
                |Extension(s): Extension<Session>, Path(user): Path<String>| async move {
                    s.cycle_id().await?;
                    s.set_user_id(user.clone()).await?;
                    s.insert("user", user).await?;
                    Ok::<_, Error>("ok")
                },
            ),
        )
        .route(
            "/logout",
            post(|Extension(s): Extension<Session>| async move {
                s.delete().await?;
                Ok::<_, Error>("ok")
            }),
        )
        .route(
            "/user",
            get(|Extension(s): Extension<Session>| async move {
                Ok::<_, Error>(s.user_id().await?.unwrap_or_default())
            }),
        )
        .route(
            "/fail/{k}/{v}",
            post(
                |Extension(s): Extension<Session>, Path((k, v)): Path<(String, String)>| async move {
                    s.insert(k, v).await?;
                    Ok::<_, Error>((StatusCode::INTERNAL_SERVER_ERROR, "boom"))
                },
            ),
        )
        .route("/nothing", get(|| async { "nothing" }))
        .route(
            "/cycle",
            post(|Extension(s): Extension<Session>| async move {
                s.cycle_id().await?;
                Ok::<_, Error>("ok")
            }),
        )
        .route(
            "/expiry/{secs}",
            post(
                |Extension(s): Extension<Session>, Path(secs): Path<u64>| async move {
                    s.set_expiry(
                        tower_rampart::session::Expiry::new()
                            .idle_timeout(Duration::from_secs(secs)),
                    )
                    .await?;
                    Ok::<_, Error>("ok")
                },
            ),
        )
}

/// A handler error: a session error, answered 503 (store) or 500 (data).
pub struct Error(pub tower_rampart::session::SessionError);

impl From<tower_rampart::session::SessionError> for Error {
    fn from(e: tower_rampart::session::SessionError) -> Self {
        Error(e)
    }
}

impl axum::response::IntoResponse for Error {
    fn into_response(self) -> axum::response::Response {
        let status = if self.0.is_unavailable() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        (status, self.0.to_string()).into_response()
    }
}

/// A router behind a session layer, with a manual clock and a call-counting store.
#[derive(Clone)]
pub struct App {
    pub router: Router,
    pub clock: ManualClock,
    pub counts: Arc<Counts>,
    pub store: Arc<dyn SessionStore>,
    pub config: SessionConfig,
}

pub fn builder() -> SessionConfigBuilder {
    SessionConfig::builder()
        .key(KEY_A)
        .cookie_name(COOKIE)
        .idle_timeout(Duration::from_secs(600))
        .absolute_lifetime(Duration::from_secs(3600))
}

impl App {
    pub fn new(store: Arc<dyn SessionStore>) -> Self {
        Self::with(store, builder(), routes())
    }

    pub fn with(
        store: Arc<dyn SessionStore>,
        config: SessionConfigBuilder,
        router: Router,
    ) -> Self {
        let clock = ManualClock::starting_now();
        Self::with_clock(store, config, router, clock)
    }

    pub fn with_clock(
        store: Arc<dyn SessionStore>,
        config: SessionConfigBuilder,
        router: Router,
        clock: ManualClock,
    ) -> Self {
        let config = config.clock(clock.clone()).build().expect("valid config");
        let counts = Arc::new(Counts::default());
        let counting = Counting {
            inner: store.clone(),
            counts: counts.clone(),
        };
        let router = router.layer(SessionLayer::new(counting, config.clone()));
        Self {
            router,
            clock,
            counts,
            store,
            config,
        }
    }

    pub async fn call(&self, method: &str, path: &str, cookie: Option<&str>) -> Reply {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, c);
        }
        let res = self
            .router
            .clone()
            .oneshot(req.body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let set_cookies = res
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
            set_cookies,
        }
    }

    pub async fn get(&self, path: &str, cookie: Option<&str>) -> Reply {
        self.call("GET", path, cookie).await
    }

    pub async fn post(&self, path: &str, cookie: Option<&str>) -> Reply {
        self.call("POST", path, cookie).await
    }

    /// Creates a session holding `k0 = v0` and returns its cookie (`name=value`).
    pub async fn new_session(&self) -> String {
        let r = self.post("/set/k0/v0", None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.cookie().expect("a new session sets a cookie")
    }

    /// The store key of the session named by `cookie`.
    pub fn key_of(&self, cookie: &str) -> SessionKey {
        let mut headers = http::HeaderMap::new();
        headers.insert(header::COOKIE, cookie.parse().unwrap());
        self.config
            .cookie_reader()
            .session_key(&headers)
            .expect("a valid cookie")
    }

    pub fn now(&self) -> u64 {
        use tower_rampart::clock::Clock;
        self.clock.now_micros()
    }
}

/// A store to run the suites against, with whatever keeps it alive.
pub struct Backend {
    pub store: Arc<dyn SessionStore>,
    pub keep: Box<dyn std::any::Any + Send>,
}

pub fn memory() -> Backend {
    Backend {
        store: Arc::new(tower_rampart::session::MemoryStore::new()),
        keep: Box::new(()),
    }
}
