//! Helpers shared by the session integration tests: a test app (axum router behind the
//! session layer), a cookie jar of one, an instrumented store (counts calls, injects faults),
//! log capture, cookie decoding, and the backends.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Extension, Path};
use axum::http::StatusCode;
use axum::routing::{get, post};
use base64::Engine as _;
use http::{Request, Response, header};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use tower_rampart::clock::ManualClock;
use tower_rampart::session::Session;
use tower_rampart::session::{
    SessionConfig, SessionConfigBuilder, SessionKey, SessionLayer, SessionRecord, SessionStore,
};

pub const KEY_A: &[u8] = b"test key A: 0123456789abcdef0123456789abcdef";
pub const KEY_B: &[u8] = b"test key B: 0123456789abcdef0123456789abcdef";
pub const COOKIE: &str = "sid";

/// The instrumented store of the library's `testing` feature: counts calls, injects faults.
pub use tower_rampart::session::store::testing::{
    InstrumentedStore as Instrumented, StoreCalls as Counts, StoreFaults as FaultControl,
};

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

/// A router behind a session layer, with a manual clock and an [`Instrumented`] store.
#[derive(Clone)]
pub struct App {
    pub router: Router,
    pub clock: ManualClock,
    pub counts: Arc<Counts>,
    pub faults: Arc<FaultControl>,
    /// The real store, without the instrumentation.
    pub store: Arc<dyn SessionStore>,
    pub config: SessionConfig,
}

/// The test config: key `KEY_A`, cookie `sid`, idle 600 s, absolute 3600 s.
pub fn builder() -> SessionConfigBuilder {
    builder_with_keys(&[KEY_A])
}

/// [`builder`] with other keys (the first signs).
pub fn builder_with_keys(keys: &[&[u8]]) -> SessionConfigBuilder {
    SessionConfig::builder()
        .keys(keys.iter().copied())
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
        let instrumented = Instrumented::new(store.clone());
        let (counts, faults) = (instrumented.calls().clone(), instrumented.faults().clone());
        let router = router.layer(SessionLayer::new(instrumented, config.clone()));
        Self {
            router,
            clock,
            counts,
            faults,
            store,
            config,
        }
    }

    pub async fn call(&self, method: &str, path: &str, cookie: Option<&str>) -> Reply {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, c);
        }
        let res = send(&self.router, req).await;
        let status = res.status();
        let set_cookies = res
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        Reply {
            status,
            body: body_text(res).await,
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

    /// The live record under `key` in the store (bypassing the layer), at the app's time.
    pub async fn stored(&self, key: &SessionKey) -> Option<SessionRecord> {
        self.store.load(key, self.now(), false).await.unwrap()
    }
}

/// Sends a request without a body through `router`.
pub async fn send(router: &Router, req: http::request::Builder) -> Response<axum::body::Body> {
    router
        .clone()
        .oneshot(req.body(axum::body::Body::empty()).unwrap())
        .await
        .unwrap()
}

/// The whole body of `res`, as text.
pub async fn body_text(res: Response<axum::body::Body>) -> String {
    let body = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// Base64url without padding, the encoding of the session cookie's value.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The decoded value of a session cookie `name=value`: the 16-byte id, then the signature.
pub fn cookie_bytes(cookie: &str) -> Vec<u8> {
    let value = cookie.split_once('=').expect("name=value").1;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value)
        .expect("a base64url cookie value")
}

/// The session id of a cookie `name=value` in the forms a leak could take: raw bytes, hex,
/// base64url.
pub fn id_forms(cookie: &str) -> (Vec<u8>, String, String) {
    let id = cookie_bytes(cookie)[..16].to_vec();
    let hex = id.iter().map(|b| format!("{b:02x}")).collect();
    let b64 = b64(&id);
    (id, hex, b64)
}

/// Captures everything logged (every level) while the guard is held, on this thread.
#[derive(Clone, Default)]
pub struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

pub fn capture_logs() -> (Capture, tracing::subscriber::DefaultGuard) {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    (capture, tracing::subscriber::set_default(subscriber))
}
