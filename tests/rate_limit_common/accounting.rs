//! The accounting checker of the topology tests: a client-side log of every admitted request
//! per key, with the times it was sent and answered, from which "admitted beyond the quota"
//! is computed (never from status codes alone).
//!
//! The server decides a request at some instant between its send and its answer, so a set
//! of admissions certainly fell inside one span of `L` when the last answer came less than
//! `L` after the first send. [`AdmissionLog::most_in_any_window`] and
//! [`AdmissionLog::check_window`] / [`AdmissionLog::check_gcra`] count only such sets: a
//! violation they report is certain (never a false alarm from client-side latency), and
//! every certain one is found.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One admitted request on one key.
#[derive(Clone, Copy, Debug)]
pub struct Admission {
    /// When the request was sent.
    pub sent: Instant,
    /// When its (admitting) answer came back.
    pub answered: Instant,
    /// Its cost.
    pub cost: u64,
}

/// Admitted requests per key, shared by the tasks of a load test.
#[derive(Debug, Default)]
pub struct AdmissionLog {
    by_key: Mutex<HashMap<String, Vec<Admission>>>,
}

impl AdmissionLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an admission of `cost` on `key`, sent at `sent` and answered now.
    pub fn record(&self, key: &str, sent: Instant, cost: u64) {
        let a = Admission {
            sent,
            answered: Instant::now(),
            cost,
        };
        let mut map = self.by_key.lock().unwrap();
        map.entry(key.to_owned()).or_default().push(a);
    }

    /// Units admitted on `key` in all.
    pub fn total(&self, key: &str) -> u64 {
        let map = self.by_key.lock().unwrap();
        map.get(key).map_or(0, |v| v.iter().map(|a| a.cost).sum())
    }

    /// Most units on `key` certainly admitted within one span of `span`: over every first
    /// admission (by send time), the units of the admissions sent no earlier and answered
    /// less than `span` after it was sent.
    pub fn most_in_any_window(&self, key: &str, span: Duration) -> u64 {
        let map = self.by_key.lock().unwrap();
        let Some(list) = map.get(key) else { return 0 };
        list.iter()
            .map(|first| {
                list.iter()
                    .filter(|a| a.sent >= first.sent && a.answered < first.sent + span)
                    .map(|a| a.cost)
                    .sum()
            })
            .max()
            .unwrap_or(0)
    }

    /// Panics if `key` certainly admitted more than `limit` units in some rolling `window`.
    pub fn check_window(&self, key: &str, limit: u64, window: Duration) {
        let most = self.most_in_any_window(key, window);
        assert!(
            most <= limit,
            "{key}: {most} units admitted within {window:?}, quota {limit}"
        );
    }

    /// Panics if `key` certainly admitted more than a GCRA quota allows: in any span of
    /// length `L`, at most `burst + floor(L / interval)` units. Spans are measured from a
    /// first send to a last answer (an upper bound of the true span, so the bound is loose by
    /// the client-side latency, never tight beyond the truth).
    pub fn check_gcra(&self, key: &str, burst: u64, interval: Duration) {
        let map = self.by_key.lock().unwrap();
        let Some(list) = map.get(key) else { return };
        for first in list {
            for last in list {
                if last.answered < first.sent {
                    continue;
                }
                let span = last.answered - first.sent;
                let units: u64 = list
                    .iter()
                    .filter(|a| a.sent >= first.sent && a.answered <= last.answered)
                    .map(|a| a.cost)
                    .sum();
                let allowed = burst + (span.as_micros() / interval.as_micros().max(1)) as u64;
                assert!(
                    units <= allowed,
                    "{key}: {units} units admitted within {span:?}, GCRA allows {allowed}"
                );
            }
        }
    }
}
