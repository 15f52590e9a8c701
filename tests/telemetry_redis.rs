//! The OpenTelemetry metrics of the Redis-backed parts (feature `opentelemetry`), against a
//! real redis-server, read back from the real SDK with an in-memory exporter: the Redis
//! connection (calls, errors, reconnects, circuit breaker) and the rate limiter's Redis
//! backend (script calls, deny cache, degraded decisions).

mod rate_limit_common;
mod telemetry_common;

use std::time::{Duration, Instant};

use http::StatusCode;
use rampart_test_support as support;
use rate_limit_common::{limited, req_from, send};
use telemetry_common::{Otel, check_against_the_table, unit_of, value_in};
use tower_rampart::rate_limit::{FailureMode, Key, Quota, RateLimitLayer, RedisBackend};
use tower_rampart::redis::driver;
use tower_rampart::telemetry::{self, attribute as a};

#[tokio::test]
async fn redis_calls_errors_reconnects_and_the_breaker() {
    let mut server = support::RedisServer::start();
    let otel = Otel::new();
    let config = server.config().meter(otel.meter());
    let addr = config.to_string();
    let conn = config.connect().await.unwrap();
    for _ in 0..3 {
        let _: String = conn.query(&driver::cmd("PING")).await.unwrap();
    }
    let points = otel.points();
    let d = telemetry::REDIS_COMMAND_DURATION;
    assert_eq!(unit_of(&points, d), "s");
    let server_kv: Vec<_> = points
        .iter()
        .filter(|p| p.name == d)
        .map(|p| p.attrs[a::SERVER_ADDRESS].clone())
        .collect();
    assert_eq!(server_kv.len(), 1, "{points:#?} ({addr})");
    let srv = server_kv[0].clone();
    assert!(srv.contains("127.0.0.1"), "{srv}");
    let s = a::SERVER_ADDRESS;
    assert!(value_in(&points, d, &[(s, &srv)]) >= 3.0);
    let state = telemetry::REDIS_BREAKER_STATE;
    assert_eq!(value_in(&points, state, &[(s, &srv)]), 0.0);

    // Redis goes away: failures, then the breaker opens and refuses at once.
    server.stop();
    for _ in 0..5 {
        assert!(conn.query::<String>(&driver::cmd("PING")).await.is_err());
    }
    let points = otel.points();
    let e = telemetry::REDIS_ERRORS;
    assert_eq!(unit_of(&points, e), "{error}");
    let unavailable = value_in(&points, e, &[(s, &srv), (a::ERROR_TYPE, "unavailable")]);
    let timeouts = value_in(&points, e, &[(s, &srv), (a::ERROR_TYPE, "timeout")]);
    assert_eq!(unavailable + timeouts, 5.0, "{points:#?}");
    let t = telemetry::REDIS_BREAKER_TRANSITIONS;
    let tr = a::REDIS_BREAKER_TRANSITION;
    assert_eq!(value_in(&points, t, &[(s, &srv), (tr, "opened")]), 1.0);
    assert_ne!(
        value_in(&points, state, &[(s, &srv)]),
        0.0,
        "open or half-open"
    );

    // Back: the recovery watch reconnects and closes the breaker.
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    while value_in(&otel.points(), t, &[(s, &srv), (tr, "closed")]) == 0.0 {
        assert!(Instant::now() < deadline, "no recovery within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _: String = conn.query(&driver::cmd("PING")).await.unwrap();
    let points = otel.points();
    assert_eq!(value_in(&points, state, &[(s, &srv)]), 0.0);
    check_against_the_table(&points);
    assert!(
        value_in(&points, telemetry::REDIS_RECONNECTS, &[(s, &srv)]) >= 1.0,
        "{points:#?}"
    );
}

#[tokio::test]
async fn redis_rate_limit_script_calls_deny_cache_and_degraded_decisions() {
    let mut server = support::RedisServer::start();
    let otel = Otel::new();
    let conn = server.config().connect().await.unwrap();
    let backend = RedisBackend::builder(conn)
        .batching(false)
        .meter(otel.meter())
        .build();
    let layer = RateLimitLayer::builder()
        .quota("ip", Quota::per_minute(3), Key::peer_ip())
        .backend(backend)
        .failure_mode(FailureMode::Open)
        .meter(otel.meter())
        .build()
        .unwrap();
    let mut svc = limited(&layer);
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(send(&mut svc, req_from("192.0.2.1:1")).await.0);
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 429, 429, 429].map(|c| StatusCode::from_u16(c).unwrap())
    );
    let points = otel.points();
    let p = a::RATE_LIMIT_POLICY;
    let r = a::RATE_LIMIT_RESULT;
    let n = telemetry::RATE_LIMIT_DECISIONS;
    assert_eq!(value_in(&points, n, &[(p, "ip"), (r, "allowed")]), 3.0);
    assert_eq!(value_in(&points, n, &[(p, "ip"), (r, "rejected")]), 3.0);
    // The third admission used the quota up: the three refusals came from the deny cache,
    // without a script call.
    assert_eq!(
        value_in(&points, telemetry::RATE_LIMIT_DENY_CACHE_HITS, &[]),
        3.0
    );
    let calls = telemetry::RATE_LIMIT_SCRIPT_CALLS;
    assert_eq!(unit_of(&points, calls), "{call}");
    assert_eq!(value_in(&points, calls, &[]), 3.0);
    // Without batching, one decision per call.
    let per_call = points
        .iter()
        .find(|p| p.name == telemetry::RATE_LIMIT_SCRIPT_DECISIONS)
        .unwrap();
    assert_eq!((per_call.value, per_call.sum), (3.0, 3.0));
    let d = telemetry::RATE_LIMIT_DECISION_DURATION;
    assert_eq!(
        value_in(&points, d, &[(a::RATE_LIMIT_BACKEND, "redis")]),
        3.0
    );

    // Redis gone, failure mode Open: admitted, counted as degraded (no quota decided).
    server.stop();
    for _ in 0..2 {
        assert_eq!(
            send(&mut svc, req_from("192.0.2.2:1")).await.0,
            StatusCode::OK
        );
    }
    let points = otel.points();
    assert_eq!(value_in(&points, n, &[(r, "degraded_allowed")]), 2.0);
    check_against_the_table(&points);
}

/// Redis unreachable: the local fallback's decisions carry their quota; `Closed` refuses
/// without one.
#[tokio::test]
async fn degraded_decisions_by_failure_mode() {
    let mut server = support::RedisServer::start();
    let otel = Otel::new();
    let conn = server.config().connect().await.unwrap();
    let layer = |mode| {
        RateLimitLayer::builder()
            .quota("ip", Quota::per_minute(1), Key::peer_ip())
            .backend(RedisBackend::new(conn.clone()))
            .failure_mode(mode)
            .meter(otel.meter())
            .build()
            .unwrap()
    };
    let local = layer(FailureMode::Local);
    let closed = layer(FailureMode::Closed);
    server.stop();
    let mut svc = limited(&local);
    let first = send(&mut svc, req_from("192.0.2.1:1")).await.0;
    let second = send(&mut svc, req_from("192.0.2.1:1")).await.0;
    assert_eq!(
        (first, second),
        (StatusCode::OK, StatusCode::TOO_MANY_REQUESTS)
    );
    let mut svc = limited(&closed);
    assert_eq!(
        send(&mut svc, req_from("192.0.2.1:1")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let points = otel.points();
    let n = telemetry::RATE_LIMIT_DECISIONS;
    let p = a::RATE_LIMIT_POLICY;
    let r = a::RATE_LIMIT_RESULT;
    assert_eq!(
        value_in(&points, n, &[(p, "ip"), (r, "degraded_allowed")]),
        1.0
    );
    assert_eq!(
        value_in(&points, n, &[(p, "ip"), (r, "degraded_rejected")]),
        1.0
    );
    assert_eq!(value_in(&points, n, &[(r, "degraded_rejected")]), 1.0);
    check_against_the_table(&points);
}
