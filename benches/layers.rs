//! Per-request cost of the correlation-id and cookie-policy layers, against a bare
//! `service_fn` measured in the same run.
//!
//! ```text
//! cargo bench --bench layers
//! ```
//!
//! A JSON subscriber writing to a sink is installed, so the correlation layer pays for its
//! span and its access event as it would in production.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderValue, Request, Response};
use tower::{Layer, Service, service_fn};
use tower_rampart::cookie_policy::{CookiePolicy, CookiePolicyLayer};
use tower_rampart::correlation::CorrelationIdLayer;

/// Polls a future that is ready at once (every service here answers synchronously).
fn now<F: Future>(future: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the benchmarked service was not ready at once"),
    }
}

fn request() -> Request<()> {
    Request::get("/api/items?page=2")
        .header("x-correlation-id", "bench-1234")
        .header("host", "example.com")
        .body(())
        .unwrap()
}

fn handler(
    cookies: usize,
) -> impl Service<Request<()>, Response = Response<()>, Error = Infallible> + Clone {
    service_fn(move |_req: Request<()>| async move {
        let mut response = Response::new(());
        for i in 0..cookies {
            response.headers_mut().append(
                "set-cookie",
                HeaderValue::from_str(&format!("c{i}=value{i}; Path=/; Max-Age=3600")).unwrap(),
            );
        }
        Ok::<_, Infallible>(response)
    })
}

fn correlation(c: &mut Criterion) {
    let mut group = c.benchmark_group("correlation");
    let mut bare = handler(0);
    group.bench_function("bare service_fn", |b| {
        b.iter(|| now(bare.call(black_box(request()))).unwrap())
    });
    // The tracing floor: what a request costs when a handler itself opens a span with the
    // same three fields and logs one event in it. The layer's own overhead is measured
    // against this as well as against the bare handler.
    let mut traced = service_fn(|req: Request<()>| async move {
        let span = tracing::info_span!(
            "request",
            correlation_id = "bench-1234",
            method = req.method().as_str(),
            path = req.uri().path(),
        );
        span.in_scope(|| {
            tracing::info!(status = 200u16, latency_ms = 0.01f64, "request completed")
        });
        Ok::<_, Infallible>(Response::new(()))
    });
    group.bench_function("service_fn with one span and one event", |b| {
        b.iter(|| now(traced.call(black_box(request()))).unwrap())
    });
    let mut quiet = CorrelationIdLayer::new()
        .access_log(false)
        .layer(handler(0));
    group.bench_function("with CorrelationIdLayer, access log off", |b| {
        b.iter(|| now(quiet.call(black_box(request()))).unwrap())
    });
    let mut layered = CorrelationIdLayer::new().layer(handler(0));
    group.bench_function("with CorrelationIdLayer (incoming id)", |b| {
        b.iter(|| now(layered.call(black_box(request()))).unwrap())
    });
    group.bench_function("with CorrelationIdLayer (minted UUIDv7)", |b| {
        b.iter(|| {
            let mut req = request();
            req.headers_mut().remove("x-correlation-id");
            now(layered.call(black_box(req))).unwrap()
        })
    });
    group.finish();

    // The layer's own mechanics (validation, headers, extensions, task-local, future), with
    // no subscriber listening: spans and events are then skipped by tracing itself.
    let mut group = c.benchmark_group("correlation_without_subscriber");
    let _guard = tracing::subscriber::set_default(tracing::subscriber::NoSubscriber::default());
    group.bench_function("bare service_fn", |b| {
        b.iter(|| now(bare.call(black_box(request()))).unwrap())
    });
    group.bench_function("with CorrelationIdLayer (incoming id)", |b| {
        b.iter(|| now(layered.call(black_box(request()))).unwrap())
    });
    group.finish();
}

fn cookie_policy(c: &mut Criterion) {
    let mut group = c.benchmark_group("cookie_policy");
    for cookies in [1usize, 5] {
        let mut bare = handler(cookies);
        group.bench_function(format!("bare service_fn, {cookies} cookie(s)"), |b| {
            b.iter(|| now(bare.call(black_box(request()))).unwrap())
        });
        let mut layered = CookiePolicyLayer::new(CookiePolicy::strict()).layer(handler(cookies));
        group.bench_function(
            format!("with CookiePolicyLayer, {cookies} cookie(s)"),
            |b| b.iter(|| now(layered.call(black_box(request()))).unwrap()),
        );
    }
    group.finish();
}

fn install_subscriber() {
    tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_writer(std::io::sink)
        .init();
}

fn benches(c: &mut Criterion) {
    install_subscriber();
    correlation(c);
    cookie_policy(c);
}

criterion_group! {
    name = layers;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = benches
}
criterion_main!(layers);
