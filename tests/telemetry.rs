//! The layers' OpenTelemetry metrics (feature `opentelemetry`), read back from the real SDK
//! with an in-memory exporter: names, units, attributes and counts for a few real requests.
//! The Redis-backed groups are in `tests/telemetry_redis.rs`.

mod rate_limit_common;
mod session_common;
mod telemetry_common;

use std::convert::Infallible;

use http::{Method, Request, Response, StatusCode};
use rate_limit_common::{limited, req_from, send};
use telemetry_common::{Otel, attr_sets, documented, unit_of, value_in};
use tower::{Layer, ServiceExt, service_fn};
use tower_rampart::correlation::CorrelationIdLayer;
use tower_rampart::rate_limit::{Key, Quota, RateLimitLayer};
use tower_rampart::telemetry::{self, attribute as a};

/// A handler answering the status its path names (`/status/503`), or failing (`/fail`).
fn statuses() -> impl tower::Service<
    Request<String>,
    Response = Response<String>,
    Error = std::io::Error,
    Future: Send,
> + Clone {
    service_fn(|req: Request<String>| async move {
        let path = req.uri().path();
        if path == "/fail" {
            return Err(std::io::Error::other("no response"));
        }
        let code: u16 = path
            .strip_prefix("/status/")
            .and_then(|c| c.parse().ok())
            .unwrap_or(200);
        let mut resp = Response::new(String::new());
        *resp.status_mut() = StatusCode::from_u16(code).unwrap();
        Ok(resp)
    })
}

fn request(method: Method, path: &str) -> Request<String> {
    Request::builder()
        .method(method)
        .uri(path)
        .body(String::new())
        .unwrap()
}

#[tokio::test]
async fn http_server_metrics_per_the_semantic_conventions() {
    let otel = Otel::new();
    let svc = CorrelationIdLayer::new()
        .meter(otel.meter())
        .layer(statuses());
    for _ in 0..2 {
        svc.clone()
            .oneshot(request(Method::GET, "/"))
            .await
            .unwrap();
    }
    svc.clone()
        .oneshot(request(Method::POST, "/status/503"))
        .await
        .unwrap();
    svc.clone()
        .oneshot(request(Method::GET, "/status/404"))
        .await
        .unwrap();
    svc.clone()
        .oneshot(request(Method::from_bytes(b"PURGE").unwrap(), "/"))
        .await
        .unwrap();
    assert!(
        svc.clone()
            .oneshot(request(Method::GET, "/fail"))
            .await
            .is_err()
    );

    let points = otel.points();
    let d = telemetry::HTTP_SERVER_REQUEST_DURATION;
    assert_eq!(d, "http.server.request.duration");
    assert_eq!(unit_of(&points, d), "s");
    let m = a::HTTP_REQUEST_METHOD;
    let s = a::HTTP_RESPONSE_STATUS_CODE;
    let e = a::ERROR_TYPE;
    assert_eq!(value_in(&points, d, &[(m, "GET"), (s, "200")]), 2.0);
    assert_eq!(
        value_in(&points, d, &[(m, "POST"), (s, "503"), (e, "503")]),
        1.0
    );
    assert_eq!(value_in(&points, d, &[(m, "GET"), (s, "404")]), 1.0);
    // A method outside the standard ones cannot grow the series.
    assert_eq!(value_in(&points, d, &[(m, "_OTHER"), (s, "200")]), 1.0);
    // No response at all.
    assert_eq!(value_in(&points, d, &[(m, "GET"), (e, "_OTHER")]), 1.0);
    assert_eq!(attr_sets(&points, d).len(), 5, "{points:#?}");

    // Every request has ended: nothing is active, per method.
    let active = telemetry::HTTP_SERVER_ACTIVE_REQUESTS;
    assert_eq!(unit_of(&points, active), "{request}");
    for method in ["GET", "POST", "_OTHER"] {
        assert_eq!(value_in(&points, active, &[(m, method)]), 0.0);
    }
}

#[tokio::test]
async fn a_request_in_flight_is_active_until_it_ends_or_is_dropped() {
    let otel = Otel::new();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let rx = std::sync::Arc::new(tokio::sync::Mutex::new(Some(rx)));
    let svc = CorrelationIdLayer::new()
        .meter(otel.meter())
        .layer(service_fn(move |_req: Request<String>| {
            let rx = rx.clone();
            async move {
                if let Some(rx) = rx.lock().await.take() {
                    let _ = rx.await;
                }
                Ok::<_, Infallible>(Response::new(String::new()))
            }
        }));
    let active = telemetry::HTTP_SERVER_ACTIVE_REQUESTS;
    let get = [(a::HTTP_REQUEST_METHOD, "GET")];
    let waiting = tokio::spawn(svc.clone().oneshot(request(Method::GET, "/")));
    tokio::task::yield_now().await;
    while otel.value(active, &get) == 0.0 {
        tokio::task::yield_now().await;
    }
    assert_eq!(otel.value(active, &get), 1.0);
    tx.send(()).unwrap();
    waiting.await.unwrap().unwrap();
    assert_eq!(otel.value(active, &get), 0.0);

    // A future dropped before its response (a client gone) ends as active, and records no
    // duration.
    let (_tx2, rx2) = tokio::sync::oneshot::channel::<()>();
    let rx2 = std::sync::Arc::new(tokio::sync::Mutex::new(Some(rx2)));
    let svc = CorrelationIdLayer::new()
        .meter(otel.meter())
        .layer(service_fn(move |_req: Request<String>| {
            let rx = rx2.clone();
            async move {
                if let Some(rx) = rx.lock().await.take() {
                    let _ = rx.await;
                }
                Ok::<_, Infallible>(Response::new(String::new()))
            }
        }));
    let mut future = Box::pin(svc.oneshot(request(Method::GET, "/")));
    assert!(futures_poll_once(future.as_mut()).await.is_none());
    assert_eq!(otel.value(active, &get), 1.0);
    drop(future);
    assert_eq!(otel.value(active, &get), 0.0);
    let points = otel.points();
    assert_eq!(
        value_in(
            &points,
            telemetry::HTTP_SERVER_REQUEST_DURATION,
            &[
                (a::HTTP_REQUEST_METHOD, "GET"),
                (a::HTTP_RESPONSE_STATUS_CODE, "200")
            ]
        ),
        1.0,
        "only the first request completed"
    );
}

/// Polls `f` once.
async fn futures_poll_once<F: std::future::Future + Unpin>(mut f: F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

#[tokio::test]
async fn axum_routes_are_the_matched_templates_never_the_paths() {
    use axum::Router;
    use axum::routing::get;
    let otel = Otel::new();
    let app = Router::new()
        .route("/users/{id}", get(|| async { "user" }))
        .layer(CorrelationIdLayer::new().meter(otel.meter()));
    for id in ["1", "2", "3"] {
        let req = Request::get(format!("/users/{id}"))
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(app.clone().oneshot(req).await.unwrap().status(), 200);
    }
    let req = Request::get("/nowhere")
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(app.clone().oneshot(req).await.unwrap().status(), 404);

    let points = otel.points();
    let d = telemetry::HTTP_SERVER_REQUEST_DURATION;
    let m = a::HTTP_REQUEST_METHOD;
    let s = a::HTTP_RESPONSE_STATUS_CODE;
    assert_eq!(
        value_in(
            &points,
            d,
            &[(m, "GET"), (s, "200"), (a::HTTP_ROUTE, "/users/{id}")]
        ),
        3.0
    );
    // No route matched: no `http.route` (never the path).
    assert_eq!(value_in(&points, d, &[(m, "GET"), (s, "404")]), 1.0);
}

fn rl_points_layer(otel: &Otel, shadow: bool) -> RateLimitLayer {
    RateLimitLayer::builder()
        .quota("ip", Quota::per_minute(5), Key::peer_ip())
        .quota("all", Quota::per_minute(100), Key::global())
        .shadow(shadow)
        .meter(otel.meter())
        .build()
        .unwrap()
}

#[tokio::test]
async fn rate_limit_decisions_by_quota_and_result() {
    let otel = Otel::new();
    let layer = rl_points_layer(&otel, false);
    let mut svc = limited(&layer);
    for _ in 0..7 {
        send(&mut svc, req_from("192.0.2.1:1")).await;
    }
    send(&mut svc, req_from("192.0.2.2:1")).await;

    let points = otel.points();
    let n = telemetry::RATE_LIMIT_DECISIONS;
    assert_eq!(n, "rampart.rate_limit.decisions");
    assert_eq!(unit_of(&points, n), "{decision}");
    let p = a::RATE_LIMIT_POLICY;
    let r = a::RATE_LIMIT_RESULT;
    assert_eq!(value_in(&points, n, &[(p, "ip"), (r, "allowed")]), 6.0);
    assert_eq!(value_in(&points, n, &[(p, "all"), (r, "allowed")]), 6.0);
    assert_eq!(value_in(&points, n, &[(p, "ip"), (r, "rejected")]), 2.0);
    // "all" admitted the two refused requests: not counted under it.
    assert_eq!(attr_sets(&points, n).len(), 3, "{points:#?}");
    // No client key in any attribute.
    for p in &points {
        for v in p.attrs.values() {
            assert!(!v.contains("192.0.2"), "{p:?}");
        }
    }

    // 5 per minute, near at 80 %: the admissions leaving 1 and 0 of "ip".
    let near = telemetry::RATE_LIMIT_NEAR_LIMIT;
    assert_eq!(value_in(&points, near, &[(p, "ip")]), 2.0);
    assert_eq!(value_in(&points, near, &[(p, "all")]), 0.0);

    // Every backend verdict timed, by backend.
    let d = telemetry::RATE_LIMIT_DECISION_DURATION;
    assert_eq!(unit_of(&points, d), "s");
    assert_eq!(
        value_in(&points, d, &[(a::RATE_LIMIT_BACKEND, "memory")]),
        8.0
    );
    // The layer's own counters agree.
    let m = layer.metrics();
    assert_eq!((m.allowed, m.denied), (6, 2));
}

#[tokio::test]
async fn shadow_mode_counts_would_be_refusals() {
    let otel = Otel::new();
    let layer = rl_points_layer(&otel, true);
    let mut svc = limited(&layer);
    for _ in 0..7 {
        assert_eq!(
            send(&mut svc, req_from("192.0.2.1:1")).await.0,
            StatusCode::OK
        );
    }
    let points = otel.points();
    let n = telemetry::RATE_LIMIT_DECISIONS;
    let p = a::RATE_LIMIT_POLICY;
    let r = a::RATE_LIMIT_RESULT;
    assert_eq!(value_in(&points, n, &[(p, "ip"), (r, "allowed")]), 5.0);
    assert_eq!(
        value_in(&points, n, &[(p, "ip"), (r, "shadow_rejected")]),
        2.0
    );
}

#[tokio::test]
async fn the_near_limit_share_is_configurable_and_checked() {
    let otel = Otel::new();
    let layer = RateLimitLayer::builder()
        .quota("ip", Quota::per_minute(10), Key::peer_ip())
        .near_limit(0.5)
        .meter(otel.meter())
        .build()
        .unwrap();
    let mut svc = limited(&layer);
    for _ in 0..10 {
        send(&mut svc, req_from("192.0.2.1:1")).await;
    }
    // Admissions 5 to 10 leave at most half.
    let near = telemetry::RATE_LIMIT_NEAR_LIMIT;
    assert_eq!(otel.value(near, &[(a::RATE_LIMIT_POLICY, "ip")]), 6.0);

    for share in [-0.1, 1.5, f64::NAN] {
        let err = RateLimitLayer::builder()
            .quota("ip", Quota::per_minute(10), Key::peer_ip())
            .near_limit(share)
            .build()
            .unwrap_err();
        assert_eq!(
            err,
            tower_rampart::rate_limit::RateLimitConfigError::NearLimitShare
        );
    }
}

/// With the feature on and no provider installed (the global one is the API's no-op), the
/// layers work as without it.
#[tokio::test]
async fn without_a_provider_the_layers_work_and_record_nothing() {
    let limits = RateLimitLayer::builder()
        .quota("ip", Quota::per_minute(1), Key::peer_ip())
        .build()
        .unwrap();
    let svc = CorrelationIdLayer::new().layer(limited(&limits));
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let resp = svc.clone().oneshot(req_from("192.0.2.1:1")).await.unwrap();
        assert!(resp.headers().contains_key("x-correlation-id"));
        statuses.push(resp.status());
    }
    assert_eq!(statuses, [StatusCode::OK, StatusCode::TOO_MANY_REQUESTS]);
}

#[tokio::test]
async fn session_store_calls_conflicts_skipped_saves_and_503s() {
    use session_common::{App, builder, routes};
    use std::sync::Arc;
    use std::sync::atomic::Ordering::SeqCst;
    use tower_rampart::session::MemoryStore;

    let otel = Otel::new();
    let app = App::with(
        Arc::new(MemoryStore::new()),
        builder().meter(otel.meter()),
        routes(),
    );
    // create (no cookie yet), then load + save.
    let old = app.new_session().await;
    assert_eq!(app.post("/set/a/1", Some(&old)).await.status, 200);
    // A change on a 5xx is not saved.
    assert_eq!(app.post("/fail/b/2", Some(&old)).await.status, 500);
    // A login (cycle) with a concurrent write to the old session: conflict, merged.
    let (reached, release) = app.faults.hold_next_create();
    let login = {
        let (app, old) = (app.clone(), old.clone());
        tokio::spawn(async move { app.post("/login/u1", Some(&old)).await })
    };
    reached.notified().await;
    assert_eq!(app.post("/set/late/1", Some(&old)).await.status, 200);
    release.notify_one();
    let new = login.await.unwrap().cookie().expect("a new id");
    // The store fails: 503.
    app.faults.fail_delete.store(true, SeqCst);
    assert_eq!(app.post("/logout", Some(&new)).await.status, 503);

    let points = otel.points();
    let d = telemetry::SESSION_STORE_DURATION;
    assert_eq!(unit_of(&points, d), "s");
    let op = a::SESSION_OPERATION;
    let out = a::SESSION_OUTCOME;
    // new_session, login's new record.
    assert_eq!(value_in(&points, d, &[(op, "create"), (out, "ok")]), 2.0);
    // /set/a, /fail, /login, /set/late (a logout deletes without loading).
    assert_eq!(value_in(&points, d, &[(op, "load"), (out, "ok")]), 4.0);
    // /set/a, /set/late, and the login's merge into its new record.
    assert_eq!(value_in(&points, d, &[(op, "save"), (out, "ok")]), 3.0);
    // The login's delete of the old record: refused once (a conflict), then done.
    assert_eq!(value_in(&points, d, &[(op, "delete"), (out, "ok")]), 2.0);
    assert_eq!(value_in(&points, d, &[(op, "delete"), (out, "error")]), 1.0);
    let c = telemetry::SESSION_CONFLICTS;
    assert_eq!(
        value_in(&points, c, &[(a::SESSION_RESOLUTION, "merged")]),
        1.0
    );
    assert_eq!(
        value_in(&points, telemetry::SESSION_SAVES_SKIPPED, &[]),
        1.0
    );
    assert_eq!(value_in(&points, telemetry::SESSION_UNAVAILABLE, &[]), 1.0);
    // No session id or key in any attribute.
    for p in &points {
        assert!(p.attrs.keys().all(|k| !k.contains("id")), "{p:?}");
    }
}

/// Every metric name the crate defines is in the docs' table, once, and every point the
/// tests of this file observe has the name and unit the table gives.
#[tokio::test]
async fn the_documented_table_is_what_is_recorded() {
    let table = documented();
    let mut names: Vec<&str> = table.iter().map(|r| r.0.as_str()).collect();
    names.sort_unstable();
    let mut defined = vec![
        telemetry::HTTP_SERVER_REQUEST_DURATION,
        telemetry::HTTP_SERVER_ACTIVE_REQUESTS,
        telemetry::RATE_LIMIT_DECISIONS,
        telemetry::RATE_LIMIT_NEAR_LIMIT,
        telemetry::RATE_LIMIT_DECISION_DURATION,
        telemetry::RATE_LIMIT_DENY_CACHE_HITS,
        telemetry::RATE_LIMIT_SCRIPT_CALLS,
        telemetry::RATE_LIMIT_SCRIPT_DECISIONS,
        telemetry::SESSION_STORE_DURATION,
        telemetry::SESSION_CONFLICTS,
        telemetry::SESSION_SAVES_SKIPPED,
        telemetry::SESSION_UNAVAILABLE,
        telemetry::REDIS_COMMAND_DURATION,
        telemetry::REDIS_ERRORS,
        telemetry::REDIS_RECONNECTS,
        telemetry::REDIS_BREAKER_STATE,
        telemetry::REDIS_BREAKER_TRANSITIONS,
    ];
    defined.sort_unstable();
    assert_eq!(names, defined);

    // Points of the memory-backed layers: HTTP, rate limit, sessions.
    use std::sync::Arc;
    use tower_rampart::session::MemoryStore;
    let otel = Otel::new();
    let limits = RateLimitLayer::builder()
        .quota("ip", Quota::per_minute(1), Key::peer_ip())
        .meter(otel.meter())
        .build()
        .unwrap();
    let svc = CorrelationIdLayer::new()
        .meter(otel.meter())
        .layer(limited(&limits));
    for _ in 0..2 {
        svc.clone().oneshot(req_from("192.0.2.1:1")).await.unwrap();
    }
    let app = session_common::App::with(
        Arc::new(MemoryStore::new()),
        session_common::builder().meter(otel.meter()),
        session_common::routes(),
    );
    let cookie = app.new_session().await;
    app.post("/fail/b/2", Some(&cookie)).await;
    let points = otel.points();
    let mut seen = std::collections::BTreeSet::new();
    for p in &points {
        let row = table
            .iter()
            .find(|r| r.0 == p.name)
            .unwrap_or_else(|| panic!("{} is not in the table", p.name));
        assert_eq!(row.2, p.unit, "{}", p.name);
        seen.insert(p.name.clone());
    }
    assert!(seen.len() >= 6, "{seen:?}");
}
