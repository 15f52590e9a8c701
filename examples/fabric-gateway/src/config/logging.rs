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
    let default_format = if r.production {
        LogFormat::Json
    } else {
        LogFormat::Pretty
    };
    let log_format = r
        .one_of(
            "LOG_FORMAT",
            &[("json", LogFormat::Json), ("pretty", LogFormat::Pretty)],
        )
        .unwrap_or(default_format);
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
