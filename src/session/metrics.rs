//! The session layer's OpenTelemetry instruments (see [`telemetry`](crate::telemetry)),
//! created once with the [`SessionConfig`](super::SessionConfig): recording allocates nothing.

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};

use super::commit::{Op, Resolution};
use crate::telemetry::{self, attribute, kv};

const OPS: [&str; 7] = [
    "load",
    "create",
    "save",
    "delete",
    "list_user_sessions",
    "delete_user_sessions",
    "delete_user_session",
];

#[derive(Clone)]
pub(crate) struct SessionMetrics {
    duration: Histogram<f64>,
    conflicts: Counter<u64>,
    saves_skipped: Counter<u64>,
    unavailable: Counter<u64>,
    /// (operation, outcome) per [`Op`]: `[ok, error]`.
    calls: [[[KeyValue; 2]; 2]; 7],
    resolutions: [[KeyValue; 1]; 2],
}

impl std::fmt::Debug for SessionMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionMetrics").finish_non_exhaustive()
    }
}

impl SessionMetrics {
    pub(crate) fn new(meter: &Meter) -> Self {
        SessionMetrics {
            duration: meter
                .f64_histogram(telemetry::SESSION_STORE_DURATION)
                .with_unit("s")
                .with_description("Duration of session store calls.")
                .with_boundaries(telemetry::FAST_DURATION_BOUNDARIES.to_vec())
                .build(),
            conflicts: meter
                .u64_counter(telemetry::SESSION_CONFLICTS)
                .with_unit("{conflict}")
                .with_description("Compare-and-set conflicts of session saves, by resolution.")
                .build(),
            saves_skipped: meter
                .u64_counter(telemetry::SESSION_SAVES_SKIPPED)
                .with_unit("{save}")
                .with_description("Session changes not saved because the response was a 5xx.")
                .build(),
            unavailable: meter
                .u64_counter(telemetry::SESSION_UNAVAILABLE)
                .with_unit("{response}")
                .with_description("503 responses served because the session store failed.")
                .build(),
            calls: OPS.map(|op| {
                ["ok", "error"].map(|outcome| {
                    [
                        kv(attribute::SESSION_OPERATION, op),
                        kv(attribute::SESSION_OUTCOME, outcome),
                    ]
                })
            }),
            resolutions: ["merged", "dropped"].map(|r| [kv(attribute::SESSION_RESOLUTION, r)]),
        }
    }

    /// A store call took `seconds`.
    pub(crate) fn call(&self, op: Op, ok: bool, seconds: f64) {
        self.duration
            .record(seconds, &self.calls[op as usize][usize::from(!ok)]);
    }

    /// A compare-and-set conflict.
    pub(crate) fn conflict(&self, resolution: Resolution) {
        self.conflicts
            .add(1, &self.resolutions[resolution as usize]);
    }

    /// Changes not saved (5xx response).
    pub(crate) fn save_skipped(&self) {
        self.saves_skipped.add(1, &[]);
    }

    /// A 503 served.
    pub(crate) fn unavailable(&self) {
        self.unavailable.add(1, &[]);
    }
}
