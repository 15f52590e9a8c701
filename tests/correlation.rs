//! The correlation-id layer under concurrency, over real HTTP/1.1 and HTTP/2 connections,
//! with a JSON log subscriber capturing every event.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::Barrier;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_rampart::correlation::{CorrelationId, CorrelationIdLayer, propagate};

use common::{Capture, is_uuid_v7};

// ---------------------------------------------------------------------------------------
// A global JSON subscriber writing into memory. Each test marks its requests with a path
// of its own and reads back only its lines, so tests can share the subscriber.

fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture = Capture::default();
        tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(capture.clone())
            .init();
        capture
    })
}

/// Every captured event whose request span has `path` equal to `path`.
fn events_for_path(path: &str) -> Vec<Value> {
    String::from_utf8(capture().bytes())
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("each log line is JSON"))
        .filter(|event| event["span"]["path"] == path)
        .collect()
}

fn all_log_text() -> String {
    String::from_utf8(capture().bytes()).unwrap()
}

// ---------------------------------------------------------------------------------------

type Body = Full<Bytes>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_of_100_concurrent_requests_carries_its_own_id() {
    capture();
    const N: usize = 100;
    let barrier = Arc::new(Barrier::new(N));
    let service = ServiceBuilder::new()
        .layer(CorrelationIdLayer::new())
        .service(service_fn(move |req: Request<Body>| {
            let barrier = barrier.clone();
            async move {
                let expected = req.extensions().get::<CorrelationId>().unwrap().clone();
                tracing::info!(expected = %expected, step = 1, "handler started");
                tokio::task::yield_now().await;
                tracing::info!(expected = %expected, step = 2, "before barrier");
                // All 100 handlers are in flight at the same time here.
                barrier.wait().await;
                tracing::info!(expected = %expected, step = 3, "after barrier");
                let seen = CorrelationId::current().expect("task-local is set");
                assert_eq!(seen, expected);
                tokio::task::yield_now().await;
                tracing::debug!(expected = %expected, step = 4, "handler done");
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
            }
        }));

    let mut tasks = Vec::new();
    for i in 0..N {
        let service = service.clone();
        tasks.push(tokio::spawn(async move {
            let mut builder = Request::get("/concurrency?secret=hidden");
            // Half send their own id, half get a minted one.
            if i % 2 == 0 {
                builder = builder.header("x-correlation-id", format!("client-{i}"));
            }
            let response = service
                .oneshot(builder.body(Full::new(Bytes::new())).unwrap())
                .await
                .unwrap();
            let echoed = response.headers()["x-correlation-id"]
                .to_str()
                .unwrap()
                .to_owned();
            if i % 2 == 0 {
                assert_eq!(echoed, format!("client-{i}"));
            } else {
                assert!(is_uuid_v7(&echoed), "{echoed}");
            }
            echoed
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.unwrap());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), N, "every request got its own id");

    let events = events_for_path("/concurrency");
    let handler_events: Vec<_> = events
        .iter()
        .filter(|e| e["fields"]["step"].is_number())
        .collect();
    assert_eq!(handler_events.len(), 4 * N);
    for event in &handler_events {
        assert_eq!(
            event["span"]["correlation_id"], event["fields"]["expected"],
            "an event logged by one request carried another's id: {event}"
        );
    }
    // One access event per request, in its own span, with status and latency.
    let access: Vec<_> = events
        .iter()
        .filter(|e| e["target"] == "tower_rampart::access")
        .collect();
    assert_eq!(access.len(), N);
    for event in access {
        assert_eq!(event["fields"]["status"], 200);
        assert!(event["fields"]["latency_ms"].as_f64().unwrap() >= 0.0);
        assert_eq!(event["span"]["method"], "GET");
        assert!(
            ids.iter()
                .any(|id| event["span"]["correlation_id"] == id.as_str())
        );
    }
    // The query string never reaches the logs.
    assert!(!all_log_text().contains("secret=hidden"));
}

async fn echo_id(req: Request<Body>) -> Result<Response<Body>, Infallible> {
    let id = req.extensions().get::<CorrelationId>().unwrap();
    // The layer also rewrites the request header, so code reading headers sees the same id.
    assert_eq!(req.headers()["x-correlation-id"], id.as_str());
    Ok(Response::new(Full::new(Bytes::from(
        id.as_str().to_owned(),
    ))))
}

async fn call_with(header: &str, value: HeaderValue, path: &str) -> (String, String) {
    let service = ServiceBuilder::new()
        .layer(CorrelationIdLayer::new())
        .service(service_fn(echo_id));
    let mut req = Request::get(path).body(Full::new(Bytes::new())).unwrap();
    req.headers_mut().insert(
        http::HeaderName::from_bytes(header.as_bytes()).unwrap(),
        value,
    );
    let response = service.oneshot(req).await.unwrap();
    let echoed = response.headers()["x-correlation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (echoed, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn invalid_incoming_ids_are_replaced_and_never_logged() {
    capture();
    let long = "a".repeat(129);
    let cases: Vec<(&str, HeaderValue)> = vec![
        ("too-long", HeaderValue::from_str(&long).unwrap()),
        ("space", HeaderValue::from_static("has space")),
        (
            "non-ascii",
            HeaderValue::from_bytes("idé-42".as_bytes()).unwrap(),
        ),
        ("empty", HeaderValue::from_static("")),
        (
            "json-break",
            HeaderValue::from_static("x\",\"level\":\"ERROR"),
        ),
        ("log-forge", HeaderValue::from_static("id\\nFAKE LOG LINE")),
        (
            "header-inject",
            HeaderValue::from_static("abc%0d%0aSet-Cookie:%20evil=1"),
        ),
        ("tab", HeaderValue::from_bytes(b"ab\tcd").unwrap()),
        (
            "html",
            HeaderValue::from_static("<script>alert(1)</script>"),
        ),
    ];
    for (name, value) in cases {
        let path = format!("/invalid/{name}");
        let rejected = value.as_bytes().to_vec();
        let (echoed, seen_by_handler) = call_with("x-correlation-id", value, &path).await;
        assert!(is_uuid_v7(&echoed), "{name}: {echoed}");
        assert_eq!(echoed, seen_by_handler, "{name}");

        let events = events_for_path(&path);
        let warning = events
            .iter()
            .find(|e| e["level"] == "WARN")
            .unwrap_or_else(|| panic!("{name}: no warning about the rejected id"));
        assert!(warning["fields"]["reason"].is_string());
        if rejected.len() > 3 {
            let text = all_log_text();
            let needle = String::from_utf8_lossy(&rejected).into_owned();
            assert!(
                !text.contains(&needle),
                "{name}: the rejected value was logged"
            );
            // The JSON formatter escapes quotes, backslashes and tabs, so such a value would
            // not appear raw even if it were logged.
            let escaped = serde_json::to_string(&needle).unwrap();
            assert!(
                !text.contains(&escaped[1..escaped.len() - 1]),
                "{name}: the rejected value was logged (JSON-escaped)"
            );
        }
    }
}

#[tokio::test]
async fn valid_ids_from_each_source_are_kept() {
    capture();
    let (id, _) = call_with(
        "x-correlation-id",
        HeaderValue::from_static("Order_17:retry.2-a"),
        "/valid/1",
    )
    .await;
    assert_eq!(id, "Order_17:retry.2-a");

    let (id, _) = call_with(
        "x-request-id",
        HeaderValue::from_static("from-lb"),
        "/valid/2",
    )
    .await;
    assert_eq!(id, "from-lb");

    let (id, _) = call_with(
        "traceparent",
        HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        "/valid/3",
    )
    .await;
    assert_eq!(id, "0af7651916cd43dd8448eb211c80319c");

    let max = "Z".repeat(128);
    let (id, _) = call_with(
        "x-correlation-id",
        HeaderValue::from_str(&max).unwrap(),
        "/valid/4",
    )
    .await;
    assert_eq!(id, max);
    // A valid id produces no warning.
    assert!(
        events_for_path("/valid/1")
            .iter()
            .all(|e| e["level"] != "WARN")
    );
}

#[tokio::test]
async fn untrusted_mode_ignores_client_ids() {
    let service = ServiceBuilder::new()
        .layer(CorrelationIdLayer::new().trust_incoming(false))
        .service(service_fn(echo_id));
    let req = Request::get("/")
        .header("x-correlation-id", "chosen-by-client")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = service.oneshot(req).await.unwrap();
    let echoed = response.headers()["x-correlation-id"].to_str().unwrap();
    assert!(is_uuid_v7(echoed));
}

#[tokio::test]
async fn a_response_header_set_by_the_handler_is_not_overwritten() {
    let service = ServiceBuilder::new()
        .layer(CorrelationIdLayer::new())
        .service(service_fn(|_req: Request<Body>| async {
            let mut response = Response::new(Full::new(Bytes::new()));
            response.headers_mut().insert(
                "x-correlation-id",
                HeaderValue::from_static("set-by-handler"),
            );
            Ok::<_, Infallible>(response)
        }));
    let req = Request::get("/")
        .header("x-correlation-id", "incoming")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = service.oneshot(req).await.unwrap();
    let values: Vec<_> = response
        .headers()
        .get_all("x-correlation-id")
        .iter()
        .collect();
    assert_eq!(values, vec!["set-by-handler"]);
}

#[tokio::test]
async fn an_id_set_by_an_outer_layer_wins() {
    let service = ServiceBuilder::new()
        .map_request(|mut req: Request<Body>| {
            req.extensions_mut()
                .insert(CorrelationId::parse("outer-layer").unwrap());
            req
        })
        .layer(CorrelationIdLayer::new())
        .service(service_fn(echo_id));
    let req = Request::get("/")
        .header("x-correlation-id", "from-client")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = service.oneshot(req).await.unwrap();
    assert_eq!(response.headers()["x-correlation-id"], "outer-layer");
}

#[tokio::test]
async fn custom_headers_and_generator() {
    let service = ServiceBuilder::new()
        .layer(
            CorrelationIdLayer::new()
                .request_headers(["x-amzn-trace-id"])
                .response_header("x-amzn-trace-id")
                .traceparent(false)
                .make_id(|| CorrelationId::parse("fixed-for-test").unwrap()),
        )
        .service(service_fn(|req: Request<Body>| async move {
            let id = req.extensions().get::<CorrelationId>().unwrap().clone();
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(id.to_string()))))
        }));
    let req = Request::get("/")
        .header("x-correlation-id", "ignored-here")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = service.clone().oneshot(req).await.unwrap();
    assert_eq!(response.headers()["x-amzn-trace-id"], "fixed-for-test");
    assert!(response.headers().get("x-correlation-id").is_none());

    let req = Request::get("/")
        .header("x-amzn-trace-id", "from-aws")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = service.oneshot(req).await.unwrap();
    assert_eq!(response.headers()["x-amzn-trace-id"], "from-aws");
}

// ---------------------------------------------------------------------------------------
// Over real connections: HTTP/1.1, HTTP/2, and a gRPC-shaped response with trailers; the
// handler forwards the id to a second service through a real HTTP client.

type ServerBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

async fn serve<S>(service: S) -> SocketAddr
where
    S: Service<Request<Incoming>, Response = Response<ServerBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A downstream service that answers with the correlation id it received.
async fn downstream() -> SocketAddr {
    serve(service_fn(|req: Request<Incoming>| async move {
        let seen = req
            .headers()
            .get("x-correlation-id")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(seen)).boxed_unsync()))
    }))
    .await
}

async fn send(addr: SocketAddr, http2: bool, req: Request<Empty<Bytes>>) -> Response<Incoming> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let io = TokioIo::new(stream);
    if http2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        sender.send_request(req).await.unwrap()
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        sender.send_request(req).await.unwrap()
    }
}

async fn gateway(downstream: SocketAddr) -> SocketAddr {
    let service = ServiceBuilder::new()
        .layer(CorrelationIdLayer::new())
        .service(service_fn(move |req: Request<Incoming>| async move {
            if req.uri().path() == "/grpc" {
                // A gRPC response: headers, one message, then trailers.
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
                let frames = vec![
                    Frame::data(Bytes::from_static(b"\0\0\0\0\0")),
                    Frame::trailers(trailers),
                ];
                let body = GrpcBody {
                    frames: frames.into_iter(),
                };
                let response = Response::builder()
                    .header("content-type", "application/grpc")
                    .body(body.boxed_unsync())
                    .unwrap();
                return Ok::<_, Infallible>(response);
            }
            // Forward the id to the downstream service with a real client.
            let mut outgoing = Request::get(format!("http://{downstream}/"))
                .body(Empty::<Bytes>::new())
                .unwrap();
            assert!(propagate(&mut outgoing));
            let answer = send(downstream, false, outgoing).await;
            let seen = answer.into_body().collect().await.unwrap().to_bytes();
            Ok(Response::new(Full::new(seen).boxed_unsync()))
        }));
    serve(service).await
}

/// A gRPC-shaped body: one data frame, then trailers.
struct GrpcBody {
    frames: std::vec::IntoIter<Frame<Bytes>>,
}

impl hyper::body::Body for GrpcBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.frames.next().map(Ok))
    }
}

#[tokio::test]
async fn http1_and_http2_echo_and_forward_the_id() {
    let downstream = downstream().await;
    let gateway = gateway(downstream).await;
    for http2 in [false, true] {
        let req = Request::get(format!("http://{gateway}/forward"))
            .header("x-correlation-id", format!("over-the-wire-{http2}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = send(gateway, http2, req).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["x-correlation-id"],
            format!("over-the-wire-{http2}").as_str()
        );
        let seen_downstream = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(seen_downstream, format!("over-the-wire-{http2}").as_bytes());
    }
}

#[tokio::test]
async fn grpc_responses_keep_their_trailers_and_get_the_id() {
    let gateway = gateway(downstream().await).await;
    let req = Request::post(format!("http://{gateway}/grpc"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = send(gateway, true, req).await;
    assert_eq!(response.headers()["content-type"], "application/grpc");
    let id = response.headers()["x-correlation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(is_uuid_v7(&id));
    let collected = response.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(collected.to_bytes().len(), 5);
}

#[test]
fn layer_and_service_are_clone_send_sync_and_futures_send() {
    fn assert_clone_send_sync<T: Clone + Send + Sync>(_: &T) {}
    fn assert_send<T: Send>(_: &T) {}
    let layer = CorrelationIdLayer::new();
    assert_clone_send_sync(&layer);
    let mut service =
        ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(|_req: Request<Body>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
            }));
    assert_clone_send_sync(&service);
    let future = service.call(Request::new(Full::new(Bytes::new())));
    assert_send(&future);
}

#[tokio::test]
async fn access_line_latency_has_at_most_three_decimals() {
    capture();
    let path = "/latency-format";
    let service = ServiceBuilder::new()
        .layer(CorrelationIdLayer::new())
        .service(service_fn(echo_id));
    for _ in 0..20 {
        let request = Request::get(path).body(Body::default()).unwrap();
        service.clone().oneshot(request).await.unwrap();
    }
    // The raw JSON text, as a log store receives it (a parsed f64 would hide the digits).
    let lines: Vec<String> = all_log_text()
        .lines()
        .filter(|line| line.contains(r#""path":"/latency-format""#) && line.contains("latency_ms"))
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 20);
    for line in lines {
        let value = line
            .split(r#""latency_ms":"#)
            .nth(1)
            .and_then(|rest| rest.split([',', '}']).next())
            .unwrap();
        let decimals = value.split_once('.').map_or(0, |(_, d)| d.len());
        assert!(
            decimals <= 3 && value.parse::<f64>().is_ok(),
            "latency_ms written as {value}: {line}"
        );
    }
}

#[tokio::test]
async fn axum_extractor_gives_the_request_id_and_needs_the_layer() {
    use axum::{Router, routing::get};

    async fn handler(id: CorrelationId) -> String {
        id.to_string()
    }
    async fn optional(id: Option<CorrelationId>) -> String {
        id.map_or_else(|| "none".to_owned(), |id| id.to_string())
    }
    let body = |response: Response<axum::body::Body>| async move {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    };

    let with_layer = Router::new()
        .route("/", get(handler))
        .layer(CorrelationIdLayer::new());
    let request = Request::get("/")
        .header("x-correlation-id", "order-42")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = with_layer.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body(response).await, "order-42");

    // Forgetting the layer is the application's bug: a 500 that names the fix.
    let without = Router::new()
        .route("/", get(handler))
        .route("/optional", get(optional));
    let request = Request::get("/").body(axum::body::Body::empty()).unwrap();
    let response = without.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body(response).await.contains("CorrelationIdLayer"));
    let request = Request::get("/optional")
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(body(without.oneshot(request).await.unwrap()).await, "none");
}

#[tokio::test]
async fn a_panicking_handler_inside_the_recommended_stack_is_a_500_with_its_id_and_access_line() {
    use axum::{Router, routing::get};
    use tower_http::catch_panic::CatchPanicLayer;
    capture();

    async fn boom() -> &'static str {
        panic!("handler bug")
    }
    // As the README stacks them: the panic is caught inside the correlation layer.
    let app = Router::new().route("/panics", get(boom)).layer(
        ServiceBuilder::new()
            .layer(CorrelationIdLayer::new())
            .layer(CatchPanicLayer::new()),
    );
    let request = Request::get("/panics")
        .header("x-correlation-id", "panic-7")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(response.headers()["x-correlation-id"], "panic-7");
    let access: Vec<Value> = events_for_path("/panics")
        .into_iter()
        .filter(|e| e["target"] == "tower_rampart::access")
        .collect();
    assert_eq!(access.len(), 1);
    assert_eq!(access[0]["fields"]["status"], 500);
    assert_eq!(access[0]["span"]["correlation_id"], "panic-7");
}

/// The client-side layer on a real pooled HTTP client (hyper-util's legacy `Client`, shared
/// by concurrent requests): each request the service handles calls a downstream service
/// through the one client, and each downstream call carries the id of the request that made
/// it; a call made outside of any request carries none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_client_wrapped_in_the_layer_forwards_each_requests_own_id() {
    use hyper_util::client::legacy::Client;
    use tower_rampart::correlation::PropagateCorrelationIdLayer;

    let downstream = downstream().await;
    let client = ServiceBuilder::new()
        .layer(PropagateCorrelationIdLayer::new())
        .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
    let service = {
        let client = client.clone();
        ServiceBuilder::new()
            .layer(CorrelationIdLayer::new())
            .service(service_fn(move |_req: Request<Incoming>| {
                let client = client.clone();
                async move {
                    let outgoing = Request::get(format!("http://{downstream}/"))
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    let answer = client.oneshot(outgoing).await.unwrap();
                    let seen = answer.into_body().collect().await.unwrap().to_bytes();
                    Ok::<_, Infallible>(Response::new(Full::new(seen).boxed_unsync()))
                }
            }))
    };
    let upstream = serve(service).await;
    let calls = (0..20).map(|i| async move {
        let req = Request::get(format!("http://{upstream}/"))
            .header("x-correlation-id", format!("shared-client-{i}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = send(upstream, i % 2 == 0, req).await;
        let seen = response.into_body().collect().await.unwrap().to_bytes();
        (i, seen)
    });
    for (i, seen) in futures_join_all(calls).await {
        assert_eq!(seen, format!("shared-client-{i}").as_bytes());
    }

    // Outside of a request: the downstream sees no id.
    let outgoing = Request::get(format!("http://{downstream}/"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let answer = client.oneshot(outgoing).await.unwrap();
    assert!(
        answer
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty()
    );
}

/// Runs the futures concurrently on tasks of their own and collects their outputs in order.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
