//! `{"detail": "..."}` error bodies: the handlers' error type, the JSON body extractor that
//! turns axum's rejections into them, and the last-resort mapper for every other error
//! response (404, 405, 413, timeouts).

use std::borrow::Cow;

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;
use tower_rampart::session::SessionError;

/// The request body limit, in bytes (64 KiB).
pub const BODY_LIMIT_BYTES: usize = 64 * 1024;

/// An error answer: a status and a `detail` message (never a secret).
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    detail: Cow<'static, str>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, detail: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            detail: detail.into(),
        }
    }

    pub(crate) fn unauthorized(detail: &'static str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, detail)
    }

    pub(crate) fn unprocessable(detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "detail": self.detail }))).into_response()
    }
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        // The session layer logs store failures (once per burst); the detail says no more
        // than that the store is unavailable.
        if e.is_unavailable() {
            Self::new(StatusCode::SERVICE_UNAVAILABLE, "Session store unavailable")
        } else {
            tracing::error!(error = %e, "session data error");
            Self::new(StatusCode::INTERNAL_SERVER_ERROR, "Session data error")
        }
    }
}

/// `Json<T>` whose rejections are `{"detail"}` bodies: 400 malformed JSON, 422 wrong
/// shape, 415 wrong content type, 413 body over the limit.
#[derive(Debug)]
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            // The texts name the field and position; values shown are the caller's own input,
            // and rejections are not logged.
            Err(rejection) => Err(ApiError::new(
                rejection.status(),
                detail_for(rejection.status()).unwrap_or_else(|| rejection.body_text().into()),
            )),
        }
    }
}

/// Fixed texts for statuses whose axum text is unhelpful.
fn detail_for(status: StatusCode) -> Option<Cow<'static, str>> {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => Some(
            format!(
                "Request body too large: the limit is {} KiB",
                BODY_LIMIT_BYTES / 1024
            )
            .into(),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            Some("Expected a JSON body with Content-Type: application/json".into())
        }
        _ => None,
    }
}

/// Gives every error response without a JSON body a `{"detail"}` body: the router's 404 and
/// 405, the body limit's 413, the timeout's 504, anything a layer answers with an empty or
/// plain-text body. JSON error bodies (the handlers', the rate limiter's, the session
/// layer's) are left as they are.
pub(crate) async fn json_error_bodies<B>(response: axum::http::Response<B>) -> Response
where
    B: http_body::Body<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response.map(Body::new);
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response.map(Body::new);
    }
    let detail = detail_for(status).unwrap_or_else(|| {
        match status {
            StatusCode::NOT_FOUND => "Not Found",
            StatusCode::METHOD_NOT_ALLOWED => "Method Not Allowed",
            StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => {
                "The request took too long and was stopped"
            }
            _ => status.canonical_reason().unwrap_or("Error"),
        }
        .into()
    });
    let (mut parts, _) = response.into_parts();
    let body = serde_json::to_vec(&json!({ "detail": detail })).unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body))
}
