//! The server section: `ENVIRONMENT` (the run mode) and the listen address (`BIND_ADDR` / `PORT`).

use std::net::SocketAddr;

use super::Reader;

const DEFAULT_BIND: &str = "127.0.0.1:8000";

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

fn default_bind() -> SocketAddr {
    DEFAULT_BIND
        .parse()
        .expect("the default bind address is valid")
}

/// What the server section reads.
pub(super) struct Server {
    pub(super) environment: Environment,
    pub(super) bind_addr: SocketAddr,
}

/// Reads `ENVIRONMENT` (first of all: it decides what the other sections require), then
/// `BIND_ADDR` / `PORT`.
pub(super) fn read(r: &mut Reader<'_>) -> Server {
    let environment = r
        .one_of(
            "ENVIRONMENT",
            &[
                ("development", Environment::Development),
                ("production", Environment::Production),
            ],
        )
        .unwrap_or(Environment::Development);

    let bind_addr = match (r.get("BIND_ADDR"), r.get("PORT")) {
        (Some(addr), _) => addr.parse::<SocketAddr>().unwrap_or_else(|_| {
            r.problem(
                "BIND_ADDR",
                format!("{addr:?} is not a socket address like 0.0.0.0:8000"),
            );
            default_bind()
        }),
        (None, Some(port)) => match port.parse::<u16>() {
            Ok(p) => SocketAddr::from(([0, 0, 0, 0], p)),
            Err(_) => {
                r.problem("PORT", format!("{port:?} is not a port number (0-65535)"));
                default_bind()
            }
        },
        (None, None) => default_bind(),
    };

    Server {
        environment,
        bind_addr,
    }
}
