//! # tower-rampart in an axum app
//!
//! All four layers around a small axum router, outermost first:
//!
//! 1. [`CorrelationIdLayer`]: every request gets an id (kept from `X-Correlation-ID` when
//!    well formed), echoed on every response, 429s included, and on every log line;
//! 2. [`CookiePolicyLayer`]: every `Set-Cookie` (the handlers' and the session cookie) gets
//!    `HttpOnly`, `Secure`, `SameSite=Lax` and a 30-day lifetime cap;
//! 3. [`RateLimitLayer`]: a quota per client IP (through `TRUSTED_PROXIES`) and a quota per
//!    session (requests without a session cookie only count against their IP);
//! 4. [`SessionLayer`]: sessions on the in-memory store, or on Redis when `REDIS_URL` (or
//!    `REDIS_HOST`, ...) is set and the `redis` feature is on.
//!
//! The client address comes from axum's `ConnectInfo<SocketAddr>`, which the crate reads with
//! its `axum` feature: serve with `into_make_service_with_connect_info::<SocketAddr>()`.
//!
//! ```text
//! cargo run --example axum_app
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example axum_app
//!
//! curl -i http://127.0.0.1:3000/                 # correlation id, RateLimit headers
//! curl -i http://127.0.0.1:3000/visits           # a session cookie (Secure: use a browser,
//! curl -i -H 'cookie: session=...' http://127.0.0.1:3000/visits   # or send it back by hand)
//! curl -i http://127.0.0.1:3000/prefs            # a cookie rewritten by the cookie policy
//! ```
//!
//! Environment: `BIND` (default `127.0.0.1:3000`), `SESSION_KEY` (at least 32 bytes; without it
//! a random key is used, so sessions do not survive a restart and are not shared between
//! instances), `TRUSTED_PROXIES` (e.g. `10.0.0.0/8`: whose `X-Forwarded-For` is believed),
//! `REDIS_URL`, `RUST_LOG`.

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::http::header::SET_COOKIE;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_rampart::cookie_policy::{CookiePolicy, CookiePolicyLayer};
use tower_rampart::correlation::{CorrelationId, CorrelationIdLayer};
use tower_rampart::net::TrustedProxies;
use tower_rampart::rate_limit::{
    Backend, Key, Limit, MemoryBackend, MissingKey, Quota, RateLimitDecision, RateLimitLayer,
};
use tower_rampart::session::{
    MemoryStore, Session, SessionConfig, SessionError, SessionLayer, SessionStore,
};

type BoxError = Box<dyn Error + Send + Sync>;

/// Everything the app is built from. Tests build their own (small quotas, a Redis prefix).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Quota of each client IP.
    pub per_ip: Quota,
    /// Quota of each session (requests without a session cookie skip it).
    pub per_session: Quota,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: TrustedProxies,
    /// Session keys and cookie attributes.
    pub session: SessionConfig,
    /// Where sessions live.
    pub store: Arc<dyn SessionStore>,
    /// Where rate limit state lives.
    pub limiter: Backend,
}

impl Settings {
    /// Sessions and rate limits in this process's memory (one instance).
    pub fn in_memory(session: SessionConfig) -> Self {
        Self {
            per_ip: Quota::per_minute(20),
            per_session: Quota::per_minute(10),
            trusted_proxies: TrustedProxies::none(),
            session,
            store: Arc::new(MemoryStore::new()),
            limiter: MemoryBackend::new().into(),
        }
    }

    /// Sessions and rate limits in Redis, shared by every instance.
    #[cfg(feature = "redis")]
    pub fn on_redis(session: SessionConfig, conn: tower_rampart::redis::RedisConnection) -> Self {
        use tower_rampart::rate_limit::RedisBackend;
        use tower_rampart::session::RedisStore;
        Self {
            store: Arc::new(RedisStore::new(conn.clone())),
            limiter: RedisBackend::new(conn).into(),
            ..Self::in_memory(session)
        }
    }

    /// From the environment (see the module docs).
    pub async fn from_env() -> Result<Self, BoxError> {
        let session = match std::env::var("SESSION_KEY") {
            Ok(key) => SessionConfig::builder().key(key).build()?,
            Err(_) => {
                tracing::warn!("SESSION_KEY is not set: using a random key for this process");
                SessionConfig::builder().random_key().build()?
            }
        };
        #[cfg(feature = "redis")]
        let mut settings = match tower_rampart::redis::RedisConfig::from_env()? {
            Some(redis) => {
                tracing::info!(%redis, "sessions and rate limits in Redis");
                // Fail at start-up rather than on the first request if Redis is unreachable.
                Self::on_redis(session, redis.connect().await?)
            }
            None => Self::in_memory(session),
        };
        #[cfg(not(feature = "redis"))]
        let mut settings = {
            if std::env::var_os("REDIS_URL").is_some() {
                tracing::warn!("REDIS_URL is ignored: build with `--features redis` to use it");
            }
            Self::in_memory(session)
        };
        if let Ok(list) = std::env::var("TRUSTED_PROXIES") {
            settings.trusted_proxies = TrustedProxies::parse(&list)?;
        }
        Ok(settings)
    }
}

/// The router with the four layers.
pub fn app(settings: &Settings) -> Result<Router, BoxError> {
    let sessions = SessionLayer::from_arc(settings.store.clone(), settings.session.clone());
    let limits = RateLimitLayer::builder()
        .quota(
            "ip",
            settings.per_ip,
            Key::client_ip(settings.trusted_proxies.clone()),
        )
        // Verifies the signed session cookie with the session layer's own reader: no store
        // round trip, and the limiter only ever sees the session's hashed key.
        .limit(
            Limit::new(
                "session",
                settings.per_session,
                Key::session(sessions.cookie_reader()),
            )
            .on_missing_key(MissingKey::Skip),
        )
        .backend(settings.limiter.clone())
        .build()?;
    let cookies = CookiePolicy::lax()
        .into_builder()
        .trusted_proxies(settings.trusted_proxies.clone())
        .max_age_cap(Duration::from_secs(30 * 24 * 60 * 60))
        .build()?;

    Ok(Router::new()
        .route("/", get(hello))
        .route("/visits", get(visits))
        .route("/prefs", get(prefs))
        .route("/logout", post(logout))
        // With `ServiceBuilder` the first layer is the outermost (`Router::layer` calls alone
        // would apply in the opposite order).
        .layer(
            ServiceBuilder::new()
                .layer(CorrelationIdLayer::new())
                .layer(CookiePolicyLayer::new(cookies))
                .layer(limits)
                .layer(sessions),
        ))
}

/// Serves `app` on `listener`, recording each connection's peer address for the layers.
pub async fn serve(listener: TcpListener, app: Router) -> std::io::Result<()> {
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

async fn hello(
    Extension(id): Extension<CorrelationId>,
    decision: Option<Extension<RateLimitDecision>>,
) -> Json<Value> {
    let remaining = decision.and_then(|Extension(d)| d.remaining());
    tracing::info!("hello");
    Json(json!({ "message": "hello", "correlation_id": id.as_str(), "remaining": remaining }))
}

async fn visits(session: Session) -> Result<Json<Value>, SessionError> {
    let visits: u64 = session.get("visits").await?.unwrap_or(0) + 1;
    session.insert("visits", visits).await?;
    Ok(Json(json!({ "visits": visits })))
}

/// A cookie written carelessly: the cookie policy adds the missing attributes and caps its
/// lifetime.
async fn prefs() -> impl IntoResponse {
    (
        [(SET_COOKIE, "theme=dark; Path=/; Max-Age=31536000")],
        Json(json!({ "theme": "dark" })),
    )
}

async fn logout(session: Session) -> Result<StatusCode, SessionError> {
    session.delete().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let settings = Settings::from_env().await?;
    let listener =
        TcpListener::bind(std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:3000".into()))
            .await?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    tokio::select! {
        served = serve(listener, app(&settings)?) => served?,
        _ = tokio::signal::ctrl_c() => tracing::info!("shutting down"),
    }
    Ok(())
}
