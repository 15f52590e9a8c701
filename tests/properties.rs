//! Property tests of the parsers and the limiter math, each checked against an oracle written
//! here, independently of the code under test: the `cookie` crate and an RFC 6265bis attribute
//! reader for the cookie policy, naive models of the forwarding headers, of the correlation-id
//! rule and of the quota grammar, and brute-force models of the two limiter meanings.
//!
//! No servers are started. Case counts keep each property within a few seconds on a loaded
//! 2-core machine in a debug build; `PROPTEST_CASES` raises them all for a longer local run
//! (`PROPTEST_CASES=100000 cargo test --test properties`: about 5 minutes). The session
//! cookie codec, whose signing side is internal, has its properties in `src/session/cookie.rs`
//! (module `props`). The limiter is tested through the public memory backend with explicit
//! times (`KeyedLimiter::check_at`).

use proptest::prelude::*;

/// The number of cases of a property: `default`, unless `PROPTEST_CASES` says otherwise.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Bytes shown as an escaped string in failure reports.
#[derive(Clone, PartialEq, Eq)]
struct Bytes(Vec<u8>);

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

fn config(default_cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: cases(default_cases),
        // Failures are saved beside this file (`properties.proptest-regressions`) and
        // replayed first. (The default looks for a lib.rs above `tests/` and warns.)
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    }
}

// ------------------------------------------------------------------------------------------
// 1. The cookie policy rewrite
// ------------------------------------------------------------------------------------------

mod cookie_policy {
    use super::*;

    use std::time::Duration;

    use cookie::time::OffsetDateTime;
    use http::header::SET_COOKIE;
    use http::{HeaderMap, HeaderValue};
    use tower_rampart::clock::ManualClock;
    use tower_rampart::cookie_policy::{CookiePolicy, SameSite, SecureMode};

    /// The policy's clock, in seconds since the epoch.
    const NOW: i64 = 1_700_000_000;

    /// What a browser makes of the `SameSite` attributes (RFC 6265bis §5.6.7): the last one
    /// counts; a value other than Strict, Lax or None is "Default".
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Ss {
        Missing,
        Default,
        Set(u8), // 0 None, 1 Lax, 2 Strict
    }

    fn rank(s: SameSite) -> u8 {
        match s {
            SameSite::None => 0,
            SameSite::Lax => 1,
            SameSite::Strict => 2,
        }
    }

    /// How long a browser keeps the cookie (RFC 6265bis §5.6.1, §5.6.2, §5.7).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Life {
        /// `Max-Age <= 0` or an `Expires` not in the future: deletes the cookie.
        Removal,
        /// Seconds from now.
        Secs(i128),
        /// No usable lifetime attribute: a session cookie.
        Session,
    }

    /// The attributes of a `Set-Cookie` string, read the way RFC 6265bis §5.6 describes:
    /// split at `;`, name and value split at the first `=`, each trimmed of spaces and tabs.
    struct Read<'a> {
        pair: &'a str,
        /// (lower-cased name, value, raw text between the semicolons)
        attrs: Vec<(String, Option<&'a str>, &'a str)>,
    }

    fn wsp_trim(s: &str) -> &str {
        s.trim_matches(|c| c == ' ' || c == '\t')
    }

    fn read(s: &str) -> Read<'_> {
        let mut parts = s.split(';');
        let pair = parts.next().unwrap_or("");
        let attrs = parts
            .map(|raw| match raw.split_once('=') {
                Some((n, v)) => (wsp_trim(n).to_ascii_lowercase(), Some(wsp_trim(v)), raw),
                None => (wsp_trim(raw).to_ascii_lowercase(), None, raw),
            })
            .collect();
        Read { pair, attrs }
    }

    impl Read<'_> {
        fn has(&self, name: &str) -> bool {
            self.attrs.iter().any(|(n, _, _)| n == name)
        }

        fn last(&self, name: &str) -> Option<Option<&str>> {
            self.attrs
                .iter()
                .rev()
                .find(|(n, _, _)| n == name)
                .map(|(_, v, _)| *v)
        }

        fn same_site(&self) -> Ss {
            match self.last("samesite") {
                None => Ss::Missing,
                Some(v) => {
                    let v = v.unwrap_or("");
                    if v.eq_ignore_ascii_case("none") {
                        Ss::Set(0)
                    } else if v.eq_ignore_ascii_case("lax") {
                        Ss::Set(1)
                    } else if v.eq_ignore_ascii_case("strict") {
                        Ss::Set(2)
                    } else {
                        Ss::Default
                    }
                }
            }
        }

        /// The last valid `Max-Age` (`-?DIGIT+`; anything else is ignored), saturated.
        fn max_age(&self) -> Option<i128> {
            self.attrs
                .iter()
                .rev()
                .filter(|(n, _, _)| n == "max-age")
                .find_map(|(_, v, _)| {
                    let v = (*v)?;
                    let (neg, digits) = match v.strip_prefix('-') {
                        Some(d) => (true, d),
                        None => (false, v),
                    };
                    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                        return None;
                    }
                    let n = digits.bytes().fold(0i128, |n, b| {
                        (n * 10 + i128::from(b - b'0')).min(1_000_000_000_000_000_000_000)
                    });
                    Some(if neg { -n } else { n })
                })
        }

        /// The cookie's lifetime; `Expires` dates are read by the `cookie` crate.
        fn life(&self, full: &str) -> Life {
            if let Some(m) = self.max_age() {
                return if m <= 0 { Life::Removal } else { Life::Secs(m) };
            }
            // The last Expires a browser can read (unreadable ones are ignored).
            let last = self
                .attrs
                .iter()
                .rev()
                .filter(|(n, _, _)| n == "expires")
                .find_map(|(_, v, _)| v.and_then(|v| Some((v, cookie_date(v)?))));
            // A check of this test's date parser: on the IMF-fixdate the `cookie` crate
            // writes (and reads), both agree. (On other forms the crate reads less than
            // browsers, and reads `-2023` as a negative year where browsers see a delimiter.)
            if let Some((text, t)) = last
                && let Some(c) = cookie::Cookie::parse(format!("a=b; Expires={text}"))
                    .ok()
                    .and_then(|c| c.expires_datetime())
                && (0..253_402_300_800).contains(&c.unix_timestamp())
                && imf_date(c.unix_timestamp()) == text
            {
                assert_eq!(t, i128::from(c.unix_timestamp()), "{full}");
            }
            let expires = last.map(|(_, t)| t);
            match expires {
                Some(t) if t <= i128::from(NOW) => Life::Removal,
                Some(t) => Life::Secs(t - i128::from(NOW)),
                None => Life::Session,
            }
        }

        fn name(&self) -> &str {
            wsp_trim(self.pair.split_once('=').map_or("", |(n, _)| n))
        }
    }

    /// RFC 6265 §5.1.1, the cookie date algorithm browsers use, in seconds since the epoch.
    fn cookie_date(s: &str) -> Option<i128> {
        let delimiter = |c: char| matches!(c, '\t' | ' '..='/' | ';'..='@' | '['..='`' | '{'..='~');
        // `n` digits (within `min..=max`) then nothing or a non-digit and anything.
        let digits = |t: &str, min: usize, max: usize| -> Option<(u32, usize)> {
            let n = t.bytes().take_while(u8::is_ascii_digit).count();
            ((min..=max).contains(&n)).then(|| (t[..n].parse().unwrap(), n))
        };
        let (mut time, mut day, mut month, mut year) = (None, None, None, None);
        for token in s.split(delimiter).filter(|t| !t.is_empty()) {
            let hms = || -> Option<(u32, u32, u32)> {
                let (h, a) = digits(token, 1, 2)?;
                let rest = token[a..].strip_prefix(':')?;
                let (m, b) = digits(rest, 1, 2)?;
                let rest = rest[b..].strip_prefix(':')?;
                let (sec, _) = digits(rest, 1, 2)?;
                Some((h, m, sec))
            };
            if time.is_none() && hms().is_some() {
                time = hms();
            } else if day.is_none() && digits(token, 1, 2).is_some() {
                day = digits(token, 1, 2).map(|d| d.0);
            } else if month.is_none()
                && let Some(m) = [
                    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov",
                    "dec",
                ]
                .iter()
                .position(|m| {
                    token.len() >= 3 && token.as_bytes()[..3].eq_ignore_ascii_case(m.as_bytes())
                })
            {
                month = Some(m as u8 + 1);
            } else if year.is_none() && digits(token, 2, 4).is_some() {
                year = digits(token, 2, 4).map(|y| y.0);
            }
        }
        let ((h, mi, sec), day, month, mut year) = (time?, day?, month?, year?);
        if (70..=99).contains(&year) {
            year += 1900;
        } else if year <= 69 {
            year += 2000;
        }
        if !(1..=31).contains(&day) || year < 1601 || h > 23 || mi > 59 || sec > 59 {
            return None;
        }
        let month = cookie::time::Month::try_from(month).ok()?;
        let date = cookie::time::Date::from_calendar_date(year as i32, month, day as u8).ok()?;
        let t = date
            .with_hms(h as u8, mi as u8, sec as u8)
            .ok()?
            .assume_utc()
            .unix_timestamp();
        Some(i128::from(t))
    }

    fn prefixed(name: &str, prefix: &str) -> bool {
        name.len() >= prefix.len()
            && name.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    }

    /// The documented "malformed" rule: passed through untouched.
    fn malformed(bytes: &[u8]) -> bool {
        let Ok(s) = std::str::from_utf8(bytes) else {
            return true;
        };
        if bytes.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return true;
        }
        let pair = s.split(';').next().unwrap_or("");
        match pair.split_once('=') {
            None => true,
            Some((name, _)) => wsp_trim(name).is_empty(),
        }
    }

    #[derive(Clone, Debug)]
    struct Policy {
        http_only: bool,
        allow_own_name: bool,
        secure: SecureMode,
        min: SameSite,
        partition: bool,
        cap: Option<u64>,
        https: bool,
    }

    fn policy_strategy() -> impl Strategy<Value = Policy> {
        (
            any::<bool>(),
            any::<bool>(),
            prop_oneof![
                Just(SecureMode::Always),
                Just(SecureMode::WhenHttps),
                Just(SecureMode::Never)
            ],
            prop_oneof![
                Just(SameSite::None),
                Just(SameSite::Lax),
                Just(SameSite::Strict)
            ],
            any::<bool>(),
            prop_oneof![
                Just(None),
                (1u64..200).prop_map(Some),
                (1u64..2_000_000_000).prop_map(Some)
            ],
            any::<bool>(),
        )
            .prop_map(
                |(http_only, allow_own_name, secure, min, partition, cap, https)| {
                    let mut p = Policy {
                        http_only,
                        allow_own_name,
                        secure,
                        min,
                        partition,
                        cap,
                        https,
                    };
                    // The two combinations `build` refuses.
                    if p.secure == SecureMode::Never {
                        p.partition = false;
                        if p.min == SameSite::None {
                            p.min = SameSite::Lax;
                        }
                    }
                    p
                },
            )
    }

    fn build(p: &Policy, name: Option<&str>) -> CookiePolicy {
        let mut b = CookiePolicy::builder()
            .http_only(p.http_only)
            .secure(p.secure)
            .min_same_site(p.min)
            .partition_same_site_none(p.partition)
            .max_age_cap(p.cap.map(Duration::from_secs))
            .clock(ManualClock::new(NOW as u64 * 1_000_000));
        if let Some(name) = name {
            b = b.allow_script_access(name);
        }
        b.build().expect("a consistent policy")
    }

    fn is_tchar(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
    }

    fn imf_date(secs: i64) -> String {
        let t = OffsetDateTime::from_unix_timestamp(secs).unwrap();
        // The `cookie` crate writes IMF-fixdate.
        let c = cookie::Cookie::build(("a", "b"))
            .expires(t)
            .build()
            .to_string();
        c.split_once("Expires=").unwrap().1.to_owned()
    }

    fn case_variant(word: &'static str) -> impl Strategy<Value = String> {
        prop::collection::vec(any::<bool>(), word.len()).prop_map(move |up| {
            word.chars()
                .zip(up)
                .map(|(c, u)| {
                    if u {
                        c.to_ascii_uppercase()
                    } else {
                        c.to_ascii_lowercase()
                    }
                })
                .collect()
        })
    }

    fn ows() -> impl Strategy<Value = &'static str> {
        prop_oneof![4 => Just(""), 2 => Just(" "), 1 => Just("\t"), 1 => Just("  ")]
    }

    fn attribute() -> impl Strategy<Value = String> {
        let value = prop_oneof![
            case_variant("secure"),
            case_variant("httponly"),
            case_variant("partitioned"),
            (
                case_variant("samesite"),
                prop_oneof![
                    case_variant("strict"),
                    case_variant("lax"),
                    case_variant("none"),
                    Just("bogus".to_owned()),
                    Just(String::new())
                ]
            )
                .prop_map(|(k, v)| format!("{k}={v}")),
            (
                case_variant("max-age"),
                prop_oneof![
                    (-100i64..100).prop_map(|n| n.to_string()),
                    (0i64..4_000_000_000).prop_map(|n| n.to_string()),
                    Just("99999999999999999999999".to_owned()),
                    Just("-".to_owned()),
                    Just(String::new()),
                    Just("12x".to_owned()),
                    Just("+5".to_owned()),
                    // Around the policy's cap (see `at_cap`).
                    (0u8..5).prop_map(|k| format!("%M{k}"))
                ]
            )
                .prop_map(|(k, v)| format!("{k}={v}")),
            (
                case_variant("expires"),
                prop_oneof![
                    (NOW - 1_000_000..NOW + 100_000_000).prop_map(imf_date),
                    (0i64..4_000_000_000).prop_map(imf_date),
                    Just("tomorrow".to_owned()),
                    (0u8..5).prop_map(|k| format!("%E{k}"))
                ]
            )
                .prop_map(|(k, v)| format!("{k}={v}")),
            (
                case_variant("path"),
                prop_oneof![Just("/"), Just("/a"), Just(""), Just("x")]
            )
                .prop_map(|(k, v)| format!("{k}={v}")),
            (
                case_variant("domain"),
                prop_oneof![Just("example.com"), Just(".example.com"), Just("")]
            )
                .prop_map(|(k, v)| format!("{k}={v}")),
            Just("Priority=High".to_owned()),
            "[A-Za-z0-9=/ ._-]{0,12}",
        ];
        (ows(), value, ows()).prop_map(|(a, v, b)| format!("{a}{v}{b}"))
    }

    /// Well-formed cookies with random attributes (some repeated, some invalid).
    fn well_formed() -> impl Strategy<Value = Vec<u8>> {
        let prefix = prop_oneof![
            4 => Just(String::new()),
            1 => case_variant("__host-"),
            1 => case_variant("__secure-"),
            1 => case_variant("__http-"),
            1 => case_variant("__host-http-"),
        ];
        let name = "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,10}";
        let value = prop_oneof![
            "[A-Za-z0-9!#$%&'()*+./:<>?@_-]{0,16}",
            "\"[A-Za-z0-9]{0,8}\""
        ];
        (
            prefix,
            name,
            ows(),
            ows(),
            value,
            prop::collection::vec(attribute(), 0..8),
        )
            .prop_map(|(prefix, name, o1, o2, value, attrs)| {
                let mut s = format!("{o1}{prefix}{name}{o2}={value}");
                for a in attrs {
                    s.push(';');
                    s.push_str(&a);
                }
                s.into_bytes()
            })
    }

    /// Arbitrary bytes that a header value may hold, and well-formed cookies with some
    /// arbitrary bytes spliced in.
    fn any_cookie() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            3 => prop::sample::select(b"=; \t\"_-Hh/".to_vec()),
            3 => 0x20u8..0x7f,
            1 => 0x80u8..=0xff,
        ];
        prop_oneof![
            4 => well_formed(),
            2 => prop::collection::vec(byte.clone(), 0..40),
            2 => (well_formed(), prop::collection::vec((any::<prop::sample::Index>(), byte), 1..4))
                .prop_map(|(mut c, edits)| {
                    for (at, b) in edits {
                        let i = at.index(c.len() + 1);
                        c.insert(i, b);
                    }
                    c
                }),
        ]
    }

    /// Puts lifetimes around the policy's cap where the generator left a mark: `%M<k>` is a
    /// Max-Age of `cap + k - 2` seconds, `%E<k>` an Expires `cap + k - 2` seconds from now
    /// (without a cap: around zero).
    fn at_cap(p: &Policy, input: &[u8]) -> Vec<u8> {
        let cap = p.cap.map_or(0, |c| c as i64);
        let mut out = Vec::with_capacity(input.len());
        let mut i = 0;
        while i < input.len() {
            match input[i..] {
                [b'%', m @ (b'M' | b'E'), k @ b'0'..=b'4', ..] => {
                    let secs = cap + i64::from(k - b'0') - 2;
                    let text = if m == b'M' {
                        secs.to_string()
                    } else {
                        imf_date(NOW + secs)
                    };
                    out.extend_from_slice(text.as_bytes());
                    i += 3;
                }
                _ => {
                    out.push(input[i]);
                    i += 1;
                }
            }
        }
        out
    }

    /// Checks one rewrite against the oracle. `input` is a valid header value.
    fn check(p: &Policy, input: &[u8]) -> Result<(), TestCaseError> {
        let text = std::str::from_utf8(input).ok();
        let own_name = text.map(|t| read(t).name().to_owned()).filter(|n| {
            p.allow_own_name
                && !n.is_empty()
                && n.bytes().all(is_tchar)
                && !prefixed(n, "__http-")
                && !prefixed(n, "__host-http-")
        });
        let policy = build(p, own_name.as_deref());
        let mut headers = HeaderMap::new();
        headers.append(SET_COOKIE, HeaderValue::from_bytes(input).unwrap());
        policy.apply(&mut headers, p.https);
        let all: Vec<_> = headers.get_all(SET_COOKIE).iter().collect();
        prop_assert_eq!(all.len(), 1, "one header in, one out");
        let output = all[0].as_bytes().to_vec();

        if malformed(input) {
            prop_assert_eq!(&output, input, "malformed cookies pass untouched");
            return Ok(());
        }
        let before = text.unwrap();
        let after = std::str::from_utf8(&output);
        prop_assert!(after.is_ok(), "output is UTF-8");
        let after = after.unwrap();

        // Name and value: byte for byte, and as the `cookie` crate reads them.
        let (b, a) = (read(before), read(after));
        prop_assert_eq!(b.pair, a.pair, "the name=value pair is never touched");
        if let Ok(cb) = cookie::Cookie::parse(before) {
            let ca = cookie::Cookie::parse(after);
            prop_assert!(ca.is_ok(), "the cookie crate reads the output: {:?}", ca);
            let ca = ca.unwrap();
            prop_assert_eq!((cb.name(), cb.value()), (ca.name(), ca.value()));
            // Flags the `cookie` crate reads are never removed.
            prop_assert!(cb.secure() != Some(true) || ca.secure() == Some(true));
            prop_assert!(cb.http_only() != Some(true) || ca.http_only() == Some(true));
            prop_assert!(cb.partitioned() != Some(true) || ca.partitioned() == Some(true));
        }
        let name = b.name();
        let host = prefixed(name, "__host-");
        let http_prefix = prefixed(name, "__http-") || prefixed(name, "__host-http-");
        let secure_prefix = prefixed(name, "__secure-");

        // Nothing but the documented edits: every attribute of the input is still there, in
        // order, with its spelling, except the SameSite and Max-Age values the policy raised
        // or lowered and a __Host- cookie's Path and Domain.
        let kept: Vec<&str> = b
            .attrs
            .iter()
            .filter(|(n, _, _)| {
                n != "samesite" && n != "max-age" && !(host && (n == "path" || n == "domain"))
            })
            .map(|(_, _, raw)| *raw)
            .collect();
        let mut out_raw = a.attrs.iter().map(|(_, _, raw)| *raw);
        for k in &kept {
            prop_assert!(out_raw.any(|r| r == *k), "attribute {:?} kept in order", k);
        }
        prop_assert_eq!(
            a.attrs.iter().filter(|(n, _, _)| n == "samesite").count(),
            b.attrs
                .iter()
                .filter(|(n, _, _)| n == "samesite")
                .count()
                .max(usize::from(a.has("samesite")))
        );
        if !host {
            prop_assert_eq!(
                a.attrs
                    .iter()
                    .filter(|(n, _, _)| n == "path" || n == "domain")
                    .map(|(_, _, r)| *r)
                    .collect::<Vec<_>>(),
                b.attrs
                    .iter()
                    .filter(|(n, _, _)| n == "path" || n == "domain")
                    .map(|(_, _, r)| *r)
                    .collect::<Vec<_>>(),
                "Path and Domain only change for __Host- cookies"
            );
        }

        // Flags: never removed; added where the policy says.
        for flag in ["secure", "httponly", "partitioned"] {
            prop_assert!(!b.has(flag) || a.has(flag), "{} never removed", flag);
        }
        let readable = own_name.as_deref() == Some(name);
        if http_prefix || (p.http_only && !readable) {
            prop_assert!(a.has("httponly"), "HttpOnly added");
        }
        let ss_after = a.same_site();
        let must_be_secure = b.has("partitioned")
            || host
            || secure_prefix
            || http_prefix
            || match p.secure {
                SecureMode::Always => true,
                SecureMode::WhenHttps => p.https,
                SecureMode::Never => false,
            };
        if must_be_secure {
            prop_assert!(a.has("secure"), "Secure added");
        }
        if !must_be_secure && !b.has("secure") && a.has("secure") {
            // Added only because the cookie leaves with SameSite=None.
            prop_assert_eq!(ss_after, Ss::Set(0), "Secure added without a reason");
        }
        if a.has("partitioned") && !b.has("partitioned") {
            prop_assert!(
                p.partition && ss_after == Ss::Set(0),
                "Partitioned without a reason"
            );
        }

        // SameSite: never loosened, at least the minimum, None only with Secure.
        let min = rank(p.min);
        match (b.same_site(), ss_after) {
            (Ss::Set(x), Ss::Set(y)) => {
                prop_assert!(y >= x && y >= min, "SameSite {} -> {}", x, y)
            }
            (Ss::Set(_), other) => prop_assert!(false, "SameSite dropped: {:?}", other),
            (before, after) if min == 0 => {
                prop_assert_eq!(
                    before,
                    after,
                    "with a minimum of None, no SameSite is added"
                )
            }
            (_, Ss::Set(y)) => prop_assert!(y >= min),
            (_, other) => prop_assert!(false, "SameSite left at {:?}", other),
        }
        if ss_after == Ss::Set(0) {
            prop_assert!(a.has("secure"), "SameSite=None needs Secure");
            if p.partition {
                prop_assert!(a.has("partitioned"), "SameSite=None partitioned");
            }
        }
        if a.has("partitioned") {
            prop_assert!(a.has("secure"), "Partitioned needs Secure");
        }

        // Lifetime: never longer, removals stay removals, session cookies stay session
        // cookies, and nothing outlives the cap.
        match (b.life(before), a.life(after)) {
            (Life::Removal, after) => prop_assert_eq!(after, Life::Removal),
            (Life::Session, after) => prop_assert_eq!(after, Life::Session),
            (Life::Secs(x), Life::Secs(y)) => {
                prop_assert!(y <= x, "lifetime {} -> {}", x, y);
                if let Some(cap) = p.cap {
                    prop_assert!(y <= i128::from(cap), "lifetime {} above the cap {}", y, cap);
                    prop_assert!(y == x || y == i128::from(cap), "lowered to the cap");
                }
            }
            (before, after) => prop_assert!(false, "lifetime {:?} -> {:?}", before, after),
        }

        // __Host- cookies: Secure, Path=/ and no Domain, or browsers drop them.
        if host {
            prop_assert_eq!(a.last("path"), Some(Some("/")));
            prop_assert!(!a.has("domain"));
        }

        // What comes out complies: a second pass leaves it alone.
        let mut again = HeaderMap::new();
        again.append(SET_COOKIE, HeaderValue::from_bytes(&output).unwrap());
        policy.apply(&mut again, p.https);
        prop_assert_eq!(again.get(SET_COOKIE).unwrap().as_bytes(), &output[..]);
        Ok(())
    }

    proptest! {
        #![proptest_config(config(2000))]

        /// Any `Set-Cookie` in: the original untouched, or the same cookie (as the `cookie`
        /// crate and an RFC 6265bis reading see it) with only tightened attributes.
        #[test]
        fn rewrite_only_tightens(
            p in policy_strategy(),
            input in any_cookie()
                .prop_filter("a header value", |c| HeaderValue::from_bytes(c).is_ok())
                .prop_map(Bytes),
        ) {
            check(&p, &at_cap(&p, &input.0))?;
        }
    }
}

// ------------------------------------------------------------------------------------------
// 2. X-Forwarded-For / Forwarded
// ------------------------------------------------------------------------------------------

mod forwarding {
    use super::*;

    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    use http::{HeaderValue, Request};
    use tower_rampart::net::{ClientAddrError, IpCidr, PeerAddr, ProxyHeader, TrustedProxies};

    /// A trusted range as (address, prefix length), as generated.
    type Range = (IpAddr, u8);

    /// Whether `ip` is in one of `ranges`: the first `prefix` bits agree. IPv4-mapped IPv6
    /// addresses and ranges count as IPv4.
    fn trusted(ranges: &[Range], ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ranges.iter().any(|&(net, prefix)| {
            let (net, prefix) = match net {
                IpAddr::V6(v6) if prefix >= 96 && v6.to_ipv4_mapped().is_some() => {
                    (IpAddr::V4(v6.to_ipv4_mapped().unwrap()), prefix - 96)
                }
                other => (other, prefix),
            };
            let (a, b, width) = match (net, ip) {
                (IpAddr::V4(n), IpAddr::V4(i)) => {
                    (u128::from(n.to_bits()), u128::from(i.to_bits()), 32)
                }
                (IpAddr::V6(n), IpAddr::V6(i)) => (n.to_bits(), i.to_bits(), 128),
                _ => return false,
            };
            // Compare bit by bit, most significant first.
            (0..u32::from(prefix)).all(|k| {
                let bit = width - 1 - k;
                (a >> bit) & 1 == (b >> bit) & 1
            })
        })
    }

    fn is_port(p: &str) -> bool {
        let digits = (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit());
        let obfuscated = p.len() >= 2
            && p.starts_with('_')
            && p[1..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        digits || obfuscated
    }

    /// A node as documented: `192.0.2.1`, `192.0.2.1:80`, `2001:db8::1`, `[2001:db8::1]`,
    /// `[2001:db8::1]:80`; ports of 1-5 digits or an obfuscated `_name`.
    fn node(s: &str) -> Option<IpAddr> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Some(ip.to_canonical());
        }
        if let Some(rest) = s.strip_prefix('[') {
            let close = rest.find(']')?;
            let v6: Ipv6Addr = rest[..close].parse().ok()?;
            let tail = &rest[close + 1..];
            return (tail.is_empty() || tail.strip_prefix(':').is_some_and(is_port))
                .then(|| IpAddr::V6(v6).to_canonical());
        }
        let (host, port) = s.rsplit_once(':')?;
        let v4: Ipv4Addr = host.parse().ok()?;
        is_port(port).then_some(IpAddr::V4(v4))
    }

    fn trim_ows(mut s: &[u8]) -> &[u8] {
        while let [b' ' | b'\t', rest @ ..] = s {
            s = rest;
        }
        while let [rest @ .., b' ' | b'\t'] = s {
            s = rest;
        }
        s
    }

    /// X-Forwarded-For: comma-separated nodes, across all header lines in order.
    fn xff_hops(values: &[Vec<u8>]) -> Vec<Option<IpAddr>> {
        values
            .iter()
            .flat_map(|v| v.split(|&b| b == b','))
            .map(trim_ows)
            .filter(|e| !e.is_empty())
            .map(|e| std::str::from_utf8(e).ok().and_then(node))
            .collect()
    }

    fn tchar(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
    }

    /// One `Forwarded` element (RFC 7239 §4, with optional whitespace around pairs): the
    /// `for=` node, or `None` when the element is broken, lacks `for=`, or repeats `for` or
    /// `proto`. `Err(())` for an element without any pair (skipped).
    fn forwarded_element(e: &[u8]) -> Result<Option<IpAddr>, ()> {
        let mut pairs: Vec<(&[u8], &[u8])> = Vec::new();
        let mut i = 0;
        let ows = |i: &mut usize| {
            while *i < e.len() && (e[*i] == b' ' || e[*i] == b'\t') {
                *i += 1;
            }
        };
        loop {
            ows(&mut i);
            if i == e.len() {
                break;
            }
            if e[i] == b';' {
                i += 1; // an empty pair
                continue;
            }
            let k = i;
            while i < e.len() && tchar(e[i]) {
                i += 1;
            }
            if i == k || i == e.len() || e[i] != b'=' {
                return Ok(None);
            }
            let key = &e[k..i];
            i += 1;
            let value;
            if i < e.len() && e[i] == b'"' {
                i += 1;
                let start = i;
                loop {
                    match e.get(i) {
                        None => return Ok(None), // unclosed
                        Some(b'"') => break,
                        Some(b'\\') if i + 1 < e.len() => i += 2,
                        Some(b'\\') => return Ok(None),
                        Some(_) => i += 1,
                    }
                }
                value = &e[start..i];
                i += 1;
            } else {
                let start = i;
                while i < e.len() && tchar(e[i]) {
                    i += 1;
                }
                if i == start {
                    return Ok(None);
                }
                value = &e[start..i];
            }
            pairs.push((key, value));
            ows(&mut i);
            if i < e.len() {
                if e[i] != b';' {
                    return Ok(None);
                }
                i += 1;
            }
        }
        if pairs.is_empty() {
            return Err(());
        }
        let named = |n: &str| {
            pairs
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(n.as_bytes()))
                .map(|(_, v)| *v)
                .collect::<Vec<_>>()
        };
        let (fors, protos) = (named("for"), named("proto"));
        if fors.len() != 1 || protos.len() > 1 {
            return Ok(None);
        }
        Ok(std::str::from_utf8(fors[0]).ok().and_then(node))
    }

    /// Forwarded: elements separated by every `,` (a quoted string never crosses one, as
    /// documented), across all header lines in order.
    fn forwarded_hops(values: &[Vec<u8>]) -> Vec<Option<IpAddr>> {
        values
            .iter()
            .flat_map(|v| v.split(|&b| b == b','))
            .filter_map(|e| forwarded_element(e).ok())
            .collect()
    }

    /// The documented walk: an untrusted peer is the client; otherwise walk right to left
    /// over trusted addresses; the first hop that is not one is the client if it is an
    /// address, and garbage otherwise; all trusted: the leftmost; no hops: the peer.
    fn walk(ranges: &[Range], peer: IpAddr, hops: &[Option<IpAddr>]) -> Result<IpAddr, ()> {
        let peer = peer.to_canonical();
        if !trusted(ranges, peer) || hops.is_empty() {
            return Ok(peer);
        }
        for hop in hops.iter().rev() {
            match hop {
                Some(ip) if trusted(ranges, *ip) => continue,
                Some(ip) => return Ok(*ip),
                None => return Err(()),
            }
        }
        Ok(hops[0].unwrap())
    }

    fn proxies(ranges: &[Range], header: ProxyHeader) -> TrustedProxies {
        TrustedProxies::new(ranges.iter().map(|&(a, p)| IpCidr::new(a, p).unwrap()))
            .with_header(header)
    }

    fn request(peer: IpAddr, name: &str, values: &[Vec<u8>]) -> Request<()> {
        let mut req = Request::new(());
        for v in values {
            req.headers_mut().append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        req.extensions_mut()
            .insert(PeerAddr(SocketAddr::new(peer, 40_000)));
        req
    }

    fn ranges() -> impl Strategy<Value = Vec<Range>> {
        let range = prop_oneof![
            3 => (any::<u32>(), prop_oneof![0u8..=32, 8u8..=24]).prop_map(|(a, p)| (IpAddr::V4(Ipv4Addr::from_bits(a)), p)),
            2 => (any::<u128>(), prop_oneof![0u8..=128, 8u8..=64]).prop_map(|(a, p)| (IpAddr::V6(Ipv6Addr::from_bits(a)), p)),
            1 => (any::<u32>(), 96u8..=128).prop_map(|(a, p)| (IpAddr::V6(Ipv4Addr::from_bits(a).to_ipv6_mapped()), p)),
        ];
        prop::collection::vec(range, 1..4)
    }

    /// An address: inside one of the ranges or anywhere.
    fn address(ranges: Vec<Range>) -> BoxedStrategy<IpAddr> {
        prop_oneof![
            inside(ranges),
            any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from_bits(a))),
            any::<u128>().prop_map(|a| IpAddr::V6(Ipv6Addr::from_bits(a))),
        ]
        .boxed()
    }

    /// An address inside one of the ranges (random host bits).
    fn inside(ranges: Vec<Range>) -> BoxedStrategy<IpAddr> {
        let n = ranges.len();
        (0..n, any::<u128>())
            .prop_map(move |(i, bits)| {
                let (net, prefix) = ranges[i];
                match net {
                    IpAddr::V4(v4) => {
                        let host = (bits as u32).checked_shr(u32::from(prefix)).unwrap_or(0);
                        IpAddr::V4(Ipv4Addr::from_bits(v4.to_bits() | host))
                    }
                    IpAddr::V6(v6) => {
                        let host = bits.checked_shr(u32::from(prefix)).unwrap_or(0);
                        IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() | host))
                    }
                }
            })
            .boxed()
    }

    /// An address as a proxy may write it in X-Forwarded-For.
    fn xff_text(ip: IpAddr, form: u8, port: u16) -> String {
        match (ip, form % 4) {
            (IpAddr::V4(v4), 0) => v4.to_string(),
            (IpAddr::V4(v4), 1) => format!("{v4}:{port}"),
            (IpAddr::V4(v4), 2) => v4.to_ipv6_mapped().to_string(),
            (IpAddr::V4(v4), _) => format!("[{}]:{port}", v4.to_ipv6_mapped()),
            (IpAddr::V6(v6), 0 | 2) => v6.to_string(),
            (IpAddr::V6(v6), 1) => format!("[{v6}]"),
            (IpAddr::V6(v6), _) => format!("[{v6}]:{port}"),
        }
    }

    /// An address as a `Forwarded` node (quoted when it is not a token).
    fn forwarded_text(ip: IpAddr, form: u8, port: u16) -> String {
        match (ip, form % 4) {
            (IpAddr::V4(v4), 0 | 2) => v4.to_string(),
            (IpAddr::V4(v4), 1) => format!("\"{v4}:{port}\""),
            (IpAddr::V4(v4), _) => format!("\"{v4}:_p{port}\""),
            (IpAddr::V6(v6), 0 | 2) => format!("\"[{v6}]\""),
            (IpAddr::V6(v6), _) => format!("\"[{v6}]:{port}\""),
        }
    }

    #[derive(Clone, Debug)]
    struct Chain {
        ranges: Vec<Range>,
        peer: IpAddr,
        /// The addresses, left (client side) to right (the one the peer appended).
        hops: Vec<IpAddr>,
        /// Per hop: how it is written, its port, the extra parameters of its element.
        forms: Vec<(u8, u16, u8)>,
        /// Where the header is split into several lines, and the whitespace used.
        splits: Vec<bool>,
        spaces: Vec<u8>,
    }

    fn chain() -> impl Strategy<Value = Chain> {
        ranges().prop_flat_map(|ranges| {
            let addr = address(ranges.clone());
            // A client part of any addresses, then a suffix of trusted proxies.
            let trusted_addr = inside(ranges.clone());
            (
                Just(ranges.clone()),
                trusted_addr.clone(),
                prop::collection::vec(addr, 0..5),
                prop::collection::vec(trusted_addr, 0..4),
                prop::collection::vec((any::<u8>(), 1u16..=65_535, any::<u8>()), 9),
                prop::collection::vec(any::<bool>(), 9),
                prop::collection::vec(0u8..4, 9),
            )
                .prop_map(|(ranges, peer, mut hops, suffix, forms, splits, spaces)| {
                    hops.extend(suffix);
                    Chain {
                        ranges,
                        peer,
                        hops,
                        forms,
                        splits,
                        spaces,
                    }
                })
        })
    }

    /// Renders the hops, each with `text`, joined by commas with some whitespace, split over
    /// header lines where `splits` says.
    fn render(c: &Chain, text: impl Fn(usize, IpAddr) -> String) -> Vec<Vec<u8>> {
        let ws = |i: usize| ["", " ", "  ", "\t"][usize::from(c.spaces[i])];
        let mut lines = vec![String::new()];
        for (i, ip) in c.hops.iter().enumerate() {
            let line = lines.last_mut().unwrap();
            if !line.is_empty() {
                line.push(',');
                line.push_str(ws(i));
            }
            line.push_str(&text(i, *ip));
            if c.splits[i] && i + 1 < c.hops.len() {
                lines.push(String::new());
            }
        }
        lines.into_iter().map(String::into_bytes).collect()
    }

    /// The naive model of a well-formed chain: the rightmost untrusted address; all trusted:
    /// the leftmost; no hops: the peer.
    fn expected(c: &Chain) -> IpAddr {
        let hops: Vec<IpAddr> = c.hops.iter().map(|ip| ip.to_canonical()).collect();
        hops.iter()
            .rev()
            .find(|ip| !trusted(&c.ranges, **ip))
            .or(hops.first())
            .copied()
            .unwrap_or(c.peer.to_canonical())
    }

    /// Some garbage: pieces of forwarding syntax, addresses and random bytes.
    fn garbage(ranges: Vec<Range>) -> impl Strategy<Value = Vec<Vec<u8>>> {
        let piece = prop_oneof![
            3 => address(ranges).prop_flat_map(|ip| (any::<u8>(), 1u16..9999).prop_map(move |(f, p)| {
                if f % 2 == 0 { xff_text(ip, f / 2, p) } else { forwarded_text(ip, f / 2, p) }.into_bytes()
            })),
            3 => prop::sample::select(vec![
                ",", ", ", ";", "=", "\"", "\\", " ", "\t", "for=", "For=", "proto=https",
                "by=x", "unknown", "_hidden", "[", "]", ":", ":80", "\u{ff}", "::", ".",
            ]).prop_map(|s| s.as_bytes().to_vec()),
            1 => prop::collection::vec(0x20u8..=0xff, 1..4),
            1 => Just(vec![0xff]),
        ];
        let line = prop::collection::vec(piece, 0..12).prop_map(|p| p.concat());
        prop::collection::vec(line, 1..3)
    }

    /// Whether `ip` is written somewhere in `values` (as an address `std` reads, possibly
    /// IPv4-mapped).
    fn present(values: &[Vec<u8>], ip: IpAddr) -> bool {
        values.iter().any(|v| {
            (0..v.len()).any(|i| {
                (i + 1..=v.len()).any(|j| {
                    std::str::from_utf8(&v[i..j])
                        .ok()
                        .and_then(|s| s.parse::<IpAddr>().ok())
                        .is_some_and(|x| x.to_canonical() == ip)
                })
            })
        })
    }

    fn check_garbage(
        ranges: &[Range],
        peer: IpAddr,
        values: &[Vec<u8>],
        header: ProxyHeader,
    ) -> Result<(), TestCaseError> {
        let (name, hops) = match header {
            ProxyHeader::XForwardedFor => ("x-forwarded-for", xff_hops(values)),
            _ => ("forwarded", forwarded_hops(values)),
        };
        let req = request(peer, name, values);
        let got = proxies(ranges, header).client_addr(&req);
        let peer = peer.to_canonical();
        match got {
            Ok(ip) if trusted(ranges, ip) => {
                // Only when every hop is a trusted address (then: the leftmost), or there
                // are none (then: the trusted peer).
                prop_assert!(
                    hops.iter().all(|h| h.is_some_and(|h| trusted(ranges, h))),
                    "a trusted address {} for a chain with garbage or clients: {:?}",
                    ip,
                    hops
                );
                prop_assert_eq!(ip, hops.first().map_or(peer, |h| h.unwrap()));
            }
            Ok(ip) => prop_assert!(
                ip == peer || present(values, ip),
                "{} is neither the peer nor in the header",
                ip
            ),
            Err(e) => prop_assert_eq!(e, ClientAddrError::Unusable),
        }
        prop_assert_eq!(
            got.map_err(|_| ()),
            walk(ranges, peer, &hops),
            "hops {:?}",
            hops
        );
        Ok(())
    }

    proptest! {
        #![proptest_config(config(2500))]

        /// Garbage in X-Forwarded-For never yields a trusted address: the answer is an
        /// error, the peer, or an untrusted address written in the header; and it is what
        /// the naive model of the documented walk says.
        #[test]
        fn xff_garbage_never_yields_a_trusted_address(
            (ranges, peer, values) in ranges().prop_flat_map(|r| {
                (Just(r.clone()), address(r.clone()), garbage(r))
            }).prop_filter("header values", |(_, _, v)| v.iter().all(|v| HeaderValue::from_bytes(v).is_ok()))
              .prop_map(|(r, p, v)| (r, p, v.into_iter().map(Bytes).collect::<Vec<_>>())),
        ) {
            let values: Vec<Vec<u8>> = values.into_iter().map(|b| b.0).collect();
            check_garbage(&ranges, peer, &values, ProxyHeader::XForwardedFor)?;
        }

        /// The same for `Forwarded`.
        #[test]
        fn forwarded_garbage_never_yields_a_trusted_address(
            (ranges, peer, values) in ranges().prop_flat_map(|r| {
                (Just(r.clone()), address(r.clone()), garbage(r))
            }).prop_filter("header values", |(_, _, v)| v.iter().all(|v| HeaderValue::from_bytes(v).is_ok()))
              .prop_map(|(r, p, v)| (r, p, v.into_iter().map(Bytes).collect::<Vec<_>>())),
        ) {
            let values: Vec<Vec<u8>> = values.into_iter().map(|b| b.0).collect();
            check_garbage(&ranges, peer, &values, ProxyHeader::Forwarded)?;
        }

        /// A well-formed chain (random IPv4/IPv6 addresses, a trusted suffix of proxies),
        /// written as X-Forwarded-For and as Forwarded, gives back the rightmost untrusted
        /// address.
        #[test]
        fn well_formed_chains_round_trip(c in chain()) {
            let want = expected(&c);
            let xff = render(&c, |i, ip| xff_text(ip, c.forms[i].0, c.forms[i].1));
            let req = request(c.peer, "x-forwarded-for", &xff);
            let p = proxies(&c.ranges, ProxyHeader::XForwardedFor);
            prop_assert_eq!(p.client_addr(&req), Ok(want), "X-Forwarded-For {:?}", xff.iter().map(|v| String::from_utf8_lossy(v)).collect::<Vec<_>>());

            let fwd = render(&c, |i, ip| {
                let (form, port, extra) = c.forms[i];
                let node = format!("for={}", forwarded_text(ip, form, port));
                let ws = if extra & 8 != 0 { " " } else { "" };
                match extra % 4 {
                    0 => node,
                    1 => format!("{node}{ws};{ws}proto=https"),
                    2 => format!("by=\"[2001:db8::{port:x}]\";{node};host=example.com"),
                    _ => format!("proto=http;{node};by=_proxy{port}"),
                }
            });
            let req = request(c.peer, "forwarded", &fwd);
            let p = proxies(&c.ranges, ProxyHeader::Forwarded);
            prop_assert_eq!(p.client_addr(&req), Ok(want), "Forwarded {:?}", fwd.iter().map(|v| String::from_utf8_lossy(v)).collect::<Vec<_>>());
        }
    }
}

// ------------------------------------------------------------------------------------------
// 3. Correlation ids
// ------------------------------------------------------------------------------------------

mod correlation {
    use super::*;

    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use http::{HeaderValue, Request, Response};
    use tower::{Layer, ServiceExt, service_fn};
    use tower_rampart::correlation::{CorrelationId, CorrelationIdLayer};

    /// The documented rule, written out: 1 to 128 bytes, each a letter, a digit, `.`, `_`,
    /// `:` or `-`.
    fn valid_id(b: &[u8]) -> bool {
        const ALLOWED: &[u8] =
            b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-";
        (1..=128).contains(&b.len()) && b.iter().all(|c| ALLOWED.contains(c))
    }

    /// W3C `traceparent` as documented: `version-traceid-parentid-flags`, lowercase hex of
    /// 2, 32, 16 and 2 digits, version not `ff`, ids not all zero; versions above `00` may
    /// carry more fields after the flags. The answer is the trace id.
    fn trace_id(b: &[u8]) -> Option<&[u8]> {
        let hex =
            |s: &[u8], n: usize| s.len() == n && s.iter().all(|c| b"0123456789abcdef".contains(c));
        let fields: Vec<&[u8]> = b.splitn(5, |&c| c == b'-').collect();
        if fields.len() < 4 {
            return None;
        }
        let (version, trace, parent) = (fields[0], fields[1], fields[2]);
        let flags = fields[3];
        let ok = hex(version, 2)
            && version != b"ff"
            && hex(trace, 32)
            && hex(parent, 16)
            && hex(flags, 2)
            && trace.iter().any(|&c| c != b'0')
            && parent.iter().any(|&c| c != b'0')
            && (fields.len() == 4 || version != b"00");
        ok.then_some(trace)
    }

    fn candidate() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            3 => "[A-Za-z0-9._:-]{1,130}".prop_map(String::into_bytes),
            1 => "[A-Za-z0-9._:-]{126,130}".prop_map(String::into_bytes),
            2 => ("[A-Za-z0-9._:-]{0,20}", "[ -~\t]", "[A-Za-z0-9._:-]{0,20}")
                .prop_map(|(a, b, c)| format!("{a}{b}{c}").into_bytes()),
            1 => prop::collection::vec(prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff], 0..20),
        ]
    }

    fn traceparent() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            (
                prop_oneof!["00", "01", "fe", "ff", "[0-9a-f]{2}", "0G"],
                prop_oneof![4 => "[0-9a-f]{32}", 1 => Just("0".repeat(32)), 1 => "[0-9a-fA-F]{31,33}"],
                prop_oneof![4 => "[0-9a-f]{16}", 1 => Just("0".repeat(16))],
                prop_oneof![4 => "[0-9a-f]{2}", 1 => "[0-9a-f]{3}"],
                prop_oneof![4 => Just(""), 1 => Just("-"), 1 => Just("-x"), 1 => Just("x")],
            )
                .prop_map(|(v, t, p, f, tail)| format!("{v}-{t}-{p}-{f}{tail}").into_bytes()),
            candidate(),
        ]
    }

    /// (values of x-correlation-id, of x-request-id, of traceparent)
    type Headers = (Vec<Bytes>, Vec<Bytes>, Vec<Bytes>);

    fn headers() -> impl Strategy<Value = Headers> {
        let some = |s: BoxedStrategy<Vec<u8>>| {
            prop_oneof![
                2 => Just(vec![]),
                4 => s.clone().prop_map(|v| vec![Bytes(v)]),
                1 => prop::collection::vec(s.prop_map(Bytes), 2..3),
            ]
        };
        (
            some(candidate().boxed()),
            some(candidate().boxed()),
            some(traceparent().boxed()),
        )
            .prop_filter("header values", |(a, b, c)| {
                a.iter()
                    .chain(b)
                    .chain(c)
                    .all(|v| HeaderValue::from_bytes(&v.0).is_ok())
            })
    }

    /// The id the layer must keep: the first of the id headers present exactly once with a
    /// valid id, else the trace id of a single valid traceparent; `None`: a fresh one.
    fn expected(h: &Headers) -> Option<Vec<u8>> {
        for values in [&h.0, &h.1] {
            if let [one] = values.as_slice()
                && valid_id(&one.0)
            {
                return Some(one.0.clone());
            }
        }
        match h.2.as_slice() {
            [one] => trace_id(&one.0).map(<[u8]>::to_vec),
            _ => None,
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    proptest! {
        #![proptest_config(config(1500))]

        /// Accepted ids satisfy the rule written above, rejected ones violate it.
        #[test]
        fn parse_accepts_exactly_the_documented_ids(id in candidate().prop_map(Bytes)) {
            let id = id.0;
            if let Ok(value) = HeaderValue::from_bytes(&id) {
                let parsed = CorrelationId::from_header(&value);
                prop_assert_eq!(parsed.is_some(), valid_id(&id));
                if let Some(p) = parsed {
                    prop_assert_eq!(p.as_str().as_bytes(), &id[..]);
                    prop_assert_eq!(p.header_value(), &value);
                }
            }
            if let Ok(text) = std::str::from_utf8(&id) {
                let parsed = CorrelationId::parse(text);
                prop_assert_eq!(parsed.is_some(), valid_id(&id));
                if let Some(p) = parsed {
                    prop_assert_eq!(p.as_str(), text);
                }
            }
        }

        /// A `traceparent` alone: its trace id is kept exactly when it is well formed.
        #[test]
        fn traceparent_trace_ids_follow_the_documented_format(tp in traceparent().prop_map(Bytes)) {
            let Ok(value) = HeaderValue::from_bytes(&tp.0) else {
                return Ok(());
            };
            let layer = CorrelationIdLayer::new()
                .access_log(false)
                .make_id(|| CorrelationId::parse("minted").unwrap());
            let svc = layer.layer(service_fn(|_req: Request<()>| async {
                Ok::<_, Infallible>(Response::new(()))
            }));
            let mut req = Request::new(());
            req.headers_mut().insert("traceparent", value);
            let res = runtime().block_on(svc.oneshot(req)).unwrap();
            let want = trace_id(&tp.0).unwrap_or(b"minted");
            prop_assert_eq!(res.headers()["x-correlation-id"].as_bytes(), want);
        }

        /// Through the layer: the id the handler sees, the request header and the echoed
        /// response header are the incoming id when the model accepts it, and a freshly made
        /// one otherwise.
        #[test]
        fn the_layer_keeps_valid_ids_and_replaces_the_rest(h in headers()) {
            let minted = Arc::new(AtomicU64::new(0));
            let counter = minted.clone();
            let layer = CorrelationIdLayer::new().access_log(false).make_id(move || {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                CorrelationId::parse(&format!("minted-{n}")).unwrap()
            });
            let svc = layer.layer(service_fn(|req: Request<()>| async move {
                let seen = req.extensions().get::<CorrelationId>().cloned();
                let header = req.headers().get("x-correlation-id").cloned();
                Ok::<_, Infallible>(Response::new((seen, header)))
            }));
            let mut req = Request::new(());
            for (name, values) in [("x-correlation-id", &h.0), ("x-request-id", &h.1), ("traceparent", &h.2)] {
                for v in values {
                    req.headers_mut().append(name, HeaderValue::from_bytes(&v.0).unwrap());
                }
            }
            let res = runtime().block_on(svc.oneshot(req)).unwrap();
            let want = expected(&h);
            let made = minted.load(Ordering::SeqCst);
            let want = match want {
                Some(id) => {
                    prop_assert_eq!(made, 0, "no id made when one is kept");
                    id
                }
                None => {
                    prop_assert_eq!(made, 1, "one id made");
                    b"minted-0".to_vec()
                }
            };
            let echoed = res.headers().get("x-correlation-id").map(|v| v.as_bytes().to_vec());
            prop_assert_eq!(echoed.as_deref(), Some(&want[..]), "echoed");
            let (seen, header) = res.into_body();
            prop_assert_eq!(seen.map(|id| id.as_str().as_bytes().to_vec()), Some(want.clone()));
            prop_assert_eq!(header.map(|v| v.as_bytes().to_vec()), Some(want));
        }
    }
}

// ------------------------------------------------------------------------------------------
// 4. Quota strings
// ------------------------------------------------------------------------------------------

mod quota {
    use super::*;

    use std::time::Duration;

    use tower_rampart::rate_limit::{MAX_COUNT, Meaning, Quota};

    const US: u128 = 1;
    const MS: u128 = 1_000;
    const SEC: u128 = 1_000_000;
    const MIN: u128 = 60 * SEC;
    const HOUR: u128 = 60 * MIN;
    const DAY: u128 = 24 * HOUR;

    /// The documented units, singular and plural, any case.
    fn unit(word: &str) -> Option<u128> {
        const UNITS: [(&[&str], u128); 6] = [
            (&["us", "usec", "usecs", "microsecond", "microseconds"], US),
            (&["ms", "msec", "msecs", "millisecond", "milliseconds"], MS),
            (&["s", "sec", "secs", "second", "seconds"], SEC),
            (&["m", "min", "mins", "minute", "minutes"], MIN),
            (&["h", "hr", "hrs", "hour", "hours"], HOUR),
            (&["d", "day", "days"], DAY),
        ];
        UNITS
            .iter()
            .find(|(names, _)| names.iter().any(|n| n.eq_ignore_ascii_case(word)))
            .map(|(_, us)| *us)
    }

    /// A number of decimal digits, saturated far above anything valid.
    fn number(digits: &str) -> u128 {
        digits
            .bytes()
            .fold(0u128, |n, b| (n * 10 + u128::from(b - b'0')).min(1 << 100))
    }

    fn strip_ws(s: &str) -> &str {
        s.trim_start_matches(char::is_whitespace)
    }

    fn leading_digits(s: &str) -> (&str, &str) {
        let n = s.bytes().take_while(u8::is_ascii_digit).count();
        s.split_at(n)
    }

    /// The documented grammar, `<count>/[<n>]<unit>` or `<count> per [<n>] <unit>`, with
    /// whitespace allowed around every part (exactly one space on either side of `per`):
    /// (count, window in microseconds), before the range checks.
    fn grammar(s: &str) -> Option<(u128, u128)> {
        let s = strip_ws(s);
        let (count, rest) = leading_digits(s);
        if count.is_empty() {
            return None;
        }
        let rest = strip_ws(rest);
        let rest = if let Some(r) = rest.strip_prefix('/') {
            r
        } else {
            // `rest` started after the whitespace; the space before `per` is part of it.
            let before = &s[count.len()..];
            let spaces = before.len() - rest.len();
            if spaces == 0 || !before[..spaces].ends_with(' ') {
                return None;
            }
            let word = rest.as_bytes().get(..4)?;
            if !word[..3].eq_ignore_ascii_case(b"per") || word[3] != b' ' {
                return None;
            }
            &rest[4..]
        };
        let rest = strip_ws(rest);
        let (n, rest) = leading_digits(rest);
        let n = if n.is_empty() { 1 } else { number(n) };
        let word = rest.trim_matches(char::is_whitespace);
        Some((number(count), n.saturating_mul(unit(word)?)))
    }

    /// The grammar and the documented ranges: a count of 1 to 10^9, a window of 1 ms to
    /// 366 days.
    /// Every unit word the quota grammar documents.
    const UNIT_WORDS: &[&str] = &[
        "us",
        "usec",
        "usecs",
        "microsecond",
        "microseconds",
        "ms",
        "msec",
        "msecs",
        "millisecond",
        "milliseconds",
        "s",
        "sec",
        "secs",
        "second",
        "seconds",
        "m",
        "min",
        "mins",
        "minute",
        "minutes",
        "h",
        "hr",
        "hrs",
        "hour",
        "hours",
        "d",
        "day",
        "days",
    ];

    fn model(s: &str) -> Option<Quota> {
        let (count, window) = grammar(s)?;
        let ok = (1..=u128::from(MAX_COUNT)).contains(&count) && (MS..=366 * DAY).contains(&window);
        ok.then(|| Quota::window(count as u32, Duration::from_micros(window as u64)))
    }

    fn ws() -> impl Strategy<Value = &'static str> {
        prop_oneof![6 => Just(""), 3 => Just(" "), 1 => Just("  "), 1 => Just("\t"), 1 => Just("\u{a0}"), 1 => Just("\n")]
    }

    /// Strings near the grammar, and arbitrary ones.
    fn quota_string() -> impl Strategy<Value = String> {
        let unit = prop_oneof![
            prop::sample::select(
                UNIT_WORDS
                    .iter()
                    .copied()
                    .chain([
                        "Minute",
                        "HOURS",
                        "fortnight",
                        "mn",
                        "",
                        "sec s",
                        "secondss"
                    ])
                    .collect::<Vec<_>>(),
            )
            .prop_map(str::to_owned),
            "[a-zA-Z]{1,3}",
            // A unit word with one more letter.
            (
                prop::sample::select(vec![
                    "us", "ms", "sec", "min", "hr", "hour", "day", "days", "second"
                ]),
                "[a-z]"
            )
                .prop_map(|(u, x)| format!("{u}{x}")),
        ];
        let count = prop_oneof![
            (0u64..2_000_000_000).prop_map(|n| n.to_string()),
            prop::sample::select(vec![0u64, 1, 999_999_999, 1_000_000_000, 1_000_000_001])
                .prop_map(|n| n.to_string()),
            (1u64..100).prop_map(|n| n.to_string()),
            Just("99999999999999999999999".to_owned()),
            Just("007".to_owned()),
            Just("-1".to_owned()),
            Just("1.5".to_owned()),
            Just(String::new()),
        ];
        let n = prop_oneof![
            Just(String::new()),
            // Around the shortest and longest windows in each unit.
            prop::sample::select(vec![
                0u64,
                1,
                999,
                1_000,
                1_001,
                366,
                367,
                8_784,
                8_785,
                527_040,
                527_041,
                31_622_400,
                31_622_401,
                31_622_400_000,
                31_622_400_001,
            ])
            .prop_map(|n| n.to_string()),
            (0u64..1000).prop_map(|n| n.to_string()),
            (0u64..40_000_000).prop_map(|n| n.to_string()),
            Just("99999999999999999999".to_owned()),
        ];
        let sep = prop_oneof![
            Just("/"),
            Just(" per "),
            Just(" PER "),
            Just(" Per "),
            Just("per"),
            Just(" per"),
            Just("\tper "),
            Just(" a "),
            Just("//"),
        ];
        prop_oneof![
            6 => (ws(), count, ws(), sep, ws(), n, ws(), unit, ws())
                .prop_map(|(a, c, b, s, d, n, e, u, f)| format!("{a}{c}{b}{s}{d}{n}{e}{u}{f}")),
            1 => any::<String>(),
            1 => "[0-9 /per\u{a0}smhd]{0,16}",
        ]
    }

    fn window_quota() -> impl Strategy<Value = Quota> {
        let window = prop_oneof![
            (1u64..=366 * 24 * 3600).prop_map(|s| s * 1_000_000),
            (1u64..=1_000_000).prop_map(|ms| ms * 1_000),
            (1u64..=366 * 24).prop_map(|h| h * 3_600_000_000),
            (1_000u64..=366 * 24 * 3_600_000_000),
        ];
        (1u32..=MAX_COUNT as u32, window)
            .prop_map(|(n, us)| Quota::window(n, Duration::from_micros(us)))
    }

    /// Every unit word (and every word one letter away from one), around every limit, in
    /// both forms: what random strings rarely hit.
    #[test]
    fn units_and_limits_exhaustively() {
        let mut words: Vec<String> = Vec::new();
        for &w in UNIT_WORDS {
            words.push(w.to_owned());
            words.push(w.to_ascii_uppercase());
            words.push(w[..w.len() - 1].to_owned());
            for x in 'a'..='z' {
                words.push(format!("{w}{x}"));
            }
        }
        let windows = [
            "",
            "0",
            "1",
            "999",
            "1000",
            "1001",
            "366",
            "367",
            "8784",
            "8785",
            "527040",
            "527041",
            "31622400",
            "31622401",
            "31622400000",
            "31622400001",
            "31622400000000",
            "31622400000001",
        ];
        let mut accepted = 0;
        for word in &words {
            for n in windows {
                for count in ["0", "1", "1000000000", "1000000001"] {
                    for s in [
                        format!("{count}/{n}{word}"),
                        format!("{count} per {n} {word}"),
                    ] {
                        let got = Quota::parse(&s).ok();
                        assert_eq!(got, model(&s), "{s:?}");
                        accepted += usize::from(got.is_some());
                    }
                }
            }
        }
        assert!(accepted > 1_000, "{accepted}");
    }

    proptest! {
        #![proptest_config(config(4000))]

        /// `parse(render(q)) == q` for every valid window quota.
        #[test]
        fn rendered_quotas_parse_back(q in window_quota()) {
            prop_assert!(q.validate().is_ok());
            let text = q.to_string();
            prop_assert_eq!(Quota::parse(&text), Ok(q), "{}", text);
        }

        /// Any string: no panic; accepted exactly when the documented grammar and ranges
        /// accept it, as the same quota.
        #[test]
        fn strings_parse_as_the_grammar_says(s in quota_string()) {
            let got = Quota::parse(&s).ok();
            prop_assert_eq!(got, model(&s), "{:?}", s);
            if let Some(q) = got {
                prop_assert_eq!(q.meaning(), Meaning::Window);
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// 5. Limiter math (memory backend, explicit times)
// ------------------------------------------------------------------------------------------

mod limiter {
    use super::*;

    use std::time::Duration;

    use tower_rampart::rate_limit::{LimitKey, MemoryBackend, Quota, QuotaDecision};

    /// One request of a trace: a clock step (negative: the clock went back) and a cost.
    type Step = (i64, u64);

    fn trace(max_step: i64, max_cost: u64) -> impl Strategy<Value = Vec<Step>> {
        let step = prop_oneof![
            6 => 0..=max_step / 8,
            3 => 0..=max_step,
            1 => -max_step..0,
            1 => Just(0),
        ];
        let cost = prop_oneof![6 => 1..=max_cost.max(1), 1 => 0..=max_cost + 1];
        prop::collection::vec((step, cost), 1..80)
    }

    fn run(quota: Quota, start: u64, steps: &[Step]) -> Vec<(u64, u64, QuotaDecision)> {
        let limiter = MemoryBackend::builder()
            .shards(1)
            .build()
            .keyed("q", quota)
            .unwrap();
        let key = LimitKey::new("client");
        let mut now = start;
        steps
            .iter()
            .map(|&(step, cost)| {
                now = now.saturating_add_signed(step);
                (now, cost, limiter.check_at(&key, cost, now))
            })
            .collect()
    }

    /// "At most `limit` admitted in any rolling window of length `w`", brute force over the
    /// given admission times: every window `(t - w, t]` ending at an admission.
    fn at_most_n_in_any_window(admitted: &[(u64, u64)], limit: u64, w: u64) -> bool {
        admitted.iter().all(|&(end, _)| {
            let inside: u64 = admitted
                .iter()
                .filter(|&&(t, _)| t <= end && t + w > end)
                .map(|&(_, c)| c)
                .sum();
            inside <= limit
        })
    }

    /// The window meaning as documented, on a log of recorded admissions. The log holds the
    /// admissions still inside the window when one is recorded (the decision itself changes
    /// nothing); a time is recorded rounded up to the granularity (1 µs when the limit fits
    /// the slots, else `ceil(w / slots)`), and never before the newest recorded time (a clock
    /// step back records at the newest time, on the strict side); at most
    /// `min(limit, slots + 1)` distinct times are kept, the oldest dropped first.
    struct WindowModel {
        limit: u64,
        w: u64,
        g: u64,
        bound: usize,
        log: Vec<(u64, u64)>,
    }

    impl WindowModel {
        fn used(&self, now: u64) -> u64 {
            self.log
                .iter()
                .filter(|&&(r, _)| r + self.w > now)
                .map(|&(_, c)| c)
                .sum()
        }

        fn record(&mut self, now: u64, cost: u64) {
            let w = self.w;
            self.log.retain(|&(r, _)| r + w > now);
            let stamp = now.div_ceil(self.g) * self.g;
            let newest = self.log.iter().map(|&(r, _)| r).max().unwrap_or(0);
            self.log.push((stamp.max(newest), cost));
            loop {
                let mut times: Vec<u64> = self.log.iter().map(|&(r, _)| r).collect();
                times.sort_unstable();
                times.dedup();
                if times.len() <= self.bound {
                    break;
                }
                self.log.retain(|&(r, _)| r != times[0]);
            }
        }

        /// (allowed, remaining, retry_after) for a request of `cost` at `now`; records it if
        /// allowed. `retry_after: None` for "never".
        fn decide(&mut self, now: u64, cost: u64) -> (bool, u64, Option<u64>) {
            let used = self.used(now);
            if cost <= self.limit && used + cost <= self.limit {
                if cost > 0 {
                    self.record(now, cost);
                }
                return (true, self.limit - used - cost, Some(0));
            }
            if cost > self.limit {
                return (false, self.limit.saturating_sub(used), None);
            }
            // The first moment enough recorded admissions have left the window.
            let mut ends: Vec<u64> = self
                .log
                .iter()
                .map(|&(r, _)| r + self.w)
                .filter(|&e| e > now)
                .collect();
            ends.sort_unstable();
            let t = ends
                .into_iter()
                .find(|&t| self.used(t) + cost <= self.limit)
                .expect("everything leaves the window eventually");
            (false, self.limit.saturating_sub(used), Some(t - now))
        }
    }

    /// GCRA as a continuous-state leaky bucket (ITU-T I.371), in u128 nanoseconds: the bucket
    /// holds `level` ns of work, drains 1 ns per ns since the last conforming request (a clock
    /// step back adds the difference), each unit adds `T` (the window over the limit, rounded
    /// up to a microsecond), and a request conforms if it fits under `burst × T`.
    struct GcraModel {
        t: u128,
        burst: u128,
        level: u128,
        last: Option<u128>,
    }

    impl GcraModel {
        fn decide(&mut self, now_us: u64, cost: u64) -> (bool, u64, Option<u64>) {
            let now = u128::from(now_us) * 1_000;
            let cost = u128::from(cost);
            let level = match self.last {
                None => 0,
                Some(last) if now >= last => self.level.saturating_sub(now - last),
                Some(last) => self.level + (last - now),
            };
            let cap = self.burst * self.t;
            let remaining = |level: u128| {
                let units = level.div_ceil(self.t);
                u64::try_from(self.burst.saturating_sub(units)).unwrap()
            };
            if cost > self.burst {
                return (false, remaining(level), None);
            }
            if level + cost * self.t <= cap {
                // As documented, a conforming request sets the state (`tat = max(tat, now) +
                // c·T`), even at cost 0; but a key without state checked at cost 0 is not
                // stored (absent is the same as full).
                if cost > 0 || self.last.is_some() {
                    self.level = level + cost * self.t;
                    self.last = Some(now);
                }
                return (true, remaining(level + cost * self.t), Some(0));
            }
            let wait = level + cost * self.t - cap;
            (
                false,
                remaining(level),
                Some(u64::try_from(wait / 1_000).unwrap()),
            )
        }
    }

    fn observed(d: &QuotaDecision) -> (bool, u64, Option<u64>) {
        let retry = if d.is_allowed() {
            Some(0)
        } else {
            d.retry_after()
                .map(|r| u64::try_from(r.as_micros()).unwrap())
        };
        (d.is_allowed(), d.remaining(), retry)
    }

    fn window_case() -> impl Strategy<Value = (u32, u64, Option<u32>, u64, Vec<Step>)> {
        (
            1u32..=12,
            1_000u64..=20_000,
            prop::option::of(1u32..=12),
            0u64..4_000_000_000_000_000,
        )
            .prop_flat_map(|(limit, w, slots, start)| {
                let max_step = i64::try_from(w).unwrap() * 2;
                (
                    Just(limit),
                    Just(w),
                    Just(slots),
                    Just(start),
                    trace(max_step, u64::from(limit)),
                )
            })
    }

    fn gcra_case() -> impl Strategy<Value = (u32, u64, u32, u64, Vec<Step>)> {
        let window = prop_oneof![
            3 => 1_000u64..=20_000,
            1 => 1_000_000u64..=366 * 24 * 3_600_000_000,
        ];
        (1u32..=50, window, 1u32..=10, 0u64..4_000_000_000_000_000)
            .prop_filter("a valid quota", |&(limit, w, burst, _)| {
                Quota::rate(limit, Duration::from_micros(w))
                    .burst(burst)
                    .validate()
                    .is_ok()
            })
            .prop_flat_map(|(limit, w, burst, start)| {
                let t = w.div_ceil(u64::from(limit));
                let max_step = i64::try_from(t * u64::from(burst) * 2).unwrap();
                (
                    Just(limit),
                    Just(w),
                    Just(burst),
                    Just(start),
                    trace(max_step, u64::from(burst)),
                )
            })
    }

    proptest! {
        #![proptest_config(config(1500))]

        /// Window quotas, exact and bucketed, on traces with clock steps back: every decision
        /// (allowed, remaining, retry time) is the documented model's, and between two steps
        /// back of the clock the admissions never exceed the limit in any rolling window.
        /// (Across a step back no bounded state can promise that: an admission forgotten once
        /// it left the window is inside it again when the clock returns.)
        #[test]
        fn window_matches_the_model_and_never_admits_more_than_n(
            (limit, w, slots, start, steps) in window_case(),
        ) {
            let mut quota = Quota::window(limit, Duration::from_micros(w));
            if let Some(s) = slots {
                quota = quota.max_slots(s);
            }
            let limit = u64::from(limit);
            let slots = u64::from(slots.unwrap_or(1024));
            let g = if limit <= slots { 1 } else { w.div_ceil(slots) };
            let bound = usize::try_from(limit.min(slots + 1)).unwrap();
            let mut model = WindowModel { limit, w, g, bound, log: Vec::new() };
            // Admissions since the clock last stepped back.
            let mut epoch: Vec<(u64, u64)> = Vec::new();
            let mut previous = 0;
            for (i, (now, cost, d)) in run(quota, start, &steps).into_iter().enumerate() {
                let want = model.decide(now, cost);
                prop_assert_eq!(observed(&d), want, "request {} (cost {} at {})", i, cost, now);
                if now < previous {
                    epoch.clear();
                }
                previous = now;
                if d.is_allowed() && cost > 0 {
                    epoch.push((now, cost));
                    prop_assert!(at_most_n_in_any_window(&epoch, limit, w), "{:?}", epoch);
                }
            }
        }

        /// GCRA quotas on traces with clock steps back: every decision is the leaky bucket's,
        /// and in any interval `[t1, t2]` of request times at most `burst + (t2 - t1) / T`
        /// units are admitted.
        #[test]
        fn gcra_matches_a_leaky_bucket(
            (limit, w, burst, start, steps) in gcra_case(),
        ) {
            let quota = Quota::rate(limit, Duration::from_micros(w)).burst(burst);
            let t = u128::from(w.div_ceil(u64::from(limit))) * 1_000;
            prop_assert_eq!(quota.emission_interval().as_nanos(), t);
            let mut model = GcraModel { t, burst: u128::from(burst), level: 0, last: None };
            let mut admitted = Vec::new();
            for (i, (now, cost, d)) in run(quota, start, &steps).into_iter().enumerate() {
                let want = model.decide(now, cost);
                prop_assert_eq!(observed(&d), want, "request {} (cost {} at {})", i, cost, now);
                if d.is_allowed() && cost > 0 {
                    admitted.push((u128::from(now) * 1_000, u128::from(cost)));
                }
            }
            admitted.sort_unstable();
            for (i, &(t1, _)) in admitted.iter().enumerate() {
                let mut units = 0;
                for &(t2, c) in &admitted[i..] {
                    units += c;
                    prop_assert!(
                        units <= u128::from(burst) + (t2 - t1) / t,
                        "{} units in {} ns", units, t2 - t1
                    );
                }
            }
        }
    }
}
