//! Helpers shared by the rate limit integration tests (memory and Redis backends): an echo
//! handler reporting the decision, request builders, and a response reduced to what the
//! tests compare.
#![allow(dead_code)]

pub mod accounting;
#[cfg(feature = "redis")]
pub mod replay;
#[cfg(feature = "session")]
pub mod user;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_rampart::net::PeerAddr;
use tower_rampart::rate_limit::{
    RateLimitBody, RateLimitDecision, RateLimitLayer, RateLimitService,
};

/// A fixed start for the manual clocks (November 2023, in µs).
pub const T0: u64 = 1_700_000_000_000_000;

/// Status, headers and body of a response.
pub type Resp = (StatusCode, HeaderMap, String);

/// The limited service's response.
pub type LimitedResponse = Response<RateLimitBody<Full<Bytes>>>;

/// A handler answering with the remaining count the decision reports (`-` when it reports
/// none), followed by ` degraded` when the decision was made without the backend.
pub fn echo_service()
-> impl Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    service_fn(|req: Request<Full<Bytes>>| async move {
        let d = req.extensions().get::<RateLimitDecision>();
        let degraded = d.is_some_and(RateLimitDecision::is_degraded);
        let remaining = d
            .and_then(RateLimitDecision::remaining)
            .map_or("-".to_owned(), |r| r.to_string());
        let body = format!("{remaining}{}", if degraded { " degraded" } else { "" });
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
    })
}

/// `layer` in front of [`echo_service`].
pub fn limited(
    layer: &RateLimitLayer,
) -> RateLimitService<
    impl Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future: Send,
    > + Clone
    + Send
    + 'static,
> {
    layer.layer(echo_service())
}

/// A request from the peer address `peer` (`ip:port`).
pub fn req_from(peer: &str) -> Request<Full<Bytes>> {
    req_with(peer, &[])
}

/// A request from `peer` carrying `headers`.
pub fn req_with(peer: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(Bytes::new()));
    let addr: SocketAddr = peer.parse().unwrap();
    req.extensions_mut().insert(PeerAddr(addr));
    for &(name, value) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    req
}

/// The request's cost: its `x-cost` header, 1 without one.
pub fn cost_header(req: &Request<()>) -> u64 {
    req.headers()
        .get("x-cost")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(1)
}

/// Sends `req` through `svc` and reads the whole response.
pub async fn send<S>(svc: &mut S, req: Request<Full<Bytes>>) -> Resp
where
    S: Service<Request<Full<Bytes>>, Response = LimitedResponse, Error = Infallible>,
{
    read(svc.ready().await.unwrap().call(req).await.unwrap()).await
}

/// Only the status of [`send`]'s response.
pub async fn status_of<S>(svc: &mut S, req: Request<Full<Bytes>>) -> StatusCode
where
    S: Service<Request<Full<Bytes>>, Response = LimitedResponse, Error = Infallible>,
{
    send(svc, req).await.0
}

/// The check of a request refused by its second quota, on any backend: from one address
/// (quota "ip", 5 a minute) user `alice` (quota "user", 2) is admitted twice, then refused
/// `refusals` times by the user quota alone (`RateLimit` is then `user_ratelimit`); those
/// refusals consumed nothing of the address quota, which has 3 units left for other users.
/// Returns the refusals.
pub async fn refused_by_the_second_quota<S>(
    svc: &mut S,
    refusals: usize,
    user_ratelimit: &str,
) -> Vec<Resp>
where
    S: Service<Request<Full<Bytes>>, Response = LimitedResponse, Error = Infallible>,
{
    let with_user = |user: &str| req_with("203.0.113.5:1", &[("x-user", user)]);
    for _ in 0..2 {
        assert_eq!(status_of(svc, with_user("alice")).await, StatusCode::OK);
    }
    let mut refused = Vec::new();
    for _ in 0..refusals {
        let r = send(svc, with_user("alice")).await;
        assert_eq!(r.0, StatusCode::TOO_MANY_REQUESTS);
        // Only the refusing quota is reported in RateLimit.
        assert_eq!(header(&r.1, "ratelimit"), user_ratelimit);
        refused.push(r);
    }
    for (left, user) in [(2, "bob"), (1, "carol"), (0, "dave")] {
        let (status, h, _) = send(svc, with_user(user)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(header(&h, "ratelimit").starts_with(&format!(r#""ip";r={left};t=60"#)));
    }
    refused
}

/// Reads the whole of `resp`.
pub async fn read(resp: LimitedResponse) -> Resp {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

/// Every value of header `name`, joined with ` | ` (empty when absent).
pub fn header(h: &HeaderMap, name: &str) -> String {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join(" | ")
}
