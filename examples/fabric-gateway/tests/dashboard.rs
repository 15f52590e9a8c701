//! The Grafana dashboard (`dashboards/grafana.json`) only uses documented metrics.
//!
//! The documented names are the tables of the library (`src/telemetry.rs`) and of the
//! gateway (`src/metrics.rs`), translated the way the `opentelemetry-prometheus` exporter
//! names series: dots become underscores, unit `s` adds `_seconds` and unit `1` adds
//! `_ratio` (annotations like `{request}` add nothing), counters end in `_total`,
//! histograms are `_bucket`, `_sum` and `_count` series, up-down counters and gauges keep
//! the name. The gateway's table also spells the Prometheus names out: they must agree with
//! the translation.
//!
//! Every metric name in every PromQL expression of the dashboard (panels and template
//! variables) must be one of those names; every label it groups or filters by must be a
//! documented attribute (dots as underscores) or one Prometheus adds (`le`, `job`,
//! `instance`); every `rampart_rate_limit_result` value it matches must be a documented
//! result. And the dashboard shows what it promises: requests, latency, rejections by
//! quota, degraded periods, the breaker's state.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

/// A documented instrument: its Prometheus series names and its attribute names.
#[derive(Debug)]
struct Documented {
    series: BTreeSet<String>,
    labels: BTreeSet<String>,
}

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The cells of the table rows (`//! | ... |`) whose first cell is a backticked name.
fn table_rows(source: &str) -> Vec<Vec<String>> {
    source
        .lines()
        .filter_map(|l| l.trim().strip_prefix("//! | `"))
        .map(|row| {
            format!("`{row}")
                .trim_end_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect()
}

fn unticked(cell: &str) -> &str {
    cell.trim().trim_matches('`')
}

/// The backticked names of an attributes cell, parenthesised remarks left out.
fn attribute_names(cell: &str) -> Vec<String> {
    let mut depth = 0;
    let mut outside = String::new();
    for c in cell.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ if depth == 0 => outside.push(c),
            _ => {}
        }
    }
    outside
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|name| name.replace('.', "_"))
        .collect()
}

/// The series an instrument becomes in Prometheus.
fn prometheus_series(name: &str, instrument: &str, unit: &str) -> Vec<String> {
    let unit = unit.trim_matches('`');
    let suffix = match unit {
        "s" => "_seconds",
        "1" => "_ratio",
        "" => "",
        u if u.starts_with('{') => "",
        other => panic!("{name}: no translation for unit {other:?} here"),
    };
    let base = format!("{}{suffix}", name.replace('.', "_"));
    if instrument.contains("histogram") {
        vec![
            format!("{base}_bucket"),
            format!("{base}_sum"),
            format!("{base}_count"),
        ]
    } else if instrument == "counter" {
        vec![format!("{base}_total")]
    } else {
        assert!(
            instrument.contains("gauge") || instrument == "up-down counter",
            "{name}: unknown instrument {instrument:?}"
        );
        vec![base]
    }
}

fn documented() -> Documented {
    let mut series = BTreeSet::new();
    let mut labels: BTreeSet<String> = ["le", "job", "instance"].map(String::from).into();
    // The library: | name | instrument | unit | attributes | recorded by |
    let library = table_rows(&read("../../src/telemetry.rs"));
    assert!(library.len() >= 17, "the library's table: {library:?}");
    for row in &library {
        assert_eq!(row.len(), 5, "{row:?}");
        series.extend(prometheus_series(unticked(&row[0]), &row[1], &row[2]));
        labels.extend(attribute_names(&row[3]));
    }
    // The gateway: | name | Prometheus | instrument | unit | attributes |
    let gateway = table_rows(&read("src/metrics.rs"));
    assert!(gateway.len() >= 4, "the gateway's table: {gateway:?}");
    for row in &gateway {
        assert_eq!(row.len(), 5, "{row:?}");
        let translated = prometheus_series(unticked(&row[0]), &row[2], &row[3]);
        let spelled = expand_braces(unticked(&row[1]));
        assert_eq!(
            translated, spelled,
            "the gateway's table spells {} differently",
            row[0]
        );
        series.extend(translated);
        labels.extend(attribute_names(&row[4]));
    }
    Documented { series, labels }
}

/// `a_{x,y}` → `[a_x, a_y]`.
fn expand_braces(name: &str) -> Vec<String> {
    match name.split_once('{') {
        None => vec![name.to_owned()],
        Some((stem, rest)) => rest
            .trim_end_matches('}')
            .split(',')
            .map(|s| format!("{stem}{s}"))
            .collect(),
    }
}

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
