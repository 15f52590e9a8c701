//! [`RedisError`] and its classification.

use std::fmt;
use std::time::Duration;

use ::redis as driver;

/// What went wrong with a Redis call, coarse enough to choose a policy on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RedisErrorKind {
    /// The call did not finish within the command (or connect) timeout.
    Timeout,
    /// Redis cannot be reached: connection refused or lost, the circuit breaker is open,
    /// or the server is loading / read-only (failover in progress).
    Unavailable,
    /// The server refused the credentials (`WRONGPASS`, `NOAUTH`, `NOPERM`).
    Auth,
    /// The reply did not have the expected shape (a type conversion failed), or the
    /// protocol itself went wrong.
    Protocol,
    /// The server answered with an error to the command itself (`WRONGTYPE`, a script
    /// error, ...): the server is healthy, the request was wrong.
    Command,
    /// The configuration is unusable (for example an unreadable CA certificate).
    Config,
}

impl RedisErrorKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Unavailable => "unavailable",
            Self::Auth => "authentication failed",
            Self::Protocol => "protocol error",
            Self::Command => "command error",
            Self::Config => "invalid configuration",
        }
    }
}

impl fmt::Display for RedisErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error from [`RedisConnection`](super::RedisConnection).
///
/// `Display` and `Debug` never contain the password: messages from the driver are
/// sanitized (the password and any URL credentials are replaced by `***`).
#[derive(Clone)]
pub struct RedisError {
    kind: RedisErrorKind,
    message: String,
    code: Option<String>,
}

impl RedisError {
    pub(crate) fn new(kind: RedisErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            code: None,
        }
    }

    pub(crate) fn timeout(what: &str, after: Duration) -> Self {
        Self::new(
            RedisErrorKind::Timeout,
            format!("{what} timed out after {after:?}"),
        )
    }

    /// Classifies a driver error; `password` is scrubbed from its text.
    pub(crate) fn from_driver(err: &driver::RedisError, password: Option<&str>) -> Self {
        let kind = classify(err);
        Self {
            kind,
            message: sanitize(&err.to_string(), password),
            code: err.code().map(str::to_owned),
        }
    }

    pub(crate) fn with_kind(mut self, kind: RedisErrorKind) -> Self {
        self.kind = kind;
        self
    }

    /// Replaces `secret` (another password than the one of [`RedisError::from_driver`])
    /// in the message by `***`.
    pub(crate) fn scrub(mut self, secret: Option<&str>) -> Self {
        if let Some(secret) = secret.filter(|s| !s.is_empty()) {
            self.message = self.message.replace(secret, "***");
        }
        self
    }

    /// Prefixes the message with `context: `.
    pub(crate) fn context(mut self, context: &str) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// The class of the error.
    pub fn kind(&self) -> RedisErrorKind {
        self.kind
    }

    /// The error code of a server error reply (`"WRONGTYPE"`, `"NOSCRIPT"`, `"ERR"`, ...).
    pub fn server_code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// Whether it is a [`RedisErrorKind::Timeout`].
    pub fn is_timeout(&self) -> bool {
        self.kind == RedisErrorKind::Timeout
    }

    /// Whether Redis could not be used at all (timeout, unavailable, auth): the cases for
    /// which a caller falls back to its degraded policy.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self.kind,
            RedisErrorKind::Timeout | RedisErrorKind::Unavailable | RedisErrorKind::Auth
        )
    }
}

impl fmt::Display for RedisError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "redis {}: {}", self.kind, self.message)
    }
}

impl fmt::Debug for RedisError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisError")
            .field("kind", &self.kind)
            .field("code", &self.code)
            .field("message", &self.message)
            .finish()
    }
}

impl std::error::Error for RedisError {}

/// Maps the driver's error kinds onto ours.
pub(crate) fn classify(err: &driver::RedisError) -> RedisErrorKind {
    use driver::{ErrorKind as K, ServerErrorKind as S};
    if matches!(err.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM")) {
        return RedisErrorKind::Auth;
    }
    match err.kind() {
        K::AuthenticationFailed | K::Server(S::NoPerm) => RedisErrorKind::Auth,
        K::Io if err.is_timeout() => RedisErrorKind::Timeout,
        K::Io => RedisErrorKind::Unavailable,
        K::Server(S::BusyLoading | S::ReadOnly | S::MasterDown | S::ClusterDown | S::TryAgain) => {
            RedisErrorKind::Unavailable
        }
        K::Server(_) | K::Extension => RedisErrorKind::Command,
        K::InvalidClientConfig => RedisErrorKind::Config,
        K::Parse | K::UnexpectedReturnType | K::Client | K::RESP3NotSupported => {
            RedisErrorKind::Protocol
        }
        _ => RedisErrorKind::Unavailable,
    }
}

/// Removes secrets from a driver message: every occurrence of `password`, and the
/// credentials part of any `redis://user:pass@` / `rediss://` URL.
pub(crate) fn sanitize(message: &str, password: Option<&str>) -> String {
    let mut out = match password {
        Some(pw) if !pw.is_empty() => message.replace(pw, "***"),
        _ => message.to_owned(),
    };
    let mut search_from = 0;
    while let Some(found) = out[search_from..].find("://") {
        let start = search_from + found + 3;
        let rest = &out[start..];
        let end_of_authority = rest
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(rest.len());
        if let Some(at) = rest[..end_of_authority].rfind('@') {
            out.replace_range(start..start + at, "***");
            search_from = start + 3;
        } else {
            search_from = start;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_removes_password_and_url_credentials() {
        assert_eq!(
            sanitize("failed redis://user:hunter2@h:1/0 x", None),
            "failed redis://***@h:1/0 x"
        );
        assert_eq!(
            sanitize("a rediss://:pw@h and redis://:q@h2", None),
            "a rediss://***@h and redis://***@h2"
        );
        assert_eq!(
            sanitize("WRONGPASS hunter2 bad", Some("hunter2")),
            "WRONGPASS *** bad"
        );
        assert_eq!(sanitize("plain message", Some("")), "plain message");
        assert_eq!(sanitize("redis://h:1", None), "redis://h:1");
    }

    #[test]
    fn classify_maps_driver_kinds() {
        let io = driver::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        assert_eq!(classify(&io), RedisErrorKind::Unavailable);
        let timeout =
            driver::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "t"));
        assert_eq!(classify(&timeout), RedisErrorKind::Timeout);
        let auth = driver::RedisError::from((driver::ErrorKind::AuthenticationFailed, "no"));
        assert_eq!(classify(&auth), RedisErrorKind::Auth);
        let ty = driver::RedisError::from((driver::ErrorKind::UnexpectedReturnType, "type"));
        assert_eq!(classify(&ty), RedisErrorKind::Protocol);
    }

    #[test]
    fn display_and_debug_carry_the_kind() {
        let e = RedisError::timeout("GET", Duration::from_millis(5));
        assert!(e.is_timeout() && e.is_unavailable());
        assert_eq!(e.to_string(), "redis timeout: GET timed out after 5ms");
        assert!(format!("{e:?}").contains("Timeout"));
    }
}
