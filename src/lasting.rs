//! Texts kept for the life of the process.
//!
//! A layer hands some of its configured texts to every request: the rate limiter its
//! `RateLimit-Policy` value and its quota names (in the `RateLimitDecision` put in each
//! request), the correlation layer the names of the headers it writes. A value counted by
//! reference (an `Arc<str>`, a header value or name built at run time) adds to a count shared
//! by all its clones when it is cloned, and takes from it when dropped: on a busy server the
//! worker threads then take that count's cache line from each other on every request. A
//! `&'static str` (and a header value or name over one) is copied without touching shared
//! memory. So these texts are kept once for the life of the process, each distinct text once
//! (a layer built again with the same configuration reuses them), and at most
//! [`LASTING_BYTES`] in all: past that, a layer holds its texts counted by reference, as
//! before, so what a process keeps is bounded however often and with however many different
//! configurations it builds layers.

use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, Mutex, PoisonError};

/// The most text a process keeps (the policies and names of a few hundred layers).
pub(crate) const LASTING_BYTES: usize = 64 * 1024;

/// The texts this process keeps.
static KEPT: Kept = Kept::new(LASTING_BYTES);

/// `text` kept for the life of the process, or `None` when the texts kept are at their
/// bound.
pub(crate) fn keep(text: &str) -> Option<&'static str> {
    KEPT.keep(text)
}

/// Texts kept, up to a total length.
struct Kept {
    /// The texts and their total length.
    texts: Mutex<(Vec<&'static str>, usize)>,
    max: usize,
}

impl Kept {
    const fn new(max: usize) -> Self {
        Self {
            texts: Mutex::new((Vec::new(), 0)),
            max,
        }
    }

    fn keep(&self, text: &str) -> Option<&'static str> {
        let mut kept = self.texts.lock().unwrap_or_else(PoisonError::into_inner);
        let (texts, bytes) = &mut *kept;
        if let Some(k) = texts.iter().find(|k| **k == text) {
            return Some(*k);
        }
        if *bytes + text.len() > self.max {
            return None;
        }
        let k: &'static str = Box::leak(text.into());
        texts.push(k);
        *bytes += k.len();
        Some(k)
    }
}

/// `name`, over kept bytes when the bound allows (see the module docs): cloning it then
/// copies a reference.
#[cfg(feature = "correlation-id")]
pub(crate) fn header_name(name: http::HeaderName) -> http::HeaderName {
    // A header name's text is lowercase token characters: what `from_static` accepts.
    keep(name.as_str()).map_or(name, http::HeaderName::from_static)
}

/// `value`, over kept bytes when it can be (visible ASCII, within the bound): cloning it
/// then copies a reference. A value with bytes from 0x80 (a header value, not a static one)
/// keeps its own bytes.
#[cfg(feature = "rate-limit")]
pub(crate) fn header_value(value: http::HeaderValue) -> http::HeaderValue {
    // `to_str` accepts exactly the bytes `from_static` accepts (visible ASCII and tabs).
    match value.to_str().ok().and_then(keep) {
        Some(kept) => http::HeaderValue::from_static(kept),
        None => value,
    }
}

/// A text handed to every request: kept for the life of the process when [`keep`] can,
/// counted by reference otherwise. Either way it reads as a `str`.
#[derive(Clone)]
#[cfg_attr(not(feature = "rate-limit"), allow(dead_code))]
pub(crate) enum Text {
    /// Kept: cloning copies a reference.
    Lasting(&'static str),
    /// Past the bound: cloning adds to a shared count.
    Counted(Arc<str>),
}

#[cfg_attr(not(feature = "rate-limit"), allow(dead_code))]
impl Text {
    /// `text`, kept if the bound allows.
    pub(crate) fn new(text: &str) -> Self {
        keep(text).map_or_else(|| Self::Counted(text.into()), Self::Lasting)
    }
}

impl Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            Self::Lasting(s) => s,
            Self::Counted(s) => s,
        }
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_is_kept_once() {
        let a = Text::new("ip");
        let b = Text::new("ip");
        assert_eq!(&*a, "ip");
        assert_eq!(a.to_string(), "ip");
        assert_eq!(format!("{a:?}"), "\"ip\"");
        // The same text is kept once: both show the same bytes.
        assert!(
            matches!((&a, &b), (Text::Lasting(x), Text::Lasting(y)) if x.as_ptr() == y.as_ptr())
        );
    }

    #[cfg(feature = "rate-limit")]
    #[test]
    fn a_header_value_shares_its_kept_bytes() {
        use http::HeaderValue;
        let made = || header_value(HeaderValue::from_static("\"ip\";q=100;w=60"));
        let (a, b) = (made(), made());
        assert_eq!(a, "\"ip\";q=100;w=60");
        assert_eq!(a.as_bytes().as_ptr(), b.as_bytes().as_ptr());
        assert_eq!(a.clone().as_bytes().as_ptr(), a.as_bytes().as_ptr());
        // Bytes from 0x80 are a header value but not a static one: kept as they are.
        let wide = HeaderValue::from_bytes("\"caf\u{e9}\";q=1;w=1".as_bytes()).unwrap();
        assert_eq!(header_value(wide.clone()), wide);
    }

    #[test]
    fn what_is_kept_is_bounded() {
        let kept = Kept::new(100);
        let first = kept.keep("first").unwrap();
        let mut n = 0;
        while kept.keep(&format!("{n:010}")).is_some() {
            n += 1;
            assert!(n <= 10, "the bound holds");
        }
        // 5 + 9 * 10 bytes kept: 5 left, too few for the next text.
        assert_eq!(n, 9);
        assert_eq!(kept.keep("past the bound"), None);
        // A text kept before the bound is still found, the same bytes.
        assert_eq!(kept.keep("first").unwrap().as_ptr(), first.as_ptr());
        assert_eq!(kept.keep("12345"), Some("12345"));
        assert_eq!(kept.texts.lock().unwrap().1, 100);
        // Past the bound of the process's store, a text is counted by reference.
        let long = "x".repeat(LASTING_BYTES + 1);
        let t = Text::new(&long);
        assert!(matches!(t, Text::Counted(_)));
        assert_eq!(&*t, long);
    }
}
