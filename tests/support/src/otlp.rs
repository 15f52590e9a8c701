//! An OTLP/HTTP receiver on a free loopback port: what an OpenTelemetry collector's
//! `otlphttp` receiver does, reduced to keeping what it is sent.
//!
//! `POST /v1/traces` and `POST /v1/metrics` with uncompressed protobuf bodies
//! (`application/x-protobuf`; the gateway's exporter does not compress) are decoded with the OpenTelemetry protobuf
//! definitions (`opentelemetry-proto`) and kept in memory; the answer is the empty export
//! response (full success). Anything else is answered `404`/`415`/`400` and counted in
//! [`OtlpReceiver::rejected`], so a test sees a wrong path or encoding instead of a silent
//! drop.
//!
//! The server is plain HTTP/1.1 on blocking sockets (a thread per connection, keep-alive,
//! `Content-Length` bodies: what the OTLP exporters send), so it needs no async runtime.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// The largest body accepted (the exporters' batches are far smaller).
const MAX_BODY: usize = 16 * 1024 * 1024;

#[derive(Default)]
struct Received {
    traces: Vec<ExportTraceServiceRequest>,
    metrics: Vec<ExportMetricsServiceRequest>,
    rejected: Vec<String>,
}

/// The receiver; stops accepting when dropped.
pub struct OtlpReceiver {
    addr: SocketAddr,
    received: Arc<Mutex<Received>>,
    stop: Arc<AtomicBool>,
}

impl OtlpReceiver {
    /// Listens on `127.0.0.1` on a free port.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the OTLP receiver");
        let addr = listener.local_addr().expect("the receiver's address");
        let received = Arc::new(Mutex::new(Received::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (received.clone(), stop.clone());
        std::thread::Builder::new()
            .name("otlp-receiver".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if s.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let r = r.clone();
                    std::thread::spawn(move || serve(stream, &r));
                }
            })
            .expect("start the receiver thread");
        Self {
            addr,
            received,
            stop,
        }
    }

    /// The base URL, for `OTEL_EXPORTER_OTLP_ENDPOINT` (`http://127.0.0.1:PORT`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<Span> {
        let received = self.received.lock().unwrap();
        received
            .traces
            .iter()
            .flat_map(|t| &t.resource_spans)
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| s.spans.iter().cloned())
            .collect()
    }

    /// The `service.name` of every resource that sent spans or metrics.
    pub fn service_names(&self) -> Vec<String> {
        let received = self.received.lock().unwrap();
        let traces = received
            .traces
            .iter()
            .flat_map(|t| &t.resource_spans)
            .filter_map(|r| r.resource.as_ref());
        let metrics = received
            .metrics
            .iter()
            .flat_map(|m| &m.resource_metrics)
            .filter_map(|r| r.resource.as_ref());
        traces
            .chain(metrics)
            .filter_map(|r| string_attribute(&r.attributes, "service.name"))
            .collect()
    }

    /// The sum of an integer counter's data points whose attributes include all of
    /// `attributes`, in the latest metrics export that carries the metric (the exporters
    /// send cumulative values); `None` if no export carried it.
    pub fn counter(&self, name: &str, attributes: &[(&str, &str)]) -> Option<i64> {
        let received = self.received.lock().unwrap();
        received.metrics.iter().rev().find_map(|export| {
            let mut found = false;
            let mut total = 0;
            let metrics = export
                .resource_metrics
                .iter()
                .flat_map(|r| &r.scope_metrics)
                .flat_map(|s| &s.metrics)
                .filter(|m| m.name == name);
            for m in metrics {
                let Some(metric::Data::Sum(sum)) = &m.data else {
                    continue;
                };
                found = true;
                for point in &sum.data_points {
                    let matches = attributes.iter().all(|(k, v)| {
                        string_attribute(&point.attributes, k).as_deref() == Some(*v)
                    });
                    if matches && let Some(number_data_point::Value::AsInt(n)) = point.value {
                        total += n;
                    }
                }
            }
            found.then_some(total)
        })
    }

    /// Requests refused (wrong path, method, encoding or body), as `METHOD path: why`.
    pub fn rejected(&self) -> Vec<String> {
        self.received.lock().unwrap().rejected.clone()
    }

    /// Polls `check` every 50 ms until it returns `Some`, or panics after `deadline`.
    pub fn wait_for<T>(
        &self,
        deadline: Duration,
        what: &str,
        mut check: impl FnMut(&Self) -> Option<T>,
    ) -> T {
        let started = Instant::now();
        loop {
            if let Some(t) = check(self) {
                return t;
            }
            assert!(
                started.elapsed() < deadline,
                "OTLP receiver: {what} not received within {deadline:?} (refused: {:?})",
                self.rejected()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// A string attribute's value.
pub fn string_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref() {
            Some(AnyValue {
                value: Some(any_value::Value::StringValue(s)),
            }) => Some(s.clone()),
            _ => None,
        })
}

/// Lowercase hex of an id (trace or span id bytes).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Serves one connection's requests until the client closes it.
fn serve(stream: TcpStream, received: &Mutex<Received>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        match reader.read_line(&mut request_line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut parts = request_line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or_default().to_owned(),
            parts.next().unwrap_or_default().to_owned(),
        );
        let mut length = 0usize;
        let mut encoding = String::new();
        let mut content_type = String::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                let value = value.trim();
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = value.parse().unwrap_or(usize::MAX),
                    "content-encoding" => encoding = value.to_ascii_lowercase(),
                    "content-type" => content_type = value.to_ascii_lowercase(),
                    _ => {}
                }
            }
        }
        if length > MAX_BODY {
            let _ = respond(&mut writer, 413);
            return;
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let status = handle(&method, &path, &encoding, &content_type, body, received);
        if respond(&mut writer, status).is_err() {
            return;
        }
    }
}

/// Decodes and keeps one export; the status to answer.
fn handle(
    method: &str,
    path: &str,
    encoding: &str,
    content_type: &str,
    body: Vec<u8>,
    received: &Mutex<Received>,
) -> u16 {
    let mut received = received.lock().unwrap();
    let mut refuse = |status: u16, why: &str| {
        received.rejected.push(format!("{method} {path}: {why}"));
        status
    };
    if method != "POST" {
        return refuse(405, "not a POST");
    }
    if content_type != "application/x-protobuf" {
        return refuse(415, &format!("content type {content_type:?}"));
    }
    let body = match encoding {
        "" | "identity" => body,
        // The gateway's exporter does not compress (no `gzip-http` feature): a compressed
        // body means the exporter's configuration changed, which the test should show.
        other => return refuse(415, &format!("content encoding {other:?}")),
    };
    match path {
        "/v1/traces" => match ExportTraceServiceRequest::decode(&body[..]) {
            Ok(export) => {
                received.traces.push(export);
                200
            }
            Err(e) => refuse(400, &format!("not an ExportTraceServiceRequest: {e}")),
        },
        "/v1/metrics" => match ExportMetricsServiceRequest::decode(&body[..]) {
            Ok(export) => {
                received.metrics.push(export);
                200
            }
            Err(e) => refuse(400, &format!("not an ExportMetricsServiceRequest: {e}")),
        },
        _ => refuse(404, "unknown path"),
    }
}

/// Writes a bodiless answer; a success is the empty export response, which in protobuf is
/// zero bytes.
fn respond(writer: &mut TcpStream, status: u16) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        _ => "Unsupported Media Type",
    };
    write!(
        writer,
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n"
    )?;
    writer.flush()
}
