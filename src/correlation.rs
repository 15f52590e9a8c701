//! Correlation ids: validate or mint one per request, log it on every event, echo it, and
//! forward it to other services.
//!
//! [`CorrelationIdLayer`] gives every request a [`CorrelationId`]:
//!
//! 1. it reads `X-Correlation-ID`, else `X-Request-ID`, else the trace id of a valid W3C
//!    `traceparent` (the header names are configurable), and keeps the incoming id only if
//!    it is 1 to 128 characters of `[A-Za-z0-9._:-]`; anything else (too long, spaces,
//!    non-ASCII, an attempt to inject a header or a log line, a header sent twice) is
//!    replaced by a fresh UUIDv7, and a warning says so *without* repeating the rejected
//!    value;
//! 2. it puts the id in the request extensions, in the request header, and in a task-local
//!    ([`CorrelationId::current`]) so code far from the handler (an HTTP client wrapper, a
//!    database helper) can read it without threading it through every call;
//! 3. it runs the inner service inside a `tracing` span named `request` with the fields
//!    `correlation_id`, `method` and `path` (never the query string, which may hold
//!    secrets), so every event logged while serving the request carries the id, even when
//!    hundreds of requests are interleaved on the same threads;
//! 4. it echoes the id in the response (`X-Correlation-ID`) unless the handler already set
//!    that header, and emits one access event (target `tower_rampart::access`) with the
//!    status and the latency.
//!
//! The span is attached with `Instrument`, never held across an `.await`, which is what
//! keeps one request's id out of another request's log lines.
//!
//! # Traces (feature `opentelemetry`)
//!
//! With the application's OpenTelemetry propagator installed (the SDK's
//! `TraceContextPropagator` for W3C trace context) and `tracing` bridged to OpenTelemetry
//! with `tracing-opentelemetry`, the `request` span continues the caller's trace: a valid
//! incoming `traceparent`/`tracestate` makes it the child of the caller's span, and its
//! `correlation_id` field is an attribute of that span
//! ([`CorrelationIdLayer::continue_trace`]). [`PropagateCorrelationIdLayer`] sends the
//! current trace context on outgoing calls, so the next service sees the same trace id with
//! the calling span as the parent. The library uses the OpenTelemetry API only: without a
//! propagator nothing is read or sent, and without the bridge nothing is traced.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_rampart::correlation::{CorrelationId, CorrelationIdLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let service = ServiceBuilder::new()
//!     .layer(CorrelationIdLayer::new())
//!     .service(service_fn(|req: Request<String>| async move {
//!         // The handler sees the validated id in the extensions and in the task-local.
//!         let id = req.extensions().get::<CorrelationId>().cloned().unwrap();
//!         assert_eq!(CorrelationId::current().as_ref(), Some(&id));
//!         tracing::info!("this event carries the request's correlation_id");
//!         Ok::<_, Infallible>(Response::new(String::new()))
//!     }));
//!
//! let request = Request::builder()
//!     .header("x-correlation-id", "order-1234")
//!     .body(String::new())
//!     .unwrap();
//! let response = service.oneshot(request).await.unwrap();
//! assert_eq!(response.headers()["x-correlation-id"], "order-1234");
//! # }
//! ```
//!
//! # Forwarding the id to other services
//!
//! ```
//! use tower_rampart::correlation::CorrelationId;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let id = CorrelationId::parse("abc-123").unwrap();
//! id.scope(async {
//!     // Somewhere deep inside the request: stamp the outgoing call.
//!     let mut outgoing = http::Request::new(());
//!     assert!(tower_rampart::correlation::propagate(&mut outgoing));
//!     assert_eq!(outgoing.headers()["x-correlation-id"], "abc-123");
//! })
//! .await;
//! # }
//! ```
//!
//! Tasks started with `tokio::spawn` do not inherit task-locals: carry the id into them with
//! `CorrelationId::current()` and [`CorrelationId::scope`] (and the span with
//! `tracing::Instrument`).
//!
//! # Trusting incoming ids
//!
//! By default an incoming id is kept when it is well formed, which is what you want behind
//! your own gateway or load balancer. A service exposed directly to clients that should not
//! choose the id in its logs can refuse them all with
//! [`CorrelationIdLayer::trust_incoming(false)`](CorrelationIdLayer::trust_incoming).

mod mint;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response};
use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;
use tracing::instrument::Instrumented;

/// `x-correlation-id`, the header this layer reads first and echoes by default.
pub const X_CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");
/// `x-request-id`, read when `x-correlation-id` is absent.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `traceparent` (W3C Trace Context); its trace id is used when no id header is present.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The longest id kept from a request.
pub const MAX_LEN: usize = 128;

tokio::task_local! {
    static CURRENT: CorrelationId;
}

/// A validated correlation id: 1 to 128 characters of `[A-Za-z0-9._:-]`.
///
/// Cheap to clone (a reference-counted header value). Its `Display` is the id itself, which
/// is safe to log: the validation rules out anything that could forge a log line or a
/// header.
///
/// With the `axum` feature it is an extractor: the id [`CorrelationIdLayer`] gave the
/// request.
///
/// ```
/// # #[cfg(feature = "axum")] {
/// use axum::{Router, routing::get};
/// use tower_rampart::correlation::{CorrelationId, CorrelationIdLayer};
///
/// async fn handler(id: CorrelationId) -> String {
///     format!("your request is {id}")
/// }
///
/// let app: Router = Router::new()
///     .route("/", get(handler))
///     .layer(CorrelationIdLayer::new());
/// # }
/// ```
///
/// Without the layer around the route the extractor answers `500` (a bug in the
/// application, logged as such: `MissingCorrelationIdLayer`); `Option<CorrelationId>`
/// gives `None` instead.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CorrelationId(HeaderValue);

/// Why an incoming id was refused; logged instead of the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rejection {
    Empty,
    TooLong,
    BadCharacter,
    Repeated,
    BadTraceparent,
}

impl Rejection {
    fn as_str(self) -> &'static str {
        match self {
            Rejection::Empty => "empty",
            Rejection::TooLong => "longer than 128 characters",
            Rejection::BadCharacter => "characters outside [A-Za-z0-9._:-]",
            Rejection::Repeated => "header sent more than once",
            Rejection::BadTraceparent => "malformed traceparent",
        }
    }
}

fn check(bytes: &[u8]) -> Result<(), Rejection> {
    if bytes.is_empty() {
        return Err(Rejection::Empty);
    }
    if bytes.len() > MAX_LEN {
        return Err(Rejection::TooLong);
    }
    if bytes
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        Ok(())
    } else {
        Err(Rejection::BadCharacter)
    }
}

impl CorrelationId {
    /// A fresh UUIDv7 (time-ordered, so ids sort by arrival in log stores).
    ///
    /// The ids one process mints sort in minting order (a counter orders those of one
    /// millisecond, RFC 9562 §6.2 method 1), and their 62 random bits come from the OS's
    /// random source, drawn 2 KiB at a time per thread rather than one system call per id.
    ///
    /// ```
    /// let id = tower_rampart::correlation::CorrelationId::new_v7();
    /// assert_eq!(id.as_str().len(), 36);
    /// ```
    pub fn new_v7() -> Self {
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let text = mint::uuid_v7().hyphenated().encode_lower(&mut buf);
        Self(HeaderValue::from_str(text).expect("a hyphenated UUID is a valid header value"))
    }

    /// Validates `id`; `None` unless it is 1 to 128 characters of `[A-Za-z0-9._:-]`.
    ///
    /// ```
    /// use tower_rampart::correlation::CorrelationId;
    /// assert!(CorrelationId::parse("req-42:retry.1").is_some());
    /// assert!(CorrelationId::parse("has space").is_none());
    /// assert!(CorrelationId::parse("").is_none());
    /// assert!(CorrelationId::parse(&"x".repeat(129)).is_none());
    /// ```
    pub fn parse(id: &str) -> Option<Self> {
        Self::from_header(&HeaderValue::from_str(id).ok()?)
    }

    /// Validates a header value; `None` unless it is a valid id.
    pub fn from_header(value: &HeaderValue) -> Option<Self> {
        check(value.as_bytes()).ok().map(|()| Self(value.clone()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Validation admits only ASCII, so this never falls back.
        std::str::from_utf8(self.0.as_bytes()).unwrap_or_default()
    }

    /// The id as a header value, ready to send.
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }

    /// The id of the request being served by the current task, if any.
    ///
    /// Set by [`CorrelationIdLayer`] for the whole of the inner service's work, and by
    /// [`CorrelationId::scope`].
    pub fn current() -> Option<CorrelationId> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Runs `future` with `self` as [`CorrelationId::current`].
    pub fn scope<F: Future>(self, future: F) -> TaskLocalFuture<CorrelationId, F> {
        CURRENT.scope(self, future)
    }

    /// Sets `x-correlation-id` on an outgoing request unless it already carries one.
    ///
    /// Returns `true` when the header is (now) set to this id.
    ///
    /// ```
    /// use tower_rampart::correlation::CorrelationId;
    /// let id = CorrelationId::parse("abc").unwrap();
    /// let mut req = http::Request::new(());
    /// assert!(id.apply_to(&mut req));
    /// assert_eq!(req.headers()["x-correlation-id"], "abc");
    /// ```
    pub fn apply_to<B>(&self, request: &mut Request<B>) -> bool {
        match request.headers().get(X_CORRELATION_ID) {
            Some(existing) => existing == self.header_value(),
            None => {
                request
                    .headers_mut()
                    .insert(X_CORRELATION_ID, self.0.clone());
                true
            }
        }
    }
}

impl fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CorrelationId")
            .field(&self.as_str())
            .finish()
    }
}

impl AsRef<str> for CorrelationId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

/// Stamps the current task's correlation id ([`CorrelationId::current`]) on an outgoing
/// request, unless the request already has one. Returns `false` when there is no current id
/// or the request carries a different one.
///
/// ```
/// let mut req = http::Request::new(());
/// // Outside of a request there is nothing to forward.
/// assert!(!tower_rampart::correlation::propagate(&mut req));
/// ```
pub fn propagate<B>(request: &mut Request<B>) -> bool {
    CorrelationId::current().is_some_and(|id| id.apply_to(request))
}

/// A layer for **HTTP clients**: every request the wrapped client sends carries the
/// current task's correlation id ([`CorrelationId::current`]) in `x-correlation-id`, unless
/// the request already has that header. Outside of a request handled under
/// [`CorrelationIdLayer`] there is no current id and requests go out unchanged.
///
/// With the feature `opentelemetry` it also sends the current trace context (`traceparent`,
/// `tracestate`) through the application's global OpenTelemetry propagator, unless the
/// request already carries a `traceparent` or there is no current span (see the
/// [module docs](self#traces-feature-opentelemetry)).
///
/// It works with any tower `Service` over `http::Request<B>`: hyper-util's legacy client,
/// a tonic channel, `tower-http`'s clients, or a service of your own. The id is read when
/// the request is **sent** (`call`), on the caller's task, so the client may be cloned and
/// shared freely.
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
/// use tower_rampart::correlation::{CorrelationId, PropagateCorrelationIdLayer, X_CORRELATION_ID};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // A stand-in for an HTTP client: answers with the id it received.
/// let client = ServiceBuilder::new()
///     .layer(PropagateCorrelationIdLayer::new())
///     .service(service_fn(|req: Request<()>| async move {
///         let id = req.headers().get(X_CORRELATION_ID).cloned();
///         Ok::<_, Infallible>(Response::new(id))
///     }));
///
/// let id = CorrelationId::parse("order-42").unwrap();
/// let seen = id
///     .scope(client.clone().oneshot(Request::new(())))
///     .await
///     .unwrap();
/// assert_eq!(seen.body().as_ref().unwrap(), "order-42");
///
/// // Outside of a request: nothing to forward.
/// let seen = client.oneshot(Request::new(())).await.unwrap();
/// assert!(seen.body().is_none());
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct PropagateCorrelationIdLayer {
    _private: (),
}

impl PropagateCorrelationIdLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for PropagateCorrelationIdLayer {
    type Service = PropagateCorrelationId<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PropagateCorrelationId { inner }
    }
}

/// The service of [`PropagateCorrelationIdLayer`]: stamps the current correlation id on
/// each outgoing request, then calls the client it wraps.
#[derive(Clone, Debug)]
pub struct PropagateCorrelationId<S> {
    inner: S,
}

impl<S> PropagateCorrelationId<S> {
    /// The wrapped client.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped client, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for PropagateCorrelationId<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        propagate(&mut request);
        #[cfg(feature = "opentelemetry")]
        trace_context::inject_current(request.headers_mut());
        self.inner.call(request)
    }
}

/// W3C trace context through the application's OpenTelemetry propagator (feature
/// `opentelemetry`).
///
/// The library depends on the OpenTelemetry API only. Both directions go through
/// [`opentelemetry::global::get_text_map_propagator`], so the application chooses the
/// format (the SDK's `TraceContextPropagator` for `traceparent`/`tracestate`, a composite
/// with baggage...) and nothing is read or written until it installs one (the default global
/// propagator is a no-op).
///
/// - Incoming: the extracted context is made the current OpenTelemetry context while the
///   `request` span is created. `tracing-opentelemetry` (0.34, with its default context
///   activation) gives a new span the current OpenTelemetry context as its parent, so the
///   request span becomes the child of the caller's span. No dependency on
///   `tracing-opentelemetry` (and through it on `tracing-subscriber`) is needed for that,
///   which keeps the feature API-only.
/// - Outgoing: the current OpenTelemetry context (the one of the span being served, which
///   the bridge activates while the span is entered) is injected, unless the request
///   already carries a `traceparent`.
#[cfg(feature = "opentelemetry")]
mod trace_context {
    use http::HeaderMap;
    use http::header::{HeaderName, HeaderValue};
    use opentelemetry::propagation::{Extractor, Injector};
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry::{Context, ContextGuard, global};

    use super::TRACEPARENT;

    struct Headers<'a>(&'a HeaderMap);

    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }

        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(HeaderName::as_str).collect()
        }
    }

    struct HeadersMut<'a>(&'a mut HeaderMap);

    impl Injector for HeadersMut<'_> {
        fn set(&mut self, key: &str, value: String) {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(key.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                self.0.insert(name, value);
            }
        }
    }

    /// Makes the caller's context current, when the request carries a `traceparent` the
    /// propagator accepts; `None` (and no work beyond one header lookup) otherwise.
    pub(super) fn attach_remote(headers: &HeaderMap) -> Option<ContextGuard> {
        if !headers.contains_key(TRACEPARENT) {
            return None;
        }
        let cx = global::get_text_map_propagator(|p| p.extract(&Headers(headers)));
        let remote = cx.span().span_context().clone();
        (remote.is_valid() && remote.is_remote()).then(|| cx.attach())
    }

    /// Injects the current context into an outgoing request, unless it has a `traceparent`
    /// already or there is no valid current span.
    pub(super) fn inject_current(headers: &mut HeaderMap) {
        if headers.contains_key(TRACEPARENT) {
            return;
        }
        let cx = Context::current();
        if !cx.span().span_context().is_valid() {
            return;
        }
        global::get_text_map_propagator(|p| p.inject_context(&cx, &mut HeadersMut(headers)));
    }
}

/// Extracts the trace id of a W3C `traceparent` header, if the header is well formed.
///
/// `version-traceid-parentid-flags` with lowercase hex, version not `ff`, ids not all zero;
/// versions above `00` may carry more fields after the flags.
fn traceparent_trace_id(value: &HeaderValue) -> Result<HeaderValue, Rejection> {
    let bytes = value.as_bytes();
    let is_hex = |s: &[u8]| {
        s.iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    };
    let all_zero = |s: &[u8]| s.iter().all(|&b| b == b'0');
    if bytes.len() < 55 {
        return Err(Rejection::BadTraceparent);
    }
    let (version, trace, parent, flags) =
        (&bytes[0..2], &bytes[3..35], &bytes[36..52], &bytes[53..55]);
    let separators_ok = bytes[2] == b'-' && bytes[35] == b'-' && bytes[52] == b'-';
    let tail_ok = if version == b"00" {
        bytes.len() == 55
    } else {
        bytes.len() == 55 || bytes[55] == b'-'
    };
    if !separators_ok
        || !tail_ok
        || version == b"ff"
        || !is_hex(version)
        || !is_hex(trace)
        || !is_hex(parent)
        || !is_hex(flags)
        || all_zero(trace)
        || all_zero(parent)
    {
        return Err(Rejection::BadTraceparent);
    }
    HeaderValue::from_bytes(trace).map_err(|_| Rejection::BadTraceparent)
}

type MakeId = Arc<dyn Fn() -> CorrelationId + Send + Sync>;

#[derive(Clone)]
struct Config {
    request_headers: Vec<HeaderName>,
    traceparent: bool,
    response_header: HeaderName,
    trust_incoming: bool,
    access_log: bool,
    make_id: MakeId,
    #[cfg(feature = "opentelemetry")]
    metrics: http_metrics::HttpMetrics,
    #[cfg(feature = "opentelemetry")]
    continue_trace: bool,
}

/// Gives every request a validated [`CorrelationId`]; see the [module docs](self).
///
/// Defaults: reads `x-correlation-id`, then `x-request-id`, then `traceparent`; trusts
/// well-formed incoming ids; echoes `x-correlation-id`; logs one access event per request;
/// mints UUIDv7 ids.
#[derive(Clone)]
pub struct CorrelationIdLayer {
    config: Arc<Config>,
}

impl Default for CorrelationIdLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for CorrelationIdLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CorrelationIdLayer")
            .field("request_headers", &self.config.request_headers)
            .field("traceparent", &self.config.traceparent)
            .field("response_header", &self.config.response_header)
            .field("trust_incoming", &self.config.trust_incoming)
            .field("access_log", &self.config.access_log)
            .finish_non_exhaustive()
    }
}

impl CorrelationIdLayer {
    /// The layer with its defaults.
    pub fn new() -> Self {
        Self {
            config: Arc::new(Config {
                request_headers: vec![X_CORRELATION_ID, X_REQUEST_ID],
                traceparent: true,
                response_header: X_CORRELATION_ID,
                trust_incoming: true,
                access_log: true,
                make_id: Arc::new(CorrelationId::new_v7),
                #[cfg(feature = "opentelemetry")]
                metrics: http_metrics::HttpMetrics::new(&crate::telemetry::global_meter()),
                #[cfg(feature = "opentelemetry")]
                continue_trace: true,
            }),
        }
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// The request headers to read an incoming id from, in order of preference (default
    /// `x-correlation-id`, `x-request-id`). The first one present with a valid id wins.
    ///
    /// ```
    /// use tower_rampart::correlation::CorrelationIdLayer;
    /// let layer = CorrelationIdLayer::new().request_headers(["x-amzn-trace-id", "x-request-id"]);
    /// ```
    ///
    /// # Panics
    ///
    /// If a name is not a valid header name: this is configuration, checked once when the
    /// layer is built.
    pub fn request_headers<I, N>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = N>,
        N: AsRef<str>,
    {
        self.config_mut().request_headers = names
            .into_iter()
            .map(|n| {
                HeaderName::from_bytes(n.as_ref().as_bytes())
                    .map(crate::lasting::header_name)
                    .unwrap_or_else(|_| panic!("invalid header name {:?}", n.as_ref()))
            })
            .collect();
        self
    }

    /// Whether to fall back to the trace id of a W3C `traceparent` header (default `true`).
    pub fn traceparent(mut self, enabled: bool) -> Self {
        self.config_mut().traceparent = enabled;
        self
    }

    /// The response header that echoes the id (default `x-correlation-id`).
    ///
    /// # Panics
    ///
    /// If `name` is not a valid header name.
    pub fn response_header(mut self, name: impl AsRef<str>) -> Self {
        let name = name.as_ref();
        self.config_mut().response_header = HeaderName::from_bytes(name.as_bytes())
            .map(crate::lasting::header_name)
            .unwrap_or_else(|_| panic!("invalid header name {name:?}"));
        self
    }

    /// Whether incoming ids are kept when well formed (default `true`). Turn it off for a
    /// service that clients reach directly, so that they cannot choose the ids in your logs.
    pub fn trust_incoming(mut self, trust: bool) -> Self {
        self.config_mut().trust_incoming = trust;
        self
    }

    /// Whether to emit one access event per request (target `tower_rampart::access`,
    /// level INFO, fields `status` and `latency_ms` inside the request span; default `true`).
    pub fn access_log(mut self, enabled: bool) -> Self {
        self.config_mut().access_log = enabled;
        self
    }

    /// The meter of the HTTP server metrics (`http.server.request.duration`,
    /// `http.server.active_requests`; see [`telemetry`](crate::telemetry)). Default: the
    /// global provider's, taken when the layer is created by [`new`](Self::new).
    #[cfg(feature = "opentelemetry")]
    #[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
    pub fn meter(mut self, meter: opentelemetry::metrics::Meter) -> Self {
        self.config_mut().metrics = http_metrics::HttpMetrics::new(&meter);
        self
    }

    /// Whether the request span continues the caller's trace (default `true`): with a
    /// valid incoming `traceparent` (and `tracestate`), read by the application's global
    /// OpenTelemetry propagator, the span becomes the child of the caller's span when the
    /// application bridges `tracing` to OpenTelemetry with `tracing-opentelemetry`. The
    /// span's `correlation_id` field is then an attribute of that OpenTelemetry span. Turn
    /// it off for a service whose callers should not choose its trace ids.
    ///
    /// ```
    /// use opentelemetry_sdk::propagation::TraceContextPropagator;
    /// use tower_rampart::correlation::CorrelationIdLayer;
    ///
    /// // Once, at start-up: W3C trace context in and out.
    /// opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    /// let layer = CorrelationIdLayer::new().continue_trace(true);
    /// ```
    #[cfg(feature = "opentelemetry")]
    #[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
    pub fn continue_trace(mut self, enabled: bool) -> Self {
        self.config_mut().continue_trace = enabled;
        self
    }

    /// How to mint ids (default [`CorrelationId::new_v7`]).
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use tower_rampart::correlation::{CorrelationId, CorrelationIdLayer};
    ///
    /// static NEXT: AtomicU64 = AtomicU64::new(1);
    /// let layer = CorrelationIdLayer::new().make_id(|| {
    ///     let n = NEXT.fetch_add(1, Ordering::Relaxed);
    ///     CorrelationId::parse(&format!("req-{n}")).expect("valid id")
    /// });
    /// ```
    pub fn make_id<F>(mut self, make: F) -> Self
    where
        F: Fn() -> CorrelationId + Send + Sync + 'static,
    {
        self.config_mut().make_id = Arc::new(make);
        self
    }
}

impl<S> Layer<S> for CorrelationIdLayer {
    type Service = CorrelationIdService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CorrelationIdService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service made by [`CorrelationIdLayer`].
#[derive(Clone)]
pub struct CorrelationIdService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S: fmt::Debug> fmt::Debug for CorrelationIdService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CorrelationIdService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// The id for this request, and why an incoming one was refused (if it was).
    fn choose(&self, headers: &HeaderMap) -> (CorrelationId, Option<Rejection>) {
        if !self.trust_incoming {
            return ((self.make_id)(), None);
        }
        let mut rejected = None;
        for name in &self.request_headers {
            let mut values = headers.get_all(name).iter();
            let Some(value) = values.next() else { continue };
            if values.next().is_some() {
                rejected.get_or_insert(Rejection::Repeated);
                continue;
            }
            match check(value.as_bytes()) {
                Ok(()) => return (CorrelationId(value.clone()), None),
                Err(why) => {
                    rejected.get_or_insert(why);
                }
            }
        }
        if self.traceparent {
            let mut values = headers.get_all(TRACEPARENT).iter();
            if let Some(value) = values.next() {
                if values.next().is_some() {
                    rejected.get_or_insert(Rejection::Repeated);
                } else {
                    match traceparent_trace_id(value) {
                        Ok(trace) => return (CorrelationId(trace), None),
                        Err(why) => {
                            rejected.get_or_insert(why);
                        }
                    }
                }
            }
        }
        ((self.make_id)(), rejected)
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CorrelationIdService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        // Only the access event and the metrics need the latency: no clock reads without them,
        // nor when no subscriber would record the access event (checked at its most severe
        // level, the failure's `warn`: a subscriber that takes only warnings still gets it).
        let access = self.config.access_log
            && tracing::enabled!(target: "tower_rampart::access", tracing::Level::WARN);
        #[cfg(feature = "opentelemetry")]
        let timed = access || self.config.metrics.on();
        #[cfg(not(feature = "opentelemetry"))]
        let timed = access;
        let start = timed.then(Instant::now);
        #[cfg(feature = "opentelemetry")]
        let metrics = self.config.metrics.start(&req);
        #[cfg(not(feature = "opentelemetry"))]
        let metrics = ();
        // An id put there by an outer layer is authoritative; never replace it.
        let (id, rejected) = match req.extensions().get::<CorrelationId>() {
            Some(existing) => (existing.clone(), None),
            None => self.config.choose(req.headers()),
        };

        // Fields are recorded as `&str` (not `Display`), which subscribers store without
        // formatting them through `fmt::Arguments`: about a microsecond less per request
        // with tracing-subscriber's JSON formatter.
        // The caller's trace context (a valid `traceparent`, read by the application's
        // propagator) is the current OpenTelemetry context while the span is created: a
        // tracing-to-OpenTelemetry bridge makes it the span's parent.
        #[cfg(feature = "opentelemetry")]
        let remote = self
            .config
            .continue_trace
            .then(|| trace_context::attach_remote(req.headers()))
            .flatten();
        let span = tracing::info_span!(
            "request",
            correlation_id = id.as_str(),
            method = req.method().as_str(),
            path = req.uri().path(),
        );
        #[cfg(feature = "opentelemetry")]
        drop(remote);
        if let Some(why) = rejected {
            span.in_scope(|| {
                tracing::warn!(
                    reason = why.as_str(),
                    "incoming correlation id rejected; a new one was generated"
                );
            });
        }

        if let Some(name) = self.config.request_headers.first()
            && req.headers().get(name) != Some(&id.0)
        {
            req.headers_mut().insert(name.clone(), id.0.clone());
        }
        req.extensions_mut().insert(id.clone());

        // The synchronous part of `call` runs inside the span and the task-local too: some
        // services do real work (and log) before returning their future.
        let inner = span.in_scope(|| CURRENT.sync_scope(id.clone(), || self.inner.call(req)));
        // The task-local keeps the id till the response, which takes it back from there.
        let future = CURRENT.scope(id, inner.instrument(span.clone()));

        ResponseFuture {
            inner: future,
            span,
            start,
            response_header: self.config.response_header.clone(),
            access_log: self.config.access_log,
            metrics,
        }
    }
}

/// A request's HTTP metrics while it is served (nothing without the feature).
#[cfg(feature = "opentelemetry")]
type InFlightSlot = Option<http_metrics::InFlight>;
#[cfg(not(feature = "opentelemetry"))]
type InFlightSlot = ();

pin_project! {
    /// The response future of [`CorrelationIdService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: TaskLocalFuture<CorrelationId, Instrumented<F>>,
        span: tracing::Span,
        // When the request arrived; `None` when nothing needs the latency.
        start: Option<Instant>,
        // The layer's settings the response needs, copied (not a clone of the layer's shared
        // config: its count would be taken from thread to thread on every request). The name
        // is usually a constant or kept for the life of the process (`crate::lasting`).
        response_header: HeaderName,
        access_log: bool,
        // The request's metrics (taken when it completes; dropping them ends it as active).
        metrics: InFlightSlot,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("response_header", &self.response_header)
            .finish_non_exhaustive()
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let result = ready!(this.inner.as_mut().poll(cx));
        let elapsed = this.start.map(|s| s.elapsed());
        #[cfg(feature = "opentelemetry")]
        if let (Some(metrics), Some(elapsed)) = (this.metrics.take(), elapsed) {
            metrics.finish(elapsed, result.as_ref().ok().map(|r| r.status()));
        }
        let latency_ms = elapsed.filter(|_| *this.access_log).map(latency_ms);
        let id = this.inner.take_value();
        match result {
            Ok(mut response) => {
                if let Some(id) = id {
                    // One lookup; a header the handler set is kept.
                    response
                        .headers_mut()
                        .entry(&*this.response_header)
                        .or_insert(id.0);
                }
                if let Some(latency_ms) = latency_ms {
                    let status = response.status().as_u16();
                    this.span.in_scope(|| {
                        tracing::info!(
                            target: "tower_rampart::access",
                            status,
                            latency_ms,
                            "request completed"
                        );
                    });
                }
                Poll::Ready(Ok(response))
            }
            Err(error) => {
                if let Some(latency_ms) = latency_ms {
                    this.span.in_scope(|| {
                        tracing::warn!(
                            target: "tower_rampart::access",
                            latency_ms,
                            "request failed without a response"
                        );
                    });
                }
                Poll::Ready(Err(error))
            }
        }
    }
}

/// The HTTP server metrics of the semantic conventions.
#[cfg(feature = "opentelemetry")]
mod http_metrics {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, AtomicU16, Ordering};
    use std::time::Duration;

    use http::{Request, StatusCode};
    use opentelemetry::metrics::{Histogram, Meter};
    use opentelemetry::{KeyValue, Value};

    use crate::telemetry::{self, attribute};

    /// The instruments, created once per layer; `None` when nothing records (no provider):
    /// then a request costs one branch.
    #[derive(Clone)]
    pub(super) struct HttpMetrics(Option<Arc<Live>>);

    /// The instruments of a layer whose meter records.
    struct Live {
        duration: Histogram<f64>,
        /// Requests in flight per method (in [`telemetry::METHODS`] order), reported by
        /// `http.server.active_requests`'s callback: a request updates two atomics, not the
        /// SDK.
        active: [AtomicI64; telemetry::METHODS.len()],
        /// Methods seen so far (bit i for method i): only those are reported.
        seen: AtomicU16,
        methods: [[KeyValue; 1]; telemetry::METHODS.len()],
    }

    impl HttpMetrics {
        pub(super) fn new(meter: &Meter) -> Self {
            let live = Arc::new(Live {
                duration: meter
                    .f64_histogram(telemetry::HTTP_SERVER_REQUEST_DURATION)
                    .with_unit("s")
                    .with_description("Duration of HTTP server requests.")
                    .with_boundaries(telemetry::HTTP_DURATION_BOUNDARIES.to_vec())
                    .build(),
                active: Default::default(),
                seen: AtomicU16::new(0),
                methods: telemetry::METHODS
                    .map(|m| [telemetry::kv(attribute::HTTP_REQUEST_METHOD, m)]),
            });
            let counts = Arc::clone(&live);
            meter
                .i64_observable_up_down_counter(telemetry::HTTP_SERVER_ACTIVE_REQUESTS)
                .with_unit("{request}")
                .with_description("Number of active HTTP server requests.")
                .with_callback(move |observer| {
                    let seen = counts.seen.load(Ordering::Relaxed);
                    for (i, count) in counts.active.iter().enumerate() {
                        if seen & (1 << i) != 0 {
                            observer.observe(count.load(Ordering::Relaxed), &counts.methods[i]);
                        }
                    }
                })
                .build();
            HttpMetrics(telemetry::records(&live).then_some(live))
        }

        /// Whether the metrics are recorded (the layer then reads the clock).
        pub(super) fn on(&self) -> bool {
            self.0.is_some()
        }

        /// Counts the request as active until the returned value is finished or dropped;
        /// `None` when nothing records.
        pub(super) fn start<B>(&self, req: &Request<B>) -> Option<InFlight> {
            let live = self.0.as_ref()?;
            let method = telemetry::method_index(req.method());
            let bit = 1u16 << method;
            if live.seen.load(Ordering::Relaxed) & bit == 0 {
                live.seen.fetch_or(bit, Ordering::Relaxed);
            }
            live.active[method].fetch_add(1, Ordering::Relaxed);
            Some(InFlight {
                method,
                route: route(req),
                live: Arc::clone(live),
            })
        }
    }

    /// The route template axum matched (a router's `layer` runs after routing), never the
    /// path: its values are the application's routes, so the series stay bounded.
    #[cfg(feature = "axum")]
    fn route<B>(req: &Request<B>) -> Option<Value> {
        req.extensions()
            .get::<axum::extract::MatchedPath>()
            .map(|p| Value::from(p.as_str().to_owned()))
    }

    #[cfg(not(feature = "axum"))]
    fn route<B>(_req: &Request<B>) -> Option<Value> {
        None
    }

    /// A request being served.
    pub(super) struct InFlight {
        method: usize,
        route: Option<Value>,
        live: Arc<Live>,
    }

    impl InFlight {
        /// Records the duration (`status` `None`: the service failed without a response).
        pub(super) fn finish(mut self, elapsed: Duration, status: Option<StatusCode>) {
            // At most four attributes, on the stack; unused places hold a static filler.
            let mut attrs: [KeyValue; 4] = std::array::from_fn(|_| telemetry::kv("", ""));
            attrs[0] = self.live.methods[self.method][0].clone();
            let mut n = 1;
            if let Some(s) = status {
                attrs[n] =
                    KeyValue::new(attribute::HTTP_RESPONSE_STATUS_CODE, i64::from(s.as_u16()));
                n += 1;
            }
            let error = match status {
                Some(s) if s.is_server_error() => Some(telemetry::server_error_type(s.as_u16())),
                Some(_) => None,
                None => Some("_OTHER"),
            };
            if let Some(e) = error {
                attrs[n] = telemetry::kv(attribute::ERROR_TYPE, e);
                n += 1;
            }
            if let Some(r) = self.route.take() {
                attrs[n] = KeyValue::new(attribute::HTTP_ROUTE, r);
                n += 1;
            }
            self.live
                .duration
                .record(elapsed.as_secs_f64(), &attrs[..n]);
        }
    }

    impl Drop for InFlight {
        fn drop(&mut self) {
            self.live.active[self.method].fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Milliseconds rounded to the microsecond: the access line shows `0.472`, never
/// `0.47187900000000005` (a whole number of microseconds over 1000 has a short decimal form).
fn latency_ms(elapsed: std::time::Duration) -> f64 {
    let micros = (elapsed.as_nanos() + 500) / 1000;
    // Exact as f64 below 2^53 µs (285 years).
    micros as f64 / 1000.0
}

// The axum extractor (feature `axum`): documented on `CorrelationId`.
#[cfg(feature = "axum")]
mod axum_impls {
    use super::CorrelationId;

    crate::axum_extract::extension_extractor!(
        CorrelationId,
        MissingCorrelationIdLayer,
        "the CorrelationId extractor needs tower_rampart::correlation::CorrelationIdLayer \
         around this route",
        "super::CorrelationIdLayer"
    );
}

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use self::axum_impls::MissingCorrelationIdLayer;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_is_rounded_to_the_microsecond() {
        use std::time::Duration;
        assert_eq!(
            latency_ms(Duration::from_nanos(471_879)).to_string(),
            "0.472"
        );
        assert_eq!(
            latency_ms(Duration::from_nanos(471_479)).to_string(),
            "0.471"
        );
        assert_eq!(
            latency_ms(Duration::from_nanos(12_345_678_901)).to_string(),
            "12345.679"
        );
        assert_eq!(latency_ms(Duration::ZERO).to_string(), "0");
        // Every whole number of microseconds prints with at most three decimals.
        for micros in (0..2_000_000u64).step_by(7) {
            let text = latency_ms(Duration::from_micros(micros)).to_string();
            let decimals = text.split_once('.').map_or(0, |(_, d)| d.len());
            assert!(decimals <= 3, "{micros} µs printed as {text}");
        }
    }

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn accepts_the_allowed_alphabet_and_lengths() {
        assert!(check(b"a").is_ok());
        assert!(check(b"AZaz09._:-").is_ok());
        assert!(check("x".repeat(128).as_bytes()).is_ok());
        assert_eq!(check(b""), Err(Rejection::Empty));
        assert_eq!(check("x".repeat(129).as_bytes()), Err(Rejection::TooLong));
        for bad in ["a b", "a\tb", "a/b", "a\"b", "{}", "é", "a;b", "a,b", "a=b"] {
            assert_eq!(check(bad.as_bytes()), Err(Rejection::BadCharacter), "{bad}");
        }
    }

    #[test]
    fn traceparent_rules() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            traceparent_trace_id(&hv(good)).unwrap(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        // A future version may append fields.
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
        assert!(traceparent_trace_id(&hv(future)).is_ok());
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "",
        ] {
            assert!(traceparent_trace_id(&hv(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn minted_ids_are_valid_uuid_v7() {
        let id = CorrelationId::new_v7();
        let parsed = uuid::Uuid::parse_str(id.as_str()).unwrap();
        assert_eq!(parsed.get_version_num(), 7);
        assert!(check(id.as_str().as_bytes()).is_ok());
        assert_ne!(id, CorrelationId::new_v7());
    }

    #[test]
    fn preference_order_and_fallbacks() {
        let config = CorrelationIdLayer::new().config;
        let mut headers = HeaderMap::new();
        headers.insert(X_REQUEST_ID, hv("from-request-id"));
        headers.insert(
            TRACEPARENT,
            hv("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        assert_eq!(config.choose(&headers).0.as_str(), "from-request-id");

        headers.insert(X_CORRELATION_ID, hv("from-correlation-id"));
        assert_eq!(config.choose(&headers).0.as_str(), "from-correlation-id");

        // An invalid preferred header falls back to the next valid one, without complaint.
        headers.insert(X_CORRELATION_ID, hv("bad value"));
        assert_eq!(
            config.choose(&headers),
            (CorrelationId(hv("from-request-id")), None)
        );

        headers.remove(X_REQUEST_ID);
        let (id, why) = config.choose(&headers);
        assert_eq!(id.as_str(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(why, None);

        headers.remove(TRACEPARENT);
        let (id, why) = config.choose(&headers);
        assert_eq!(id.as_str().len(), 36);
        assert_eq!(why, Some(Rejection::BadCharacter));
    }

    #[test]
    fn a_repeated_header_is_refused() {
        let config = CorrelationIdLayer::new().config;
        let mut headers = HeaderMap::new();
        headers.append(X_CORRELATION_ID, hv("one"));
        headers.append(X_CORRELATION_ID, hv("two"));
        let (id, why) = config.choose(&headers);
        assert_ne!(id.as_str(), "one");
        assert_ne!(id.as_str(), "two");
        assert_eq!(why, Some(Rejection::Repeated));
    }

    #[test]
    fn untrusted_mode_always_mints() {
        let config = CorrelationIdLayer::new().trust_incoming(false).config;
        let mut headers = HeaderMap::new();
        headers.insert(X_CORRELATION_ID, hv("client-chosen"));
        let (id, why) = config.choose(&headers);
        assert_ne!(id.as_str(), "client-chosen");
        assert_eq!(why, None);
    }
}
