//! Keys: who a quota counts against.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use http::HeaderName;

use crate::net::TrustedProxies;

/// Text keys longer than this are replaced by a hash of their content.
const MAX_TEXT_KEY: usize = 128;

/// The identity a quota counts against: a client address, a session, a header value…
///
/// Keys end up in Redis key names and in debug logs, so they must not hold secrets: the
/// built-in extractors only produce addresses, hashes of header values and session *keys*
/// (themselves hashes). Build your own with [`LimitKey::new`] (verbatim text) or
/// [`LimitKey::hashed`] (a SHA-256 digest of a secret-ish value, e.g. an API key).
///
/// ```
/// use std::net::IpAddr;
/// use tower_rampart::rate_limit::LimitKey;
///
/// let a: IpAddr = "2001:db8:1:2::10".parse().unwrap();
/// let b: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
/// // One /64 is one client.
/// assert_eq!(LimitKey::ip_prefix(a, 64), LimitKey::ip_prefix(b, 64));
/// assert_eq!(LimitKey::ip_prefix(a, 64).to_string(), "ip:2001:db8:1:2::/64");
/// // IPv4-mapped addresses are the IPv4 client.
/// let mapped: IpAddr = "::ffff:203.0.113.7".parse().unwrap();
/// assert_eq!(LimitKey::ip(mapped).to_string(), "ip:203.0.113.7");
/// assert_eq!(LimitKey::hashed("key", b"secret").to_string().len(), 4 + 32);
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LimitKey(Repr);

#[derive(Clone, PartialEq, Eq)]
enum Repr {
    V4(Ipv4Addr),
    V6(Ipv6Addr, u8),
    Text(Arc<str>),
    Global,
}

impl Hash for Repr {
    // One or two writes per key (the derived impl makes four for an IPv4 address): the memory
    // backend hashes a key on every decision.
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            Repr::V4(ip) => state.write_u64((4 << 32) | u64::from(ip.to_bits())),
            Repr::V6(ip, p) => {
                state.write_u128(ip.to_bits());
                state.write_u8(*p);
            }
            Repr::Text(t) => {
                state.write(t.as_bytes());
                state.write_u8(0xff);
            }
            Repr::Global => state.write_u8(0),
        }
    }
}

impl LimitKey {
    /// A key made of `text` verbatim (texts longer than 128 bytes are replaced by
    /// `"#"` + a hash of them). Do not put secrets in it: see [`LimitKey::hashed`].
    pub fn new(text: impl Into<String>) -> Self {
        let text = text.into();
        if text.len() > MAX_TEXT_KEY {
            return Self::labelled(
                "#",
                "",
                &crate::digest::sha256_hex128_bytes(&[text.as_bytes()]),
            );
        }
        Self(Repr::Text(text.into()))
    }

    /// A key `"<label>:<32 hex digits>"` derived from `value` by SHA-256: safe to store and log
    /// even when `value` is a credential.
    pub fn hashed(label: &str, value: &[u8]) -> Self {
        Self::labelled(label, ":", &crate::digest::sha256_hex128_bytes(&[value]))
    }

    /// The text key `label`, `separator`, `tail`, assembled on the stack when it fits (every
    /// built-in key does), so that building it costs one allocation: the key's own.
    fn labelled(label: &str, separator: &str, tail: &[u8]) -> Self {
        let mut buf = [0u8; 64];
        let parts = [label.as_bytes(), separator.as_bytes(), tail];
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len <= buf.len() {
            let mut at = 0;
            for part in parts {
                buf[at..at + part.len()].copy_from_slice(part);
                at += part.len();
            }
            if let Ok(text) = std::str::from_utf8(&buf[..len]) {
                return Self(Repr::Text(Arc::from(text)));
            }
        }
        let mut text = String::with_capacity(len);
        for part in parts {
            text.push_str(&String::from_utf8_lossy(part));
        }
        Self(Repr::Text(text.into()))
    }

    /// One client address (IPv4-mapped IPv6 addresses become IPv4; IPv6 kept whole).
    pub fn ip(ip: IpAddr) -> Self {
        Self::ip_prefix(ip, 128)
    }

    /// A client address with IPv6 grouped by its first `v6_prefix` bits (`64` is the usual
    /// size of one subscriber's network). IPv4 addresses are kept whole. Prefixes above 128 are
    /// treated as 128.
    pub fn ip_prefix(ip: IpAddr, v6_prefix: u8) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self(Repr::V4(v4)),
            IpAddr::V6(v6) => {
                let p = v6_prefix.min(128);
                let mask = if p == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(p))
                };
                Self(Repr::V6(Ipv6Addr::from(u128::from(v6) & mask), p))
            }
        }
    }

    /// The single key shared by every request.
    pub fn global() -> Self {
        Self(Repr::Global)
    }
}

impl LimitKey {
    /// An exact 128-bit form of `(id, self)` for the keys that have one: IPv4, IPv6 grouped
    /// by at most 64 bits, global. The memory backend stores these in compact tables.
    pub(crate) fn compact(&self, id: u32) -> Option<[u64; 2]> {
        let head = |tag: u64, prefix: u8| (tag << 56) | (u64::from(prefix) << 48) | u64::from(id);
        match &self.0 {
            Repr::V4(ip) => Some([head(1, 32), u64::from(ip.to_bits())]),
            Repr::V6(ip, p) if *p <= 64 => Some([head(2, *p), (ip.to_bits() >> 64) as u64]),
            Repr::Global => Some([head(3, 0), 0]),
            Repr::V6(..) | Repr::Text(_) => None,
        }
    }

    /// Hashes `(id, self)` in as few writes as possible (one for an IPv4 address): the memory
    /// backend does it on every decision.
    pub(crate) fn hash_with_id<H: Hasher>(&self, id: u32, state: &mut H) {
        let wide_id = u128::from(id) << 64;
        match &self.0 {
            Repr::V4(ip) => state.write_u128(wide_id | (4 << 32) | u128::from(ip.to_bits())),
            Repr::V6(ip, p) => {
                state.write_u128(ip.to_bits());
                state.write_u128(wide_id | (6 << 32) | u128::from(*p));
            }
            Repr::Text(t) => Self::hash_text_with_id(t.as_bytes(), id, state),
            Repr::Global => state.write_u128(wide_id),
        }
    }

    /// What [`hash_with_id`](Self::hash_with_id) writes for a text key (the memory backend
    /// also hashes a copy of the text it holds).
    pub(crate) fn hash_text_with_id<H: Hasher>(text: &[u8], id: u32, state: &mut H) {
        state.write(text);
        state.write_u128((u128::from(id) << 64) | (1 << 32));
    }

    /// The text of a text key.
    pub(crate) fn text(&self) -> Option<&str> {
        match &self.0 {
            Repr::Text(t) => Some(t),
            _ => None,
        }
    }
}

impl LimitKey {
    /// Appends the key's text (what `Display` writes) to `out`: an IPv4 address, a text or the
    /// global key without the formatting machinery (the Redis backend names a key for every
    /// decision it sends).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn push_to(&self, out: &mut String) {
        match &self.0 {
            Repr::V4(ip) => {
                out.push_str("ip:");
                for (i, octet) in ip.octets().into_iter().enumerate() {
                    if i > 0 {
                        out.push('.');
                    }
                    if octet >= 100 {
                        out.push(char::from(b'0' + octet / 100));
                    }
                    if octet >= 10 {
                        out.push(char::from(b'0' + octet / 10 % 10));
                    }
                    out.push(char::from(b'0' + octet % 10));
                }
            }
            Repr::Text(t) => out.push_str(t),
            Repr::Global => out.push('*'),
            Repr::V6(..) => {
                use fmt::Write;
                let _ = write!(out, "{self}");
            }
        }
    }
}

impl fmt::Display for LimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::V4(ip) => write!(f, "ip:{ip}"),
            Repr::V6(ip, 128) => write!(f, "ip:{ip}"),
            Repr::V6(ip, p) => write!(f, "ip:{ip}/{p}"),
            Repr::Text(t) => f.write_str(t),
            Repr::Global => f.write_str("*"),
        }
    }
}

impl fmt::Debug for LimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LimitKey({self})")
    }
}

/// Computes the key of a request for one quota.
///
/// The extractor sees the request head (method, URI, headers, extensions) as an
/// `http::Request<()>`; the body is not available. Returning `None` means "no key": the
/// quota's [`MissingKey`](super::MissingKey) rule applies.
///
/// Any `Fn(&http::Request<()>) -> Option<LimitKey>` closure is an extractor;
/// [`Key::custom`] helps type inference:
///
/// ```
/// use tower_rampart::rate_limit::{Key, LimitKey};
///
/// // Per route: the first path segment.
/// let per_route = Key::custom(|req| {
///     let seg = req.uri().path().trim_start_matches('/').split('/').next()?;
///     Some(LimitKey::new(format!("route:{seg}")))
/// });
/// # let _ = per_route;
/// ```
pub trait KeyExtractor: Send + Sync + 'static {
    /// The key of this request, or `None` if it has none.
    fn extract(&self, req: &http::Request<()>) -> Option<LimitKey>;

    /// The key of this request, or why it has none. The layer calls this; the default is
    /// [`extract`](Self::extract) with [`NoKey::Absent`] for `None`. Override it when a
    /// missing key can mean that the server is set up wrong ([`NoKey::NoClientAddress`]).
    fn key(&self, req: &http::Request<()>) -> Result<LimitKey, NoKey> {
        self.extract(req).ok_or(NoKey::Absent)
    }

    /// Checks the extractor's configuration when the layer is built (default: fine).
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Why a request has no key for a quota (see [`KeyExtractor::key`]).
///
/// ```
/// use tower_rampart::net::TrustedProxies;
/// use tower_rampart::rate_limit::{Key, KeyExtractor, NoKey};
///
/// // A server that never recorded the TCP peer: the deployment's mistake, not the client's.
/// let key = Key::client_ip(TrustedProxies::none());
/// assert_eq!(key.key(&http::Request::new(())).unwrap_err(), NoKey::NoClientAddress);
/// // No API key: legitimately absent, the quota's `MissingKey` rule decides.
/// let key = Key::header("x-api-key");
/// assert_eq!(key.key(&http::Request::new(())).unwrap_err(), NoKey::Absent);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NoKey {
    /// The request has none (no session cookie yet, no API key header): the quota's
    /// [`MissingKey`](super::MissingKey) rule applies.
    Absent,
    /// The quota keys clients by address, but the server recorded no client address at all
    /// (axum served without `ConnectInfo`, tonic without the crate's `tonic` feature, a hyper
    /// accept loop that does not insert the peer). A deployment mistake: the layer logs the
    /// fix once and answers `500` (gRPC `INTERNAL`) whatever the `MissingKey` rule, since
    /// refusing would blame the client and skipping would disable the quota unnoticed.
    NoClientAddress,
    /// The client sent something unusable: a key header twice with different values, a
    /// forwarding chain (from a trusted proxy) whose client entry is not an address. Answered
    /// `400` (gRPC `INVALID_ARGUMENT`) whatever the `MissingKey` rule: skipping would let any
    /// client escape its quota by adding a second value, and keying it under anyone else
    /// (the proxy, the first value) would charge the wrong client.
    Unusable,
}

impl<F> KeyExtractor for F
where
    F: Fn(&http::Request<()>) -> Option<LimitKey> + Send + Sync + 'static,
{
    fn extract(&self, req: &http::Request<()>) -> Option<LimitKey> {
        self(req)
    }
}

/// Constructors of the built-in key extractors.
///
/// ```
/// use tower_rampart::net::TrustedProxies;
/// use tower_rampart::rate_limit::Key;
///
/// let behind_lb = Key::client_ip(TrustedProxies::parse("10.0.0.0/8").unwrap()).ipv6_prefix(56);
/// let direct = Key::peer_ip();
/// let per_tenant = Key::header("x-tenant-id");
/// let everyone = Key::global();
/// # let _ = (behind_lb, direct, per_tenant, everyone);
/// ```
#[derive(Debug)]
pub enum Key {}

impl Key {
    /// The client address as seen through `trusted` proxies ([`TrustedProxies::client_ip`]:
    /// the TCP peer, then `X-Forwarded-For` / `Forwarded` walked right to left while the hop is
    /// trusted; headers from untrusted peers are ignored). IPv6 clients are grouped by /64
    /// (see [`ClientIpKey::ipv6_prefix`]). No address (the server did not record the peer) is
    /// a missing key.
    pub fn client_ip(trusted: TrustedProxies) -> ClientIpKey {
        ClientIpKey {
            trusted,
            v6_prefix: 64,
        }
    }

    /// The TCP peer address, ignoring forwarding headers (a service reached directly).
    pub fn peer_ip() -> ClientIpKey {
        Self::client_ip(TrustedProxies::none())
    }

    /// The value of header `name`, hashed (SHA-256) so that credentials such as API keys never
    /// reach Redis or the logs. A request without the header has no key (the quota's
    /// `MissingKey` rule); one with it twice, with different values, is refused with `400`
    /// ([`NoKey::Unusable`]).
    pub fn header<N>(name: N) -> HeaderKey
    where
        N: TryInto<HeaderName>,
        N::Error: fmt::Display,
    {
        HeaderKey {
            name: name.try_into().map_err(|e| e.to_string()),
        }
    }

    /// One key for every request: a global quota.
    pub fn global() -> GlobalKey {
        GlobalKey
    }

    /// The signed session cookie's key, read by the session layer's own reader: one cookie
    /// verification, no store access. Requests without a valid session cookie have no key
    /// (pair it with [`MissingKey::Skip`](super::MissingKey::Skip) and a per-IP quota).
    #[cfg(feature = "session")]
    pub fn session(reader: crate::session::SessionCookieReader) -> SessionKeyExtractor {
        SessionKeyExtractor { reader }
    }

    /// The user of the session, from the [`UserTag`](crate::session::UserTag) its signed
    /// cookie carries: one cookie verification, no store access. Every session of a user
    /// shares one count, so signing in again (a fresh session) does not start a new one.
    ///
    /// The session layer must tag cookies
    /// ([`SessionConfigBuilder::user_tag`](crate::session::SessionConfigBuilder::user_tag)).
    /// Requests without a valid session cookie, and with a cookie that carries no tag (a
    /// session without a user, or one whose cookie was set before tagging was turned on and
    /// that was not saved since), have no key: the quota's [`MissingKey`](super::MissingKey)
    /// rule applies. [`Key::user_or_session`] counts those by session instead.
    ///
    /// The key is `u:` and a SHA-256 of the tag ([`LimitKey::hashed`]): neither the user id
    /// nor the tag leaves the process.
    ///
    /// ```
    /// use tower_rampart::rate_limit::{Key, Limit, MissingKey, Quota, RateLimitLayer};
    /// use tower_rampart::session::{MemoryStore, SessionConfig, SessionLayer};
    ///
    /// let config = SessionConfig::builder()
    ///     .key(b"a secret key of at least 32 bytes, from configuration")
    ///     .user_tag(true)
    ///     .build()
    ///     .unwrap();
    /// let sessions = SessionLayer::new(MemoryStore::new(), config);
    /// // The limiter goes outside the session layer: it never loads the session.
    /// let limits = RateLimitLayer::builder()
    ///     .limit(
    ///         Limit::new("user", Quota::per_minute(10), Key::user(sessions.cookie_reader()))
    ///             // Signed-out requests (and untagged cookies) are not counted here.
    ///             .on_missing_key(MissingKey::Skip),
    ///     )
    ///     .build()
    ///     .unwrap();
    /// let stack = tower::ServiceBuilder::new().layer(limits).layer(sessions);
    /// # let _ = stack;
    /// ```
    #[cfg(feature = "session")]
    pub fn user(reader: crate::session::SessionCookieReader) -> UserKeyExtractor {
        UserKeyExtractor {
            reader,
            or_session: false,
        }
    }

    /// [`Key::user`], falling back to the session's key ([`Key::session`], the same key and
    /// so the same count) when the valid cookie carries no user tag: a session without a
    /// user, or a cookie from before tagging was turned on. Only requests without a valid
    /// session cookie have no key. One cookie verification for both.
    ///
    /// A user without an id gets a fresh count with each new session, as with
    /// [`Key::session`]; pair it with a per-IP quota.
    ///
    /// ```
    /// use tower_rampart::rate_limit::{Key, KeyExtractor};
    /// use tower_rampart::session::SessionConfig;
    ///
    /// let config = SessionConfig::builder()
    ///     .key(b"a secret key of at least 32 bytes, from configuration")
    ///     .user_tag(true)
    ///     .build()
    ///     .unwrap();
    /// let key = Key::user_or_session(config.cookie_reader());
    /// // No cookie: no key, the quota's `MissingKey` rule applies.
    /// assert!(key.extract(&http::Request::new(())).is_none());
    /// ```
    #[cfg(feature = "session")]
    pub fn user_or_session(reader: crate::session::SessionCookieReader) -> UserKeyExtractor {
        UserKeyExtractor {
            reader,
            or_session: true,
        }
    }

    /// Any closure, typed for inference.
    pub fn custom<F>(f: F) -> F
    where
        F: Fn(&http::Request<()>) -> Option<LimitKey> + Send + Sync + 'static,
    {
        f
    }
}

/// Extractor of the client address (see [`Key::client_ip`]).
///
/// ```
/// use tower_rampart::net::{PeerAddr, TrustedProxies};
/// use tower_rampart::rate_limit::{Key, KeyExtractor, LimitKey};
///
/// let key = Key::client_ip(TrustedProxies::parse("10.0.0.0/8").unwrap());
/// let mut req = http::Request::builder()
///     .header("x-forwarded-for", "203.0.113.9")
///     .body(())
///     .unwrap();
/// req.extensions_mut().insert(PeerAddr("10.0.0.2:443".parse().unwrap()));
/// assert_eq!(key.extract(&req), Some(LimitKey::ip("203.0.113.9".parse().unwrap())));
/// ```
#[derive(Clone, Debug)]
pub struct ClientIpKey {
    trusted: TrustedProxies,
    v6_prefix: u16,
}

impl ClientIpKey {
    /// Groups IPv6 clients by their first `bits` bits (default 64; 128 = each address alone).
    /// Values above 128 are rejected when the layer is built.
    pub fn ipv6_prefix(mut self, bits: u16) -> Self {
        self.v6_prefix = bits;
        self
    }
}

impl KeyExtractor for ClientIpKey {
    fn extract(&self, req: &http::Request<()>) -> Option<LimitKey> {
        let ip = self.trusted.client_ip(req)?;
        Some(LimitKey::ip_prefix(
            ip,
            u8::try_from(self.v6_prefix).unwrap_or(128),
        ))
    }

    fn key(&self, req: &http::Request<()>) -> Result<LimitKey, NoKey> {
        match self.trusted.client_addr(req) {
            Ok(ip) => Ok(LimitKey::ip_prefix(
                ip,
                u8::try_from(self.v6_prefix).unwrap_or(128),
            )),
            Err(crate::net::ClientAddrError::NoPeer) => Err(NoKey::NoClientAddress),
            Err(_) => Err(NoKey::Unusable),
        }
    }

    fn validate(&self) -> Result<(), String> {
        if self.v6_prefix > 128 {
            return Err(format!(
                "IPv6 prefix /{} is longer than 128 bits",
                self.v6_prefix
            ));
        }
        Ok(())
    }
}

/// Extractor of a header value (see [`Key::header`]).
///
/// ```
/// use tower_rampart::rate_limit::{Key, KeyExtractor};
///
/// let key = Key::header("x-api-key");
/// let req = http::Request::builder().header("x-api-key", "k-123").body(()).unwrap();
/// let extracted = key.extract(&req).unwrap();
/// // Only a hash of the value is kept.
/// assert!(!extracted.to_string().contains("k-123"));
/// assert!(key.extract(&http::Request::new(())).is_none());
/// ```
#[derive(Clone, Debug)]
pub struct HeaderKey {
    name: Result<HeaderName, String>,
}

impl KeyExtractor for HeaderKey {
    fn extract(&self, req: &http::Request<()>) -> Option<LimitKey> {
        let name = self.name.as_ref().ok()?;
        let mut values = req.headers().get_all(name).iter();
        let first = values.next()?;
        if values.any(|v| v != first) {
            return None;
        }
        Some(LimitKey::hashed("h", first.as_bytes()))
    }

    fn key(&self, req: &http::Request<()>) -> Result<LimitKey, NoKey> {
        let name = self.name.as_ref().map_err(|_| NoKey::Absent)?;
        let mut values = req.headers().get_all(name).iter();
        let first = values.next().ok_or(NoKey::Absent)?;
        if values.any(|v| v != first) {
            return Err(NoKey::Unusable);
        }
        Ok(LimitKey::hashed("h", first.as_bytes()))
    }

    fn validate(&self) -> Result<(), String> {
        self.name
            .as_ref()
            .map(|_| ())
            .map_err(|e| format!("invalid header name: {e}"))
    }
}

/// Extractor of the global key (see [`Key::global`]).
///
/// ```
/// use tower_rampart::rate_limit::{Key, KeyExtractor, LimitKey};
///
/// assert_eq!(Key::global().extract(&http::Request::new(())), Some(LimitKey::global()));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct GlobalKey;

impl KeyExtractor for GlobalKey {
    fn extract(&self, _req: &http::Request<()>) -> Option<LimitKey> {
        Some(LimitKey::global())
    }
}

/// Extractor of the session key (see [`Key::session`]).
///
/// ```
/// use tower_rampart::rate_limit::{Key, KeyExtractor};
/// use tower_rampart::session::SessionConfig;
///
/// let config = SessionConfig::builder()
///     .key(b"a secret key of at least 32 bytes, from configuration")
///     .build()
///     .unwrap();
/// let key = Key::session(config.cookie_reader());
/// // No cookie, or a forged one: no key (and no store access either way).
/// assert!(key.extract(&http::Request::new(())).is_none());
/// let forged = http::Request::builder().header("cookie", "session=forged").body(()).unwrap();
/// assert!(key.extract(&forged).is_none());
/// ```
#[cfg(feature = "session")]
#[derive(Clone, Debug)]
pub struct SessionKeyExtractor {
    reader: crate::session::SessionCookieReader,
}

#[cfg(feature = "session")]
impl KeyExtractor for SessionKeyExtractor {
    fn extract(&self, req: &http::Request<()>) -> Option<LimitKey> {
        let key = self.reader.session_key(req.headers())?;
        Some(session_limit_key(&key))
    }
}

/// Extractor of the user key (see [`Key::user`] and [`Key::user_or_session`]).
///
/// ```
/// use tower_rampart::rate_limit::{Key, KeyExtractor};
/// use tower_rampart::session::SessionConfig;
///
/// let config = SessionConfig::builder()
///     .key(b"a secret key of at least 32 bytes, from configuration")
///     .user_tag(true)
///     .build()
///     .unwrap();
/// let key = Key::user(config.cookie_reader());
/// // No cookie, or a forged one: no key (and no store access either way).
/// assert!(key.extract(&http::Request::new(())).is_none());
/// let forged = http::Request::builder().header("cookie", "session=forged").body(()).unwrap();
/// assert!(key.extract(&forged).is_none());
/// ```
#[cfg(feature = "session")]
#[derive(Clone, Debug)]
pub struct UserKeyExtractor {
    reader: crate::session::SessionCookieReader,
    or_session: bool,
}

#[cfg(feature = "session")]
impl KeyExtractor for UserKeyExtractor {
    fn extract(&self, req: &http::Request<()>) -> Option<LimitKey> {
        let incoming = self.reader.read(req.headers())?;
        match incoming.user_tag {
            Some(tag) => Some(LimitKey::hashed("u", tag.as_bytes())),
            None if self.or_session => Some(session_limit_key(incoming.id.key())),
            None => None,
        }
    }
}

/// The key of a session's count: `s:` and its session key (already a hash of the id).
#[cfg(feature = "session")]
fn session_limit_key(key: &crate::session::SessionKey) -> LimitKey {
    LimitKey::labelled("s:", "", key.as_str().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_forms_are_exact() {
        let keys = [
            LimitKey::ip("192.0.2.1".parse().unwrap()),
            LimitKey::ip("192.0.2.2".parse().unwrap()),
            LimitKey::ip_prefix("2001:db8::1".parse().unwrap(), 64),
            LimitKey::ip_prefix("2001:db8::1".parse().unwrap(), 56),
            LimitKey::ip_prefix("2001:db8:0:1::1".parse().unwrap(), 64),
            LimitKey::ip_prefix("::c000:201".parse().unwrap(), 64),
            LimitKey::global(),
        ];
        for (i, a) in keys.iter().enumerate() {
            for (j, b) in keys.iter().enumerate() {
                assert_eq!(a.compact(7) == b.compact(7), i == j || a == b, "{a} {b}");
            }
            assert_ne!(a.compact(7), a.compact(8));
        }
        assert_eq!(
            LimitKey::ip("2001:db8::1".parse().unwrap()).compact(1),
            None
        );
        assert_eq!(LimitKey::new("x").compact(1), None);
    }

    #[test]
    fn push_to_writes_what_display_writes() {
        let mut keys: Vec<LimitKey> = [
            "0.0.0.0",
            "9.10.99.100",
            "192.0.2.1",
            "255.255.255.255",
            "10.0.100.7",
            "2001:db8::1",
            "::ffff:203.0.113.7",
        ]
        .iter()
        .map(|ip| LimitKey::ip(ip.parse().unwrap()))
        .collect();
        keys.push(LimitKey::ip_prefix("2001:db8:1:2::9".parse().unwrap(), 64));
        keys.push(LimitKey::new("user:42"));
        keys.push(LimitKey::hashed("h", b"secret"));
        keys.push(LimitKey::global());
        // Every IPv4 address whose octets take each length of digits, in each place.
        for a in [0u8, 7, 10, 99, 100, 255] {
            for b in [0u8, 42, 200] {
                keys.push(LimitKey::ip(std::net::Ipv4Addr::new(a, b, b, a).into()));
            }
        }
        for key in keys {
            let mut out = String::from("pre");
            key.push_to(&mut out);
            assert_eq!(out, format!("pre{key}"));
        }
    }

    #[test]
    fn ipv6_grouping_and_normalisation() {
        let a: IpAddr = "2001:db8:aa:bb:1::1".parse().unwrap();
        let b: IpAddr = "2001:db8:aa:bb:ffff:ffff:ffff:ffff".parse().unwrap();
        let c: IpAddr = "2001:db8:aa:bc::1".parse().unwrap();
        assert_eq!(LimitKey::ip_prefix(a, 64), LimitKey::ip_prefix(b, 64));
        assert_ne!(LimitKey::ip_prefix(a, 64), LimitKey::ip_prefix(c, 64));
        assert_eq!(LimitKey::ip_prefix(a, 56), LimitKey::ip_prefix(c, 56));
        assert_ne!(LimitKey::ip(a), LimitKey::ip(b));
        assert_eq!(LimitKey::ip_prefix(a, 0).to_string(), "ip:::/0");
        assert_eq!(LimitKey::ip(a).to_string(), "ip:2001:db8:aa:bb:1::1");
        let v4: IpAddr = "198.51.100.9".parse().unwrap();
        let mapped: IpAddr = "::ffff:198.51.100.9".parse().unwrap();
        assert_eq!(LimitKey::ip_prefix(mapped, 64), LimitKey::ip(v4));
    }

    #[test]
    fn text_keys_are_bounded_and_hashes_hide_values() {
        let long = "x".repeat(500);
        let k = LimitKey::new(long.clone()).to_string();
        assert!(k.starts_with('#') && k.len() == 33);
        assert_eq!(LimitKey::new(long.clone()), LimitKey::new(long));
        let h = LimitKey::hashed("h", b"sk_live_123").to_string();
        assert!(!h.contains("sk_live"));
        // SHA-256("abc") starts with ba7816bf8f01cfea414140de5dae2223.
        assert_eq!(
            LimitKey::hashed("t", b"abc").to_string(),
            "t:ba7816bf8f01cfea414140de5dae2223"
        );
        assert_eq!(LimitKey::global().to_string(), "*");
    }

    #[test]
    fn header_extractor() {
        let key = Key::header("x-api-key");
        assert!(key.validate().is_ok());
        let req = http::Request::builder()
            .header("x-api-key", "abc")
            .body(())
            .unwrap();
        assert_eq!(key.extract(&req), Some(LimitKey::hashed("h", b"abc")));
        let none = http::Request::new(());
        assert_eq!(key.extract(&none), None);
        let twice = http::Request::builder()
            .header("x-api-key", "abc")
            .header("x-api-key", "def")
            .body(())
            .unwrap();
        assert_eq!(key.extract(&twice), None, "ambiguous values are no key");
        assert!(Key::header("bad header").validate().is_err());
        assert!(Key::peer_ip().ipv6_prefix(129).validate().is_err());
        assert!(Key::peer_ip().ipv6_prefix(128).validate().is_ok());
    }
}
