//! `METRICS_ADDR` end to end with a real Prometheus (Debian's `prometheus` package;
//! `scripts/test.sh` installs it when missing): Prometheus scrapes the gateway's metrics
//! listener every second while a user signs in (after one refused token) and asks 11
//! questions under the default 10/minute per-user quota; once a scrape newer than the last
//! request is in, Prometheus's HTTP API must show exactly those counts (raw counter values,
//! not `rate`/`increase`).
//!
//! Also: the public port does not serve `/metrics`, and the metrics listener answers in the
//! Prometheus text format 0.0.4.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Gateway, browser, dev_token, login, query, sign_in};
use fabric_gateway::metrics;
use serde_json::Value;

/// Everything the test does, Prometheus's start-up included, has to fit in this.
const DEADLINE: Duration = Duration::from_secs(90);
/// Prometheus must answer `/-/ready` within this.
const START_DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_exact_counts_from_the_metrics_listener() {
    tokio::time::timeout(DEADLINE, scenario())
        .await
        .expect("the Prometheus scenario finishes within its deadline");
}

async fn scenario() {
    let gw = Gateway::local(&[("METRICS_ADDR", "127.0.0.1:0")]).await;
    let metrics_addr = gw.handle.metrics_addr().expect("METRICS_ADDR is served");
    assert_ne!(metrics_addr.port(), gw.addr.port());
    let http = browser();

    // The public port has no /metrics; the metrics listener speaks the text format.
    let public = http.get(gw.url("/metrics")).send().await.unwrap();
    assert_eq!(public.status(), 404, "/metrics on the public port");
    let scrape = http
        .get(format!("http://{metrics_addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(scrape.status(), 200);
    assert_eq!(
        scrape.headers()["content-type"],
        "text/plain; version=0.0.4",
        "Prometheus text format 0.0.4"
    );

    let prometheus = Prometheus::start(&format!("{metrics_addr}")).await;

    // One refused token (not a JWT), then Ada signs in.
    let refused = login(&http, &gw, "not-a-token").await;
    assert_eq!(refused.status(), 401);
    let token = dev_token(&http, &gw, "ada@example.com", "Ada Lovelace").await;
    sign_in(&http, &gw, &token).await;

    // Eleven questions under the default 10/minute per-user quota: the data agent gets ten
    // (the first one refused by it with 403), the eleventh is a 429 from the gateway.
    gw.handle
        .fake_agent()
        .expect("local mode runs the fake data agent")
        .controls
        .fail_next_requests(1, 403, None);
    let mut statuses = Vec::new();
    for i in 1..=11 {
        let resp = query(&http, &gw, &format!("Question {i}?")).await;
        statuses.push(resp.status().as_u16());
        if i == 1 {
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["success"], false, "{body}");
            let error = body["error"].as_str().unwrap_or_default();
            assert!(error.starts_with("FABRIC_PERMISSION_ERROR"), "{body}");
        }
    }
    assert_eq!(statuses, [vec![200; 10], vec![429]].concat());
    let last_request = unix_seconds();

    // A scrape that started after the last request.
    prometheus.wait_for_scrape_after(last_request).await;

    let sum = |name: &str| format!("sum({name})");
    let expectations: [(String, f64); 16] = [
        // Ten questions reached the data agent, over MCP, one failed.
        (
            sum("fabric_gateway_data_agent_duration_seconds_count"),
            10.0,
        ),
        (
            r#"fabric_gateway_data_agent_duration_seconds_count{protocol="mcp",error_type=""}"#
                .to_owned(),
            9.0,
        ),
        (
            r#"fabric_gateway_data_agent_duration_seconds_count{protocol="mcp",error_type="permission_error"}"#
                .to_owned(),
            1.0,
        ),
        (
            r#"sum(fabric_gateway_data_agent_duration_seconds_bucket{le="+Inf"})"#.to_owned(),
            10.0,
        ),
        (
            r#"fabric_gateway_data_agent_errors_total{protocol="mcp",error_type="permission_error"}"#
                .to_owned(),
            1.0,
        ),
        (sum("fabric_gateway_data_agent_errors_total"), 1.0),
        // One token refused, as malformed.
        (
            r#"fabric_gateway_token_validation_failures_total{reason="malformed"}"#.to_owned(),
            1.0,
        ),
        (sum("fabric_gateway_token_validation_failures_total"), 1.0),
        // One 429, on /query.
        (
            r#"fabric_gateway_requests_rate_limited_total{http_route="/query"}"#.to_owned(),
            1.0,
        ),
        (sum("fabric_gateway_requests_rate_limited_total"), 1.0),
        // The library's layers record through the same provider: the HTTP server metrics
        // by route and status, and the limiter's decisions by quota and result (the 11th
        // question is refused by both the per-IP and the per-user quota).
        (
            r#"http_server_request_duration_seconds_count{http_route="/query",http_response_status_code="200"}"#
                .to_owned(),
            10.0,
        ),
        (
            r#"http_server_request_duration_seconds_count{http_route="/query",http_response_status_code="429"}"#
                .to_owned(),
            1.0,
        ),
        (
            r#"rampart_rate_limit_decisions_total{rampart_rate_limit_policy="query-user",rampart_rate_limit_result="allowed"}"#
                .to_owned(),
            10.0,
        ),
        (
            r#"rampart_rate_limit_decisions_total{rampart_rate_limit_policy="query-user",rampart_rate_limit_result="rejected"}"#
                .to_owned(),
            1.0,
        ),
        (
            r#"rampart_rate_limit_decisions_total{rampart_rate_limit_policy="query-ip",rampart_rate_limit_result="rejected"}"#
                .to_owned(),
            1.0,
        ),
        (
            r#"sum(rampart_rate_limit_decisions_total{rampart_rate_limit_result="rejected"})"#
                .to_owned(),
            2.0,
        ),
    ];
    for (promql, expected) in &expectations {
        let values = prometheus.query(promql).await;
        assert_eq!(values, [*expected], "{promql}\n{}", prometheus.log_tail());
    }
    // Every series carries the gateway's meter as its scope; the resource names the service.
    let scoped = prometheus
        .query(&format!(
            r#"count(fabric_gateway_data_agent_errors_total{{otel_scope_name="{}"}})"#,
            metrics::METER_NAME
        ))
        .await;
    assert_eq!(scoped, [1.0]);
    let target = prometheus
        .query(r#"count(target_info{service_name="fabric-gateway"})"#)
        .await;
    assert_eq!(target, [1.0]);
    // The durations are real: their sum is positive (and within the run's time).
    let total_seconds = prometheus
        .query(&sum("fabric_gateway_data_agent_duration_seconds_sum"))
        .await;
    assert!(
        total_seconds[0] > 0.0 && total_seconds[0] < DEADLINE.as_secs_f64(),
        "{total_seconds:?}"
    );

    // Every series of the library and the gateway that Prometheus holds is a documented one
    // (the tables of src/telemetry.rs and src/metrics.rs, translated): the docs name what
    // the exporter really serves.
    let documented = common::documented::documented();
    let observed = prometheus.metric_names().await;
    let ours: Vec<&String> = observed
        .iter()
        .filter(|n| {
            ["rampart_", "http_server_", "fabric_gateway_"]
                .iter()
                .any(|p| n.starts_with(p))
        })
        .collect();
    assert!(ours.len() >= 10, "{observed:?}");
    for name in ours {
        assert!(
            documented.series.contains(name),
            "Prometheus has {name}, which the metric tables do not document"
        );
    }

    prometheus.stop();
}

fn unix_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs_f64()
}

/// A `prometheus` process scraping one target every second, in its own process group, with
/// its storage and log in a temporary directory. Killed (group and all) when dropped.
struct Prometheus {
    child: Option<Child>,
    dir: PathBuf,
    base: String,
    http: reqwest::Client,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`host:port`) and waits until it is ready.
    async fn start(target: &str) -> Self {
        use std::os::unix::process::CommandExt as _;

        let dir = std::env::temp_dir().join(format!(
            "rampart-prometheus-{}-{}",
            std::process::id(),
            unix_seconds()
        ));
        fs::create_dir_all(dir.join("data")).expect("create the Prometheus temp dir");
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: fabric-gateway\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let port = rampart_test_support::free_port();
        let log = fs::File::create(dir.join("prometheus.log")).expect("create the log file");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start `prometheus` ({e}): install Debian's `prometheus` package \
                     (scripts/test.sh does it when run as root)"
                )
            });
        let mut prometheus = Self {
            child: Some(child),
            dir,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        };
        prometheus.wait_ready().await;
        prometheus
    }

    async fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("prometheus exited ({status}):\n{}", self.log_tail());
            }
            let ready = self.http.get(format!("{}/-/ready", self.base)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            assert!(
                started.elapsed() < START_DEADLINE,
                "prometheus not ready after {START_DEADLINE:?}:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls until the latest scrape of the gateway started after `after` (unix seconds).
    async fn wait_for_scrape_after(&self, after: f64) {
        let started = Instant::now();
        loop {
            // `up`'s sample timestamp is the time its scrape started.
            let scraped = self.query(r#"timestamp(up{job="fabric-gateway"})"#).await;
            let up = self.query(r#"up{job="fabric-gateway"}"#).await;
            if scraped.first().is_some_and(|t| *t > after) {
                assert_eq!(up, [1.0], "the scrape failed:\n{}", self.log_tail());
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no scrape after the last request within 20 s (last: {scraped:?}, up: {up:?}):\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The values of an instant query's result vector (empty when nothing matches).
    async fn query(&self, promql: &str) -> Vec<f64> {
        let resp = self
            .http
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", promql)])
            .send()
            .await
            .expect("query Prometheus");
        let body: Value = resp.json().await.expect("a JSON answer");
        assert_eq!(body["status"], "success", "{promql}: {body}");
        assert_eq!(body["data"]["resultType"], "vector", "{promql}: {body}");
        body["data"]["result"]
            .as_array()
            .expect("a result array")
            .iter()
            .map(|sample| {
                sample["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or_else(|| panic!("{promql}: a numeric sample: {sample}"))
            })
            .collect()
    }

    /// Every metric name Prometheus holds.
    async fn metric_names(&self) -> Vec<String> {
        let body: Value = self
            .http
            .get(format!("{}/api/v1/label/__name__/values", self.base))
            .send()
            .await
            .expect("ask Prometheus for the names")
            .json()
            .await
            .expect("a JSON answer");
        assert_eq!(body["status"], "success", "{body}");
        body["data"]
            .as_array()
            .expect("a list of names")
            .iter()
            .map(|n| n.as_str().expect("a name").to_owned())
            .collect()
    }

    /// The end of Prometheus's log, for failure messages.
    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        format!("--- prometheus log (last 20 lines) ---\n{tail}")
    }

    /// Kills the process group and removes the directory.
    fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Its own process group (`process_group(0)`): the group id is its pid.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
        remove_dir(&self.dir);
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.kill();
    }
}

fn remove_dir(dir: &Path) {
    let _ = fs::remove_dir_all(dir);
}
