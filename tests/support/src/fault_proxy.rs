//! A TCP proxy on a loopback port that can add latency to, black-hole or cut the
//! connections it forwards, on command: the network faults of the fault runs, put between
//! the gateways and Redis.
//!
//! Plain threads, no runtime: each accepted connection gets one thread per direction that
//! reads and timestamps chunks and one that writes them once their delay has passed and the
//! proxy is not black-holed. Bytes are never dropped or reordered within a connection: a
//! black-hole holds them (like a network partition that TCP rides out) and delivers them when
//! it ends; [`FaultProxy::cut`] closes every connection (a reset network path).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How often a held chunk checks again whether it may go (black-hole, delays).
const TICK: Duration = Duration::from_millis(2);

#[derive(Debug, Default)]
struct State {
    /// Added to every chunk from the client to the server.
    latency: Duration,
    /// While set, nothing is forwarded in either direction (new connections are accepted).
    black_hole: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Both ends of every connection, to cut them.
    streams: Mutex<Vec<TcpStream>>,
    stopped: AtomicBool,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A proxy from a free loopback port to `127.0.0.1:target`. Dropping it stops accepting and
/// closes every connection.
#[derive(Debug)]
pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// Starts forwarding a free loopback port to `127.0.0.1:target`.
    pub fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fault proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            streams: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
        });
        let accept_shared = shared.clone();
        thread::Builder::new()
            .name(format!("fault-proxy-{port}"))
            .spawn(move || accept_loop(listener, target, accept_shared))
            .expect("spawn the fault proxy");
        Self { port, shared }
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Adds `latency` to every chunk sent toward the server (zero: none).
    pub fn set_latency(&self, latency: Duration) {
        self.shared.state().latency = latency;
    }

    /// Holds every byte in both directions while `on` (connections stay open; new ones are
    /// accepted and held too); releases them in order when it ends.
    pub fn set_black_hole(&self, on: bool) {
        self.shared.state().black_hole = on;
    }

    /// Closes every open connection (both ends); new connections are accepted as before.
    pub fn cut(&self) {
        let streams = std::mem::take(
            &mut *self
                .shared
                .streams
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for stream in streams {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::Release);
        self.cut();
        // Wake the accept loop so that it sees `stopped`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn accept_loop(listener: TcpListener, target: u16, shared: Arc<Shared>) {
    for incoming in listener.incoming() {
        if shared.stopped.load(Ordering::Acquire) {
            return;
        }
        let Ok(client) = incoming else { continue };
        let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
            // The target is down: so is the connection, as it would be without the proxy.
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        {
            let mut streams = shared.streams.lock().unwrap_or_else(|p| p.into_inner());
            streams.retain(|s| s.peer_addr().is_ok());
            for s in [&client, &server] {
                if let Ok(clone) = s.try_clone() {
                    streams.push(clone);
                }
            }
        }
        for (from, to, delayed) in [(&client, &server, true), (&server, &client, false)] {
            let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
                continue;
            };
            let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
            let reader_shared = shared.clone();
            let writer_shared = shared.clone();
            let _ = thread::Builder::new()
                .name("fault-proxy-read".into())
                .spawn(move || read_side(from, tx, reader_shared, delayed));
            let _ = thread::Builder::new()
                .name("fault-proxy-write".into())
                .spawn(move || write_side(to, rx, writer_shared));
        }
    }
}

/// Reads chunks and stamps each with the time it may leave.
fn read_side(
    mut from: TcpStream,
    tx: mpsc::Sender<(Instant, Vec<u8>)>,
    shared: Arc<Shared>,
    delayed: bool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let latency = if delayed {
                    shared.state().latency
                } else {
                    Duration::ZERO
                };
                if tx
                    .send((Instant::now() + latency, buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    // The writer drains what is queued, then closes its side.
}

/// Writes chunks when their time has come and the path is not black-holed.
fn write_side(mut to: TcpStream, rx: Receiver<(Instant, Vec<u8>)>, shared: Arc<Shared>) {
    loop {
        let (due, chunk) = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(item) => item,
            Err(RecvTimeoutError::Timeout) => {
                if shared.stopped.load(Ordering::Acquire) {
                    break;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        loop {
            if shared.stopped.load(Ordering::Acquire) {
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
            let held = shared.state().black_hole;
            let now = Instant::now();
            if !held && now >= due {
                break;
            }
            thread::sleep(if held {
                TICK
            } else {
                (due - now).min(TICK * 5)
            });
        }
        if to.write_all(&chunk).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on a loopback port.
    fn echo() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 || conn.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        port
    }

    fn round_trip(conn: &mut TcpStream, msg: &[u8]) -> Duration {
        let started = Instant::now();
        conn.write_all(msg).unwrap();
        let mut got = vec![0u8; msg.len()];
        conn.read_exact(&mut got).unwrap();
        assert_eq!(got, msg);
        started.elapsed()
    }

    #[test]
    fn forwards_delays_holds_and_cuts() {
        let proxy = FaultProxy::start(echo());
        let mut conn = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(round_trip(&mut conn, b"plain") < Duration::from_millis(150));

        proxy.set_latency(Duration::from_millis(200));
        let took = round_trip(&mut conn, b"slow");
        assert!(took >= Duration::from_millis(200), "{took:?}");
        proxy.set_latency(Duration::ZERO);

        // Held while black-holed, delivered in order afterwards.
        proxy.set_black_hole(true);
        conn.write_all(b"held").unwrap();
        conn.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 4];
        assert!(conn.read(&mut buf).is_err(), "nothing passes a black hole");
        proxy.set_black_hole(false);
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        conn.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"held");

        proxy.cut();
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest);
        assert!(rest.is_empty());
        // New connections work after a cut.
        let mut again = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
        again
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        round_trip(&mut again, b"again");
    }
}
