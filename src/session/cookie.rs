//! The signed cookie form of session ids.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderValue;
use http::header::{COOKIE, InvalidHeaderValue};

use super::crypto::{DerivedKeys, USER_TAG_LEN};
use super::id::{ID_LEN, SessionId, SessionKey};
use crate::same_site::SameSite;

/// Bytes of the HMAC-SHA256 tag in the cookie.
const TAG_LEN: usize = 32;
/// Length of a well-formed cookie value: base64url (no padding) of `id || tag`.
const VALUE_LEN: usize = (ID_LEN + TAG_LEN) * 4 / 3;
/// Length of a well-formed cookie value carrying a user tag: base64url (no padding) of
/// `id || user tag || tag`, the tag signing `id || user tag` with its own derived key.
const TAGGED_VALUE_LEN: usize = ((ID_LEN + USER_TAG_LEN + TAG_LEN) * 4).div_ceil(3);
/// Cookie values longer than this are rejected before any other work.
pub(crate) const MAX_COOKIE_VALUE_LEN: usize = 256;

/// Why a session cookie was ignored (logged without the value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rejected {
    /// Several valid cookies of different sessions (logged at warn level, throttled).
    Conflict,
    Oversized,
    Malformed,
    BadSignature,
}

impl Rejected {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Rejected::Conflict => "several valid session cookies that differ (a planted cookie?)",
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
    /// Cookies of sessions with a user carry the user's tag
    /// ([`SessionConfigBuilder::user_tag`](super::SessionConfigBuilder::user_tag)). Both forms
    /// are read whatever this says.
    pub(crate) user_tag: bool,
}

/// An opaque, stable tag of a session's user, carried by its signed cookie when
/// [`SessionConfigBuilder::user_tag`](super::SessionConfigBuilder::user_tag) is on: the first
/// 16 bytes of an HMAC-SHA256 of the user id under a key derived from the session secret.
///
/// The user id cannot be recovered from it and it cannot be forged (the cookie's signature
/// covers it). It identifies the user to layers that must not read the store, such as the
/// rate limiter's [`Key::user`](crate::rate_limit::Key::user), which hashes it again before
/// it leaves the process. Get it from [`SessionCookieReader::user_tag`]. `Debug` does not show
/// it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserTag(pub(crate) [u8; USER_TAG_LEN]);

impl UserTag {
    /// The tag's 16 bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for UserTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UserTag(<redacted>)")
    }
}

/// What a valid session cookie carries.
#[derive(Debug, PartialEq)]
pub(crate) struct Incoming {
    pub(crate) id: SessionId,
    pub(crate) user_tag: Option<UserTag>,
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
            .field("user_tag", &self.user_tag)
            .finish()
    }
}

impl CookieCodec {
    /// The verified session id (and user tag, if the cookie carries one) of the request's
    /// session cookie. Both cookie forms are read, whatever [`user_tag`](Self::user_tag) says.
    /// Does no allocation.
    ///
    /// Every cookie of the name is tried, so that a cookie planted beside the real one (cookie
    /// tossing from a sibling subdomain, with another Domain or Path) cannot keep the user
    /// signed out: cookies that do not verify (malformed, oversized, wrongly signed) are
    /// ignored, and copies of the same session are one cookie. Exactly one valid session: its
    /// id. Several valid and different ones: [`Rejected::Conflict`], no session, since
    /// picking one could sign the user into a session the planter chose. No valid one: the
    /// first cookie's rejection (so that a logout still removes it), or `Ok(None)` without any
    /// cookie of the name.
    pub(crate) fn read(&self, headers: &http::HeaderMap) -> Result<Option<Incoming>, Rejected> {
        let mut chosen: Option<(&[u8], Incoming)> = None;
        let mut rejected = None;
        let mut conflict = false;
        for header in headers.get_all(COOKIE) {
            for pair in header.as_bytes().split(|&b| b == b';') {
                let pair = trim(pair);
                let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                    continue;
                };
                if trim(&pair[..eq]) != self.name.as_bytes() {
                    continue;
                }
                let value = trim(&pair[eq + 1..]);
                if chosen.as_ref().is_some_and(|(v, _)| *v == value) {
                    // An identical copy: nothing to verify again.
                    continue;
                }
                match self.verify(value) {
                    Ok(incoming) => match &chosen {
                        None => chosen = Some((value, incoming)),
                        Some((_, first)) if *first == incoming => {}
                        Some(_) => conflict = true,
                    },
                    Err(reason) => {
                        rejected.get_or_insert(reason);
                    }
                }
            }
        }
        if conflict {
            return Err(Rejected::Conflict);
        }
        match (chosen, rejected) {
            (Some((_, incoming)), _) => Ok(Some(incoming)),
            (None, Some(reason)) => Err(reason),
            (None, None) => Ok(None),
        }
    }

    /// Verifies one cookie value.
    fn verify(&self, value: &[u8]) -> Result<Incoming, Rejected> {
        if value.len() > MAX_COOKIE_VALUE_LEN {
            return Err(Rejected::Oversized);
        }
        let tagged = match value.len() {
            VALUE_LEN => false,
            TAGGED_VALUE_LEN => true,
            _ => return Err(Rejected::Malformed),
        };
        let mut raw = [0u8; ID_LEN + USER_TAG_LEN + TAG_LEN];
        let len = if tagged { raw.len() } else { ID_LEN + TAG_LEN };
        match URL_SAFE_NO_PAD.decode_slice(value, &mut raw) {
            Ok(n) if n == len => {}
            _ => return Err(Rejected::Malformed),
        }
        let (id, rest) = raw[..len].split_at(ID_LEN);
        let user_tag = if tagged {
            let (user, tag) = rest.split_at(USER_TAG_LEN);
            if !self
                .keys
                .iter()
                .any(|k| k.verify_tagged(&self.name, id, user, tag))
            {
                return Err(Rejected::BadSignature);
            }
            let mut bytes = [0u8; USER_TAG_LEN];
            bytes.copy_from_slice(user);
            Some(UserTag(bytes))
        } else {
            if !self.keys.iter().any(|k| k.verify(&self.name, id, rest)) {
                return Err(Rejected::BadSignature);
            }
            None
        };
        let mut bytes = [0u8; ID_LEN];
        bytes.copy_from_slice(id);
        Ok(Incoming {
            id: SessionId::from_bytes(bytes),
            user_tag,
        })
    }

    /// The user tag a cookie of a session belonging to `user` carries: `None` without a user
    /// or when [`user_tag`](Self::user_tag) is off. Computed with the first key.
    pub(crate) fn user_tag_for(&self, user: Option<&str>) -> Option<UserTag> {
        user.filter(|_| self.user_tag)
            .map(|user| UserTag(self.keys[0].user_tag(user)))
    }

    /// The cookie value for `id` (and `user_tag`), signed with the first key.
    fn value(&self, id: &SessionId, user_tag: Option<&UserTag>) -> String {
        let Some(user) = user_tag else {
            let tag = self.keys[0].sign(&self.name, &id.bytes);
            let mut raw = [0u8; ID_LEN + TAG_LEN];
            raw[..ID_LEN].copy_from_slice(&id.bytes);
            raw[ID_LEN..].copy_from_slice(&tag);
            return URL_SAFE_NO_PAD.encode(raw);
        };
        let tag = self.keys[0].sign_tagged(&self.name, &id.bytes, &user.0);
        let mut raw = [0u8; ID_LEN + USER_TAG_LEN + TAG_LEN];
        raw[..ID_LEN].copy_from_slice(&id.bytes);
        raw[ID_LEN..ID_LEN + USER_TAG_LEN].copy_from_slice(&user.0);
        raw[ID_LEN + USER_TAG_LEN..].copy_from_slice(&tag);
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

    /// `Set-Cookie` carrying `id` (and `user_tag`), living `max_age_secs`.
    ///
    /// # Errors
    /// When the cookie is not a valid header value. `SessionConfig::build` validates the name
    /// and attributes and the value is base64url, so this only happens with a codec built
    /// around that validation; the layer then answers `500`.
    pub(crate) fn set_cookie(
        &self,
        id: &SessionId,
        user_tag: Option<&UserTag>,
        max_age_secs: u64,
    ) -> Result<HeaderValue, InvalidHeaderValue> {
        let mut out = String::with_capacity(192);
        out.push_str(&self.name);
        out.push('=');
        out.push_str(&self.value(id, user_tag));
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
    /// `None` when there is no session cookie, when it is malformed, oversized or not signed
    /// by one of the configured keys, and when several valid cookies of different sessions are
    /// present. Picks the same cookie as the session layer: cookies of the name that do not
    /// verify are ignored. A `Some` key does not mean the session
    /// still exists in the store.
    pub fn session_key(&self, headers: &http::HeaderMap) -> Option<SessionKey> {
        self.read(headers).map(|incoming| incoming.id.key().clone())
    }

    /// Verifies the signed session cookie (no store access) and returns the [`UserTag`] it
    /// carries.
    ///
    /// `None` when there is no valid session cookie (as for
    /// [`session_key`](Self::session_key)), and when the cookie carries no tag: the session
    /// has no user, [`SessionConfigBuilder::user_tag`](super::SessionConfigBuilder::user_tag)
    /// is off, or the cookie was set before it was turned on and the session was not saved
    /// since. Like the session key, a tag does not mean the session still exists.
    ///
    /// ```
    /// use tower_rampart::session::SessionConfig;
    ///
    /// let config = SessionConfig::builder()
    ///     .key(b"an example key that is at least 32 bytes long")
    ///     .user_tag(true)
    ///     .build()
    ///     .unwrap();
    /// let reader = config.cookie_reader();
    /// let mut headers = http::HeaderMap::new();
    /// assert!(reader.user_tag(&headers).is_none());
    /// headers.insert(http::header::COOKIE, "session=forged".parse().unwrap());
    /// assert!(reader.user_tag(&headers).is_none());
    /// ```
    pub fn user_tag(&self, headers: &http::HeaderMap) -> Option<UserTag> {
        self.read(headers).and_then(|incoming| incoming.user_tag)
    }

    /// The verified cookie's id and user tag; `None` when there is no valid one.
    pub(crate) fn read(&self, headers: &http::HeaderMap) -> Option<Incoming> {
        self.codec.read(headers).ok().flatten()
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
            user_tag: false,
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
        let v = value_of(&c.set_cookie(&id, None, 60).unwrap());
        assert_eq!(v.len(), VALUE_LEN);
        let h = headers(&[&format!("a=b; sid={v}; c=d")]);
        assert_eq!(c.read(&h).unwrap().unwrap().id, id);
        let h = headers(&["a=b", &format!("sid={v}")]);
        assert_eq!(c.read(&h).unwrap().unwrap().id, id);
    }

    #[test]
    fn rejects_bad_cookies() {
        let c = codec(&[&[1; 32]]);
        let id = SessionId::generate().unwrap();
        let v = value_of(&c.set_cookie(&id, None, 60).unwrap());
        assert_eq!(c.read(&headers(&[])), Ok(None));
        assert_eq!(c.read(&headers(&["other=1"])), Ok(None));
        // Identical copies are one cookie.
        assert_eq!(
            c.read(&headers(&[&format!("sid={v}; sid={v}")]))
                .unwrap()
                .unwrap()
                .id,
            id
        );
        assert_eq!(
            c.read(&headers(&[&format!("sid={v}"), &format!("sid={v}")]))
                .unwrap()
                .unwrap()
                .id,
            id
        );
        // Two valid cookies of different sessions: none is used.
        let other = value_of(
            &c.set_cookie(&SessionId::generate().unwrap(), None, 60)
                .unwrap(),
        );
        assert_eq!(
            c.read(&headers(&[&format!("sid={v}; sid={other}")])),
            Err(Rejected::Conflict)
        );
        assert_eq!(
            c.read(&headers(&[
                &format!("sid={other}"),
                &format!("a=b; sid={v}")
            ])),
            Err(Rejected::Conflict)
        );
        // The same session in both forms (tagged and not) differs in what it carries: none.
        let tag = tagging(&[&[1; 32]]).user_tag_for(Some("alice"));
        let tagged = value_of(&c.set_cookie(&id, tag.as_ref(), 60).unwrap());
        assert_eq!(
            c.read(&headers(&[&format!("sid={v}; sid={tagged}")])),
            Err(Rejected::Conflict)
        );
        // Invalid cookies of the name beside a valid one are ignored, whatever the order;
        // alone, the first one's reason is reported.
        for bad in ["sid=", "sid=garbage", &format!("sid={}", "A".repeat(300))] {
            assert_eq!(
                c.read(&headers(&[&format!("{bad}; sid={v}")]))
                    .unwrap()
                    .unwrap()
                    .id,
                id
            );
            assert_eq!(
                c.read(&headers(&[&format!("sid={v}; {bad}")]))
                    .unwrap()
                    .unwrap()
                    .id,
                id
            );
        }
        assert_eq!(
            c.read(&headers(&[&format!(
                "sid=garbage; sid={}",
                "A".repeat(300)
            )])),
            Err(Rejected::Malformed)
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
        let foreign = value_of(&other.set_cookie(&id, None, 60).unwrap());
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
        let old_value = value_of(&old.set_cookie(&id, None, 60).unwrap());
        assert_eq!(
            rotated
                .read(&headers(&[&format!("sid={old_value}")]))
                .unwrap()
                .unwrap()
                .id,
            id
        );
        let new_value = value_of(&rotated.set_cookie(&id, None, 60).unwrap());
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
        let set = c.set_cookie(&id, None, 3600).unwrap();
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
        let set = c.set_cookie(&id, None, 60).unwrap();
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
        assert!(c.set_cookie(&id, None, 60).is_err());
        assert!(c.removal_cookie().is_err());
        // A DEL character is refused as well, not replaced by an empty header.
        c.path = "/\u{7f}".into();
        assert!(c.set_cookie(&id, None, 60).is_err());
        assert!(c.removal_cookie().is_err());
    }

    /// A codec that tags cookies of sessions with a user.
    fn tagging(keys: &[&[u8]]) -> CookieCodec {
        CookieCodec {
            user_tag: true,
            ..codec(keys)
        }
    }

    fn raw_of(value: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(value).unwrap()
    }

    fn read_value(c: &CookieCodec, value: &str) -> Result<Option<Incoming>, Rejected> {
        c.read(&headers(&[&format!("sid={value}")]))
    }

    #[test]
    fn tagged_and_untagged_cookies_round_trip() {
        let c = tagging(&[&[1; 32]]);
        let id = SessionId::generate().unwrap();
        let tag = c.user_tag_for(Some("alice"));
        assert!(tag.is_some());
        assert_eq!(c.user_tag_for(None), None);
        let tagged = value_of(&c.set_cookie(&id, tag.as_ref(), 60).unwrap());
        assert_eq!(tagged.len(), TAGGED_VALUE_LEN);
        assert_eq!(TAGGED_VALUE_LEN, 86);
        let read = read_value(&c, &tagged).unwrap().unwrap();
        assert_eq!((read.id, read.user_tag), (id.clone(), tag));
        // The same id without a user: the old form, unchanged.
        let untagged = value_of(&c.set_cookie(&id, None, 60).unwrap());
        assert_eq!(untagged.len(), VALUE_LEN);
        let read = read_value(&c, &untagged).unwrap().unwrap();
        assert_eq!((read.id, read.user_tag), (id.clone(), None));
        // A codec with tagging off reads both forms (and tags nothing itself).
        let off = codec(&[&[1; 32]]);
        assert_eq!(off.user_tag_for(Some("alice")), None);
        assert_eq!(read_value(&off, &tagged).unwrap().unwrap().user_tag, tag);
        assert_eq!(read_value(&off, &untagged).unwrap().unwrap().user_tag, None);
        // The tag is the user's, not the session's: another session of alice carries the
        // same one; bob's differs.
        let other = SessionId::generate().unwrap();
        let v = value_of(&c.set_cookie(&other, tag.as_ref(), 60).unwrap());
        assert_eq!(read_value(&c, &v).unwrap().unwrap().user_tag, tag);
        assert_ne!(c.user_tag_for(Some("bob")), tag);
        // Attributes are those of the untagged cookie.
        let set = c.set_cookie(&id, tag.as_ref(), 60).unwrap();
        assert!(
            set.to_str()
                .unwrap()
                .ends_with("; Max-Age=60; Path=/; HttpOnly; Secure; SameSite=Lax")
        );
    }

    #[test]
    fn a_forged_or_moved_user_tag_is_rejected() {
        let c = tagging(&[&[1; 32]]);
        let alice = c.user_tag_for(Some("alice")).unwrap();
        let bob = c.user_tag_for(Some("bob")).unwrap();
        let id = SessionId::generate().unwrap();
        let tagged = raw_of(&value_of(&c.set_cookie(&id, Some(&bob), 60).unwrap()));
        let sig = &tagged[ID_LEN + USER_TAG_LEN..];
        // Bob's signed cookie with alice's tag put in: the signature covers the tag.
        let forged = [&id.bytes[..], &alice.0[..], sig].concat();
        assert_eq!(
            read_value(&c, &URL_SAFE_NO_PAD.encode(&forged)),
            Err(Rejected::BadSignature)
        );
        // One flipped bit of the tag.
        let mut flipped = tagged.clone();
        flipped[ID_LEN] ^= 1;
        assert_eq!(
            read_value(&c, &URL_SAFE_NO_PAD.encode(&flipped)),
            Err(Rejected::BadSignature)
        );
        // Alice's tag and signature moved onto another session id.
        let alices = raw_of(&value_of(&c.set_cookie(&id, Some(&alice), 60).unwrap()));
        let other = SessionId::generate().unwrap();
        let moved = [&other.bytes[..], &alices[ID_LEN..]].concat();
        assert_eq!(
            read_value(&c, &URL_SAFE_NO_PAD.encode(&moved)),
            Err(Rejected::BadSignature)
        );
        // A tag added to a valid untagged cookie, keeping its (untagged) signature.
        let untagged = raw_of(&value_of(&c.set_cookie(&id, None, 60).unwrap()));
        let added = [&id.bytes[..], &alice.0[..], &untagged[ID_LEN..]].concat();
        assert_eq!(
            read_value(&c, &URL_SAFE_NO_PAD.encode(&added)),
            Err(Rejected::BadSignature)
        );
        // The untagged signature of `id || tag` (the other form's key): refused.
        let cross = c.keys[0].sign("sid", &[&id.bytes[..], &alice.0[..]].concat());
        let cross = [&id.bytes[..], &alice.0[..], &cross[..]].concat();
        assert_eq!(
            read_value(&c, &URL_SAFE_NO_PAD.encode(&cross)),
            Err(Rejected::BadSignature)
        );
        // The tag removed from a tagged cookie, keeping its (tagged) signature.
        let removed = [&id.bytes[..], sig].concat();
        assert_eq!(
            read_value(&c, &URL_SAFE_NO_PAD.encode(&removed)),
            Err(Rejected::BadSignature)
        );
        // Lengths between and around the two forms are malformed.
        for len in [VALUE_LEN + 1, TAGGED_VALUE_LEN - 1, TAGGED_VALUE_LEN + 1] {
            assert_eq!(
                read_value(&c, &"A".repeat(len)),
                Err(Rejected::Malformed),
                "{len}"
            );
        }
    }

    #[test]
    fn tagged_cookies_follow_key_rotation() {
        let old = tagging(&[&[1; 32]]);
        let rotated = tagging(&[&[2; 32], &[1; 32]]);
        let retired = tagging(&[&[2; 32]]);
        let id = SessionId::generate().unwrap();
        let old_tag = old.user_tag_for(Some("alice"));
        let old_value = value_of(&old.set_cookie(&id, old_tag.as_ref(), 60).unwrap());
        // Still verified by the second key, carrying the tag it was given (an identifier,
        // not recomputed): the limiter sees the same user as before the rotation.
        let read = read_value(&rotated, &old_value).unwrap().unwrap();
        assert_eq!((read.id, read.user_tag), (id.clone(), old_tag));
        // New tags come from the first key.
        let new_tag = rotated.user_tag_for(Some("alice"));
        assert_ne!(new_tag, old_tag);
        assert_eq!(new_tag, retired.user_tag_for(Some("alice")));
        // Once the old key is retired, its cookies are refused.
        assert_eq!(
            read_value(&retired, &old_value),
            Err(Rejected::BadSignature)
        );
    }

    #[test]
    fn user_tag_debug_is_redacted() {
        let c = tagging(&[&[1; 32]]);
        let tag = c.user_tag_for(Some("alice")).unwrap();
        assert_eq!(format!("{tag:?}"), "UserTag(<redacted>)");
        assert_eq!(tag.as_bytes().len(), USER_TAG_LEN);
    }
}

/// Property tests of the codec (the signing side is internal, so they live here). The oracle
/// is the set of values actually signed: nothing else verifies, and each of those verifies
/// under every key list that contains its key.
#[cfg(test)]
mod props {
    use super::*;
    use crate::session::SessionConfig;
    use proptest::prelude::*;

    fn cases(default: u32) -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    /// The codec the session config builds for `keys` (first signs, all verify), the way an
    /// application configures rotation: `.keys([new, old])`.
    fn codec(name: &str, keys: &[&[u8]], user_tag: bool) -> Arc<CookieCodec> {
        SessionConfig::builder()
            .keys(keys)
            .cookie_name(name)
            .user_tag(user_tag)
            .build()
            .unwrap()
            .inner
            .codec
            .clone()
    }

    fn value(set_cookie: &HeaderValue) -> Vec<u8> {
        let s = set_cookie.as_bytes();
        let pair = s.split(|&b| b == b';').next().unwrap();
        let eq = pair.iter().position(|&b| b == b'=').unwrap();
        pair[eq + 1..].to_vec()
    }

    #[derive(Clone, Debug)]
    enum Mutation {
        /// Replace the byte at the index with another one.
        Set(prop::sample::Index, u8),
        /// Flip one bit of the decoded bytes and encode again (valid base64, wrong content).
        FlipDecoded(prop::sample::Index, u8),
        Truncate(prop::sample::Index),
        Append(Vec<u8>),
        Insert(prop::sample::Index, u8),
        Remove(prop::sample::Index),
        Swap(prop::sample::Index, prop::sample::Index),
        /// The tag of another user (or none) with the signature kept.
        Retag(Option<String>),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        let byte = prop_oneof![
            3 => prop::sample::select(
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".to_vec()
            ),
            1 => any::<u8>(),
        ];
        prop_oneof![
            4 => (any::<prop::sample::Index>(), byte.clone()).prop_map(|(i, b)| Mutation::Set(i, b)),
            4 => (any::<prop::sample::Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipDecoded(i, b)),
            1 => any::<prop::sample::Index>().prop_map(Mutation::Truncate),
            1 => prop::collection::vec(byte.clone(), 1..4).prop_map(Mutation::Append),
            1 => (any::<prop::sample::Index>(), byte).prop_map(|(i, b)| Mutation::Insert(i, b)),
            1 => any::<prop::sample::Index>().prop_map(Mutation::Remove),
            1 => (any::<prop::sample::Index>(), any::<prop::sample::Index>()).prop_map(|(i, j)| Mutation::Swap(i, j)),
            1 => prop::option::of("[a-z]{1,8}").prop_map(Mutation::Retag),
        ]
    }

    /// `None` when the mutation does not apply (an index into nothing, bytes that do not
    /// decode).
    fn apply(c: &CookieCodec, id: &SessionId, v: &[u8], m: &Mutation) -> Option<Vec<u8>> {
        let mut v = v.to_vec();
        let decoded = || {
            URL_SAFE_NO_PAD
                .decode(&v)
                .ok()
                .filter(|r| r.len() >= TAG_LEN)
        };
        if v.is_empty() && !matches!(m, Mutation::Append(_) | Mutation::Insert(..)) {
            return None;
        }
        match m {
            Mutation::Set(i, b) => {
                let i = i.index(v.len());
                v[i] = *b;
            }
            Mutation::FlipDecoded(i, bit) => {
                let mut raw = decoded()?;
                let i = i.index(raw.len());
                raw[i] ^= 1 << bit;
                v = URL_SAFE_NO_PAD.encode(raw).into_bytes();
            }
            Mutation::Truncate(i) => v.truncate(i.index(v.len())),
            Mutation::Append(extra) => v.extend_from_slice(extra),
            Mutation::Insert(i, b) => v.insert(i.index(v.len() + 1), *b),
            Mutation::Remove(i) => {
                v.remove(i.index(v.len()));
            }
            Mutation::Swap(i, j) => {
                let (i, j) = (i.index(v.len()), j.index(v.len()));
                v.swap(i, j);
            }
            Mutation::Retag(user) => {
                // Keep the id and the signature, put another user's tag in (or take it out).
                let raw = decoded()?;
                let sig = &raw[raw.len() - TAG_LEN..];
                let tag = c.user_tag_for(user.as_deref());
                let mut forged = id.bytes.to_vec();
                if let Some(t) = tag {
                    forged.extend_from_slice(&t.0);
                }
                forged.extend_from_slice(sig);
                v = URL_SAFE_NO_PAD.encode(forged).into_bytes();
            }
        }
        Some(v)
    }

    fn key() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 32..64)
    }

    proptest! {
        // A mutation that changes nothing (a byte set to itself, two equal bytes swapped)
        // is rejected: about 1 case in 100, so allow as many rejects as cases.
        #![proptest_config(ProptestConfig {
            cases: cases(1000),
            max_global_rejects: cases(1000),
            ..ProptestConfig::default()
        })]

        /// Every signed value verifies, with its id and user tag, under its own key list and
        /// after a rotation that keeps its key as a fallback; not once its key is gone.
        #[test]
        fn signed_values_round_trip_across_rotation(
            old in key(),
            new in key(),
            id in any::<[u8; ID_LEN]>(),
            user in prop::option::of("[a-z0-9@.]{1,12}"),
            name in prop::sample::select(vec!["session", "sid", "__Host-s"]),
            tagging in any::<bool>(),
        ) {
            prop_assume!(old != new);
            let id = SessionId::from_bytes(id);
            let signer = codec(name, &[&old], tagging);
            let tag = signer.user_tag_for(user.as_deref());
            let v = value(&signer.set_cookie(&id, tag.as_ref(), 60).unwrap());
            let want = Incoming { id: id.clone(), user_tag: tag };

            let header = |v: &[u8]| {
                let mut h = http::HeaderMap::new();
                let mut line = format!("other=1; {name}=").into_bytes();
                line.extend_from_slice(v);
                h.append(COOKIE, HeaderValue::from_bytes(&line).unwrap());
                h
            };
            prop_assert_eq!(signer.read(&header(&v)), Ok(Some(Incoming { id: id.clone(), user_tag: tag })));
            let rotated = codec(name, &[&new, &old], tagging);
            prop_assert_eq!(rotated.read(&header(&v)), Ok(Some(want)));
            // What the rotated codec signs verifies too, and differs.
            let v2 = value(&rotated.set_cookie(&id, tag.as_ref(), 60).unwrap());
            prop_assert_ne!(&v2, &v);
            prop_assert!(rotated.verify(&v2).is_ok());
            // Retired key, or a stranger's: refused.
            prop_assert_eq!(codec(name, &[&new], tagging).read(&header(&v)), Err(Rejected::BadSignature));
            prop_assert_eq!(signer.verify(&v2), Err(Rejected::BadSignature));
            // Another cookie name: another signature.
            let other_name = if name == "sid" { "session" } else { "sid" };
            prop_assert_eq!(codec(other_name, &[&old], tagging).verify(&v), Err(Rejected::BadSignature));
        }

        /// No value other than the one signed verifies: flipped, replaced, inserted, removed
        /// or swapped bytes, truncation, appended bytes, a flipped bit of the decoded bytes,
        /// another user's tag, under the signing key list and a rotated one.
        #[test]
        fn no_mutated_value_verifies(
            old in key(),
            new in key(),
            id in any::<[u8; ID_LEN]>(),
            user in prop::option::of("[a-z0-9@.]{1,12}"),
            mutations in prop::collection::vec(mutation(), 1..4),
        ) {
            let id = SessionId::from_bytes(id);
            let signer = codec("sid", &[&old], true);
            let tag = signer.user_tag_for(user.as_deref());
            let v = value(&signer.set_cookie(&id, tag.as_ref(), 60).unwrap());
            let rotated = codec("sid", &[&new, &old], true);
            let mut m = v.clone();
            for mutation in &mutations {
                if let Some(next) = apply(&signer, &id, &m, mutation) {
                    m = next;
                }
            }
            prop_assume!(m != v);
            prop_assert!(signer.verify(&m).is_err(), "a mutated value verifies: {:?}", mutations);
            prop_assert!(rotated.verify(&m).is_err(), "a mutated value verifies after rotation");
        }

        /// Random bytes of the right lengths, well encoded: never valid.
        #[test]
        fn random_values_never_verify(
            k in key(),
            raw in prop_oneof![
                prop::collection::vec(any::<u8>(), ID_LEN + TAG_LEN),
                prop::collection::vec(any::<u8>(), ID_LEN + USER_TAG_LEN + TAG_LEN),
            ],
        ) {
            let c = codec("sid", &[&k], false);
            prop_assert_eq!(c.verify(URL_SAFE_NO_PAD.encode(raw).as_bytes()), Err(Rejected::BadSignature));
        }
    }
}
