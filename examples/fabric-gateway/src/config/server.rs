//! The server section: `ENVIRONMENT` (the run mode) and the listen address (`BIND_ADDR` / `PORT`).

use std::net::SocketAddr;

pub(super) const DEFAULT_BIND: &str = "127.0.0.1:8000";

/// The run mode (`ENVIRONMENT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Environment {
    /// Local mode: memory store unless Redis is configured, fake data agent unless
    /// `DATA_AGENT_URL` is set, dev token endpoint.
    Development,
    /// Production: Redis, `SECRET_KEY`, `TENANT_ID` and `DATA_AGENT_URL` required.
    Production,
}

impl Environment {
    /// `"development"` or `"production"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Development => "development",
            Self::Production => "production",
        }
    }

    /// `true` for [`Environment::Production`].
    pub fn is_production(self) -> bool {
        self == Self::Production
    }
}

pub(super) fn default_bind() -> SocketAddr {
    DEFAULT_BIND
        .parse()
        .expect("the default bind address is valid")
}
