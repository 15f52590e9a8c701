//! # tower-rampart on plain hyper 1 (no axum)
//!
//! All four layers around a tower `service_fn`, served by hyper-util's auto builder, which
//! speaks HTTP/1.1 and HTTP/2 (prior knowledge, `h2c`) on the same port.
//!
//! hyper does not tell the service who is connected: the accept loop knows the peer address,
//! so it inserts it into each request's extensions (a plain `SocketAddr`, which
//! `tower_rampart::net::peer_addr` reads; `tower_rampart::net::PeerAddr` works too). Without
//! it the per-IP quota has no key and refuses every request.
//!
//! The layers are generic over body types: requests carry hyper's `Incoming`, the handler
//! answers `Full<Bytes>`, and no layer needs a `HandleErrorLayer` (their error is the
//! handler's, here `Infallible`).
//!
//! ```text
//! cargo run --example hyper_plain
//!
//! curl -i http://127.0.0.1:3001/
//! curl -i --http2-prior-knowledge http://127.0.0.1:3001/visits
//! curl -i http://127.0.0.1:3001/prefs
//! ```
//!
//! Environment: `BIND` (default `127.0.0.1:3001`), `SESSION_KEY` (at least 32 bytes; random
//! otherwise), `TRUSTED_PROXIES`, `RUST_LOG`. Sessions live in memory; see the axum example
//! for Redis.

use std::convert::Infallible;
use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, SET_COOKIE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_rampart::cookie_policy::{CookiePolicy, CookiePolicyLayer};
use tower_rampart::correlation::{CorrelationId, CorrelationIdLayer};
use tower_rampart::net::TrustedProxies;
use tower_rampart::rate_limit::{Key, Limit, MissingKey, Quota, RateLimitLayer};
use tower_rampart::session::{MemoryStore, Session, SessionConfig, SessionLayer};

type BoxError = Box<dyn Error + Send + Sync>;

/// What the service is built from. Tests build their own (small quotas).
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
}

impl Settings {
    /// Default quotas, no trusted proxy.
    pub fn new(session: SessionConfig) -> Self {
        Self {
            per_ip: Quota::per_minute(20),
            per_session: Quota::per_minute(10),
            trusted_proxies: TrustedProxies::none(),
            session,
        }
    }
}

/// Accepts connections on `listener` forever, serving each with the layered service over
/// HTTP/1.1 or HTTP/2.
pub async fn serve(listener: TcpListener, settings: Settings) -> Result<(), BoxError> {
    let sessions = SessionLayer::new(MemoryStore::new(), settings.session.clone());
    let limits = RateLimitLayer::builder()
        .quota(
            "ip",
            settings.per_ip,
            Key::client_ip(settings.trusted_proxies.clone()),
        )
        .limit(
            Limit::new(
                "session",
                settings.per_session,
                Key::session(sessions.cookie_reader()),
            )
            .on_missing_key(MissingKey::Skip),
        )
        .build()?;
    let cookies = CookiePolicy::lax()
        .into_builder()
        .trusted_proxies(settings.trusted_proxies.clone())
        .max_age_cap(Duration::from_secs(30 * 24 * 60 * 60))
        .build()?;

    // The first layer is the outermost.
    let app = ServiceBuilder::new()
        .layer(CorrelationIdLayer::new())
        .layer(CookiePolicyLayer::new(cookies))
        .layer(limits)
        .layer(sessions)
        .service_fn(handle);

    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // E.g. out of file descriptors: keep serving the open connections.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // The one line plain hyper needs: tell the layers who the TCP peer is.
        let service = ServiceBuilder::new()
            .map_request(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert::<SocketAddr>(peer);
                req
            })
            .service(app.clone());
        tokio::spawn(async move {
            let served = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
                .await;
            if let Err(error) = served {
                tracing::debug!(%error, "connection closed with an error");
            }
        });
    }
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let id = req.extensions().get::<CorrelationId>().cloned();
    let session = req.extensions().get::<Session>().cloned();
    let response = match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => json_response(json!({
            "message": "hello",
            "correlation_id": id.as_ref().map(CorrelationId::as_str),
            "http_version": format!("{:?}", req.version()),
        })),
        (&Method::GET, "/visits") => match session {
            Some(session) => match visit(&session).await {
                Ok(visits) => json_response(json!({ "visits": visits })),
                // The session layer turns this into its "store unavailable" 503.
                Err(_) => status(StatusCode::INTERNAL_SERVER_ERROR),
            },
            None => status(StatusCode::INTERNAL_SERVER_ERROR),
        },
        (&Method::GET, "/prefs") => {
            let mut response = json_response(json!({ "theme": "dark" }));
            // Written carelessly on purpose: the cookie policy fixes it.
            response.headers_mut().insert(
                SET_COOKIE,
                http::HeaderValue::from_static("theme=dark; Path=/; Max-Age=31536000"),
            );
            response
        }
        _ => status(StatusCode::NOT_FOUND),
    };
    Ok(response)
}

async fn visit(session: &Session) -> Result<u64, tower_rampart::session::SessionError> {
    let visits: u64 = session.get("visits").await?.unwrap_or(0) + 1;
    session.insert("visits", visits).await?;
    Ok(visits)
}

fn json_response(value: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    response.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = code;
    response
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let session = match std::env::var("SESSION_KEY") {
        Ok(key) => SessionConfig::builder().key(key).build()?,
        Err(_) => {
            tracing::warn!("SESSION_KEY is not set: using a random key for this process");
            SessionConfig::builder().random_key().build()?
        }
    };
    let mut settings = Settings::new(session);
    if let Ok(list) = std::env::var("TRUSTED_PROXIES") {
        settings.trusted_proxies = TrustedProxies::parse(&list)?;
    }
    let listener =
        TcpListener::bind(std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:3001".into()))
            .await?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    tokio::select! {
        served = serve(listener, settings) => served?,
        _ = tokio::signal::ctrl_c() => tracing::info!("shutting down"),
    }
    Ok(())
}
