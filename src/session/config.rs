//! [`SessionConfig`] and its builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use super::SameSite;
use super::cookie::{CookieCodec, SessionCookieReader};
use super::crypto::{DerivedKeys, random_bytes};
use crate::clock::{Clock, SystemClock, Throttle};
use crate::token::is_tchar;

/// Minimum length of a secret key, in bytes.
pub const MIN_KEY_LEN: usize = 32;

/// Longest session lifetime accepted: browsers cap cookie lifetimes at 400 days.
pub const MAX_LIFETIME: Duration = Duration::from_secs(400 * 24 * 60 * 60);

/// The default [record size limit](SessionConfigBuilder::max_record_bytes): 256 KiB.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 256 * 1024;
/// The smallest accepted [record size limit](SessionConfigBuilder::max_record_bytes).
pub const MIN_MAX_RECORD_BYTES: usize = 1024;
const DEFAULT_COOKIE_NAME: &str = "session";
const DEFAULT_IDLE: Duration = Duration::from_secs(60 * 60);
const DEFAULT_ABSOLUTE: Duration = Duration::from_secs(24 * 60 * 60);
const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(500);
const DEFAULT_UNAVAILABLE_BODY: &[u8] = br#"{"detail":"Session store unavailable"}"#;
/// At most one "store unavailable" warning per this interval.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Validated configuration of the session layer: secret keys, cookie attributes, expiry,
/// store timeout, encryption at rest. Cheap to clone.
///
/// Built with [`SessionConfig::builder`]; every setting has a secure default except the keys,
/// which must be given.
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::session::{SameSite, SessionConfig};
///
/// let config = SessionConfig::builder()
///     .key(b"the current key, at least 32 bytes long!")
///     .key(b"the previous key: still verifies cookies")
///     .cookie_name("app_session")
///     .same_site(SameSite::Strict)
///     .idle_timeout(Duration::from_secs(30 * 60))
///     .absolute_lifetime(Duration::from_secs(8 * 60 * 60))
///     .build()
///     .unwrap();
/// assert_eq!(config.idle_timeout(), Duration::from_secs(1800));
///
/// // Nonsense is rejected when the config is built, not per request.
/// assert!(SessionConfig::builder().key(b"too short").build().is_err());
/// ```
#[derive(Clone)]
pub struct SessionConfig {
    pub(crate) inner: Arc<ConfigInner>,
}

pub(crate) struct ConfigInner {
    pub(crate) codec: Arc<CookieCodec>,
    pub(crate) idle_timeout: Duration,
    pub(crate) absolute_lifetime: Duration,
    pub(crate) store_timeout: Duration,
    pub(crate) encrypt: bool,
    /// Records without a binding this version can check are no session.
    pub(crate) require_binding: bool,
    pub(crate) max_record_bytes: usize,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) unavailable_content_type: HeaderValue,
    pub(crate) unavailable_body: Arc<[u8]>,
    pub(crate) log_throttle: Throttle,
    /// The warning about conflicting session cookies (see `CookieCodec::read`).
    pub(crate) conflict_log_throttle: Throttle,
    #[cfg(feature = "opentelemetry")]
    pub(crate) metrics: super::metrics::SessionMetrics,
}

impl ConfigInner {
    pub(crate) fn now(&self) -> u64 {
        self.clock.now_micros()
    }

    /// The keys records are encrypted with (first) and decrypted with (all).
    pub(crate) fn keys(&self) -> &[DerivedKeys] {
        &self.codec.keys
    }
}

impl fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("SessionConfig")
            .field("cookie", &i.codec)
            .field("idle_timeout", &i.idle_timeout)
            .field("absolute_lifetime", &i.absolute_lifetime)
            .field("store_timeout", &i.store_timeout)
            .field("encrypt", &i.encrypt)
            .field("require_record_binding", &i.require_binding)
            .field("clock", &i.clock)
            .finish_non_exhaustive()
    }
}

impl SessionConfig {
    /// A builder with secure defaults: cookie `session`, `HttpOnly`, `Secure`, `SameSite=Lax`,
    /// `Path=/`, no `Domain`, idle timeout 1 hour, absolute lifetime 24 hours, store timeout
    /// 500 ms, records encrypted at rest, the system clock.
    pub fn builder() -> SessionConfigBuilder {
        SessionConfigBuilder::default()
    }

    /// A reader of this config's session cookie, for other layers (see [`SessionCookieReader`]).
    pub fn cookie_reader(&self) -> SessionCookieReader {
        SessionCookieReader {
            codec: self.inner.codec.clone(),
        }
    }

    /// The name of the session cookie.
    pub fn cookie_name(&self) -> &str {
        &self.inner.codec.name
    }

    /// How long a session lives without being used.
    pub fn idle_timeout(&self) -> Duration {
        self.inner.idle_timeout
    }

    /// How long a session lives at most after it was created, however busy.
    pub fn absolute_lifetime(&self) -> Duration {
        self.inner.absolute_lifetime
    }

    /// The deadline of each store call.
    pub fn store_timeout(&self) -> Duration {
        self.inner.store_timeout
    }

    /// Whether session data is encrypted at rest.
    pub fn encrypts_at_rest(&self) -> bool {
        self.inner.encrypt
    }

    /// The largest stored session data accepted on save, in bytes (see
    /// [`SessionConfigBuilder::max_record_bytes`]).
    pub fn max_record_bytes(&self) -> usize {
        self.inner.max_record_bytes
    }

    /// Whether the cookies of sessions with a user carry the user's tag (see
    /// [`SessionConfigBuilder::user_tag`]).
    pub fn tags_users(&self) -> bool {
        self.inner.codec.user_tag
    }

    /// Whether records without a binding of their user id and timestamps are refused (see
    /// [`SessionConfigBuilder::require_record_binding`]).
    pub fn requires_record_binding(&self) -> bool {
        self.inner.require_binding
    }
}

/// Builder of [`SessionConfig`]; see [`SessionConfig::builder`].
pub struct SessionConfigBuilder {
    keys: Vec<Vec<u8>>,
    random_key_failed: bool,
    cookie_name: String,
    path: String,
    domain: Option<String>,
    secure: bool,
    http_only: bool,
    same_site: SameSite,
    partitioned: bool,
    user_tag: bool,
    idle_timeout: Duration,
    absolute_lifetime: Duration,
    store_timeout: Duration,
    encrypt: bool,
    require_binding: bool,
    max_record_bytes: usize,
    clock: Arc<dyn Clock>,
    unavailable_content_type: String,
    unavailable_body: Vec<u8>,
    #[cfg(feature = "opentelemetry")]
    meter: Option<opentelemetry::metrics::Meter>,
}

impl Default for SessionConfigBuilder {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            random_key_failed: false,
            cookie_name: DEFAULT_COOKIE_NAME.into(),
            path: "/".into(),
            domain: None,
            secure: true,
            http_only: true,
            same_site: SameSite::Lax,
            partitioned: false,
            user_tag: false,
            idle_timeout: DEFAULT_IDLE,
            absolute_lifetime: DEFAULT_ABSOLUTE,
            store_timeout: DEFAULT_STORE_TIMEOUT,
            encrypt: true,
            require_binding: false,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            clock: Arc::new(SystemClock),
            unavailable_content_type: "application/json".into(),
            unavailable_body: DEFAULT_UNAVAILABLE_BODY.to_vec(),
            #[cfg(feature = "opentelemetry")]
            meter: None,
        }
    }
}

impl fmt::Debug for SessionConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionConfigBuilder")
            .field("keys", &self.keys.len())
            .field("cookie_name", &self.cookie_name)
            .field("path", &self.path)
            .field("domain", &self.domain)
            .field("secure", &self.secure)
            .field("http_only", &self.http_only)
            .field("same_site", &self.same_site)
            .field("partitioned", &self.partitioned)
            .field("user_tag", &self.user_tag)
            .field("idle_timeout", &self.idle_timeout)
            .field("absolute_lifetime", &self.absolute_lifetime)
            .field("store_timeout", &self.store_timeout)
            .field("encrypt", &self.encrypt)
            .field("require_record_binding", &self.require_binding)
            .field("max_record_bytes", &self.max_record_bytes)
            .finish_non_exhaustive()
    }
}

impl SessionConfigBuilder {
    /// Adds a secret key (at least 32 bytes, ideally random). The first key added signs new
    /// cookies and encrypts records; every key verifies cookies and decrypts records, so to
    /// rotate, put the new key first and keep the old one until its cookies have expired.
    pub fn key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.keys.push(key.as_ref().to_vec());
        self
    }

    /// Adds several keys, in order (see [`key`](Self::key)).
    pub fn keys<K: AsRef<[u8]>>(mut self, keys: impl IntoIterator<Item = K>) -> Self {
        self.keys
            .extend(keys.into_iter().map(|k| k.as_ref().to_vec()));
        self
    }

    /// Adds a fresh random key. Sessions then do not survive a restart and are not shared with
    /// other instances: for development and tests only.
    pub fn random_key(mut self) -> Self {
        let mut key = vec![0u8; 32];
        if random_bytes(&mut key).is_err() {
            self.random_key_failed = true;
        }
        self.keys.push(key);
        self
    }

    /// The cookie name (default `session`). A `__Host-` prefix makes browsers insist on
    /// `Secure`, `Path=/` and no `Domain`; the build checks those.
    pub fn cookie_name(mut self, name: impl Into<String>) -> Self {
        self.cookie_name = name.into();
        self
    }

    /// The cookie `Path` (default `/`).
    pub fn cookie_path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// The cookie `Domain` (default none: the cookie goes back to the exact host only, which
    /// is the safest choice). Setting it shares the session with every subdomain.
    pub fn cookie_domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    /// Whether the cookie is `Secure` (default `true`).
    ///
    /// **Warning**: `false` sends the session id over plain HTTP, where anyone on the path can
    /// read it. Only for local development without TLS.
    pub fn secure(mut self, secure: bool) -> Self {
        self.secure = secure;
        self
    }

    /// Whether the cookie is `HttpOnly` (default `true`).
    ///
    /// **Warning**: `false` lets scripts read the session cookie, so any XSS steals sessions.
    pub fn http_only(mut self, http_only: bool) -> Self {
        self.http_only = http_only;
        self
    }

    /// The cookie `SameSite` (default [`SameSite::Lax`]).
    ///
    /// **Warning**: [`SameSite::None`] sends the cookie on cross-site requests; it requires
    /// `Secure` (checked at build) and a CSRF defence such as an `Origin` check.
    pub fn same_site(mut self, same_site: SameSite) -> Self {
        self.same_site = same_site;
        self
    }

    /// Whether the cookie is `Partitioned` (default `false`): CHIPS, "Cookies Having
    /// Independent Partitioned State". Requires `Secure` (checked at build).
    ///
    /// A browser keeps a partitioned cookie set in a third-party context in a jar keyed by the
    /// top-level site, so an API on another site keeps its session when the browser blocks
    /// unpartitioned third-party cookies. Used with [`SameSite::None`] for an app on another
    /// site; the cookie that ends the session carries `Partitioned` too, since a removal
    /// without it does not reach the partitioned cookie.
    pub fn partitioned(mut self, partitioned: bool) -> Self {
        self.partitioned = partitioned;
        self
    }

    /// Whether the cookie of a session with a user carries the user's [`UserTag`](super::UserTag) (default
    /// `false`), so layers that must not read the store can tell the user: the rate
    /// limiter's [`Key::user`](crate::rate_limit::Key::user) counts a user's requests across
    /// all their sessions, a new sign-in included.
    ///
    /// The tag is an HMAC of the user id under a key derived from the first secret key,
    /// truncated to 16 bytes: opaque, and covered by the cookie's signature, so it cannot be
    /// forged or moved to another session. The cookie is sent again whenever a save finds
    /// its tag out of date: after [`set_user_id`](super::Session::set_user_id) or
    /// [`clear_user_id`](super::Session::clear_user_id) (no id cycling needed), and on the
    /// next save of a session whose cookie was set before this was turned on (until then it
    /// has no tag). Sessions without a user keep the untagged cookie.
    ///
    /// **Rolling deploys**: a tagged cookie is longer (86 characters instead of 64), and
    /// versions of this crate before the option existed reject it as malformed, which signs
    /// the user out on those instances. Deploy the new version everywhere first, then turn
    /// this on. Every version that has the option reads both forms, whatever its setting;
    /// turning it off again sends untagged cookies on the next save.
    pub fn user_tag(mut self, user_tag: bool) -> Self {
        self.user_tag = user_tag;
        self
    }

    /// How long a session lives without being used (default 1 hour). A session is refreshed
    /// only when a handler touches it.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// How long a session lives at most after it was created (default 24 hours, at most 400
    /// days); also the cookie's `Max-Age`.
    pub fn absolute_lifetime(mut self, lifetime: Duration) -> Self {
        self.absolute_lifetime = lifetime;
        self
    }

    /// The deadline of each store call (default 500 ms). A store that does not answer in time
    /// makes the request fail with `503`.
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.store_timeout = timeout;
        self
    }

    /// Whether session data is encrypted at rest with AES-256-GCM (default `true`). The user
    /// id (see [`Session::set_user_id`](super::Session::set_user_id)) and timestamps stay
    /// readable so stores can expire sessions and index them by user; they are bound to the
    /// record either way (see [`require_record_binding`](Self::require_record_binding)).
    pub fn encrypt_at_rest(mut self, encrypt: bool) -> Self {
        self.encrypt = encrypt;
        self
    }

    /// Whether a stored record whose user id and timestamps carry no binding this version can
    /// check is refused, as no session (default `false`: accepted).
    ///
    /// Every record this version writes carries a binding (the Redis field `b`): a MAC, under
    /// a key derived from the first secret key, of its store key, version, creation time,
    /// idle timeout, absolute deadline and user id. A record whose binding does not verify
    /// (someone who can write to the store changed `u`, `c`, `i` or `x`) is always no
    /// session, with a warning. The last access time is not covered: stores refresh it on
    /// their own, so someone who can write to the store can still keep a session from
    /// idling out, never past its absolute deadline.
    ///
    /// A record without a usable binding is accepted by default, because records written by
    /// earlier versions have none, and because an earlier version's save leaves the binding
    /// of the previous version in place (it is then ignored). Someone who can write to the
    /// store can make any record look like that (delete its binding) and then change its user
    /// id or deadline: **the binding protects only once this is on.** Turn it on when no
    /// instance of an earlier version writes to the store any more; records that none of the
    /// new instances has saved since (sessions only read since the upgrade) are then no
    /// session, so to sign no one out wait the absolute lifetime after the last earlier
    /// instance stopped. Turning it off again is always safe.
    ///
    /// Not covered: with encryption at rest off, the data itself (sealed on its own
    /// otherwise); the version (a counter for compare-and-set saves); and what a store reads
    /// on its own, without the layer: the times that [`Session::user_sessions`] lists and
    /// the owner that sign out everywhere checks come from the stored fields as they are (a
    /// changed record is still no session when its cookie comes back). A custom store must
    /// keep [`SessionRecord::binding`](super::SessionRecord::binding) with the record (the
    /// conformance suite checks it): with a store that drops it, every record is unbound.
    ///
    /// [`Session::user_sessions`]: super::Session::user_sessions
    ///
    /// ```
    /// use tower_rampart::session::{SessionConfig, SessionConfigError};
    ///
    /// let config = SessionConfig::builder()
    ///     .key(b"a secret key of at least 32 bytes, from configuration")
    ///     .require_record_binding(true)
    ///     .build()?;
    /// assert!(config.requires_record_binding());
    /// # Ok::<(), SessionConfigError>(())
    /// ```
    pub fn require_record_binding(mut self, require: bool) -> Self {
        self.require_binding = require;
        self
    }

    /// The largest session data a save may store, in bytes, as the store keeps it (the
    /// serialized values, plus 29 bytes of nonce, format and tag when encrypted at rest).
    /// Default 256 KiB ([`DEFAULT_MAX_RECORD_BYTES`]); at least [`MIN_MAX_RECORD_BYTES`].
    ///
    /// A session is never truncated: an [`insert`](super::Session::insert) that would make
    /// the data larger fails with [`SessionError::TooLarge`](super::SessionError::TooLarge)
    /// and changes nothing, so the handler can react; if the data still grows past the limit
    /// by the time it is saved (a concurrent request's changes merged in), the save is refused
    /// with the same error, logged, and the layer answers `500` without writing anything.
    ///
    /// ```
    /// use tower_rampart::session::{SessionConfig, SessionConfigError};
    ///
    /// let config = SessionConfig::builder()
    ///     .key(b"a secret key of at least 32 bytes, from configuration")
    ///     .max_record_bytes(64 * 1024)
    ///     .build()?;
    /// assert_eq!(config.max_record_bytes(), 65536);
    /// # Ok::<(), SessionConfigError>(())
    /// ```
    pub fn max_record_bytes(mut self, bytes: usize) -> Self {
        self.max_record_bytes = bytes;
        self
    }

    /// The clock used for expiry (default [`SystemClock`]); tests pass a
    /// [`ManualClock`](crate::clock::ManualClock).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The body (and its content type) of the `503` answered when the store is unavailable.
    /// Default: `application/json`, `{"detail":"Session store unavailable"}`.
    pub fn unavailable_response(
        mut self,
        content_type: impl Into<String>,
        body: impl Into<Vec<u8>>,
    ) -> Self {
        self.unavailable_content_type = content_type.into();
        self.unavailable_body = body.into();
        self
    }

    /// The meter of the session layer's metrics (`rampart.session.*`, see
    /// [`telemetry`](crate::telemetry)). Default: the global provider's, taken by
    /// [`build`](Self::build).
    #[cfg(feature = "opentelemetry")]
    #[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
    pub fn meter(mut self, meter: opentelemetry::metrics::Meter) -> Self {
        self.meter = Some(meter);
        self
    }

    /// Checks the settings and builds the config.
    pub fn build(self) -> Result<SessionConfig, SessionConfigError> {
        use SessionConfigError as E;
        if self.random_key_failed {
            return Err(E::RandomKeyFailed);
        }
        if self.keys.is_empty() {
            return Err(E::MissingKey);
        }
        if let Some(i) = self.keys.iter().position(|k| k.len() < MIN_KEY_LEN) {
            return Err(E::KeyTooShort {
                number: i + 1,
                len: self.keys[i].len(),
            });
        }
        if self.cookie_name.is_empty() || !self.cookie_name.bytes().all(is_tchar) {
            return Err(E::InvalidCookieName {
                name: self.cookie_name,
            });
        }
        if !self.path.starts_with('/') || !self.path.bytes().all(is_attribute_byte) {
            return Err(E::InvalidCookiePath { path: self.path });
        }
        if let Some(domain) = &self.domain {
            let valid = !domain.is_empty()
                && domain
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !valid {
                return Err(E::InvalidCookieDomain {
                    domain: domain.clone(),
                });
            }
        }
        if self.same_site == SameSite::None && !self.secure {
            return Err(E::SameSiteNoneWithoutSecure);
        }
        if self.partitioned && !self.secure {
            return Err(E::PartitionedWithoutSecure);
        }
        if self.cookie_name.starts_with("__Host-")
            && (!self.secure || self.path != "/" || self.domain.is_some())
        {
            return Err(E::HostPrefixRequirements);
        }
        if self.cookie_name.starts_with("__Secure-") && !self.secure {
            return Err(E::SecurePrefixWithoutSecure);
        }
        if self.idle_timeout < Duration::from_secs(1) {
            return Err(E::IdleTimeoutTooShort);
        }
        if self.absolute_lifetime > MAX_LIFETIME {
            return Err(E::AbsoluteLifetimeTooLong {
                lifetime: self.absolute_lifetime,
            });
        }
        if self.idle_timeout > self.absolute_lifetime {
            return Err(E::IdleTimeoutExceedsLifetime {
                idle_timeout: self.idle_timeout,
                absolute_lifetime: self.absolute_lifetime,
            });
        }
        if self.store_timeout.is_zero() {
            return Err(E::ZeroStoreTimeout);
        }
        if self.max_record_bytes < MIN_MAX_RECORD_BYTES {
            return Err(E::MaxRecordBytesTooSmall {
                bytes: self.max_record_bytes,
            });
        }
        let Ok(content_type) = HeaderValue::try_from(self.unavailable_content_type.as_str()) else {
            return Err(E::InvalidUnavailableContentType);
        };
        let codec = CookieCodec {
            keys: self.keys.iter().map(|k| DerivedKeys::derive(k)).collect(),
            name: self.cookie_name,
            path: self.path,
            domain: self.domain,
            secure: self.secure,
            http_only: self.http_only,
            same_site: self.same_site,
            partitioned: self.partitioned,
            user_tag: self.user_tag,
        };
        Ok(SessionConfig {
            inner: Arc::new(ConfigInner {
                codec: Arc::new(codec),
                idle_timeout: self.idle_timeout,
                absolute_lifetime: self.absolute_lifetime,
                store_timeout: self.store_timeout,
                encrypt: self.encrypt,
                require_binding: self.require_binding,
                max_record_bytes: self.max_record_bytes,
                clock: self.clock,
                unavailable_content_type: content_type,
                unavailable_body: self.unavailable_body.into(),
                log_throttle: Throttle::new(LOG_INTERVAL),
                conflict_log_throttle: Throttle::new(LOG_INTERVAL),
                #[cfg(feature = "opentelemetry")]
                metrics: super::metrics::SessionMetrics::new(
                    &self.meter.unwrap_or_else(crate::telemetry::global_meter),
                ),
            }),
        })
    }
}

/// Characters allowed in a cookie attribute value.
fn is_attribute_byte(b: u8) -> bool {
    (0x20..0x7f).contains(&b) && b != b';'
}

/// A [`SessionConfig`] that cannot work, rejected by [`SessionConfigBuilder::build`]: each
/// variant names the setting at fault (so a caller can point at the configuration value
/// behind it), and the message says what is wrong.
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::session::{SessionConfig, SessionConfigError};
///
/// let err = SessionConfig::builder()
///     .key(b"a secret key of at least 32 bytes, from configuration")
///     .idle_timeout(Duration::from_secs(7200))
///     .absolute_lifetime(Duration::from_secs(3600))
///     .build()
///     .unwrap_err();
/// assert!(matches!(err, SessionConfigError::IdleTimeoutExceedsLifetime { .. }));
/// assert_eq!(
///     err.to_string(),
///     "invalid session configuration: the idle timeout (7200s) must not exceed the absolute lifetime (3600s)"
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionConfigError {
    /// [`random_key`](SessionConfigBuilder::random_key): the operating system's random
    /// generator failed.
    RandomKeyFailed,
    /// No secret key was given ([`key`](SessionConfigBuilder::key)).
    MissingKey,
    /// A secret key is shorter than [`MIN_KEY_LEN`] bytes.
    KeyTooShort {
        /// Its position among the keys, counted from 1 in the order they were added.
        number: usize,
        /// Its length in bytes.
        len: usize,
    },
    /// The [cookie name](SessionConfigBuilder::cookie_name) is empty or holds a character
    /// that is not an HTTP token character.
    InvalidCookieName {
        /// The name as given.
        name: String,
    },
    /// The [cookie path](SessionConfigBuilder::cookie_path) does not start with `/`, or holds
    /// a `;` or a control character.
    InvalidCookiePath {
        /// The path as given.
        path: String,
    },
    /// The [cookie domain](SessionConfigBuilder::cookie_domain) is empty or holds a character
    /// other than letters, digits, `-` and `.`.
    InvalidCookieDomain {
        /// The domain as given.
        domain: String,
    },
    /// [`SameSite::None`] without [`secure`](SessionConfigBuilder::secure): browsers reject
    /// such cookies.
    SameSiteNoneWithoutSecure,
    /// [`partitioned`](SessionConfigBuilder::partitioned) without
    /// [`secure`](SessionConfigBuilder::secure): browsers reject such cookies.
    PartitionedWithoutSecure,
    /// A cookie name starting with `__Host-` without `Secure`, with a path other than `/`, or
    /// with a domain: browsers reject such cookies.
    HostPrefixRequirements,
    /// A cookie name starting with `__Secure-` without `Secure`: browsers reject such
    /// cookies.
    SecurePrefixWithoutSecure,
    /// The [idle timeout](SessionConfigBuilder::idle_timeout) is under one second.
    IdleTimeoutTooShort,
    /// The [absolute lifetime](SessionConfigBuilder::absolute_lifetime) exceeds
    /// [`MAX_LIFETIME`] (400 days, the longest cookie lifetime browsers keep).
    AbsoluteLifetimeTooLong {
        /// The lifetime as given.
        lifetime: Duration,
    },
    /// The idle timeout exceeds the absolute lifetime.
    IdleTimeoutExceedsLifetime {
        /// The idle timeout as given.
        idle_timeout: Duration,
        /// The absolute lifetime as given.
        absolute_lifetime: Duration,
    },
    /// The [store timeout](SessionConfigBuilder::store_timeout) is zero.
    ZeroStoreTimeout,
    /// The [record size limit](SessionConfigBuilder::max_record_bytes) is below
    /// [`MIN_MAX_RECORD_BYTES`].
    MaxRecordBytesTooSmall {
        /// The limit as given.
        bytes: usize,
    },
    /// The content type of the [unavailable
    /// response](SessionConfigBuilder::unavailable_response) is not a valid header value.
    InvalidUnavailableContentType,
}

impl fmt::Display for SessionConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid session configuration: ")?;
        match self {
            Self::RandomKeyFailed => f.write_str("the operating system's random generator failed"),
            Self::MissingKey => f.write_str("at least one secret key is required"),
            Self::KeyTooShort { number, len } => write!(
                f,
                "secret key #{number} is {len} bytes long; at least {MIN_KEY_LEN} bytes are required"
            ),
            Self::InvalidCookieName { name } => write!(
                f,
                "cookie name {name:?} is not a valid cookie name (token characters only)"
            ),
            Self::InvalidCookiePath { path } => write!(
                f,
                "cookie path {path:?} must start with '/' and contain no ';' or control characters"
            ),
            Self::InvalidCookieDomain { domain } => {
                write!(f, "cookie domain {domain:?} is not a valid domain")
            }
            Self::SameSiteNoneWithoutSecure => {
                f.write_str("SameSite=None requires Secure (browsers reject it otherwise)")
            }
            Self::PartitionedWithoutSecure => {
                f.write_str("Partitioned requires Secure (browsers reject it otherwise)")
            }
            Self::HostPrefixRequirements => {
                f.write_str("a __Host- cookie requires Secure, Path=/ and no Domain")
            }
            Self::SecurePrefixWithoutSecure => f.write_str("a __Secure- cookie requires Secure"),
            Self::IdleTimeoutTooShort => {
                f.write_str("the idle timeout must be at least one second")
            }
            Self::AbsoluteLifetimeTooLong { lifetime } => write!(
                f,
                "the absolute lifetime ({lifetime:?}) exceeds 400 days, the longest cookie lifetime browsers keep"
            ),
            Self::IdleTimeoutExceedsLifetime {
                idle_timeout,
                absolute_lifetime,
            } => write!(
                f,
                "the idle timeout ({idle_timeout:?}) must not exceed the absolute lifetime ({absolute_lifetime:?})"
            ),
            Self::ZeroStoreTimeout => f.write_str("the store timeout must be greater than zero"),
            Self::MaxRecordBytesTooSmall { bytes } => write!(
                f,
                "the session size limit ({bytes} bytes) must be at least {MIN_MAX_RECORD_BYTES} bytes"
            ),
            Self::InvalidUnavailableContentType => {
                f.write_str("the unavailable response's content type is not a valid header")
            }
        }
    }
}

impl std::error::Error for SessionConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn fails(b: SessionConfigBuilder, needle: &str) {
        let e = b.build().unwrap_err().to_string();
        assert!(e.contains(needle), "{e:?} should mention {needle:?}");
    }

    #[test]
    fn validation() {
        assert!(SessionConfig::builder().key(KEY).build().is_ok());
        fails(SessionConfig::builder(), "at least one secret key");
        fails(SessionConfig::builder().key(KEY).key([0u8; 31]), "key #2");
        fails(
            SessionConfig::builder().key(KEY).cookie_name("a b"),
            "cookie name",
        );
        fails(
            SessionConfig::builder().key(KEY).cookie_name(""),
            "cookie name",
        );
        fails(
            SessionConfig::builder().key(KEY).cookie_path("x"),
            "cookie path",
        );
        fails(
            SessionConfig::builder().key(KEY).cookie_path("/;x"),
            "cookie path",
        );
        fails(
            SessionConfig::builder().key(KEY).cookie_domain("a;b"),
            "cookie domain",
        );
        fails(
            SessionConfig::builder()
                .key(KEY)
                .same_site(SameSite::None)
                .secure(false),
            "SameSite=None requires Secure",
        );
        fails(
            SessionConfig::builder()
                .key(KEY)
                .cookie_name("__Host-s")
                .cookie_domain("example.com"),
            "__Host-",
        );
        fails(
            SessionConfig::builder()
                .key(KEY)
                .idle_timeout(Duration::from_secs(7200))
                .absolute_lifetime(Duration::from_secs(3600)),
            "must not exceed",
        );
        fails(
            SessionConfig::builder()
                .key(KEY)
                .absolute_lifetime(Duration::from_secs(401 * 86400)),
            "400 days",
        );
        fails(
            SessionConfig::builder()
                .key(KEY)
                .store_timeout(Duration::ZERO),
            "store timeout",
        );
    }

    /// Each refused setting gives its own variant, and the message the plain-string error
    /// gave before the variants existed, byte for byte.
    #[test]
    fn each_error_names_its_setting_with_the_same_message() {
        use SessionConfigError as E;
        let b = || SessionConfig::builder().key(KEY);
        let cases: Vec<(SessionConfigBuilder, E, &str)> = vec![
            (
                SessionConfig::builder(),
                E::MissingKey,
                "at least one secret key is required",
            ),
            (
                b().key([0u8; 31]),
                E::KeyTooShort { number: 2, len: 31 },
                "secret key #2 is 31 bytes long; at least 32 bytes are required",
            ),
            (
                b().cookie_name("a b"),
                E::InvalidCookieName { name: "a b".into() },
                r#"cookie name "a b" is not a valid cookie name (token characters only)"#,
            ),
            (
                b().cookie_path("x"),
                E::InvalidCookiePath { path: "x".into() },
                r#"cookie path "x" must start with '/' and contain no ';' or control characters"#,
            ),
            (
                b().cookie_domain("a;b"),
                E::InvalidCookieDomain {
                    domain: "a;b".into(),
                },
                r#"cookie domain "a;b" is not a valid domain"#,
            ),
            (
                b().same_site(SameSite::None).secure(false),
                E::SameSiteNoneWithoutSecure,
                "SameSite=None requires Secure (browsers reject it otherwise)",
            ),
            (
                b().partitioned(true).secure(false),
                E::PartitionedWithoutSecure,
                "Partitioned requires Secure (browsers reject it otherwise)",
            ),
            (
                b().same_site(SameSite::None)
                    .partitioned(true)
                    .secure(false),
                E::SameSiteNoneWithoutSecure,
                "SameSite=None requires Secure (browsers reject it otherwise)",
            ),
            (
                b().cookie_name("__Host-s").cookie_path("/app"),
                E::HostPrefixRequirements,
                "a __Host- cookie requires Secure, Path=/ and no Domain",
            ),
            (
                b().cookie_name("__Secure-s").secure(false),
                E::SecurePrefixWithoutSecure,
                "a __Secure- cookie requires Secure",
            ),
            (
                b().idle_timeout(Duration::from_millis(999)),
                E::IdleTimeoutTooShort,
                "the idle timeout must be at least one second",
            ),
            (
                b().absolute_lifetime(Duration::from_secs(401 * 86400)),
                E::AbsoluteLifetimeTooLong {
                    lifetime: Duration::from_secs(401 * 86400),
                },
                "the absolute lifetime (34646400s) exceeds 400 days, the longest cookie lifetime browsers keep",
            ),
            (
                b().idle_timeout(Duration::from_secs(7200))
                    .absolute_lifetime(Duration::from_secs(3600)),
                E::IdleTimeoutExceedsLifetime {
                    idle_timeout: Duration::from_secs(7200),
                    absolute_lifetime: Duration::from_secs(3600),
                },
                "the idle timeout (7200s) must not exceed the absolute lifetime (3600s)",
            ),
            (
                b().store_timeout(Duration::ZERO),
                E::ZeroStoreTimeout,
                "the store timeout must be greater than zero",
            ),
            (
                b().unavailable_response("text/plain\n", "down"),
                E::InvalidUnavailableContentType,
                "the unavailable response's content type is not a valid header",
            ),
        ];
        for (builder, variant, message) in cases {
            let e = builder.build().unwrap_err();
            assert_eq!(e, variant);
            assert_eq!(
                e.to_string(),
                format!("invalid session configuration: {message}")
            );
        }
        let e = E::RandomKeyFailed.to_string();
        assert_eq!(
            e,
            "invalid session configuration: the operating system's random generator failed"
        );
    }

    #[test]
    fn debug_hides_keys() {
        let c = SessionConfig::builder().key(KEY).build().unwrap();
        let text = format!("{c:?}");
        assert!(!text.contains("0123456789abcdef"));
        let b = SessionConfig::builder().key(KEY);
        assert!(!format!("{b:?}").contains("0123456789abcdef"));
    }
}
