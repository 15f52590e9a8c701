//! The telemetry section: `METRICS_ADDR`.

use std::net::SocketAddr;

use super::Reader;

/// What the telemetry section reads.
pub(super) struct Telemetry {
    pub(super) metrics_addr: Option<SocketAddr>,
}

/// Reads `METRICS_ADDR`: a socket address of its own, never the public one (`bind_addr`).
pub(super) fn read(r: &mut Reader<'_>, bind_addr: SocketAddr) -> Telemetry {
    let metrics_addr = r
        .get("METRICS_ADDR")
        .and_then(|value| match value.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                r.problem(
                    "METRICS_ADDR",
                    format!("{value:?} is not a socket address like 127.0.0.1:9464"),
                );
                None
            }
        });
    if let Some(addr) = metrics_addr
        && overlaps(addr, bind_addr)
    {
        r.problem(
            "METRICS_ADDR",
            format!(
                "{addr} is the public listen address ({bind_addr}): metrics need a listener of their own"
            ),
        );
    }
    Telemetry { metrics_addr }
}

/// Whether listening on `a` would collide with listening on `b` (same port, and the same
/// address or either one the unspecified address). Port 0 (any free port) never collides.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}
