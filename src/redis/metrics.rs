//! The Redis connection's OpenTelemetry instruments (see [`telemetry`](crate::telemetry)),
//! created once per connection: recording allocates nothing.

use std::sync::Weak;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, ObservableGauge};

use super::breaker::Transition;
use super::error::RedisErrorKind;
use crate::telemetry::{self, attribute, kv};

/// The breaker's state as the gauge reports it.
pub(super) trait BreakerState: Send + Sync + 'static {
    /// 0 closed, 1 open, 2 half-open (the cool-down has passed: a probe may go through).
    fn gauge_value(&self) -> i64;
}

const KINDS: [RedisErrorKind; 6] = [
    RedisErrorKind::Timeout,
    RedisErrorKind::Unavailable,
    RedisErrorKind::Auth,
    RedisErrorKind::Protocol,
    RedisErrorKind::Command,
    RedisErrorKind::Config,
];

/// `error.type` of an error kind.
fn kind_value(kind: RedisErrorKind) -> &'static str {
    match kind {
        RedisErrorKind::Timeout => "timeout",
        RedisErrorKind::Unavailable => "unavailable",
        RedisErrorKind::Auth => "auth",
        RedisErrorKind::Protocol => "protocol",
        RedisErrorKind::Command => "command",
        RedisErrorKind::Config => "config",
    }
}

/// The connection's instruments. `on` is false when nothing records (no provider): then
/// a call reads no clock and makes no instrument call.
pub(super) struct RedisMetrics {
    on: bool,
    duration: Histogram<f64>,
    errors: Counter<u64>,
    reconnects: Counter<u64>,
    transitions: Counter<u64>,
    /// Kept so the gauge's callback lives as long as the connection's instruments.
    _state: ObservableGauge<i64>,
    server: [KeyValue; 1],
    /// (server, error.type) per kind, in [`KINDS`] order.
    failed: [[KeyValue; 2]; 6],
    /// (server, transition): opened, reopened, closed.
    moved: [[KeyValue; 2]; 3],
}

impl RedisMetrics {
    /// The instruments of the connection to `server` (its configured address list: no
    /// client data), whose breaker `state` reads while it lives.
    pub(super) fn new(meter: &Meter, server: &str, state: Weak<dyn BreakerState>) -> Self {
        let server = KeyValue::new(attribute::SERVER_ADDRESS, server.to_owned());
        let gauge_server = [server.clone()];
        // Held by the gauge's callback while the provider keeps it (see `records`).
        let probe = std::sync::Arc::new(());
        let held = std::sync::Arc::clone(&probe);
        let mut metrics = RedisMetrics {
            on: false,
            duration: meter
                .f64_histogram(telemetry::REDIS_COMMAND_DURATION)
                .with_unit("s")
                .with_description("Duration of Redis calls (command, pipeline, script).")
                .with_boundaries(telemetry::FAST_DURATION_BOUNDARIES.to_vec())
                .build(),
            errors: meter
                .u64_counter(telemetry::REDIS_ERRORS)
                .with_unit("{error}")
                .with_description("Failed Redis calls, by kind.")
                .build(),
            reconnects: meter
                .u64_counter(telemetry::REDIS_RECONNECTS)
                .with_unit("{connection}")
                .with_description("Redis connections re-established after a loss.")
                .build(),
            transitions: meter
                .u64_counter(telemetry::REDIS_BREAKER_TRANSITIONS)
                .with_unit("{transition}")
                .with_description("Circuit breaker state changes.")
                .build(),
            _state: meter
                .i64_observable_gauge(telemetry::REDIS_BREAKER_STATE)
                .with_unit("1")
                .with_description("Circuit breaker state: 0 closed, 1 open, 2 half-open.")
                .with_callback(move |observer| {
                    let _ = &held;
                    if let Some(state) = state.upgrade() {
                        observer.observe(state.gauge_value(), &gauge_server);
                    }
                })
                .build(),
            failed: KINDS.map(|k| [server.clone(), kv(attribute::ERROR_TYPE, kind_value(k))]),
            moved: ["opened", "reopened", "closed"]
                .map(|t| [server.clone(), kv(attribute::REDIS_BREAKER_TRANSITION, t)]),
            server: [server],
        };
        metrics.on = telemetry::records(&probe);
        metrics
    }

    /// A stopwatch for a call, when anything records.
    pub(super) fn stopwatch(&self) -> Option<std::time::Instant> {
        self.on.then(std::time::Instant::now)
    }

    /// A call started at `started` ([`stopwatch`](Self::stopwatch)) ended (`error`: how it
    /// failed).
    pub(super) fn call(&self, started: Option<std::time::Instant>, error: Option<RedisErrorKind>) {
        let Some(started) = started else { return };
        let seconds = started.elapsed().as_secs_f64();
        match error {
            None => self.duration.record(seconds, &self.server),
            Some(kind) => {
                let i = KINDS.iter().position(|k| *k == kind).unwrap_or(0);
                let attrs = &self.failed[i];
                self.duration.record(seconds, attrs);
                self.errors.add(1, attrs);
            }
        }
    }

    /// The connection was re-established.
    pub(super) fn reconnect(&self) {
        if !self.on {
            return;
        }
        self.reconnects.add(1, &self.server);
    }

    /// The breaker changed state.
    pub(super) fn transition(&self, t: Transition) {
        if !self.on {
            return;
        }
        let i = match t {
            Transition::Opened(_) => 0,
            Transition::Reopened(_) => 1,
            Transition::Closed => 2,
        };
        self.transitions.add(1, &self.moved[i]);
    }
}
