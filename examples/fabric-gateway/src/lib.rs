//! The reference server of tower-rampart: an HTTP API that signs a browser user in and
//! asks a Microsoft Fabric Data Agent their questions, built on the crate's own layers.
//!
//! Modules:
//! - [`config`]: configuration from the environment, validated at start-up;
//! - [`auth`]: access-token validation against a JWKS, and the development identity;
//! - [`fabric`]: the data agent client (MCP and the older assistants protocol);
//! - [`fake_agent`]: an in-memory data agent speaking both protocols, for local mode and tests;
//! - [`app`](mod@app): the running service; [`app()`] builds its router and layer stack
//!   ([`app_with_clock`] on an injected clock, for tests);
//! - [`logging`]: JSON (production) or human-readable log lines;
//! - [`metrics`]: the gateway's metrics (one table of names) and the Prometheus endpoint
//!   (`METRICS_ADDR`), and the one meter provider behind every export;
//! - [`appinsights`]: the metric exporter to Application Insights
//!   (`APPLICATIONINSIGHTS_CONNECTION_STRING`);
//! - [`otel`]: OTLP export of traces and metrics (`OTEL_EXPORTER_OTLP_ENDPOINT`) and W3C
//!   trace context.
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    rust_2018_idioms
)]

pub mod app;
pub mod appinsights;
pub mod auth;
pub mod config;
pub mod fabric;
pub mod fake_agent;
pub mod logging;
pub mod metrics;
pub mod otel;
mod outbound;
mod utc;

pub use app::{App, AppHandle, StartError, app, app_with_clock};
