//! The framework examples, served on loopback ports and driven by real clients:
//!
//! - `examples/axum_app.rs` with reqwest over HTTP/1.1 and HTTP/2 (prior knowledge), on the
//!   in-memory store and, with feature `redis`, as two instances sharing a real redis-server;
//! - `examples/hyper_plain.rs` with hyper's own client over HTTP/1.1 and HTTP/2;
//! - `examples/tonic_greeter.rs` with the tonic client generated from its `.proto`.
//!
//! Plus compile-time checks that every layer is `Clone + Send + Sync`, generic over request
//! and response body types, with `Send` futures and the inner service's error type.
#![cfg(all(
    feature = "correlation-id",
    feature = "cookie-policy",
    feature = "session",
    feature = "rate-limit"
))]

#[cfg(feature = "axum")]
#[allow(dead_code)]
#[path = "../examples/axum_app.rs"]
mod axum_app;

#[allow(dead_code)]
#[path = "../examples/hyper_plain.rs"]
mod hyper_plain;

#[allow(dead_code)]
#[path = "../examples/tonic_greeter.rs"]
mod tonic_greeter;

mod common;
#[cfg(feature = "redis")]
use rampart_test_support as support;

use std::net::SocketAddr;

use http::HeaderMap;
use http::header::SET_COOKIE;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower_rampart::session::SessionConfig;

use common::is_uuid_v7;

/// A server task, stopped when the test ends (even when it fails).
struct Running(JoinHandle<()>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn run<F, T>(server: F) -> Running
where
    F: Future<Output = T> + Send + 'static,
    T: std::fmt::Debug + Send + 'static,
{
    Running(tokio::spawn(async move {
        let outcome = server.await;
        panic!("the server stopped: {outcome:?}");
    }))
}

async fn loopback() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

fn session_config() -> SessionConfig {
    SessionConfig::builder()
        .key(b"frameworks test key, 32 bytes or more")
        .build()
        .unwrap()
}

/// The `Set-Cookie` headers of a response.
fn set_cookies(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// The one `Set-Cookie` for `name`.
fn set_cookie(headers: &HeaderMap, name: &str) -> String {
    let found: Vec<_> = set_cookies(headers)
        .into_iter()
        .filter(|c| c.starts_with(&format!("{name}=")))
        .collect();
    assert_eq!(found.len(), 1, "one Set-Cookie for {name}: {found:?}");
    found.into_iter().next().unwrap()
}

/// `name=value` of a `Set-Cookie`, to send back in a `Cookie` header.
fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header in {headers:?}"))
        .to_str()
        .unwrap()
}

/// `Retry-After` as whole seconds; the quotas of these tests are per minute.
fn retry_after(headers: &HeaderMap) -> u64 {
    let secs: u64 = header(headers, "retry-after").parse().unwrap();
    assert!((1..=60).contains(&secs), "Retry-After {secs}");
    secs
}

#[cfg(feature = "axum")]
mod axum_tests {
    use super::*;
    use crate::axum_app::{Settings, app, serve};
    use http::{StatusCode, Version};
    use tower_rampart::net::TrustedProxies;
    use tower_rampart::rate_limit::Quota;

    fn http1() -> reqwest::Client {
        reqwest::Client::builder().no_proxy().build().unwrap()
    }

    fn http2() -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .http2_prior_knowledge()
            .build()
            .unwrap()
    }

    async fn start(settings: Settings) -> (Running, String) {
        let (listener, addr) = loopback().await;
        let router = app(&settings).unwrap();
        (run(serve(listener, router)), format!("http://{addr}"))
    }

    async fn json(resp: reqwest::Response) -> Value {
        serde_json::from_str(&resp.text().await.unwrap()).unwrap()
    }

    #[tokio::test]
    async fn correlation_id_and_per_ip_limit_over_http1_and_http2() {
        let mut settings = Settings::in_memory(session_config());
        settings.per_ip = Quota::per_minute(3);
        let (_server, base) = start(settings).await;

        let resp = http1()
            .get(format!("{base}/"))
            .header("x-correlation-id", "axum-test.1")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), Version::HTTP_11);
        assert_eq!(header(resp.headers(), "x-correlation-id"), "axum-test.1");
        assert_eq!(
            header(resp.headers(), "ratelimit-policy"),
            r#""ip";q=3;w=60, "session";q=10;w=60"#
        );
        assert!(header(resp.headers(), "ratelimit").starts_with(r#""ip";r=2;"#));
        let body = json(resp).await;
        // The handler sees the id the client sent.
        assert_eq!(body["correlation_id"], "axum-test.1");
        assert_eq!(body["remaining"], 2);

        // The same client address over HTTP/2, on another connection: the same quota.
        let h2 = http2();
        for _ in 0..2 {
            let resp = h2.get(format!("{base}/")).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(resp.version(), Version::HTTP_2);
        }
        // Writing X-Forwarded-For does not make a new client: no proxy is trusted.
        let resp = h2
            .get(format!("{base}/"))
            .header("x-forwarded-for", "198.51.100.7")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.version(), Version::HTTP_2);
        retry_after(resp.headers());
        assert_eq!(
            header(resp.headers(), "ratelimit-policy"),
            r#""ip";q=3;w=60, "session";q=10;w=60"#
        );
        assert!(header(resp.headers(), "ratelimit").starts_with(r#""ip";r=0;"#));
        // The refusal carries a (fresh) correlation id too: the layer is outermost.
        assert!(is_uuid_v7(header(resp.headers(), "x-correlation-id")));
        assert_eq!(header(resp.headers(), "content-type"), "application/json");
        assert_eq!(
            json(resp).await,
            serde_json::json!({ "detail": "Rate limit exceeded: 3 per 1 minute" })
        );
    }

    #[tokio::test]
    async fn trusted_proxy_reveals_the_clients_behind_it() {
        let mut settings = Settings::in_memory(session_config());
        settings.per_ip = Quota::per_minute(2);
        // The test client plays the load balancer.
        settings.trusted_proxies = TrustedProxies::parse("127.0.0.1").unwrap();
        let (_server, base) = start(settings).await;
        let client = http1();
        let get = |client_ip: &'static str| {
            client
                .get(format!("{base}/"))
                .header("x-forwarded-for", client_ip)
                .send()
        };

        for _ in 0..2 {
            assert_eq!(get("203.0.113.5").await.unwrap().status(), StatusCode::OK);
        }
        assert_eq!(
            get("203.0.113.5").await.unwrap().status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(get("203.0.113.6").await.unwrap().status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn session_persists_with_policy_attributes_and_logout() {
        let (_server, base) = start(Settings::in_memory(session_config())).await;
        let client = http1();

        let resp = client.get(format!("{base}/visits")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let cookie = set_cookie(resp.headers(), "session");
        for attribute in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/", "Max-Age="] {
            assert!(cookie.contains(attribute), "{attribute} in {cookie}");
        }
        assert_eq!(header(resp.headers(), "cache-control"), "no-store");
        assert_eq!(json(resp).await["visits"], 1);
        let sent = cookie_pair(&cookie);

        // Over HTTP/2, on another connection: the same session.
        for expected in [2, 3] {
            let resp = http2()
                .get(format!("{base}/visits"))
                .header("cookie", &sent)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            // An existing session whose cookie needs no refresh gets no new cookie.
            assert!(set_cookies(resp.headers()).is_empty());
            assert_eq!(json(resp).await["visits"], expected);
        }

        let resp = client
            .post(format!("{base}/logout"))
            .header("cookie", &sent)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        let removal = set_cookie(resp.headers(), "session");
        assert!(removal.contains("Max-Age=0"), "{removal}");
        // The removal goes through the same policy, so browsers match it to the cookie.
        for attribute in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
            assert!(removal.contains(attribute), "{attribute} in {removal}");
        }

        // The old cookie now starts a new, empty session.
        let resp = client
            .get(format!("{base}/visits"))
            .header("cookie", &sent)
            .send()
            .await
            .unwrap();
        assert_eq!(json(resp).await["visits"], 1);
    }

    #[tokio::test]
    async fn per_session_quota_is_separate_from_the_ip_quota() {
        let mut settings = Settings::in_memory(session_config());
        settings.per_ip = Quota::per_minute(100);
        settings.per_session = Quota::per_minute(3);
        let (_server, base) = start(settings).await;
        let client = http1();

        let new_session = || async {
            let resp = client.get(format!("{base}/visits")).send().await.unwrap();
            cookie_pair(&set_cookie(resp.headers(), "session"))
        };
        let visit = |cookie: String| {
            client
                .get(format!("{base}/visits"))
                .header("cookie", cookie)
                .send()
        };

        let first = new_session().await;
        for _ in 0..3 {
            let resp = visit(first.clone()).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            assert!(header(resp.headers(), "ratelimit").contains(r#""session";r="#));
        }
        let resp = visit(first.clone()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        retry_after(resp.headers());
        // Only the refusing quota is reported.
        assert!(
            header(resp.headers(), "ratelimit").starts_with(r#""session";r=0;"#),
            "{:?}",
            resp.headers()
        );
        assert_eq!(
            json(resp).await["detail"],
            "Rate limit exceeded: 3 per 1 minute"
        );

        // The same address without that session, or with another one, is still served.
        let resp = client.get(format!("{base}/")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let second = new_session().await;
        assert_eq!(visit(second).await.unwrap().status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn cookie_policy_rewrites_the_handlers_cookies() {
        let (_server, base) = start(Settings::in_memory(session_config())).await;
        let resp = http2().get(format!("{base}/prefs")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        // The handler wrote `theme=dark; Path=/; Max-Age=31536000`.
        assert_eq!(
            set_cookies(resp.headers()),
            ["theme=dark; Path=/; Max-Age=2592000; Secure; HttpOnly; SameSite=Lax"]
        );
    }

    /// Two instances of the app behind an imaginary load balancer, sharing one real
    /// redis-server: a session started on one is used on the other, and the per-IP quota is
    /// counted across both.
    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn two_instances_share_sessions_and_quotas_through_redis() {
        use std::sync::Arc;
        use tower_rampart::rate_limit::RedisBackend;
        use tower_rampart::session::RedisStore;

        let redis = support::shared();
        let instance = || async {
            // Each instance has its own connection, store and limiter, like separate processes.
            let conn = redis.config.connect().await.unwrap();
            let mut settings = Settings::on_redis(session_config(), conn.clone());
            settings.store =
                Arc::new(RedisStore::new(conn.clone()).with_prefix(format!("{}s:", redis.prefix)));
            settings.limiter = RedisBackend::builder(conn)
                .prefix(format!("{}rl:", redis.prefix))
                .build()
                .into();
            settings.per_ip = Quota::per_minute(4);
            start(settings).await
        };
        let (_a, a) = instance().await;
        let (_b, b) = instance().await;
        let client = http1();

        let resp = client.get(format!("{a}/visits")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let cookie = cookie_pair(&set_cookie(resp.headers(), "session"));
        assert_eq!(json(resp).await["visits"], 1);
        let resp = client
            .get(format!("{b}/visits"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(json(resp).await["visits"], 2);

        // 2 requests so far; 2 more on either instance use up the quota of 4.
        for base in [&a, &b] {
            let resp = client.get(format!("{base}/")).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
        }
        for base in [&a, &b] {
            let resp = client.get(format!("{base}/")).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS, "on {base}");
            retry_after(resp.headers());
        }
    }
}

mod hyper_tests {
    use super::*;
    use crate::hyper_plain::{Settings, serve};
    use bytes::Bytes;
    use http::{Request, Response, StatusCode, Version};
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;
    use tower_rampart::rate_limit::Quota;

    type HyperClient = Client<HttpConnector, Empty<Bytes>>;

    fn http1() -> HyperClient {
        Client::builder(TokioExecutor::new()).build_http()
    }

    /// HTTP/2 with prior knowledge (no upgrade, no TLS): what gRPC and most load balancers
    /// speak to a backend.
    fn http2() -> HyperClient {
        Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http()
    }

    async fn start(settings: Settings) -> (Running, String) {
        let (listener, addr) = loopback().await;
        (run(serve(listener, settings)), format!("http://{addr}"))
    }

    async fn get(client: &HyperClient, uri: String, cookie: Option<&str>) -> (Response<()>, Value) {
        let mut req = Request::get(uri);
        if let Some(cookie) = cookie {
            req = req.header("cookie", cookie);
        }
        let resp = client
            .request(req.body(Empty::new()).unwrap())
            .await
            .unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (Response::from_parts(parts, ()), value)
    }

    #[tokio::test]
    async fn http1_and_http2_prior_knowledge_with_correlation_ids() {
        let (_server, base) = start(Settings::new(session_config())).await;

        let (resp, body) = get(&http1(), format!("{base}/"), None).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), Version::HTTP_11);
        assert_eq!(body["http_version"], "HTTP/1.1");
        let id = header(resp.headers(), "x-correlation-id");
        assert!(is_uuid_v7(id));
        assert_eq!(body["correlation_id"], id);

        let client = http2();
        let req = Request::get(format!("{base}/"))
            .header("x-request-id", "hyper-h2-1")
            .body(Empty::new())
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), Version::HTTP_2);
        assert_eq!(header(resp.headers(), "x-correlation-id"), "hyper-h2-1");
        let body: Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(body["http_version"], "HTTP/2.0");
        assert_eq!(body["correlation_id"], "hyper-h2-1");
    }

    #[tokio::test]
    async fn over_quota_is_429_with_retry_after() {
        let mut settings = Settings::new(session_config());
        settings.per_ip = Quota::per_minute(2);
        let (_server, base) = start(settings).await;

        let (resp, _) = get(&http1(), format!("{base}/"), None).await;
        assert_eq!(resp.status(), StatusCode::OK);
        // Unknown paths count too: the limiter is in front of the routing.
        let (resp, _) = get(&http2(), format!("{base}/nowhere"), None).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert!(header(resp.headers(), "ratelimit").starts_with(r#""ip";r=0;"#));

        for client in [http1(), http2()] {
            let (resp, body) = get(&client, format!("{base}/"), None).await;
            assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
            retry_after(resp.headers());
            assert_eq!(
                header(resp.headers(), "ratelimit-policy"),
                r#""ip";q=2;w=60, "session";q=10;w=60"#
            );
            assert!(is_uuid_v7(header(resp.headers(), "x-correlation-id")));
            assert_eq!(body["detail"], "Rate limit exceeded: 2 per 1 minute");
        }
    }

    #[tokio::test]
    async fn sessions_cookie_policy_and_per_session_quota() {
        let mut settings = Settings::new(session_config());
        settings.per_session = Quota::per_minute(2);
        let (_server, base) = start(settings).await;

        let (resp, body) = get(&http1(), format!("{base}/visits"), None).await;
        assert_eq!(body["visits"], 1);
        let cookie = set_cookie(resp.headers(), "session");
        for attribute in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
            assert!(cookie.contains(attribute), "{attribute} in {cookie}");
        }
        let cookie = cookie_pair(&cookie);

        // The session follows the cookie across connections and protocols.
        let (_, body) = get(&http2(), format!("{base}/visits"), Some(&cookie)).await;
        assert_eq!(body["visits"], 2);
        let (_, body) = get(&http1(), format!("{base}/visits"), Some(&cookie)).await;
        assert_eq!(body["visits"], 3);
        // Two requests with the cookie used up the session's quota of 2.
        let (resp, body) = get(&http2(), format!("{base}/visits"), Some(&cookie)).await;
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(header(resp.headers(), "ratelimit").starts_with(r#""session";r=0;"#));
        assert_eq!(body["detail"], "Rate limit exceeded: 2 per 1 minute");

        // Without the session the address is still served, and the cookie policy applies.
        let (resp, _) = get(&http1(), format!("{base}/prefs"), None).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            set_cookies(resp.headers()),
            ["theme=dark; Path=/; Max-Age=2592000; Secure; HttpOnly; SameSite=Lax"]
        );
    }
}

mod tonic_tests {
    use super::*;
    use crate::tonic_greeter::{rate_limit, serve};
    use greeter_proto::HelloRequest;
    use greeter_proto::greeter_client::GreeterClient;
    use tonic::transport::Channel;
    use tonic::{Code, Request};
    use tower_rampart::rate_limit::Quota;

    async fn start(per_ip: Quota, per_token: Quota) -> (Running, GreeterClient<Channel>) {
        let (listener, addr) = loopback().await;
        let limits = rate_limit(per_ip, per_token).unwrap();
        let server = run(serve(listener, limits, std::future::pending()));
        let client = GreeterClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        (server, client)
    }

    fn hello(
        name: &str,
        correlation_id: Option<&str>,
        token: Option<&str>,
    ) -> Request<HelloRequest> {
        let mut req = Request::new(HelloRequest { name: name.into() });
        if let Some(id) = correlation_id {
            req.metadata_mut()
                .insert("x-correlation-id", id.parse().unwrap());
        }
        if let Some(token) = token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        req
    }

    #[tokio::test]
    async fn correlation_id_comes_back_in_the_metadata() {
        let (_server, mut client) = start(Quota::per_minute(100), Quota::per_minute(100)).await;

        let resp = client
            .say_hello(hello("Ada", Some("grpc-call-1"), None))
            .await
            .unwrap();
        assert_eq!(
            resp.metadata().get("x-correlation-id").unwrap(),
            "grpc-call-1"
        );
        let reply = resp.into_inner();
        assert_eq!(reply.message, "Hello, Ada!");
        // The handler saw the same id in the layer's task-local.
        assert_eq!(reply.correlation_id, "grpc-call-1");

        let resp = client.say_hello(hello("Ada", None, None)).await.unwrap();
        let minted = resp
            .metadata()
            .get("x-correlation-id")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        assert!(is_uuid_v7(&minted));
        assert_eq!(resp.into_inner().correlation_id, minted);

        // A failed call carries it as well.
        let status = client
            .say_hello(hello("", Some("grpc-call-2"), None))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.metadata().get("x-correlation-id").unwrap(),
            "grpc-call-2"
        );
    }

    #[tokio::test]
    async fn over_quota_is_resource_exhausted_with_a_message() {
        let (_server, mut client) = start(Quota::per_minute(3), Quota::per_minute(100)).await;

        // These pass only because the peer address reaches the limiter (the `tonic` feature reads `TcpConnectInfo`):
        // without it the per-IP quota has no key and refuses every call.
        for _ in 0..3 {
            client.say_hello(hello("Ada", None, None)).await.unwrap();
        }
        for attempt in 0..2 {
            let status = client
                .say_hello(hello("Ada", Some("over-quota"), None))
                .await
                .unwrap_err();
            // A gRPC status, not a transport error, and the channel stays usable.
            assert_eq!(
                status.code(),
                Code::ResourceExhausted,
                "attempt {attempt}: {status:?}"
            );
            assert_eq!(status.message(), "Rate limit exceeded: 3 per 1 minute");
            let metadata = status.metadata();
            assert_eq!(metadata.get("x-correlation-id").unwrap(), "over-quota");
            let retry: u64 = metadata
                .get("retry-after")
                .unwrap()
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=60).contains(&retry));
            assert!(
                metadata
                    .get("ratelimit")
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with(r#""ip";r=0;"#)
            );
        }
    }

    #[tokio::test]
    async fn per_token_quota() {
        let (_server, mut client) = start(Quota::per_minute(100), Quota::per_minute(2)).await;

        for _ in 0..2 {
            client
                .say_hello(hello("Ada", None, Some("token-a")))
                .await
                .unwrap();
        }
        let status = client
            .say_hello(hello("Ada", None, Some("token-a")))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.message(), "Rate limit exceeded: 2 per 1 minute");
        assert!(
            status
                .metadata()
                .get("ratelimit")
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(r#""token";r=0;"#)
        );
        // Another token, or none, from the same address: served.
        client
            .say_hello(hello("Ada", None, Some("token-b")))
            .await
            .unwrap();
        client.say_hello(hello("Ada", None, None)).await.unwrap();
    }
}

/// Compile-time checks: each layer, and the four stacked, wrap any inner service whose
/// request and response bodies are not axum's (hyper's `Incoming`, `Full<Bytes>`, a `!Sync`
/// boxed body, tonic's body) into a service that is `Clone + Send + Sync + 'static`, has a
/// `Send` future, a response body hyper and tonic can send, and the inner service's own error
/// type (so no `HandleErrorLayer` is ever needed). The test body only runs what compiled.
mod bounds {
    use std::convert::Infallible;
    use std::future::{Ready, ready};
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::Full;
    use http_body_util::combinators::UnsyncBoxBody;
    use hyper::body::Incoming;
    use tower::{Layer, Service, ServiceBuilder};
    use tower_rampart::cookie_policy::{CookiePolicy, CookiePolicyLayer};
    use tower_rampart::correlation::CorrelationIdLayer;
    use tower_rampart::rate_limit::{Key, Quota, RateLimitLayer};
    use tower_rampart::session::{MemoryStore, SessionConfig, SessionLayer};

    type BoxError = Box<dyn std::error::Error + Send + Sync>;

    /// An application error that is neither `Infallible` nor a boxed error.
    #[derive(Debug)]
    struct AppError;

    /// An inner service generic over both body types.
    struct Inner<ResBody>(std::marker::PhantomData<fn() -> ResBody>);

    impl<ResBody> Clone for Inner<ResBody> {
        fn clone(&self) -> Self {
            Inner(std::marker::PhantomData)
        }
    }

    impl<ReqBody, ResBody: Default> Service<Request<ReqBody>> for Inner<ResBody> {
        type Response = Response<ResBody>;
        type Error = AppError;
        type Future = Ready<Result<Response<ResBody>, AppError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), AppError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<ReqBody>) -> Self::Future {
            ready(Ok(Response::new(ResBody::default())))
        }
    }

    fn check<L, ReqBody, ResBody, Out>(_layer: &L)
    where
        L: Layer<Inner<ResBody>> + Clone + Send + Sync + 'static,
        L::Service: Service<Request<ReqBody>, Response = Response<Out>, Error = AppError>
            + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as Service<Request<ReqBody>>>::Future: Send + 'static,
        Out: http_body::Body<Data = Bytes> + Send + 'static,
        Out::Error: Into<BoxError>,
    {
    }

    /// Every layer against every body combination.
    macro_rules! check_all {
        ($layer:expr) => {{
            let layer = $layer;
            check::<_, Incoming, Full<Bytes>, _>(&layer);
            check::<_, Full<Bytes>, Full<Bytes>, _>(&layer);
            check::<_, Incoming, UnsyncBoxBody<Bytes, Infallible>, _>(&layer);
            check::<_, tonic::body::Body, tonic::body::Body, _>(&layer);
            check::<_, String, String, _>(&layer);
        }};
    }

    #[test]
    fn layers_are_framework_agnostic() {
        let session = SessionLayer::new(
            MemoryStore::new(),
            SessionConfig::builder().random_key().build().unwrap(),
        );
        let limits = RateLimitLayer::builder()
            .quota("ip", Quota::per_minute(10), Key::peer_ip())
            .build()
            .unwrap();
        let cookies = CookiePolicyLayer::new(CookiePolicy::strict());

        check_all!(CorrelationIdLayer::new());
        check_all!(cookies.clone());
        check_all!(limits.clone());
        check_all!(session.clone());
        check_all!(
            ServiceBuilder::new()
                .layer(CorrelationIdLayer::new())
                .layer(cookies)
                .layer(limits)
                .layer(session)
                .into_inner()
        );
    }
}
