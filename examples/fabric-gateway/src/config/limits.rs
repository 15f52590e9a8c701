//! The rate-limit section: the quotas (`RATE_LIMIT_QUERY_IP`, `RATE_LIMIT_QUERY_SESSION`,
//! `RATE_LIMIT_LOGIN_IP`, `RATE_LIMIT_AUTH_IP`) and `RATE_LIMIT_FAILURE_MODE`.

use super::Reader;

const DEFAULT_QUOTA: &str = "10/minute";
const DEFAULT_LOGIN_QUOTA: &str = "5/minute";
const DEFAULT_AUTH_QUOTA: &str = "120/minute";

/// `RATE_LIMIT_FAILURE_MODE`: what the rate limiter does while Redis is unreachable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateLimitFailureMode {
    /// Per-instance limits (the default).
    Local,
    /// Admit everything.
    Open,
    /// Refuse everything limited.
    Closed,
}

/// What the rate-limit section reads. The quotas stay strings: the rate-limit layer parses
/// them when the service is built.
pub(super) struct Limits {
    pub(super) rate_limit_query_ip: String,
    pub(super) rate_limit_query_session: String,
    pub(super) rate_limit_login_ip: String,
    pub(super) rate_limit_auth_ip: String,
    pub(super) rate_limit_failure_mode: RateLimitFailureMode,
}

/// Reads the quotas (with their defaults) and `RATE_LIMIT_FAILURE_MODE`.
pub(super) fn read(r: &mut Reader<'_>) -> Limits {
    let rate_limit_query_ip = r
        .get("RATE_LIMIT_QUERY_IP")
        .unwrap_or_else(|| DEFAULT_QUOTA.to_owned());
    let rate_limit_query_session = r
        .get("RATE_LIMIT_QUERY_SESSION")
        .unwrap_or_else(|| DEFAULT_QUOTA.to_owned());
    let rate_limit_login_ip = r
        .get("RATE_LIMIT_LOGIN_IP")
        .unwrap_or_else(|| DEFAULT_LOGIN_QUOTA.to_owned());
    let rate_limit_auth_ip = r
        .get("RATE_LIMIT_AUTH_IP")
        .unwrap_or_else(|| DEFAULT_AUTH_QUOTA.to_owned());
    let rate_limit_failure_mode = r
        .one_of(
            "RATE_LIMIT_FAILURE_MODE",
            &[
                ("local", RateLimitFailureMode::Local),
                ("open", RateLimitFailureMode::Open),
                ("closed", RateLimitFailureMode::Closed),
            ],
        )
        .unwrap_or(RateLimitFailureMode::Local);

    Limits {
        rate_limit_query_ip,
        rate_limit_query_session,
        rate_limit_login_ip,
        rate_limit_auth_ip,
        rate_limit_failure_mode,
    }
}
