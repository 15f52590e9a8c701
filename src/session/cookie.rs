//! The signed cookie form of session ids.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderValue;
use http::header::{COOKIE, InvalidHeaderValue};

use super::crypto::DerivedKeys;
use super::id::{ID_LEN, SessionId, SessionKey};
use crate::same_site::SameSite;

/// Bytes of the HMAC-SHA256 tag in the cookie.
const TAG_LEN: usize = 32;
/// Length of a well-formed cookie value: base64url (no padding) of `id || tag`.
const VALUE_LEN: usize = (ID_LEN + TAG_LEN) * 4 / 3;
/// Cookie values longer than this are rejected before any other work.
pub(crate) const MAX_COOKIE_VALUE_LEN: usize = 256;

/// Why a session cookie was ignored (logged at debug level, without the value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rejected {
    Duplicate,
    Oversized,
    Malformed,
    BadSignature,
}

impl Rejected {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Rejected::Duplicate => "more than one session cookie",
            Rejected::Oversized => "oversized session cookie",
            Rejected::Malformed => "malformed session cookie",
            Rejected::BadSignature => "session cookie with an invalid signature",
        }
    }
}

/// Everything needed to read and write the session cookie. Built once by the config.
pub(crate) struct CookieCodec {
    pub(crate) name: String,
    /// First signs, all verify.
    pub(crate) keys: Vec<DerivedKeys>,
    pub(crate) path: String,
    pub(crate) domain: Option<String>,
    pub(crate) secure: bool,
    pub(crate) http_only: bool,
    pub(crate) same_site: SameSite,
    pub(crate) partitioned: bool,
}

impl fmt::Debug for CookieCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CookieCodec")
            .field("name", &self.name)
            .field("keys", &self.keys.len())
            .field("path", &self.path)
            .field("domain", &self.domain)
            .field("secure", &self.secure)
            .field("http_only", &self.http_only)
            .field("same_site", &self.same_site)
            .field("partitioned", &self.partitioned)
            .finish()
    }
}

impl CookieCodec {
    /// The verified session id carried by the request's cookies, if exactly one well-formed,
    /// correctly signed session cookie is present. Does no allocation for requests without one.
    pub(crate) fn read(&self, headers: &http::HeaderMap) -> Result<Option<SessionId>, Rejected> {
        let mut found: Option<&[u8]> = None;
        for header in headers.get_all(COOKIE) {
            for pair in header.as_bytes().split(|&b| b == b';') {
                let pair = trim(pair);
                let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                    continue;
                };
                if trim(&pair[..eq]) != self.name.as_bytes() {
                    continue;
                }
                if found.is_some() {
                    return Err(Rejected::Duplicate);
                }
                found = Some(trim(&pair[eq + 1..]));
            }
        }
        let Some(value) = found else {
            return Ok(None);
        };
        if value.len() > MAX_COOKIE_VALUE_LEN {
            return Err(Rejected::Oversized);
        }
        if value.len() != VALUE_LEN {
            return Err(Rejected::Malformed);
        }
        let mut raw = [0u8; ID_LEN + TAG_LEN];
        match URL_SAFE_NO_PAD.decode_slice(value, &mut raw) {
            Ok(n) if n == raw.len() => {}
            _ => return Err(Rejected::Malformed),
        }
        let (id, tag) = raw.split_at(ID_LEN);
        if !self.keys.iter().any(|k| k.verify(&self.name, id, tag)) {
            return Err(Rejected::BadSignature);
        }
        let mut bytes = [0u8; ID_LEN];
        bytes.copy_from_slice(id);
        Ok(Some(SessionId::from_bytes(bytes)))
    }

    /// The cookie value for `id`, signed with the first key.
    fn value(&self, id: &SessionId) -> String {
        let tag = self.keys[0].sign(&self.name, &id.bytes);
        let mut raw = [0u8; ID_LEN + TAG_LEN];
        raw[..ID_LEN].copy_from_slice(&id.bytes);
        raw[ID_LEN..].copy_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(raw)
    }

    fn attributes(&self, out: &mut String) {
        out.push_str("; Path=");
        out.push_str(&self.path);
        if let Some(domain) = &self.domain {
            out.push_str("; Domain=");
            out.push_str(domain);
        }
        if self.http_only {
            out.push_str("; HttpOnly");
        }
        if self.secure {
            out.push_str("; Secure");
        }
        out.push_str("; SameSite=");
        out.push_str(self.same_site.as_str());
        if self.partitioned {
            out.push_str("; Partitioned");
        }
    }

    /// `Set-Cookie` carrying `id`, living `max_age_secs`.
    ///
    /// # Errors
    /// When the cookie is not a valid header value. `SessionConfig::build` validates the name
    /// and attributes and the value is base64url, so this only happens with a codec built
    /// around that validation; the layer then answers `500`.
    pub(crate) fn set_cookie(
        &self,
        id: &SessionId,
        max_age_secs: u64,
    ) -> Result<HeaderValue, InvalidHeaderValue> {
        let mut out = String::with_capacity(160);
        out.push_str(&self.name);
        out.push('=');
        out.push_str(&self.value(id));
        out.push_str("; Max-Age=");
        out.push_str(&max_age_secs.to_string());
        self.attributes(&mut out);
        HeaderValue::try_from(out)
    }

    /// `Set-Cookie` that removes the session cookie: same Path, Domain, Secure, SameSite and
    /// Partitioned as the cookie it replaces, otherwise browsers keep the old one (a removal
    /// without `Partitioned` does not reach a partitioned cookie).
    ///
    /// # Errors
    /// As `set_cookie`.
    pub(crate) fn removal_cookie(&self) -> Result<HeaderValue, InvalidHeaderValue> {
        let mut out = String::with_capacity(160);
        out.push_str(&self.name);
        out.push_str("=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT");
        self.attributes(&mut out);
        HeaderValue::try_from(out)
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end.max(start)]
}

/// Reads the session cookie without touching the store: verifies its signature and returns the
/// session's [`SessionKey`].
///
/// Other layers use it to key per-session state (the rate limiter's per-session quota) with
/// the same parsing and verification as the session layer itself. Get one from
/// [`SessionLayer::cookie_reader`](super::SessionLayer::cookie_reader) or
/// [`SessionConfig::cookie_reader`](super::SessionConfig::cookie_reader).
///
/// ```
/// use tower_rampart::session::SessionConfig;
///
/// let config = SessionConfig::builder()
///     .key(b"an example key that is at least 32 bytes long")
///     .build()
///     .unwrap();
/// let reader = config.cookie_reader();
///
/// let mut headers = http::HeaderMap::new();
/// assert!(reader.session_key(&headers).is_none());
/// headers.insert(http::header::COOKIE, "session=forged".parse().unwrap());
/// assert!(reader.session_key(&headers).is_none());
/// ```
#[derive(Clone, Debug)]
pub struct SessionCookieReader {
    pub(crate) codec: Arc<CookieCodec>,
}

impl SessionCookieReader {
    /// Verifies the signed session cookie (no store access) and returns its hash-derived key.
    ///
    /// `None` when there is no session cookie, or when it is malformed, oversized, duplicated
    /// or not signed by one of the configured keys. A `Some` key does not mean the session
    /// still exists in the store.
    pub fn session_key(&self, headers: &http::HeaderMap) -> Option<SessionKey> {
        self.codec
            .read(headers)
            .ok()
            .flatten()
            .map(|id| id.key().clone())
    }

    /// The name of the session cookie.
    pub fn cookie_name(&self) -> &str {
        &self.codec.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(keys: &[&[u8]]) -> CookieCodec {
        CookieCodec {
            name: "sid".into(),
            keys: keys.iter().map(|k| DerivedKeys::derive(k)).collect(),
            path: "/".into(),
            domain: None,
            secure: true,
            http_only: true,
            same_site: SameSite::Lax,
            partitioned: false,
        }
    }

    fn headers(cookies: &[&str]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for c in cookies {
            h.append(COOKIE, c.parse().unwrap());
        }
        h
    }

    fn value_of(set_cookie: &HeaderValue) -> String {
        let s = set_cookie.to_str().unwrap();
        s.split(';')
            .next()
            .unwrap()
            .split_once('=')
            .unwrap()
            .1
            .to_owned()
    }

    #[test]
    fn signed_cookie_round_trips_among_other_cookies() {
        let c = codec(&[&[1; 32]]);
        let id = SessionId::generate().unwrap();
        let v = value_of(&c.set_cookie(&id, 60).unwrap());
        assert_eq!(v.len(), VALUE_LEN);
        let h = headers(&[&format!("a=b; sid={v}; c=d")]);
        assert_eq!(c.read(&h).unwrap().unwrap(), id);
        let h = headers(&["a=b", &format!("sid={v}")]);
        assert_eq!(c.read(&h).unwrap().unwrap(), id);
    }

    #[test]
    fn rejects_bad_cookies() {
        let c = codec(&[&[1; 32]]);
        let id = SessionId::generate().unwrap();
        let v = value_of(&c.set_cookie(&id, 60).unwrap());
        assert_eq!(c.read(&headers(&[])), Ok(None));
        assert_eq!(c.read(&headers(&["other=1"])), Ok(None));
        assert_eq!(
            c.read(&headers(&[&format!("sid={v}; sid={v}")])),
            Err(Rejected::Duplicate)
        );
        assert_eq!(
            c.read(&headers(&[&format!("sid={v}"), &format!("sid={v}")])),
            Err(Rejected::Duplicate)
        );
        assert_eq!(
            c.read(&headers(&[&format!("sid={}", "A".repeat(300))])),
            Err(Rejected::Oversized)
        );
        assert_eq!(c.read(&headers(&["sid="])), Err(Rejected::Malformed));
        assert_eq!(
            c.read(&headers(&[&format!("sid=\"{}\"", &v[..VALUE_LEN - 2])])),
            Err(Rejected::Malformed)
        );
        let mut flipped = v.clone().into_bytes();
        flipped[3] = if flipped[3] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(
            c.read(&headers(&[&format!("sid={flipped}")])),
            Err(Rejected::BadSignature)
        );
        // An unsigned id (random bytes where the tag should be).
        let unsigned = URL_SAFE_NO_PAD.encode([9u8; ID_LEN + TAG_LEN]);
        assert_eq!(
            c.read(&headers(&[&format!("sid={unsigned}")])),
            Err(Rejected::BadSignature)
        );
        // Signed by a key that is not configured.
        let other = codec(&[&[2; 32]]);
        let foreign = value_of(&other.set_cookie(&id, 60).unwrap());
        assert_eq!(
            c.read(&headers(&[&format!("sid={foreign}")])),
            Err(Rejected::BadSignature)
        );
    }

    #[test]
    fn first_key_signs_all_keys_verify() {
        let old = codec(&[&[1; 32]]);
        let rotated = codec(&[&[2; 32], &[1; 32]]);
        let id = SessionId::generate().unwrap();
        let old_value = value_of(&old.set_cookie(&id, 60).unwrap());
        assert_eq!(
            rotated
                .read(&headers(&[&format!("sid={old_value}")]))
                .unwrap()
                .unwrap(),
            id
        );
        let new_value = value_of(&rotated.set_cookie(&id, 60).unwrap());
        assert_ne!(new_value, old_value);
        assert_eq!(
            old.read(&headers(&[&format!("sid={new_value}")])),
            Err(Rejected::BadSignature)
        );
    }

    #[test]
    fn cookie_attributes() {
        let mut c = codec(&[&[1; 32]]);
        c.domain = Some("example.com".into());
        let id = SessionId::generate().unwrap();
        let set = c.set_cookie(&id, 3600).unwrap();
        let s = set.to_str().unwrap();
        assert!(s.starts_with("sid="));
        assert!(s.ends_with(
            "; Max-Age=3600; Path=/; Domain=example.com; HttpOnly; Secure; SameSite=Lax"
        ));
        let del = c.removal_cookie().unwrap();
        assert_eq!(
            del.to_str().unwrap(),
            "sid=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/; Domain=example.com; HttpOnly; Secure; SameSite=Lax"
        );
    }

    #[test]
    fn partitioned_is_on_the_cookie_and_on_its_removal() {
        let mut c = codec(&[&[1; 32]]);
        c.same_site = SameSite::None;
        c.partitioned = true;
        let id = SessionId::generate().unwrap();
        let set = c.set_cookie(&id, 60).unwrap();
        assert!(
            set.to_str()
                .unwrap()
                .ends_with("; Max-Age=60; Path=/; HttpOnly; Secure; SameSite=None; Partitioned")
        );
        assert_eq!(
            c.removal_cookie().unwrap().to_str().unwrap(),
            "sid=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/; HttpOnly; Secure; SameSite=None; Partitioned"
        );
    }

    #[test]
    fn a_cookie_that_cannot_be_a_header_is_an_error_not_an_empty_header() {
        // Unreachable through `SessionConfig::build`, which validates these attributes.
        let mut c = codec(&[&[1; 32]]);
        c.path = "/a\nb".into();
        let id = SessionId::generate().unwrap();
        assert!(c.set_cookie(&id, 60).is_err());
        assert!(c.removal_cookie().is_err());
        // A DEL character is refused as well, not replaced by an empty header.
        c.path = "/\u{7f}".into();
        assert!(c.set_cookie(&id, 60).is_err());
        assert!(c.removal_cookie().is_err());
    }
}
