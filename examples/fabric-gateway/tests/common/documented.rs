//! The metric names the library (`src/telemetry.rs`) and the gateway (`src/metrics.rs`)
//! document, read from their tables, and their Prometheus translations (the
//! `opentelemetry-prometheus` exporter's rules: dots become underscores, unit `s` adds
//! `_seconds` and unit `1` adds `_ratio` (annotations like `{request}` add nothing),
//! counters end in `_total`, histograms are `_bucket`, `_sum` and `_count` series, up-down
//! counters and gauges keep the name). The gateway's table spells the Prometheus names out:
//! they must agree with the translation.

use std::collections::BTreeSet;
use std::path::Path;

/// What the tables document.
#[derive(Debug)]
pub struct Documented {
    /// The OpenTelemetry instrument names (`rampart.rate_limit.decisions`).
    pub names: BTreeSet<String>,
    /// Their Prometheus series (`rampart_rate_limit_decisions_total`).
    pub series: BTreeSet<String>,
    /// Their attributes as Prometheus labels (`rampart_rate_limit_policy`), with `le`,
    /// `job` and `instance`.
    pub labels: BTreeSet<String>,
}

/// A file of the gateway's package, by its path relative to the package.
pub fn read(relative: &str) -> String {
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
pub fn attribute_names(cell: &str) -> Vec<String> {
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
pub fn prometheus_series(name: &str, instrument: &str, unit: &str) -> Vec<String> {
    let unit = unit.trim_matches('`');
    let suffix = match unit {
        "s" => "_seconds",
        "1" => "_ratio",
        "" => "",
        u if u.starts_with('{') => "",
        other => panic!("{name}: no translation for unit {other:?} here"),
    };
    let base = format!("{}{suffix}", name.replace('.', "_"));
    // Observable or not, an instrument exports the same kind of series.
    let instrument = instrument.trim_end_matches(" (observable)");
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

/// Reads both tables.
pub fn documented() -> Documented {
    let mut names = BTreeSet::new();
    let mut series = BTreeSet::new();
    let mut labels: BTreeSet<String> = ["le", "job", "instance"].map(String::from).into();
    // The library: | name | instrument | unit | attributes | recorded by |
    let library = table_rows(&read("../../src/telemetry.rs"));
    assert!(library.len() >= 17, "the library's table: {library:?}");
    for row in &library {
        assert_eq!(row.len(), 5, "{row:?}");
        names.insert(unticked(&row[0]).to_owned());
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
        names.insert(unticked(&row[0]).to_owned());
        series.extend(translated);
        labels.extend(attribute_names(&row[4]));
    }
    Documented {
        names,
        series,
        labels,
    }
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
