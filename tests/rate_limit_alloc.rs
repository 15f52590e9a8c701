//! What the rate limit layer allocates per request on the memory backend, counted with a
//! counting global allocator on this thread. An admitted request costs two allocations more
//! than the bare handler (its `RateLimit` header value and the [`RateLimitDecision`] put in
//! the request), whatever its number of quotas up to three; a refused request (which never
//! reaches the handler) costs five in all (the 429's header map, which takes two, two header
//! values, the body). A quota keyed by a hashed text (a header, a user, a session) adds one:
//! the key's text, assembled on the stack from its digest and copied once. The keys,
//! decisions and per-quota bookkeeping of a request live inline: a change that puts them back
//! on the heap adds at least one allocation per request, which this test sees (before they
//! were inline: 11 for an admitted request, 12 for a refused one, 3 more per hashed key).
#![cfg(feature = "rate-limit")]

mod alloc_common;

use std::convert::Infallible;
use std::time::Duration;

use alloc_common::allocations;
use http::{HeaderValue, Request, Response, StatusCode};
use tower::{Layer, Service, ServiceExt};
use tower_rampart::rate_limit::{Key, Quota, RateLimitDecision, RateLimitLayer};

#[global_allocator]
static GLOBAL: alloc_common::Counting = alloc_common::Counting;

/// A request from one client, with a user header (the key of a second quota).
fn request() -> Request<String> {
    alloc_common::request_with("x-user", "alice")
}

/// A handler answering as a web framework does: a body and a `content-type` header (so the
/// response's header map exists before the layer adds to it).
#[derive(Clone)]
struct Handler;

impl Service<Request<String>> for Handler {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<String>) -> Self::Future {
        let mut resp = Response::new(String::new());
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
        std::future::ready(Ok(resp))
    }
}

/// The fewest allocations over three rounds of 100 requests through `svc` (requests built
/// beforehand, responses dropped afterwards), and the status of the last response. The fewest
/// of three: a per-request allocation shows in every round (+100), a one-off does not.
async fn per_100<S, B>(svc: &mut S) -> (u64, StatusCode)
where
    S: Service<Request<String>, Response = Response<B>, Error = Infallible>,
{
    let mut fewest = u64::MAX;
    let mut status = StatusCode::OK;
    for _ in 0..3 {
        let requests: Vec<_> = (0..100).map(|_| request()).collect();
        let mut responses = Vec::with_capacity(100);
        let before = allocations();
        for req in requests {
            let svc = svc.ready().await.unwrap();
            responses.push(svc.call(req).await.unwrap());
        }
        fewest = fewest.min(allocations() - before);
        status = responses.last().unwrap().status();
    }
    (fewest, status)
}

/// The handler behind a layer of `quotas` (name, quota; the second one keyed by `x-user`,
/// the others by client address), recording that it saw the decision.
fn limited(
    quotas: &[(&str, Quota)],
) -> impl Service<Request<String>, Response = Response<impl Sized>, Error = Infallible> {
    let mut builder = RateLimitLayer::builder();
    for (i, &(name, quota)) in quotas.iter().enumerate() {
        builder = if i == 1 {
            builder.quota(name, quota, Key::header("x-user"))
        } else {
            builder.quota(name, quota, Key::peer_ip())
        };
    }
    let layer = builder.build().unwrap();
    layer.layer(Handler.map_request(|req: Request<String>| {
        assert!(req.extensions().get::<RateLimitDecision>().is_some());
        req
    }))
}

/// A case: its name, its quotas, its budget, the status of its responses.
type Case<'a> = (&'a str, Vec<(&'a str, Quota)>, Budget, StatusCode);

/// What a case may allocate per request.
#[derive(Clone, Copy, Debug)]
enum Budget {
    /// Admitted: at most this many allocations beyond the handler's own.
    BeyondHandler(u64),
    /// Refused (the handler never runs): at most this many in all.
    InAll(u64),
}

#[tokio::test(flavor = "current_thread")]
async fn an_admitted_request_costs_two_allocations_a_refused_one_five_in_all() {
    let (bare, _) = per_100(&mut Handler).await;
    assert!(bare > 0, "the handler's response allocates its header map");
    let open_window = Quota::per_minute(1_000_000_000);
    let open_gcra = Quota::rate(1_000_000_000, Duration::from_secs(60));
    let cases: [Case<'_>; 6] = [
        (
            "window, admitted",
            vec![("ip", open_window)],
            Budget::BeyondHandler(2),
            StatusCode::OK,
        ),
        (
            "GCRA, admitted",
            vec![("ip", open_gcra)],
            Budget::BeyondHandler(2),
            StatusCode::OK,
        ),
        (
            "three quotas (one keyed by a hashed header), admitted",
            vec![
                ("ip", open_window),
                ("user", open_gcra),
                ("all", open_window),
            ],
            Budget::BeyondHandler(3),
            StatusCode::OK,
        ),
        (
            "window, refused",
            vec![("ip", Quota::per_hour(1))],
            Budget::InAll(5),
            StatusCode::TOO_MANY_REQUESTS,
        ),
        (
            "GCRA, refused",
            vec![("ip", Quota::rate(1, Duration::from_secs(3600)))],
            Budget::InAll(5),
            StatusCode::TOO_MANY_REQUESTS,
        ),
        (
            "second of two quotas (a hashed header) refused",
            vec![("ip", open_window), ("user", Quota::per_hour(1))],
            Budget::InAll(6),
            StatusCode::TOO_MANY_REQUESTS,
        ),
    ];
    for (case, quotas, budget, status) in cases {
        let mut svc = limited(&quotas);
        // Warm-up: each key's first decision creates its entry.
        for _ in 0..3 {
            let svc = svc.ready().await.unwrap();
            svc.call(request()).await.unwrap();
        }
        let (spent, seen) = per_100(&mut svc).await;
        assert_eq!(seen, status, "{case}");
        let (allowed, measured) = match budget {
            Budget::BeyondHandler(n) => (bare + 100 * n, spent.saturating_sub(bare)),
            Budget::InAll(n) => (100 * n, spent),
        };
        println!(
            "{case}: {} allocations a request ({budget:?}; the bare handler: {})",
            measured as f64 / 100.0,
            bare as f64 / 100.0
        );
        assert!(
            spent <= allowed,
            "{case}: {} allocations a request, budget {budget:?} (the bare handler: {})",
            measured as f64 / 100.0,
            bare as f64 / 100.0
        );
    }
}
