//! OTLP export of traces and metrics (`OTEL_EXPORTER_OTLP_ENDPOINT`), and W3C trace context.
//!
//! With an OTLP endpoint configured ([`OtlpSettings`](crate::config::OtlpSettings)), [`install`] (once per process):
//!
//! - installs the W3C `TraceContextPropagator` as the global propagator, so the
//!   correlation layer continues an incoming `traceparent`/`tracestate` and the calls to
//!   the data agent and the identity keys carry the request's trace context;
//! - installs an SDK tracer provider exporting spans in batches to `/v1/traces`; the
//!   logging subscriber bridges the gateway's `tracing` spans to it with
//!   `tracing-opentelemetry` ([`tracer`], [`logging::subscriber_with_traces`]): the
//!   correlation layer's `request` span is the server span, with `correlation_id`, `method`
//!   and `path` as attributes;
//! - adds a periodic OTLP reader (every `OTEL_METRIC_EXPORT_INTERVAL` ms, 60 s by default)
//!   to the process's one meter provider, beside the Prometheus reader when `METRICS_ADDR`
//!   is set too ([`crate::metrics`]).
//!
//! The exporters speak OTLP over HTTP with protobuf bodies (`http/protobuf`, the
//! collector's port 4318), through the gateway's own reqwest (its blocking client, on the
//! SDK's export threads): no gRPC stack, no second HTTP client. The SDK reads the other
//! standard variables from the process environment: `OTEL_SERVICE_NAME` (default here
//! `fabric-gateway`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS` (for a
//! collector's API key), `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_TRACES_SAMPLER(_ARG)`,
//! `OTEL_BSP_*`, `OTEL_METRIC_EXPORT_INTERVAL`.
//!
//! Unset, nothing is installed: no propagator (incoming `traceparent` only feeds the
//! correlation id, as before), no bridge layer in the subscriber, no exporter thread.
//!
//! [`shutdown`] flushes what is pending; `main` calls it on the way out.
//!
//! [`logging::subscriber_with_traces`]: crate::logging::subscriber_with_traces

use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::metrics::PeriodicReader;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

use crate::config::Config;
use crate::metrics::{self, METER_NAME};

/// The tracer provider, installed once per process (never dropped: the exporter's HTTP
/// client must not be dropped on a runtime thread).
static TRACES: OnceLock<SdkTracerProvider> = OnceLock::new();

/// OTLP export could not be set up.
#[derive(Debug)]
pub struct OtlpError(String);

impl fmt::Display for OtlpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot set up OTLP export: {}", self.0)
    }
}

impl std::error::Error for OtlpError {}

/// Installs the process's telemetry for `config`, once per process: the meter provider
/// (Prometheus, OTLP and/or Application Insights readers) and, with an OTLP traces
/// endpoint, the propagator and the tracer provider. Nothing when none of `METRICS_ADDR`,
/// an OTLP endpoint and `APPLICATIONINSIGHTS_CONNECTION_STRING` is set.
///
/// Call it before the logging subscriber is built (the bridge needs [`tracer`]) and before
/// anything creates instruments; `app()` calls it too, which is then a no-op.
pub fn install(config: &Config) -> Result<(), OtlpError> {
    let otlp = config.otlp.as_ref();
    if let Some(url) = otlp.and_then(|o| o.traces_url.as_deref()) {
        install_traces(url)?;
    }
    let reader = match otlp.and_then(|o| o.metrics_url.as_deref()) {
        Some(url) => Some(metric_reader(url)?),
        None => None,
    };
    // Application Insights (`APPLICATIONINSIGHTS_CONNECTION_STRING`): one more reader.
    let appinsights = metrics::appinsights_reader(config).map_err(|e| OtlpError(e.to_string()))?;
    if config.metrics_addr.is_some() || reader.is_some() || appinsights.is_some() {
        metrics::install_meter_provider(config.metrics_addr.is_some(), reader, appinsights)
            .map_err(|e| OtlpError(e.to_string()))?;
    }
    Ok(())
}

/// The tracer for the logging subscriber's bridge; `None` unless traces are exported.
pub fn tracer() -> Option<SdkTracer> {
    TRACES.get().map(|p| p.tracer(METER_NAME))
}

/// Exports what is pending (spans in the batch, the meter provider's current values) and
/// waits for it. For tests and for [`shutdown`].
pub fn force_flush() {
    if let Some(provider) = TRACES.get()
        && let Err(e) = provider.force_flush()
    {
        tracing::warn!(error = %e, "OTLP: flushing the spans failed");
    }
    metrics::force_flush();
}

/// Flushes and stops the exporters (at exit); blocking, so run off the async threads.
pub async fn shutdown() {
    let done = tokio::task::spawn_blocking(|| {
        if let Some(provider) = TRACES.get()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("fabric-gateway: OTLP: flushing the spans at exit failed: {e}");
        }
        metrics::shutdown();
    });
    let _ = done.await;
}

fn install_traces(url: &str) -> Result<(), OtlpError> {
    if TRACES.get().is_some() {
        return Ok(());
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(BlockingClient::new()?)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .build()
        .map_err(|e| OtlpError(format!("traces exporter: {e}")))?;
    let provider = SdkTracerProvider::builder()
        .with_resource(metrics::resource())
        .with_batch_exporter(exporter)
        .build();
    let mut installed = false;
    let provider = TRACES.get_or_init(|| {
        installed = true;
        provider
    });
    if installed {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        opentelemetry::global::set_tracer_provider(provider.clone());
    }
    Ok(())
}

fn metric_reader(
    url: &str,
) -> Result<PeriodicReader<opentelemetry_otlp::MetricExporter>, OtlpError> {
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_http_client(BlockingClient::new()?)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .build()
        .map_err(|e| OtlpError(format!("metrics exporter: {e}")))?;
    Ok(PeriodicReader::builder(exporter).build())
}

/// reqwest's blocking client as the exporters' HTTP client. The SDK exports from threads
/// of its own (batch span processor, periodic reader), where a blocking call is fine; the
/// gateway's reqwest (ring-based rustls) is reused rather than the exporter's own client
/// features, which would bring a second reqwest major version.
#[derive(Clone, Debug)]
struct BlockingClient(reqwest::blocking::Client);

/// The longest an export request may take, unless `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds)
/// says otherwise: the specification's default.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// `OTEL_EXPORTER_OTLP_TIMEOUT` from the process environment (a custom client applies it
/// itself), else [`EXPORT_TIMEOUT`].
fn export_timeout() -> Duration {
    std::env::var("OTEL_EXPORTER_OTLP_TIMEOUT")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map_or(EXPORT_TIMEOUT, Duration::from_millis)
}

impl BlockingClient {
    /// Built on a thread of its own: reqwest's blocking client cannot be created on a Tokio
    /// runtime thread.
    fn new() -> Result<Self, OtlpError> {
        let timeout = export_timeout();
        std::thread::spawn(move || {
            reqwest::blocking::Client::builder()
                .timeout(timeout)
                .build()
        })
        .join()
        .map_err(|_| OtlpError("building the HTTP client panicked".to_owned()))?
        .map(Self)
        .map_err(|e| OtlpError(format!("HTTP client: {e}")))
    }
}

#[async_trait::async_trait]
impl HttpClient for BlockingClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let request = reqwest::blocking::Request::try_from(request)?;
        let response = self.0.execute(request)?;
        let mut builder = http::Response::builder().status(response.status());
        if let Some(headers) = builder.headers_mut() {
            headers.extend(response.headers().clone());
        }
        let body = response.bytes()?;
        Ok(builder.body(body)?)
    }
}
