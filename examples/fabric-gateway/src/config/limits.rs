//! The rate-limit section: the quotas (`RATE_LIMIT_QUERY_IP`, `RATE_LIMIT_QUERY_USER`, the
//! deprecated `RATE_LIMIT_QUERY_SESSION`, `RATE_LIMIT_LOGIN_IP`, `RATE_LIMIT_AUTH_IP`) and
//! `RATE_LIMIT_FAILURE_MODE`.

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

/// Who the second quota of the query routes counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryQuotaKey {
    /// The signed-in user, across all their sessions (`RATE_LIMIT_QUERY_USER`; the
    /// default). A session whose cookie carries no user tag counts by session.
    User,
    /// The session (`RATE_LIMIT_QUERY_SESSION` set without `RATE_LIMIT_QUERY_USER`:
    /// deprecated, the quota of earlier versions, kept with a warning).
    Session,
}

/// What the rate-limit section reads. The quotas stay strings: the rate-limit layer parses
/// them when the service is built.
pub(super) struct Limits {
    pub(super) rate_limit_query_ip: String,
    pub(super) rate_limit_query_user: String,
    pub(super) rate_limit_query_session: String,
    pub(super) rate_limit_query_key: QueryQuotaKey,
    pub(super) rate_limit_login_ip: String,
    pub(super) rate_limit_auth_ip: String,
    pub(super) rate_limit_failure_mode: RateLimitFailureMode,
}

/// Reads the quotas (with their defaults) and `RATE_LIMIT_FAILURE_MODE`.
///
/// The query routes' second quota is per user (`RATE_LIMIT_QUERY_USER`), unless only the
/// deprecated `RATE_LIMIT_QUERY_SESSION` is set: then the per-session quota of earlier
/// versions stays, with a warning. With both set, `RATE_LIMIT_QUERY_USER` wins, with a
/// warning that the other is ignored.
pub(super) fn read(r: &mut Reader<'_>) -> Limits {
    let rate_limit_query_ip = r
        .get("RATE_LIMIT_QUERY_IP")
        .unwrap_or_else(|| DEFAULT_QUOTA.to_owned());
    let query_user = r.get("RATE_LIMIT_QUERY_USER");
    let query_session = r.get("RATE_LIMIT_QUERY_SESSION");
    let rate_limit_query_key = match (&query_user, &query_session) {
        (None, Some(_)) => {
            r.warn(
                "RATE_LIMIT_QUERY_SESSION is deprecated: set RATE_LIMIT_QUERY_USER instead (a \
                 per-user quota, kept across sign-ins); the per-session quota applies until then"
                    .to_owned(),
            );
            QueryQuotaKey::Session
        }
        (Some(_), Some(_)) => {
            r.warn(
                "RATE_LIMIT_QUERY_SESSION is ignored: RATE_LIMIT_QUERY_USER replaces it".to_owned(),
            );
            QueryQuotaKey::User
        }
        _ => QueryQuotaKey::User,
    };
    let rate_limit_query_user = query_user.unwrap_or_else(|| DEFAULT_QUOTA.to_owned());
    let rate_limit_query_session = query_session.unwrap_or_else(|| DEFAULT_QUOTA.to_owned());
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
        rate_limit_query_user,
        rate_limit_query_session,
        rate_limit_query_key,
        rate_limit_login_ip,
        rate_limit_auth_ip,
        rate_limit_failure_mode,
    }
}
