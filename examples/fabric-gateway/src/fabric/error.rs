//! Failures of a question, in the categories the browser app knows.

use std::fmt;

/// The failure categories of the old service's `error` field (`FABRIC_<CATEGORY>: ...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCategory {
    /// The data agent refused the token (401).
    AuthError,
    /// The user may not use the data agent (403).
    PermissionError,
    /// Wrong URL, agent not published, or capacity paused (404).
    NotFound,
    /// The data agent throttled us (429) longer than the question's deadline allows.
    RateLimit,
    /// 5xx after retries, or a run that failed on the server.
    ServerError,
    /// The question's deadline passed.
    Timeout,
    /// The data agent could not be reached.
    ConnectionError,
    /// The user's token has expired.
    TokenExpired,
    /// Anything else: protocol errors, tool errors, unexpected answers.
    Error,
}

impl ErrorCategory {
    /// The category's name as it appears after `FABRIC_` (e.g. `"AUTH_ERROR"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthError => "AUTH_ERROR",
            Self::PermissionError => "PERMISSION_ERROR",
            Self::NotFound => "NOT_FOUND",
            Self::RateLimit => "RATE_LIMIT",
            Self::ServerError => "SERVER_ERROR",
            Self::Timeout => "TIMEOUT",
            Self::ConnectionError => "CONNECTION_ERROR",
            Self::TokenExpired => "TOKEN_EXPIRED",
            Self::Error => "ERROR",
        }
    }

    /// The user-facing text for the category (the `response` field).
    pub fn user_message(self) -> &'static str {
        match self {
            Self::AuthError => "Authentication with the data agent failed. Please sign in again.",
            Self::PermissionError => "You do not have permission to use this data agent.",
            Self::NotFound => "The data agent was not found or is not published.",
            Self::RateLimit => {
                "The data agent is receiving too many requests. Please wait a moment and try again."
            }
            Self::ServerError => "The data agent had a problem answering. Please try again.",
            Self::Timeout => {
                "The data agent took too long to answer. Please try again or ask a simpler question."
            }
            Self::ConnectionError => "Could not reach the data agent. Please try again later.",
            Self::TokenExpired => "Your sign-in has expired. Please sign in again.",
            Self::Error => "The data agent could not answer this question.",
        }
    }
}

impl fmt::Display for ErrorCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A question that could not be answered.
///
/// [`FabricError::user_message`] goes into the response's `response` field and
/// [`FabricError::error_string`] into its `error` field. Neither contains the user's token
/// nor the data agent's error message verbatim (those may hold internal details); the
/// data agent's `errorCode` and `requestId` are kept for support.
///
/// ```
/// use fabric_gateway::fabric::{ErrorCategory, FabricError};
///
/// let e = FabricError::new(ErrorCategory::Timeout, "no answer within 120 s");
/// assert_eq!(e.error_string(), "FABRIC_TIMEOUT: no answer within 120 s");
/// assert_eq!(e.user_message(), ErrorCategory::Timeout.user_message());
/// ```
#[derive(Clone, Debug)]
pub struct FabricError {
    category: ErrorCategory,
    user_message: &'static str,
    detail: String,
    status: Option<u16>,
    error_code: Option<String>,
    request_id: Option<String>,
}

impl FabricError {
    /// An error of `category` with an internal `detail` (must not contain secrets).
    pub fn new(category: ErrorCategory, detail: impl Into<String>) -> Self {
        Self {
            category,
            user_message: category.user_message(),
            detail: detail.into(),
            status: None,
            error_code: None,
            request_id: None,
        }
    }

    pub(crate) fn with_user_message(mut self, message: &'static str) -> Self {
        self.user_message = message;
        self
    }

    pub(crate) fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    pub(crate) fn with_codes(
        mut self,
        error_code: Option<String>,
        request_id: Option<String>,
    ) -> Self {
        self.error_code = error_code;
        self.request_id = request_id;
        self
    }

    /// The category.
    pub fn category(&self) -> ErrorCategory {
        self.category
    }

    /// The text to show the user.
    pub fn user_message(&self) -> &str {
        self.user_message
    }

    /// `FABRIC_<CATEGORY>: <detail>`, for the response's `error` field.
    pub fn error_string(&self) -> String {
        format!("FABRIC_{}: {}", self.category.as_str(), self.detail)
    }

    /// The HTTP status the data agent answered, when the failure was an HTTP status.
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// The data agent's `errorCode`, if it sent one.
    pub fn error_code(&self) -> Option<&str> {
        self.error_code.as_deref()
    }

    /// The data agent's `requestId`, if it sent one.
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }
}

impl fmt::Display for FabricError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.error_string())
    }
}

impl std::error::Error for FabricError {}

/// Keeps an identifier from a remote answer only if it looks like one (no free text).
pub(crate) fn sanitize_code(value: &str) -> Option<String> {
    let v = value.trim();
    (!v.is_empty()
        && v.len() <= 100
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)))
    .then(|| v.to_owned())
}

pub(crate) const CAPACITY_PAUSED: &str =
    "The Fabric capacity behind the data agent is paused. Ask an administrator to resume it.";
