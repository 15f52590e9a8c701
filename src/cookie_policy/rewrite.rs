//! Rewriting one `Set-Cookie` value: one pass to learn what the cookie says, and only if
//! something must change, one pass to copy it with the edits into a single new buffer.

use http::HeaderValue;

use super::date::parse_cookie_date;
use super::{CookiePolicy, SameSite, SecureMode};
use crate::net::trim_ows;

/// Why a `Set-Cookie` value was passed through unchanged. Never carries any part of the
/// cookie: its name or value may be a secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Malformed {
    NotUtf8,
    ControlCharacter,
    NoEquals,
    EmptyName,
    Unencodable,
}

impl Malformed {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Self::NotUtf8 => "not valid UTF-8",
            Self::ControlCharacter => "contains a control character",
            Self::NoEquals => "no '=' between cookie name and value",
            Self::EmptyName => "empty cookie name",
            Self::Unencodable => "rewritten value is not a valid header value",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Known {
    Secure,
    HttpOnly,
    SameSite,
    MaxAge,
    Expires,
    Path,
    Domain,
    Other,
}

fn classify(key: &str) -> Known {
    let k = key.as_bytes();
    if !(4..=8).contains(&k.len()) {
        return Known::Other;
    }
    // Case-insensitive compare of up to 8 bytes at once: `| 0x20` lower-cases ASCII letters and
    // keeps '-'; the only other byte it maps onto a byte of these names is CR (onto '-'),
    // which never gets here (control characters are rejected first).
    let folded = k
        .iter()
        .fold(0u64, |acc, &b| acc << 8 | u64::from(b | 0x20));
    const fn pack(name: &[u8]) -> u64 {
        let mut acc = 0u64;
        let mut i = 0;
        while i < name.len() {
            acc = acc << 8 | name[i] as u64;
            i += 1;
        }
        acc
    }
    const PATH: u64 = pack(b"path");
    const SECURE: u64 = pack(b"secure");
    const DOMAIN: u64 = pack(b"domain");
    const MAX_AGE: u64 = pack(b"max-age");
    const EXPIRES: u64 = pack(b"expires");
    const HTTPONLY: u64 = pack(b"httponly");
    const SAMESITE: u64 = pack(b"samesite");
    match (k.len(), folded) {
        (4, PATH) => Known::Path,
        (6, SECURE) => Known::Secure,
        (6, DOMAIN) => Known::Domain,
        (7, MAX_AGE) => Known::MaxAge,
        (7, EXPIRES) => Known::Expires,
        (8, HTTPONLY) => Known::HttpOnly,
        (8, SAMESITE) => Known::SameSite,
        _ => Known::Other,
    }
}

/// One attribute, as byte positions into the whole `Set-Cookie` string.
#[derive(Clone, Copy, Debug)]
struct Attr<'a> {
    /// Position of the `;` that introduces the attribute (unique per attribute).
    semi: usize,
    /// Position just past the attribute (the next `;` or the end).
    end: usize,
    /// The name, trimmed, as written.
    key: &'a str,
    /// Position just past the trimmed name.
    key_end: usize,
    /// The trimmed value span, when there is an `=`.
    value: Option<(usize, usize)>,
}

impl Attr<'_> {
    fn value<'s>(&self, s: &'s str) -> Option<&'s str> {
        self.value.map(|(start, end)| &s[start..end])
    }
}

struct Attrs<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Attr<'a>;

    fn next(&mut self) -> Option<Attr<'a>> {
        let s = self.s;
        if self.pos >= s.len() {
            return None;
        }
        let b = s.as_bytes();
        let semi = self.pos;
        let start = semi + 1;
        // One byte scan for the first '=' and the next ';' (`str::find(char)` is several
        // times slower on strings this short).
        let mut end = start;
        let mut eq = None;
        while end < b.len() {
            match b[end] {
                b';' => break,
                b'=' if eq.is_none() => eq = Some(end),
                _ => {}
            }
            end += 1;
        }
        self.pos = end;
        let (key, value) = match eq {
            Some(eq) => (trim_span(s, start, eq), Some(trim_span(s, eq + 1, end))),
            None => (trim_span(s, start, end), None),
        };
        Some(Attr {
            semi,
            end,
            key: &s[key.0..key.1],
            key_end: key.1,
            value,
        })
    }
}

fn position(haystack: &[u8], needle: u8) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_span(s: &str, mut start: usize, mut end: usize) -> (usize, usize) {
    let b = s.as_bytes();
    while start < end && is_ows(b[start]) {
        start += 1;
    }
    while end > start && is_ows(b[end - 1]) {
        end -= 1;
    }
    (start, end)
}

/// Cookie-name prefixes are matched case-insensitively (RFC 6265bis).
fn has_prefix(name: &[u8], prefix: &[u8]) -> bool {
    name.len() >= prefix.len() && name[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// `__Http-` or `__Host-Http-`: browsers accept such cookies only with `HttpOnly`.
pub(super) fn has_http_only_prefix(name: &[u8]) -> bool {
    has_prefix(name, b"__Http-") || has_prefix(name, b"__Host-Http-")
}

fn parse_same_site(v: &str) -> Option<SameSite> {
    if v.eq_ignore_ascii_case("strict") {
        Some(SameSite::Strict)
    } else if v.eq_ignore_ascii_case("lax") {
        Some(SameSite::Lax)
    } else if v.eq_ignore_ascii_case("none") {
        Some(SameSite::None)
    } else {
        None // browsers treat an unknown value like a missing attribute
    }
}

/// RFC 6265 §5.2.2: an optional `-` then digits; anything else is ignored by browsers.
fn parse_max_age(v: &str) -> Option<i64> {
    let (negative, digits) = match v.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, v),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = digits.bytes().fold(0i64, |n, b| {
        n.saturating_mul(10).saturating_add(i64::from(b - b'0'))
    });
    Some(if negative { -n } else { n })
}

/// Where `text` replaces the value of an attribute.
fn set_value(out: &mut Vec<u8>, s: &str, copied: &mut usize, attr: &Attr<'_>, text: &str) {
    match attr.value {
        Some((start, end)) => splice(out, s, copied, start, end, &[text]),
        None => splice(out, s, copied, attr.key_end, attr.key_end, &["=", text]),
    }
}

/// Copies `s[*copied..start]`, then `parts` in place of `s[start..end]`.
fn splice(
    out: &mut Vec<u8>,
    s: &str,
    copied: &mut usize,
    start: usize,
    end: usize,
    parts: &[&str],
) {
    out.extend_from_slice(&s.as_bytes()[*copied..start]);
    for part in parts {
        out.extend_from_slice(part.as_bytes());
    }
    *copied = end;
}

/// Applies `policy` to one `Set-Cookie` value. `Ok(None)`: already compliant, keep it as is.
pub(crate) fn rewrite(
    policy: &CookiePolicy,
    header: &HeaderValue,
    request_is_https: bool,
) -> Result<Option<HeaderValue>, Malformed> {
    let Some(out) = rewrite_bytes(policy, header.as_bytes(), request_is_https)? else {
        return Ok(None);
    };
    let mut value = HeaderValue::try_from(out).map_err(|_| Malformed::Unencodable)?;
    value.set_sensitive(header.is_sensitive());
    Ok(Some(value))
}

/// [`rewrite`] on raw bytes: `Ok(Some(new))` when the cookie must change.
pub(crate) fn rewrite_bytes(
    policy: &CookiePolicy,
    bytes: &[u8],
    request_is_https: bool,
) -> Result<Option<Vec<u8>>, Malformed> {
    let s = std::str::from_utf8(bytes).map_err(|_| Malformed::NotUtf8)?;
    // Browsers reject cookies with control characters other than HTAB (RFC 6265bis §5.7).
    // No early return, so the loop vectorizes.
    if bytes.iter().fold(false, |bad, &b| {
        bad | ((b < 0x20 && b != b'\t') | (b == 0x7f))
    }) {
        return Err(Malformed::ControlCharacter);
    }
    let pair_end = position(bytes, b';').unwrap_or(bytes.len());
    let eq = position(&bytes[..pair_end], b'=').ok_or(Malformed::NoEquals)?;
    let name = trim_ows(&s[..eq]);
    if name.is_empty() {
        return Err(Malformed::EmptyName);
    }
    let attrs = || Attrs { s, pos: pair_end };

    let name_bytes = name.as_bytes();
    let host_prefix = has_prefix(name_bytes, b"__Host-");
    let http_prefix = has_http_only_prefix(name_bytes);
    let secure_prefix = has_prefix(name_bytes, b"__Secure-");

    // Pass 1: what does the cookie say? For repeated attributes the last one counts, as in
    // browsers.
    let mut has_secure = false;
    let mut has_http_only = false;
    let mut same_site: Option<(Attr<'_>, Option<SameSite>)> = None;
    let mut max_age: Option<(Attr<'_>, i64)> = None;
    let mut expires: Option<i64> = None;
    let mut path: Option<Attr<'_>> = None;
    let mut has_domain = false;
    let mut has_partitioned = false;
    let mut domain_bytes = 0;
    for attr in attrs() {
        match classify(attr.key) {
            Known::Secure => has_secure = true,
            Known::HttpOnly => has_http_only = true,
            Known::SameSite => same_site = Some((attr, attr.value(s).and_then(parse_same_site))),
            Known::MaxAge => {
                if let Some(v) = attr.value(s).and_then(parse_max_age) {
                    max_age = Some((attr, v));
                }
            }
            Known::Expires => {
                // Dates only matter for the lifetime cap.
                if policy.max_age_cap.is_some()
                    && let Some(t) = attr.value(s).and_then(parse_cookie_date)
                {
                    expires = Some(t);
                }
            }
            Known::Path => path = Some(attr),
            Known::Domain => {
                has_domain = true;
                domain_bytes += attr.end - attr.semi;
            }
            Known::Other => {
                if attr.key.eq_ignore_ascii_case("partitioned") {
                    has_partitioned = true;
                }
            }
        }
    }

    // Decisions.
    let add_http_only =
        !has_http_only && (http_prefix || (policy.http_only && !policy.is_script_readable(name)));

    // Like the prefixes, `Partitioned` is only accepted by browsers with `Secure`: a cookie
    // the app partitions gets it whatever the mode.
    let mut secure = has_secure
        || host_prefix
        || secure_prefix
        || http_prefix
        || has_partitioned
        || match policy.secure {
            SecureMode::Always => true,
            SecureMode::WhenHttps => request_is_https,
            SecureMode::Never => false,
        };

    let effective = same_site.and_then(|(_, v)| v);
    let mut target = match effective {
        Some(v) => Some(v.max(policy.min_same_site)),
        None if policy.min_same_site == SameSite::None => None,
        None => Some(policy.min_same_site),
    };
    if target == Some(SameSite::None) && !secure {
        // SameSite=None without Secure is rejected by browsers.
        if policy.secure == SecureMode::Never {
            target = Some(SameSite::Lax);
        } else {
            secure = true;
        }
    }
    let same_site_edit = target.filter(|t| Some(*t) != effective);
    let add_secure = secure && !has_secure;
    // A cookie that ends up `SameSite=None` is `Secure` here (unless the mode is `Never`,
    // where it was lowered to `Lax` above), which `Partitioned` requires.
    let add_partitioned =
        policy.partition_same_site_none && target == Some(SameSite::None) && !has_partitioned;

    let mut max_age_edit = None;
    let mut add_max_age = false;
    if let Some(cap) = policy.max_age_cap {
        match max_age {
            // Max-Age <= 0 is a removal: left alone.
            Some((attr, v)) if v > cap => max_age_edit = Some(attr.semi),
            Some(_) => {}
            None => {
                if let Some(expires) = expires {
                    let now = policy.now_secs();
                    // An Expires in the past is a removal: left alone.
                    add_max_age = expires > now && expires - now > cap;
                }
            }
        }
    }

    let path_ok = path.is_some_and(|p| p.value(s) == Some("/"));
    let fix_path = host_prefix && !path_ok;
    let drop_domain = host_prefix && has_domain;

    if !(add_http_only
        || add_secure
        || same_site_edit.is_some()
        || max_age_edit.is_some()
        || add_max_age
        || fix_path
        || drop_domain
        || add_partitioned)
    {
        return Ok(None);
    }

    // The exact output length, so the buffer becomes the header value without reallocating
    // (`Bytes::from(Vec)` allocates again unless length == capacity).
    let value_len = |a: &Attr<'_>| a.value.map_or(0, |(start, end)| end - start);
    let set_value_len = |a: &Attr<'_>, text: usize| match a.value {
        Some(_) => text,
        None => 1 + text,
    };
    let mut grow = 0;
    let mut shrink = 0;
    if drop_domain {
        shrink += domain_bytes;
    }
    match (same_site_edit, same_site) {
        (Some(new), Some((a, _))) => {
            grow += set_value_len(&a, new.as_str().len());
            shrink += value_len(&a);
        }
        (Some(new), None) => grow += "; SameSite=".len() + new.as_str().len(),
        (None, _) => {}
    }
    if let (Some(_), Some((a, _))) = (max_age_edit, max_age) {
        grow += set_value_len(&a, policy.max_age_cap_text.len());
        shrink += value_len(&a);
    }
    if fix_path {
        match path {
            Some(a) => {
                grow += set_value_len(&a, 1);
                shrink += value_len(&a);
            }
            None => grow += "; Path=/".len(),
        }
    }
    if add_max_age {
        grow += "; Max-Age=".len() + policy.max_age_cap_text.len();
    }
    if add_secure {
        grow += "; Secure".len();
    }
    if add_http_only {
        grow += "; HttpOnly".len();
    }
    if add_partitioned {
        grow += "; Partitioned".len();
    }
    let expected_len = s.len() + grow - shrink;

    // Pass 2: copy with the edits.
    let mut out = Vec::with_capacity(expected_len);
    let mut copied = 0;
    let same_site_at = same_site.map(|(a, _)| a.semi);
    let path_at = path.map(|p| p.semi);
    for attr in attrs() {
        if drop_domain && classify(attr.key) == Known::Domain {
            splice(&mut out, s, &mut copied, attr.semi, attr.end, &[]);
            continue;
        }
        if let Some(new) = same_site_edit
            && same_site_at == Some(attr.semi)
        {
            set_value(&mut out, s, &mut copied, &attr, new.as_str());
        } else if max_age_edit == Some(attr.semi) {
            set_value(&mut out, s, &mut copied, &attr, &policy.max_age_cap_text);
        } else if fix_path && path_at == Some(attr.semi) {
            set_value(&mut out, s, &mut copied, &attr, "/");
        }
    }
    out.extend_from_slice(&s.as_bytes()[copied..]);
    if fix_path && path.is_none() {
        out.extend_from_slice(b"; Path=/");
    }
    if add_max_age {
        out.extend_from_slice(b"; Max-Age=");
        out.extend_from_slice(policy.max_age_cap_text.as_bytes());
    }
    if add_secure {
        out.extend_from_slice(b"; Secure");
    }
    if add_http_only {
        out.extend_from_slice(b"; HttpOnly");
    }
    if let Some(new) = same_site_edit
        && same_site_at.is_none()
    {
        out.extend_from_slice(b"; SameSite=");
        out.extend_from_slice(new.as_str().as_bytes());
    }
    if add_partitioned {
        out.extend_from_slice(b"; Partitioned");
    }
    debug_assert_eq!(out.len(), expected_len);
    Ok(Some(out))
}
