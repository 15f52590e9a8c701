//! What the handlers share: configuration, token validator, data agent client, Redis.

use std::sync::Arc;

use tower_rampart::clock::Clock;
use tower_rampart::redis::RedisConnection;

use crate::auth::TokenValidator;
use crate::config::Config;
use crate::fabric::DataAgent;
use crate::fake_agent::FakeAgentHandle;
use crate::metrics::MetricsServer;

/// Shared state of the handlers. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct AppState(pub(crate) Arc<Shared>);

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) validator: TokenValidator,
    pub(crate) agent: DataAgent,
    /// `None`: sessions live in memory.
    pub(crate) redis: Option<RedisConnection>,
    /// Compared with the stored Fabric token's `exp`.
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) dev_routes: bool,
    /// The in-process fake data agent (local mode): kept alive as long as the router.
    pub(crate) fake_agent: Option<Arc<FakeAgentHandle>>,
    /// The Prometheus endpoint (`METRICS_ADDR`): serves as long as the router lives.
    pub(crate) metrics: Option<Arc<MetricsServer>>,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl Shared {
    /// Unix seconds now.
    pub(crate) fn now_secs(&self) -> u64 {
        self.clock.now_micros() / 1_000_000
    }
}
