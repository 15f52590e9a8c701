//! Log output: one flat JSON object per line (production), or human-readable lines.
//!
//! The JSON lines carry `timestamp`, `level`, `target`, `message`, the event's fields, and
//! the fields of every span the event happened in, flattened into the same object: an
//! event logged while serving a request carries the request span's `correlation_id`,
//! `method` and `path` (set by the correlation-id layer), and, once the user is known, the
//! `user_id` of the handler's span. The access line (target `tower_rampart::access`) adds
//! `status` and `latency_ms`.
//!
//! ```
//! use fabric_gateway::config::LogFormat;
//! use fabric_gateway::logging;
//!
//! let subscriber = logging::subscriber(LogFormat::Json, "info", std::io::sink).unwrap();
//! tracing::subscriber::with_default(subscriber, || {
//!     tracing::info!(user_id = "42", "signed in");
//! });
//! ```
//!
//! Nothing here filters secrets: the code never logs them in the first place (no cookie
//! values, session ids, tokens, `Authorization` headers or passwords), and the tests scan
//! every captured line for them.

use std::fmt;
use std::io::IsTerminal;

use opentelemetry_sdk::trace::SdkTracer;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Registry, layer::SubscriberExt};

use crate::config::LogFormat;

/// The filter string is not a valid `RUST_LOG` filter.
#[derive(Debug)]
pub struct InvalidFilter(String);

impl fmt::Display for InvalidFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RUST_LOG: not a valid tracing filter: {}", self.0)
    }
}

impl std::error::Error for InvalidFilter {}

/// A subscriber writing `format` lines to `writer`, filtered by `filter` (`RUST_LOG`
/// syntax). `main` installs it with stdout; tests install it with an in-memory buffer.
pub fn subscriber<W>(
    format: LogFormat,
    filter: &str,
    writer: W,
) -> Result<Box<dyn Subscriber + Send + Sync>, InvalidFilter>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    subscriber_with_traces(format, filter, writer, None)
}

/// [`subscriber`], plus, with a `tracer` ([`crate::otel::tracer`], when OTLP export is
/// on), the `tracing-opentelemetry` bridge: the spans that pass `filter` become
/// OpenTelemetry spans (their fields as attributes), the correlation layer's `request`
/// span continuing the caller's trace. Without one the subscriber is exactly the same as
/// before: no bridge, no cost.
pub fn subscriber_with_traces<W>(
    format: LogFormat,
    filter: &str,
    writer: W,
    tracer: Option<SdkTracer>,
) -> Result<Box<dyn Subscriber + Send + Sync>, InvalidFilter>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(filter).map_err(|e| InvalidFilter(e.to_string()))?;
    let traces = tracer.map(|t| tracing_opentelemetry::layer().with_tracer(t));
    Ok(match format {
        LogFormat::Json => Box::new(
            Registry::default().with(filter).with(traces).with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(JsonFields::new())
                    .event_format(FlatJson)
                    .with_writer(writer),
            ),
        ),
        LogFormat::Pretty => Box::new(
            Registry::default().with(filter).with(traces).with(
                tracing_subscriber::fmt::layer()
                    // Colours only on a terminal, not in a container's log.
                    .with_ansi(std::io::stdout().is_terminal())
                    .with_writer(writer),
            ),
        ),
    })
}

/// The JSON event format: one object per line, span fields flattened (innermost wins).
#[derive(Clone, Copy, Debug, Default)]
pub struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut object = Map::new();
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        object.insert("timestamp".into(), Value::String(timestamp));
        object.insert("level".into(), Value::String(meta.level().to_string()));
        object.insert("target".into(), Value::String(meta.target().to_owned()));
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                // With `JsonFields`, a span's fields are stored as one JSON object.
                if let Some(fields) = extensions.get::<FormattedFields<N>>()
                    && let Ok(Value::Object(fields)) = serde_json::from_str(fields.as_str())
                {
                    object.extend(fields);
                }
            }
        }
        event.record(&mut Visitor(&mut object));
        let line = serde_json::to_string(&object).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

/// Records an event's fields into the JSON object.
struct Visitor<'a>(&'a mut Map<String, Value>);

impl Visit for Visitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let v = serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number);
        self.0.insert(field.name().to_owned(), v);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().to_owned(), Value::from(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::from(format!("{value:?}")));
    }
}
