//! What the session benches (`session`, `session_redis`) share: the session a handler writes,
//! the request they send and the cookie they read back.

use std::sync::atomic::{AtomicU64, Ordering};

use http::{Request, Response, header};
use tower_rampart::session::Session;

/// What the benches' handler does with the session.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Nothing: the session is never touched.
    Nothing,
    /// Reads `n`.
    Read,
    /// Writes `n` (the next value of `counter`).
    Write,
}

/// The handler's body for `work` on `session`.
pub async fn answer(work: Work, session: Option<Session>, counter: &AtomicU64) -> String {
    match (work, session) {
        (Work::Read, Some(s)) => s.get::<u64>("n").await.unwrap().unwrap_or(0).to_string(),
        (Work::Write, Some(s)) => {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            s.insert("n", n).await.unwrap();
            n.to_string()
        }
        _ => "hello".to_owned(),
    }
}

/// What the benches' handler writes into a new session: `n` and a few other small values.
pub async fn fill(s: &Session) {
    s.insert("n", 0u64).await.unwrap();
    s.insert("user", "someone@example.com").await.unwrap();
    s.insert("roles", ["reader", "writer"]).await.unwrap();
}

/// The `name=value` pair of the response's `Set-Cookie`.
pub fn cookie_pair<B>(res: &Response<B>) -> String {
    res.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

/// A request for `/`, with the session `cookie` after another cookie (as browsers send them).
pub fn request(cookie: Option<&str>) -> Request<()> {
    let mut b = Request::get("/").header(header::HOST, "example.com");
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, format!("theme=dark; {c}"));
    }
    b.body(()).unwrap()
}
