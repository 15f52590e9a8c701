//! # tower-rampart
//!
//! Tower middleware that takes a web service from "works on my laptop" to "safe to run as
//! many instances behind a load balancer". Each layer is independent and works in any
//! tower-based server (axum, tonic, plain hyper); together they give a service:
//!
//! | layer | module | what it does |
//! |---|---|---|
//! | correlation id | [`correlation`] | validates or mints a request id, puts it on every log event (a `tracing` span), echoes it, forwards it to other services |
//! | cookie policy | [`cookie_policy`] | rewrites every `Set-Cookie` the service sends: `HttpOnly`, `Secure`, `SameSite`, prefix rules, lifetime caps; contradictions fail at build |
//! | rate limit | [`rate_limit`] | per client IP (through trusted proxies) and per session, in memory or shared through Redis |
//! | sessions | [`session`] | a session store shared by every instance (Redis), or in memory; no lost updates, logout always wins |
//!
//! plus [`redis`], the one Redis connection the stores and the limiter share, and
//! [`net`], client addresses through trusted proxies.
//!
//! ## Recommended order
//!
//! Outermost first, as the reference server `fabric-gateway` stacks them:
//!
//! 1. [`correlation::CorrelationIdLayer`]: first, so that everything below, including
//!    the other layers' own log lines and rejections, carries the request's id;
//! 2. [`cookie_policy::CookiePolicyLayer`]: sees every `Set-Cookie`, including the session
//!    cookie set by the session layer;
//! 3. the rate limiter: refuses abusive traffic before it costs a session store round trip;
//! 4. the session layer, then your handlers.
//!
//! With `tower::ServiceBuilder` (or axum's `Router::layer`, which applies layers in the
//! opposite order), the first layer added is the outermost:
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_rampart::cookie_policy::{CookiePolicy, CookiePolicyLayer};
//! use tower_rampart::correlation::CorrelationIdLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let service = ServiceBuilder::new()
//!     .layer(CorrelationIdLayer::new())
//!     .layer(CookiePolicyLayer::new(CookiePolicy::strict()))
//!     .service(service_fn(|_req: Request<String>| async {
//!         let response = Response::builder()
//!             .header("set-cookie", "theme=dark")
//!             .body(String::new())
//!             .unwrap();
//!         Ok::<_, Infallible>(response)
//!     }));
//!
//! let response = service.oneshot(Request::new(String::new())).await.unwrap();
//! let cookie = response.headers()["set-cookie"].to_str().unwrap();
//! assert!(cookie.contains("HttpOnly") && cookie.contains("Secure"));
//! assert!(response.headers().contains_key("x-correlation-id"));
//! # }
//! ```
//!
//! ## Features
//!
//! | feature | default | enables |
//! |---|---|---|
//! | `correlation-id` | yes | [`correlation`] |
//! | `cookie-policy` | yes | [`cookie_policy`], [`net`] |
//! | `session` | yes | [`session`] with the in-memory store |
//! | `rate-limit` | yes | [`rate_limit`] with the in-memory backend, [`net`] |
//! | `redis` | no | [`redis`], and the Redis backends of the enabled layers |
//! | `axum` | no | axum extractors (`Session`, `CorrelationId`), and reading axum's `ConnectInfo` for client addresses |
//! | `tonic` | no | reading tonic's `TcpConnectInfo` for client addresses |
//! | `opentelemetry` | no | OpenTelemetry metrics from the enabled layers ([`telemetry`]: the names, and where the meter comes from), and W3C trace context in and out of the correlation layers (`correlation`); nothing is recorded or propagated unless the application installs a meter provider, a propagator and a `tracing` bridge |
//! | `full` | no | all of the above |
//! | `testing` | no | `session::store::testing`: the conformance suite a session store of your own can run |
//!
//! Memory-only users do not compile the Redis client.
//!
//! ## Time
//!
//! Everything that depends on time reads a [`clock::Clock`], so windows, expiry and
//! retry times are tested on a [`clock::ManualClock`] instead of by sleeping.
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    rust_2018_idioms
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod clock;

#[cfg(any(feature = "session", feature = "rate-limit"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "session", feature = "rate-limit"))))]
pub mod body;

#[cfg(feature = "correlation-id")]
#[cfg_attr(docsrs, doc(cfg(feature = "correlation-id")))]
pub mod correlation;

#[cfg(feature = "cookie-policy")]
#[cfg_attr(docsrs, doc(cfg(feature = "cookie-policy")))]
pub mod cookie_policy;

#[cfg(any(feature = "cookie-policy", feature = "rate-limit"))]
#[cfg_attr(
    docsrs,
    doc(cfg(any(feature = "cookie-policy", feature = "rate-limit")))
)]
pub mod net;

#[cfg(any(feature = "session", feature = "cookie-policy"))]
mod same_site;

#[cfg(any(feature = "session", feature = "cookie-policy", feature = "rate-limit"))]
mod token;

#[cfg(any(feature = "session", feature = "rate-limit"))]
mod digest;

#[cfg(any(feature = "correlation-id", feature = "rate-limit"))]
mod lasting;

#[cfg(all(feature = "axum", any(feature = "session", feature = "correlation-id")))]
mod axum_extract;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;

#[cfg(feature = "session")]
#[cfg_attr(docsrs, doc(cfg(feature = "session")))]
pub mod session;

#[cfg(feature = "opentelemetry")]
#[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
pub mod telemetry;

#[cfg(feature = "rate-limit")]
#[cfg_attr(docsrs, doc(cfg(feature = "rate-limit")))]
pub mod rate_limit;
