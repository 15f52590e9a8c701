use std::time::Duration;

use http::HeaderValue;

use super::rewrite::{Malformed, rewrite, rewrite_bytes};
use super::*;
use crate::clock::ManualClock;

/// 2024-01-01T00:00:00Z
const NOW: u64 = 1_704_067_200;

fn permissive() -> CookiePolicyBuilder {
    CookiePolicy::builder()
        .http_only(false)
        .secure(SecureMode::WhenHttps)
        .min_same_site(SameSite::None)
        .clock(ManualClock::new(NOW * 1_000_000))
}

/// The rewritten value, or the input when unchanged.
fn run(policy: &CookiePolicy, input: &str, https: bool) -> String {
    let value = HeaderValue::from_str(input).unwrap();
    match rewrite(policy, &value, https).unwrap() {
        Some(new) => new.to_str().unwrap().to_owned(),
        None => input.to_owned(),
    }
}

fn unchanged(policy: &CookiePolicy, input: &str, https: bool) {
    let value = HeaderValue::from_str(input).unwrap();
    assert_eq!(rewrite(policy, &value, https).unwrap(), None, "{input}");
}

#[test]
fn compliant_cookies_are_not_reallocated() {
    let lax = CookiePolicy::lax();
    unchanged(&lax, "a=b; Secure; HttpOnly; SameSite=Lax", false);
    unchanged(&lax, "a=b;secure;httponly;samesite=strict", false);
    unchanged(
        &lax,
        "a=b; SameSite=Strict; Priority=High; Secure; HttpOnly",
        false,
    );
    unchanged(&permissive().build().unwrap(), "a=b", false);
}

#[test]
fn http_only_and_allow_list() {
    let p = permissive()
        .http_only(true)
        .allow_script_access("csrf")
        .build()
        .unwrap();
    assert_eq!(run(&p, "a=b", false), "a=b; HttpOnly");
    assert_eq!(run(&p, "csrf=1", false), "csrf=1");
    // names are case-sensitive and exact
    assert_eq!(run(&p, "CSRF=1", false), "CSRF=1; HttpOnly");
    assert_eq!(run(&p, "csrf2=1", false), "csrf2=1; HttpOnly");
    // an app-set HttpOnly on an allow-listed cookie is kept
    assert_eq!(run(&p, "csrf=1; HttpOnly", false), "csrf=1; HttpOnly");
    // HttpOnly off: nothing added, nothing removed
    let off = permissive().build().unwrap();
    assert_eq!(run(&off, "a=b; HttpOnly", false), "a=b; HttpOnly");
}

#[test]
fn secure_modes() {
    let always = permissive().secure(SecureMode::Always).build().unwrap();
    let when = permissive().secure(SecureMode::WhenHttps).build().unwrap();
    let never = permissive()
        .secure(SecureMode::Never)
        .min_same_site(SameSite::Lax)
        .build()
        .unwrap();
    assert_eq!(run(&always, "a=b", false), "a=b; Secure");
    assert_eq!(run(&when, "a=b", true), "a=b; Secure");
    assert_eq!(run(&when, "a=b", false), "a=b");
    assert_eq!(run(&never, "a=b; SameSite=Lax", true), "a=b; SameSite=Lax");
    // only tightens: an app-set Secure survives Never
    assert_eq!(
        run(&never, "a=b; Secure; SameSite=Lax", false),
        "a=b; Secure; SameSite=Lax"
    );
    // a Secure attribute with a value still counts as Secure, as in browsers
    assert_eq!(run(&always, "a=b; Secure=yes", false), "a=b; Secure=yes");
}

#[test]
fn same_site_minimum() {
    let lax = permissive().min_same_site(SameSite::Lax).build().unwrap();
    assert_eq!(run(&lax, "a=b", true), "a=b; Secure; SameSite=Lax");
    assert_eq!(run(&lax, "a=b; Secure", true), "a=b; Secure; SameSite=Lax");
    // weaker raised in place, keeping the attribute name's spelling
    assert_eq!(
        run(&lax, "a=b; samesite=None; Secure", true),
        "a=b; samesite=Lax; Secure"
    );
    // stronger kept
    assert_eq!(
        run(&lax, "a=b; SameSite=Strict", false),
        "a=b; SameSite=Strict"
    );
    // an unknown value or no value is like a missing attribute: fixed in place
    assert_eq!(run(&lax, "a=b; SameSite=Bogus", false), "a=b; SameSite=Lax");
    assert_eq!(
        run(&lax, "a=b; SameSite; Path=/", false),
        "a=b; SameSite=Lax; Path=/"
    );
    assert_eq!(
        run(&lax, "a=b; SameSite = ; Path=/", false),
        "a=b; SameSite = Lax; Path=/"
    );
    // the last of repeated attributes is the one browsers use
    assert_eq!(
        run(&lax, "a=b; SameSite=Strict; SameSite=None", false),
        "a=b; SameSite=Strict; SameSite=Lax"
    );
    assert_eq!(
        run(&lax, "a=b; SameSite=None; SameSite=Strict", false),
        "a=b; SameSite=None; SameSite=Strict"
    );

    let strict = permissive()
        .min_same_site(SameSite::Strict)
        .build()
        .unwrap();
    assert_eq!(
        run(&strict, "a=b; SameSite=Lax", false),
        "a=b; SameSite=Strict"
    );
    assert_eq!(run(&strict, "a=b", false), "a=b; SameSite=Strict");

    // minimum None: missing stays missing
    let none = permissive().build().unwrap();
    assert_eq!(run(&none, "a=b", false), "a=b");
    assert_eq!(
        run(&none, "a=b; SameSite=Bogus", false),
        "a=b; SameSite=Bogus"
    );
}

#[test]
fn same_site_none_needs_secure() {
    let when = permissive().build().unwrap();
    // even on a plain HTTP response: a SameSite=None cookie without Secure is rejected anyway
    assert_eq!(
        run(&when, "a=b; SameSite=None", false),
        "a=b; SameSite=None; Secure"
    );
    assert_eq!(
        run(&when, "a=b; SameSite=None; Secure", false),
        "a=b; SameSite=None; Secure"
    );
    // under Never (min Lax is forced by build) an app's SameSite=None becomes Lax
    let dev = CookiePolicy::development();
    assert_eq!(
        run(&dev, "a=b; SameSite=None", false),
        "a=b; SameSite=Lax; HttpOnly"
    );
}

#[test]
fn a_partitioned_cookie_always_leaves_secure() {
    // Browsers reject `Partitioned` without `Secure`: like the prefixes, it forces `Secure`
    // in every mode, whether or not the policy partitions cookies itself.
    let never = CookiePolicy::builder()
        .secure(SecureMode::Never)
        .http_only(false)
        .build()
        .unwrap();
    for policy in [&never, &permissive().build().unwrap()] {
        assert_eq!(
            run(policy, "a=b; Partitioned; SameSite=Lax", false),
            "a=b; Partitioned; SameSite=Lax; Secure"
        );
        assert_eq!(
            run(policy, "a=; Max-Age=0; partitioned; SameSite=Strict", false),
            "a=; Max-Age=0; partitioned; SameSite=Strict; Secure"
        );
        unchanged(policy, "a=b; Partitioned; Secure; SameSite=Lax", false);
    }
}

#[test]
fn partitioned_is_added_to_same_site_none_cookies() {
    let p = permissive().partition_same_site_none(true).build().unwrap();
    // SameSite=None leaves with Partitioned (and Secure, even on plain HTTP under WhenHttps)
    assert_eq!(
        run(&p, "a=b; SameSite=None; Secure", false),
        "a=b; SameSite=None; Secure; Partitioned"
    );
    assert_eq!(
        run(&p, "a=b; SameSite=None", false),
        "a=b; SameSite=None; Secure; Partitioned"
    );
    assert_eq!(
        run(&p, "a=b; samesite=none; Path=/", true),
        "a=b; samesite=none; Path=/; Secure; Partitioned"
    );
    // already partitioned, in any spelling or position: left as it is
    unchanged(&p, "a=b; Partitioned; SameSite=None; Secure", false);
    unchanged(&p, "a=b; SameSite=None; Secure; partitioned", false);
    // a removal gets it too, so it removes a partitioned cookie
    assert_eq!(
        run(&p, "a=; Max-Age=0; SameSite=None; Secure", false),
        "a=; Max-Age=0; SameSite=None; Secure; Partitioned"
    );
    // Lax, Strict, unknown and missing SameSite: nothing added (a missing one stays missing
    // under a minimum of None)
    unchanged(&p, "a=b; SameSite=Lax", false);
    unchanged(&p, "a=b; SameSite=Strict", false);
    unchanged(&p, "a=b; SameSite=Bogus", false);
    unchanged(&p, "a=b", false);
    // a cookie raised from None by the minimum is not cross-site, so not partitioned
    let lax = CookiePolicy::builder()
        .partition_same_site_none(true)
        .build()
        .unwrap();
    assert_eq!(
        run(&lax, "a=b; SameSite=None; Secure", true),
        "a=b; SameSite=Lax; Secure; HttpOnly"
    );
    // a prefixed cookie is fixed and partitioned in one rewrite
    assert_eq!(
        run(&p, "__Host-a=b; SameSite=None; Domain=example.com", false),
        "__Host-a=b; SameSite=None; Path=/; Secure; Partitioned"
    );
    // off (the default): SameSite=None cookies are not partitioned
    unchanged(
        &permissive().build().unwrap(),
        "a=b; SameSite=None; Secure",
        false,
    );
    unchanged(
        &CookiePolicy::lax(),
        "a=b; SameSite=Strict; Secure; HttpOnly; Partitioned",
        false,
    );
}

#[test]
fn prefixes() {
    let p = permissive()
        .secure(SecureMode::Never)
        .min_same_site(SameSite::Lax)
        .build()
        .unwrap();
    let sl = "; SameSite=Lax";
    assert_eq!(
        run(&p, "__Secure-a=b; SameSite=Lax", false),
        "__Secure-a=b; SameSite=Lax; Secure"
    );
    assert_eq!(
        run(
            &p,
            "__Host-a=b; Domain=example.com; Path=/app; SameSite=Lax",
            false
        ),
        "__Host-a=b; Path=/; SameSite=Lax; Secure"
    );
    assert_eq!(
        run(&p, &format!("__Host-a=b{sl}"), false),
        "__Host-a=b; SameSite=Lax; Path=/; Secure"
    );
    // repeated Domain attributes all go; Path without a value is fixed in place
    assert_eq!(
        run(
            &p,
            "__host-a=b;Domain=a.example;Path;domain=b.example; SameSite=Lax; Secure",
            false
        ),
        "__host-a=b;Path=/; SameSite=Lax; Secure"
    );
    // already compliant
    unchanged(&p, "__Host-a=b; Path=/; Secure; SameSite=Lax", false);
    // case-insensitive match, as in browsers
    assert_eq!(
        run(&p, "__SECURE-a=b; SameSite=Lax", false),
        "__SECURE-a=b; SameSite=Lax; Secure"
    );
    // __Http- and __Host-Http- also need HttpOnly, even if HttpOnly is off
    assert_eq!(
        run(&p, "__Http-a=b; SameSite=Lax", false),
        "__Http-a=b; SameSite=Lax; Secure; HttpOnly"
    );
    assert_eq!(
        run(&p, "__Host-Http-a=b; SameSite=Lax", false),
        "__Host-Http-a=b; SameSite=Lax; Path=/; Secure; HttpOnly"
    );
    // not a prefix
    assert_eq!(
        run(&p, "_Host-a=b; SameSite=Lax", false),
        "_Host-a=b; SameSite=Lax"
    );
    // a __Host- cookie keeps SameSite=None: it gets Secure anyway
    let none_ok = permissive().build().unwrap();
    assert_eq!(
        run(&none_ok, "__Host-a=b; Path=/; SameSite=None", false),
        "__Host-a=b; Path=/; SameSite=None; Secure"
    );
}

#[test]
fn max_age_cap() {
    let p = permissive()
        .max_age_cap(Duration::from_secs(3600))
        .build()
        .unwrap();
    assert_eq!(run(&p, "a=b; Max-Age=7200", false), "a=b; Max-Age=3600");
    assert_eq!(
        run(&p, "a=b; max-age = 99999999999999999999999; Path=/", false),
        "a=b; max-age = 3600; Path=/"
    );
    unchanged(&p, "a=b; Max-Age=3600", false);
    unchanged(&p, "a=b; Max-Age=60", false);
    // session cookies stay session cookies
    unchanged(&p, "a=b; Path=/", false);
    // only the last valid Max-Age counts
    assert_eq!(
        run(&p, "a=b; Max-Age=9000; Max-Age=9999", false),
        "a=b; Max-Age=9000; Max-Age=3600"
    );
    unchanged(&p, "a=b; Max-Age=9000; Max-Age=60", false);
    // an invalid Max-Age is ignored by browsers, so is ignored here
    unchanged(&p, "a=b; Max-Age=+9000", false);
    assert_eq!(
        run(&p, "a=b; Max-Age=9000; Max-Age=1e9", false),
        "a=b; Max-Age=3600; Max-Age=1e9"
    );
}

#[test]
fn expires_cap() {
    let p = permissive()
        .max_age_cap(Duration::from_secs(3600))
        .build()
        .unwrap();
    // NOW + 2h: a Max-Age of the cap is added, Expires kept for old clients
    let far = "a=b; Expires=Mon, 01 Jan 2024 02:00:00 GMT";
    assert_eq!(run(&p, far, false), format!("{far}; Max-Age=3600"));
    // within the cap
    unchanged(&p, "a=b; Expires=Mon, 01 Jan 2024 00:30:00 GMT", false);
    unchanged(&p, "a=b; Expires=Mon, 01 Jan 2024 01:00:00 GMT", false);
    // a valid Max-Age takes precedence over Expires
    unchanged(
        &p,
        "a=b; Expires=Fri, 31 Dec 9999 23:59:59 GMT; Max-Age=60",
        false,
    );
    // an unparseable date is ignored by browsers (session cookie)
    unchanged(&p, "a=b; Expires=someday", false);
    // the clock decides
    let clock = ManualClock::new((NOW + 7200) * 1_000_000);
    let later = p.clone().into_builder().clock(clock).build().unwrap();
    unchanged(&later, far, false);
}

#[test]
fn removal_cookies_stay_removals() {
    let p = CookiePolicy::lax()
        .into_builder()
        .max_age_cap(Duration::from_secs(3600))
        .clock(ManualClock::new(NOW * 1_000_000))
        .build()
        .unwrap();
    for removal in [
        "sid=; Path=/app; Domain=example.com; Max-Age=0",
        "sid=; Path=/app; Max-Age=-1",
        "sid=; Path=/app; Max-Age=-99999999999999999999999",
        "sid=; Path=/app; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
        "sid=; Path=/app; Expires=Sun, 31 Dec 2023 23:59:59 GMT",
    ] {
        let out = run(&p, removal, false);
        // tightened like a cookie set through the same policy, lifetime untouched
        assert_eq!(out, format!("{removal}; Secure; HttpOnly; SameSite=Lax"));
    }
    // a removal of a __Host- cookie gets the same Path/Domain fixes as its creation did
    let set = run(
        &p,
        "__Host-sid=x; Path=/app; Domain=example.com; Max-Age=60",
        false,
    );
    let del = run(
        &p,
        "__Host-sid=; Path=/app; Domain=example.com; Max-Age=0",
        false,
    );
    assert_eq!(
        set,
        "__Host-sid=x; Path=/; Max-Age=60; Secure; HttpOnly; SameSite=Lax"
    );
    assert_eq!(
        del,
        "__Host-sid=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Lax"
    );
}

#[test]
fn unknown_attributes_kept_in_place() {
    let p = CookiePolicy::strict();
    assert_eq!(
        run(
            &p,
            "a=b; Priority=High; Partitioned; SameSite=None; X-Custom=\"1;2\"",
            false
        ),
        "a=b; Priority=High; Partitioned; SameSite=Strict; X-Custom=\"1;2\"; Secure; HttpOnly"
    );
    // odd spacing and empty attributes are preserved byte for byte around the edits
    assert_eq!(
        run(&p, "a = b ;; PARTITIONED ;", false),
        "a = b ;; PARTITIONED ;; Secure; HttpOnly; SameSite=Strict"
    );
}

#[test]
fn names_and_values_with_whitespace_and_unicode() {
    let p = CookiePolicy::lax();
    // tabs around the name are trimmed when matching the allow-list
    let q = p
        .clone()
        .into_builder()
        .allow_script_access("ui")
        .build()
        .unwrap();
    assert_eq!(
        run(&q, "\tui\t=dark", false),
        "\tui\t=dark; Secure; SameSite=Lax"
    );
    // UTF-8 (not visible ASCII) is fine
    let value = HeaderValue::from_bytes("name=caf\u{e9}".as_bytes()).unwrap();
    let out = rewrite(&p, &value, false).unwrap().unwrap();
    assert_eq!(
        out.as_bytes(),
        "name=caf\u{e9}; Secure; HttpOnly; SameSite=Lax".as_bytes()
    );
    // the value may contain '='
    assert_eq!(
        run(&p, "t=a=b==", false),
        "t=a=b==; Secure; HttpOnly; SameSite=Lax"
    );
}

#[test]
fn sensitive_flag_kept() {
    let mut value = HeaderValue::from_static("a=b");
    value.set_sensitive(true);
    let out = rewrite(&CookiePolicy::lax(), &value, false)
        .unwrap()
        .unwrap();
    assert!(out.is_sensitive());
}

#[test]
fn malformed_values_are_reported() {
    let p = CookiePolicy::lax();
    let check = |bytes: &[u8], want: Malformed| {
        let value = HeaderValue::from_bytes(bytes).unwrap();
        assert_eq!(rewrite(&p, &value, false), Err(want), "{bytes:?}");
    };
    check(b"a=\xff\xfe", Malformed::NotUtf8);
    check(b"novalue", Malformed::NoEquals);
    check(b"novalue; Path=/", Malformed::NoEquals);
    check(b"=value", Malformed::EmptyName);
    check(b" \t=value", Malformed::EmptyName);
    check(b"", Malformed::NoEquals);
    // HeaderValue refuses most control characters, but the check does not rely on it
    for ctl in [
        &b"a=b\x01"[..],
        b"a\x00=b",
        b"a=b; Path=/\x7f",
        b"a=b\r\nX: y",
    ] {
        assert_eq!(
            rewrite_bytes(&p, ctl, false),
            Err(Malformed::ControlCharacter)
        );
    }
    // HTAB is not a problem (browsers accept it)
    assert!(rewrite_bytes(&p, b"a=b\tc", false).unwrap().is_some());
}

#[test]
fn build_errors() {
    assert_eq!(
        CookiePolicy::builder()
            .secure(SecureMode::Never)
            .min_same_site(SameSite::None)
            .build()
            .unwrap_err(),
        CookiePolicyError::SameSiteNoneWithoutSecure
    );
    assert_eq!(
        CookiePolicy::builder()
            .max_age_cap(Duration::from_millis(999))
            .build()
            .unwrap_err(),
        CookiePolicyError::ZeroMaxAgeCap
    );
    for bad in ["", "a b", "a=b", "a;b", "caf\u{e9}", "a\tb", "a,b"] {
        let err = CookiePolicy::builder()
            .allow_script_access(bad)
            .build()
            .unwrap_err();
        assert_eq!(
            err,
            CookiePolicyError::InvalidCookieName {
                name: bad.to_owned()
            }
        );
        assert!(err.to_string().contains(&format!("{bad:?}")));
    }
    for bad in ["__Http-x", "__Host-Http-x", "__http-x"] {
        let err = CookiePolicy::builder()
            .allow_script_access(bad)
            .build()
            .unwrap_err();
        assert_eq!(
            err,
            CookiePolicyError::ScriptAccessToHttpOnlyPrefix {
                name: bad.to_owned()
            }
        );
    }
    // allowed: __Host- and __Secure- cookies can be script-readable; None with Secure is fine
    CookiePolicy::builder()
        .allow_script_access("__Host-csrf")
        .build()
        .unwrap();
    CookiePolicy::builder()
        .min_same_site(SameSite::None)
        .build()
        .unwrap();
    CookiePolicy::builder().max_age_cap(None).build().unwrap();
    // Partitioned requires Secure: refused with Never, accepted with the other modes
    let err = CookiePolicy::builder()
        .secure(SecureMode::Never)
        .partition_same_site_none(true)
        .build()
        .unwrap_err();
    assert_eq!(err, CookiePolicyError::PartitionedWithoutSecure);
    assert!(err.to_string().contains("Partitioned without Secure"));
    for mode in [SecureMode::Always, SecureMode::WhenHttps] {
        CookiePolicy::builder()
            .secure(mode)
            .partition_same_site_none(true)
            .build()
            .unwrap();
    }
    CookiePolicy::development()
        .into_builder()
        .partition_same_site_none(false)
        .build()
        .unwrap();
    CookiePolicy::builder()
        .max_age_cap(Duration::MAX)
        .build()
        .unwrap();
}
