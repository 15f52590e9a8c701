//! [`Expiry`]: per-session overrides of the layer's expiry settings.

use std::time::{Duration, SystemTime};

/// A per-session override of the layer's expiry settings, for
/// [`Session::set_expiry`](super::Session::set_expiry): e.g. a shorter idle timeout for an administrator, or an
/// absolute deadline tied to a token's expiry.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tower_rampart::session::Expiry;
///
/// let expiry = Expiry::new()
///     .idle_timeout(Duration::from_secs(15 * 60))
///     .expires_at(SystemTime::now() + Duration::from_secs(3600));
/// # let _ = expiry;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expiry {
    pub(super) idle: Option<Duration>,
    pub(super) end: Option<End>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum End {
    Lifetime(Duration),
    At(SystemTime),
}

impl Expiry {
    /// Keeps everything as it is; set parts with the other methods.
    pub fn new() -> Self {
        Self::default()
    }

    /// The idle timeout of this session (at least one second).
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle = Some(idle.max(Duration::from_secs(1)));
        self
    }

    /// The absolute lifetime of this session, counted from its creation. It may exceed the
    /// layer's (a "remember me" session), up to 400 days from now; the cookie's `Max-Age`
    /// follows it.
    pub fn absolute_lifetime(mut self, lifetime: Duration) -> Self {
        self.end = Some(End::Lifetime(lifetime));
        self
    }

    /// The absolute deadline of this session, e.g. the expiry of a token stored in it (at
    /// most 400 days from now). A deadline in the past ends the session.
    pub fn expires_at(mut self, at: SystemTime) -> Self {
        self.end = Some(End::At(at));
        self
    }

    pub(super) fn merge(self, newer: Expiry) -> Expiry {
        Expiry {
            idle: newer.idle.or(self.idle),
            end: newer.end.or(self.end),
        }
    }
}
