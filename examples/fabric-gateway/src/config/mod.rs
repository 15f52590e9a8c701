//! Configuration from the environment (and a `.env` file), validated at start-up.
//!
//! Every variable of the service's configuration table is read here, with its default, one
//! section per file, in the order [`Config::from_lookup`] calls them: `server` (`ENVIRONMENT`,
//! `BIND_ADDR`/`PORT`), `redis`, `sessions`, `clients` (`ALLOWED_ORIGINS`, `TRUSTED_PROXIES`),
//! `limits`, `auth`, `data_agent`, `logging`, `telemetry` (`METRICS_ADDR`, `OTEL_*`). Each has a `read`
//! function that takes the shared reader (values, problems, warnings, production or not) and
//! returns what it read.
//! Invalid values stop start-up with a [`ConfigError`] that names each offending variable
//! and never contains a secret. Production (`ENVIRONMENT=production`) additionally requires
//! Redis (`REDIS_URL` or `REDIS_HOST`), `SECRET_KEY`, `TENANT_ID` and `DATA_AGENT_URL`.
//!
//! Tests build a configuration from a map instead of the process environment:
//!
//! ```
//! use std::collections::HashMap;
//! use fabric_gateway::config::{Config, Environment};
//!
//! let vars = HashMap::from([("PORT", "9000")]);
//! let config = Config::from_lookup(|name| vars.get(name).map(|v| v.to_string())).unwrap();
//! assert_eq!(config.environment, Environment::Development);
//! assert_eq!(config.bind_addr.to_string(), "0.0.0.0:9000");
//! assert!(config.secret_key_generated); // a random key, with a warning in `config.warnings`
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tower_rampart::net::TrustedProxies;
use tower_rampart::redis::RedisConfig;

mod auth;
mod clients;
mod data_agent;
mod limits;
mod logging;
mod redis;
mod server;
mod sessions;
mod telemetry;

pub use telemetry::OtlpSettings;

pub use auth::{AuthSettings, DEV_TENANT_ID};
pub use data_agent::{DataAgentProtocol, DataAgentSettings};
pub use limits::{QueryQuotaKey, RateLimitFailureMode};
pub use logging::LogFormat;
pub use server::Environment;
pub use sessions::{CookieSameSite, MIN_SECRET_KEY_BYTES, SecretKeys};

/// The whole service configuration. `Debug` never shows a secret: the fields holding one
/// ([`SecretKeys`], the Redis password inside [`RedisConfig`]) mask themselves.
#[derive(Clone, Debug)]
pub struct Config {
    /// `BIND_ADDR`, else `0.0.0.0:$PORT`, else `127.0.0.1:8000`.
    pub bind_addr: SocketAddr,
    /// `ENVIRONMENT`.
    pub environment: Environment,
    /// `REDIS_URL` or `REDIS_HOST`/`REDIS_PORT`/`REDIS_PASSWORD`/`REDIS_SSL`; `None` = memory store.
    pub redis: Option<RedisConfig>,
    /// `REDIS_WAIT_REPLICAS`: replicas each session write waits for (0 = do not wait).
    pub redis_wait_replicas: u32,
    /// `REDIS_WAIT_TIMEOUT_MS`: how long a session write waits for them; `None` = the
    /// Redis command timeout.
    pub redis_wait_timeout: Option<Duration>,
    /// `SECRET_KEY` (comma list, first signs).
    pub secret_keys: SecretKeys,
    /// `true` when `SECRET_KEY` was unset and a random key was generated (development).
    pub secret_key_generated: bool,
    /// `SESSION_EXPIRY_HOURS`: absolute session lifetime.
    pub session_expiry: Duration,
    /// `SESSION_IDLE_MINUTES`: idle timeout.
    pub session_idle: Duration,
    /// `SESSION_COOKIE_NAME`.
    pub session_cookie_name: String,
    /// `COOKIE_SAMESITE`.
    pub cookie_samesite: CookieSameSite,
    /// `COOKIE_PARTITIONED`: the session cookie (and every `SameSite=None` cookie) carries
    /// `Partitioned` (CHIPS). Defaults to `true` with `COOKIE_SAMESITE=none`, else `false`.
    pub cookie_partitioned: bool,
    /// `SESSION_MAX_BYTES`: the largest session data accepted on save (as stored, encrypted).
    pub session_max_bytes: usize,
    /// `SESSION_REQUIRE_RECORD_BINDING`: stored sessions without an integrity binding (written
    /// by versions before it) are no session. Default `false`; turn it on once no earlier
    /// instance shares the Redis.
    pub session_require_record_binding: bool,
    /// `ALLOWED_ORIGINS`: browser origins (`scheme://host[:port]`, no trailing slash).
    pub allowed_origins: Vec<String>,
    /// `TRUSTED_PROXIES`.
    pub trusted_proxies: TrustedProxies,
    /// `RATE_LIMIT_QUERY_IP`, unparsed (the rate-limit module parses quotas).
    pub rate_limit_query_ip: String,
    /// `RATE_LIMIT_QUERY_USER`, unparsed: the per-user quota of the query routes, kept
    /// across sign-ins (when [`rate_limit_query_key`](Self::rate_limit_query_key) is
    /// [`QueryQuotaKey::User`]).
    pub rate_limit_query_user: String,
    /// `RATE_LIMIT_QUERY_SESSION`, unparsed: the deprecated per-session quota (used only when
    /// [`rate_limit_query_key`](Self::rate_limit_query_key) is [`QueryQuotaKey::Session`]).
    pub rate_limit_query_session: String,
    /// Which of the two quotas above applies: per user, unless only
    /// `RATE_LIMIT_QUERY_SESSION` is set.
    pub rate_limit_query_key: QueryQuotaKey,
    /// `RATE_LIMIT_LOGIN_IP`, unparsed.
    pub rate_limit_login_ip: String,
    /// `RATE_LIMIT_AUTH_IP`, unparsed: per-IP quota on `/auth/status`, `/auth/user` and
    /// `/auth/sessions*` (never on logout).
    pub rate_limit_auth_ip: String,
    /// `RATE_LIMIT_FAILURE_MODE`.
    pub rate_limit_failure_mode: RateLimitFailureMode,
    /// `TENANT_ID` exactly as configured (`None` when unset; see [`AuthSettings::tenant_id`]).
    pub tenant_id: Option<String>,
    /// Token validation settings.
    pub auth: AuthSettings,
    /// Data agent settings.
    pub data_agent: DataAgentSettings,
    /// `LOG_FORMAT`.
    pub log_format: LogFormat,
    /// `RUST_LOG` (a valid tracing filter).
    pub rust_log: String,
    /// `METRICS_ADDR`: where Prometheus scrapes the metrics (`GET /metrics`), on a listener
    /// of its own; `None` = no listener, no meter provider, nothing recorded.
    pub metrics_addr: Option<SocketAddr>,
    /// `APPLICATIONINSIGHTS_CONNECTION_STRING`: send the metrics to Application Insights
    /// (see [`crate::appinsights`]); `None` = not sent there.
    pub appinsights: Option<crate::appinsights::ConnectionString>,
    /// `OTEL_METRIC_EXPORT_INTERVAL` (milliseconds): how often pushed metrics are sent;
    /// `None` = the SDK's default (60 s).
    pub metric_export_interval: Option<std::time::Duration>,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (or the per-signal `..._TRACES_ENDPOINT`,
    /// `..._METRICS_ENDPOINT`): OTLP export of traces and metrics; `None` = nothing exported.
    pub otlp: Option<OtlpSettings>,
    /// Warnings to log once logging is set up (e.g. the generated development key).
    pub warnings: Vec<String>,
}

/// One invalid or missing variable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The variable (`SECRET_KEY`, `REDIS_PORT`, ...), or `.env` for an unreadable file.
    pub variable: String,
    /// What is wrong; never contains a secret value.
    pub message: String,
}

/// Start-up configuration errors: every problem found, each naming its variable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    problems: Vec<ConfigProblem>,
}

impl ConfigError {
    /// All problems, in the order the variables are read.
    pub fn problems(&self) -> &[ConfigProblem] {
        &self.problems
    }

    /// The names of the offending variables.
    pub fn variables(&self) -> Vec<&str> {
        self.problems.iter().map(|p| p.variable.as_str()).collect()
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration:")?;
        for p in &self.problems {
            write!(f, "\n  {}: {}", p.variable, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads `.env` in the working directory if present (without changing the process
    /// environment; the process environment wins over the file), then validates.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_env_and_file(".env")
    }

    /// [`Config::from_env`] with the dotenv file at `path` (ignored when it does not exist).
    pub fn from_env_and_file(path: impl AsRef<std::path::Path>) -> Result<Self, ConfigError> {
        let mut file_vars = std::collections::HashMap::new();
        let mut file_problem = None;
        match dotenvy::from_path_iter(path.as_ref()) {
            Ok(iter) => {
                for item in iter {
                    match item {
                        Ok((k, v)) => {
                            file_vars.insert(k, v);
                        }
                        Err(e) => {
                            // dotenvy's parse errors quote the line, which may hold a
                            // secret: report only where it failed.
                            let message = match e {
                                dotenvy::Error::LineParse(_, index) => {
                                    format!("cannot parse the file (at character {index})")
                                }
                                _ => "cannot read the file".to_owned(),
                            };
                            file_problem = Some(ConfigProblem {
                                variable: ".env".to_owned(),
                                message,
                            });
                            break;
                        }
                    }
                }
            }
            Err(e) if e.not_found() => {}
            Err(_) => {
                file_problem = Some(ConfigProblem {
                    variable: ".env".to_owned(),
                    message: "cannot read the file".to_owned(),
                });
            }
        }
        let result = Self::from_lookup(|name| {
            std::env::var(name)
                .ok()
                .or_else(|| file_vars.get(name).cloned())
        });
        match (result, file_problem) {
            (r, None) => r,
            (Ok(_), Some(p)) => Err(ConfigError { problems: vec![p] }),
            (Err(mut e), Some(p)) => {
                e.problems.insert(0, p);
                Err(e)
            }
        }
    }

    /// Builds the configuration from `lookup` (variable name → value); empty values count
    /// as unset. Reports every problem at once.
    pub fn from_lookup<F>(lookup: F) -> Result<Self, ConfigError>
    where
        F: Fn(&str) -> Option<String>,
    {
        // One section after the other, in this order: problems are reported in the order
        // the variables are read. A new section is a file with a `read(r)` function, one
        // line here and its fields below.
        let mut r = Reader::new(&lookup);
        let server = server::read(&mut r);
        // ENVIRONMENT decides what every following section requires.
        r.production = server.environment.is_production();
        let redis = redis::read(&mut r);
        let (redis_wait_replicas, redis_wait_timeout) = redis::read_wait(&mut r);
        let sessions = sessions::read(&mut r);
        let clients = clients::read(&mut r);
        let limits = limits::read(&mut r);
        let auth = auth::read(&mut r);
        let data_agent = data_agent::read(&mut r);
        let logging = logging::read(&mut r);
        let telemetry = telemetry::read(&mut r, server.bind_addr);
        let warnings = r.finish()?;

        Ok(Self {
            bind_addr: server.bind_addr,
            environment: server.environment,
            redis,
            redis_wait_replicas,
            redis_wait_timeout,
            secret_keys: sessions.secret_keys,
            secret_key_generated: sessions.secret_key_generated,
            session_expiry: sessions.session_expiry,
            session_idle: sessions.session_idle,
            session_cookie_name: sessions.session_cookie_name,
            cookie_samesite: sessions.cookie_samesite,
            cookie_partitioned: sessions.cookie_partitioned,
            session_max_bytes: sessions.session_max_bytes,
            session_require_record_binding: sessions.session_require_record_binding,
            allowed_origins: clients.allowed_origins,
            trusted_proxies: clients.trusted_proxies,
            rate_limit_query_ip: limits.rate_limit_query_ip,
            rate_limit_query_user: limits.rate_limit_query_user,
            rate_limit_query_session: limits.rate_limit_query_session,
            rate_limit_query_key: limits.rate_limit_query_key,
            rate_limit_login_ip: limits.rate_limit_login_ip,
            rate_limit_auth_ip: limits.rate_limit_auth_ip,
            rate_limit_failure_mode: limits.rate_limit_failure_mode,
            tenant_id: auth.tenant_id,
            auth: auth.settings,
            data_agent,
            log_format: logging.log_format,
            rust_log: logging.rust_log,
            metrics_addr: telemetry.metrics_addr,
            appinsights: telemetry.appinsights,
            metric_export_interval: telemetry.metric_export_interval,
            otlp: telemetry.otlp,
            warnings,
        })
    }

    /// The tenant id masked for `/health`: its first 8 characters and `...`.
    pub fn masked_tenant_id(&self) -> Option<String> {
        self.tenant_id
            .as_ref()
            .map(|t| format!("{}...", t.chars().take(8).collect::<String>()))
    }
}

/// What every section reads with: the variables, whether production rules apply, and what
/// it found (problems, warnings).
struct Reader<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    /// `ENVIRONMENT=production`; set once the server section has read it.
    production: bool,
    problems: Vec<ConfigProblem>,
    warnings: Vec<String>,
}

impl<'a> Reader<'a> {
    fn new(lookup: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Self {
            lookup,
            production: false,
            problems: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// The variable's value, trimmed; `None` when unset or empty.
    fn get(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    /// The variable's value exactly as set.
    fn raw(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
    }

    /// Records a problem with `variable`.
    fn problem(&mut self, variable: &str, message: String) {
        self.problems.push(ConfigProblem {
            variable: variable.to_owned(),
            message,
        });
    }

    /// Whether a problem was recorded for a variable starting with `prefix`.
    fn mentions(&self, prefix: &str) -> bool {
        self.problems.iter().any(|p| p.variable.starts_with(prefix))
    }

    /// Records a warning, logged once logging is set up.
    fn warn(&mut self, message: String) {
        self.warnings.push(message);
    }

    /// A "one of these words" setting. `choices` pairs each accepted word (lowercase; the
    /// value is compared case-insensitively) with its meaning, in the order the error message
    /// lists them. `None` when the variable is unset, and when its value is none of the words,
    /// after reporting `"<value>" is not one of <word>, <word>`: the caller applies its
    /// default in both cases.
    fn one_of<T: Copy>(&mut self, name: &str, choices: &[(&str, T)]) -> Option<T> {
        let value = self.get(name)?.to_ascii_lowercase();
        if let Some((_, meaning)) = choices.iter().find(|(word, _)| *word == value) {
            return Some(*meaning);
        }
        let words: Vec<&str> = choices.iter().map(|(word, _)| *word).collect();
        self.problem(
            name,
            format!("{value:?} is not one of {}", words.join(", ")),
        );
        None
    }

    /// Parses a positive integer variable within `1..=max`; `None` after reporting a problem.
    fn positive_int(&mut self, name: &str, default: u64, max: u64) -> Option<u64> {
        match self.get(name) {
            None => Some(default),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if (1..=max).contains(&n) => Some(n),
                _ => {
                    self.problem(
                        name,
                        format!("{v:?} is not a whole number between 1 and {max}"),
                    );
                    None
                }
            },
        }
    }

    /// The warnings when nothing was wrong, else every problem.
    fn finish(self) -> Result<Vec<String>, ConfigError> {
        if self.problems.is_empty() {
            Ok(self.warnings)
        } else {
            Err(ConfigError {
                problems: self.problems,
            })
        }
    }
}

fn split_list(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn check_http_url(url: &str) -> Result<(), String> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
            if !u.username().is_empty() || u.password().is_some() {
                Err("must not contain credentials".to_owned())
            } else {
                Ok(())
            }
        }
        // The value is not echoed: a malformed URL could carry a secret.
        _ => Err("is not an http:// or https:// URL".to_owned()),
    }
}
