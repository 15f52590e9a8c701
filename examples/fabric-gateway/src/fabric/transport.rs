//! One HTTP exchange with the data agent: headers, deadline, retries, error mapping.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};
use reqwest::{RequestBuilder, Response};
use tokio::time::Instant;

use crate::outbound::HttpClient;

use super::error::{CAPACITY_PAUSED, ErrorCategory, FabricError, sanitize_code};

/// Largest error or answer body read into memory.
pub(crate) const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// How many `429 Retry-After` waits one request may do (each within the deadline).
const MAX_RATE_LIMIT_WAITS: u32 = 5;

/// What every request of one question carries.
#[derive(Clone)]
pub(crate) struct Call {
    authorization: HeaderValue,
    activity_id: Option<HeaderValue>,
    pub(crate) deadline: Instant,
    pub(crate) timeout: Duration,
}

impl Call {
    pub(crate) fn new(
        user_token: &str,
        correlation_id: &str,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Self, FabricError> {
        let token = user_token.trim();
        let mut authorization = HeaderValue::try_from(format!("Bearer {token}"))
            .ok()
            .filter(|_| !token.is_empty())
            .ok_or_else(|| {
                FabricError::new(
                    ErrorCategory::AuthError,
                    "the user's token is empty or malformed",
                )
            })?;
        authorization.set_sensitive(true);
        let activity_id = HeaderValue::try_from(correlation_id)
            .ok()
            .filter(|_| !correlation_id.is_empty());
        Ok(Self {
            authorization,
            activity_id,
            deadline,
            timeout,
        })
    }

    pub(crate) fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    pub(crate) fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, self.authorization.clone());
        if let Some(id) = &self.activity_id {
            h.insert("ActivityId", id.clone());
        }
        h
    }

    pub(crate) fn timeout_error(&self, what: &str) -> FabricError {
        FabricError::new(
            ErrorCategory::Timeout,
            format!(
                "no answer within the {} s deadline ({what})",
                self.timeout.as_secs_f64()
            ),
        )
    }

    /// The error for an answer body that could not be read to its end.
    pub(crate) fn body_error(&self, what: &str, e: &reqwest::Error) -> FabricError {
        if e.is_timeout() {
            self.timeout_error(what)
        } else {
            FabricError::new(
                ErrorCategory::ConnectionError,
                format!("{what}: the connection broke while reading the answer"),
            )
        }
    }
}

/// Retry policy and the shared connection pool.
#[derive(Clone, Debug)]
pub(crate) struct Transport {
    pub(crate) client: HttpClient,
    pub(crate) attempt_timeout: Duration,
    pub(crate) retry_backoff: Duration,
    pub(crate) max_retries: u32,
}

impl Transport {
    /// Sends the request `build` makes (called again for each attempt) with the call's
    /// headers. Retries 5xx, timeouts and connection failures at most `max_retries` times
    /// with exponential backoff; waits out `429 Retry-After` when the deadline allows.
    /// Non-success statuses become [`FabricError`]s.
    pub(crate) async fn send<F>(
        &self,
        call: &Call,
        what: &str,
        attempt_timeout: Option<Duration>,
        build: F,
    ) -> Result<Response, FabricError>
    where
        F: Fn() -> RequestBuilder,
    {
        let mut retries = 0u32;
        let mut waits = 0u32;
        loop {
            let remaining = call.remaining();
            if remaining.is_zero() {
                return Err(call.timeout_error(what));
            }
            let per_attempt = attempt_timeout
                .unwrap_or(self.attempt_timeout)
                .min(remaining);
            let result = self
                .client
                .send(build().headers(call.headers()).timeout(per_attempt))
                .await;
            let (retryable, error, wait) = match result {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after = retry_after(resp.headers());
                    let error = error_from_response(resp, what).await;
                    if status == StatusCode::TOO_MANY_REQUESTS {
                        match retry_after {
                            Some(d) if waits < MAX_RATE_LIMIT_WAITS && d < call.remaining() => {
                                waits += 1;
                                tracing::info!(
                                    what,
                                    retry_after_secs = d.as_secs(),
                                    request_id = error.request_id(),
                                    "data agent throttled the request; waiting as told"
                                );
                                tokio::time::sleep(d).await;
                                continue;
                            }
                            _ => return Err(error),
                        }
                    }
                    (status.is_server_error(), error, retry_after)
                }
                Err(e) => {
                    let timed_out = e.is_timeout();
                    let error = if timed_out && call.remaining().is_zero() {
                        call.timeout_error(what)
                    } else if timed_out {
                        FabricError::new(
                            ErrorCategory::Timeout,
                            format!("{what}: no answer within {} s", per_attempt.as_secs_f64()),
                        )
                    } else {
                        // reqwest's error text names the URL, never headers.
                        FabricError::new(
                            ErrorCategory::ConnectionError,
                            format!("{what}: cannot reach the data agent"),
                        )
                    };
                    tracing::warn!(what, error = %e, "data agent request failed");
                    (timed_out || e.is_connect() || e.is_request(), error, None)
                }
            };
            if !retryable || retries >= self.max_retries {
                return Err(error);
            }
            let backoff = self
                .retry_backoff
                .saturating_mul(1 << retries)
                .max(wait.unwrap_or_default());
            if backoff >= call.remaining() {
                return Err(error);
            }
            retries += 1;
            tracing::info!(
                what,
                attempt = retries + 1,
                category = error.category().as_str(),
                status = error.status(),
                request_id = error.request_id(),
                "retrying data agent request"
            );
            tokio::time::sleep(backoff).await;
        }
    }
}

/// `Retry-After` in seconds (an HTTP date is not used by Fabric; treated as absent).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.max(1)))
}

/// Reads at most `limit` bytes of the body.
pub(crate) async fn read_body(
    resp: &mut Response,
    limit: usize,
) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = limit.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= limit {
            break;
        }
    }
    Ok(body)
}

/// Maps a non-success response to a [`FabricError`], logging Fabric's `requestId` and
/// `errorCode` (never the body's message, which goes neither to logs nor to users).
pub(crate) async fn error_from_response(mut resp: Response, what: &str) -> FabricError {
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = read_body(&mut resp, 64 * 1024).await.unwrap_or_default();
    let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    let field = |name: &str| -> Option<String> {
        let v = json.as_ref()?;
        v.get(name)
            .or_else(|| v.get("error").and_then(|e| e.get(name)))
            .and_then(|x| x.as_str())
            .and_then(sanitize_code)
    };
    let error_code = field("errorCode").or_else(|| field("code"));
    let request_id = field("requestId").or_else(|| {
        ["x-ms-request-id", "requestid", "x-request-id"]
            .iter()
            .find_map(|h| headers.get(*h)?.to_str().ok().and_then(sanitize_code))
    });
    let body_text = String::from_utf8_lossy(&body);
    let www_auth = headers
        .get(http::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let code_lower = error_code.as_deref().unwrap_or("").to_ascii_lowercase();
    let mut user_message = None;
    let category = match status.as_u16() {
        401 if code_lower.contains("expired")
            || www_auth.to_ascii_lowercase().contains("expired") =>
        {
            ErrorCategory::TokenExpired
        }
        401 => ErrorCategory::AuthError,
        403 => ErrorCategory::PermissionError,
        404 => {
            if code_lower.contains("capacitynotactive") || body_text.contains("CapacityNotActive") {
                user_message = Some(CAPACITY_PAUSED);
            }
            ErrorCategory::NotFound
        }
        408 => ErrorCategory::Timeout,
        429 => ErrorCategory::RateLimit,
        s if s >= 500 => ErrorCategory::ServerError,
        _ => ErrorCategory::Error,
    };
    tracing::warn!(
        what,
        status = status.as_u16(),
        category = category.as_str(),
        error_code = error_code.as_deref(),
        request_id = request_id.as_deref(),
        "data agent answered with an error"
    );
    let mut detail = format!("{what}: the data agent answered {status}");
    if let Some(code) = &error_code {
        detail.push_str(&format!(" (errorCode {code})"));
    }
    if let Some(id) = &request_id {
        detail.push_str(&format!(" (requestId {id})"));
    }
    let mut error = FabricError::new(category, detail)
        .with_status(status.as_u16())
        .with_codes(error_code, request_id);
    if let Some(m) = user_message {
        error = error.with_user_message(m);
    }
    error
}
