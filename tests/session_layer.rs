//! Session layer behaviour that does not depend on the store (run on `MemoryStore`): cookie
//! attributes, the axum extractor, logout semantics, response bodies.
#![cfg(all(feature = "session", feature = "axum"))]

mod session_common;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use session_common::*;
use tower::ServiceExt;
use tower_rampart::session::{
    MemoryStore, SameSite, Session, SessionConfig, SessionError, SessionLayer, SessionStore,
};

fn memory_app() -> App {
    App::new(Arc::new(MemoryStore::new()))
}

#[tokio::test]
async fn cookie_attributes_default_to_secure_and_removal_matches_them() {
    let app = memory_app();
    let r = app.post("/set/a/1", None).await;
    let set = &r.set_cookies[0];
    let attrs: Vec<&str> = set.split("; ").skip(1).collect();
    assert_eq!(
        attrs,
        [
            "Max-Age=3600",
            "Path=/",
            "HttpOnly",
            "Secure",
            "SameSite=Lax"
        ]
    );
    let cookie = r.cookie().unwrap();
    let r = app.post("/logout", Some(&cookie)).await;
    assert_eq!(r.set_cookies.len(), 1);
    assert!(r.removes_cookie());
    let removal: Vec<&str> = r.set_cookies[0].split("; ").collect();
    assert_eq!(
        removal,
        [
            "sid=",
            "Max-Age=0",
            "Expires=Thu, 01 Jan 1970 00:00:00 GMT",
            "Path=/",
            "HttpOnly",
            "Secure",
            "SameSite=Lax"
        ]
    );
}

#[tokio::test]
async fn configured_cookie_attributes_are_used_for_setting_and_removing() {
    let app = App::with(
        Arc::new(MemoryStore::new()),
        builder()
            .cookie_path("/api")
            .cookie_domain("example.com")
            .same_site(SameSite::None)
            .absolute_lifetime(Duration::from_secs(7200)),
        routes(),
    );
    let r = app.post("/set/a/1", None).await;
    assert!(r.set_cookies[0].ends_with(
        "; Max-Age=7200; Path=/api; Domain=example.com; HttpOnly; Secure; SameSite=None"
    ));
    let r = app.post("/logout", Some(&r.cookie().unwrap())).await;
    assert!(
        r.set_cookies[0]
            .ends_with("; Path=/api; Domain=example.com; HttpOnly; Secure; SameSite=None")
    );
}

#[tokio::test]
async fn cookie_setting_responses_are_not_cacheable_unless_the_app_says_otherwise() {
    let app = memory_app();
    let router = Router::new()
        .route(
            "/cached",
            post(|s: Session| async move {
                s.insert("a", 1).await.unwrap();
                ([(header::CACHE_CONTROL, "private, max-age=5")], "ok")
            }),
        )
        .merge(routes());
    let app2 = App::with(app.store.clone(), builder(), router);
    let res = app2
        .router
        .clone()
        .oneshot(
            Request::post("/set/a/1")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
    let res = app2
        .router
        .clone()
        .oneshot(
            Request::post("/cached")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.headers()[header::CACHE_CONTROL], "private, max-age=5");
    // Untouched sessions leave responses alone.
    let res = app2
        .router
        .clone()
        .oneshot(
            Request::get("/nothing")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(res.headers().get(header::CACHE_CONTROL).is_none());
    assert!(res.headers().get(header::SET_COOKIE).is_none());
}

#[tokio::test]
async fn axum_extractor_and_missing_layer_rejection() {
    let router = Router::new()
        .route(
            "/visit",
            get(|s: Session| async move {
                let n: u32 = s.get("n").await?.unwrap_or(0) + 1;
                s.insert("n", n).await?;
                Ok::<_, SessionError>(n.to_string())
            }),
        )
        .route(
            "/maybe",
            get(|s: Option<Session>| async move { s.is_some().to_string() }),
        );
    let config = SessionConfig::builder().key(KEY_A).build().unwrap();
    let with_layer = router
        .clone()
        .layer(SessionLayer::new(MemoryStore::new(), config));
    let res = with_layer
        .clone()
        .oneshot(
            Request::get("/visit")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let cookie = res.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let res = with_layer
        .clone()
        .oneshot(
            Request::get("/visit")
                .header(header::COOKIE, &cookie)
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "2");

    // Without the layer: a 500 that names the missing layer.
    let res = router
        .clone()
        .oneshot(
            Request::get("/visit")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("SessionLayer"), "{body}");
    // `Option<Session>` is `None` instead.
    let res = router
        .oneshot(
            Request::get("/maybe")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "false");
}

#[tokio::test]
async fn logout_then_write_starts_a_new_session_and_logout_survives_a_5xx() {
    let router = routes()
        .route(
            "/relogin",
            post(|s: Session| async move {
                s.delete().await.unwrap();
                s.insert("fresh", true).await.unwrap();
                "ok"
            }),
        )
        .route(
            "/logout_fails",
            post(|s: Session| async move {
                s.delete().await.unwrap();
                StatusCode::INTERNAL_SERVER_ERROR
            }),
        );
    let app = App::with(Arc::new(MemoryStore::new()), builder(), router);
    let old = app.new_session().await;
    let r = app.post("/relogin", Some(&old)).await;
    let new = r.cookie().expect("new session cookie");
    assert_eq!(r.set_cookies.len(), 1, "one Set-Cookie: the new session");
    assert_ne!(new, old);
    assert_eq!(app.get("/get/k0", Some(&new)).await.body, "null");
    assert_eq!(app.get("/get/fresh", Some(&new)).await.body, "true");
    assert_eq!(app.get("/get/k0", Some(&old)).await.body, "null");

    let r = app.post("/logout_fails", Some(&new)).await;
    assert_eq!(r.status, 500);
    assert!(
        r.removes_cookie(),
        "a failed handler does not undo a logout"
    );
    assert_eq!(app.get("/get/fresh", Some(&new)).await.body, "null");
}

#[tokio::test]
async fn handle_debug_hides_the_id_and_key_is_the_hash() {
    let router = Router::new().route(
        "/debug",
        get(|s: Session| async move {
            format!(
                "{s:?}|{}",
                s.key().map(|k| k.to_string()).unwrap_or_default()
            )
        }),
    );
    let app = App::with(
        Arc::new(MemoryStore::new()),
        builder(),
        router.merge(routes()),
    );
    let cookie = app.new_session().await;
    let body = app.get("/debug", Some(&cookie)).await.body;
    let (debug, key) = body.split_once('|').unwrap();
    let value = cookie.split_once('=').unwrap().1;
    assert!(!debug.contains(value));
    assert!(!debug.contains(&value[..22]));
    assert_eq!(key, app.key_of(&cookie).as_str());
    assert!(debug.contains(key));
}

#[tokio::test]
async fn deserialize_errors_are_500_and_do_not_touch_the_session() {
    let router = routes().route(
        "/typed",
        get(|s: Session| async move {
            let n: u32 = s.get("k0").await?.unwrap_or(0);
            Ok::<_, SessionError>(n.to_string())
        }),
    );
    let app = App::with(Arc::new(MemoryStore::new()), builder(), router);
    let cookie = app.new_session().await; // k0 = "v0", a string
    let r = app.get("/typed", Some(&cookie)).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.body, r#"{"detail":"Session data error"}"#);
    assert_eq!(app.get("/get/k0", Some(&cookie)).await.body, "\"v0\"");
}

#[tokio::test]
async fn a_store_chosen_at_run_time() {
    let store: Arc<dyn SessionStore> = if std::env::var("NO_SUCH_VARIABLE_X").is_ok() {
        unreachable!()
    } else {
        Arc::new(MemoryStore::with_capacity(2))
    };
    let config = SessionConfig::builder().key(KEY_A).build().unwrap();
    let layer = SessionLayer::from_arc(store.clone(), config);
    let router = routes().layer(layer);
    for _ in 0..3 {
        let res = router
            .clone()
            .oneshot(
                Request::post("/set/a/1")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    // Capacity 2: the third session evicted the one closest to expiry.
    let dbg = format!("{store:?}");
    assert!(dbg.contains("len: 2"), "{dbg}");
}

/// Captures everything logged on this thread.
#[derive(Clone, Default)]
struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn logout_with_a_rejected_cookie_removes_it_without_a_store_call() {
    use base64::Engine as _;
    let capture = Capture::default();
    let writer = capture.clone();
    let _logs = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish(),
    );
    let config = || {
        builder()
            .cookie_path("/api")
            .cookie_domain("example.com")
            .same_site(SameSite::Strict)
    };
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let app = App::with(store.clone(), config(), routes());
    let good = app.new_session().await;
    let value = good.split_once('=').unwrap().1.to_owned();
    let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&value)
        .unwrap();
    *raw.last_mut().unwrap() ^= 1;
    let tampered = format!(
        "{COOKIE}={}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw)
    );
    // Signed with a key this app no longer has.
    let retired = App::with(
        store.clone(),
        SessionConfig::builder()
            .key(KEY_B)
            .cookie_name(COOKIE)
            .cookie_path("/api")
            .cookie_domain("example.com")
            .same_site(SameSite::Strict),
        routes(),
    )
    .new_session()
    .await;
    let rejected = [
        tampered,
        retired,
        format!("{COOKIE}=not base64!"),
        format!("{COOKIE}="),
        format!("other=1; {COOKIE}={}", "A".repeat(4000)),
    ];
    for cookie in &rejected {
        app.counts.reset();
        let r = app.post("/logout", Some(cookie)).await;
        assert_eq!(r.status, 200, "{cookie}");
        assert_eq!(r.set_cookies.len(), 1, "{cookie}");
        assert_eq!(
            r.set_cookies[0],
            "sid=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/api; \
             Domain=example.com; HttpOnly; Secure; SameSite=Strict",
            "the removal carries the configured attributes ({cookie})"
        );
        assert_eq!(app.counts.total(), 0, "no store call for {cookie}");
        // A write after a rejected cookie starts a new session whose Set-Cookie has the same
        // name, path and domain: it replaces the rejected cookie, no removal needed.
        let r = app.post("/set/a/1", Some(cookie)).await;
        assert_eq!(r.set_cookies.len(), 1, "{cookie}");
        assert!(!r.removes_cookie());
        assert!(
            r.set_cookies[0]
                .ends_with("; Path=/api; Domain=example.com; HttpOnly; Secure; SameSite=Strict"),
            "{}",
            r.set_cookies[0]
        );
        assert_ne!(r.cookie().unwrap(), *cookie);
    }
    // The valid session was not touched by any of this.
    assert_eq!(app.get("/get/k0", Some(&good)).await.body, "\"v0\"");
    // Without any session cookie, a logout has nothing to remove.
    for cookie in [None, Some("other=1")] {
        let r = app.post("/logout", cookie).await;
        assert!(r.set_cookies.is_empty(), "{cookie:?}");
    }
    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    assert!(logs.contains("ignoring the session cookie"), "{logs}");
    for cookie in &rejected {
        let value = cookie.rsplit_once(&format!("{COOKIE}=")).unwrap().1;
        if value.len() > 4 {
            assert!(!logs.contains(value), "a rejected cookie value was logged");
        }
    }
}

/// `cycle_id` creates the new record before deleting the old one: a store failure in
/// between answers 503 and never loses the session.
#[tokio::test]
async fn cycle_id_store_failure_keeps_the_old_session() {
    use std::sync::atomic::Ordering::SeqCst;
    let faulty = Faulty::new(Arc::new(MemoryStore::new()));
    let app = App::new(Arc::new(faulty.clone()));
    let old = app.new_session().await;
    app.post("/set/cart/3", Some(&old)).await;

    // The new record cannot be created: the old session is untouched.
    faulty.ctl.fail_create.store(true, SeqCst);
    let r = app.post("/login/u1", Some(&old)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.set_cookies.is_empty());
    faulty.ctl.fail_create.store(false, SeqCst);
    assert_eq!(app.get("/get/cart", Some(&old)).await.body, "\"3\"");

    // The old record cannot be deleted: 503 as well, the new id is never handed out and the
    // old session is still the one in use, without the login's changes.
    faulty.ctl.fail_delete.store(true, SeqCst);
    let r = app.post("/login/u1", Some(&old)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.set_cookies.is_empty());
    faulty.ctl.fail_delete.store(false, SeqCst);
    assert_eq!(app.get("/get/cart", Some(&old)).await.body, "\"3\"");
    assert_eq!(app.get("/user", Some(&old)).await.body, "");

    // Once the store works, the login goes through.
    let r = app.post("/login/u1", Some(&old)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let new = r.cookie().unwrap();
    assert_eq!(app.get("/get/cart", Some(&new)).await.body, "\"3\"");
    assert_eq!(app.get("/user", Some(&new)).await.body, "u1");
    assert_eq!(app.get("/get/cart", Some(&old)).await.body, "null");
}
