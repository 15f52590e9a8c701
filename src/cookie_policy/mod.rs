//! Cookie policy: make every cookie the application sets as safe as the deployment allows.
//!
//! [`CookiePolicyLayer`] rewrites each `Set-Cookie` header of the inner service's responses
//! after it answers. It only ever **tightens** a cookie: it adds `HttpOnly` and `Secure`,
//! raises `SameSite`, lowers lifetimes, and fixes `__Host-`/`__Secure-` cookies so browsers
//! accept them. It never removes a protection the application asked for, never merges or
//! drops headers, and keeps attributes it does not know (`Priority`, `Partitioned`, ...) in
//! place with their spelling. Cookies that need no change are left byte for byte as they were.
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use http::{header::SET_COOKIE, Request, Response};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_rampart::cookie_policy::{CookiePolicy, CookiePolicyLayer, SameSite, SecureMode};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let policy = CookiePolicy::builder()
//!     .secure(SecureMode::Always)
//!     .min_same_site(SameSite::Lax)
//!     .allow_script_access("csrf_token") // read by the front end, so not HttpOnly
//!     .max_age_cap(Duration::from_secs(30 * 24 * 3600))
//!     .build()
//!     .expect("a consistent policy");
//!
//! let app = ServiceBuilder::new()
//!     .layer(CookiePolicyLayer::new(policy))
//!     .service(service_fn(|_req: Request<String>| async {
//!         Ok::<_, Infallible>(
//!             Response::builder()
//!                 .header(SET_COOKIE, "sid=abc; Path=/; Max-Age=31536000; Priority=High")
//!                 .header(SET_COOKIE, "csrf_token=xyz; Path=/")
//!                 .body(String::new())
//!                 .unwrap(),
//!         )
//!     }));
//!
//! let response = app.oneshot(Request::new(String::new())).await.unwrap();
//! let cookies: Vec<_> = response.headers().get_all(SET_COOKIE).iter().collect();
//! assert_eq!(
//!     cookies[0],
//!     "sid=abc; Path=/; Max-Age=2592000; Priority=High; Secure; HttpOnly; SameSite=Lax"
//! );
//! assert_eq!(cookies[1], "csrf_token=xyz; Path=/; Secure; SameSite=Lax");
//! # }
//! ```
//!
//! # What each setting does
//!
//! | Setting | Builder method | What the layer does |
//! |---|---|---|
//! | HttpOnly | [`http_only`](CookiePolicyBuilder::http_only), [`allow_script_access`](CookiePolicyBuilder::allow_script_access) | Adds `HttpOnly` to every cookie except the allow-listed names (exact, case-sensitive). |
//! | Secure | [`secure`](CookiePolicyBuilder::secure) | [`SecureMode::Always`]: adds `Secure` to every cookie. [`SecureMode::WhenHttps`]: only on responses to HTTPS requests (the request's scheme, or what a [trusted proxy](crate::net::TrustedProxies::is_https) reports). [`SecureMode::Never`]: adds nothing (local development over plain HTTP); an existing `Secure` is kept. |
//! | SameSite | [`min_same_site`](CookiePolicyBuilder::min_same_site) | Order `None < Lax < Strict`. A missing or unrecognised `SameSite` is set to the minimum, a weaker one is raised to it, a stronger one is kept. With a minimum of [`SameSite::None`] a missing attribute stays missing (writing `None` would loosen Chrome's `Lax` default). |
//! | SameSite=None needs Secure | always | A cookie that ends up `SameSite=None` gets `Secure` (browsers reject it otherwise), even on a plain-HTTP response under `WhenHttps`. Under `Never` it is raised to `Lax` instead (only reachable when the app writes `SameSite=None`, since a minimum of `None` with `Never` does not build). |
//! | Partitioned | [`partition_same_site_none`](CookiePolicyBuilder::partition_same_site_none) | Adds `Partitioned` (CHIPS) to every cookie that leaves with `SameSite=None`, removals included (a removal without `Partitioned` does not reach a partitioned cookie). A cookie that already says `Partitioned` keeps it (and gets `Secure` if it lacks it, in every mode: browsers reject `Partitioned` without `Secure`); cookies that end up `Lax`, `Strict` or without `SameSite` get nothing. Off by default. |
//! | Lifetime cap | [`max_age_cap`](CookiePolicyBuilder::max_age_cap) | A `Max-Age` above the cap is lowered to it. An `Expires` further away than the cap gets a `Max-Age` of the cap added (browsers prefer `Max-Age`; `Expires` stays for old clients). Session cookies stay session cookies. |
//! | Removal cookies | always | A cookie with `Max-Age <= 0` or an `Expires` in the past keeps its lifetime attributes: it stays a removal. It is tightened like any other cookie, so it matches a cookie set through the same policy. |
//! | Prefixes | always | `__Secure-`: adds `Secure`. `__Host-`: adds `Secure`, sets `Path=/` (replacing another path), drops every `Domain`. `__Http-` and `__Host-Http-` (RFC 6265bis): also `HttpOnly`, whatever the allow-list says. Prefixes match case-insensitively, as in browsers. |
//! | Trusted proxies | [`trusted_proxies`](CookiePolicyBuilder::trusted_proxies) | Whose `X-Forwarded-Proto` / `Forwarded: proto=` is believed for `WhenHttps`. |
//! | Clock | [`clock`](CookiePolicyBuilder::clock) | The time `Expires` is compared with (tests use [`ManualClock`](crate::clock::ManualClock)). |
//!
//! # Presets
//!
//! | | HttpOnly | Secure | min SameSite | Lifetime cap |
//! |---|---|---|---|---|
//! | [`CookiePolicy::strict`] | yes | `Always` | `Strict` | 400 days |
//! | [`CookiePolicy::lax`] (the default) | yes | `Always` | `Lax` | none |
//! | [`CookiePolicy::development`] | yes | `Never` | `Lax` | none |
//!
//! `Strict` cookies are not sent when a user follows a link to your site from elsewhere, so
//! a login session under `strict()` looks logged-out on such arrivals; `lax()` is the usual
//! choice for session cookies. 400 days is the longest lifetime RFC 6265bis lets browsers
//! keep; the cap makes all browsers agree.
//!
//! # Malformed cookies
//!
//! A `Set-Cookie` value that is not UTF-8, contains a control character, has no `=` or has
//! an empty name is passed through untouched and logged with `tracing::warn!`, naming the
//! problem and the header's position but never the cookie's name or value. Fix the
//! application: some browsers accept nameless cookies, which then escape the policy.
//!
//! # Where the layer goes
//!
//! The policy rewrites the `Set-Cookie` headers present on the response when it passes
//! through, so every layer that adds cookies must sit **inside** it (closer to the
//! handler). With `tower-cookies`, the handler's `Cookies` are written as headers by
//! `CookieManagerLayer` on the way out: add the cookie manager first and the policy after it
//! (in axum, `.layer(CookieManagerLayer::new())` then `.layer(CookiePolicyLayer::new(..))`;
//! in a `ServiceBuilder`, the policy above the manager). The other way round the policy runs
//! before the manager has written anything and sees no cookie (tested in
//! `tests/cookie_policy.rs`). The crate's own session layer likewise goes inside the policy.
//!
//! # Cost
//!
//! One scan per cookie that already complies; one more pass and one allocation (the new
//! header value) per cookie that changes. The lifetime cap parses `Expires` dates only when
//! a cap is set and the cookie has no valid `Max-Age`.

mod date;
mod rewrite;
mod service;

use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use http::header::{Entry, SET_COOKIE};

use crate::clock::{Clock, SystemClock};
use crate::net::{TrustedProxies, is_tchar};

pub use crate::same_site::SameSite;
pub use service::{CookiePolicyLayer, CookiePolicyService, ResponseFuture};

/// When the layer adds the `Secure` attribute. It never removes one the application set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SecureMode {
    /// On every cookie. Right for anything served over HTTPS, including behind a TLS
    /// terminating load balancer.
    Always,
    /// Only on responses to requests that arrived over HTTPS: the request URI's scheme, or
    /// `X-Forwarded-Proto` / `Forwarded: proto=` from a trusted proxy (see
    /// [`CookiePolicyBuilder::trusted_proxies`]). For services reachable both ways.
    WhenHttps,
    /// Never: local development over plain `http://` on a host other than `localhost`.
    ///
    /// **Do not use in production**: cookies then travel in clear text when a user follows
    /// an `http://` link.
    Never,
}

/// A contradictory cookie policy, rejected by [`CookiePolicyBuilder::build`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CookiePolicyError {
    /// `min_same_site(SameSite::None)` with `secure(SecureMode::Never)`: browsers reject
    /// `SameSite=None` cookies without `Secure`.
    SameSiteNoneWithoutSecure,
    /// A lifetime cap under one second would turn every persistent cookie into a removal.
    ZeroMaxAgeCap,
    /// [`partition_same_site_none`](CookiePolicyBuilder::partition_same_site_none) with
    /// `secure(SecureMode::Never)`: browsers reject `Partitioned` cookies without `Secure`.
    PartitionedWithoutSecure,
    /// An allow-listed name is not a valid cookie name.
    InvalidCookieName {
        /// The name as given.
        name: String,
    },
    /// An allow-listed name starts with `__Http-` or `__Host-Http-`: browsers only accept
    /// such cookies with `HttpOnly`, so scripts can never read them.
    ScriptAccessToHttpOnlyPrefix {
        /// The name as given.
        name: String,
    },
}

impl fmt::Display for CookiePolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SameSiteNoneWithoutSecure => f.write_str(
                "cookie policy: min_same_site(SameSite::None) needs Secure cookies, but secure is \
                 SecureMode::Never (browsers reject SameSite=None without Secure); use \
                 SameSite::Lax for local development",
            ),
            Self::PartitionedWithoutSecure => f.write_str(
                "cookie policy: partition_same_site_none(true) needs Secure cookies, but secure \
                 is SecureMode::Never (browsers reject Partitioned without Secure)",
            ),
            Self::ZeroMaxAgeCap => f.write_str(
                "cookie policy: max_age_cap must be at least one second (a zero cap would turn \
                 every persistent cookie into a removal)",
            ),
            Self::InvalidCookieName { name } => write!(
                f,
                "cookie policy: allow_script_access({name:?}) is not a valid cookie name (it must \
                 be a non-empty HTTP token: letters, digits and !#$%&'*+-.^_`|~)"
            ),
            Self::ScriptAccessToHttpOnlyPrefix { name } => write!(
                f,
                "cookie policy: allow_script_access({name:?}) cannot work: cookies named \
                 __Http-* or __Host-Http-* must be HttpOnly, so scripts can never read them"
            ),
        }
    }
}

impl Error for CookiePolicyError {}

/// What [`CookiePolicyLayer`] enforces on every `Set-Cookie` header. Built with the presets
/// or [`CookiePolicy::builder`]; see the [module documentation](self) for each setting.
#[derive(Clone, Debug)]
pub struct CookiePolicy {
    http_only: bool,
    script_readable: Vec<String>,
    secure: SecureMode,
    min_same_site: SameSite,
    partition_same_site_none: bool,
    /// Seconds, at least 1 and at most `i64::MAX`.
    max_age_cap: Option<i64>,
    max_age_cap_text: String,
    trusted_proxies: TrustedProxies,
    clock: Arc<dyn Clock>,
}

impl CookiePolicy {
    /// The strictest preset: `HttpOnly`, `Secure` always, `SameSite=Strict` at least, lifetimes
    /// capped at 400 days.
    pub fn strict() -> Self {
        Self::lax_defaults()
            .min_same_site(SameSite::Strict)
            .max_age_cap(Duration::from_secs(400 * 24 * 3600))
            .build_infallible()
    }

    /// The recommended preset (and [`Default`]): `HttpOnly`, `Secure` always, `SameSite=Lax`
    /// at least, no lifetime cap.
    pub fn lax() -> Self {
        Self::lax_defaults().build_infallible()
    }

    /// For local development over plain HTTP: `HttpOnly`, no `Secure` added, `SameSite=Lax`
    /// at least, no lifetime cap. Prefix rules still apply.
    pub fn development() -> Self {
        Self::lax_defaults()
            .secure(SecureMode::Never)
            .build_infallible()
    }

    /// A builder starting from [`CookiePolicy::lax`].
    ///
    /// ```
    /// use tower_rampart::cookie_policy::{CookiePolicy, CookiePolicyError, SameSite, SecureMode};
    ///
    /// let err = CookiePolicy::builder()
    ///     .secure(SecureMode::Never)
    ///     .min_same_site(SameSite::None)
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!(err, CookiePolicyError::SameSiteNoneWithoutSecure);
    /// ```
    pub fn builder() -> CookiePolicyBuilder {
        Self::lax_defaults()
    }

    /// A builder starting from this policy, to adjust a preset.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_rampart::cookie_policy::CookiePolicy;
    ///
    /// let policy = CookiePolicy::strict()
    ///     .into_builder()
    ///     .max_age_cap(Duration::from_secs(7 * 24 * 3600))
    ///     .build()
    ///     .unwrap();
    /// ```
    pub fn into_builder(self) -> CookiePolicyBuilder {
        CookiePolicyBuilder {
            http_only: self.http_only,
            script_readable: self.script_readable,
            secure: self.secure,
            min_same_site: self.min_same_site,
            partition_same_site_none: self.partition_same_site_none,
            max_age_cap: self
                .max_age_cap
                .map(|s| Duration::from_secs(s.unsigned_abs())),
            trusted_proxies: self.trusted_proxies,
            clock: self.clock,
        }
    }

    fn lax_defaults() -> CookiePolicyBuilder {
        CookiePolicyBuilder {
            http_only: true,
            script_readable: Vec::new(),
            secure: SecureMode::Always,
            min_same_site: SameSite::Lax,
            partition_same_site_none: false,
            max_age_cap: None,
            trusted_proxies: TrustedProxies::none(),
            clock: Arc::new(SystemClock),
        }
    }

    /// Rewrites every `Set-Cookie` header in `headers` in place, as the layer does.
    /// `request_is_https` only matters under [`SecureMode::WhenHttps`].
    ///
    /// For servers that do not use tower; the layer calls this for you.
    ///
    /// ```
    /// use http::{HeaderMap, header::SET_COOKIE};
    /// use tower_rampart::cookie_policy::CookiePolicy;
    ///
    /// let mut headers = HeaderMap::new();
    /// headers.append(SET_COOKIE, "theme=dark".parse().unwrap());
    /// headers.append(SET_COOKIE, "__Host-sid=1; Domain=example.com".parse().unwrap());
    /// CookiePolicy::lax().apply(&mut headers, true);
    /// let cookies: Vec<_> = headers.get_all(SET_COOKIE).iter().collect();
    /// assert_eq!(cookies[0], "theme=dark; Secure; HttpOnly; SameSite=Lax");
    /// assert_eq!(cookies[1], "__Host-sid=1; Path=/; Secure; HttpOnly; SameSite=Lax");
    /// ```
    pub fn apply(&self, headers: &mut HeaderMap, request_is_https: bool) {
        if !headers.contains_key(SET_COOKIE) {
            return;
        }
        let Entry::Occupied(mut entry) = headers.entry(SET_COOKIE) else {
            return;
        };
        for (position, value) in entry.iter_mut().enumerate() {
            match rewrite::rewrite(self, value, request_is_https) {
                Ok(Some(new)) => *value = new,
                Ok(None) => {}
                Err(problem) => tracing::warn!(
                    problem = problem.describe(),
                    position,
                    "malformed Set-Cookie header from the inner service passed through unchanged"
                ),
            }
        }
    }

    fn is_script_readable(&self, name: &str) -> bool {
        self.script_readable.iter().any(|n| n == name)
    }

    fn now_secs(&self) -> i64 {
        i64::try_from(self.clock.now_micros() / 1_000_000).unwrap_or(i64::MAX)
    }
}

impl Default for CookiePolicy {
    /// [`CookiePolicy::lax`].
    fn default() -> Self {
        Self::lax()
    }
}

/// Builds a [`CookiePolicy`]; contradictions are reported by [`build`](Self::build).
///
/// Start from [`CookiePolicy::builder`] (the `lax` preset) or
/// [`CookiePolicy::into_builder`].
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct CookiePolicyBuilder {
    http_only: bool,
    script_readable: Vec<String>,
    secure: SecureMode,
    min_same_site: SameSite,
    partition_same_site_none: bool,
    max_age_cap: Option<Duration>,
    trusted_proxies: TrustedProxies,
    clock: Arc<dyn Clock>,
}

impl CookiePolicyBuilder {
    /// Whether to add `HttpOnly` to cookies (default `true`).
    ///
    /// **Risky when `false`**: any script injected into your pages can then read every cookie,
    /// session ids included. Prefer [`allow_script_access`](Self::allow_script_access) for the
    /// few cookies the front end must read.
    pub fn http_only(mut self, on: bool) -> Self {
        self.http_only = on;
        self
    }

    /// Exempts the cookie called `name` (exact, case-sensitive) from `HttpOnly`, for a cookie
    /// scripts must read (a CSRF token, a UI preference). May be called several times.
    ///
    /// The name must be a valid cookie name, and cannot start with `__Http-` or
    /// `__Host-Http-` (browsers require those to be `HttpOnly`); [`build`](Self::build)
    /// reports either mistake.
    pub fn allow_script_access(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        if !self.script_readable.contains(&name) {
            self.script_readable.push(name);
        }
        self
    }

    /// When to add `Secure` (default [`SecureMode::Always`]).
    pub fn secure(mut self, mode: SecureMode) -> Self {
        self.secure = mode;
        self
    }

    /// The weakest `SameSite` a cookie may leave with (default [`SameSite::Lax`]).
    ///
    /// [`SameSite::None`] as the minimum means "do not enforce": missing attributes stay
    /// missing. It cannot be combined with [`SecureMode::Never`].
    pub fn min_same_site(mut self, min: SameSite) -> Self {
        self.min_same_site = min;
        self
    }

    /// Whether to add `Partitioned` (CHIPS, "Cookies Having Independent Partitioned State")
    /// to every cookie that leaves with `SameSite=None` (default `false`).
    ///
    /// Browsers that block or restrict third-party cookies keep a partitioned one, in a jar
    /// keyed by the top-level site, so a service called from an app on another site keeps its
    /// cookies. Removal cookies get it too, so they match the cookie they remove. A cookie
    /// that already carries `Partitioned` is left as it is. Cannot be combined with
    /// [`SecureMode::Never`]: browsers reject `Partitioned` without `Secure`.
    pub fn partition_same_site_none(mut self, on: bool) -> Self {
        self.partition_same_site_none = on;
        self
    }

    /// The longest lifetime a cookie may ask for, or `None` for no cap (the default, except
    /// in [`CookiePolicy::strict`]). Whole seconds; it must be at least one second.
    pub fn max_age_cap(mut self, cap: impl Into<Option<Duration>>) -> Self {
        self.max_age_cap = cap.into();
        self
    }

    /// The proxies whose `X-Forwarded-Proto` / `Forwarded` headers decide whether a request
    /// came over HTTPS, for [`SecureMode::WhenHttps`] (default: nobody, only the request URI's
    /// scheme counts).
    pub fn trusted_proxies(mut self, proxies: impl Into<TrustedProxies>) -> Self {
        self.trusted_proxies = proxies.into();
        self
    }

    /// The clock `Expires` dates are compared with (default [`SystemClock`]).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Checks the policy for contradictions.
    ///
    /// # Errors
    ///
    /// - [`CookiePolicyError::SameSiteNoneWithoutSecure`]: minimum `SameSite::None` with
    ///   `SecureMode::Never`;
    /// - [`CookiePolicyError::PartitionedWithoutSecure`]:
    ///   [`partition_same_site_none`](Self::partition_same_site_none) with `SecureMode::Never`;
    /// - [`CookiePolicyError::ZeroMaxAgeCap`]: a lifetime cap under one second;
    /// - [`CookiePolicyError::InvalidCookieName`]: an allow-listed name that is not a cookie
    ///   name;
    /// - [`CookiePolicyError::ScriptAccessToHttpOnlyPrefix`]: an allow-listed `__Http-` or
    ///   `__Host-Http-` name.
    pub fn build(self) -> Result<CookiePolicy, CookiePolicyError> {
        if self.min_same_site == SameSite::None && self.secure == SecureMode::Never {
            return Err(CookiePolicyError::SameSiteNoneWithoutSecure);
        }
        if self.partition_same_site_none && self.secure == SecureMode::Never {
            return Err(CookiePolicyError::PartitionedWithoutSecure);
        }
        let max_age_cap = match self.max_age_cap {
            None => None,
            Some(cap) if cap.as_secs() == 0 => return Err(CookiePolicyError::ZeroMaxAgeCap),
            Some(cap) => Some(i64::try_from(cap.as_secs()).unwrap_or(i64::MAX)),
        };
        for name in &self.script_readable {
            if name.is_empty() || !name.bytes().all(is_tchar) {
                return Err(CookiePolicyError::InvalidCookieName { name: name.clone() });
            }
            if rewrite::has_http_only_prefix(name.as_bytes()) {
                return Err(CookiePolicyError::ScriptAccessToHttpOnlyPrefix { name: name.clone() });
            }
        }
        Ok(CookiePolicy {
            http_only: self.http_only,
            script_readable: self.script_readable,
            secure: self.secure,
            min_same_site: self.min_same_site,
            partition_same_site_none: self.partition_same_site_none,
            max_age_cap,
            max_age_cap_text: max_age_cap.map(|c| c.to_string()).unwrap_or_default(),
            trusted_proxies: self.trusted_proxies,
            clock: self.clock,
        })
    }

    /// For the presets, which are consistent by construction.
    fn build_infallible(self) -> CookiePolicy {
        match self.build() {
            Ok(policy) => policy,
            Err(err) => unreachable!("preset cookie policy is inconsistent: {err}"),
        }
    }
}

#[cfg(test)]
mod tests;
