//! `APPLICATIONINSIGHTS_CONNECTION_STRING` end to end, against a local receiver speaking
//! Application Insights' ingestion protocol: `POST /v2.1/track` (and the older
//! `/v2/track`) with a JSON array (or newline-delimited JSON) of envelopes, gzipped when
//! `Content-Encoding: gzip` says so, answered with `{"itemsReceived", "itemsAccepted",
//! "errors"}`. The connection string's `IngestionEndpoint` points at it.
//!
//! A user signs in (after one refused token) and asks 11 questions under the default
//! 10/minute per-user quota; after a flush, the deltas the receiver got must add up to
//! exactly those counts: the HTTP requests by route and status, the limiter's decisions by
//! quota and result, the gateway's 429 counter. The instrumentation key reaches the
//! receiver in every envelope and no log line. `METRICS_ADDR` is set too: the Prometheus
//! reader of the same meter provider shows the same counts.

mod common;

use std::io::Read as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::{Gateway, assert_no_secret_logged, browser, dev_token, login, query, sign_in};
use serde_json::{Value, json};

/// Everything the test does has to fit in this.
const DEADLINE: Duration = Duration::from_secs(60);
/// The receiver must have the expected totals within this after the last request.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(20);
const KEY: &str = "8d4d3c2b-1a09-4f8e-9d7c-6b5a49382716";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_insights_receives_the_exact_counts() {
    tokio::time::timeout(DEADLINE, scenario())
        .await
        .expect("the Application Insights scenario finishes within its deadline");
}

/// What the receiver got: one entry per post.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Post>>>);

#[derive(Clone, Debug)]
struct Post {
    path: &'static str,
    gzip: bool,
    envelopes: Vec<Value>,
}

impl Received {
    fn envelopes(&self) -> Vec<Value> {
        let posts = self.0.lock().unwrap();
        posts.iter().flat_map(|p| p.envelopes.clone()).collect()
    }

    /// The sum of the `value`s (counters) or `count`s (histograms, `count: true`) of the
    /// metric `name` over the envelopes whose properties include `properties`.
    fn total(&self, name: &str, properties: &[(&str, &str)], count: bool) -> f64 {
        self.envelopes()
            .iter()
            .filter_map(|e| {
                let base = &e["data"]["baseData"];
                let point = &base["metrics"][0];
                let matches = point["name"] == name
                    && properties
                        .iter()
                        .all(|(k, v)| base["properties"][*k].as_str() == Some(*v));
                matches.then(|| {
                    if count {
                        point["count"].as_f64().unwrap_or(0.0)
                    } else {
                        point["value"].as_f64().unwrap_or(0.0)
                    }
                })
            })
            .sum()
    }
}

/// Serves the ingestion endpoint on a loopback port; returns its base URL.
async fn start_receiver(received: Received) -> String {
    async fn track(
        path: &'static str,
        received: Received,
        headers: HeaderMap,
        body: Bytes,
    ) -> (StatusCode, axum::Json<Value>) {
        let gzip = match headers.get("content-encoding").map(|v| v.as_bytes()) {
            None => false,
            Some(b"gzip") => true,
            Some(other) => {
                let other = String::from_utf8_lossy(other).into_owned();
                return (
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    axum::Json(json!({"error": format!("encoding {other}")})),
                );
            }
        };
        let mut text = String::new();
        if gzip {
            flate2::read::GzDecoder::new(&body[..])
                .read_to_string(&mut text)
                .expect("a gzip body");
        } else {
            text = String::from_utf8(body.to_vec()).expect("a UTF-8 body");
        }
        // A JSON array, or one envelope per line.
        let envelopes: Vec<Value> = match serde_json::from_str::<Value>(&text) {
            Ok(Value::Array(items)) => items,
            _ => text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str(l).expect("an envelope per line"))
                .collect(),
        };
        let n = envelopes.len();
        received.0.lock().unwrap().push(Post {
            path,
            gzip,
            envelopes,
        });
        (
            StatusCode::OK,
            axum::Json(json!({"itemsReceived": n, "itemsAccepted": n, "errors": []})),
        )
    }
    let router = Router::new()
        .route(
            "/v2.1/track",
            post(|State(r): State<Received>, h: HeaderMap, b: Bytes| track("/v2.1/track", r, h, b)),
        )
        .route(
            "/v2/track",
            post(|State(r): State<Received>, h: HeaderMap, b: Bytes| track("/v2/track", r, h, b)),
        )
        .with_state(received);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    format!("http://{addr}")
}

/// A metric name, the properties its envelopes must carry, whether to add up histogram
/// counts (else values), and the expected total.
type Expectation = (
    &'static str,
    &'static [(&'static str, &'static str)],
    bool,
    f64,
);

async fn flush() {
    tokio::task::spawn_blocking(fabric_gateway::otel::force_flush)
        .await
        .unwrap();
}

async fn scenario() {
    let received = Received::default();
    let endpoint = start_receiver(received.clone()).await;
    let connection_string = format!(
        "InstrumentationKey={KEY};IngestionEndpoint={endpoint}/;LiveEndpoint=http://127.0.0.1:9/;ApplicationId=00000000-0000-0000-0000-000000000000"
    );
    let gw = Gateway::local(&[
        ("APPLICATIONINSIGHTS_CONNECTION_STRING", &connection_string),
        // Periodic exports run beside the flushes: the deltas still add up.
        ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
        // Prometheus too: one meter provider, two readers.
        ("METRICS_ADDR", "127.0.0.1:0"),
    ])
    .await;
    let metrics_addr = gw.handle.metrics_addr().expect("METRICS_ADDR is served");
    let http = browser();

    // One refused token (not a JWT), then Ada signs in.
    let refused = login(&http, &gw, "not-a-token").await;
    assert_eq!(refused.status(), 401);
    let token = dev_token(&http, &gw, "ada@example.com", "Ada Lovelace").await;
    sign_in(&http, &gw, &token).await;

    // Eleven questions under the default 10/minute per-user quota: the eleventh is a 429.
    let mut statuses = Vec::new();
    for i in 1..=11 {
        let resp = query(&http, &gw, &format!("Question {i}?")).await;
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(statuses, [vec![200; 10], vec![429]].concat());

    let expectations: [Expectation; 9] = [
        (
            "http.server.request.duration",
            &[
                ("http.route", "/query"),
                ("http.response.status_code", "200"),
            ],
            true,
            10.0,
        ),
        (
            "http.server.request.duration",
            &[
                ("http.route", "/query"),
                ("http.response.status_code", "429"),
            ],
            true,
            1.0,
        ),
        (
            "rampart.rate_limit.decisions",
            &[
                ("rampart.rate_limit.policy", "query-user"),
                ("rampart.rate_limit.result", "allowed"),
            ],
            false,
            10.0,
        ),
        (
            "rampart.rate_limit.decisions",
            &[
                ("rampart.rate_limit.policy", "query-user"),
                ("rampart.rate_limit.result", "rejected"),
            ],
            false,
            1.0,
        ),
        (
            "rampart.rate_limit.decisions",
            &[
                ("rampart.rate_limit.policy", "query-ip"),
                ("rampart.rate_limit.result", "rejected"),
            ],
            false,
            1.0,
        ),
        (
            "rampart.rate_limit.decisions",
            &[("rampart.rate_limit.result", "rejected")],
            false,
            2.0,
        ),
        (
            "fabric_gateway.requests.rate_limited",
            &[("http.route", "/query")],
            false,
            1.0,
        ),
        (
            "fabric_gateway.token.validation_failures",
            &[("reason", "malformed")],
            false,
            1.0,
        ),
        ("fabric_gateway.data_agent.duration", &[], true, 10.0),
    ];
    let actual = || {
        expectations
            .iter()
            .map(|(name, props, count, _)| received.total(name, props, *count))
            .collect::<Vec<f64>>()
    };
    let expected: Vec<f64> = expectations.iter().map(|e| e.3).collect();
    let started = Instant::now();
    loop {
        flush().await;
        if actual() == expected {
            break;
        }
        assert!(
            started.elapsed() < DELIVERY_DEADLINE,
            "the receiver's totals {:?} are not {expected:?} after {DELIVERY_DEADLINE:?}",
            actual()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Stable: another export adds nothing (deltas are not sent twice).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    flush().await;
    assert_eq!(actual(), expected, "after one more export");

    // The Prometheus reader of the same provider saw the same (cumulative) counts.
    let text = browser()
        .get(format!("http://{metrics_addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("fabric_gateway_requests_rate_limited_total{")
                && l.contains(r#"http_route="/query""#)
        })
        .unwrap_or_else(|| panic!("no 429 counter in:\n{text}"));
    assert!(line.ends_with(" 1"), "{line}");

    // The envelopes are the protocol's: gzipped posts to /v2.1/track, each envelope a
    // MetricData for our key, with the service as its cloud role.
    let posts = received.0.lock().unwrap().clone();
    assert!(!posts.is_empty());
    for post in &posts {
        assert_eq!(post.path, "/v2.1/track");
        assert!(post.gzip, "posts are gzipped");
    }
    let envelopes = received.envelopes();
    for e in &envelopes {
        assert_eq!(e["name"], "Microsoft.ApplicationInsights.Metric", "{e}");
        assert_eq!(e["iKey"], KEY, "{e}");
        assert_eq!(e["data"]["baseType"], "MetricData", "{e}");
        assert_eq!(e["data"]["baseData"]["ver"], 2, "{e}");
        assert_eq!(e["tags"]["ai.cloud.role"], "fabric-gateway", "{e}");
        let time = e["time"].as_str().expect("a time");
        assert!(
            time.len() == 27 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
            "{time}"
        );
        let points = e["data"]["baseData"]["metrics"].as_array().unwrap();
        assert_eq!(points.len(), 1, "{e}");
        let kind = points[0]["kind"].as_u64();
        assert!(
            kind == Some(0) || (kind == Some(1) && points[0]["count"].is_u64()),
            "{e}"
        );
        // Never a client key in the properties.
        let properties = e["data"]["baseData"]["properties"].to_string();
        assert!(
            !properties.contains("127.0.0.1") && !properties.contains("ada@"),
            "{e}"
        );
    }
    // Histograms are aggregations with min <= max and a positive sum.
    let durations: Vec<&Value> = envelopes
        .iter()
        .map(|e| &e["data"]["baseData"]["metrics"][0])
        .filter(|p| p["name"] == "fabric_gateway.data_agent.duration")
        .collect();
    assert!(!durations.is_empty());
    for p in durations {
        assert_eq!(p["kind"], 1, "{p}");
        assert!(p["value"].as_f64().unwrap() > 0.0, "{p}");
        assert!(
            p["min"].as_f64().unwrap() <= p["max"].as_f64().unwrap(),
            "{p}"
        );
    }

    // Every metric sent is one the tables of src/telemetry.rs and src/metrics.rs document.
    let documented = common::documented::documented();
    for e in &envelopes {
        let name = e["data"]["baseData"]["metrics"][0]["name"]
            .as_str()
            .unwrap();
        assert!(
            documented.names.contains(name),
            "{name} was sent but is not documented"
        );
    }

    assert_no_secret_logged(&[KEY, &connection_string]);
}

#[tokio::test]
async fn invalid_connection_strings_stop_start_up_without_repeating_them() {
    use fabric_gateway::config::Config;
    for (value, says) in [
        ("InstrumentationKey=", "no InstrumentationKey"),
        ("InstrumentationKey=secret-but-not-a-guid", "not a GUID"),
        (
            "InstrumentationKey=8d4d3c2b-1a09-4f8e-9d7c-6b5a49382716;IngestionEndpoint=localhost:1",
            "not an http(s):// URL",
        ),
    ] {
        let e = Config::from_lookup(|name| {
            (name == "APPLICATIONINSIGHTS_CONNECTION_STRING").then(|| value.to_owned())
        })
        .expect_err(value);
        assert_eq!(
            e.variables(),
            ["APPLICATIONINSIGHTS_CONNECTION_STRING"],
            "{value}"
        );
        let message = e.to_string();
        assert!(message.contains(says), "{value}: {message}");
        assert!(
            !message.contains("secret-but") && !message.contains("8d4d3c2b"),
            "{message}"
        );
    }
    let e = Config::from_lookup(|name| {
        (name == "OTEL_METRIC_EXPORT_INTERVAL").then(|| "soon".to_owned())
    })
    .expect_err("not a number");
    assert_eq!(e.variables(), ["OTEL_METRIC_EXPORT_INTERVAL"]);
}
