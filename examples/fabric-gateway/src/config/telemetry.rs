//! The telemetry section: `METRICS_ADDR`, the OTLP exporter's `OTEL_EXPORTER_OTLP_*`,
//! `APPLICATIONINSIGHTS_CONNECTION_STRING` and `OTEL_METRIC_EXPORT_INTERVAL`.

use std::net::SocketAddr;
use std::time::Duration;

use super::Reader;
use crate::appinsights::ConnectionString;

/// What the telemetry section reads.
pub(super) struct Telemetry {
    pub(super) metrics_addr: Option<SocketAddr>,
    pub(super) otlp: Option<OtlpSettings>,
    pub(super) appinsights: Option<ConnectionString>,
    pub(super) metric_export_interval: Option<Duration>,
}

/// Where OTLP export sends traces and metrics (HTTP, protobuf bodies).
///
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is the collector's base URL (`http://collector:4318`): the
/// signals go to `/v1/traces` and `/v1/metrics` under it. `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
/// and `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`, when set, are used as they are (full URLs), and
/// either one alone turns export on for its signal only. `OTEL_SDK_DISABLED=true` turns
/// export off whatever the endpoints say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpSettings {
    /// The traces URL; `None`: traces are not exported.
    pub traces_url: Option<String>,
    /// The metrics URL; `None`: metrics are not exported.
    pub metrics_url: Option<String>,
}

/// The only protocol this build exports with (`OTEL_EXPORTER_OTLP_PROTOCOL`).
const HTTP_PROTOBUF: &str = "http/protobuf";

/// Reads `METRICS_ADDR`: a socket address of its own, never the public one (`bind_addr`).
pub(super) fn read(r: &mut Reader<'_>, bind_addr: SocketAddr) -> Telemetry {
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
    let otlp = read_otlp(r);
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
    // The OpenTelemetry SDK's standard variable (milliseconds), read here too so that an
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
        otlp,
        appinsights,
        metric_export_interval,
    }
}

/// Reads the OTLP endpoints and checks the protocol.
fn read_otlp(r: &mut Reader<'_>) -> Option<OtlpSettings> {
    let mut url = |name: &str| {
        let value = r.get(name)?;
        if value.starts_with("http://") || value.starts_with("https://") {
            Some(value)
        } else {
            r.problem(
                name,
                format!("{value:?} is not an http:// or https:// URL (e.g. http://localhost:4318)"),
            );
            None
        }
    };
    let base = url("OTEL_EXPORTER_OTLP_ENDPOINT");
    let traces = url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    let metrics = url("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT");
    let signal = |own: Option<String>, path: &str| {
        own.or_else(|| {
            base.as_ref()
                .map(|b| format!("{}{path}", b.trim_end_matches('/')))
        })
    };
    let settings = OtlpSettings {
        traces_url: signal(traces, "/v1/traces"),
        metrics_url: signal(metrics, "/v1/metrics"),
    };
    for name in [
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    ] {
        if let Some(protocol) = r.get(name)
            && protocol != HTTP_PROTOBUF
        {
            r.problem(
                name,
                format!(
                    "{protocol:?} is not supported: the gateway exports OTLP over HTTP with \
                     protobuf bodies only ({HTTP_PROTOBUF}; the collector's port 4318)"
                ),
            );
        }
    }
    // The specification's switch: everything configured, nothing exported.
    if r.get("OTEL_SDK_DISABLED")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return None;
    }
    (settings.traces_url.is_some() || settings.metrics_url.is_some()).then_some(settings)
}

/// Whether listening on `a` would collide with listening on `b` (same port, and the same
/// address or either one the unspecified address). Port 0 (any free port) never collides.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}
