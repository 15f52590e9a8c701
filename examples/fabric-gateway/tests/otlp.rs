//! `OTEL_EXPORTER_OTLP_ENDPOINT` end to end, against the test support's OTLP/HTTP receiver
//! (protobuf bodies decoded with the OpenTelemetry definitions): the gateway is set up the
//! way `main` does it (telemetry installed, then the subscriber with the tracing bridge),
//! a user signs in and asks 11 questions under the default 10/minute quotas, the first one
//! with a caller's `traceparent`.
//!
//! - the caller's span is the parent of the gateway's `request` span (same trace id), whose
//!   attributes carry the correlation id;
//! - the fake data agent receives the same trace id with another parent id: a span of the
//!   gateway's, in that trace;
//! - the metrics arrive through the same provider: the 11th question's rejection is counted
//!   in `rampart.rate_limit.decisions` (by both query quotas), the resource is
//!   `fabric-gateway`; with `METRICS_ADDR` set too, the Prometheus endpoint (the same
//!   provider's other reader) shows the same count.

mod common;

use std::time::Duration;

use common::{Gateway, browser, config, dev_token, query, sign_in};
use fabric_gateway::config::LogFormat;
use fabric_gateway::{logging, otel};
use rampart_test_support::otlp::{OtlpReceiver, hex, string_attribute};
use serde_json::json;

/// Everything the test does has to fit in this.
const DEADLINE: Duration = Duration::from_secs(60);
/// How long the receiver may take to see a flushed export.
const RECEIVE: Duration = Duration::from_secs(20);

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER: &str = "b7ad6b7169203331";
const CORRELATION_ID: &str = "otlp-e2e-1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_and_metrics_reach_an_otlp_receiver() {
    tokio::time::timeout(DEADLINE, scenario())
        .await
        .expect("the OTLP scenario finishes within its deadline");
}

async fn scenario() {
    let receiver = OtlpReceiver::start();
    let endpoint = receiver.endpoint();
    let config = config(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("METRICS_ADDR", "127.0.0.1:0"),
    ]);
    // As `main` does: telemetry first, then the subscriber with the bridge.
    otel::install(&config).expect("OTLP export is set up");
    let tracer = otel::tracer().expect("traces are exported");
    let subscriber =
        logging::subscriber_with_traces(LogFormat::Json, "info", std::io::sink, Some(tracer))
            .unwrap();
    tracing::subscriber::set_global_default(subscriber).expect("no other subscriber");
    let gw = Gateway::start_uncaptured(config).await;
    let agent = gw
        .handle
        .fake_agent()
        .expect("local mode runs the fake data agent");

    let http = browser();
    let token = dev_token(&http, &gw, "ada@example.com", "Ada Lovelace").await;
    sign_in(&http, &gw, &token).await;

    // The first question comes from a traced caller.
    let traced = http
        .post(gw.url("/query"))
        .header("traceparent", format!("00-{TRACE}-{CALLER}-01"))
        .header("x-correlation-id", CORRELATION_ID)
        .json(&json!({ "query": "Question 1?" }))
        .send()
        .await
        .unwrap();
    assert_eq!(traced.status(), 200);
    let mut statuses = vec![200];
    for i in 2..=11 {
        let resp = query(&http, &gw, &format!("Question {i}?")).await;
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(statuses, [vec![200; 10], vec![429]].concat());

    // One meter provider, two readers: Prometheus sees the same two rejections.
    let metrics_addr = gw.handle.metrics_addr().expect("METRICS_ADDR is served");
    let text = http
        .get(format!("http://{metrics_addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let scraped: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("rampart_rate_limit_decisions_total{")
                && l.contains(r#"rampart_rate_limit_result="rejected""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(scraped, 2.0, "{text}");

    // What main does at exit: flush the batch and the readers (blocking calls).
    tokio::task::spawn_blocking(otel::force_flush)
        .await
        .unwrap();
    let agent_requests = agent.controls.requests();
    let receiver = tokio::task::spawn_blocking(move || {
        check(&receiver, &agent_requests);
        receiver
    })
    .await
    .unwrap();
    assert!(receiver.rejected().is_empty(), "{:?}", receiver.rejected());
}

fn check(receiver: &OtlpReceiver, agent_requests: &[fabric_gateway::fake_agent::RecordedRequest]) {
    // The gateway's server span: the child of the caller's, the correlation id attached.
    let server = receiver.wait_for(RECEIVE, "the traced request's span", |r| {
        r.spans().into_iter().find(|s| {
            s.name == "request" && hex(&s.trace_id) == TRACE && hex(&s.parent_span_id) == CALLER
        })
    });
    assert_eq!(
        string_attribute(&server.attributes, "correlation_id").as_deref(),
        Some(CORRELATION_ID)
    );
    assert_eq!(
        string_attribute(&server.attributes, "path").as_deref(),
        Some("/query")
    );
    let in_trace: Vec<String> = receiver
        .spans()
        .iter()
        .filter(|s| hex(&s.trace_id) == TRACE)
        .map(|s| hex(&s.span_id))
        .collect();

    // The data agent saw the same trace with a gateway span as the parent.
    let forwarded: Vec<&str> = agent_requests
        .iter()
        .filter(|r| r.correlation_id.as_deref() == Some(CORRELATION_ID))
        .map(|r| {
            r.traceparent
                .as_deref()
                .unwrap_or_else(|| panic!("no traceparent: {} {}", r.method, r.path))
        })
        .collect();
    assert!(
        !forwarded.is_empty(),
        "no call to the data agent for the traced question"
    );
    for traceparent in forwarded {
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{traceparent}");
        assert_eq!(parts[1], TRACE, "same trace id: {traceparent}");
        assert_ne!(parts[2], CALLER, "a new parent id: {traceparent}");
        assert!(
            in_trace.iter().any(|id| id == parts[2]),
            "the parent {} is one of the gateway's spans in the trace {in_trace:?}",
            parts[2]
        );
    }
    // The other questions started traces of their own, also passed on.
    let untraced = agent_requests
        .iter()
        .filter(|r| r.correlation_id.as_deref() != Some(CORRELATION_ID))
        .filter_map(|r| r.traceparent.as_deref())
        .filter(|t| !t.contains(TRACE))
        .count();
    assert!(
        untraced > 0,
        "the other questions' calls carry their own traces"
    );

    // The 11th question: refused by the per-user and the per-IP quota, one decision each.
    let rejected = receiver.wait_for(RECEIVE, "the rate-limit rejections", |r| {
        r.counter(
            "rampart.rate_limit.decisions",
            &[("rampart.rate_limit.result", "rejected")],
        )
        .filter(|n| *n >= 2)
    });
    assert_eq!(rejected, 2);
    assert_eq!(
        receiver.counter(
            "rampart.rate_limit.decisions",
            &[
                ("rampart.rate_limit.policy", "query-user"),
                ("rampart.rate_limit.result", "rejected")
            ],
        ),
        Some(1)
    );
    assert_eq!(
        receiver.counter(
            "rampart.rate_limit.decisions",
            &[
                ("rampart.rate_limit.policy", "query-user"),
                ("rampart.rate_limit.result", "allowed")
            ],
        ),
        Some(10)
    );
    let names = receiver.service_names();
    assert!(!names.is_empty());
    assert!(names.iter().all(|n| n == "fabric-gateway"), "{names:?}");
}
