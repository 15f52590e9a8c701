//! The running service: [`app`] builds the router with the whole layer stack.
//!
//! Outermost first, what a request goes through:
//!
//! 1. **correlation id** (`X-Correlation-ID` validated or minted, echoed, on every log line
//!    of the request, one access line), then the count of `429` answers by route (see
//!    [`metrics`]);
//! 2. **`{"detail"}` bodies** for every error answer that has none (404, 405, 413, 504);
//! 3. **CORS** (`ALLOWED_ORIGINS`, credentials, the rate-limit and correlation headers
//!    exposed) and the **Origin check**: a POST from a foreign origin is refused with 403
//!    before any handler runs;
//! 4. **cookie policy** (`HttpOnly`, `SameSite` from `COOKIE_SAMESITE`, `Secure` in
//!    production and with `SameSite=None`);
//! 5. the **64 KiB body limit** and the **request timeout**;
//! 6. per route: the **rate limits** (`POST /query` and `POST /query/detailed` share one
//!    bucket per client IP and one per session; `POST /auth/client-login` per client IP;
//!    `GET /auth/status`, `GET /auth/user` and `/auth/sessions*` one bucket per client IP;
//!    nothing on `/health` and `POST /auth/logout`), then the **session layer** (Redis when configured, else memory;
//!    encrypted at rest), then the handler.
//!
//! The router needs the TCP peer address for per-IP limits: serve it with
//! `into_make_service_with_connect_info::<SocketAddr>()` (as [`serve`] does); without it
//! every rate-limited request is refused (a request the limiter cannot count is not admitted).
//!
//! Tests build the service with [`app_with_clock`] to put every time-dependent part on one
//! [`ManualClock`](tower_rampart::clock::ManualClock): token expiry, session idle timeout
//! and lifetime, the rate-limit windows.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use fabric_gateway::{app, config::Config};
//!
//! let config = Config::from_lookup(|_| None)?; // local mode, no configuration
//! let app = app::app(config).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! app::serve(app.router(), listener, std::future::pending()).await?;
//! # Ok(()) }
//! ```

mod errors;
mod handlers;
mod origin;
mod state;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware;
use axum::routing::{MethodRouter, delete, get, post};
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_rampart::clock::{Clock, SystemClock};
use tower_rampart::cookie_policy::{
    CookiePolicy, CookiePolicyError, CookiePolicyLayer, SecureMode,
};
use tower_rampart::correlation::{CorrelationIdLayer, X_CORRELATION_ID};
use tower_rampart::rate_limit::{
    self, FailureMode, Key, Limit, MissingKey, Quota, RateLimitConfigError, RateLimitLayer,
    RedisBackend,
};
use tower_rampart::redis::{RedisConnection, RedisHealth};
use tower_rampart::session::{
    MemoryStore, RedisStore, SessionConfig, SessionConfigError, SessionLayer, SessionStore,
};

use crate::auth::TokenValidator;
use crate::auth::dev::DevIdentity;
use crate::config::{Config, CookieSameSite, QueryQuotaKey, RateLimitFailureMode};
use crate::fabric::{DataAgent, DataAgentOptions};
use crate::fake_agent::{FakeAgent, FakeAgentHandle};
use crate::metrics;
use crate::metrics::{MetricsError, MetricsServer};

pub use errors::BODY_LIMIT_BYTES;
pub use handlers::MAX_QUERY_CHARS;
use state::{AppState, Shared};

/// Time a request may take beyond the data agent's deadline before it is cut off (504).
const REQUEST_TIMEOUT_MARGIN: Duration = Duration::from_secs(15);

/// The service could not be built. Each message names the variable to fix when there is one.
#[derive(Debug)]
pub enum StartError {
    /// A configuration value that only the layers can check (e.g. a quota string).
    Config {
        /// The variable.
        variable: &'static str,
        /// What is wrong (never a secret).
        message: String,
    },
    /// The data agent client could not be built.
    DataAgent(String),
    /// The built-in fake data agent could not start.
    FakeAgent(std::io::Error),
    /// The development identity could not be generated.
    DevIdentity(String),
    /// The metrics endpoint (`METRICS_ADDR`) could not start.
    Metrics(MetricsError),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config { variable, message } => write!(f, "{variable}: {message}"),
            Self::DataAgent(m) => write!(f, "DATA_AGENT_URL: {m}"),
            Self::FakeAgent(e) => write!(f, "cannot start the built-in fake data agent: {e}"),
            Self::DevIdentity(m) => write!(f, "{m}"),
            Self::Metrics(e) => write!(f, "METRICS_ADDR: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

fn config_error(variable: &'static str, message: impl fmt::Display) -> StartError {
    StartError::Config {
        variable,
        message: message.to_string(),
    }
}

/// The built service: its router and what tests and `main` need to see of it.
#[derive(Debug)]
pub struct App {
    router: Router,
    handle: AppHandle,
}

impl App {
    /// The router (cheap to clone). Serve it with [`serve`].
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// What runs behind the router.
    pub fn handle(&self) -> &AppHandle {
        &self.handle
    }

    /// The router and the handle.
    pub fn into_parts(self) -> (Router, AppHandle) {
        (self.router, self.handle)
    }
}

/// What runs behind the router: the fake data agent and the dev identity in local mode, the
/// Redis connection. Cheap to clone. The router keeps all of it alive on its own.
#[derive(Clone, Debug)]
pub struct AppHandle {
    state: AppState,
    dev_identity: Option<Arc<DevIdentity>>,
    data_agent_url: String,
    request_timeout: Duration,
}

impl AppHandle {
    /// The in-process fake data agent (local mode without `DATA_AGENT_URL`).
    pub fn fake_agent(&self) -> Option<&FakeAgentHandle> {
        self.state.fake_agent.as_deref()
    }

    /// The development identity behind `/dev/token` (development mode only).
    pub fn dev_identity(&self) -> Option<&DevIdentity> {
        self.dev_identity.as_deref()
    }

    /// The Redis connection, when Redis is configured.
    pub fn redis(&self) -> Option<&RedisConnection> {
        self.state.redis.as_ref()
    }

    /// The data agent URL in use (the fake's in local mode).
    pub fn data_agent_url(&self) -> &str {
        &self.data_agent_url
    }

    /// The whole-request deadline (the data agent's deadline plus a margin).
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The configuration the service runs with.
    pub fn config(&self) -> &Config {
        &self.state.config
    }

    /// Where `GET /metrics` is served (`METRICS_ADDR`, with the bound port when it asked
    /// for port 0); `None` when metrics are off.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.state.metrics.as_ref().map(|m| m.addr())
    }
}

/// Serves `router` on `listener` with client addresses recorded (per-IP limits need them)
/// until `shutdown` completes, then waits for in-flight requests to finish.
pub async fn serve<F>(
    router: Router,
    listener: tokio::net::TcpListener,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Builds the service for `config`: connects nothing eagerly except a first Redis health
/// check (an unreachable Redis is logged and the service starts degraded), starts the fake
/// data agent and generates the dev identity in local mode.
///
/// Time is the system clock's; the rate limiter reads its own monotonic clock, or the Redis
/// server's when Redis is configured.
pub async fn app(config: Config) -> Result<App, StartError> {
    build(config, None).await
}

/// Like [`app`], but every time-dependent part reads `clock`: the token validator (`exp`,
/// `nbf`, key refetch intervals), the dev identity's minted tokens, the sessions (idle
/// timeout, absolute lifetime), the cookie policy, the stored token's expiry check, and the
/// rate limits, which then decide at `clock`'s time instead of their monotonic clock (and,
/// with Redis, instead of the Redis server's `TIME`).
///
/// For tests: with a [`ManualClock`](tower_rampart::clock::ManualClock), expiry and quota
/// windows are checked end to end without waiting. Several instances sharing one Redis must
/// share one clock. Production uses [`app`].
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use fabric_gateway::{app_with_clock, config::Config};
/// use tower_rampart::clock::ManualClock;
///
/// let clock = ManualClock::starting_now();
/// let config = Config::from_lookup(|_| None)?;
/// let app = app_with_clock(config, Arc::new(clock.clone())).await?;
/// // ... sign in through `app.router()`, then:
/// clock.advance(Duration::from_secs(2 * 3600)); // the idle timeout (1 h) has passed
/// # Ok(()) }
/// ```
pub async fn app_with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<App, StartError> {
    build(config, Some(clock)).await
}

/// Builds the service; `test_clock`, when given, replaces every clock (see
/// [`app_with_clock`]).
async fn build(config: Config, test_clock: Option<Arc<dyn Clock>>) -> Result<App, StartError> {
    let production = config.environment.is_production();
    let clock: Arc<dyn Clock> = test_clock.clone().unwrap_or_else(|| Arc::new(SystemClock));

    // Metrics first: the meter provider must be installed before any instrument is created
    // (the gateway's and the library's read the global provider when they are built). With
    // an OTLP endpoint, traces and the OTLP reader too (a no-op when `main` did it already).
    crate::otel::install(&config)
        .map_err(|e| config_error("OTEL_EXPORTER_OTLP_ENDPOINT", e.to_string()))?;
    let metrics = match config.metrics_addr {
        None => None,
        Some(addr) => {
            let server = MetricsServer::start(addr)
                .await
                .map_err(StartError::Metrics)?;
            tracing::info!(address = %server.addr(), "serving Prometheus metrics at /metrics");
            Some(Arc::new(server))
        }
    };

    // Redis: one lazily connected, self-healing connection shared by sessions and limits.
    let redis = match &config.redis {
        None => None,
        Some(redis_config) => {
            let conn = redis_config
                .connect_lazy()
                .map_err(|e| config_error("REDIS_URL", e))?;
            match conn.health_check().await {
                RedisHealth::Connected { .. } => {
                    tracing::info!(redis = %redis_config, "redis reachable")
                }
                RedisHealth::Disconnected { reason } => tracing::warn!(
                    redis = %redis_config,
                    %reason,
                    "redis unreachable at start-up: starting degraded; it is used as soon as it answers"
                ),
            }
            Some(conn)
        }
    };

    // The layers' own checks of the configuration (quota strings...), before anything starts.
    let session_layer = session_layer(&config, redis.as_ref(), &clock)?;
    let cookie_policy = cookie_policy(&config, &clock)?;
    let RateLimits {
        query: query_limit,
        login: login_limit,
        auth: auth_limit,
    } = rate_limits(
        &config,
        redis.as_ref(),
        session_layer.config(),
        test_clock.as_ref(),
    )?;
    let request_timeout = config.data_agent.timeout + REQUEST_TIMEOUT_MARGIN;
    let allowed = allowed_origins(&config)?;

    // The data agent: the configured one, or the in-process fake in local mode.
    let (fake_agent, data_agent_url) = match &config.data_agent.url {
        Some(url) => (None, url.clone()),
        None => {
            let fake = FakeAgent::start().await.map_err(StartError::FakeAgent)?;
            let url = fake.mcp_url();
            tracing::info!(url = %url, "started the built-in fake data agent (MCP)");
            (Some(Arc::new(fake)), url)
        }
    };
    let agent = DataAgent::new(DataAgentOptions::from_settings(
        &config.data_agent,
        data_agent_url.clone(),
    ))
    .map_err(|e| StartError::DataAgent(e.to_string()))?;

    // Token validation; in development the dev identity's key is trusted too.
    let mut validator = TokenValidator::builder(config.auth.clone()).clock(Arc::clone(&clock));
    let dev_identity = if production {
        None
    } else {
        let identity = DevIdentity::generate(&config.auth)
            .map_err(|e| StartError::DevIdentity(e.to_string()))?
            .with_clock(Arc::clone(&clock));
        validator = validator.trust_key_set(identity.jwks());
        Some(Arc::new(identity))
    };
    let validator = validator.build();

    let state = AppState(Arc::new(Shared {
        validator,
        agent,
        redis,
        clock,
        dev_routes: dev_identity.is_some(),
        fake_agent,
        metrics,
        config,
    }));

    // Session routes: rate limit (outer) → session → handler. `route_layer` limits only
    // the route's own method: a 405 for another method costs no quota.
    let with_session = |route: MethodRouter<AppState>| route.layer(session_layer.clone());
    let mut routes = Router::new()
        .route("/", get(handlers::root))
        .route("/health", get(handlers::health))
        .route(
            "/auth/client-login",
            with_session(post(handlers::client_login)).route_layer(login_limit),
        )
        .route(
            "/auth/status",
            with_session(get(handlers::auth_status)).route_layer(auth_limit.clone()),
        )
        .route(
            "/auth/user",
            with_session(get(handlers::auth_user)).route_layer(auth_limit.clone()),
        )
        .route(
            "/auth/sessions",
            with_session(get(handlers::list_sessions)).route_layer(auth_limit.clone()),
        )
        .route(
            "/auth/sessions/{id}",
            with_session(delete(handlers::end_session)).route_layer(auth_limit),
        )
        // Never rate limited: signing out is never refused.
        .route("/auth/logout", with_session(post(handlers::logout)))
        .route(
            "/query",
            with_session(post(handlers::query)).route_layer(query_limit.clone()),
        )
        .route(
            "/query/detailed",
            with_session(post(handlers::query_detailed)).route_layer(query_limit),
        );
    if let Some(identity) = &dev_identity {
        routes = routes.merge(Arc::clone(identity).routes::<AppState>());
    }
    let routes = routes
        .fallback(handlers::not_found)
        .with_state(state.clone());

    // The stack around every route and the fallback, outermost first. (`Router::layer` wraps
    // each route after routing, so 404s and 405s pass through it too.)
    let router = routes.layer(
        ServiceBuilder::new()
            .layer(CorrelationIdLayer::new())
            .layer(middleware::from_fn_with_state(
                metrics::rate_limited_counter(),
                metrics::count_rate_limited,
            ))
            .layer(middleware::map_response(errors::json_error_bodies))
            .layer(cors(&allowed))
            .layer(middleware::from_fn_with_state(allowed, origin::guard))
            .layer(CookiePolicyLayer::new(cookie_policy))
            .layer(RequestBodyLimitLayer::new(BODY_LIMIT_BYTES))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::GATEWAY_TIMEOUT,
                request_timeout,
            )),
    );

    Ok(App {
        router,
        handle: AppHandle {
            state,
            dev_identity,
            data_agent_url,
            request_timeout,
        },
    })
}

/// Sessions: Redis when configured, else memory; encrypted at rest; cookie attributes and
/// lifetimes from the configuration.
fn session_layer(
    config: &Config,
    redis: Option<&RedisConnection>,
    clock: &Arc<dyn Clock>,
) -> Result<SessionLayer, StartError> {
    let session_config = SessionConfig::builder()
        .keys(config.secret_keys.keys())
        .cookie_name(config.session_cookie_name.clone())
        .same_site(config.cookie_samesite)
        .secure(secure_cookies(config))
        .partitioned(config.cookie_partitioned)
        // The cookie of a signed-in session carries the user's tag: the per-user query quota
        // reads it without a store read.
        .user_tag(true)
        .idle_timeout(config.session_idle)
        .absolute_lifetime(config.session_expiry)
        .encrypt_at_rest(true)
        .max_record_bytes(config.session_max_bytes)
        .require_record_binding(config.session_require_record_binding)
        .clock(Arc::clone(clock))
        .unavailable_response(
            "application/json",
            r#"{"detail":"Session store unavailable"}"#,
        )
        .build()
        .map_err(|e| config_error(session_setting_variable(&e), e))?;
    let store: Arc<dyn SessionStore> = match redis {
        Some(conn) => {
            let mut store =
                RedisStore::new(conn.clone()).with_wait_replicas(config.redis_wait_replicas);
            if let Some(timeout) = config.redis_wait_timeout {
                store = store.with_wait_timeout(timeout);
            }
            Arc::new(store)
        }
        None => Arc::new(MemoryStore::new()),
    };
    Ok(SessionLayer::from_arc(store, session_config))
}

/// The variable behind the setting the session layer refused.
fn session_setting_variable(err: &SessionConfigError) -> &'static str {
    use SessionConfigError as E;
    match err {
        E::InvalidCookieName { .. }
        | E::InvalidCookiePath { .. }
        | E::InvalidCookieDomain { .. }
        | E::HostPrefixRequirements
        | E::SecurePrefixWithoutSecure => "SESSION_COOKIE_NAME",
        E::SameSiteNoneWithoutSecure => "COOKIE_SAMESITE",
        E::PartitionedWithoutSecure => "COOKIE_PARTITIONED",
        E::IdleTimeoutTooShort | E::IdleTimeoutExceedsLifetime { .. } => "SESSION_IDLE_MINUTES",
        E::AbsoluteLifetimeTooLong { .. } => "SESSION_EXPIRY_HOURS",
        E::MaxRecordBytesTooSmall { .. } => "SESSION_MAX_BYTES",
        // The keys, and settings the gateway never varies.
        _ => "SECRET_KEY",
    }
}

/// `Secure` cookies: always in production, and whenever `SameSite=None` (browsers refuse
/// `SameSite=None` without it). Local mode over plain `http://` leaves it off.
fn secure_cookies(config: &Config) -> bool {
    config.environment.is_production() || config.cookie_samesite == CookieSameSite::None
}

/// The policy every `Set-Cookie` passes through.
fn cookie_policy(config: &Config, clock: &Arc<dyn Clock>) -> Result<CookiePolicy, StartError> {
    let min_same_site = config.cookie_samesite;
    let secure = if secure_cookies(config) {
        SecureMode::Always
    } else {
        SecureMode::Never
    };
    CookiePolicy::builder()
        .http_only(true)
        .secure(secure)
        .min_same_site(min_same_site)
        .partition_same_site_none(config.cookie_partitioned)
        .trusted_proxies(config.trusted_proxies.clone())
        .clock(Arc::clone(clock))
        .build()
        .map_err(|e| {
            let variable = match e {
                CookiePolicyError::PartitionedWithoutSecure => "COOKIE_PARTITIONED",
                _ => "COOKIE_SAMESITE",
            };
            config_error(variable, e)
        })
}

/// The rate-limit layers of the routes.
struct RateLimits {
    /// `/query` and `/query/detailed`: per IP and per user, one bucket for both routes.
    query: RateLimitLayer,
    /// `/auth/client-login`: per IP.
    login: RateLimitLayer,
    /// `/auth/status`, `/auth/user`, `/auth/sessions*`: per IP, one bucket for all.
    auth: RateLimitLayer,
}

/// The `/query` limit (per IP and per user, one bucket for both routes), the login limit
/// (per IP) and the auth limit (per IP). Global through Redis when configured.
///
/// The per-user quota keys by the user tag of the session cookie
/// ([`Key::user_or_session`]): a user's count follows them across sign-ins. A session whose
/// cookie carries no tag (a user without an id, or a cookie from before the tag and not
/// saved since) counts by session, as the per-session quota of earlier versions did; with
/// only `RATE_LIMIT_QUERY_SESSION` set, that per-session quota stays for everyone.
///
/// Without `test_clock` the limiter keeps its defaults: its monotonic clock, and the Redis
/// server's `TIME` for decisions on Redis (instances with skewed clocks still agree). With
/// it, both the layer and the Redis backend decide at that clock's time.
fn rate_limits(
    config: &Config,
    redis: Option<&RedisConnection>,
    sessions: &SessionConfig,
    test_clock: Option<&Arc<dyn Clock>>,
) -> Result<RateLimits, StartError> {
    let parse = |variable: &'static str, value: &str| {
        Quota::parse(value).map_err(|e| config_error(variable, e))
    };
    let query_ip = parse("RATE_LIMIT_QUERY_IP", &config.rate_limit_query_ip)?;
    let (query_name, query_variable) = match config.rate_limit_query_key {
        QueryQuotaKey::User => ("query-user", "RATE_LIMIT_QUERY_USER"),
        QueryQuotaKey::Session => ("query-session", "RATE_LIMIT_QUERY_SESSION"),
    };
    let query_limit = match config.rate_limit_query_key {
        QueryQuotaKey::User => Limit::new(
            query_name,
            parse(query_variable, &config.rate_limit_query_user)?,
            Key::user_or_session(sessions.cookie_reader()),
        ),
        QueryQuotaKey::Session => Limit::new(
            query_name,
            parse(query_variable, &config.rate_limit_query_session)?,
            Key::session(sessions.cookie_reader()),
        ),
    };
    let login_ip = parse("RATE_LIMIT_LOGIN_IP", &config.rate_limit_login_ip)?;
    let auth_ip = parse("RATE_LIMIT_AUTH_IP", &config.rate_limit_auth_ip)?;
    let failure_mode = match config.rate_limit_failure_mode {
        RateLimitFailureMode::Local => FailureMode::Local,
        RateLimitFailureMode::Open => FailureMode::Open,
        RateLimitFailureMode::Closed => FailureMode::Closed,
    };
    let builder = || {
        let mut b = RateLimitLayer::builder().failure_mode(failure_mode);
        if let Some(clock) = test_clock {
            b = b.clock(Arc::clone(clock));
        }
        match redis {
            Some(conn) => {
                let mut backend = RedisBackend::builder(conn.clone());
                if let Some(clock) = test_clock {
                    backend = backend.client_clock(Arc::clone(clock));
                }
                b.backend(backend.build())
            }
            None => b.backend(rate_limit::MemoryBackend::new()),
        }
    };
    let client_ip = || Key::client_ip(config.trusted_proxies.clone());
    let query = builder()
        .quota("query-ip", query_ip, client_ip())
        // Anonymous requests have no session cookie, so no key: only the per-IP quota
        // applies (and the handler answers 401).
        .limit(query_limit.on_missing_key(MissingKey::Skip))
        .build()
        .map_err(|e| {
            let quotas = [
                ("query-ip", "RATE_LIMIT_QUERY_IP"),
                (query_name, query_variable),
            ];
            config_error(rate_limit_setting_variable(&e, &quotas), e)
        })?;
    let login = builder()
        .quota("login-ip", login_ip, client_ip())
        .build()
        .map_err(|e| {
            let quotas = [("login-ip", "RATE_LIMIT_LOGIN_IP")];
            config_error(rate_limit_setting_variable(&e, &quotas), e)
        })?;
    let auth = builder()
        .quota("auth-ip", auth_ip, client_ip())
        .build()
        .map_err(|e| {
            let quotas = [("auth-ip", "RATE_LIMIT_AUTH_IP")];
            config_error(rate_limit_setting_variable(&e, &quotas), e)
        })?;
    Ok(RateLimits { query, login, auth })
}

/// The variable to name when a rate-limit layer refuses its configuration; `quotas` pairs
/// each of the layer's quota names with its variable, the layer's main quota first.
fn rate_limit_setting_variable(
    err: &RateLimitConfigError,
    quotas: &[(&str, &'static str)],
) -> &'static str {
    err.quota_name()
        .and_then(|name| quotas.iter().find(|(quota, _)| *quota == name))
        .map_or(quotas[0].1, |(_, variable)| variable)
}

/// `ALLOWED_ORIGINS` as header values.
fn allowed_origins(config: &Config) -> Result<origin::AllowedOrigins, StartError> {
    let values = config
        .allowed_origins
        .iter()
        .map(|o| HeaderValue::from_str(o).map_err(|e| config_error("ALLOWED_ORIGINS", e)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(origin::AllowedOrigins::new(values))
}

/// CORS for the browser app: its origins only, with credentials (the session cookie), and
/// the headers it may read.
fn cors(allowed: &origin::AllowedOrigins) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(allowed.values()))
        .allow_credentials(true)
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
        .allow_headers([
            header::CONTENT_TYPE,
            header::ACCEPT,
            header::AUTHORIZATION,
            X_CORRELATION_ID,
        ])
        .expose_headers([
            X_CORRELATION_ID,
            header::RETRY_AFTER,
            HeaderName::from_static("ratelimit"),
            HeaderName::from_static("ratelimit-policy"),
        ])
        .max_age(Duration::from_secs(600))
}
