//! The `SameSite` cookie attribute, shared by the session cookie and the cookie policy.

use std::fmt;

/// The `SameSite` attribute values, ordered from weakest to strongest. The default is
/// [`Lax`](SameSite::Lax).
///
/// One type serves the session cookie and the cookie policy's minimum: it is both
/// `tower_rampart::session::SameSite` and `tower_rampart::cookie_policy::SameSite`.
///
/// ```
/// use tower_rampart::cookie_policy::SameSite;
///
/// assert!(SameSite::None < SameSite::Lax && SameSite::Lax < SameSite::Strict);
/// assert_eq!(SameSite::default(), SameSite::Lax);
/// assert_eq!(SameSite::Strict.to_string(), "Strict");
/// // The session layer's setting is the same type.
/// let _: tower_rampart::session::SameSite = SameSite::Strict;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SameSite {
    /// Sent on every request, cross-site included. Browsers require `Secure` with it, and a
    /// CSRF defence (an `Origin` check) becomes the application's job.
    None,
    /// Sent on same-site requests and top-level cross-site navigations (following a link).
    /// The default.
    #[default]
    Lax,
    /// Sent on same-site requests only.
    Strict,
}

impl SameSite {
    /// The attribute value as written in a `Set-Cookie` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "None",
            Self::Lax => "Lax",
            Self::Strict => "Strict",
        }
    }
}

impl fmt::Display for SameSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
