//! The sessions section: `SECRET_KEY`, `SESSION_EXPIRY_HOURS`, `SESSION_IDLE_MINUTES`,
//! `SESSION_COOKIE_NAME`, `COOKIE_SAMESITE`.

use std::fmt;

/// Minimum length of each `SECRET_KEY` entry, in bytes.
pub const MIN_SECRET_KEY_BYTES: usize = 32;

/// `COOKIE_SAMESITE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CookieSameSite {
    /// `SameSite=Lax` (the default).
    Lax,
    /// `SameSite=Strict`.
    Strict,
    /// `SameSite=None` (forces `Secure`); needed when the SPA and the API are on
    /// different sites.
    None,
}

/// The session signing/encryption keys (`SECRET_KEY`): the first signs, all verify.
///
/// `Debug` shows only how many keys there are.
#[derive(Clone)]
pub struct SecretKeys(pub(super) Vec<Vec<u8>>);

impl SecretKeys {
    /// The keys, the signing one first. Each is at least [`MIN_SECRET_KEY_BYTES`] long.
    pub fn keys(&self) -> Vec<&[u8]> {
        self.0.iter().map(Vec::as_slice).collect()
    }

    /// The signing key.
    pub fn primary(&self) -> &[u8] {
        &self.0[0]
    }

    /// A random key, for development.
    pub(super) fn random() -> Self {
        let mut key = vec![0u8; 48];
        // The OS random source failing is not recoverable at start-up; fall back to a
        // time- and address-derived value would be weaker, so report it loudly instead.
        getrandom::fill(&mut key).expect("the operating system's random source is unavailable");
        Self(vec![key])
    }
}

impl fmt::Debug for SecretKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKeys({} key(s), redacted)", self.0.len())
    }
}

/// RFC 6265 cookie-name (token) characters.
pub(super) fn is_cookie_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
