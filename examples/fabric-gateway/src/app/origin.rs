//! The CSRF guard: a state-changing request from a browser page on a foreign origin is
//! refused with 403 before any handler runs.
//!
//! CORS alone does not stop such a request: a cross-site form post or a "simple" `fetch`
//! reaches the server (only its answer is hidden from the page), and with
//! `COOKIE_SAMESITE=none` the browser attaches the session cookie. Browsers always send
//! `Origin` on such requests, so a present `Origin` outside `ALLOWED_ORIGINS` is refused.
//! Requests without `Origin` (curl, server-to-server) are not browser-driven and pass.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::errors::ApiError;

/// The allowed origins, as the exact `Origin` header values browsers send.
#[derive(Clone, Debug)]
pub(crate) struct AllowedOrigins(Arc<[HeaderValue]>);

impl AllowedOrigins {
    pub(crate) fn new(origins: Vec<HeaderValue>) -> Self {
        Self(origins.into())
    }

    pub(crate) fn values(&self) -> Vec<HeaderValue> {
        self.0.to_vec()
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        self.0.iter().any(|o| o == origin)
    }
}

/// Middleware: 403 `{"detail"}` for a state-changing request whose `Origin` is not allowed.
pub(crate) async fn guard(
    State(allowed): State<AllowedOrigins>,
    req: Request,
    next: Next,
) -> Response {
    let state_changing = !matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    );
    if state_changing {
        // Every `Origin` value must be allowed (a request carrying two is refused unless both are).
        let mut origins = req.headers().get_all(header::ORIGIN).iter().peekable();
        if origins.peek().is_some() && !origins.all(|o| allowed.allows(o)) {
            // The value is attacker-chosen text: not logged.
            tracing::warn!("state-changing request from a foreign origin refused");
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "Origin not allowed: this API accepts requests only from its configured origins",
            )
            .into_response();
        }
    }
    next.run(req).await
}
