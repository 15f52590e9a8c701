//! The Redis section: `REDIS_URL` (one URL, or a comma-separated list of cluster seed
//! nodes), or `REDIS_HOST`, `REDIS_PORT`, `REDIS_PASSWORD`, `REDIS_SSL`; and `REDIS_CLUSTER`
//! (`auto`, `true`, `false`; default `auto`: decided on the first successful connection);
//! or Redis Sentinel: `REDIS_SENTINELS` (`host:port,...`), `REDIS_SENTINEL_MASTER`,
//! `REDIS_SENTINEL_PASSWORD` (the sentinels' own password; `REDIS_PASSWORD` stays the
//! data password, `REDIS_SSL` applies to both). All read by the crate's [`RedisConfig`]
//! (`REDIS_CLUSTER` becomes [`RedisConfig::cluster`], the Sentinel variables
//! [`RedisConfig::from_sentinels`]); required in production.

use tower_rampart::redis::RedisConfig;

use super::Reader;

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
