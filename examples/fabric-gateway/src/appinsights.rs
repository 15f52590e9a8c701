//! Azure Monitor / Application Insights (`APPLICATIONINSIGHTS_CONNECTION_STRING`): a metric
//! exporter of our own speaking the classic ingestion protocol.
//!
//! # Why our own
//!
//! The maintained exporter, `opentelemetry-application-insights`, is on the OpenTelemetry
//! 0.33 line since its 0.46.0, but that release requires Rust 1.95 (for `sysinfo`, which
//! only its live-metrics feature uses), while the gateway builds with Rust 1.88 (its
//! `rust-version`, and the `rust:1.88` image of its Dockerfile). Its 0.45 is on the 0.32
//! line, which cannot share a meter provider with the library's 0.33 API. Metrics are a
//! small, documented protocol, so the gateway speaks it itself: no new dependency but
//! `flate2` (gzip).
//!
//! Traces are not sent this way: send them over OTLP (`OTEL_EXPORTER_OTLP_ENDPOINT`) to an
//! OpenTelemetry Collector with the `azuremonitor` exporter, or to Azure Monitor's own OTLP
//! ingestion; or, once the gateway moves to Rust 1.95, to the maintained exporter above.
//!
//! # The protocol
//!
//! Every export interval (`OTEL_METRIC_EXPORT_INTERVAL`, milliseconds, 60 s by default),
//! the periodic reader collects the *delta* since the previous export (Application Insights
//! adds up what it receives) and the exporter posts one JSON array of envelopes, gzipped
//! (`Content-Encoding: gzip`), to `{IngestionEndpoint}/v2.1/track`. Each data point is one
//! envelope:
//!
//! ```json
//! {"name": "Microsoft.ApplicationInsights.Metric", "time": "2026-12-05T07:00:00.000000Z",
//!  "iKey": "<InstrumentationKey>", "tags": {"ai.cloud.role": "fabric-gateway", ...},
//!  "data": {"baseType": "MetricData", "baseData": {"ver": 2,
//!    "metrics": [{"name": "rampart.rate_limit.decisions", "kind": 0, "value": 1}],
//!    "properties": {"rampart.rate_limit.policy": "query-user", "rampart.rate_limit.result": "rejected"}}}}
//! ```
//!
//! - counters and gauges: `kind` 0 (a measurement), `value` the delta (counters) or the
//!   last value (gauges, up-down counters);
//! - histograms: `kind` 1 (an aggregation), `value` the sum, with `count`, `min`, `max`;
//! - the data point's attributes become `properties` (the same fixed, non-personal values
//!   as everywhere else); `ai.cloud.role` is the service name (`OTEL_SERVICE_NAME`,
//!   default `fabric-gateway`), `ai.cloud.roleInstance` the host name when known.
//!
//! The answer is read: `200` is success; `206` (some envelopes refused) and any other
//! status are logged as a warning with the counts and the first error message, and the
//! export fails (the SDK logs it too). There is no retry: the next interval sends the next
//! deltas, a failed interval is lost. Each post has a 10 s deadline.
//!
//! The instrumentation key is a secret of sorts (whoever has it can write to the
//! resource): it is never logged, and the connection string's `Debug` hides it.

use std::fmt;
use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use serde_json::{Map, json};

/// Where telemetry goes when the connection string names no `IngestionEndpoint` (the
/// global endpoint of the public cloud).
pub const DEFAULT_INGESTION_ENDPOINT: &str = "https://dc.services.visualstudio.com";
/// The ingestion path, under the endpoint.
pub const TRACK_PATH: &str = "/v2.1/track";
/// Deadline of one post.
const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// An Application Insights connection string
/// (`InstrumentationKey=...;IngestionEndpoint=https://...;...`), the parts the exporter uses.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionString {
    instrumentation_key: String,
    ingestion_endpoint: String,
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionString")
            .field("instrumentation_key", &"<hidden>")
            .field("ingestion_endpoint", &self.ingestion_endpoint)
            .finish()
    }
}

impl ConnectionString {
    /// Parses `key=value` pairs separated by `;` (keys case-insensitive, blanks ignored).
    ///
    /// `InstrumentationKey` is required (a GUID); `IngestionEndpoint` is an `http(s)://` URL
    /// (the default is [`DEFAULT_INGESTION_ENDPOINT`], or `https://dc.{EndpointSuffix}`
    /// when only `EndpointSuffix` is given). `Authorization=AAD` (Entra ID authentication
    /// of the ingestion) is refused: this exporter only sends the key. Other keys
    /// (`LiveEndpoint`, `ApplicationId`, ...) are ignored.
    ///
    /// The error never repeats the key's value.
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut key = None;
        let mut endpoint = None;
        let mut suffix = None;
        for part in value.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((name, v)) = part.split_once('=') else {
                return Err(format!(
                    "expected `Name=value` pairs separated by `;`, found a part without `=` ({} characters)",
                    part.len()
                ));
            };
            let v = v.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "instrumentationkey" => key = Some(v.to_owned()),
                "ingestionendpoint" => endpoint = Some(v.to_owned()),
                "endpointsuffix" => suffix = Some(v.to_owned()),
                "authorization" if v.eq_ignore_ascii_case("aad") => {
                    return Err(
                        "Authorization=AAD (Entra ID authentication) is not supported: use a \
                         connection string with local authentication, or OTLP to a collector"
                            .to_owned(),
                    );
                }
                _ => {}
            }
        }
        let Some(instrumentation_key) = key.filter(|k| !k.is_empty()) else {
            return Err("no InstrumentationKey (copy the connection string from the Application Insights resource's overview page)".to_owned());
        };
        if !is_guid(&instrumentation_key) {
            return Err(format!(
                "the InstrumentationKey is not a GUID ({} characters; expected 36 like 00000000-0000-0000-0000-000000000000)",
                instrumentation_key.len()
            ));
        }
        let ingestion_endpoint = match (endpoint, suffix) {
            (Some(e), _) => e,
            (None, Some(s)) => format!("https://dc.{}", s.trim_start_matches('.')),
            (None, None) => DEFAULT_INGESTION_ENDPOINT.to_owned(),
        };
        let ingestion_endpoint = ingestion_endpoint.trim_end_matches('/').to_owned();
        let host = ingestion_endpoint
            .strip_prefix("https://")
            .or_else(|| ingestion_endpoint.strip_prefix("http://"));
        if host.is_none_or(|h| h.is_empty() || h.contains(char::is_whitespace)) {
            return Err(format!(
                "the IngestionEndpoint {ingestion_endpoint:?} is not an http(s):// URL"
            ));
        }
        Ok(Self {
            instrumentation_key,
            ingestion_endpoint,
        })
    }

    /// The ingestion endpoint, without a trailing `/` (not a secret).
    pub fn ingestion_endpoint(&self) -> &str {
        &self.ingestion_endpoint
    }

    /// The URL envelopes are posted to.
    pub fn track_url(&self) -> String {
        format!("{}{TRACK_PATH}", self.ingestion_endpoint)
    }
}

fn is_guid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// The metric exporter: give it to a `PeriodicReader` of the SDK meter provider.
///
/// Built inside a Tokio runtime: the periodic reader exports from a thread of its own, and
/// the exporter runs each post on that runtime.
pub struct MetricExporter {
    connection: ConnectionString,
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
    role_instance: Option<String>,
}

impl fmt::Debug for MetricExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricExporter")
            .field("connection", &self.connection)
            .finish_non_exhaustive()
    }
}

impl MetricExporter {
    /// An exporter to `connection`'s ingestion endpoint.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn new(connection: ConnectionString) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(POST_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let role_instance = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::env::var("WEBSITE_INSTANCE_ID").ok())
            .filter(|h| !h.is_empty());
        Ok(Self {
            connection,
            client,
            runtime: tokio::runtime::Handle::current(),
            role_instance,
        })
    }

    /// The envelopes of one collection (one per data point), as a JSON array.
    fn envelopes(&self, metrics: &ResourceMetrics) -> Vec<serde_json::Value> {
        let mut tags = Map::new();
        let role = metrics
            .resource()
            .get(&opentelemetry::Key::from_static_str("service.name"))
            .map_or_else(|| "fabric-gateway".to_owned(), |v| v.to_string());
        tags.insert("ai.cloud.role".into(), role.into());
        if let Some(instance) = &self.role_instance {
            tags.insert("ai.cloud.roleInstance".into(), instance.clone().into());
        }
        tags.insert(
            "ai.internal.sdkVersion".into(),
            concat!("rust-fabric-gateway:", env!("CARGO_PKG_VERSION")).into(),
        );
        let mut out = Vec::new();
        for scope in metrics.scope_metrics() {
            for metric in scope.metrics() {
                for (time, point, attributes) in data_points(metric.name(), metric.data()) {
                    out.push(json!({
                        "name": "Microsoft.ApplicationInsights.Metric",
                        "time": rfc3339(time),
                        "iKey": self.connection.instrumentation_key,
                        "tags": tags,
                        "data": {
                            "baseType": "MetricData",
                            "baseData": {
                                "ver": 2,
                                "metrics": [point],
                                "properties": properties(&attributes),
                            }
                        }
                    }));
                }
            }
        }
        out
    }
}

/// `(time, DataPoint JSON, attributes)` of each data point of one metric.
fn data_points(
    name: &str,
    data: &AggregatedMetrics,
) -> Vec<(SystemTime, serde_json::Value, Vec<KeyValue>)> {
    /// A histogram's point as an aggregated `MetricData` point (`kind` 1): the sum as the
    /// value, with the count and, when known, the extremes.
    fn aggregate<T: Into<AsF64>>(
        name: &str,
        sum: T,
        count: impl Into<serde_json::Value>,
        min: Option<T>,
        max: Option<T>,
    ) -> serde_json::Value {
        let mut point = json!({
            "name": name,
            "kind": 1,
            "value": f64::from(sum.into()),
            "count": count.into(),
        });
        if let Some(min) = min {
            point["min"] = f64::from(min.into()).into();
        }
        if let Some(max) = max {
            point["max"] = f64::from(max.into()).into();
        }
        point
    }

    fn of<T: Copy + Into<AsF64>>(
        name: &str,
        data: &MetricData<T>,
    ) -> Vec<(SystemTime, serde_json::Value, Vec<KeyValue>)> {
        let attrs = |it: &mut dyn Iterator<Item = &KeyValue>| it.cloned().collect::<Vec<_>>();
        match data {
            MetricData::Sum(sum) => sum
                .data_points()
                .map(|p| {
                    let value = f64::from(p.value().into());
                    (
                        sum.time(),
                        json!({"name": name, "kind": 0, "value": value}),
                        attrs(&mut p.attributes()),
                    )
                })
                .collect(),
            MetricData::Gauge(gauge) => gauge
                .data_points()
                .map(|p| {
                    let value = f64::from(p.value().into());
                    (
                        gauge.time(),
                        json!({"name": name, "kind": 0, "value": value}),
                        attrs(&mut p.attributes()),
                    )
                })
                .collect(),
            MetricData::Histogram(histogram) => histogram
                .data_points()
                .map(|p| {
                    let point = aggregate(name, p.sum(), p.count(), p.min(), p.max());
                    (histogram.time(), point, attrs(&mut p.attributes()))
                })
                .collect(),
            MetricData::ExponentialHistogram(histogram) => histogram
                .data_points()
                .map(|p| {
                    let point = aggregate(name, p.sum(), p.count(), p.min(), p.max());
                    (histogram.time(), point, attrs(&mut p.attributes()))
                })
                .collect(),
        }
    }
    match data {
        AggregatedMetrics::F64(d) => of(name, d),
        AggregatedMetrics::U64(d) => of(name, d),
        AggregatedMetrics::I64(d) => of(name, d),
    }
}

/// A number as `f64` (counts beyond 2^53 lose precision; irrelevant for telemetry).
#[derive(Clone, Copy)]
struct AsF64(f64);

impl From<AsF64> for f64 {
    fn from(v: AsF64) -> f64 {
        v.0
    }
}
impl From<f64> for AsF64 {
    fn from(v: f64) -> Self {
        Self(v)
    }
}
impl From<u64> for AsF64 {
    #[allow(clippy::cast_precision_loss)]
    fn from(v: u64) -> Self {
        Self(v as f64)
    }
}
impl From<i64> for AsF64 {
    #[allow(clippy::cast_precision_loss)]
    fn from(v: i64) -> Self {
        Self(v as f64)
    }
}

/// The attributes as `properties` (string values, as the schema wants).
fn properties(attributes: &[KeyValue]) -> serde_json::Value {
    let map: Map<String, serde_json::Value> = attributes
        .iter()
        .map(|kv| {
            let value = match &kv.value {
                Value::String(s) => s.as_str().to_owned(),
                other => other.to_string(),
            };
            (kv.key.as_str().to_owned(), value.into())
        })
        .collect();
    serde_json::Value::Object(map)
}

/// `time` as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC).
fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    crate::utc::rfc3339(since.as_secs(), Some(since.subsec_micros()))
}

fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(body)?;
    encoder.finish()
}

impl PushMetricExporter for MetricExporter {
    fn export(
        &self,
        metrics: &ResourceMetrics,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let envelopes = self.envelopes(metrics);
        let request = if envelopes.is_empty() {
            None
        } else {
            let body = serde_json::to_vec(&envelopes).unwrap_or_default();
            Some(gzip(&body).map(|body| {
                self.client
                    .post(self.connection.track_url())
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .header(http::header::CONTENT_ENCODING, "gzip")
                    .body(body)
            }))
        };
        let count = envelopes.len();
        let runtime = self.runtime.clone();
        let endpoint = self.connection.ingestion_endpoint.clone();
        async move {
            let request = match request {
                None => return Ok(()),
                Some(Ok(request)) => request,
                Some(Err(e)) => {
                    return Err(OTelSdkError::InternalFailure(format!("gzip: {e}")));
                }
            };
            // The periodic reader's thread has no reactor: the post runs on the runtime.
            let outcome = runtime
                .spawn(async move {
                    let response = request.send().await.map_err(|e| e.without_url())?;
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    Ok::<_, reqwest::Error>((status, body))
                })
                .await;
            match outcome {
                Ok(Ok((status, _))) if status == http::StatusCode::OK => Ok(()),
                Ok(Ok((status, body))) => {
                    let answer: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    let first_error = answer["errors"][0]["message"].as_str().unwrap_or("");
                    tracing::warn!(
                        endpoint = %endpoint,
                        status = status.as_u16(),
                        sent = count,
                        accepted = answer["itemsAccepted"].as_u64(),
                        first_error,
                        "Application Insights did not accept every metric"
                    );
                    Err(OTelSdkError::InternalFailure(format!(
                        "Application Insights answered {status}"
                    )))
                }
                Ok(Err(e)) => {
                    tracing::warn!(endpoint = %endpoint, error = %e, "cannot send metrics to Application Insights");
                    Err(OTelSdkError::InternalFailure(e.to_string()))
                }
                Err(e) => Err(OTelSdkError::InternalFailure(e.to_string())),
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }

    /// Deltas: Application Insights adds up the values it receives.
    fn temporality(&self) -> Temporality {
        Temporality::Delta
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";

    #[test]
    fn parses_the_portal_format() {
        let c = ConnectionString::parse(&format!(
            "InstrumentationKey={KEY};IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com/;LiveEndpoint=https://westeurope.livediagnostics.monitor.azure.com/;ApplicationId=abc"
        ))
        .unwrap();
        assert_eq!(
            c.track_url(),
            "https://westeurope-5.in.applicationinsights.azure.com/v2.1/track"
        );
        assert!(!format!("{c:?}").contains(KEY));
    }

    #[test]
    fn defaults_and_suffix() {
        let c = ConnectionString::parse(&format!("instrumentationkey={KEY}")).unwrap();
        assert_eq!(c.ingestion_endpoint(), DEFAULT_INGESTION_ENDPOINT);
        let c = ConnectionString::parse(&format!(
            " InstrumentationKey = {KEY} ; EndpointSuffix=applicationinsights.azure.cn ;"
        ))
        .unwrap();
        assert_eq!(
            c.ingestion_endpoint(),
            "https://dc.applicationinsights.azure.cn"
        );
    }

    #[test]
    fn refuses_with_clear_errors_and_no_key_in_them() {
        let bad_key = "not-a-guid-secretish";
        for (value, expected) in [
            ("".to_owned(), "no InstrumentationKey"),
            (
                "IngestionEndpoint=https://x".to_owned(),
                "no InstrumentationKey",
            ),
            (format!("InstrumentationKey={bad_key}"), "not a GUID"),
            (KEY.to_owned(), "without `=`"),
            (
                format!("InstrumentationKey={KEY};IngestionEndpoint=ftp://x"),
                "not an http(s):// URL",
            ),
            (
                format!("InstrumentationKey={KEY};Authorization=AAD"),
                "not supported",
            ),
        ] {
            let e = ConnectionString::parse(&value).unwrap_err();
            assert!(e.contains(expected), "{value}: {e}");
            assert!(!e.contains(KEY) && !e.contains(bad_key), "{e}");
        }
    }

    #[test]
    fn formats_utc_times() {
        let t = UNIX_EPOCH + Duration::from_micros(1_796_454_000_123_456);
        assert_eq!(rfc3339(t), "2026-12-05T07:00:00.123456Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000000Z");
    }
}
