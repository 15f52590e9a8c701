//! The gateway's outgoing HTTP calls (the data agent, the identity keys): reqwest behind
//! tower-rampart's [`PropagateCorrelationIdLayer`], so every call made while serving a
//! request carries that request's `X-Correlation-ID`, and, with OTLP export on
//! ([`crate::otel`]), its W3C trace context (`traceparent`: same trace, the gateway's span as
//! the parent).
//!
//! reqwest's tower `Service` takes a `reqwest::Request`, while the layer is written for any
//! `Service<http::Request<B>>` (hyper-util's client, tonic channels...). Rather than give the
//! library a reqwest-specific layer, or move the gateway to hyper-util's client (losing
//! reqwest's redirects, proxies and JSON helpers), [`HttpClient`] puts a small adapter
//! between them: the request is built with reqwest's builder as before, converted to an
//! `http::Request` (reqwest converts both ways), passed through the layer, and converted
//! back. reqwest's conversion drops the per-request timeout, so the adapter carries it in the
//! request's extensions.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use opentelemetry::context::FutureExt as _;
use reqwest::{RequestBuilder, Response};
use tower::{Layer, Service, ServiceExt};
use tower_rampart::correlation::{
    CorrelationId, PropagateCorrelationId, PropagateCorrelationIdLayer,
};

/// reqwest behind the correlation layer. Cheap to clone (reqwest's pool is shared).
#[derive(Clone, Debug)]
pub(crate) struct HttpClient {
    client: reqwest::Client,
    service: PropagateCorrelationId<Reqwest>,
}

impl HttpClient {
    pub(crate) fn new(client: reqwest::Client) -> Self {
        let service = PropagateCorrelationIdLayer::new().layer(Reqwest(client.clone()));
        Self { client, service }
    }

    /// The reqwest client, to build requests with (send them with [`send`](Self::send)).
    pub(crate) fn reqwest(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends the request through the layer: with the current request's correlation id, if
    /// any.
    pub(crate) async fn send(&self, request: RequestBuilder) -> Result<Response, reqwest::Error> {
        let request = request.build()?;
        let timeout = request.timeout().copied();
        let mut request: http::Request<reqwest::Body> = request.try_into()?;
        if let Some(timeout) = timeout {
            request.extensions_mut().insert(Timeout(timeout));
        }
        self.service.clone().oneshot(request).await
    }
}

/// Spawns `task` with the current request's correlation id in scope, so the calls a
/// background task makes for a request (closing an MCP session, deleting threads) carry it,
/// and with the current OpenTelemetry context, so they carry the request's trace too (the
/// request span as their parent; the span itself is not kept open for the task).
pub(crate) fn spawn_in_request_scope<F>(task: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let task = task.with_current_context();
    match CorrelationId::current() {
        Some(id) => tokio::spawn(id.scope(task)),
        None => tokio::spawn(task),
    };
}

/// A request's own timeout, carried across the `http::Request` conversion.
#[derive(Clone, Copy, Debug)]
struct Timeout(Duration);

/// reqwest as a `Service<http::Request<_>>`.
#[derive(Clone, Debug)]
struct Reqwest(reqwest::Client);

impl Service<http::Request<reqwest::Body>> for Reqwest {
    type Response = Response;
    type Error = reqwest::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, reqwest::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<reqwest::Body>) -> Self::Future {
        let timeout = request.extensions_mut().remove::<Timeout>();
        let client = self.0.clone();
        Box::pin(async move {
            let mut request = reqwest::Request::try_from(request)?;
            *request.timeout_mut() = timeout.map(|t| t.0);
            client.execute(request).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-request timeout survives the trip through `http::Request`.
    #[tokio::test(start_paused = true)]
    async fn the_request_timeout_is_kept() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Accepts and never answers.
        let _server = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                held.push(socket);
            }
        });
        let client = HttpClient::new(reqwest::Client::new());
        let err = client
            .send(
                client
                    .reqwest()
                    .get(format!("http://{addr}/"))
                    .timeout(Duration::from_millis(200)),
            )
            .await
            .unwrap_err();
        // Without the timeout the call would wait forever (the test's deadline would fail
        // it); the paused clock makes the 200 ms pass at once.
        assert!(err.is_timeout(), "{err}");
    }
}
