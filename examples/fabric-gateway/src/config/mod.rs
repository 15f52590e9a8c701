//! Configuration from the environment (and a `.env` file), validated at start-up.
//!
//! Every variable of the service's configuration table is read here, with its default.
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
mod server;
mod sessions;

use auth::DEFAULT_AUDIENCE;
pub use auth::{AuthSettings, DEV_TENANT_ID};
use clients::parse_origin;
use data_agent::DEFAULT_API_VERSION;
pub use data_agent::{DataAgentProtocol, DataAgentSettings};
pub use limits::RateLimitFailureMode;
use limits::{DEFAULT_LOGIN_QUOTA, DEFAULT_QUOTA};
pub use logging::LogFormat;
pub use server::Environment;
use server::default_bind;
use sessions::is_cookie_name_byte;
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
    /// `ALLOWED_ORIGINS`: browser origins (`scheme://host[:port]`, no trailing slash).
    pub allowed_origins: Vec<String>,
    /// `TRUSTED_PROXIES`.
    pub trusted_proxies: TrustedProxies,
    /// `RATE_LIMIT_QUERY_IP`, unparsed (the rate-limit module parses quotas).
    pub rate_limit_query_ip: String,
    /// `RATE_LIMIT_QUERY_SESSION`, unparsed.
    pub rate_limit_query_session: String,
    /// `RATE_LIMIT_LOGIN_IP`, unparsed.
    pub rate_limit_login_ip: String,
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
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mut p = Problems::default();

        // ENVIRONMENT first: it decides what is required.
        let environment = match get("ENVIRONMENT")
            .map(|v| v.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("development") => Environment::Development,
            Some("production") => Environment::Production,
            Some(other) => {
                p.add(
                    "ENVIRONMENT",
                    format!("{other:?} is not one of development, production"),
                );
                Environment::Development
            }
        };
        let production = environment.is_production();

        let bind_addr = match (get("BIND_ADDR"), get("PORT")) {
            (Some(addr), _) => addr.parse::<SocketAddr>().unwrap_or_else(|_| {
                p.add(
                    "BIND_ADDR",
                    format!("{addr:?} is not a socket address like 0.0.0.0:8000"),
                );
                default_bind()
            }),
            (None, Some(port)) => match port.parse::<u16>() {
                Ok(p) => SocketAddr::from(([0, 0, 0, 0], p)),
                Err(_) => {
                    p.add("PORT", format!("{port:?} is not a port number (0-65535)"));
                    default_bind()
                }
            },
            (None, None) => default_bind(),
        };

        let redis = match RedisConfig::from_env_with(&lookup) {
            Ok(r) => r,
            Err(e) => {
                // RedisConfigError never contains the password or the URL.
                p.add(e.variable(), e.to_string());
                None
            }
        };
        if production && redis.is_none() && !p.mentions("REDIS") {
            p.add(
                "REDIS_URL",
                "Redis is required when ENVIRONMENT=production: set REDIS_URL or REDIS_HOST"
                    .to_owned(),
            );
        }

        let mut warnings = Vec::new();
        let (secret_keys, secret_key_generated) = match lookup("SECRET_KEY") {
            Some(raw) if !raw.trim().is_empty() => {
                let mut keys = Vec::new();
                let mut ok = true;
                for (i, key) in raw.split(',').map(str::trim).enumerate() {
                    if key.len() < MIN_SECRET_KEY_BYTES {
                        ok = false;
                        p.add(
                            "SECRET_KEY",
                            format!(
                                "key #{} is {} bytes long; each key needs at least {} bytes",
                                i + 1,
                                key.len(),
                                MIN_SECRET_KEY_BYTES
                            ),
                        );
                    }
                    keys.push(key.as_bytes().to_vec());
                }
                if ok {
                    (SecretKeys(keys), false)
                } else {
                    (SecretKeys::random(), false)
                }
            }
            _ => {
                if production {
                    p.add(
                        "SECRET_KEY",
                        format!(
                            "is required when ENVIRONMENT=production (at least {MIN_SECRET_KEY_BYTES} bytes)"
                        ),
                    );
                } else {
                    warnings.push(
                        "SECRET_KEY is not set: using a random key for this process; sessions \
                         end when it restarts and are not shared with other instances"
                            .to_owned(),
                    );
                }
                (SecretKeys::random(), true)
            }
        };

        let session_expiry = positive_int(&get, &mut p, "SESSION_EXPIRY_HOURS", 24, 24 * 366)
            .map(|h| Duration::from_secs(h * 3600));
        let session_idle = positive_int(&get, &mut p, "SESSION_IDLE_MINUTES", 60, 60 * 24 * 366)
            .map(|m| Duration::from_secs(m * 60));

        if let (Some(idle), Some(expiry)) = (session_idle, session_expiry)
            && idle > expiry
        {
            p.add(
                "SESSION_IDLE_MINUTES",
                format!(
                    "the idle timeout ({} min) is longer than the absolute lifetime \
                     (SESSION_EXPIRY_HOURS = {} h)",
                    idle.as_secs() / 60,
                    expiry.as_secs() / 3600
                ),
            );
        }

        let session_cookie_name = match get("SESSION_COOKIE_NAME") {
            None => "fabric_session_id".to_owned(),
            Some(name) => {
                if !name.bytes().all(is_cookie_name_byte) {
                    p.add(
                        "SESSION_COOKIE_NAME",
                        format!("{name:?} is not a valid cookie name"),
                    );
                }
                name
            }
        };

        let cookie_samesite = match get("COOKIE_SAMESITE")
            .map(|v| v.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("lax") => CookieSameSite::Lax,
            Some("strict") => CookieSameSite::Strict,
            Some("none") => CookieSameSite::None,
            Some(other) => {
                p.add(
                    "COOKIE_SAMESITE",
                    format!("{other:?} is not one of lax, strict, none"),
                );
                CookieSameSite::Lax
            }
        };

        let allowed_origins = match get("ALLOWED_ORIGINS") {
            None => vec!["http://localhost:4200".to_owned()],
            Some(list) => {
                let mut origins = Vec::new();
                for entry in split_list(&list) {
                    match parse_origin(entry) {
                        Ok(o) => origins.push(o),
                        Err(why) => p.add("ALLOWED_ORIGINS", format!("{entry:?} {why}")),
                    }
                }
                origins
            }
        };

        let trusted_proxies = match get("TRUSTED_PROXIES") {
            None => TrustedProxies::none(),
            Some(list) => TrustedProxies::parse(&list).unwrap_or_else(|e| {
                p.add("TRUSTED_PROXIES", e.to_string());
                TrustedProxies::none()
            }),
        };

        let rate_limit_query_ip =
            get("RATE_LIMIT_QUERY_IP").unwrap_or_else(|| DEFAULT_QUOTA.to_owned());
        let rate_limit_query_session =
            get("RATE_LIMIT_QUERY_SESSION").unwrap_or_else(|| DEFAULT_QUOTA.to_owned());
        let rate_limit_login_ip =
            get("RATE_LIMIT_LOGIN_IP").unwrap_or_else(|| DEFAULT_LOGIN_QUOTA.to_owned());
        let rate_limit_failure_mode = match get("RATE_LIMIT_FAILURE_MODE")
            .map(|v| v.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("local") => RateLimitFailureMode::Local,
            Some("open") => RateLimitFailureMode::Open,
            Some("closed") => RateLimitFailureMode::Closed,
            Some(other) => {
                p.add(
                    "RATE_LIMIT_FAILURE_MODE",
                    format!("{other:?} is not one of local, open, closed"),
                );
                RateLimitFailureMode::Local
            }
        };

        let tenant_id = get("TENANT_ID");
        if let Some(t) = &tenant_id {
            if uuid::Uuid::try_parse(t).is_err() {
                p.add(
                    "TENANT_ID",
                    format!("{t:?} is not a tenant id (a GUID like 4d4eca3f-...)"),
                );
            }
        } else if production {
            p.add(
                "TENANT_ID",
                "is required when ENVIRONMENT=production".to_owned(),
            );
        }
        let effective_tenant = tenant_id
            .clone()
            .unwrap_or_else(|| DEV_TENANT_ID.to_owned())
            .to_ascii_lowercase();

        let jwks_url = match get("AUTH_JWKS_URL") {
            Some(url) => {
                if let Err(why) = check_http_url(&url) {
                    p.add("AUTH_JWKS_URL", why);
                }
                Some(url)
            }
            None => tenant_id
                .as_ref()
                .map(|t| format!("https://login.microsoftonline.com/{t}/discovery/v2.0/keys")),
        };
        let audiences = match get("AUTH_AUDIENCE") {
            None => vec![DEFAULT_AUDIENCE.to_owned()],
            Some(list) => {
                let v: Vec<String> = split_list(&list).map(str::to_owned).collect();
                if v.is_empty() {
                    p.add("AUTH_AUDIENCE", "lists no audience".to_owned());
                }
                v
            }
        };
        let issuers = match get("AUTH_ISSUER") {
            None => vec![
                format!("https://sts.windows.net/{effective_tenant}/"),
                format!("https://login.microsoftonline.com/{effective_tenant}/v2.0"),
            ],
            Some(list) => {
                let v: Vec<String> = split_list(&list).map(str::to_owned).collect();
                if v.is_empty() {
                    p.add("AUTH_ISSUER", "lists no issuer".to_owned());
                }
                v
            }
        };

        let data_agent_url = get("DATA_AGENT_URL");
        if let Some(url) = &data_agent_url {
            if let Err(why) = check_http_url(url) {
                p.add("DATA_AGENT_URL", why);
            }
        } else if production {
            p.add(
                "DATA_AGENT_URL",
                "is required when ENVIRONMENT=production".to_owned(),
            );
        }
        let explicit_protocol = match get("DATA_AGENT_PROTOCOL")
            .map(|v| v.to_ascii_lowercase())
            .as_deref()
        {
            None => None,
            Some("mcp") => Some(DataAgentProtocol::Mcp),
            Some("assistants") => Some(DataAgentProtocol::Assistants),
            Some(other) => {
                p.add(
                    "DATA_AGENT_PROTOCOL",
                    format!("{other:?} is not one of mcp, assistants"),
                );
                None
            }
        };
        let protocol = match (&data_agent_url, explicit_protocol) {
            (_, Some(p)) => Some(p),
            (Some(url), None) => {
                let detected = DataAgentProtocol::detect(url);
                if detected.is_none() && check_http_url(url).is_ok() {
                    p.add(
                        "DATA_AGENT_URL",
                        "its shape tells neither .../mcp/.../agent nor .../aiassistant/openai: \
                         set DATA_AGENT_PROTOCOL to mcp or assistants"
                            .to_owned(),
                    );
                }
                detected
            }
            (None, None) => None,
        };
        let api_version = match get("DATA_AGENT_API_VERSION") {
            None => DEFAULT_API_VERSION.to_owned(),
            Some(v) => {
                if !v
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                {
                    p.add(
                        "DATA_AGENT_API_VERSION",
                        format!("{v:?} is not an api-version like 2024-05-01-preview"),
                    );
                }
                v
            }
        };
        let timeout = positive_int(&get, &mut p, "DATA_AGENT_TIMEOUT_SECS", 120, 3600)
            .map(Duration::from_secs);

        let log_format = match get("LOG_FORMAT").map(|v| v.to_ascii_lowercase()).as_deref() {
            None if production => LogFormat::Json,
            None => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some("pretty") => LogFormat::Pretty,
            Some(other) => {
                p.add(
                    "LOG_FORMAT",
                    format!("{other:?} is not one of json, pretty"),
                );
                LogFormat::Pretty
            }
        };
        let rust_log = get("RUST_LOG").unwrap_or_else(|| "info".to_owned());
        if tracing_subscriber::EnvFilter::try_new(&rust_log).is_err() {
            p.add(
                "RUST_LOG",
                format!("{rust_log:?} is not a valid tracing filter"),
            );
        }

        if !p.0.is_empty() {
            return Err(ConfigError { problems: p.0 });
        }
        Ok(Self {
            bind_addr,
            environment,
            redis,
            secret_keys,
            secret_key_generated,
            session_expiry: session_expiry.unwrap_or_default(),
            session_idle: session_idle.unwrap_or_default(),
            session_cookie_name,
            cookie_samesite,
            allowed_origins,
            trusted_proxies,
            rate_limit_query_ip,
            rate_limit_query_session,
            rate_limit_login_ip,
            rate_limit_failure_mode,
            tenant_id,
            auth: AuthSettings {
                tenant_id: effective_tenant,
                jwks_url,
                audiences,
                issuers,
            },
            data_agent: DataAgentSettings {
                url: data_agent_url,
                protocol,
                api_version,
                timeout: timeout.unwrap_or_default(),
            },
            log_format,
            rust_log,
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

#[derive(Default)]
struct Problems(Vec<ConfigProblem>);

impl Problems {
    fn add(&mut self, variable: &str, message: String) {
        self.0.push(ConfigProblem {
            variable: variable.to_owned(),
            message,
        });
    }

    fn mentions(&self, prefix: &str) -> bool {
        self.0.iter().any(|p| p.variable.starts_with(prefix))
    }
}

/// Parses a positive integer variable within `1..=max`; `None` after reporting a problem.
fn positive_int<G>(get: &G, p: &mut Problems, name: &str, default: u64, max: u64) -> Option<u64>
where
    G: Fn(&str) -> Option<String>,
{
    match get(name) {
        None => Some(default),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if (1..=max).contains(&n) => Some(n),
            _ => {
                p.add(
                    name,
                    format!("{v:?} is not a whole number between 1 and {max}"),
                );
                None
            }
        },
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
