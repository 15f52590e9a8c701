//! The session layer's OpenTelemetry instruments (see [`telemetry`](crate::telemetry)),
//! created once with the [`SessionConfig`](super::SessionConfig): recording allocates nothing.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, Meter};

use super::commit::{Op, Resolution};
use crate::telemetry::{self, attribute, bump, kv, observe};

const OPS: [&str; 7] = [
    "load",
    "create",
    "save",
    "delete",
    "list_user_sessions",
    "delete_user_sessions",
    "delete_user_session",
];

/// The instruments; `None` when nothing records (no provider), and then a store call
/// reads no clock. The counters are the layer's own atomics, reported by observable
/// instruments when the provider collects; the store call duration is the one histogram.
#[derive(Clone)]
pub(crate) struct SessionMetrics(Option<Arc<Live>>);

struct Live {
    duration: Histogram<f64>,
    /// Per [`Resolution`].
    conflicts: [AtomicU64; 2],
    saves_skipped: AtomicU64,
    unavailable: AtomicU64,
    /// (operation, outcome) per [`Op`]: `[ok, error]`.
    calls: [[[KeyValue; 2]; 2]; 7],
    resolutions: [[KeyValue; 1]; 2],
}

impl std::fmt::Debug for SessionMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionMetrics")
            .field("on", &self.0.is_some())
            .finish_non_exhaustive()
    }
}

impl SessionMetrics {
    pub(crate) fn new(meter: &Meter) -> Self {
        let live = Arc::new(Live {
            duration: meter
                .f64_histogram(telemetry::SESSION_STORE_DURATION)
                .with_unit("s")
                .with_description("Duration of session store calls.")
                .with_boundaries(telemetry::FAST_DURATION_BOUNDARIES.to_vec())
                .build(),
            conflicts: Default::default(),
            saves_skipped: AtomicU64::new(0),
            unavailable: AtomicU64::new(0),
            calls: OPS.map(|op| {
                ["ok", "error"].map(|outcome| {
                    [
                        kv(attribute::SESSION_OPERATION, op),
                        kv(attribute::SESSION_OUTCOME, outcome),
                    ]
                })
            }),
            resolutions: ["merged", "dropped"].map(|r| [kv(attribute::SESSION_RESOLUTION, r)]),
        });
        let counts = Arc::clone(&live);
        meter
            .u64_observable_counter(telemetry::SESSION_CONFLICTS)
            .with_unit("{conflict}")
            .with_description("Compare-and-set conflicts of session saves, by resolution.")
            .with_callback(move |o| {
                for (count, attributes) in counts.conflicts.iter().zip(&counts.resolutions) {
                    observe(o, count, attributes);
                }
            })
            .build();
        let counts = Arc::clone(&live);
        meter
            .u64_observable_counter(telemetry::SESSION_SAVES_SKIPPED)
            .with_unit("{save}")
            .with_description("Session changes not saved because the response was a 5xx.")
            .with_callback(move |o| observe(o, &counts.saves_skipped, &[]))
            .build();
        let counts = Arc::clone(&live);
        meter
            .u64_observable_counter(telemetry::SESSION_UNAVAILABLE)
            .with_unit("{response}")
            .with_description("503 responses served because the session store failed.")
            .with_callback(move |o| observe(o, &counts.unavailable, &[]))
            .build();
        SessionMetrics(telemetry::records(&live).then_some(live))
    }

    /// A stopwatch for a store call, when anything records.
    pub(crate) fn stopwatch(&self) -> Option<Instant> {
        self.0.as_ref().map(|_| Instant::now())
    }

    /// A store call started at `started` ([`stopwatch`](Self::stopwatch)) ended.
    pub(crate) fn call(&self, op: Op, ok: bool, started: Option<Instant>) {
        if let (Some(live), Some(started)) = (&self.0, started) {
            live.duration.record(
                started.elapsed().as_secs_f64(),
                &live.calls[op as usize][usize::from(!ok)],
            );
        }
    }

    /// A compare-and-set conflict.
    pub(crate) fn conflict(&self, resolution: Resolution) {
        if let Some(live) = &self.0 {
            bump(&live.conflicts[resolution as usize]);
        }
    }

    /// Changes not saved (5xx response).
    pub(crate) fn save_skipped(&self) {
        if let Some(live) = &self.0 {
            bump(&live.saves_skipped);
        }
    }

    /// A 503 served.
    pub(crate) fn unavailable(&self) {
        if let Some(live) = &self.0 {
            bump(&live.unavailable);
        }
    }
}
