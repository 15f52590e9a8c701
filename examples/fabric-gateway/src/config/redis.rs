//! The Redis section: `REDIS_URL` (one URL, or a comma-separated list of cluster seed
//! nodes), or `REDIS_HOST`, `REDIS_PORT`, `REDIS_PASSWORD`, `REDIS_SSL`; and `REDIS_CLUSTER`
//! (`auto`, `true`, `false`; default `auto`: decided on the first successful connection);
//! or Redis Sentinel: `REDIS_SENTINELS` (`host:port,...`), `REDIS_SENTINEL_MASTER`,
//! `REDIS_SENTINEL_PASSWORD` (the sentinels' own password; `REDIS_PASSWORD` stays the
//! data password, `REDIS_SSL` applies to both). All read by the crate's [`RedisConfig`]
//! (`REDIS_CLUSTER` becomes [`RedisConfig::cluster`], the Sentinel variables
//! [`RedisConfig::from_sentinels`]); required in production. Also `REDIS_WAIT_REPLICAS` and
//! `REDIS_WAIT_TIMEOUT_MS`, the session store's durability settings
//! ([`RedisStore::with_wait_replicas`](tower_rampart::session::RedisStore::with_wait_replicas)).
//! In production a plain-text Redis is refused unless `REDIS_ALLOW_PLAINTEXT=true`.

use std::time::Duration;

use tower_rampart::redis::RedisConfig;

use super::Reader;

/// Largest `REDIS_WAIT_REPLICAS` accepted (more replicas per master than any deployment has).
const MAX_WAIT_REPLICAS: u64 = 16;
/// Largest `REDIS_WAIT_TIMEOUT_MS`: a waiting save holds its request this long at most.
const MAX_WAIT_TIMEOUT_MS: u64 = 60_000;

/// `REDIS_WAIT_REPLICAS` (default 0: do not wait) and `REDIS_WAIT_TIMEOUT_MS` (default
/// `None`: the Redis command timeout, 500 ms).
pub(super) fn read_wait(r: &mut Reader<'_>) -> (u32, Option<Duration>) {
    let replicas = match r.get("REDIS_WAIT_REPLICAS") {
        None => 0,
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n <= MAX_WAIT_REPLICAS => n as u32,
            _ => {
                r.problem(
                    "REDIS_WAIT_REPLICAS",
                    format!("{v:?} is not a whole number between 0 and {MAX_WAIT_REPLICAS}"),
                );
                0
            }
        },
    };
    let timeout = match r.get("REDIS_WAIT_TIMEOUT_MS") {
        None => None,
        Some(_) => r
            .positive_int("REDIS_WAIT_TIMEOUT_MS", 500, MAX_WAIT_TIMEOUT_MS)
            .map(Duration::from_millis),
    };
    (replicas, timeout)
}

/// Reads the Redis variables; `None` means the memory store.
pub(super) fn read(r: &mut Reader<'_>) -> Option<RedisConfig> {
    let redis = match RedisConfig::from_env_with(r.lookup) {
        Ok(config) => config,
        Err(e) => {
            // RedisConfigError never contains the password or the URL.
            r.problem(e.variable(), e.to_string());
            None
        }
    };
    // Production talks to Redis over TLS unless told, on purpose, that the network is private
    // (session data is encrypted, but the password and the user index are not).
    let allow_plaintext = r
        .one_of("REDIS_ALLOW_PLAINTEXT", &[("true", true), ("false", false)])
        .unwrap_or(false);
    if r.production
        && let Some(config) = &redis
        && !config.is_tls()
        && !allow_plaintext
    {
        let variable = if r.get("REDIS_URL").is_some() {
            "REDIS_URL"
        } else {
            "REDIS_SSL"
        };
        r.problem(
            variable,
            "is a plain-text (non-TLS) Redis connection, refused when ENVIRONMENT=production: \
             use rediss:// or REDIS_SSL=true, or set REDIS_ALLOW_PLAINTEXT=true for a Redis \
             reached over a private network"
                .to_owned(),
        );
    }
    if r.production && redis.is_none() && !r.mentions("REDIS") {
        r.problem(
            "REDIS_URL",
            "Redis is required when ENVIRONMENT=production: set REDIS_URL, REDIS_HOST or \
             REDIS_SENTINELS"
                .to_owned(),
        );
    }
    redis
}
