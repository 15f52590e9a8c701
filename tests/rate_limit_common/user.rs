//! Per-user quotas ([`Key::user`], [`Key::user_or_session`]) in front of a session layer that
//! tags cookies with their user: the scenario both backends run.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt};
use tower_rampart::rate_limit::{Key, Limit, MissingKey, Quota, RateLimitBuilder, RateLimitLayer};
use tower_rampart::session::{
    MemoryStore, Session, SessionConfig, SessionCookieReader, SessionLayer,
};

use super::{header, req_from, req_with};

/// What the scenario leaves for backend-specific checks.
pub struct Outcome {
    pub layer: RateLimitLayer,
    pub reader: SessionCookieReader,
    /// Alice's cookies (`name=value`) of her two sign-ins.
    pub alice: [String; 2],
}

/// A session layer tagging cookies (memory store) behind `builder` with a 3-per-minute quota
/// named `user` keyed by [`Key::user`] (or [`Key::user_or_session`]), skipped without a key.
/// Routes: `/login/{user}` starts a fresh session of `user`, `/anon` starts a session without
/// a user, anything else reads nothing.
///
/// Alice uses her quota across two sign-ins (two cookie jars): 2 requests in the first
/// session, then 1 in the second, and the next request of either session is refused. Bob is
/// not affected. A session without a user is skipped by `Key::user` and counted by session
/// with `Key::user_or_session`. Forged cookies have no key.
pub async fn a_users_count_survives_a_new_sign_in(
    builder: RateLimitBuilder,
    or_session: bool,
) -> Outcome {
    let config = SessionConfig::builder()
        .key(b"a test key of at least thirty-two bytes!!")
        .secure(false)
        .user_tag(true)
        .build()
        .unwrap();
    let sessions = SessionLayer::new(MemoryStore::new(), config);
    let reader = sessions.cookie_reader();
    let key = if or_session {
        Key::user_or_session(reader.clone())
    } else {
        Key::user(reader.clone())
    };
    let layer = builder
        .limit(Limit::new("user", Quota::per_minute(3), key).on_missing_key(MissingKey::Skip))
        .build()
        .unwrap();
    let app = ServiceBuilder::new()
        .layer(layer.clone())
        .layer(sessions)
        .service_fn(|req: Request<Full<Bytes>>| async move {
            let session = req.extensions().get::<Session>().unwrap().clone();
            let path = req.uri().path().to_owned();
            if let Some(user) = path.strip_prefix("/login/") {
                session.delete().await?;
                session.set_user_id(user).await?;
                session.insert("seen", true).await?;
            } else if path == "/anon" {
                session.insert("seen", true).await?;
            }
            Ok::<_, tower_rampart::session::SessionError>(Response::new(Full::new(Bytes::new())))
        });
    let call = |path: &str, cookie: Option<&str>| {
        let mut req = cookie.map_or_else(
            || req_from("192.0.2.1:1"),
            |c| req_with("192.0.2.1:1", &[("cookie", c)]),
        );
        *req.uri_mut() = path.parse().unwrap();
        app.clone().oneshot(req)
    };
    fn cookie_of<B>(resp: &Response<B>) -> String {
        let set = resp.headers()["set-cookie"].to_str().unwrap();
        set.split(';').next().unwrap().to_owned()
    }
    let status = |resp: Result<Response<_>, _>| resp.unwrap().status();

    // Sign-ins carry no cookie: no key, not counted. Their cookies carry alice's tag.
    let first = call("/login/alice", None).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let a1 = cookie_of(&first);
    let headers = |cookie: &str| {
        let mut h = http::HeaderMap::new();
        h.insert("cookie", cookie.parse().unwrap());
        h
    };
    assert!(reader.user_tag(&headers(&a1)).is_some());
    for left in [2, 1] {
        let resp = call("/query", Some(&a1)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            header(resp.headers(), "ratelimit"),
            format!(r#""user";r={left};t=60"#)
        );
    }
    // A fresh sign-in (another cookie jar): another session, the same count.
    let a2 = cookie_of(&call("/login/alice", None).await.unwrap());
    assert_ne!(
        reader.session_key(&headers(&a1)),
        reader.session_key(&headers(&a2))
    );
    assert_eq!(
        reader.user_tag(&headers(&a1)),
        reader.user_tag(&headers(&a2))
    );
    let resp = call("/query", Some(&a2)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(resp.headers(), "ratelimit"), r#""user";r=0;t=60"#);
    assert_eq!(
        status(call("/query", Some(&a2)).await),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        status(call("/query", Some(&a1)).await),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Bob has his own count.
    let bob = cookie_of(&call("/login/bob", None).await.unwrap());
    assert_eq!(status(call("/query", Some(&bob)).await), StatusCode::OK);

    // A session without a user: untagged cookie.
    let anon = cookie_of(&call("/anon", None).await.unwrap());
    assert!(reader.user_tag(&headers(&anon)).is_none());
    let skipped_before = layer.metrics().missing_key;
    let mut refused = 0;
    for _ in 0..5 {
        if status(call("/query", Some(&anon)).await) == StatusCode::TOO_MANY_REQUESTS {
            refused += 1;
        }
    }
    if or_session {
        // Counted by session: 3 admitted, then refused.
        assert_eq!(refused, 2);
        assert_eq!(layer.metrics().missing_key, skipped_before);
    } else {
        // No key: the `MissingKey` rule (skip) lets every one through.
        assert_eq!(refused, 0);
        assert_eq!(layer.metrics().missing_key, skipped_before + 5);
    }
    // A forged cookie (alice's, one character changed) has no key: skipped, never refused.
    let flipped = if a1.ends_with('A') { 'B' } else { 'A' };
    let forged = format!("{}{flipped}", &a1[..a1.len() - 1]);
    assert!(reader.user_tag(&headers(&forged)).is_none());
    assert_eq!(status(call("/query", Some(&forged)).await), StatusCode::OK);
    Outcome {
        layer,
        reader,
        alice: [a1, a2],
    }
}
