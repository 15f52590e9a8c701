//! Rate limit layer with the memory backend: the decisions, headers and responses a user relies
//! on, on a manual clock.
#![cfg(feature = "rate-limit")]

mod common;
mod rate_limit_common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use rate_limit_common::{
    T0, cost_header, header, limited, refused_by_the_second_quota, req_from, req_with, send,
    status_of,
};
use tower::{ServiceBuilder, ServiceExt};
use tower_rampart::clock::ManualClock;
use tower_rampart::net::TrustedProxies;
use tower_rampart::rate_limit::{
    Key, Limit, LimitKey, MemoryBackend, MissingKey, Quota, RateLimitDecision, RateLimitLayer,
    ResetError,
};

#[tokio::test]
async fn window_ten_per_minute_on_a_manual_clock() {
    let clock = ManualClock::new(T0);
    let layer = RateLimitLayer::builder()
        .quota("ip", Quota::parse("10/minute").unwrap(), Key::peer_ip())
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut svc = limited(&layer);
    for i in 0..10 {
        let (status, h, body) = send(&mut svc, req_from("198.51.100.7:4000")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            (9 - i).to_string(),
            "the handler sees the remaining count"
        );
        assert_eq!(header(&h, "ratelimit-policy"), r#""ip";q=10;w=60"#);
        assert_eq!(header(&h, "ratelimit"), format!(r#""ip";r={};t=60"#, 9 - i));
    }
    for at in [2u64, 8, 59] {
        clock.set(T0 + at * 1_000_000);
        let (status, h, body) = send(&mut svc, req_from("198.51.100.7:4001")).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "at {at} s");
        assert_eq!(
            body,
            r#"{"detail": "Rate limit exceeded: 10 per 1 minute"}"#
        );
        assert_eq!(header(&h, "retry-after"), (60 - at).to_string());
        assert_eq!(
            header(&h, "ratelimit"),
            format!(r#""ip";r=0;t={}"#, 60 - at)
        );
        assert_eq!(header(&h, "content-type"), "application/json");
    }
    // 59.9995 s: still refused, Retry-After rounds up to 1.
    clock.set(T0 + 59_999_500);
    let (status, h, _) = send(&mut svc, req_from("198.51.100.7:4002")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&h, "retry-after"), "1");
    // Just after 60 s the first ten have left the window.
    clock.set(T0 + 60_000_001);
    let (status, _, body) = send(&mut svc, req_from("198.51.100.7:4003")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "9"));
    // Another client was never affected.
    clock.set(T0 + 30_000_000);
    let (status, _, _) = send(&mut svc, req_from("198.51.100.8:4000")).await;
    assert_eq!(status, StatusCode::OK);
    let m = layer.metrics();
    assert_eq!((m.allowed, m.denied), (12, 4));
}

#[tokio::test]
async fn gcra_burst_then_refill() {
    let clock = ManualClock::new(T0);
    let layer = RateLimitLayer::builder()
        .quota(
            "api",
            Quota::rate(10, Duration::from_secs(60)).burst(3),
            Key::global(),
        )
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut svc = limited(&layer);
    for left in [2, 1, 0] {
        let (status, h, _) = send(&mut svc, req_from("192.0.2.1:1")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(header(&h, "ratelimit"), format!(r#""api";r={left};t=6"#));
    }
    let (status, h, _) = send(&mut svc, req_from("192.0.2.1:1")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&h, "retry-after"), "6");
    // One request every 6 s refills one unit; after 18 s of quiet the whole burst is back.
    for (quiet, admitted) in [(6, 1), (18, 3)] {
        clock.advance(Duration::from_secs(quiet));
        for _ in 0..admitted {
            let got = status_of(&mut svc, req_from("192.0.2.1:1")).await;
            assert_eq!(got, StatusCode::OK, "after {quiet} s");
        }
        let got = status_of(&mut svc, req_from("192.0.2.1:1")).await;
        assert_eq!(got, StatusCode::TOO_MANY_REQUESTS, "after {quiet} s");
    }
}

#[tokio::test]
async fn a_request_refused_by_its_second_quota_consumes_nothing() {
    let layer = RateLimitLayer::builder()
        .quota("ip", Quota::per_minute(5), Key::peer_ip())
        .quota("user", Quota::per_minute(2), Key::header("x-user"))
        .clock(ManualClock::new(T0))
        .build()
        .unwrap();
    let mut svc = limited(&layer);
    // Five refusals by the user quota, which use nothing of the IP quota.
    let refused = refused_by_the_second_quota(&mut svc, 5, r#""user";r=0;t=60"#).await;
    for (_, h, body) in refused {
        assert_eq!(body, r#"{"detail": "Rate limit exceeded: 2 per 1 minute"}"#);
        // The policy lists both quotas.
        assert_eq!(
            header(&h, "ratelimit-policy"),
            r#""ip";q=5;w=60, "user";q=2;w=60"#
        );
    }
}

#[tokio::test]
async fn client_ip_through_trusted_proxies() {
    let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap();
    let layer = RateLimitLayer::builder()
        .quota("ip", Quota::per_minute(1), Key::client_ip(trusted))
        .clock(ManualClock::new(T0))
        .build()
        .unwrap();
    let mut svc = limited(&layer);
    let (ok, refused) = (StatusCode::OK, StatusCode::TOO_MANY_REQUESTS);
    let cases = [
        // An untrusted peer cannot pick its identity: a spoofed X-Forwarded-For is ignored.
        ("198.51.100.1:1", Some("1.1.1.1"), ok),
        ("198.51.100.1:1", Some("2.2.2.2"), refused),
        // Through the trusted proxy, the client is the rightmost untrusted hop: the leftmost
        // (client-written) entry does not matter.
        ("10.0.0.2:1", Some("6.6.6.6, 203.0.113.9, 10.0.0.3"), ok),
        ("10.0.0.2:1", Some("7.7.7.7, 203.0.113.9"), refused),
        // The same client connecting directly shares the bucket.
        ("203.0.113.9:5", None, refused),
        // IPv6: one /64 is one client; the next /64 is another; IPv4-mapped is IPv4.
        ("[2001:db8:1:2::1]:1", None, ok),
        ("[2001:db8:1:2:aaaa::9]:1", None, refused),
        ("[2001:db8:1:3::1]:1", None, ok),
        ("[::ffff:198.51.100.1]:1", None, refused),
    ];
    for (peer, xff, want) in cases {
        let headers: &[_] = match xff {
            Some(xff) => &[("x-forwarded-for", xff)],
            None => &[],
        };
        let got = status_of(&mut svc, req_with(peer, headers)).await;
        assert_eq!(got, want, "peer {peer}, X-Forwarded-For {xff:?}");
    }
}

#[tokio::test]
async fn missing_keys_follow_their_rule() {
    let layer = RateLimitLayer::builder()
        .quota("ip", Quota::per_minute(100), Key::peer_ip())
        .limit(
            Limit::new("tenant", Quota::per_minute(1), Key::header("x-tenant"))
                .on_missing_key(MissingKey::Skip),
        )
        .clock(ManualClock::new(T0))
        .build()
        .unwrap();
    let mut svc = limited(&layer);
    // No peer address (a server that does not record it): never a silent bypass. It is the
    // deployment's mistake, not the client's: a 500 (see
    // `a_server_that_records_no_client_address_gets_500_and_the_fix_once`).
    let (status, h, body) = send(&mut svc, Request::new(Full::new(Bytes::new()))).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        body,
        r#"{"detail": "Server misconfigured: the rate limiter cannot see client addresses"}"#
    );
    assert!(h.get("retry-after").is_none(), "retrying cannot help");
    // A key that is legitimately absent follows its rule: Reject answers 429.
    let strict = RateLimitLayer::builder()
        .quota("tenant", Quota::per_minute(1), Key::header("x-tenant"))
        .clock(ManualClock::new(T0))
        .build()
        .unwrap();
    let (status, _, body) = send(&mut limited(&strict), req_from("192.0.2.9:1")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        body,
        r#"{"detail": "Rate limit exceeded: no key for quota \"tenant\""}"#
    );
    // No tenant header: that quota is skipped, the IP quota still applies.
    for _ in 0..3 {
        let (status, h, _) = send(&mut svc, req_from("192.0.2.9:1")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!header(&h, "ratelimit").contains("tenant"));
    }
    assert_eq!(layer.metrics().missing_key, 4);
}

#[tokio::test]
async fn grpc_requests_get_resource_exhausted() {
    let layer = RateLimitLayer::builder()
        .quota("rpc", Quota::per_second(1), Key::global())
        .clock(ManualClock::new(T0))
        .build()
        .unwrap();
    let mut svc = limited(&layer);
    let grpc = || req_with("192.0.2.1:1", &[("content-type", "application/grpc+proto")]);
    assert_eq!(status_of(&mut svc, grpc()).await, StatusCode::OK);
    let (status, h, body) = send(&mut svc, grpc()).await;
    assert_eq!(status, StatusCode::OK, "gRPC errors travel in grpc-status");
    assert_eq!(header(&h, "grpc-status"), "8");
    assert_eq!(
        header(&h, "grpc-message"),
        "Rate limit exceeded: 1 per 1 second"
    );
    assert_eq!(header(&h, "content-type"), "application/grpc");
    assert_eq!(header(&h, "retry-after"), "1");
    assert!(body.is_empty());
}

#[tokio::test]
async fn shadow_mode_counts_but_never_refuses() {
    let layer = RateLimitLayer::builder()
        .quota("ip", Quota::per_minute(2), Key::peer_ip())
        .clock(ManualClock::new(T0))
        .shadow(true)
        .build()
        .unwrap();
    let mut svc = limited(&layer);
    for _ in 0..5 {
        let (status, h, _) = send(&mut svc, req_from("192.0.2.1:1")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(h.get("ratelimit").is_none());
    }
    let m = layer.metrics();
    assert_eq!((m.shadow_denied, m.denied, m.allowed), (3, 0, 5));
}

#[tokio::test]
async fn cost_per_request_and_headers_only_on_refusals() {
    let layer = RateLimitLayer::builder()
        .quota("units", Quota::per_minute(10), Key::global())
        .cost_with(cost_header)
        .headers_on_success(false)
        .clock(ManualClock::new(T0))
        .build()
        .unwrap();
    let mut svc = limited(&layer);
    let costing = |c: u64| req_with("192.0.2.1:1", &[("x-cost", &c.to_string())]);
    let (status, h, body) = send(&mut svc, costing(7)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "3"));
    assert!(h.get("ratelimit").is_none() && h.get("ratelimit-policy").is_none());
    let (status, h, _) = send(&mut svc, costing(4)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&h, "ratelimit"), r#""units";r=3;t=60"#);
    // A cost above the quota can never pass: refused, without Retry-After.
    let (status, h, body) = send(&mut svc, costing(11)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(h.get("retry-after").is_none());
    assert!(
        body.contains("request cost 11 exceeds 10 per 1 minute"),
        "{body}"
    );
    assert_eq!(status_of(&mut svc, costing(3)).await, StatusCode::OK);
}

#[test]
fn nonsense_is_rejected_when_the_layer_is_built() {
    let err = |b: tower_rampart::rate_limit::RateLimitBuilder| b.build().unwrap_err().to_string();
    let base = || RateLimitLayer::builder();
    assert!(err(base()).contains("no quota"));
    assert!(err(base().quota("ip", Quota::per_minute(0), Key::global())).contains("at least 1"));
    assert!(
        err(base()
            .quota("ip", Quota::per_minute(5), Key::global())
            .cost(6))
        .contains("exceeds its burst of 5")
    );
    assert!(
        err(base()
            .quota("ip", Quota::per_minute(5), Key::global())
            .cost(0))
        .contains("cost")
    );
    assert!(
        err(base()
            .quota("a", Quota::per_minute(5), Key::global())
            .quota("a", Quota::per_minute(5), Key::global()))
        .contains("used twice")
    );
    assert!(err(base().quota("bad name", Quota::per_minute(5), Key::global())).contains("A-Z"));
    assert!(
        err(base().quota("h", Quota::per_minute(5), Key::header("bad header")))
            .contains("invalid header name")
    );
    assert!(
        err(base().quota("ip", Quota::per_minute(5), Key::peer_ip().ipv6_prefix(200)))
            .contains("IPv6 prefix")
    );
    assert!(
        err(base().quota(
            "g",
            Quota::rate(5, Duration::from_secs(1)).burst(0),
            Key::global()
        ))
        .contains("burst must be at least 1")
    );
}

#[tokio::test]
async fn custom_body_and_custom_key() {
    use http::HeaderValue;
    use tower_rampart::rate_limit::Rejection;
    let layer = RateLimitLayer::builder()
        .quota(
            "route",
            Quota::per_minute(1),
            Key::custom(|req| Some(LimitKey::new(format!("route:{}", req.uri().path())))),
        )
        .rejection_body(|r: &Rejection<'_>| {
            (
                HeaderValue::from_static("text/plain"),
                format!("slow down ({})", r.quota_name().unwrap_or("?")).into_bytes(),
            )
        })
        .clock(ManualClock::new(T0))
        .build()
        .unwrap();
    let mut svc = limited(&layer);
    let to = |path: &str| {
        let mut r = req_from("192.0.2.1:1");
        *r.uri_mut() = path.parse().unwrap();
        r
    };
    assert_eq!(status_of(&mut svc, to("/a")).await, StatusCode::OK);
    assert_eq!(status_of(&mut svc, to("/b")).await, StatusCode::OK);
    let (status, h, body) = send(&mut svc, to("/a")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        (header(&h, "content-type"), body),
        ("text/plain".into(), "slow down (route)".into())
    );
}

#[tokio::test]
async fn a_flood_of_distinct_clients_keeps_memory_bounded() {
    let backend = MemoryBackend::builder().max_keys(2_000).build();
    let clock = ManualClock::new(T0);
    let layer = RateLimitLayer::builder()
        .quota("ip", Quota::per_minute(10), Key::peer_ip())
        .backend(backend.clone())
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut svc = limited(&layer);
    // A client uses its quota, then 100k distinct peers (one /64 each) flood in: the table
    // never holds more than its bound, and the live entries it had to drop are counted.
    let steady = "192.0.2.200:1";
    for _ in 0..10 {
        assert_eq!(status_of(&mut svc, req_from(steady)).await, StatusCode::OK);
    }
    for i in 0..100_000u32 {
        let ip = std::net::Ipv6Addr::from(u128::from(i) << 64);
        let peer = SocketAddr::from((ip, 1)).to_string();
        assert_eq!(status_of(&mut svc, req_from(&peer)).await, StatusCode::OK);
        assert!(backend.len() <= 2_000);
    }
    assert!(backend.len() <= 2_000);
    assert!(backend.evicted_live() > 90_000);
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn works_as_an_axum_layer() {
    use axum::Router;
    use axum::extract::ConnectInfo;
    use axum::routing::get;
    let layer = RateLimitLayer::builder()
        .quota("ip", Quota::per_minute(1), Key::peer_ip())
        .clock(ManualClock::new(T0))
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/",
            get(
                |axum::Extension(d): axum::Extension<RateLimitDecision>| async move {
                    format!("left {}", d.remaining().unwrap())
                },
            ),
        )
        .layer(layer);
    let req = || {
        let mut r = Request::new(axum::body::Body::empty());
        r.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 1], 9))));
        r
    };
    let resp = app.clone().oneshot(req()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"left 0");
    let resp = app.oneshot(req()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[cfg(feature = "session")]
#[tokio::test]
async fn per_session_limits_read_the_session_cookie_without_the_store() {
    use tower_rampart::session::{MemoryStore, Session, SessionConfig, SessionError, SessionLayer};
    let config = SessionConfig::builder()
        .key(b"a test key of at least thirty-two bytes!!")
        .secure(false)
        .build()
        .unwrap();
    let sessions = SessionLayer::new(MemoryStore::new(), config);
    let limits = RateLimitLayer::builder()
        .limit(
            Limit::new(
                "session",
                Quota::per_minute(2),
                Key::session(sessions.cookie_reader()),
            )
            .on_missing_key(MissingKey::Skip),
        )
        .clock(ManualClock::new(T0))
        .build()
        .unwrap();
    let app = ServiceBuilder::new()
        .layer(limits.clone())
        .layer(sessions)
        .service_fn(|req: Request<Full<Bytes>>| async move {
            let session = req.extensions().get::<Session>().unwrap().clone();
            session.insert("seen", true).await?;
            Ok::<_, SessionError>(Response::new(Full::new(Bytes::new())))
        });
    let call = |cookie: Option<&str>| {
        let req = cookie.map_or_else(
            || req_from("192.0.2.1:1"),
            |c| req_with("192.0.2.1:1", &[("cookie", c)]),
        );
        app.clone().oneshot(req)
    };
    let new_session = |resp: &Response<_>| {
        let set = resp.headers()["set-cookie"].to_str().unwrap();
        set.split(';').next().unwrap().to_owned()
    };
    // No cookie yet: the session quota does not apply; the handler starts a session.
    let first = call(None).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let a = new_session(&first);
    for left in [1, 0] {
        let resp = call(Some(&a)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            header(resp.headers(), "ratelimit"),
            format!(r#""session";r={left};t=60"#)
        );
    }
    let refused = call(Some(&a)).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // Another session (same address) has its own bucket.
    let b = new_session(&call(None).await.unwrap());
    assert_ne!(a, b);
    assert_eq!(call(Some(&b)).await.unwrap().status(), StatusCode::OK);
    // A forged cookie is no session: no key, skipped (the store is never asked by the limiter).
    let flipped = if a.ends_with('A') { 'B' } else { 'A' };
    let forged = format!("{}{flipped}", &a[..a.len() - 1]);
    assert_eq!(call(Some(&forged)).await.unwrap().status(), StatusCode::OK);
    assert_eq!(limits.metrics().missing_key, 3);
}

/// Per-user quotas on the memory backend: one count across a user's sessions, untagged
/// sessions skipped (see `rate_limit_common::user`).
#[cfg(feature = "session")]
#[tokio::test]
async fn per_user_limits_survive_a_new_sign_in() {
    use rate_limit_common::user::a_users_count_survives_a_new_sign_in;
    let builder = RateLimitLayer::builder().clock(ManualClock::new(T0));
    let outcome = a_users_count_survives_a_new_sign_in(builder, false).await;
    // Refused: alice's two requests over her quota, nothing else.
    assert_eq!(outcome.layer.metrics().denied, 2);
}

/// `Key::user_or_session`: sessions without a user tag are counted by session.
#[cfg(feature = "session")]
#[tokio::test]
async fn per_user_limits_fall_back_to_the_session() {
    use rate_limit_common::user::a_users_count_survives_a_new_sign_in;
    let builder = RateLimitLayer::builder().clock(ManualClock::new(T0));
    let outcome = a_users_count_survives_a_new_sign_in(builder, true).await;
    assert_eq!(outcome.layer.metrics().denied, 4);
}

#[tokio::test]
async fn a_server_that_records_no_client_address_gets_500_and_the_fix_once() {
    use tower_rampart::rate_limit::{KeyExtractor, NoKey};
    let logs = common::Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // Even with `Skip`: skipping would switch the quota off without anyone noticing.
    let layer = RateLimitLayer::builder()
        .limit(
            Limit::new(
                "ip",
                Quota::per_minute(100),
                Key::client_ip(TrustedProxies::none()),
            )
            .on_missing_key(MissingKey::Skip),
        )
        .clock(ManualClock::new(T0))
        .build()
        .unwrap();
    let mut svc = limited(&layer);
    for _ in 0..3 {
        let (status, _, body) = send(&mut svc, Request::new(Full::new(Bytes::new()))).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(body.contains("cannot see client addresses"), "{body}");
    }
    let grpc = Request::builder()
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, h, _) = send(&mut svc, grpc).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&h, "grpc-status"), "13", "gRPC INTERNAL");

    // One error line for the four requests, naming the fix for each kind of server.
    let text = logs.text();
    assert_eq!(
        text.matches("records no client address").count(),
        1,
        "{text}"
    );
    for fix in [
        "into_make_service_with_connect_info::<SocketAddr>()",
        "`tonic` feature",
        "PeerAddr",
    ] {
        assert!(text.contains(fix), "the log names {fix}: {text}");
    }
    assert!(text.contains("ERROR"));

    // A server that records the peer is served normally; X-Forwarded-For alone from an
    // untrusted peer is not the problem (the peer is the key).
    let (status, _, _) = send(&mut svc, req_from("192.0.2.9:1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        Key::client_ip(TrustedProxies::none())
            .key(&req_with("192.0.2.9:1", &[("x-forwarded-for", "junk")]).map(|_| ())),
        Ok(LimitKey::ip("192.0.2.9".parse().unwrap()))
    );
    assert_eq!(
        Key::header("x-tenant").key(&Request::new(())),
        Err(NoKey::Absent)
    );
}

/// `MemoryBackend::reset`: a refused client starts over with exactly a full quota (window and
/// GCRA meanings, compact and text keys); other clients and other quotas on the same key keep
/// their counts; unknown keys and names are not an error.
#[test]
fn reset_gives_a_refused_client_exactly_a_full_quota_and_nothing_else() {
    let meanings = [
        Quota::per_minute(3),
        Quota::rate(3, Duration::from_secs(60)).burst(3),
    ];
    let clients = [
        LimitKey::ip("192.0.2.10".parse().unwrap()),
        LimitKey::new("user:alice"),
    ];
    for quota in meanings {
        for client in &clients {
            let backend = MemoryBackend::new();
            let login = backend.keyed("login", quota).unwrap();
            let other = backend.keyed("other", Quota::per_minute(5)).unwrap();
            let neighbour = LimitKey::new("user:bob");
            for _ in 0..3 {
                assert!(login.check_at(client, 1, T0).is_allowed());
                assert!(login.check_at(&neighbour, 1, T0).is_allowed());
            }
            assert!(!login.check_at(client, 1, T0 + 1).is_allowed());
            assert!(other.check_at(client, 2, T0).is_allowed());

            assert!(backend.reset("login", client), "{quota:?} {client}");
            // Exactly a full quota: three admitted at once, the fourth refused.
            for left in (0..3).rev() {
                let d = login.check_at(client, 1, T0 + 2);
                assert!(d.is_allowed(), "{quota:?} {client}");
                assert_eq!(d.remaining(), left);
            }
            assert!(!login.check_at(client, 1, T0 + 2).is_allowed());
            // The neighbour and the other quota of the same client are untouched.
            assert!(!login.check_at(&neighbour, 1, T0 + 2).is_allowed());
            assert_eq!(other.check_at(client, 0, T0 + 2).remaining(), 3);
            // Nothing to reset is fine.
            assert!(!backend.reset("login", &LimitKey::new("user:nobody")));
            assert!(!backend.reset("no-such-quota", client));
            assert!(!backend.reset("other", &neighbour));
        }
    }
}

/// Through the layer: support resets the client's address with `RateLimitLayer::reset`, and
/// its next request is admitted with the whole quota left; the layer refuses names it has no
/// quota of.
#[tokio::test]
async fn a_reset_on_the_layers_backend_unblocks_the_client() {
    let clock = ManualClock::new(T0);
    let backend = MemoryBackend::new();
    let layer = RateLimitLayer::builder()
        .quota("ip", Quota::per_minute(3), Key::peer_ip())
        .backend(backend.clone())
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut svc = limited(&layer);
    for peer in ["198.51.100.1:1", "198.51.100.2:1"] {
        for _ in 0..3 {
            assert_eq!(status_of(&mut svc, req_from(peer)).await, StatusCode::OK);
        }
        assert_eq!(
            status_of(&mut svc, req_from(peer)).await,
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    clock.advance(Duration::from_secs(5));
    let client = LimitKey::ip("198.51.100.1".parse().unwrap());
    assert!(layer.reset("ip", &client).await.unwrap());
    assert!(matches!(
        layer.reset("login", &client).await,
        Err(ResetError::UnknownQuota { name }) if name == "login"
    ));
    let (status, h, _) = send(&mut svc, req_from("198.51.100.1:1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&h, "ratelimit"), r#""ip";r=2;t=60"#);
    // The other address is still refused until its own time.
    let (status, h, _) = send(&mut svc, req_from("198.51.100.2:1")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&h, "retry-after"), "55");
    // The layer and its backend are one state.
    assert!(backend.reset("ip", &LimitKey::ip("198.51.100.2".parse().unwrap())));
    assert_eq!(
        status_of(&mut svc, req_from("198.51.100.2:1")).await,
        StatusCode::OK
    );
}

/// `req_from(peer)` with `name` appended once per value (repeated headers).
fn req_with_repeated(peer: &str, name: &'static str, values: &[&[u8]]) -> Request<Full<Bytes>> {
    let mut req = req_from(peer);
    for v in values {
        req.headers_mut()
            .append(name, http::HeaderValue::from_bytes(v).unwrap());
    }
    req
}

#[tokio::test]
async fn a_key_header_sent_twice_with_different_values_is_a_400_not_a_skipped_quota() {
    // The pattern the docs recommend for API-key quotas: skip when there is no key.
    let layer = RateLimitLayer::builder()
        .limit(
            Limit::new("api-key", Quota::per_minute(2), Key::header("x-api-key"))
                .on_missing_key(MissingKey::Skip),
        )
        .clock(ManualClock::new(T0))
        .build()
        .unwrap();
    let mut svc = limited(&layer);
    let mut statuses = Vec::new();
    for i in 0..10 {
        let junk = format!("junk{i}");
        let req = req_with_repeated("192.0.2.9:1", "x-api-key", &[b"k1", junk.as_bytes()]);
        let (status, h, body) = send(&mut svc, req).await;
        if i == 0 {
            assert_eq!(
                body,
                r#"{"detail": "Bad request: the value for quota \"api-key\" is unusable (a key header sent twice with different values, or a malformed forwarding header)"}"#
            );
            assert!(h.get("retry-after").is_none(), "retrying cannot help");
        }
        statuses.push(status);
    }
    assert_eq!(statuses, [StatusCode::BAD_REQUEST; 10]);
    // The same value twice is one key, counted as usual.
    for want in [
        StatusCode::OK,
        StatusCode::OK,
        StatusCode::TOO_MANY_REQUESTS,
    ] {
        let req = req_with_repeated("192.0.2.9:1", "x-api-key", &[b"k1", b"k1"]);
        assert_eq!(status_of(&mut svc, req).await, want);
    }
    // Absent: the quota's rule (skipped).
    assert_eq!(
        status_of(&mut svc, req_from("192.0.2.9:1")).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_garbled_forwarding_chain_is_a_400_never_the_proxy_s_bucket() {
    let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap();
    let layer = RateLimitLayer::builder()
        .quota("ip", Quota::per_minute(1), Key::client_ip(trusted))
        .clock(ManualClock::new(T0))
        .build()
        .unwrap();
    let mut svc = limited(&layer);
    // A client behind the proxy uses its one request.
    let req = req_with("10.0.0.1:1", &[("x-forwarded-for", "198.51.100.4")]);
    assert_eq!(status_of(&mut svc, req).await, StatusCode::OK);
    // Non-UTF-8 garbage before the proxy's entry: the proxy's entry still names the client.
    let req = req_with_repeated("10.0.0.1:1", "x-forwarded-for", &[b"\xff, 203.0.113.9"]);
    assert_eq!(status_of(&mut svc, req).await, StatusCode::OK);
    let req = req_with_repeated("10.0.0.1:1", "x-forwarded-for", &[b"\xff, 203.0.113.9"]);
    assert_eq!(
        status_of(&mut svc, req).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Garbage where the client should be: 400, and nobody's bucket (not the proxy's) is used.
    for garbage in [&b"junk"[..], b"198.51.100.4, \xff", b"unknown"] {
        let req = req_with_repeated("10.0.0.1:1", "x-forwarded-for", &[garbage]);
        assert_eq!(status_of(&mut svc, req).await, StatusCode::BAD_REQUEST);
    }
    // The proxy itself (no forwarding header) still has its own full quota.
    assert_eq!(
        status_of(&mut svc, req_from("10.0.0.1:1")).await,
        StatusCode::OK
    );
}
