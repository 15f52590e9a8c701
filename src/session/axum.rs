//! The axum extractors of [`Session`] (feature `axum`).

use super::{Session, SessionError};
use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;
use std::convert::Infallible;
use std::fmt;

/// The rejection of the [`Session`] extractor: the router has no
/// [`SessionLayer`](crate::session::SessionLayer). A bug in the application, answered with
/// `500`.
#[derive(Clone, Copy, Debug, Default)]
pub struct MissingSessionLayer;

impl fmt::Display for MissingSessionLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "the Session extractor needs tower_rampart::session::SessionLayer around this route",
        )
    }
}

impl std::error::Error for MissingSessionLayer {}

impl IntoResponse for MissingSessionLayer {
    fn into_response(self) -> Response {
        tracing::error!("{self}");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(http::header::CONTENT_TYPE, "application/json")],
            format!(r#"{{"detail":"{self}"}}"#),
        )
            .into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = MissingSessionLayer;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Session>()
            .cloned()
            .ok_or(MissingSessionLayer)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Session {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Session>().cloned())
    }
}

impl IntoResponse for SessionError {
    fn into_response(self) -> Response {
        let (status, body) = if self.is_unavailable() {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"detail":"Session store unavailable"}"#,
            )
        } else {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                r#"{"detail":"Session data error"}"#,
            )
        };
        (
            status,
            [(http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}
