//! W3C trace context through the correlation layers (feature `opentelemetry`), read back
//! from the real SDK with an in-memory span exporter and `tracing-opentelemetry` as the
//! bridge, the way an application wires them: an incoming `traceparent` becomes the parent
//! of the request span, the correlation id is an attribute of that span, and a call made
//! while serving the request carries the same trace id with the request span as its parent.

use std::convert::Infallible;

use http::{HeaderMap, Request, Response};
use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_rampart::correlation::{CorrelationIdLayer, PropagateCorrelationIdLayer};
use tracing_subscriber::layer::SubscriberExt;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER: &str = "00f067aa0ba902b7";

/// An SDK tracer provider exporting to memory, bridged from `tracing` for the current
/// thread, with the W3C propagator installed globally (what the application does at start).
struct Traces {
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
    _guard: tracing::subscriber::DefaultGuard,
}

impl Traces {
    fn new() -> Self {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let guard = tracing::subscriber::set_default(subscriber);
        Self {
            exporter,
            provider,
            _guard: guard,
        }
    }

    /// The finished spans named `request`.
    fn request_spans(&self) -> Vec<SpanData> {
        self.provider.force_flush().unwrap();
        self.exporter
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .filter(|s| s.name == "request")
            .collect()
    }
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

/// A server under the correlation layer whose handler makes one outgoing call through
/// `PropagateCorrelationIdLayer`, and answers with the headers that call carried.
fn server(
    layer: CorrelationIdLayer,
) -> impl Service<Request<()>, Response = Response<HeaderMap>, Error = Infallible> {
    let client =
        PropagateCorrelationIdLayer::new().layer(service_fn(|req: Request<()>| async move {
            Ok::<_, Infallible>(Response::new(req.headers().clone()))
        }));
    layer.layer(service_fn(move |_req: Request<()>| {
        let client = client.clone();
        async move {
            let outgoing = client.oneshot(Request::new(())).await?;
            Ok::<_, Infallible>(Response::new(outgoing.into_body()))
        }
    }))
}

fn traceparent(trace: &str, parent: &str) -> String {
    format!("00-{trace}-{parent}-01")
}

#[tokio::test(flavor = "current_thread")]
async fn an_incoming_traceparent_is_continued_and_passed_on() {
    let traces = Traces::new();
    let request = Request::builder()
        .header("traceparent", traceparent(TRACE, CALLER))
        .header("tracestate", "vendor=opaque")
        .header("x-correlation-id", "order-1234")
        .body(())
        .unwrap();
    let response = server(CorrelationIdLayer::new())
        .oneshot(request)
        .await
        .unwrap();

    let spans = traces.request_spans();
    assert_eq!(spans.len(), 1, "{spans:?}");
    let span = &spans[0];
    // The child of the caller's span, in the caller's trace.
    assert_eq!(
        span.span_context.trace_id(),
        TraceId::from_hex(TRACE).unwrap()
    );
    assert_eq!(span.parent_span_id, SpanId::from_hex(CALLER).unwrap());
    assert!(span.parent_span_is_remote);
    assert_eq!(span.span_context.trace_state().header(), "vendor=opaque");
    // The correlation id is an attribute of the span.
    assert_eq!(
        attribute(span, "correlation_id").as_deref(),
        Some("order-1234")
    );

    // The outgoing call: same trace, the request span as its parent, the state passed on,
    // and the correlation id as before.
    let sent = response.into_body();
    let own = format!("{}", span.span_context.span_id());
    assert_ne!(own, CALLER);
    assert_eq!(sent["traceparent"], traceparent(TRACE, &own));
    assert_eq!(sent["tracestate"], "vendor=opaque");
    assert_eq!(sent["x-correlation-id"], "order-1234");
}

#[tokio::test(flavor = "current_thread")]
async fn without_a_traceparent_the_request_starts_a_trace_and_passes_it_on() {
    let traces = Traces::new();
    let response = server(CorrelationIdLayer::new())
        .oneshot(Request::new(()))
        .await
        .unwrap();
    let spans = traces.request_spans();
    assert_eq!(spans.len(), 1, "{spans:?}");
    let span = &spans[0];
    assert_eq!(span.parent_span_id, SpanId::INVALID);
    let sent = response.into_body();
    let expected = traceparent(
        &span.span_context.trace_id().to_string(),
        &span.span_context.span_id().to_string(),
    );
    assert_eq!(sent["traceparent"], expected);
    // The minted correlation id is the span's attribute too.
    assert_eq!(
        attribute(span, "correlation_id").as_deref(),
        sent["x-correlation-id"].to_str().ok()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn malformed_or_refused_trace_context_starts_a_new_trace() {
    let traces = Traces::new();
    let malformed = Request::builder()
        .header("traceparent", format!("00-{TRACE}-0000000000000000-01"))
        .body(())
        .unwrap();
    server(CorrelationIdLayer::new())
        .oneshot(malformed)
        .await
        .unwrap();
    let refused = Request::builder()
        .header("traceparent", traceparent(TRACE, CALLER))
        .body(())
        .unwrap();
    server(CorrelationIdLayer::new().continue_trace(false))
        .oneshot(refused)
        .await
        .unwrap();
    let spans = traces.request_spans();
    assert_eq!(spans.len(), 2, "{spans:?}");
    for span in &spans {
        assert_ne!(
            span.span_context.trace_id(),
            TraceId::from_hex(TRACE).unwrap()
        );
        assert_eq!(span.parent_span_id, SpanId::INVALID);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_traceparent_set_by_the_caller_of_the_client_is_kept() {
    let _traces = Traces::new();
    let client =
        PropagateCorrelationIdLayer::new().layer(service_fn(|req: Request<()>| async move {
            Ok::<_, Infallible>(Response::new(req.headers().clone()))
        }));
    let explicit = traceparent(TRACE, CALLER);
    let span = tracing::info_span!("work");
    let sent = tracing::Instrument::instrument(
        client.oneshot(
            Request::builder()
                .header("traceparent", &explicit)
                .body(())
                .unwrap(),
        ),
        span,
    )
    .await
    .unwrap()
    .into_body();
    assert_eq!(sent["traceparent"], explicit);
}
