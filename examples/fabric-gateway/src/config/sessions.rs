//! The sessions section: `SECRET_KEY`, `SESSION_EXPIRY_HOURS`, `SESSION_IDLE_MINUTES`,
//! `SESSION_COOKIE_NAME`, `COOKIE_SAMESITE`, `COOKIE_PARTITIONED`, `SESSION_MAX_BYTES`.

use std::fmt;
use std::time::Duration;

use super::Reader;

/// Minimum length of each `SECRET_KEY` entry, in bytes.
pub const MIN_SECRET_KEY_BYTES: usize = 32;

/// `SESSION_MAX_BYTES` when unset: 256 KiB.
const DEFAULT_SESSION_MAX_BYTES: u64 = 256 * 1024;
/// The smallest `SESSION_MAX_BYTES` (the library's minimum).
const MIN_SESSION_MAX_BYTES: u64 = tower_rampart::session::MIN_MAX_RECORD_BYTES as u64;
/// The largest `SESSION_MAX_BYTES`: 64 MiB (Redis answers such writes slowly for everyone).
const MAX_SESSION_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// `COOKIE_SAMESITE`: the crate's one `SameSite` type (`Lax` by default; `None` forces
/// `Secure` and is needed when the SPA and the API are on different sites).
pub use tower_rampart::cookie_policy::SameSite as CookieSameSite;

/// The session signing/encryption keys (`SECRET_KEY`): the first signs, all verify.
///
/// `Debug` shows only how many keys there are.
#[derive(Clone)]
pub struct SecretKeys(Vec<Vec<u8>>);

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
    fn random() -> Self {
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
fn is_cookie_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// What the sessions section reads.
pub(super) struct Sessions {
    pub(super) secret_keys: SecretKeys,
    pub(super) secret_key_generated: bool,
    pub(super) session_expiry: Duration,
    pub(super) session_idle: Duration,
    pub(super) session_cookie_name: String,
    pub(super) cookie_samesite: CookieSameSite,
    pub(super) cookie_partitioned: bool,
    pub(super) session_max_bytes: usize,
    pub(super) session_require_record_binding: bool,
}

/// Reads `SECRET_KEY` (required in production, else a random key with a warning), the
/// lifetimes (the idle timeout may not exceed the absolute lifetime), the cookie's name,
/// `SameSite` and `Partitioned` (which needs `Secure` cookies: production or
/// `COOKIE_SAMESITE=none`).
pub(super) fn read(r: &mut Reader<'_>) -> Sessions {
    let (secret_keys, secret_key_generated) = match r.raw("SECRET_KEY") {
        Some(raw) if !raw.trim().is_empty() => {
            let mut keys = Vec::new();
            let mut ok = true;
            for (i, key) in raw.split(',').map(str::trim).enumerate() {
                if key.len() < MIN_SECRET_KEY_BYTES {
                    ok = false;
                    r.problem(
                        "SECRET_KEY",
                        format!(
                            "key #{} is {} bytes long; each key needs at least {} bytes",
                            i + 1,
                            key.len(),
                            MIN_SECRET_KEY_BYTES
                        ),
                    );
                }
                keys.push(key.as_bytes().to_vec());
            }
            if ok {
                (SecretKeys(keys), false)
            } else {
                (SecretKeys::random(), false)
            }
        }
        _ => {
            if r.production {
                r.problem(
                    "SECRET_KEY",
                    format!(
                        "is required when ENVIRONMENT=production (at least {MIN_SECRET_KEY_BYTES} bytes)"
                    ),
                );
            } else {
                r.warn(
                    "SECRET_KEY is not set: using a random key for this process; sessions \
                     end when it restarts and are not shared with other instances"
                        .to_owned(),
                );
            }
            (SecretKeys::random(), true)
        }
    };

    let session_expiry = r
        .positive_int("SESSION_EXPIRY_HOURS", 24, 24 * 366)
        .map(|h| Duration::from_secs(h * 3600));
    let session_idle = r
        .positive_int("SESSION_IDLE_MINUTES", 60, 60 * 24 * 366)
        .map(|m| Duration::from_secs(m * 60));

    if let (Some(idle), Some(expiry)) = (session_idle, session_expiry)
        && idle > expiry
    {
        r.problem(
            "SESSION_IDLE_MINUTES",
            format!(
                "the idle timeout ({} min) is longer than the absolute lifetime \
                 (SESSION_EXPIRY_HOURS = {} h)",
                idle.as_secs() / 60,
                expiry.as_secs() / 3600
            ),
        );
    }

    let session_cookie_name = match r.get("SESSION_COOKIE_NAME") {
        None => "fabric_session_id".to_owned(),
        Some(name) => {
            if !name.bytes().all(is_cookie_name_byte) {
                r.problem(
                    "SESSION_COOKIE_NAME",
                    format!("{name:?} is not a valid cookie name"),
                );
            }
            name
        }
    };

    let cookie_samesite = r
        .one_of(
            "COOKIE_SAMESITE",
            &[
                ("lax", CookieSameSite::Lax),
                ("strict", CookieSameSite::Strict),
                ("none", CookieSameSite::None),
            ],
        )
        .unwrap_or(CookieSameSite::Lax);

    // CHIPS: without `Partitioned`, browsers that block third-party cookies drop a
    // `SameSite=None` session cookie set for an app on another site.
    let same_site_none = cookie_samesite == CookieSameSite::None;
    let cookie_partitioned = r
        .one_of("COOKIE_PARTITIONED", &[("true", true), ("false", false)])
        .unwrap_or(same_site_none);
    // The same rule as the session cookie's `Secure` (see `app::secure_cookies`).
    if cookie_partitioned && !(r.production || same_site_none) {
        r.problem(
            "COOKIE_PARTITIONED",
            "true needs Secure cookies, which the gateway sets only with ENVIRONMENT=production \
             or COOKIE_SAMESITE=none (browsers reject Partitioned without Secure)"
                .to_owned(),
        );
    }

    // The stored (encrypted) size of a session's data; the library refuses less than 1 KiB.
    let session_max_bytes = r
        .positive_int(
            "SESSION_MAX_BYTES",
            DEFAULT_SESSION_MAX_BYTES,
            MAX_SESSION_MAX_BYTES,
        )
        .unwrap_or(DEFAULT_SESSION_MAX_BYTES);
    if session_max_bytes < MIN_SESSION_MAX_BYTES {
        r.problem(
            "SESSION_MAX_BYTES",
            format!("{session_max_bytes} is too small: at least {MIN_SESSION_MAX_BYTES} bytes"),
        );
    }

    // Refuse stored sessions without an integrity binding (written by versions before it):
    // once no earlier instance runs.
    let session_require_record_binding = r
        .one_of(
            "SESSION_REQUIRE_RECORD_BINDING",
            &[("true", true), ("false", false)],
        )
        .unwrap_or(false);

    Sessions {
        secret_keys,
        secret_key_generated,
        session_expiry: session_expiry.unwrap_or_default(),
        session_idle: session_idle.unwrap_or_default(),
        session_cookie_name,
        cookie_samesite,
        cookie_partitioned,
        session_max_bytes: usize::try_from(session_max_bytes).unwrap_or(usize::MAX),
        session_require_record_binding,
    }
}
