//! The logging section: `LOG_FORMAT` and `RUST_LOG`.

use super::Reader;

/// `LOG_FORMAT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (the production default).
    Json,
    /// Human-readable (the development default).
    Pretty,
}

/// What the logging section reads.
pub(super) struct Logging {
    pub(super) log_format: LogFormat,
    pub(super) rust_log: String,
}

/// Reads `LOG_FORMAT` (JSON by default in production) and `RUST_LOG` (a valid filter).
pub(super) fn read(r: &mut Reader<'_>) -> Logging {
    let log_format = match r
        .get("LOG_FORMAT")
        .map(|v| v.to_ascii_lowercase())
        .as_deref()
    {
        None if r.production => LogFormat::Json,
        None => LogFormat::Pretty,
        Some("json") => LogFormat::Json,
        Some("pretty") => LogFormat::Pretty,
        Some(other) => {
            r.problem(
                "LOG_FORMAT",
                format!("{other:?} is not one of json, pretty"),
            );
            LogFormat::Pretty
        }
    };
    let rust_log = r.get("RUST_LOG").unwrap_or_else(|| "info".to_owned());
    if tracing_subscriber::EnvFilter::try_new(&rust_log).is_err() {
        r.problem(
            "RUST_LOG",
            format!("{rust_log:?} is not a valid tracing filter"),
        );
    }

    Logging {
        log_format,
        rust_log,
    }
}
