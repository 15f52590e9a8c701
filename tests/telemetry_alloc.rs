//! Recording the metrics allocates nothing per request: after a warm-up, a request through
//! the correlation and rate limit layers costs exactly as many allocations with a real SDK
//! recording it as with no provider installed (the API's no-op instruments). Counted on
//! this thread only, so the SDK's reader thread and other tests do not disturb the count.

mod alloc_common;
mod telemetry_common;

use std::convert::Infallible;

use alloc_common::allocations;
use http::{Request, Response};
use telemetry_common::Otel;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_rampart::correlation::CorrelationIdLayer;
use tower_rampart::rate_limit::{Key, Quota, RateLimitLayer};

#[global_allocator]
static GLOBAL: alloc_common::Counting = alloc_common::Counting;

fn request() -> Request<String> {
    alloc_common::request_with("x-correlation-id", "fixed-id")
}

/// Allocations of `n` requests through `svc` (requests built beforehand).
async fn cost<S>(svc: &mut S, n: usize) -> u64
where
    S: Service<Request<String>, Error = Infallible>,
{
    let requests: Vec<_> = (0..n).map(|_| request()).collect();
    let mut responses = Vec::with_capacity(n);
    let before = allocations();
    for req in requests {
        let svc = svc.ready().await.unwrap();
        responses.push(svc.call(req).await.unwrap());
    }
    let spent = allocations() - before;
    drop(responses);
    spent
}

fn stack(
    correlation: CorrelationIdLayer,
    limits: tower_rampart::rate_limit::RateLimitBuilder,
) -> impl Service<Request<String>, Error = Infallible> {
    let limits = limits
        .quota("ip", Quota::per_minute(1_000_000), Key::peer_ip())
        .build()
        .unwrap();
    correlation.layer(limits.layer(service_fn(|_req: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    })))
}

#[tokio::test(flavor = "current_thread")]
async fn recording_allocates_nothing_per_request() {
    // No provider: the global meter is the API's no-op.
    let mut quiet = stack(CorrelationIdLayer::new(), RateLimitLayer::builder());
    let otel = Otel::new();
    let mut recorded = stack(
        CorrelationIdLayer::new().meter(otel.meter()),
        RateLimitLayer::builder().meter(otel.meter()),
    );
    // Warm-up: the SDK creates each series on its first point; the limiter its key.
    cost(&mut quiet, 10).await;
    cost(&mut recorded, 10).await;

    // The fewest allocations of three rounds each: a per-request allocation shows in every
    // round (+100), while a one-off of the runtime or the allocator under load (seen once on a
    // loaded CI machine: +2 in one round) does not fail the test.
    let (mut quiet_cost, mut recorded_cost) = (u64::MAX, u64::MAX);
    for _ in 0..3 {
        quiet_cost = quiet_cost.min(cost(&mut quiet, 100).await);
        recorded_cost = recorded_cost.min(cost(&mut recorded, 100).await);
    }
    assert_eq!(
        recorded_cost, quiet_cost,
        "allocations for 100 requests (fewest of 3 rounds): {recorded_cost} recorded by the SDK, {quiet_cost} without a provider"
    );
    // And the SDK did record them.
    let points = otel.points();
    assert_eq!(
        telemetry_common::value_in(
            &points,
            tower_rampart::telemetry::HTTP_SERVER_REQUEST_DURATION,
            &[
                ("http.request.method", "GET"),
                ("http.response.status_code", "200")
            ]
        ),
        310.0
    );
}

/// Trace context costs nothing until the application installs a propagator and a bridge:
/// requests carrying a `traceparent` (the correlation layer's continuation) whose handler
/// makes an outgoing call (the client layer's injection) allocate exactly as many times as
/// the same requests without one, and the outgoing call gets no `traceparent`.
#[tokio::test(flavor = "current_thread")]
async fn trace_context_without_a_propagator_allocates_nothing() {
    use tower_rampart::correlation::PropagateCorrelationIdLayer;

    let client =
        PropagateCorrelationIdLayer::new().layer(service_fn(|req: Request<()>| async move {
            assert!(!req.headers().contains_key("traceparent"));
            Ok::<_, Infallible>(Response::new(()))
        }));
    let mut svc = CorrelationIdLayer::new().layer(service_fn(move |_req: Request<String>| {
        let client = client.clone();
        async move {
            client.oneshot(Request::new(())).await?;
            Ok::<_, Infallible>(Response::new(String::new()))
        }
    }));
    let traced = || {
        let mut req = request();
        req.headers_mut().insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        req
    };
    let mut spend = async |make: &dyn Fn() -> Request<String>, n: usize| {
        let requests: Vec<_> = (0..n).map(|_| make()).collect();
        let mut responses = Vec::with_capacity(n);
        let before = allocations();
        for req in requests {
            let svc = svc.ready().await.unwrap();
            responses.push(svc.call(req).await.unwrap());
        }
        allocations() - before
    };
    spend(&request, 10).await;
    spend(&traced, 10).await;
    let plain = spend(&request, 100).await;
    let with_traceparent = spend(&traced, 100).await;
    assert_eq!(
        with_traceparent, plain,
        "allocations for 100 requests: {with_traceparent} with a traceparent, {plain} without"
    );
}
