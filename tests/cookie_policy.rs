//! The cookie policy layer, end to end through tower and axum.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::header::{SET_COOKIE, VARY};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_rampart::clock::ManualClock;
use tower_rampart::cookie_policy::{
    CookiePolicy, CookiePolicyError, CookiePolicyLayer, CookiePolicyService, SameSite, SecureMode,
};
use tower_rampart::net::{ProxyHeader, TrustedProxies};

use common::{Capture, Rng, from_peer};

/// Runs one request through `policy` around a handler answering with `cookies`; returns the
/// resulting `Set-Cookie` values as raw bytes.
async fn through(policy: CookiePolicy, req: Request<()>, cookies: &[&[u8]]) -> Vec<Vec<u8>> {
    let cookies: Vec<HeaderValue> = cookies
        .iter()
        .map(|c| HeaderValue::from_bytes(c).unwrap())
        .collect();
    let svc = CookiePolicyLayer::new(policy).layer(service_fn(move |_req: Request<()>| {
        let cookies = cookies.clone();
        async move {
            let mut res = Response::new(());
            for c in cookies {
                res.headers_mut().append(SET_COOKIE, c);
            }
            Ok::<_, Infallible>(res)
        }
    }));
    let res = svc.oneshot(req).await.unwrap();
    set_cookies(res.headers())
}

fn set_cookies(headers: &HeaderMap) -> Vec<Vec<u8>> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .collect()
}

fn strs(values: &[Vec<u8>]) -> Vec<&str> {
    values
        .iter()
        .map(|v| std::str::from_utf8(v).unwrap())
        .collect()
}

#[tokio::test]
async fn each_cookie_rewritten_separately_order_and_count_preserved() {
    let out = through(
        CookiePolicy::lax(),
        Request::new(()),
        &[
            b"a=1",
            b"b=2; Secure; HttpOnly; SameSite=Strict",
            b"a=3; Path=/x",
            b"broken",
            b"c=4; SameSite=None; Priority=High; Partitioned",
        ],
    )
    .await;
    assert_eq!(
        strs(&out),
        [
            "a=1; Secure; HttpOnly; SameSite=Lax",
            "b=2; Secure; HttpOnly; SameSite=Strict",
            "a=3; Path=/x; Secure; HttpOnly; SameSite=Lax",
            "broken",
            "c=4; SameSite=Lax; Priority=High; Partitioned; Secure; HttpOnly",
        ]
    );
}

#[tokio::test]
async fn other_headers_status_and_body_untouched() {
    let svc = ServiceBuilder::new()
        .layer(CookiePolicyLayer::new(CookiePolicy::strict()))
        .service(service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(
                Response::builder()
                    .status(StatusCode::CREATED)
                    .header(VARY, "origin")
                    .header(VARY, "accept")
                    .header(SET_COOKIE, "k=v")
                    .header("x-other", "set-cookie-lookalike=1")
                    .body(Full::new(Bytes::from_static(b"hello")))
                    .unwrap(),
            )
        }));
    let res = svc.oneshot(Request::new(Full::default())).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let vary: Vec<_> = res.headers().get_all(VARY).iter().collect();
    assert_eq!(vary, ["origin", "accept"]);
    assert_eq!(res.headers()["x-other"], "set-cookie-lookalike=1");
    assert_eq!(
        res.headers()[SET_COOKIE],
        "k=v; Secure; HttpOnly; SameSite=Strict"
    );
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body, "hello");
}

#[tokio::test]
async fn responses_without_cookies_pass_unchanged() {
    let out = through(CookiePolicy::strict(), Request::new(()), &[]).await;
    assert!(out.is_empty());
}

#[tokio::test]
async fn compliant_cookies_are_left_byte_for_byte() {
    let input: &[&[u8]] = &[
        b"a=1;secure;HTTPONLY;samesite=lax",
        b"__Host-b=2; Path=/; Secure; HttpOnly; SameSite=Strict; Priority=Low",
    ];
    let out = through(CookiePolicy::lax(), Request::new(()), input).await;
    assert_eq!(out, input);
}

fn when_https() -> CookiePolicy {
    CookiePolicy::builder()
        .secure(SecureMode::WhenHttps)
        .trusted_proxies(TrustedProxies::parse("10.0.0.0/8").unwrap())
        .build()
        .unwrap()
}

#[tokio::test]
async fn secure_when_https_direct_and_through_trusted_proxy() {
    // direct HTTPS (scheme in the URI)
    let req = Request::get("https://app.example/").body(()).unwrap();
    let out = through(when_https(), req, &[b"a=1"]).await;
    assert_eq!(strs(&out), ["a=1; Secure; HttpOnly; SameSite=Lax"]);

    // plain HTTP, no proxy
    let out = through(when_https(), from_peer("203.0.113.5:1", &[]), &[b"a=1"]).await;
    assert_eq!(strs(&out), ["a=1; HttpOnly; SameSite=Lax"]);

    // TLS terminated by a trusted load balancer
    let req = from_peer("10.0.0.2:1", &[("x-forwarded-proto", "https")]);
    let out = through(when_https(), req, &[b"a=1"]).await;
    assert_eq!(strs(&out), ["a=1; Secure; HttpOnly; SameSite=Lax"]);

    // the load balancer says the client used plain HTTP
    let req = from_peer("10.0.0.2:1", &[("x-forwarded-proto", "http")]);
    let out = through(when_https(), req, &[b"a=1"]).await;
    assert_eq!(strs(&out), ["a=1; HttpOnly; SameSite=Lax"]);

    // an untrusted client claiming HTTPS is not believed
    let req = from_peer("203.0.113.5:1", &[("x-forwarded-proto", "https")]);
    let out = through(when_https(), req, &[b"a=1"]).await;
    assert_eq!(strs(&out), ["a=1; HttpOnly; SameSite=Lax"]);

    // RFC 7239 Forwarded from a trusted proxy configured for it
    let forwarded = CookiePolicy::builder()
        .secure(SecureMode::WhenHttps)
        .trusted_proxies(
            TrustedProxies::parse("10.0.0.0/8")
                .unwrap()
                .with_header(ProxyHeader::Forwarded),
        )
        .build()
        .unwrap();
    let req = from_peer(
        "10.0.0.2:1",
        &[("forwarded", "for=\"[2001:db8::5]:4711\";proto=https")],
    );
    let out = through(forwarded.clone(), req, &[b"a=1"]).await;
    assert_eq!(strs(&out), ["a=1; Secure; HttpOnly; SameSite=Lax"]);
    let req = from_peer("203.0.113.5:1", &[("forwarded", "for=1.2.3.4;proto=https")]);
    let out = through(forwarded, req, &[b"a=1"]).await;
    assert_eq!(strs(&out), ["a=1; HttpOnly; SameSite=Lax"]);
}

#[tokio::test]
async fn secure_always_ignores_the_request() {
    let out = through(
        CookiePolicy::lax(),
        from_peer("203.0.113.5:1", &[]),
        &[b"a=1"],
    )
    .await;
    assert_eq!(strs(&out), ["a=1; Secure; HttpOnly; SameSite=Lax"]);
}

#[tokio::test]
async fn presets() {
    let cookie: &[&[u8]] = &[b"sid=x; Max-Age=99999999; SameSite=None"];
    let strict = through(CookiePolicy::strict(), Request::new(()), cookie).await;
    assert_eq!(
        strs(&strict),
        ["sid=x; Max-Age=34560000; SameSite=Strict; Secure; HttpOnly"]
    );
    let lax = through(CookiePolicy::lax(), Request::new(()), cookie).await;
    assert_eq!(
        strs(&lax),
        ["sid=x; Max-Age=99999999; SameSite=Lax; Secure; HttpOnly"]
    );
    let dev = through(CookiePolicy::development(), Request::new(()), cookie).await;
    assert_eq!(
        strs(&dev),
        ["sid=x; Max-Age=99999999; SameSite=Lax; HttpOnly"]
    );
    let default = through(CookiePolicy::default(), Request::new(()), cookie).await;
    assert_eq!(default, lax);
    // development still fixes prefixed cookies so browsers accept them
    let dev = through(
        CookiePolicy::development(),
        Request::new(()),
        &[b"__Host-id=1; Domain=localhost"],
    )
    .await;
    assert_eq!(
        strs(&dev),
        ["__Host-id=1; Path=/; Secure; HttpOnly; SameSite=Lax"]
    );
}

#[tokio::test]
async fn http_only_allow_list() {
    let policy = CookiePolicy::builder()
        .allow_script_access("XSRF-TOKEN")
        .allow_script_access(String::from("theme"))
        .build()
        .unwrap();
    let out = through(
        policy,
        Request::new(()),
        &[b"XSRF-TOKEN=t", b"theme=dark", b"sid=s"],
    )
    .await;
    assert_eq!(
        strs(&out),
        [
            "XSRF-TOKEN=t; Secure; SameSite=Lax",
            "theme=dark; Secure; SameSite=Lax",
            "sid=s; Secure; HttpOnly; SameSite=Lax"
        ]
    );
}

#[tokio::test]
async fn prefix_rules() {
    let out = through(
        CookiePolicy::lax(),
        Request::new(()),
        &[
            b"__Host-sid=1; Path=/account; Domain=example.com; Secure",
            b"__Secure-pref=2; Domain=example.com",
        ],
    )
    .await;
    assert_eq!(
        strs(&out),
        [
            "__Host-sid=1; Path=/; Secure; HttpOnly; SameSite=Lax",
            "__Secure-pref=2; Domain=example.com; Secure; HttpOnly; SameSite=Lax"
        ]
    );
}

#[tokio::test]
async fn lifetime_cap_and_removals() {
    // 2030-01-01T00:00:00Z
    let now = 1_893_456_000u64;
    let policy = CookiePolicy::builder()
        .max_age_cap(Duration::from_secs(86_400))
        .clock(ManualClock::new(now * 1_000_000))
        .build()
        .unwrap();
    let out = through(
        policy,
        Request::new(()),
        &[
            b"long=1; Max-Age=604800",
            b"short=1; Max-Age=60",
            b"far=1; Expires=Wed, 09 Jan 2030 00:00:00 GMT",
            b"near=1; Expires=Tue, 01 Jan 2030 06:00:00 GMT",
            b"gone=; Max-Age=0; Path=/a",
            b"gone2=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Domain=example.com",
            b"session=1",
        ],
    )
    .await;
    assert_eq!(
        strs(&out),
        [
            "long=1; Max-Age=86400; Secure; HttpOnly; SameSite=Lax",
            "short=1; Max-Age=60; Secure; HttpOnly; SameSite=Lax",
            "far=1; Expires=Wed, 09 Jan 2030 00:00:00 GMT; Max-Age=86400; Secure; HttpOnly; SameSite=Lax",
            "near=1; Expires=Tue, 01 Jan 2030 06:00:00 GMT; Secure; HttpOnly; SameSite=Lax",
            "gone=; Max-Age=0; Path=/a; Secure; HttpOnly; SameSite=Lax",
            "gone2=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Domain=example.com; Secure; HttpOnly; SameSite=Lax",
            "session=1; Secure; HttpOnly; SameSite=Lax",
        ]
    );
}

#[tokio::test]
async fn malformed_cookies_pass_through_with_a_warning_that_hides_the_value() {
    let logs = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    // Other tests of this binary log from other threads, which have no subscriber. With a
    // single live dispatcher, tracing caches a callsite's interest from whichever thread
    // registers it first, so this test could miss its own events. A second live dispatcher
    // makes tracing ask every subscriber per thread instead.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let _guard = tracing::subscriber::set_default(subscriber);

    let input: &[&[u8]] = &[
        b"sid=s3cr3t-one\xff",
        b"s3cr3t-two",
        b"=s3cr3t-three",
        b"ok=fine",
    ];
    let out = through(CookiePolicy::lax(), Request::new(()), input).await;
    assert_eq!(&out[..3], &input[..3]);
    assert_eq!(out[3], b"ok=fine; Secure; HttpOnly; SameSite=Lax");

    let text = logs.text();
    assert_eq!(text.matches("WARN").count(), 3, "{text}");
    assert!(text.contains("not valid UTF-8"), "{text}");
    assert!(
        text.contains("no '=' between cookie name and value"),
        "{text}"
    );
    assert!(text.contains("empty cookie name"), "{text}");
    assert!(text.contains("position=1"), "{text}");
    assert!(
        !text.contains("s3cr3t"),
        "a cookie value was logged: {text}"
    );
    assert!(!text.contains("sid"), "a cookie name was logged: {text}");
}

#[test]
fn build_time_errors_have_clear_messages() {
    let err = CookiePolicy::builder()
        .secure(SecureMode::Never)
        .min_same_site(SameSite::None)
        .build()
        .unwrap_err();
    assert_eq!(err, CookiePolicyError::SameSiteNoneWithoutSecure);
    assert!(err.to_string().contains("SameSite=None without Secure"));

    let err = CookiePolicy::builder()
        .max_age_cap(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err, CookiePolicyError::ZeroMaxAgeCap);
    assert!(err.to_string().contains("at least one second"));

    let err = CookiePolicy::builder()
        .allow_script_access("my token")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("\"my token\""), "{err}");

    let err = CookiePolicy::builder()
        .allow_script_access("__Host-Http-csrf")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("must be HttpOnly"), "{err}");
    let _: Box<dyn std::error::Error + Send + Sync> = Box::new(err);

    // a preset adjusted into a contradiction is caught too
    let err = CookiePolicy::development()
        .into_builder()
        .min_same_site(SameSite::None)
        .build()
        .unwrap_err();
    assert_eq!(err, CookiePolicyError::SameSiteNoneWithoutSecure);
}

#[tokio::test]
async fn inner_errors_pass_through() {
    let svc =
        CookiePolicyLayer::new(CookiePolicy::lax()).layer(service_fn(|_req: Request<()>| async {
            Err::<Response<()>, _>("inner failed")
        }));
    assert_eq!(
        svc.oneshot(Request::new(())).await.unwrap_err(),
        "inner failed"
    );
}

#[tokio::test]
async fn works_with_axum() {
    use axum::Router;
    use axum::response::{AppendHeaders, IntoResponse};
    use axum::routing::get;

    async fn handler() -> impl IntoResponse {
        (
            AppendHeaders([(SET_COOKIE, "a=1"), (SET_COOKIE, "b=2; SameSite=Strict")]),
            "ok",
        )
    }
    let app = Router::new()
        .route("/", get(handler))
        .layer(CookiePolicyLayer::new(CookiePolicy::lax()));
    let res = app
        .oneshot(Request::get("/").body(axum::body::Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(
        strs(&set_cookies(res.headers())),
        [
            "a=1; Secure; HttpOnly; SameSite=Lax",
            "b=2; SameSite=Strict; Secure; HttpOnly"
        ]
    );
}

#[tokio::test]
async fn service_is_clone_send_sync_and_futures_are_send() {
    fn assert_traits<T: Clone + Send + Sync + 'static>(_: &T) {}
    fn assert_send<T: Send>(_: &T) {}

    let layer = CookiePolicyLayer::new(CookiePolicy::lax());
    assert_traits(&layer);
    let mut svc: CookiePolicyService<_> = layer.layer(service_fn(|_req: Request<String>| async {
        Ok::<_, Infallible>(
            Response::builder()
                .header(SET_COOKIE, "a=1")
                .body(String::new())
                .unwrap(),
        )
    }));
    assert_traits(&svc);
    let fut = svc.ready().await.unwrap().call(Request::new(String::new()));
    assert_send(&fut);
    assert_eq!(
        fut.await.unwrap().headers()[SET_COOKIE],
        "a=1; Secure; HttpOnly; SameSite=Lax"
    );

    // the accessors reach the inner service, and a new policy can wrap it again
    let _ = svc.get_mut();
    let _ = svc.get_ref();
    let strict = CookiePolicyService::new(svc.into_inner(), CookiePolicy::strict());
    let res = strict.oneshot(Request::new(String::new())).await.unwrap();
    assert_eq!(
        res.headers()[SET_COOKIE],
        "a=1; Secure; HttpOnly; SameSite=Strict"
    );
}

/// An inner service whose readiness fails, to see it reach the caller unchanged.
#[derive(Clone)]
struct NeverReady;

impl Service<Request<()>> for NeverReady {
    type Response = Response<()>;
    type Error = &'static str;
    type Future = std::future::Ready<Result<Response<()>, &'static str>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Err("overloaded"))
    }

    fn call(&mut self, _req: Request<()>) -> Self::Future {
        unreachable!("called without readiness")
    }
}

#[tokio::test]
async fn readiness_is_the_inner_services() {
    let mut svc = CookiePolicyLayer::default().layer(NeverReady);
    assert_eq!(svc.ready().await.err(), Some("overloaded"));
}

/// Minimal attribute reading for the property test: (name=value pair, lower-case keys).
fn attribute_keys(cookie: &str) -> (&str, Vec<String>) {
    let mut parts = cookie.split(';');
    let pair = parts.next().unwrap_or("");
    let keys = parts
        .map(|a| {
            a.split('=')
                .next()
                .unwrap_or("")
                .trim_matches([' ', '\t'])
                .to_ascii_lowercase()
        })
        .collect();
    (pair, keys)
}

#[test]
fn generated_inputs_never_panic_keep_count_and_are_idempotent() {
    let pieces: &[&[u8]] = &[
        b"a",
        b"=",
        b";",
        b" ",
        b"\t",
        b"__Host-",
        b"__Secure-",
        b"__Http-",
        b"Secure",
        b"HttpOnly",
        b"SameSite",
        b"=None",
        b"=Lax",
        b"=Strict",
        b"Max-Age",
        b"=0",
        b"=-1",
        b"=99999999999999",
        b"=60",
        b"Expires",
        b"=Wed, 09 Jan 2030 00:00:00 GMT",
        b"=Thu, 01 Jan 1970 00:00:00 GMT",
        b"Path",
        b"=/",
        b"=/x",
        b"Domain",
        b"=example.com",
        b"Priority=High",
        b"Partitioned",
        b"\"",
        b",",
        b"\xff",
        b"\xc3\xa9",
        b"x",
    ];
    let policies = [
        CookiePolicy::strict(),
        CookiePolicy::lax(),
        CookiePolicy::development(),
        CookiePolicy::builder()
            .secure(SecureMode::WhenHttps)
            .min_same_site(SameSite::None)
            .http_only(false)
            .max_age_cap(Duration::from_secs(3600))
            .clock(ManualClock::new(1_893_456_000_000_000))
            .build()
            .unwrap(),
    ];
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut rewritten = 0;
    for round in 0..20_000 {
        let policy = &policies[round % policies.len()];
        let https = rng.next().is_multiple_of(2);
        let mut headers = HeaderMap::new();
        let count = 1 + rng.next() % 3;
        for _ in 0..count {
            let mut bytes = Vec::new();
            for _ in 0..rng.next() % 12 {
                bytes.extend_from_slice(pieces[(rng.next() % pieces.len() as u64) as usize]);
            }
            headers.append(SET_COOKIE, HeaderValue::from_bytes(&bytes).unwrap());
        }
        let before = set_cookies(&headers);
        policy.apply(&mut headers, https);
        let once = set_cookies(&headers);
        assert_eq!(once.len(), before.len());
        policy.apply(&mut headers, https);
        assert_eq!(set_cookies(&headers), once, "not idempotent for {before:?}");

        for (input, output) in before.iter().zip(&once) {
            if input == output {
                continue;
            }
            rewritten += 1;
            // only well-formed cookies are changed, and their name=value pair never is
            let input = std::str::from_utf8(input).expect("malformed input was changed");
            let output = std::str::from_utf8(output).unwrap();
            let (pair_in, keys_in) = attribute_keys(input);
            let (pair_out, keys_out) = attribute_keys(output);
            assert_eq!(pair_in, pair_out);
            // only tightens: flags are never removed
            for flag in ["secure", "httponly"] {
                if keys_in.iter().any(|k| k == flag) {
                    assert!(
                        keys_out.iter().any(|k| k == flag),
                        "{input:?} -> {output:?}"
                    );
                }
            }
            // and every changed cookie ends up with a SameSite when the policy wants one
            if !std::ptr::eq(policy, &policies[3]) {
                assert!(keys_out.iter().any(|k| k == "samesite"), "{output:?}");
            }
        }
    }
    assert!(
        rewritten > 5_000,
        "the generator reaches the rewriting code: {rewritten}"
    );
}

/// An axum app that sets its cookies through `tower-cookies` (`Cookies` in the handler,
/// `CookieManagerLayer` writing the `Set-Cookie` headers on the way out): with the policy
/// layer **outside** the cookie manager (added after it), every cookie the manager writes
/// is rewritten; inside it, the policy runs before the manager has written anything and sees
/// no cookie. The documented order is therefore: the cookie manager first, then the policy.
#[tokio::test]
async fn cookies_set_through_tower_cookies_are_rewritten_when_the_policy_is_outside() {
    use axum::Router;
    use axum::routing::get;
    use tower_cookies::{Cookie, CookieManagerLayer, Cookies};

    async fn handler(cookies: Cookies) -> &'static str {
        cookies.add(Cookie::new("theme", "dark"));
        let mut tracking = Cookie::new("pref", "1");
        tracking.set_same_site(tower_cookies::cookie::SameSite::None);
        cookies.add(tracking);
        "ok"
    }
    let request = || Request::get("/").body(axum::body::Body::empty()).unwrap();

    // The documented order: the policy wraps the cookie manager.
    let app = Router::new()
        .route("/", get(handler))
        .layer(CookieManagerLayer::new())
        .layer(CookiePolicyLayer::new(CookiePolicy::lax()));
    let res = app.oneshot(request()).await.unwrap();
    let mut out = strs(&set_cookies(res.headers()))
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    out.sort();
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(out[0].starts_with("pref=1"), "{out:?}");
    assert!(out[1].starts_with("theme=dark"), "{out:?}");
    for cookie in &out {
        let attrs: Vec<&str> = cookie.split("; ").collect();
        assert!(attrs.contains(&"HttpOnly"), "{cookie}");
        assert!(attrs.contains(&"Secure"), "{cookie}");
    }
    // Lax at least: the cookie the handler marked SameSite=None is tightened too.
    assert!(out.iter().all(|c| c.contains("SameSite=Lax")), "{out:?}");
    assert!(!out[0].contains("SameSite=None"), "{out:?}");

    // The other order: the policy runs inside the manager and never sees its cookies.
    let app = Router::new()
        .route("/", get(handler))
        .layer(CookiePolicyLayer::new(CookiePolicy::lax()))
        .layer(CookieManagerLayer::new());
    let res = app.oneshot(request()).await.unwrap();
    let out = set_cookies(res.headers());
    assert_eq!(out.len(), 2);
    assert!(
        strs(&out).iter().all(|c| !c.contains("HttpOnly")),
        "inside the manager the policy cannot rewrite: {:?}",
        strs(&out)
    );
}
