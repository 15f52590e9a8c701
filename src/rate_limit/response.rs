//! Responses: the 429 (or gRPC `RESOURCE_EXHAUSTED`), the standard headers, the body type.

use std::fmt::Write as _;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::quota::Quota;

/// `RateLimit-Policy` (IETF httpapi draft -11).
pub static RATELIMIT_POLICY: HeaderName = RATELIMIT_POLICY_NAME;
/// `RateLimit` (IETF httpapi draft -11).
pub static RATELIMIT: HeaderName = RATELIMIT_NAME;

/// The two names as values the layer builds in place where it inserts them (inserting a
/// static clones it: a call per header and per response); the statics above are these.
pub(crate) const RATELIMIT_POLICY_NAME: HeaderName = HeaderName::from_static("ratelimit-policy");
pub(crate) const RATELIMIT_NAME: HeaderName = HeaderName::from_static("ratelimit");

const GRPC_RESOURCE_EXHAUSTED: &str = "8";
const GRPC_INTERNAL: &str = "13";
const GRPC_INVALID_ARGUMENT: &str = "3";
const GRPC_UNAVAILABLE: &str = "14";

/// Why a request was not admitted (see [`Rejection::reason`]).
///
/// ```
/// use http::HeaderValue;
/// use tower_rampart::rate_limit::{RejectReason, Rejection};
///
/// fn body(r: &Rejection<'_>) -> (HeaderValue, Vec<u8>) {
///     let text = match r.reason() {
///         RejectReason::Exceeded => "slow down",
///         RejectReason::Unavailable => "try again in a moment",
///         _ => "request refused",
///     };
///     (HeaderValue::from_static("text/plain"), text.as_bytes().to_vec())
/// }
/// # let _ = body;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectReason {
    /// A quota is used up (429 / gRPC 8).
    Exceeded,
    /// The request has no key for a quota whose rule is
    /// [`MissingKey::Reject`](super::MissingKey::Reject) (429 / gRPC 8, no `Retry-After`).
    MissingKey,
    /// The request's cost exceeds a quota's burst: it can never be admitted (429 / gRPC 8, no
    /// `Retry-After`).
    CostTooHigh,
    /// Redis is unreachable and the failure mode is
    /// [`FailureMode::Closed`](super::FailureMode::Closed) (503 / gRPC 14 `UNAVAILABLE`).
    Unavailable,
    /// The server records no client address for a quota keyed by it
    /// ([`NoKey::NoClientAddress`](super::NoKey::NoClientAddress)): a deployment mistake
    /// (500 / gRPC 13 `INTERNAL`, no `Retry-After`; the fix is in the log).
    NoClientAddress,
    /// The client sent an unusable key ([`NoKey::Unusable`](super::NoKey::Unusable)): a key
    /// header twice with different values, a malformed forwarding chain (400 / gRPC 3
    /// `INVALID_ARGUMENT`, no `Retry-After`).
    UnusableKey,
}

/// What a [`RejectionBody`] is told about a refused request.
///
/// ```
/// use http::HeaderValue;
/// use tower_rampart::rate_limit::Rejection;
///
/// // A body naming the quota and the wait.
/// fn body(r: &Rejection<'_>) -> (HeaderValue, Vec<u8>) {
///     let wait = r.retry_after().map_or(0, |d| d.as_secs());
///     let text = format!("{} (quota {:?}, retry in {wait} s)", r.message(), r.quota_name());
///     (HeaderValue::from_static("text/plain"), text.into_bytes())
/// }
/// # let _ = body;
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Rejection<'a> {
    pub(crate) reason: RejectReason,
    pub(crate) quota: Option<(&'a str, &'a Quota)>,
    pub(crate) cost: u64,
    pub(crate) retry_after: Option<Duration>,
}

impl Rejection<'_> {
    /// Why the request was refused.
    pub fn reason(&self) -> RejectReason {
        self.reason
    }

    /// The name of the quota that refused it (none for [`RejectReason::Unavailable`]).
    pub fn quota_name(&self) -> Option<&str> {
        self.quota.map(|q| q.0)
    }

    /// The quota that refused it.
    pub fn quota(&self) -> Option<&Quota> {
        self.quota.map(|q| q.1)
    }

    /// When the request could succeed (the `Retry-After` value, before rounding), if ever.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The HTTP status this rejection is answered with (gRPC requests get 200 and a
    /// `grpc-status` instead).
    pub fn status(&self) -> StatusCode {
        match self.reason {
            RejectReason::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            RejectReason::NoClientAddress => StatusCode::INTERNAL_SERVER_ERROR,
            RejectReason::UnusableKey => StatusCode::BAD_REQUEST,
            _ => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The default human-readable message, e.g. `Rate limit exceeded: 10 per 1 minute`.
    pub fn message(&self) -> String {
        let name = self.quota_name().unwrap_or("");
        match (self.reason, self.quota()) {
            (RejectReason::Exceeded, Some(q)) => format!("Rate limit exceeded: {q}"),
            (RejectReason::MissingKey, _) => {
                format!("Rate limit exceeded: no key for quota \"{name}\"")
            }
            (RejectReason::CostTooHigh, Some(q)) => {
                format!(
                    "Rate limit exceeded: request cost {} exceeds {q}",
                    self.cost
                )
            }
            (RejectReason::Unavailable, _) => "Rate limiter unavailable".to_owned(),
            (RejectReason::NoClientAddress, _) => {
                "Server misconfigured: the rate limiter cannot see client addresses".to_owned()
            }
            (RejectReason::UnusableKey, _) => format!(
                "Bad request: the value for quota \"{name}\" is unusable (a key header sent twice \
                 with different values, or a malformed forwarding header)"
            ),
            _ => "Rate limit exceeded".to_owned(),
        }
    }
}

/// Builds the body of a rejection: a content type and the bytes.
///
/// The default, [`JsonRejection`], answers `{"detail": "Rate limit exceeded: 10 per 1 minute"}`.
/// Any `Fn(&Rejection) -> (HeaderValue, Vec<u8>)` closure works:
///
/// ```
/// use http::HeaderValue;
/// use tower_rampart::rate_limit::{Key, Quota, RateLimitLayer, Rejection};
///
/// let layer = RateLimitLayer::builder()
///     .quota("ip", Quota::per_minute(10), Key::peer_ip())
///     .rejection_body(|r: &Rejection<'_>| {
///         (HeaderValue::from_static("text/plain; charset=utf-8"), r.message().into_bytes())
///     })
///     .build()
///     .unwrap();
/// # let _ = layer;
/// ```
///
/// gRPC requests never get a body: their message goes to `grpc-message`.
pub trait RejectionBody: Send + Sync + 'static {
    /// Content type and body of the response to `rejection`.
    fn body(&self, rejection: &Rejection<'_>) -> (HeaderValue, Vec<u8>);
}

impl<F> RejectionBody for F
where
    F: Fn(&Rejection<'_>) -> (HeaderValue, Vec<u8>) + Send + Sync + 'static,
{
    fn body(&self, rejection: &Rejection<'_>) -> (HeaderValue, Vec<u8>) {
        self(rejection)
    }
}

/// The default rejection body: `{"detail": "<message>"}` as `application/json`, e.g.
/// `{"detail": "Rate limit exceeded: 10 per 1 minute"}`.
///
/// ```
/// use tower_rampart::rate_limit::{JsonRejection, Key, Quota, RateLimitLayer};
///
/// let layer = RateLimitLayer::builder()
///     .quota("ip", Quota::per_minute(10), Key::peer_ip())
///     .rejection_body(JsonRejection) // the default, spelled out
///     .build()
///     .unwrap();
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonRejection;

impl RejectionBody for JsonRejection {
    fn body(&self, rejection: &Rejection<'_>) -> (HeaderValue, Vec<u8>) {
        let mut out = String::from("{\"detail\": \"");
        for c in rejection.message().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if u32::from(c) < 0x20 => {
                    let _ = write!(out, "\\u{:04x}", u32::from(c));
                }
                c => out.push(c),
            }
        }
        out.push_str("\"}");
        (
            HeaderValue::from_static("application/json"),
            out.into_bytes(),
        )
    }
}

/// Whole seconds, rounded up.
pub(crate) fn ceil_secs(us: u64) -> u64 {
    us.div_ceil(1_000_000)
}

/// `"name";q=10;w=60` items, comma separated.
pub(crate) fn policy_value<'a>(quotas: impl Iterator<Item = (&'a str, &'a Quota)>) -> String {
    let mut out = String::new();
    for (name, q) in quotas {
        if !out.is_empty() {
            out.push_str(", ");
        }
        let _ = write!(
            out,
            "\"{name}\";q={};w={}",
            q.limit(),
            ceil_secs(q.window_us).max(1)
        );
    }
    out
}

/// The start of a quota's `RateLimit` item, `"name";r=`, rendered once when the layer is
/// built.
pub(crate) fn status_prefix(name: &str) -> Box<str> {
    format!("\"{name}\";r=").into_boxed_str()
}

/// One `"name";r=3;t=42` item, after its [`status_prefix`]: written byte by byte, without the
/// formatting machinery (this runs on every admitted request).
pub(crate) fn push_status(out: &mut String, prefix: &str, remaining: u64, reset_us: u64) {
    if !out.is_empty() {
        out.push_str(", ");
    }
    out.push_str(prefix);
    push_u64(out, remaining);
    out.push_str(";t=");
    push_u64(out, ceil_secs(reset_us));
}

/// The bytes [`push_status`] appends (its separator included unless `first`).
pub(crate) fn status_len(first: bool, prefix: &str, remaining: u64, reset_us: u64) -> usize {
    let separator = if first { 0 } else { 2 };
    separator + prefix.len() + digits(remaining) + 3 + digits(ceil_secs(reset_us))
}

/// The number of decimal digits of `n`.
fn digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// A header value holding `n` in decimal, built in one allocation of exactly its length, which
/// the header keeps as it is (`HeaderValue::from(u64)` makes two).
pub(crate) fn header_u64(n: u64) -> HeaderValue {
    let mut text = String::with_capacity(digits(n));
    push_u64(&mut text, n);
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from(n))
}

/// Appends `n` in decimal (two digits a step, no formatting machinery: this runs on every
/// admitted request).
fn push_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Whether the request is gRPC (`content-type: application/grpc…`).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Percent-encodes a `grpc-message` (the gRPC over HTTP/2 spec).
fn grpc_message(msg: &str) -> HeaderValue {
    let mut out = String::with_capacity(msg.len());
    for b in msg.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    HeaderValue::from_str(&out).unwrap_or(HeaderValue::from_static("rate limited"))
}

/// Builds the short-circuit response (the body as bytes, wrapped later).
pub(crate) fn rejection_response(
    rejection: &Rejection<'_>,
    grpc: bool,
    headers: HeaderMap,
    body: impl FnOnce(&Rejection<'_>) -> (HeaderValue, Vec<u8>),
) -> http::Response<Vec<u8>> {
    let mut resp = http::Response::new(Vec::new());
    *resp.headers_mut() = headers;
    if let Some(retry) = rejection.retry_after {
        let secs = ceil_secs(u64::try_from(retry.as_micros()).unwrap_or(u64::MAX)).max(1);
        resp.headers_mut()
            .insert(http::header::RETRY_AFTER, header_u64(secs));
    }
    if grpc {
        let code = match rejection.reason {
            RejectReason::Unavailable => GRPC_UNAVAILABLE,
            RejectReason::NoClientAddress => GRPC_INTERNAL,
            RejectReason::UnusableKey => GRPC_INVALID_ARGUMENT,
            _ => GRPC_RESOURCE_EXHAUSTED,
        };
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from_static(code));
        h.insert("grpc-message", grpc_message(&rejection.message()));
        return resp;
    }
    *resp.status_mut() = rejection.status();
    let (content_type, bytes) = body(rejection);
    resp.headers_mut()
        .insert(http::header::CONTENT_TYPE, content_type);
    *resp.body_mut() = bytes;
    resp
}

/// Response body of the rate limit layer: the inner service's body, or the layer's own
/// rejection body.
pub type RateLimitBody<B> = crate::body::LayerBody<B>;

#[cfg(test)]
mod tests {
    use super::*;

    fn rejection<'a>(q: &'a Quota, reason: RejectReason) -> Rejection<'a> {
        Rejection {
            reason,
            quota: Some(("ip", q)),
            cost: 1,
            retry_after: Some(Duration::from_millis(2_001)),
        }
    }

    #[test]
    fn default_body_and_headers() {
        let q = Quota::per_minute(10);
        let r = rejection(&q, RejectReason::Exceeded);
        let resp = rejection_response(&r, false, HeaderMap::new(), |r| JsonRejection.body(r));
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            String::from_utf8(resp.body().clone()).unwrap(),
            r#"{"detail": "Rate limit exceeded: 10 per 1 minute"}"#
        );
        assert_eq!(resp.headers()["retry-after"], "3");
        assert_eq!(resp.headers()["content-type"], "application/json");
        let m = rejection(&q, RejectReason::MissingKey);
        let body =
            rejection_response(&m, false, HeaderMap::new(), |r| JsonRejection.body(r)).into_body();
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"{"detail": "Rate limit exceeded: no key for quota \"ip\""}"#
        );
    }

    #[test]
    fn grpc_gets_a_trailers_only_response() {
        let q = Quota::per_minute(10);
        let r = rejection(&q, RejectReason::Exceeded);
        let resp = rejection_response(&r, true, HeaderMap::new(), |r| JsonRejection.body(r));
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["grpc-status"], "8");
        assert_eq!(
            resp.headers()["grpc-message"],
            "Rate limit exceeded: 10 per 1 minute"
        );
        assert!(resp.body().is_empty());
        let u = Rejection {
            reason: RejectReason::Unavailable,
            quota: None,
            cost: 1,
            retry_after: None,
        };
        let resp = rejection_response(&u, true, HeaderMap::new(), |r| JsonRejection.body(r));
        assert_eq!(resp.headers()["grpc-status"], "14");
        assert_eq!(grpc_message("50% ü"), "50%25 %C3%BC");
    }

    #[test]
    fn header_syntax() {
        let a = Quota::per_minute(10);
        let b = Quota::window(5, Duration::from_millis(1_500));
        assert_eq!(
            policy_value([("ip", &a), ("session", &b)].into_iter()),
            r#""ip";q=10;w=60, "session";q=5;w=2"#
        );
        let mut s = String::new();
        push_status(&mut s, &status_prefix("ip"), 3, 41_000_001);
        push_status(&mut s, &status_prefix("session"), 0, 0);
        assert_eq!(s, r#""ip";r=3;t=42, "session";r=0;t=0"#);
        for n in [0, 7, 10, 99, 100, 12_345, u64::from(u32::MAX), u64::MAX] {
            let mut s = String::new();
            push_u64(&mut s, n);
            assert_eq!(s, n.to_string());
        }
        assert_eq!(ceil_secs(1), 1);
        assert_eq!(ceil_secs(2_000_000), 2);
    }
}
