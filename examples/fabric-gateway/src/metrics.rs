//! The gateway's metrics, and the Prometheus endpoint of `METRICS_ADDR`.
//!
//! # The gateway's instruments
//!
//! Recorded through the OpenTelemetry API (`opentelemetry::global::meter`, meter
//! `fabric-gateway`), so they cost nothing until a meter provider is installed. The names
//! are the constants of this module; this table is the one place that documents them.
//!
//! | name (OpenTelemetry) | Prometheus | instrument | unit | attributes |
//! |---|---|---|---|---|
//! | `fabric_gateway.data_agent.duration` | `fabric_gateway_data_agent_duration_seconds_{bucket,sum,count}` | histogram | `s` | `protocol` (`mcp`, `assistants`); `error.type` on failures |
//! | `fabric_gateway.data_agent.errors` | `fabric_gateway_data_agent_errors_total` | counter | | `protocol`, `error.type` |
//! | `fabric_gateway.token.validation_failures` | `fabric_gateway_token_validation_failures_total` | counter | | `reason` |
//! | `fabric_gateway.requests.rate_limited` | `fabric_gateway_requests_rate_limited_total` | counter | | `http.route` |
//!
//! - `data_agent.duration` times each question put to the data agent (one
//!   [`DataAgent::ask`](crate::fabric::DataAgent::ask): retries, polling and waiting out a
//!   `Retry-After` included), answered or not; its `_count` is the number of questions.
//! - `error.type` is the failure's category in lowercase, one of `auth_error`,
//!   `permission_error`, `not_found`, `rate_limit`, `server_error`, `timeout`,
//!   `connection_error`, `token_expired`, `error` (the `FABRIC_*` categories of the
//!   `error` field, see [`ErrorCategory`]).
//! - `reason` is the check a refused access token failed, one of `malformed`,
//!   `unsupported_algorithm`, `missing_key_id`, `unknown_key`, `bad_signature`, `expired`,
//!   `not_yet_valid`, `wrong_audience`, `wrong_issuer`, `wrong_tenant`, `missing_claim`,
//!   `keys_unavailable` (see [`TokenError`]).
//! - `requests.rate_limited` counts the `429` answers of the rate-limited routes;
//!   `http.route` is the route template (`/query`, `/auth/client-login`, ...). Which quota
//!   refused is the library's business (`rampart.rate_limit.decisions`, by `policy` and
//!   `result`).
//!
//! Attributes never carry a user, a session, a token or a client address: their values
//! come from the fixed lists above (bounded cardinality, nothing personal).
//!
//! # Prometheus (`METRICS_ADDR`)
//!
//! With `METRICS_ADDR` set, [`MetricsServer::start`] installs an OpenTelemetry SDK meter
//! provider as the process's global one (once per process), with the
//! `opentelemetry-prometheus` exporter as its reader, and serves `GET /metrics` (Prometheus
//! text format 0.0.4) on that address, a listener of its own: the public port never serves
//! metrics. The library's instruments (read from the same global provider) land there
//! too. Names are translated the Prometheus way: dots become underscores, the unit becomes
//! a suffix (`_seconds`), counters end in `_total`, histograms are `_bucket`, `_sum` and
//! `_count` series; each series carries `otel_scope_name` (the meter), and `target_info`
//! carries the resource (`service_name="fabric-gateway"` unless `OTEL_SERVICE_NAME` says
//! otherwise).
//!
//! # OTLP (`OTEL_EXPORTER_OTLP_ENDPOINT`)
//!
//! The same provider gets a second reader, OTLP's periodic one ([`crate::otel`]): with both
//! set, Prometheus and the collector see the same instruments.
//!
//! # Application Insights (`APPLICATIONINSIGHTS_CONNECTION_STRING`)
//!
//! And another periodic reader pushing deltas to Azure Monitor every
//! `OTEL_METRIC_EXPORT_INTERVAL` milliseconds (60 s by default) through
//! [`crate::appinsights`]: one provider, several readers, so every instrument reaches every
//! destination.
//!
//! With neither set, nothing is installed: every instrument is a no-op and nothing is
//! exported.

use std::fmt;
use std::net::SocketAddr;
use std::sync::OnceLock;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use prometheus::{Encoder as _, TextEncoder};
use tokio::task::JoinHandle;

use crate::appinsights::MetricExporter;
use crate::auth::TokenError;
use crate::config::Config;
use crate::fabric::{DataAgentProtocol, ErrorCategory};

/// The meter (instrumentation scope) of the gateway's instruments.
pub const METER_NAME: &str = "fabric-gateway";
/// Histogram (seconds) of the questions put to the data agent.
pub const DATA_AGENT_DURATION: &str = "fabric_gateway.data_agent.duration";
/// Counter of the questions the data agent did not answer, by protocol and `error.type`.
pub const DATA_AGENT_ERRORS: &str = "fabric_gateway.data_agent.errors";
/// Counter of refused access tokens, by `reason`.
pub const TOKEN_VALIDATION_FAILURES: &str = "fabric_gateway.token.validation_failures";
/// Counter of `429` answers of the rate-limited routes, by `http.route`.
pub const REQUESTS_RATE_LIMITED: &str = "fabric_gateway.requests.rate_limited";

/// Bucket bounds of [`DATA_AGENT_DURATION`], in seconds: a question takes from a fraction of
/// a second (a cached answer) to the 120 s deadline.
const DATA_AGENT_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
];

fn meter() -> Meter {
    opentelemetry::global::meter(METER_NAME)
}

/// The data agent client's instruments.
#[derive(Clone, Debug)]
pub(crate) struct DataAgentMetrics {
    duration: Histogram<f64>,
    errors: Counter<u64>,
}

impl DataAgentMetrics {
    /// The instruments, from the global meter provider installed now (no-ops without one).
    pub(crate) fn new() -> Self {
        let meter = meter();
        Self {
            duration: meter
                .f64_histogram(DATA_AGENT_DURATION)
                .with_unit("s")
                .with_description("Time to answer one question, retries included")
                .with_boundaries(DATA_AGENT_BUCKETS.to_vec())
                .build(),
            errors: meter
                .u64_counter(DATA_AGENT_ERRORS)
                .with_description("Questions the data agent did not answer, by category")
                .build(),
        }
    }

    /// Records one question: its duration, and its failure category if it failed.
    pub(crate) fn record(
        &self,
        protocol: DataAgentProtocol,
        seconds: f64,
        failure: Option<ErrorCategory>,
    ) {
        let protocol = KeyValue::new("protocol", protocol.as_str());
        match failure {
            None => self.duration.record(seconds, &[protocol]),
            Some(category) => {
                let attributes = [protocol, KeyValue::new("error.type", error_type(category))];
                self.duration.record(seconds, &attributes);
                self.errors.add(1, &attributes);
            }
        }
    }
}

/// The `error.type` value of a failure category.
fn error_type(category: ErrorCategory) -> &'static str {
    match category {
        ErrorCategory::AuthError => "auth_error",
        ErrorCategory::PermissionError => "permission_error",
        ErrorCategory::NotFound => "not_found",
        ErrorCategory::RateLimit => "rate_limit",
        ErrorCategory::ServerError => "server_error",
        ErrorCategory::Timeout => "timeout",
        ErrorCategory::ConnectionError => "connection_error",
        ErrorCategory::TokenExpired => "token_expired",
        ErrorCategory::Error => "error",
    }
}

/// The token validator's instrument.
#[derive(Clone, Debug)]
pub(crate) struct TokenMetrics {
    failures: Counter<u64>,
}

impl TokenMetrics {
    /// The instrument, from the global meter provider installed now (a no-op without one).
    pub(crate) fn new() -> Self {
        Self {
            failures: meter()
                .u64_counter(TOKEN_VALIDATION_FAILURES)
                .with_description("Access tokens refused, by the check that failed")
                .build(),
        }
    }

    /// Records one refused token.
    pub(crate) fn record(&self, error: &TokenError) {
        self.failures
            .add(1, &[KeyValue::new("reason", failure_reason(error))]);
    }
}

/// The `reason` value of a refused token.
fn failure_reason(error: &TokenError) -> &'static str {
    match error {
        TokenError::Malformed => "malformed",
        TokenError::UnsupportedAlgorithm(_) => "unsupported_algorithm",
        TokenError::MissingKeyId => "missing_key_id",
        TokenError::UnknownKey => "unknown_key",
        TokenError::BadSignature => "bad_signature",
        TokenError::Expired => "expired",
        TokenError::NotYetValid => "not_yet_valid",
        TokenError::WrongAudience => "wrong_audience",
        TokenError::WrongIssuer => "wrong_issuer",
        TokenError::WrongTenant => "wrong_tenant",
        TokenError::MissingClaim(_) => "missing_claim",
        TokenError::KeysUnavailable => "keys_unavailable",
    }
}

/// Counts the `429` answers of the routes it wraps, by route template (a middleware for
/// `axum::middleware::from_fn_with_state`, inside the router so the route is known).
pub(crate) async fn count_rate_limited(
    counter: axum::extract::State<Counter<u64>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let response = next.run(request).await;
    if response.status() == StatusCode::TOO_MANY_REQUESTS {
        let route = route.map_or_else(|| "unmatched".to_owned(), |r| r.as_str().to_owned());
        counter.add(1, &[KeyValue::new("http.route", route)]);
    }
    response
}

/// The counter behind [`count_rate_limited`], from the global meter provider installed now.
pub(crate) fn rate_limited_counter() -> Counter<u64> {
    meter()
        .u64_counter(REQUESTS_RATE_LIMITED)
        .with_description("Requests refused with 429 by a rate limit, by route")
        .build()
}

/// The process's meter provider and what reads it, installed once per process (never
/// dropped: an OTLP reader's HTTP client must not be dropped on a runtime thread).
struct Installed {
    provider: SdkMeterProvider,
    /// What the Prometheus endpoint reads (`None` when it is not one of the readers).
    registry: Option<prometheus::Registry>,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// The resource of every exported signal: `service.name` is `fabric-gateway` unless
/// `OTEL_SERVICE_NAME` says otherwise (the SDK reads it, and `OTEL_RESOURCE_ATTRIBUTES`).
pub(crate) fn resource() -> Resource {
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(METER_NAME);
    }
    resource.build()
}

/// Installs (once per process) the SDK meter provider as the global provider, with one
/// reader per destination: the Prometheus exporter when `prometheus`, and `otlp` (the
/// OTLP exporter's periodic reader, [`crate::otel`]). One provider, several readers: every
/// instrument reaches every destination.
///
/// Two gateways starting in one process (tests): the first one's provider wins; the second
/// gets an error only if it needs a Prometheus registry the first one does not have.
pub(crate) fn install_meter_provider(
    prometheus: bool,
    otlp: Option<PeriodicReader<opentelemetry_otlp::MetricExporter>>,
    appinsights: Option<PeriodicReader<MetricExporter>>,
) -> Result<(), MetricsError> {
    if let Some(installed) = INSTALLED.get() {
        return if prometheus && installed.registry.is_none() {
            Err(MetricsError::Exporter(
                "a meter provider without Prometheus is already installed in this process"
                    .to_owned(),
            ))
        } else {
            Ok(())
        };
    }
    let mut builder = SdkMeterProvider::builder().with_resource(resource());
    let mut registry = None;
    if prometheus {
        let r = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(r.clone())
            .build()
            .map_err(|e| MetricsError::Exporter(e.to_string()))?;
        builder = builder.with_reader(exporter);
        registry = Some(r);
    }
    if let Some(reader) = otlp {
        builder = builder.with_reader(reader);
    }
    if let Some(reader) = appinsights {
        builder = builder.with_reader(reader);
    }
    let provider = builder.build();
    let mut installed = false;
    INSTALLED.get_or_init(|| {
        installed = true;
        Installed {
            provider: provider.clone(),
            registry,
        }
    });
    if installed {
        opentelemetry::global::set_meter_provider(provider);
    }
    Ok(())
}

/// The Application Insights reader `config` asks for (`None` without a connection string).
/// Call it inside the Tokio runtime (the exporter posts on it).
pub(crate) fn appinsights_reader(
    config: &Config,
) -> Result<Option<PeriodicReader<MetricExporter>>, MetricsError> {
    let Some(connection) = &config.appinsights else {
        return Ok(None);
    };
    let exporter = MetricExporter::new(connection.clone()).map_err(MetricsError::AppInsights)?;
    let mut reader = PeriodicReader::builder(exporter);
    if let Some(interval) = config.metric_export_interval {
        reader = reader.with_interval(interval);
    }
    tracing::info!(
        endpoint = connection.ingestion_endpoint(),
        "sending metrics to Application Insights"
    );
    Ok(Some(reader.build()))
}

/// Installs the meter provider with the Prometheus reader unless one is installed; returns
/// the registry it fills.
fn install_prometheus() -> Result<&'static prometheus::Registry, MetricsError> {
    install_meter_provider(true, None, None)?;
    INSTALLED
        .get()
        .and_then(|i| i.registry.as_ref())
        .ok_or_else(|| MetricsError::Exporter("no Prometheus reader installed".to_owned()))
}

/// Pushes the current values to the push readers (OTLP), if a provider is installed.
pub(crate) fn force_flush() {
    if let Some(installed) = INSTALLED.get()
        && let Err(e) = installed.provider.force_flush()
    {
        tracing::warn!(error = %e, "flushing the metrics failed");
    }
}

/// Pushes the last values and stops the readers (at exit; blocking).
pub(crate) fn shutdown() {
    if let Some(installed) = INSTALLED.get()
        && let Err(e) = installed.provider.shutdown()
    {
        eprintln!("fabric-gateway: flushing the metrics at exit failed: {e}");
    }
}

/// The metrics endpoint could not start.
#[derive(Debug)]
pub enum MetricsError {
    /// The Prometheus exporter could not be built.
    Exporter(String),
    /// The Application Insights exporter could not be built.
    AppInsights(String),
    /// `METRICS_ADDR` could not be listened on.
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        error: std::io::Error,
    },
}

impl fmt::Display for MetricsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exporter(m) => write!(f, "cannot build the Prometheus exporter: {m}"),
            Self::AppInsights(m) => write!(
                f,
                "APPLICATIONINSIGHTS_CONNECTION_STRING: cannot build the exporter: {m}"
            ),
            Self::Listen { addr, error } => write!(f, "cannot listen on {addr}: {error}"),
        }
    }
}

impl std::error::Error for MetricsError {}

/// The Prometheus endpoint: `GET /metrics` on its own listener. Dropping it stops serving
/// (the meter provider stays installed).
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MetricsServer {
    /// Installs the meter provider (see the module documentation), binds `addr` and serves
    /// `GET /metrics` there. Call it before building anything that creates instruments.
    pub async fn start(addr: SocketAddr) -> Result<Self, MetricsError> {
        let registry = install_prometheus()?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|error| MetricsError::Listen { addr, error })?;
        let addr = listener.local_addr().unwrap_or(addr);
        let router = Router::new().route("/metrics", get(move || render(registry)));
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(error = %e, "the metrics listener failed");
            }
        });
        Ok(Self { addr, task })
    }

    /// The address it listens on (the bound port when `METRICS_ADDR` asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// The registry's metrics in the Prometheus text format.
async fn render(registry: &'static prometheus::Registry) -> Response {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(&registry.gather(), &mut body) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
