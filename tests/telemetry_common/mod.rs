//! A real OpenTelemetry SDK meter provider with an in-memory exporter, and the points it
//! collected, flattened for assertions.
#![allow(dead_code)]

use std::collections::BTreeMap;

use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};

/// One data point: its metric, unit, attributes and value (a sum's or gauge's value, a
/// histogram's count) and, for a histogram, the sum of its values.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub name: String,
    pub unit: String,
    pub attrs: BTreeMap<String, String>,
    pub value: f64,
    pub sum: f64,
}

/// A provider of our own (never the global one: tests of one binary run in parallel).
pub struct Otel {
    provider: SdkMeterProvider,
    exporter: InMemoryMetricExporter,
}

impl Otel {
    pub fn new() -> Self {
        let exporter = InMemoryMetricExporter::default();
        let reader = PeriodicReader::builder(exporter.clone()).build();
        let provider = SdkMeterProvider::builder().with_reader(reader).build();
        Otel { provider, exporter }
    }

    pub fn meter(&self) -> Meter {
        self.provider.meter("tower-rampart")
    }

    /// Every point collected so far (cumulative).
    pub fn points(&self) -> Vec<Point> {
        self.exporter.reset();
        self.provider.force_flush().expect("flush");
        let exported = self.exporter.get_finished_metrics().expect("metrics");
        let last = exported.last().expect("one export");
        let mut out = Vec::new();
        for scope in last.scope_metrics() {
            for metric in scope.metrics() {
                let mut push = |attrs: BTreeMap<String, String>, value: f64, sum: f64| {
                    out.push(Point {
                        name: metric.name().to_owned(),
                        unit: metric.unit().to_owned(),
                        attrs,
                        value,
                        sum,
                    })
                };
                let attrs = |a: &mut dyn Iterator<Item = &opentelemetry::KeyValue>| {
                    a.map(|kv| (kv.key.to_string(), kv.value.to_string()))
                        .collect::<BTreeMap<_, _>>()
                };
                macro_rules! data {
                    ($data:expr, $conv:expr) => {
                        match $data {
                            MetricData::Sum(s) => {
                                for p in s.data_points() {
                                    push(attrs(&mut p.attributes()), $conv(p.value()), 0.0);
                                }
                            }
                            MetricData::Gauge(g) => {
                                for p in g.data_points() {
                                    push(attrs(&mut p.attributes()), $conv(p.value()), 0.0);
                                }
                            }
                            MetricData::Histogram(h) => {
                                for p in h.data_points() {
                                    push(
                                        attrs(&mut p.attributes()),
                                        p.count() as f64,
                                        $conv(p.sum()),
                                    );
                                }
                            }
                            MetricData::ExponentialHistogram(_) => unreachable!(),
                        }
                    };
                }
                match metric.data() {
                    AggregatedMetrics::F64(d) => data!(d, |v: f64| v),
                    AggregatedMetrics::U64(d) => data!(d, |v: u64| v as f64),
                    AggregatedMetrics::I64(d) => data!(d, |v: i64| v as f64),
                }
            }
        }
        out
    }

    /// The value of `name`'s point with exactly `attrs` (0 when there is none).
    pub fn value(&self, name: &str, attrs: &[(&str, &str)]) -> f64 {
        value_in(&self.points(), name, attrs)
    }
}

/// The value of `name`'s point with exactly `attrs` in `points` (0 when there is none).
pub fn value_in(points: &[Point], name: &str, attrs: &[(&str, &str)]) -> f64 {
    let want: BTreeMap<String, String> = attrs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let found: Vec<_> = points
        .iter()
        .filter(|p| p.name == name && p.attrs == want)
        .collect();
    assert!(found.len() <= 1, "{found:?}");
    found.first().map_or(0.0, |p| p.value)
}

/// The unit of `name` (panics when it has no point).
pub fn unit_of(points: &[Point], name: &str) -> String {
    points
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no point of {name}: {points:#?}"))
        .unit
        .clone()
}

/// Every attribute set of `name`.
pub fn attr_sets(points: &[Point], name: &str) -> Vec<BTreeMap<String, String>> {
    points
        .iter()
        .filter(|p| p.name == name)
        .map(|p| p.attrs.clone())
        .collect()
}

/// The table of the `telemetry` module's docs: (name, instrument, unit) per row.
pub fn documented() -> Vec<(String, String, String)> {
    include_str!("../../src/telemetry.rs")
        .lines()
        .filter_map(|l| l.strip_prefix("//! | `"))
        .map(|row| {
            let cells: Vec<&str> = row.split(" | ").map(|c| c.trim_matches('`')).collect();
            (
                cells[0].to_owned(),
                cells[1].to_owned(),
                cells[2].to_owned(),
            )
        })
        .collect()
}

/// Every point in `points` has a row in the docs' table, with its unit.
pub fn check_against_the_table(points: &[Point]) {
    let table = documented();
    for p in points {
        let row = table
            .iter()
            .find(|r| r.0 == p.name)
            .unwrap_or_else(|| panic!("{} is not in the table", p.name));
        assert_eq!(row.2, p.unit, "{}", p.name);
    }
}
