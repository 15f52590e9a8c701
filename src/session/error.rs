//! [`SessionError`] and [`ValueError`]: the errors of the [`Session`](super::Session) handle.

use std::fmt;

use super::store::StoreError;

/// Which session value could not be converted (its key), and nothing else: serde's own
/// messages quote the offending value, and sessions hold tokens, so neither the value nor
/// serde's error is kept, shown or offered as a source.
///
/// ```
/// use tower_rampart::session::{SessionError, ValueError};
///
/// let e = SessionError::Deserialize(ValueError::of("visits"));
/// assert_eq!(e.to_string(), r#"session value "visits" does not have the requested type"#);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ValueError {
    key: Option<String>,
}

impl ValueError {
    /// The error of the value under `key`.
    pub fn of(key: &str) -> Self {
        Self {
            key: Some(key.to_owned()),
        }
    }

    /// The key of the value, if the error concerns one value (not the whole record).
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }
}

/// Writes ` "key"` (with a leading space), or nothing for the whole record.
impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(k) => write!(f, " {k:?}"),
            None => Ok(()),
        }
    }
}

/// An error of a [`Session`](super::Session) method or of saving the session.
///
/// With the `axum` feature it is also a response: `503` for store failures,
/// `500` for data that cannot be (de)serialized. The layer answers a `5xx` response given
/// while the store was failing with its configured "unavailable" response.
#[derive(Debug)]
#[non_exhaustive]
pub enum SessionError {
    /// The store failed or did not answer in time.
    Store(StoreError),
    /// A value could not be serialized.
    Serialize(ValueError),
    /// A stored value does not deserialize into the requested type.
    Deserialize(ValueError),
    /// The operating system's random generator failed.
    Random,
    /// Concurrent requests kept changing this session; this request's changes were not saved.
    Contention,
    /// The session data would exceed the configured
    /// [size limit](super::SessionConfigBuilder::max_record_bytes): the change was refused
    /// (nothing is ever truncated). Answered `500` (a bug or abuse in the application's use of
    /// the session, not an outage).
    TooLarge {
        /// The stored size the data would have, in bytes.
        size: usize,
        /// The configured limit, in bytes.
        limit: usize,
    },
}

impl SessionError {
    /// Whether this error means the session service is unavailable (answer `503`), rather than
    /// a bug in the data (answer `500`).
    pub fn is_unavailable(&self) -> bool {
        !matches!(
            self,
            SessionError::Serialize(_)
                | SessionError::Deserialize(_)
                | SessionError::TooLarge { .. }
        )
    }
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Store(e) => e.fmt(f),
            SessionError::Serialize(e) => write!(f, "session value{e} cannot be serialized"),
            SessionError::Deserialize(e) => {
                write!(f, "session value{e} does not have the requested type")
            }
            SessionError::Random => f.write_str("the operating system's random generator failed"),
            SessionError::Contention => {
                f.write_str("the session was changed by too many concurrent requests")
            }
            SessionError::TooLarge { size, limit } => write!(
                f,
                "session data of {size} bytes exceeds the limit of {limit} bytes; nothing was saved"
            ),
        }
    }
}

impl std::error::Error for SessionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SessionError::Store(e) => Some(e),
            SessionError::Serialize(_) | SessionError::Deserialize(_) => None,
            _ => None,
        }
    }
}

impl From<StoreError> for SessionError {
    fn from(e: StoreError) -> Self {
        SessionError::Store(e)
    }
}
