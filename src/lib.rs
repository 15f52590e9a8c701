//! # tower-rampart
//!
//! Tower middleware that takes a web service from "works on my laptop" to "safe to run as
//! many instances behind a load balancer".
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    rust_2018_idioms
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod clock;

#[cfg(feature = "correlation-id")]
pub mod correlation;

#[cfg(feature = "cookie-policy")]
pub mod cookie_policy;

#[cfg(any(feature = "cookie-policy", feature = "rate-limit"))]
pub mod net;

#[cfg(feature = "redis")]
pub mod redis;

#[cfg(feature = "session")]
pub mod session;

#[cfg(feature = "rate-limit")]
pub mod rate_limit;
