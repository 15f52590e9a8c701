//! The logging section: `LOG_FORMAT` and `RUST_LOG`.

/// `LOG_FORMAT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (the production default).
    Json,
    /// Human-readable (the development default).
    Pretty,
}
