//! The layer stack of `benches/telemetry.rs` (correlation id, rate limit on the memory
//! backend with a per-IP and a global quota, cookie policy, sessions on the memory store with
//! one session read per request) around a handler, with no OpenTelemetry provider installed,
//! built with or without tower-rampart's `opentelemetry` feature (this crate's feature of the
//! same name). `benches/feature_cost.sh` runs both builds in alternation and compares them.
//!
//! Prints one line: `stack_ns=<median ns per request> bare_ns=<median ns per request>`,
//! medians over `ROUNDS` (default 30) slices of 20 000 requests each, alternating the stack
//! and the bare handler.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use http::{Request, Response, header};
use tower::{Layer, Service, service_fn};
use tower_rampart::cookie_policy::{CookiePolicy, CookiePolicyLayer};
use tower_rampart::correlation::CorrelationIdLayer;
use tower_rampart::net::PeerAddr;
use tower_rampart::rate_limit::{Key, Quota, RateLimitLayer};
use tower_rampart::session::{MemoryStore, Session, SessionConfig, SessionLayer};

/// Polls a future that is ready at once (the memory backends answer synchronously).
fn now<F: Future>(future: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the benchmarked service was not ready at once"),
    }
}

fn handler() -> impl Service<Request<()>, Response = Response<String>, Error = Infallible> + Clone {
    service_fn(|req: Request<()>| async move {
        let body = match req.extensions().get::<Session>().cloned() {
            Some(s) => s.get::<u64>("n").await.unwrap().unwrap_or(0).to_string(),
            None => "hello".to_owned(),
        };
        Ok::<_, Infallible>(Response::new(body))
    })
}

fn request(i: u32, cookie: &str) -> Request<()> {
    let mut req = Request::get("/api/items?page=2")
        .header("x-correlation-id", "bench-1234")
        .header("host", "example.com")
        .header(header::COOKIE, cookie)
        .body(())
        .unwrap();
    let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, (i % 256) as u8));
    req.extensions_mut()
        .insert(PeerAddr(SocketAddr::new(ip, 40000)));
    req
}

/// Nanoseconds per request over `n` requests.
fn slice<S>(svc: &mut S, n: u32, cookie: &str) -> f64
where
    S: Service<Request<()>, Error = Infallible>,
{
    let start = Instant::now();
    for i in 0..n {
        black_box(now(svc.call(request(i, cookie))).unwrap());
    }
    start.elapsed().as_nanos() as f64 / f64::from(n)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(30);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();

    let sessions = SessionLayer::new(
        MemoryStore::new(),
        SessionConfig::builder()
            .key(b"benchmark key, at least thirty-two bytes long")
            .build()
            .unwrap(),
    );
    let mut make = sessions.layer(service_fn(|req: Request<()>| async move {
        let s = req.extensions().get::<Session>().cloned().unwrap();
        s.insert("n", 7u64).await.unwrap();
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    let made = now(make.call(Request::new(()))).unwrap();
    let set_cookie = made.headers()[header::SET_COOKIE].to_str().unwrap();
    let cookie = set_cookie.split(';').next().unwrap().to_owned();

    let limits = RateLimitLayer::builder()
        .quota("ip", Quota::per_minute(1_000_000_000), Key::peer_ip())
        .quota("all", Quota::per_minute(1_000_000_000), Key::global())
        .build()
        .unwrap();
    let mut stack = CorrelationIdLayer::new()
        .layer(limits.layer(
            CookiePolicyLayer::new(CookiePolicy::strict()).layer(sessions.layer(handler())),
        ));
    let mut bare = handler();

    const N: u32 = 20_000;
    slice(&mut stack, N, &cookie);
    slice(&mut bare, N, &cookie);
    let (mut s, mut b) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        s.push(slice(&mut stack, N, &cookie));
        b.push(slice(&mut bare, N, &cookie));
    }
    println!("stack_ns={:.1} bare_ns={:.1}", median(s), median(b));
}
