//! Helpers shared by the integration tests that need no Redis (those that do also use
//! `tests/support`): requests from a given TCP peer, log capture, the shape of minted ids,
//! a reproducible generator.
//!
//! ```ignore
//! mod common;
//! let req = common::from_peer("10.0.0.2:1", &[("x-forwarded-for", "198.51.100.4")]);
//! ```
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::io;
use std::sync::{Arc, Mutex};

/// A `GET /` with `headers`, arriving from the TCP peer `peer` (`"10.0.0.2:1"`).
#[cfg(any(feature = "cookie-policy", feature = "rate-limit"))]
pub fn from_peer(peer: &str, headers: &[(&str, &str)]) -> http::Request<()> {
    let mut builder = http::Request::builder().uri("/");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let mut req = builder.body(()).unwrap();
    req.extensions_mut().insert(tower_rampart::net::PeerAddr(
        peer.parse::<std::net::SocketAddr>().unwrap(),
    ));
    req
}

/// Log output kept in memory: give a clone to `tracing_subscriber::fmt().with_writer(..)`
/// and read everything written so far with [`Capture::text`].
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    /// Everything written so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }

    /// Everything written so far (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Whether `id` has the shape of a hyphenated UUIDv7, as the correlation layer mints them.
pub fn is_uuid_v7(id: &str) -> bool {
    id.len() == 36
        && id.as_bytes()[14] == b'7'
        && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

/// A small deterministic generator (xorshift64), so failures of generated tests reproduce.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}
