//! The axum extractors of [`Session`] (feature `axum`).

use super::{Session, SessionError};
use axum::response::{IntoResponse, Response};
use http::StatusCode;

crate::axum_extract::extension_extractor!(
    Session,
    MissingSessionLayer,
    "the Session extractor needs tower_rampart::session::SessionLayer around this route",
    "crate::session::SessionLayer"
);

impl IntoResponse for SessionError {
    fn into_response(self) -> Response {
        let (status, body) = if self.is_unavailable() {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"detail":"Session store unavailable"}"#,
            )
        } else {
            // A data problem (a value of the wrong type, data over the size limit): the
            // message names the key or the sizes, never a value.
            tracing::error!(error = %self, "session error: answering 500");
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
