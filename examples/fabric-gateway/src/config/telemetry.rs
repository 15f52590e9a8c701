//! The telemetry section: `METRICS_ADDR`, `APPLICATIONINSIGHTS_CONNECTION_STRING`,
//! `OTEL_METRIC_EXPORT_INTERVAL`.

use std::net::SocketAddr;
use std::time::Duration;

use super::Reader;
use crate::appinsights::ConnectionString;

/// What the telemetry section reads.
pub(super) struct Telemetry {
    pub(super) metrics_addr: Option<SocketAddr>,
    pub(super) appinsights: Option<ConnectionString>,
    pub(super) metric_export_interval: Option<Duration>,
}

/// Reads the whole section.
pub(super) fn read(r: &mut Reader<'_>, bind_addr: SocketAddr) -> Telemetry {
    let metrics_addr = read_metrics_addr(r, bind_addr);
    // The error messages never repeat the value: it holds the instrumentation key.
    let appinsights = r
        .get("APPLICATIONINSIGHTS_CONNECTION_STRING")
        .and_then(|value| match ConnectionString::parse(&value) {
            Ok(c) => Some(c),
            Err(message) => {
                r.problem("APPLICATIONINSIGHTS_CONNECTION_STRING", message);
                None
            }
        });
    // The OpenTelemetry SDK's standard variable (milliseconds), read here so that an
    // invalid value stops start-up instead of being ignored.
    let metric_export_interval = r
        .get("OTEL_METRIC_EXPORT_INTERVAL")
        .and_then(|value| match value.parse::<u64>() {
            Ok(ms) if ms > 0 => Some(Duration::from_millis(ms)),
            _ => {
                r.problem(
                    "OTEL_METRIC_EXPORT_INTERVAL",
                    format!("{value:?} is not a positive number of milliseconds like 60000"),
                );
                None
            }
        });
    Telemetry {
        metrics_addr,
        appinsights,
        metric_export_interval,
    }
}

/// Reads `METRICS_ADDR`: a socket address of its own, never the public one (`bind_addr`).
fn read_metrics_addr(r: &mut Reader<'_>, bind_addr: SocketAddr) -> Option<SocketAddr> {
    let metrics_addr = r
        .get("METRICS_ADDR")
        .and_then(|value| match value.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                r.problem(
                    "METRICS_ADDR",
                    format!("{value:?} is not a socket address like 127.0.0.1:9464"),
                );
                None
            }
        });
    if let Some(addr) = metrics_addr
        && overlaps(addr, bind_addr)
    {
        r.problem(
            "METRICS_ADDR",
            format!(
                "{addr} is the public listen address ({bind_addr}): metrics need a listener of their own"
            ),
        );
    }
    metrics_addr
}

/// Whether listening on `a` would collide with listening on `b` (same port, and the same
/// address or either one the unspecified address). Port 0 (any free port) never collides.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}
