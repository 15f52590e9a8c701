//! Configuration: defaults, production requirements, invalid values, secrets kept out.

use std::collections::HashMap;
use std::time::Duration;

use fabric_gateway::StartError;
use fabric_gateway::config::{
    Config, ConfigError, CookieSameSite, DEV_TENANT_ID, DataAgentProtocol, Environment, LogFormat,
    QueryQuotaKey, RateLimitFailureMode,
};

const TENANT: &str = "4d4eca3f-1111-2222-3333-444455556666";
const SECRET: &str = "0123456789abcdef0123456789abcdef-signing";
const MCP_URL: &str = "https://api.fabric.microsoft.com/v1/mcp/workspaces/w/dataagents/a/agent";

fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Config::from_lookup(|name| map.get(name).cloned())
}

fn production() -> Vec<(&'static str, &'static str)> {
    vec![
        ("ENVIRONMENT", "production"),
        (
            "REDIS_URL",
            "rediss://:redis-pass-9876@cache.example.net:6380",
        ),
        ("SECRET_KEY", SECRET),
        ("TENANT_ID", TENANT),
        ("DATA_AGENT_URL", MCP_URL),
        ("ALLOWED_ORIGINS", "https://app.example.com"),
        ("TRUSTED_PROXIES", "10.0.0.0/8"),
    ]
}

#[test]
fn defaults_with_no_environment() {
    let c = load(&[]).unwrap();
    assert_eq!(c.bind_addr.to_string(), "127.0.0.1:8000");
    assert_eq!(c.environment, Environment::Development);
    assert!(c.redis.is_none());
    assert_eq!(c.redis_wait_replicas, 0);
    assert_eq!(c.redis_wait_timeout, None);
    assert!(c.secret_key_generated);
    assert!(c.secret_keys.primary().len() >= 32);
    assert!(c.warnings.iter().any(|w| w.contains("SECRET_KEY")));
    assert_eq!(c.session_expiry, Duration::from_secs(24 * 3600));
    assert_eq!(c.session_idle, Duration::from_secs(60 * 60));
    assert_eq!(c.session_cookie_name, "fabric_session_id");
    assert_eq!(c.cookie_samesite, CookieSameSite::Lax);
    assert!(!c.cookie_partitioned);
    assert_eq!(c.session_max_bytes, 262_144);
    assert_eq!(c.allowed_origins, ["http://localhost:4200"]);
    assert_eq!(c.rate_limit_query_ip, "10/minute");
    assert_eq!(c.rate_limit_query_user, "10/minute");
    assert_eq!(c.rate_limit_query_key, QueryQuotaKey::User);
    assert_eq!(c.rate_limit_query_session, "10/minute");
    assert_eq!(c.rate_limit_login_ip, "5/minute");
    assert_eq!(c.rate_limit_auth_ip, "120/minute");
    assert_eq!(c.rate_limit_failure_mode, RateLimitFailureMode::Local);
    assert_eq!(c.tenant_id, None);
    assert_eq!(c.masked_tenant_id(), None);
    assert_eq!(c.auth.tenant_id, DEV_TENANT_ID);
    assert_eq!(c.auth.jwks_url, None);
    assert_eq!(c.auth.audiences, ["https://api.fabric.microsoft.com"]);
    assert_eq!(
        c.auth.issuers,
        [
            format!("https://sts.windows.net/{DEV_TENANT_ID}/"),
            format!("https://login.microsoftonline.com/{DEV_TENANT_ID}/v2.0"),
        ]
    );
    assert_eq!(c.data_agent.url, None);
    assert_eq!(c.data_agent.protocol, None);
    assert_eq!(c.data_agent.api_version, "2024-05-01-preview");
    assert_eq!(c.data_agent.timeout, Duration::from_secs(120));
    assert_eq!(c.log_format, LogFormat::Pretty);
    assert_eq!(c.rust_log, "info");
    assert_eq!(c.metrics_addr, None);
    // Two processes get different random keys.
    assert_ne!(
        c.secret_keys.primary(),
        load(&[]).unwrap().secret_keys.primary()
    );
}

#[test]
fn values_are_read() {
    let c = load(&[
        ("PORT", "8080"),
        ("REDIS_HOST", "cache.example.net"),
        ("REDIS_PASSWORD", "pw"),
        ("REDIS_SSL", "true"),
        ("REDIS_WAIT_REPLICAS", "2"),
        ("REDIS_WAIT_TIMEOUT_MS", "250"),
        ("SECRET_KEY", &format!("{SECRET}, {SECRET}-old")),
        ("SESSION_EXPIRY_HOURS", "8"),
        ("SESSION_IDLE_MINUTES", "15"),
        ("SESSION_COOKIE_NAME", "__Host-sid"),
        ("COOKIE_SAMESITE", "None"),
        (
            "ALLOWED_ORIGINS",
            "https://app.example.com, http://localhost:4200/",
        ),
        ("TRUSTED_PROXIES", "10.0.0.0/8, 2001:db8::/32"),
        ("RATE_LIMIT_QUERY_IP", "20/minute"),
        ("RATE_LIMIT_FAILURE_MODE", "closed"),
        ("TENANT_ID", TENANT),
        ("AUTH_AUDIENCE", "api://a, api://b"),
        (
            "DATA_AGENT_URL",
            "https://api.fabric.microsoft.com/v1/workspaces/w/dataagents/a/aiassistant/openai",
        ),
        ("DATA_AGENT_TIMEOUT_SECS", "300"),
        ("LOG_FORMAT", "json"),
        ("RUST_LOG", "info,fabric_gateway=debug"),
    ])
    .unwrap();
    assert_eq!(c.bind_addr.to_string(), "0.0.0.0:8080");
    let redis = c.redis.as_ref().unwrap();
    assert!(redis.is_tls());
    assert_eq!(redis.port(), 6380);
    assert_eq!(c.redis_wait_replicas, 2);
    assert_eq!(c.redis_wait_timeout, Some(Duration::from_millis(250)));
    assert!(!c.secret_key_generated);
    assert_eq!(c.secret_keys.keys().len(), 2);
    assert_eq!(c.secret_keys.primary(), SECRET.as_bytes());
    assert_eq!(c.session_expiry, Duration::from_secs(8 * 3600));
    assert_eq!(c.session_idle, Duration::from_secs(15 * 60));
    assert_eq!(c.cookie_samesite, CookieSameSite::None);
    // Partitioned by default with SameSite=None.
    assert!(c.cookie_partitioned);
    assert_eq!(
        c.allowed_origins,
        ["https://app.example.com", "http://localhost:4200"]
    );
    assert!(c.trusted_proxies.contains("10.1.2.3".parse().unwrap()));
    assert_eq!(c.rate_limit_query_ip, "20/minute");
    assert_eq!(c.rate_limit_failure_mode, RateLimitFailureMode::Closed);
    assert_eq!(c.masked_tenant_id().as_deref(), Some("4d4eca3f..."));
    assert_eq!(
        c.auth.jwks_url.as_deref(),
        Some(format!("https://login.microsoftonline.com/{TENANT}/discovery/v2.0/keys").as_str())
    );
    assert_eq!(c.auth.audiences, ["api://a", "api://b"]);
    assert_eq!(
        c.auth.issuers[0],
        format!("https://sts.windows.net/{TENANT}/")
    );
    assert_eq!(c.data_agent.protocol, Some(DataAgentProtocol::Assistants));
    assert_eq!(c.data_agent.timeout, Duration::from_secs(300));
    assert_eq!(c.log_format, LogFormat::Json);

    // BIND_ADDR wins over PORT; DATA_AGENT_PROTOCOL over the URL's shape.
    let c = load(&[
        ("BIND_ADDR", "127.0.0.1:9999"),
        ("PORT", "8080"),
        ("DATA_AGENT_URL", "http://127.0.0.1:1/custom/path"),
        ("DATA_AGENT_PROTOCOL", "mcp"),
    ])
    .unwrap();
    assert_eq!(c.bind_addr.to_string(), "127.0.0.1:9999");
    assert_eq!(c.data_agent.protocol, Some(DataAgentProtocol::Mcp));
    // Empty values count as unset.
    let c = load(&[("PORT", ""), ("SECRET_KEY", "  ")]).unwrap();
    assert_eq!(c.bind_addr.to_string(), "127.0.0.1:8000");
    assert!(c.secret_key_generated);
}

#[test]
fn production_requires_redis_secret_tenant_and_agent() {
    let c = load(&production()).unwrap();
    assert_eq!(c.environment, Environment::Production);
    assert_eq!(c.log_format, LogFormat::Json);
    assert!(c.warnings.is_empty());
    assert_eq!(c.data_agent.protocol, Some(DataAgentProtocol::Mcp));

    let e = load(&[("ENVIRONMENT", "production")]).unwrap_err();
    let mut named = e.variables();
    named.sort();
    assert_eq!(
        named,
        [
            "ALLOWED_ORIGINS",
            "DATA_AGENT_URL",
            "REDIS_URL",
            "SECRET_KEY",
            "TENANT_ID"
        ]
    );

    for missing in [
        "REDIS_URL",
        "SECRET_KEY",
        "TENANT_ID",
        "DATA_AGENT_URL",
        "ALLOWED_ORIGINS",
    ] {
        let vars: Vec<_> = production()
            .into_iter()
            .filter(|(k, _)| *k != missing)
            .collect();
        let e = load(&vars).unwrap_err();
        assert_eq!(e.variables(), [missing], "{e}");
        assert!(e.to_string().contains(missing));
        assert!(e.to_string().contains("production"));
    }
    // REDIS_HOST is as good as REDIS_URL.
    let mut vars: Vec<_> = production()
        .into_iter()
        .filter(|(k, _)| *k != "REDIS_URL")
        .collect();
    vars.push(("REDIS_HOST", "cache.example.net"));
    vars.push(("REDIS_SSL", "true"));
    load(&vars).unwrap();
}

#[test]
fn production_refuses_plaintext_redis_unless_allowed_and_warns_without_proxies() {
    let with = |changes: &[(&'static str, &'static str)]| {
        let mut vars: Vec<_> = production()
            .into_iter()
            .filter(|(k, _)| !changes.iter().any(|(c, _)| c == k))
            .collect();
        vars.extend(changes.iter().filter(|(_, v)| !v.is_empty()));
        load(&vars)
    };
    let e = with(&[("REDIS_URL", "redis://:pw-1@cache.internal:6379")]).unwrap_err();
    assert_eq!(e.variables(), ["REDIS_URL"], "{e}");
    assert!(e.to_string().contains("REDIS_ALLOW_PLAINTEXT"), "{e}");
    assert!(!e.to_string().contains("pw-1"));
    let e = with(&[("REDIS_URL", ""), ("REDIS_HOST", "cache.internal")]).unwrap_err();
    assert_eq!(e.variables(), ["REDIS_SSL"], "{e}");
    let c = with(&[
        ("REDIS_URL", "redis://cache.internal:6379"),
        ("REDIS_ALLOW_PLAINTEXT", "true"),
    ])
    .unwrap();
    assert!(c.redis.is_some());
    let e = with(&[("REDIS_ALLOW_PLAINTEXT", "sometimes")]).unwrap_err();
    assert_eq!(e.variables(), ["REDIS_ALLOW_PLAINTEXT"]);
    // Development keeps plain-text Redis.
    assert!(load(&[("REDIS_URL", "redis://127.0.0.1:6379")]).is_ok());

    // No TRUSTED_PROXIES in production: it starts, with a warning naming the variable.
    let c = with(&[("TRUSTED_PROXIES", "")]).unwrap();
    assert!(
        c.warnings
            .iter()
            .any(|w| w.starts_with("TRUSTED_PROXIES is empty")),
        "{:?}",
        c.warnings
    );
    assert!(with(&[]).unwrap().warnings.is_empty());
}

#[test]
fn session_max_bytes_is_read() {
    assert_eq!(
        load(&[("SESSION_MAX_BYTES", "1024")])
            .unwrap()
            .session_max_bytes,
        1024
    );
    assert_eq!(
        load(&[("SESSION_MAX_BYTES", "67108864")])
            .unwrap()
            .session_max_bytes,
        64 << 20
    );
}

#[test]
fn session_require_record_binding_is_read() {
    assert!(!load(&[]).unwrap().session_require_record_binding);
    assert!(
        load(&[("SESSION_REQUIRE_RECORD_BINDING", "true")])
            .unwrap()
            .session_require_record_binding
    );
}

#[test]
fn invalid_values_are_named() {
    let cases: &[(&str, &str)] = &[
        ("ENVIRONMENT", "staging"),
        ("BIND_ADDR", "localhost"),
        ("PORT", "99999"),
        ("REDIS_URL", "http://cache"),
        ("REDIS_WAIT_REPLICAS", "-1"),
        ("REDIS_WAIT_REPLICAS", "17"),
        ("REDIS_WAIT_REPLICAS", "one"),
        ("REDIS_WAIT_TIMEOUT_MS", "0"),
        ("REDIS_WAIT_TIMEOUT_MS", "60001"),
        ("SECRET_KEY", "too-short"),
        ("SESSION_EXPIRY_HOURS", "0"),
        ("SESSION_IDLE_MINUTES", "ten"),
        ("SESSION_COOKIE_NAME", "bad name;"),
        ("COOKIE_SAMESITE", "sometimes"),
        ("COOKIE_PARTITIONED", "yes"),
        ("COOKIE_PARTITIONED", "1"),
        // Partitioned needs Secure, which local mode with SameSite=Lax does not set.
        ("COOKIE_PARTITIONED", "true"),
        ("SESSION_REQUIRE_RECORD_BINDING", "yes"),
        ("SESSION_MAX_BYTES", "1023"),
        ("SESSION_MAX_BYTES", "0"),
        ("SESSION_MAX_BYTES", "256k"),
        ("SESSION_MAX_BYTES", "67108865"),
        ("ALLOWED_ORIGINS", "https://app.example.com/path"),
        ("ALLOWED_ORIGINS", "*"),
        ("TRUSTED_PROXIES", "10.0.0.0/99"),
        ("RATE_LIMIT_FAILURE_MODE", "maybe"),
        ("TENANT_ID", "contoso"),
        ("AUTH_JWKS_URL", "ftp://keys.example.com"),
        ("DATA_AGENT_URL", "not a url"),
        ("DATA_AGENT_URL", "https://example.com/some/agent"),
        ("DATA_AGENT_PROTOCOL", "grpc"),
        ("DATA_AGENT_API_VERSION", "2024 05"),
        ("DATA_AGENT_TIMEOUT_SECS", "0"),
        ("LOG_FORMAT", "xml"),
        ("RUST_LOG", "fabric_gateway=loud"),
    ];
    for (var, value) in cases {
        let e = load(&[(var, value)]).expect_err(&format!("{var}={value} must be refused"));
        assert_eq!(e.variables(), [*var], "{var}={value}: {e}");
        assert!(e.to_string().contains(var));
    }
    let e = load(&[("REDIS_HOST", "h"), ("REDIS_PORT", "abc")]).unwrap_err();
    assert_eq!(e.variables(), ["REDIS_PORT"]);
    // An idle timeout longer than the whole session is refused, naming the idle setting.
    let e = load(&[
        ("SESSION_EXPIRY_HOURS", "1"),
        ("SESSION_IDLE_MINUTES", "61"),
    ])
    .unwrap_err();
    assert_eq!(e.variables(), ["SESSION_IDLE_MINUTES"]);
    assert!(
        load(&[
            ("SESSION_EXPIRY_HOURS", "1"),
            ("SESSION_IDLE_MINUTES", "60")
        ])
        .is_ok()
    );
    // Every problem is reported at once.
    let e = load(&[
        ("PORT", "x"),
        ("LOG_FORMAT", "xml"),
        ("COOKIE_SAMESITE", "?"),
    ])
    .unwrap_err();
    assert_eq!(e.variables(), ["PORT", "COOKIE_SAMESITE", "LOG_FORMAT"]);
}

/// `COOKIE_PARTITIONED` follows `COOKIE_SAMESITE` unless set, and is refused where the
/// cookie would not be `Secure`.
#[test]
fn cookie_partitioned_default_and_secure_requirement() {
    let get = |vars: &[(&str, &str)]| load(vars).unwrap().cookie_partitioned;
    assert!(get(&[("COOKIE_SAMESITE", "none")]));
    assert!(!get(&[("COOKIE_SAMESITE", "lax")]));
    assert!(!get(&[("COOKIE_SAMESITE", "strict")]));
    assert!(!get(&[
        ("COOKIE_SAMESITE", "none"),
        ("COOKIE_PARTITIONED", "false")
    ]));
    assert!(get(&[
        ("COOKIE_SAMESITE", "None"),
        ("COOKIE_PARTITIONED", "TRUE")
    ]));
    // Production cookies are always Secure, so Partitioned is accepted with Lax there.
    let mut vars = production();
    vars.push(("COOKIE_PARTITIONED", "true"));
    assert!(get(&vars));
    assert!(!load(&production()).unwrap().cookie_partitioned);
    // Local mode with Lax: no Secure, so no Partitioned; the message says why.
    let e = load(&[("COOKIE_PARTITIONED", "true")]).unwrap_err();
    assert_eq!(e.variables(), ["COOKIE_PARTITIONED"]);
    assert!(e.to_string().contains("Secure"), "{e}");
}

#[test]
fn secrets_never_appear_in_debug_or_errors() {
    let c = load(&[
        ("REDIS_URL", "redis://:redis-url-secret-1@cache:6379"),
        ("SECRET_KEY", SECRET),
    ])
    .unwrap();
    let debug = format!("{c:?}");
    assert!(!debug.contains("redis-url-secret-1"), "{debug}");
    assert!(!debug.contains(SECRET), "{debug}");
    let c = load(&[
        ("REDIS_HOST", "cache"),
        ("REDIS_PASSWORD", "redis-part-secret-2"),
    ])
    .unwrap();
    assert!(!format!("{c:?}").contains("redis-part-secret-2"));
    let ai_key = "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9";
    let c = load(&[(
        "APPLICATIONINSIGHTS_CONNECTION_STRING",
        &format!("InstrumentationKey={ai_key};IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com/"),
    )])
    .unwrap();
    let debug = format!("{c:?}");
    assert!(!debug.contains(ai_key), "{debug}");
    assert!(
        debug.contains("westeurope-5"),
        "the endpoint is not a secret: {debug}"
    );
    let dev = load(&[]).unwrap();
    let key = String::from_utf8_lossy(dev.secret_keys.primary()).into_owned();
    assert!(!format!("{dev:?}").contains(&key));
    assert!(!format!("{:?}", dev.secret_keys).contains(&key));

    let short_secret = "short-secret-value";
    let e = load(&[
        ("SECRET_KEY", &format!("{SECRET},{short_secret}")),
        ("REDIS_URL", "redis://:redis-url-secret-3@cache:notaport"),
        ("REDIS_PASSWORD", "redis-part-secret-4"),
    ])
    .unwrap_err();
    let text = format!("{e} {e:?}");
    assert_eq!(e.variables(), ["REDIS_URL", "SECRET_KEY"]);
    assert!(text.contains("key #2"), "{text}");
    for secret in [
        SECRET,
        short_secret,
        "redis-url-secret-3",
        "redis-part-secret-4",
    ] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
}

#[test]
fn dotenv_file_is_read_and_process_env_wins() {
    let dir = std::env::temp_dir().join(format!("fabric-gateway-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(".env");
    std::fs::write(
        &file,
        "# comment\nSESSION_COOKIE_NAME=from_dotenv\nDATA_AGENT_TIMEOUT_SECS=45\n",
    )
    .unwrap();
    let c = Config::from_env_and_file(&file).unwrap();
    if std::env::var("SESSION_COOKIE_NAME").is_err() {
        assert_eq!(c.session_cookie_name, "from_dotenv");
    }
    if std::env::var("DATA_AGENT_TIMEOUT_SECS").is_err() {
        assert_eq!(c.data_agent.timeout, Duration::from_secs(45));
    }
    // A missing file is fine.
    Config::from_env_and_file(dir.join("absent.env")).unwrap();
    // A broken file is named, without quoting its content.
    std::fs::write(&file, "SECRET_KEY='unterminated-secret-value\n").unwrap();
    let e = Config::from_env_and_file(&file).unwrap_err();
    assert_eq!(e.variables(), [".env"]);
    assert!(!e.to_string().contains("unterminated-secret-value"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn word_settings_list_their_words() {
    let cases = [
        ("ENVIRONMENT", "Staging", "development, production"),
        ("COOKIE_SAMESITE", "sometimes", "lax, strict, none"),
        ("COOKIE_PARTITIONED", "On", "true, false"),
        ("RATE_LIMIT_FAILURE_MODE", "MAYBE", "local, open, closed"),
        ("DATA_AGENT_PROTOCOL", "grpc", "mcp, assistants"),
        ("LOG_FORMAT", "xml", "json, pretty"),
    ];
    for (var, value, words) in cases {
        let e = load(&[(var, value)]).unwrap_err();
        let lowered = value.to_ascii_lowercase();
        assert_eq!(
            e.problems()[0].message,
            format!("{lowered:?} is not one of {words}"),
            "{var}"
        );
    }
    // The words are matched whatever their case.
    let c = load(&[("COOKIE_SAMESITE", "Strict"), ("LOG_FORMAT", "JSON")]).unwrap();
    assert_eq!(c.cookie_samesite, CookieSameSite::Strict);
    assert_eq!(c.log_format, LogFormat::Json);
}

/// Settings that only the layers can check are named when the service is built (before it
/// starts anything).
#[tokio::test]
async fn settings_the_layers_refuse_are_named() {
    let cases: &[(&str, &str)] = &[
        // A __Host- cookie needs Secure, which local mode over http:// does not set.
        ("SESSION_COOKIE_NAME", "__Host-sid"),
        ("SESSION_COOKIE_NAME", "__Secure-sid"),
        ("RATE_LIMIT_QUERY_IP", "ten a minute"),
        ("RATE_LIMIT_QUERY_USER", "0/minute"),
        ("RATE_LIMIT_QUERY_SESSION", "0/minute"),
        ("RATE_LIMIT_LOGIN_IP", "5/fortnight"),
        ("RATE_LIMIT_AUTH_IP", "many/minute"),
        ("RATE_LIMIT_AUTH_IP", "0/minute"),
    ];
    for (var, value) in cases {
        let config = load(&[(var, value)]).expect("the configuration alone accepts it");
        let e = fabric_gateway::app(config)
            .await
            .expect_err(&format!("{var}={value} must be refused"));
        match &e {
            StartError::Config { variable, .. } => assert_eq!(variable, var, "{e}"),
            other => panic!("{var}={value}: {other}"),
        }
        assert!(e.to_string().starts_with(&format!("{var}: ")), "{e}");
    }
}

/// `METRICS_ADDR`: a socket address, never the public one (the same port on the same or
/// the unspecified address); port 0 (any free port) is allowed.
#[test]
fn metrics_addr_is_a_listener_of_its_own() {
    let c = load(&[("METRICS_ADDR", "127.0.0.1:9464")]).unwrap();
    assert_eq!(c.metrics_addr, Some("127.0.0.1:9464".parse().unwrap()));
    let c = load(&[("METRICS_ADDR", "127.0.0.1:0")]).unwrap();
    assert_eq!(c.metrics_addr, Some("127.0.0.1:0".parse().unwrap()));
    // Another port beside the public one, on all interfaces.
    let c = load(&[("PORT", "8000"), ("METRICS_ADDR", "0.0.0.0:9464")]).unwrap();
    assert_eq!(c.metrics_addr, Some("0.0.0.0:9464".parse().unwrap()));

    let refused: &[&[(&str, &str)]] = &[
        &[("METRICS_ADDR", "9464")],
        &[("METRICS_ADDR", "localhost:9464")],
        &[("METRICS_ADDR", "127.0.0.1:8000")],
        &[
            ("BIND_ADDR", "127.0.0.1:9000"),
            ("METRICS_ADDR", "127.0.0.1:9000"),
        ],
        &[("PORT", "9000"), ("METRICS_ADDR", "127.0.0.1:9000")],
        &[
            ("BIND_ADDR", "127.0.0.1:9000"),
            ("METRICS_ADDR", "0.0.0.0:9000"),
        ],
    ];
    for vars in refused {
        let e = load(vars).expect_err(&format!("{vars:?} must be refused"));
        assert_eq!(e.variables(), ["METRICS_ADDR"], "{vars:?}: {e}");
    }
    let e = load(&[("PORT", "9000"), ("METRICS_ADDR", "127.0.0.1:9000")]).unwrap_err();
    assert!(e.to_string().contains("listener of their own"), "{e}");
}

/// `OTEL_EXPORTER_OTLP_ENDPOINT` turns on OTLP export of both signals under the base URL;
/// the per-signal endpoints are used as they are and turn on their signal alone; only
/// `http/protobuf` is accepted as the protocol; unset, nothing is exported.
#[test]
fn otlp_endpoints_and_protocol() {
    use fabric_gateway::config::OtlpSettings;

    assert_eq!(load(&[]).unwrap().otlp, None);
    let c = load(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")]).unwrap();
    assert_eq!(
        c.otlp,
        Some(OtlpSettings {
            traces_url: Some("http://collector:4318/v1/traces".to_owned()),
            metrics_url: Some("http://collector:4318/v1/metrics".to_owned()),
        })
    );
    let c = load(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector.example"),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "https://traces.example/in",
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
    ])
    .unwrap();
    let otlp = c.otlp.unwrap();
    assert_eq!(
        otlp.traces_url.as_deref(),
        Some("https://traces.example/in")
    );
    assert_eq!(
        otlp.metrics_url.as_deref(),
        Some("https://collector.example/v1/metrics")
    );
    let c = load(&[(
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        "http://127.0.0.1:4318/v1/metrics",
    )])
    .unwrap();
    assert_eq!(c.otlp.as_ref().unwrap().traces_url, None);
    let c = load(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
        ("OTEL_SDK_DISABLED", "true"),
    ])
    .unwrap();
    assert_eq!(c.otlp, None);

    for (var, value) in [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "grpc://collector:4317",
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/json"),
    ] {
        let e = load(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            (var, value),
        ])
        .expect_err(&format!("{var}={value} must be refused"));
        assert_eq!(e.variables(), [var], "{e}");
    }
}

/// Without `METRICS_ADDR` nothing listens for metrics; an address that cannot be listened on
/// stops start-up, naming the variable.
#[tokio::test]
async fn metrics_listener_only_when_configured() {
    let app = fabric_gateway::app(load(&[]).unwrap()).await.unwrap();
    assert_eq!(app.handle().metrics_addr(), None);

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let e = fabric_gateway::app(load(&[("METRICS_ADDR", &addr)]).unwrap())
        .await
        .expect_err("a taken METRICS_ADDR stops start-up");
    assert!(matches!(e, StartError::Metrics(_)), "{e}");
    assert!(
        e.to_string().starts_with("METRICS_ADDR: cannot listen on"),
        "{e}"
    );
}

/// `RATE_LIMIT_QUERY_USER` (default 10/minute) replaces `RATE_LIMIT_QUERY_SESSION`, which
/// alone keeps the per-session quota of earlier versions, with a deprecation warning.
#[test]
fn the_query_quota_is_per_user_unless_only_the_deprecated_session_one_is_set() {
    let deprecated = |c: &Config| {
        c.warnings
            .iter()
            .filter(|w| w.contains("RATE_LIMIT_QUERY_SESSION"))
            .cloned()
            .collect::<Vec<_>>()
    };
    // Neither: per user, default quota, no warning about them.
    let c = load(&[("SECRET_KEY", SECRET)]).unwrap();
    assert_eq!(c.rate_limit_query_key, QueryQuotaKey::User);
    assert_eq!(c.rate_limit_query_user, "10/minute");
    assert!(deprecated(&c).is_empty(), "{:?}", c.warnings);
    // The user quota alone.
    let c = load(&[("SECRET_KEY", SECRET), ("RATE_LIMIT_QUERY_USER", "20/hour")]).unwrap();
    assert_eq!(c.rate_limit_query_key, QueryQuotaKey::User);
    assert_eq!(c.rate_limit_query_user, "20/hour");
    assert!(deprecated(&c).is_empty(), "{:?}", c.warnings);
    // The session quota alone: kept, with a deprecation warning naming its replacement.
    let c = load(&[
        ("SECRET_KEY", SECRET),
        ("RATE_LIMIT_QUERY_SESSION", "3/minute"),
    ])
    .unwrap();
    assert_eq!(c.rate_limit_query_key, QueryQuotaKey::Session);
    assert_eq!(c.rate_limit_query_session, "3/minute");
    let warnings = deprecated(&c);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("deprecated"), "{}", warnings[0]);
    assert!(
        warnings[0].contains("RATE_LIMIT_QUERY_USER"),
        "{}",
        warnings[0]
    );
    // Both: the user quota wins, the other is said to be ignored.
    let c = load(&[
        ("SECRET_KEY", SECRET),
        ("RATE_LIMIT_QUERY_USER", "5/minute"),
        ("RATE_LIMIT_QUERY_SESSION", "3/minute"),
    ])
    .unwrap();
    assert_eq!(c.rate_limit_query_key, QueryQuotaKey::User);
    assert_eq!(c.rate_limit_query_user, "5/minute");
    let warnings = deprecated(&c);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("ignored"), "{}", warnings[0]);
}
