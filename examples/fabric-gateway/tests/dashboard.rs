//! The Grafana dashboard (`dashboards/grafana.json`) only uses documented metrics.
//!
//! The documented names are the tables of the library (`src/telemetry.rs`) and of the
//! gateway (`src/metrics.rs`), translated the way the `opentelemetry-prometheus` exporter
//! names series (see `common/documented.rs`). The Prometheus and Application Insights
//! tests check the names they observe against the same tables.
//!
//! Every metric name in every PromQL expression of the dashboard (panels and template
//! variables) must be one of those names; every label it groups or filters by must be a
//! documented attribute (dots as underscores) or one Prometheus adds (`le`, `job`,
//! `instance`); every `rampart_rate_limit_result` value it matches must be a documented
//! result. And the dashboard shows what it promises: requests, latency, rejections by
//! quota, degraded periods, the breaker's state.

mod common;

use std::collections::BTreeSet;

use common::documented::{attribute_names, documented, prometheus_series, read};
use serde_json::Value;

/// What one PromQL expression uses.
#[derive(Debug, Default)]
struct Uses {
    metrics: BTreeSet<String>,
    labels: BTreeSet<String>,
    /// `(label, matched value or regex)` of each matcher.
    matchers: Vec<(String, String)>,
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// A small PromQL reader: enough for the dashboard's expressions (selectors with label
/// matchers, range brackets, functions, aggregations with `by`/`without`, arithmetic).
fn promql_uses(expr: &str) -> Uses {
    const GROUPING: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    // Operators, and the aggregations (which may put `by (...)` before their parenthesis).
    const KEYWORDS: [&str; 17] = [
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut uses = Uses::default();
    let mut i = 0;
    let next_non_space = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '[' {
            // A range or subquery: durations and Grafana variables only.
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '{' {
            // Label matchers: name op "value", ...
            let end = (i..chars.len())
                .find(|&j| chars[j] == '}')
                .expect("a closed {");
            let inner: String = chars[i + 1..end].iter().collect();
            for matcher in split_matchers(&inner) {
                let op = ["=~", "!~", "!=", "="]
                    .iter()
                    .find_map(|op| matcher.find(op).map(|at| (at, op.len())))
                    .unwrap_or_else(|| panic!("a label matcher: {matcher:?} in {expr}"));
                let label = matcher[..op.0].trim().to_owned();
                let value = matcher[op.0 + op.1..].trim().trim_matches('"').to_owned();
                uses.labels.insert(label.clone());
                uses.matchers.push((label, value));
            }
            i = end + 1;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += 1;
            }
            i += 1;
        } else if c == '$' {
            // A Grafana variable.
            i += 1;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let after = next_non_space(i);
            if GROUPING.contains(&word.as_str()) {
                if chars.get(after) == Some(&'(') {
                    let end = (after..chars.len())
                        .find(|&j| chars[j] == ')')
                        .expect("a closed (");
                    let inner: String = chars[after + 1..end].iter().collect();
                    uses.labels.extend(
                        inner
                            .split(',')
                            .map(str::trim)
                            .filter(|l| !l.is_empty())
                            .map(str::to_owned),
                    );
                    i = end + 1;
                }
            } else if KEYWORDS.contains(&word.as_str()) || chars.get(after) == Some(&'(') {
                // An operator keyword or a function / aggregation.
            } else {
                uses.metrics.insert(word);
            }
        } else {
            i += 1;
        }
    }
    uses
}

/// Splits matchers on the commas outside quoted values.
fn split_matchers(inner: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    for c in inner.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                out.last_mut().unwrap().push(c);
            }
            ',' if !quoted => out.push(String::new()),
            _ => out.last_mut().unwrap().push(c),
        }
    }
    out.into_iter().filter(|m| !m.trim().is_empty()).collect()
}

/// Every PromQL expression of the dashboard, with where it is.
fn expressions(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?").to_owned();
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().expect("a PromQL target");
                out.push((title.clone(), expr.to_owned()));
            }
            walk(&panel["panels"], out);
        }
    }
    walk(&dashboard["panels"], &mut out);
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if variable["type"] == "query" {
            // label_values(metric, label)
            let query = variable["query"]["query"]
                .as_str()
                .or_else(|| variable["query"].as_str())
                .expect("a variable query");
            let args = query
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
                .unwrap_or_else(|| panic!("only label_values(metric, label) here: {query}"));
            let (metric, label) = args.split_once(',').expect("label_values(metric, label)");
            out.push((
                format!("variable {}", variable["name"]),
                format!("sum by ({}) ({})", label.trim(), metric.trim()),
            ));
        }
    }
    out
}

#[test]
fn the_dashboard_uses_only_documented_metrics_and_labels() {
    let documented = documented();
    let dashboard: Value =
        serde_json::from_str(&read("dashboards/grafana.json")).expect("the dashboard is JSON");
    let results_doc = read("../../src/telemetry.rs");
    let exprs = expressions(&dashboard);
    assert!(exprs.len() >= 20, "{exprs:?}");
    let mut used = BTreeSet::new();
    for (panel, expr) in &exprs {
        let uses = promql_uses(expr);
        assert!(!uses.metrics.is_empty(), "{panel}: no metric in {expr}");
        for metric in &uses.metrics {
            assert!(
                documented.series.contains(metric),
                "{panel}: {metric} is not a documented series (documented: {:?})",
                documented.series
            );
        }
        for label in &uses.labels {
            assert!(
                documented.labels.contains(label),
                "{panel}: label {label} is not a documented attribute (documented: {:?})",
                documented.labels
            );
        }
        for (label, value) in &uses.matchers {
            if label == "rampart_rate_limit_result" {
                for result in value.split('|') {
                    assert!(
                        results_doc.contains(&format!("`{result}`")),
                        "{panel}: result {result:?} is not documented"
                    );
                }
            }
        }
        used.extend(uses.metrics);
    }
    // What the dashboard promises.
    for needed in [
        "http_server_request_duration_seconds_count",
        "http_server_request_duration_seconds_bucket",
        "rampart_rate_limit_decisions_total",
        "rampart_redis_breaker_state_ratio",
        "fabric_gateway_requests_rate_limited_total",
    ] {
        assert!(used.contains(needed), "the dashboard does not use {needed}");
    }
    let all: String = exprs.iter().map(|(_, e)| e.as_str()).collect();
    assert!(
        all.contains("degraded_allowed|degraded_rejected"),
        "degraded periods"
    );
    assert!(
        all.contains("sum by (rampart_rate_limit_policy, rampart_rate_limit_result)"),
        "rejections by quota"
    );
    // Every query panel reads the dashboard's data source variable (chosen on import).
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["targets"].is_array() {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{}",
                panel["title"]
            );
            for target in panel["targets"].as_array().unwrap() {
                assert_eq!(
                    target["datasource"]["uid"], "${datasource}",
                    "{}",
                    panel["title"]
                );
            }
        }
    }
}

#[test]
fn the_reader_finds_metrics_and_labels() {
    let uses = promql_uses(
        r#"histogram_quantile(0.95, sum by (le, http_route) (rate(a_b_bucket{job=~"$job",x="a,b"}[$__rate_interval]))) / on (job) c_total > bool 0"#,
    );
    assert_eq!(
        uses.metrics,
        ["a_b_bucket", "c_total"].map(String::from).into()
    );
    assert_eq!(
        uses.labels,
        ["http_route", "job", "le", "x"].map(String::from).into()
    );
    assert_eq!(
        uses.matchers,
        [("job".into(), "$job".into()), ("x".into(), "a,b".into())]
    );
    assert_eq!(
        prometheus_series("rampart.redis.breaker.state", "gauge (observable)", "`1`"),
        ["rampart_redis_breaker_state_ratio"]
    );
    assert_eq!(
        attribute_names("`protocol` (`mcp`, `assistants`); `error.type` on failures"),
        ["protocol", "error_type"]
    );
}
