//! # `bench_http`: one server per variant for the HTTP benchmark
//!
//! The server side of `scripts/bench-http.sh`: an axum "hello" handler served on
//! `127.0.0.1:<port>`, bare or behind one of the layer stacks the benchmark compares. The
//! script starts one variant at a time and loads it with `wrk`; run by hand:
//!
//! ```text
//! cargo run --release --example bench_http -- memory 8080
//! wrk -t1 -c64 -d5s http://127.0.0.1:8080/
//! ```
//!
//! Variants (every limiter is keyed by the peer IP, so a `wrk` run on loopback is one key):
//!
//! | variant | what wraps the handler |
//! |---|---|
//! | `bare` | nothing: the baseline |
//! | `governor` | `tower_governor`'s layer (peer IP key, `x-ratelimit-*` headers on), a quota nobody exceeds |
//! | `memory` | [`RateLimitLayer`] on the memory backend, GCRA, a quota nobody exceeds, `RateLimit` headers on (the default) |
//! | `memory-window` | the same with a rolling-window quota (the meaning of quota strings such as `"20/minute"`) |
//! | `denied` | [`RateLimitLayer`] on the memory backend with a quota of one request per hour: every request after the first is refused (`429`) |
//! | `redis` | [`RateLimitLayer`] on the Redis backend (`REDIS_URL`), GCRA, a quota nobody exceeds |
//! | `naive-redis` | a plain middleware making one `EVALSHA` of a small GCRA script per request over one multiplexed connection: the baseline of `redis` |
//! | `full` | correlation id, cookie policy, rate limit (memory, per IP and per session as in the README) and sessions (memory store), as in `examples/axum_app.rs` |
//! | `floor-headers` | no limiter: a map of the response adding `memory`'s two `RateLimit` headers as constants (same bytes): what sending those headers costs any limiter, the ceiling of `memory` |
//! | `floor-429` | no limiter: the handler answers `denied`'s refusal, byte for byte (status, the four headers, the JSON body) from constants: the ceiling of `denied` |
//! | `floor-redis` | no limiter: a middleware sending one `GET` of the peer's key per request over `naive-redis`'s multiplexed connection and ignoring the answer: the cheapest round trip any limiter that asks Redis for every request pays, the ceiling of `redis` |
//!
//! Port 0 asks the kernel for a free port; the server prints the address it listens on.
//! No tracing subscriber is installed: every variant pays only the layers' own work.
//! The server runs on a multi-threaded Tokio runtime (`BENCH_WORKERS` threads, default:
//! one per core) and stops on Ctrl-C or `SIGTERM`.

use std::error::Error;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_rampart::cookie_policy::{CookiePolicy, CookiePolicyLayer};
use tower_rampart::correlation::CorrelationIdLayer;
use tower_rampart::net::TrustedProxies;
use tower_rampart::rate_limit::{
    Key, Limit, MemoryBackend, MissingKey, Quota, RATELIMIT, RATELIMIT_POLICY, RateLimitLayer,
    RedisBackend,
};
use tower_rampart::redis::RedisConfig;
use tower_rampart::redis::driver::{self, Script, aio::MultiplexedConnection};
use tower_rampart::session::{MemoryStore, SessionConfig, SessionLayer};

type BoxError = Box<dyn Error + Send + Sync>;

const VARIANTS: &str = "bare, governor, memory, memory-window, denied, redis, naive-redis, full, \
     floor-headers, floor-429, floor-redis";

/// A count no benchmark on one machine reaches: every request is admitted.
const HUGE: u32 = 1_000_000_000;

/// One key, GCRA, nobody refused: a rate of a billion a second with a burst as large.
fn open_gcra() -> Quota {
    Quota::rate(HUGE, Duration::from_secs(1)).burst(HUGE)
}

/// The same with the rolling-window meaning: a billion per second.
fn open_window() -> Quota {
    Quota::per_second(HUGE)
}

async fn hello() -> &'static str {
    "hello, world\n"
}

fn hello_router() -> Router {
    Router::new().route("/", get(hello))
}

/// Our limiter, one quota per peer IP, on `backend`.
fn limiter(quota: Quota, backend: impl Into<tower_rampart::rate_limit::Backend>) -> RateLimitLayer {
    RateLimitLayer::builder()
        .quota("ip", quota, Key::peer_ip())
        .backend(backend)
        .build()
        .expect("a valid quota")
}

fn redis_config() -> Result<RedisConfig, BoxError> {
    let url = std::env::var("REDIS_URL").map_err(|_| "set REDIS_URL (redis://127.0.0.1:PORT)")?;
    Ok(RedisConfig::from_url(&url)?)
}

fn governor() -> Router {
    use tower_governor::GovernorLayer;
    use tower_governor::governor::GovernorConfigBuilder;
    // One cell every nanosecond with a burst of a billion: nobody is refused. Peer IP from
    // axum's `ConnectInfo` (its default key extractor), `x-ratelimit-*` headers on success
    // as our layer sends `RateLimit` ones.
    let config = GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(HUGE)
        .use_headers()
        .finish()
        .expect("a valid governor configuration");
    hello_router().layer(GovernorLayer::new(Arc::new(config)))
}

/// The naive Redis limiter: GCRA in integer microseconds, one `EVALSHA` per request.
/// `ARGV[1]` is the emission interval, `ARGV[2]` the burst, both in microseconds and cells.
const NAIVE_GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - interval * burst
if allow_at > now then
  return {0, allow_at - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, 0}
";

#[derive(Clone)]
struct Naive {
    conn: MultiplexedConnection,
    script: Arc<Script>,
}

async fn naive_limit(
    State(naive): State<Naive>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let key = format!("naive:{{{}}}", peer.ip());
    let mut conn = naive.conn.clone();
    let verdict: Result<(i64, i64), _> = naive
        .script
        .key(key)
        .arg(1)
        .arg(HUGE)
        .invoke_async(&mut conn)
        .await;
    match verdict {
        Ok((1, _)) => next.run(request).await,
        Ok((_, wait_us)) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", (wait_us / 1_000_000 + 1).to_string())],
        )
            .into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// A plain redis-rs multiplexed connection to `REDIS_URL`'s server (the baselines' own).
async fn plain_connection() -> Result<MultiplexedConnection, BoxError> {
    let config = redis_config()?;
    let client = driver::Client::open(format!("redis://{}:{}/", config.host(), config.port()))?;
    Ok(client.get_multiplexed_async_connection().await?)
}

async fn naive_redis() -> Result<Router, BoxError> {
    let naive = Naive {
        conn: plain_connection().await?,
        script: Arc::new(Script::new(NAIVE_GCRA)),
    };
    Ok(hello_router().layer(middleware::from_fn_with_state(naive, naive_limit)))
}

/// One `GET` per request, its answer ignored: the round trip alone.
async fn floor_redis_get(
    State(mut conn): State<MultiplexedConnection>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let got: Result<Option<i64>, _> = driver::cmd("GET")
        .arg(format!("floor:{{{}}}", peer.ip()))
        .query_async(&mut conn)
        .await;
    match got {
        Ok(_) => next.run(request).await,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

async fn floor_redis() -> Result<Router, BoxError> {
    let conn = plain_connection().await?;
    Ok(hello_router().layer(middleware::from_fn_with_state(conn, floor_redis_get)))
}

/// `memory`'s two headers on a wrk run (one key, nobody refused), as constants.
const POLICY_OPEN: &str = "\"ip\";q=1000000000;w=1";
const STATUS_OPEN: &str = "\"ip\";r=999999999;t=1";

/// Bare plus the bytes of `memory`'s `RateLimit` headers, without deciding anything.
fn floor_headers() -> Router {
    use tower::util::MapResponseLayer;
    hello_router().layer(MapResponseLayer::new(|mut resp: Response| {
        let h = resp.headers_mut();
        h.append(&RATELIMIT_POLICY, HeaderValue::from_static(POLICY_OPEN));
        h.append(&RATELIMIT, HeaderValue::from_static(STATUS_OPEN));
        resp
    }))
}

/// `denied`'s refusal, byte for byte, answered by the handler from constants.
async fn refusal() -> Response {
    let mut resp = Response::new(Body::from(
        &b"{\"detail\": \"Rate limit exceeded: 1 per 1 hour\"}"[..],
    ));
    *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    let h = resp.headers_mut();
    h.append(
        &RATELIMIT_POLICY,
        HeaderValue::from_static("\"ip\";q=1;w=3600"),
    );
    h.append(&RATELIMIT, HeaderValue::from_static("\"ip\";r=0;t=3600"));
    h.append(RETRY_AFTER, HeaderValue::from_static("3600"));
    h.append(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The README's recommended stack (without the panic catcher), everything in memory.
fn full() -> Result<Router, BoxError> {
    let sessions = SessionLayer::new(
        MemoryStore::new(),
        SessionConfig::builder().random_key().build()?,
    );
    let limits = RateLimitLayer::builder()
        .quota("ip", open_gcra(), Key::client_ip(TrustedProxies::none()))
        .limit(
            Limit::new(
                "session",
                open_gcra(),
                Key::session(sessions.cookie_reader()),
            )
            .on_missing_key(MissingKey::Skip),
        )
        .build()?;
    Ok(hello_router().layer(
        ServiceBuilder::new()
            .layer(CorrelationIdLayer::new())
            .layer(CookiePolicyLayer::new(CookiePolicy::lax()))
            .layer(limits)
            .layer(sessions),
    ))
}

async fn app(variant: &str) -> Result<Router, BoxError> {
    Ok(match variant {
        "bare" => hello_router(),
        "governor" => governor(),
        "memory" => hello_router().layer(limiter(open_gcra(), MemoryBackend::new())),
        "memory-window" => hello_router().layer(limiter(open_window(), MemoryBackend::new())),
        "denied" => hello_router().layer(limiter(
            Quota::rate(1, Duration::from_secs(3600)),
            MemoryBackend::new(),
        )),
        "redis" => {
            let conn = redis_config()?.connect().await?;
            hello_router().layer(limiter(open_gcra(), RedisBackend::new(conn)))
        }
        "naive-redis" => naive_redis().await?,
        "full" => full()?,
        "floor-headers" => floor_headers(),
        "floor-429" => Router::new().route("/", get(refusal)),
        "floor-redis" => floor_redis().await?,
        other => return Err(format!("unknown variant {other:?} (one of: {VARIANTS})").into()),
    })
}

async fn shutdown() {
    let term = async {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        }
        #[cfg(not(unix))]
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

async fn serve(variant: String, port: u16) -> Result<(), BoxError> {
    let app = app(&variant).await?;
    let listener = TcpListener::bind(SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port)).await?;
    println!(
        "bench_http: {variant} listening on http://{}/",
        listener.local_addr()?
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown())
    .await?;
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let (Some(variant), Some(port)) = (args.next(), args.next()) else {
        return Err(format!("usage: bench_http VARIANT PORT (VARIANT: {VARIANTS})").into());
    };
    let port: u16 = port.parse().map_err(|_| format!("not a port: {port}"))?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = std::env::var("BENCH_WORKERS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        runtime.worker_threads(n);
    }
    runtime.enable_all().build()?.block_on(serve(variant, port))
}
