//! The rate-limit section: the quotas (`RATE_LIMIT_QUERY_IP`, `RATE_LIMIT_QUERY_SESSION`,
//! `RATE_LIMIT_LOGIN_IP`) and `RATE_LIMIT_FAILURE_MODE`.

pub(super) const DEFAULT_QUOTA: &str = "10/minute";
pub(super) const DEFAULT_LOGIN_QUOTA: &str = "5/minute";

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
