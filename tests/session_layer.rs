//! Session layer behaviour that does not depend on the store (run on `MemoryStore`): cookie
//! attributes, the axum extractor, logout semantics, response bodies.
#![cfg(all(feature = "session", feature = "axum"))]

mod session_common;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use http::{Request, StatusCode, header};
use session_common::*;
use tower_rampart::session::{
    MemoryStore, SameSite, Session, SessionConfig, SessionConfigError, SessionError, SessionLayer,
    SessionStore,
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

/// A partitioned session cookie (CHIPS) carries `Partitioned` whenever it is set: creation,
/// a new id at sign-in, a refresh after an expiry change; and so does its removal, which a
/// browser would otherwise not apply to the partitioned cookie.
#[tokio::test]
async fn a_partitioned_cookie_is_partitioned_when_created_refreshed_and_removed() {
    let app = App::with(
        Arc::new(MemoryStore::new()),
        builder().same_site(SameSite::None).partitioned(true),
        routes(),
    );
    let attrs = |set: &str| -> Vec<String> { set.split("; ").skip(1).map(str::to_owned).collect() };
    fn expected(max_age: &str) -> Vec<String> {
        [
            max_age,
            "Path=/",
            "HttpOnly",
            "Secure",
            "SameSite=None",
            "Partitioned",
        ]
        .map(str::to_owned)
        .to_vec()
    }
    // Creation.
    let r = app.post("/set/a/1", None).await;
    assert_eq!(attrs(&r.set_cookies[0]), expected("Max-Age=3600"));
    let cookie = r.cookie().unwrap();
    // Refresh: an expiry change sends the cookie again, under the same id.
    app.clock.advance(Duration::from_secs(100));
    let r = app.post("/expiry/300", Some(&cookie)).await;
    assert_eq!(r.set_cookies.len(), 1);
    assert_eq!(r.cookie().unwrap(), cookie);
    assert_eq!(attrs(&r.set_cookies[0]), expected("Max-Age=3500"));
    // Sign-in: a new id, still partitioned.
    let r = app.post("/login/ada", Some(&cookie)).await;
    let signed_in = r.cookie().unwrap();
    assert_ne!(signed_in, cookie);
    assert_eq!(attrs(&r.set_cookies[0]), expected("Max-Age=3500"));
    // Removal.
    let r = app.post("/logout", Some(&signed_in)).await;
    assert_eq!(r.set_cookies.len(), 1);
    assert!(r.removes_cookie());
    assert_eq!(
        r.set_cookies[0],
        "sid=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/; HttpOnly; Secure; SameSite=None; Partitioned"
    );
    assert_eq!(app.get("/user", Some(&signed_in)).await.body, "");
}

#[tokio::test]
async fn partitioned_without_secure_is_refused_at_build() {
    let err = builder()
        .partitioned(true)
        .secure(false)
        .build()
        .unwrap_err();
    assert_eq!(err, SessionConfigError::PartitionedWithoutSecure);
    assert!(builder().partitioned(true).build().is_ok());
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
    let res = send(&app2.router, Request::post("/set/a/1")).await;
    assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
    let res = send(&app2.router, Request::post("/cached")).await;
    assert_eq!(res.headers()[header::CACHE_CONTROL], "private, max-age=5");
    // Untouched sessions leave responses alone.
    let res = send(&app2.router, Request::get("/nothing")).await;
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
    let res = send(&with_layer, Request::get("/visit")).await;
    assert_eq!(res.status(), 200);
    let cookie = res.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let res = send(
        &with_layer,
        Request::get("/visit").header(header::COOKIE, &cookie),
    )
    .await;
    assert_eq!(body_text(res).await, "2");

    // Without the layer: a 500 that names the missing layer.
    let res = send(&router, Request::get("/visit")).await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = body_text(res).await;
    assert!(body.contains("SessionLayer"), "{body}");
    // `Option<Session>` is `None` instead.
    let res = send(&router, Request::get("/maybe")).await;
    assert_eq!(body_text(res).await, "false");
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
    // Behind `Arc<dyn SessionStore>`, as a store picked from configuration would be.
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::with_capacity(2));
    let config = SessionConfig::builder().key(KEY_A).build().unwrap();
    let layer = SessionLayer::from_arc(store.clone(), config);
    let router = routes().layer(layer);
    for _ in 0..3 {
        let res = send(&router, Request::post("/set/a/1")).await;
        assert_eq!(res.status(), 200);
    }
    // Capacity 2: the third session evicted the one closest to expiry.
    let dbg = format!("{store:?}");
    assert!(dbg.contains("len: 2"), "{dbg}");
}

#[tokio::test]
async fn logout_with_a_rejected_cookie_removes_it_without_a_store_call() {
    let (capture, _logs) = capture_logs();
    let config = || {
        builder()
            .cookie_path("/api")
            .cookie_domain("example.com")
            .same_site(SameSite::Strict)
    };
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let app = App::with(store.clone(), config(), routes());
    let good = app.new_session().await;
    let mut raw = cookie_bytes(&good);
    *raw.last_mut().unwrap() ^= 1;
    let tampered = format!("{COOKIE}={}", b64(&raw));
    // Signed with a key this app no longer has.
    let retired = App::with(
        store.clone(),
        builder_with_keys(&[KEY_B])
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
    let logs = capture.text();
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
    let app = memory_app();
    let old = app.new_session().await;
    app.post("/set/cart/3", Some(&old)).await;

    // The new record cannot be created: the old session is untouched.
    app.faults.fail_create.store(true, SeqCst);
    let r = app.post("/login/u1", Some(&old)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.set_cookies.is_empty());
    app.faults.fail_create.store(false, SeqCst);
    assert_eq!(app.get("/get/cart", Some(&old)).await.body, "\"3\"");

    // The old record cannot be deleted: 503 as well, the new id is never handed out and the
    // old session is still the one in use, without the login's changes.
    app.faults.fail_delete.store(true, SeqCst);
    let r = app.post("/login/u1", Some(&old)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.set_cookies.is_empty());
    app.faults.fail_delete.store(false, SeqCst);
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

/// A value of the wrong type is reported by its key only: serde's message would quote the
/// value, and sessions hold tokens, so neither the error's text, its `Debug` nor a source
/// shows it.
#[tokio::test]
async fn a_value_of_the_wrong_type_is_reported_without_the_value() {
    use std::error::Error as _;
    use tower::ServiceExt;
    use tower_rampart::session::{MemoryStore, Session, SessionError, SessionLayer};

    let app = tower::ServiceBuilder::new()
        .layer(SessionLayer::new(
            MemoryStore::new(),
            builder().build().unwrap(),
        ))
        .service_fn(|req: http::Request<String>| async move {
            let session = req.extensions().get::<Session>().unwrap().clone();
            session.insert("token", "tok-SECRET-4711").await?;
            let e = session.get::<u32>("token").await.unwrap_err();
            assert!(matches!(e, SessionError::Deserialize(_)));
            let shown = format!("{e} | {e:?} | {:?}", e.source().map(ToString::to_string));
            Ok::<_, SessionError>(http::Response::new(shown))
        });
    let res = app
        .oneshot(http::Request::new(String::new()))
        .await
        .unwrap();
    let bytes = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    let shown = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(shown.contains(r#""token""#), "{shown}");
    assert!(!shown.contains("tok-SECRET-4711"), "{shown}");
}

/// Stored size of `{"<k>":"<v>"}` sealed at rest: the JSON plus 29 bytes (format byte,
/// nonce, GCM tag).
fn sealed_size(k: &str, v: &str) -> usize {
    format!(r#"{{"{k}":"{v}"}}"#).len() + 29
}

#[tokio::test]
async fn the_size_limit_counts_the_stored_bytes_and_an_oversized_insert_changes_nothing() {
    let router = routes().route(
        "/try-set/{k}/{v}",
        post(
            |s: Session, axum::extract::Path((k, v)): axum::extract::Path<(String, String)>| async move {
                // The handler sees the refusal and can react: here it records a note instead.
                match s.insert(k, v).await {
                    Ok(()) => Ok::<_, SessionError>("stored".to_owned()),
                    Err(SessionError::TooLarge { size, limit }) => {
                        s.insert("note", "refused").await?;
                        Ok(format!("refused {size} > {limit}"))
                    }
                    Err(e) => Err(e),
                }
            },
        ),
    );
    let app = App::with(
        Arc::new(MemoryStore::new()),
        builder().max_record_bytes(1024),
        router,
    );
    // Exactly at the limit: accepted, and the stored data is exactly that long.
    let fits = "x".repeat(1024 - sealed_size("a", ""));
    assert_eq!(sealed_size("a", &fits), 1024);
    let r = app.post(&format!("/try-set/a/{fits}"), None).await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "stored"));
    let cookie = r.cookie().unwrap();
    let stored = app.stored(&app.key_of(&cookie)).await.unwrap();
    assert_eq!(stored.data.len(), 1024);

    // One byte more (replacing the value): refused and nothing truncated. The handler's
    // note does not fit beside the old value either, so its `?` answers 500 (a 5xx saves
    // nothing): the stored value is the old one.
    let over = format!("{fits}y");
    let r = app.post(&format!("/try-set/a/{over}"), Some(&cookie)).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        app.get("/get/a", Some(&cookie)).await.body,
        format!("\"{fits}\"")
    );

    // A fresh session: the handler sees the exact sizes, the refused value is absent and the
    // note (which fits) is stored.
    let r = app.post(&format!("/try-set/a/{over}"), None).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, "refused 1025 > 1024")
    );
    let cookie = r.cookie().expect("the note was saved");
    assert_eq!(app.get("/get/a", Some(&cookie)).await.body, "null");
    assert_eq!(
        app.get("/get/note", Some(&cookie)).await.body,
        "\"refused\""
    );

    // Escaping the handler as an error: a 500 with the sizes, never the value.
    let r = app
        .post(&format!("/set/a/{over}{over}"), Some(&cookie))
        .await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        r.body.contains("exceeds the limit of 1024 bytes"),
        "{}",
        r.body
    );
    assert!(!r.body.contains(&over), "the value is not echoed");
}

#[tokio::test]
async fn a_merge_that_outgrows_the_limit_is_refused_with_500_and_a_log_line() {
    use tokio::sync::Notify;
    let loaded = Arc::new(Notify::new());
    let gate = Arc::new(Notify::new());
    let (l, g) = (loaded.clone(), gate.clone());
    let router = routes().route(
        "/slow-set/{k}/{v}",
        post(
            move |s: Session,
                  axum::extract::Path((k, v)): axum::extract::Path<(String, String)>| {
                let (loaded, gate) = (l.clone(), g.clone());
                async move {
                    s.get::<String>("k0").await?;
                    loaded.notify_one();
                    gate.notified().await;
                    s.insert(k, v).await?;
                    Ok::<_, SessionError>("ok")
                }
            },
        ),
    );
    let app = App::with(
        Arc::new(MemoryStore::new()),
        builder().max_record_bytes(2048),
        router,
    );
    let cookie = app.post("/set/k0/v", None).await.cookie().unwrap();
    let (a, b) = ("a".repeat(1010), "b".repeat(1010));
    let (capture, _guard) = capture_logs();
    let slow = {
        let (app, cookie, a) = (app.clone(), cookie.clone(), a.clone());
        tokio::spawn(async move { app.post(&format!("/slow-set/a/{a}"), Some(&cookie)).await })
    };
    loaded.notified().await;
    // Each value fits alone; both together do not.
    let r = app.post(&format!("/set/b/{b}"), Some(&cookie)).await;
    assert_eq!(r.status, StatusCode::OK);
    gate.notify_one();
    let r = slow.await.unwrap();
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(r.set_cookies.is_empty());
    // The record is the other request's, untouched.
    assert_eq!(
        app.get("/get/b", Some(&cookie)).await.body,
        format!("\"{b}\"")
    );
    assert_eq!(app.get("/get/a", Some(&cookie)).await.body, "null");
    let logs = capture.text();
    assert!(
        logs.contains("session could not be saved: answering 500")
            && logs.contains("exceeds the limit of 2048 bytes"),
        "{logs}"
    );
    assert!(!logs.contains(&a[..64]), "no value in the logs");
}

#[tokio::test]
async fn a_size_limit_below_one_kib_is_refused_at_build() {
    let err = builder().max_record_bytes(1023).build().unwrap_err();
    assert_eq!(
        err,
        SessionConfigError::MaxRecordBytesTooSmall { bytes: 1023 }
    );
    assert!(err.to_string().contains("at least 1024 bytes"), "{err}");
    assert_eq!(builder().build().unwrap().max_record_bytes(), 262_144);
}

/// [`routes`] plus `POST /set-user/{user}` and `POST /clear-user`, which change the user
/// without cycling the id.
fn routes_with_user_changes() -> Router {
    use axum::extract::{Extension, Path};
    routes()
        .route(
            "/set-user/{user}",
            post(
                |Extension(s): Extension<Session>, Path(user): Path<String>| async move {
                    s.set_user_id(user).await?;
                    Ok::<_, Error>("ok")
                },
            ),
        )
        .route(
            "/clear-user",
            post(|Extension(s): Extension<Session>| async move {
                s.clear_user_id().await?;
                Ok::<_, Error>("ok")
            }),
        )
}

/// The user tag the cookie `name=value` carries (verified), if any.
fn user_tag_of(app: &App, cookie: &str) -> Option<tower_rampart::session::UserTag> {
    let mut headers = http::HeaderMap::new();
    headers.insert(header::COOKIE, cookie.parse().unwrap());
    app.config.cookie_reader().user_tag(&headers)
}

/// The length of the cookie's value.
fn value_len(cookie: &str) -> usize {
    cookie.split_once('=').unwrap().1.len()
}

#[tokio::test]
async fn the_user_tag_follows_the_sessions_user_without_id_cycling() {
    let app = App::with(
        Arc::new(MemoryStore::new()),
        builder().user_tag(true),
        routes_with_user_changes(),
    );
    assert!(app.config.tags_users());
    // A session without a user: the untagged cookie, as before.
    let cookie = app.new_session().await;
    assert_eq!(value_len(&cookie), 64);
    assert_eq!(user_tag_of(&app, &cookie), None);
    let key = app.key_of(&cookie);

    // Setting the user sends the cookie again: same session, now tagged.
    app.clock.advance(Duration::from_secs(100));
    let r = app.post("/set-user/alice", Some(&cookie)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.set_cookies.len(), 1);
    let tagged = r.cookie().expect("the cookie is sent again");
    assert_eq!(value_len(&tagged), 86);
    assert_eq!(app.key_of(&tagged), key);
    let alice = user_tag_of(&app, &tagged).expect("tagged");
    // The same attributes, Max-Age counting down to the absolute deadline.
    let attrs: Vec<&str> = r.set_cookies[0].split("; ").skip(1).collect();
    assert_eq!(
        attrs,
        [
            "Max-Age=3500",
            "Path=/",
            "HttpOnly",
            "Secure",
            "SameSite=Lax"
        ]
    );
    assert_eq!(app.get("/user", Some(&tagged)).await.body, "alice");

    // A save with an up-to-date tag sends no cookie; reading sends none either.
    let r = app.post("/set/k1/v1", Some(&tagged)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.set_cookies.is_empty(), "{:?}", r.set_cookies);
    assert!(
        app.get("/get/k1", Some(&tagged))
            .await
            .set_cookies
            .is_empty()
    );
    // Setting the same user again is no change.
    assert!(
        app.post("/set-user/alice", Some(&tagged))
            .await
            .set_cookies
            .is_empty()
    );

    // Another user: another tag, same session.
    let r = app.post("/set-user/bob", Some(&tagged)).await;
    let bob = r.cookie().expect("the cookie is sent again");
    assert_eq!(app.key_of(&bob), key);
    let bob_tag = user_tag_of(&app, &bob).expect("tagged");
    assert_ne!(bob_tag, alice);

    // Clearing the user sends the untagged cookie.
    let r = app.post("/clear-user", Some(&bob)).await;
    let cleared = r.cookie().expect("the cookie is sent again");
    assert_eq!(value_len(&cleared), 64);
    assert_eq!(app.key_of(&cleared), key);
    assert_eq!(user_tag_of(&app, &cleared), None);
    assert_eq!(app.get("/user", Some(&cleared)).await.body, "");

    // A stale tagged cookie (another tab still holds bob's) is still this session: its next
    // save brings it up to date.
    let r = app.post("/set/k2/v2", Some(&bob)).await;
    assert_eq!(r.cookie().as_deref(), Some(cleared.as_str()));

    // Sign-in with id cycling: a new id, tagged with the user; another session of the same
    // user carries the same tag.
    let r = app.post("/login/alice", Some(&cleared)).await;
    let signed_in = r.cookie().unwrap();
    assert_ne!(app.key_of(&signed_in), key);
    assert_eq!(user_tag_of(&app, &signed_in), Some(alice));
    let other = app.new_session().await;
    let r = app.post("/set-user/alice", Some(&other)).await;
    assert_eq!(user_tag_of(&app, &r.cookie().unwrap()), Some(alice));

    // Logout: unchanged, the removal cookie.
    let r = app.post("/logout", Some(&signed_in)).await;
    assert_eq!(r.set_cookies.len(), 1);
    assert!(r.removes_cookie());
    assert_eq!(
        r.set_cookies[0],
        "sid=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/; HttpOnly; Secure; SameSite=Lax"
    );
}

#[tokio::test]
async fn a_tagged_cookie_keeps_the_partitioned_attributes() {
    let app = App::with(
        Arc::new(MemoryStore::new()),
        builder()
            .same_site(SameSite::None)
            .partitioned(true)
            .user_tag(true),
        routes_with_user_changes(),
    );
    let cookie = app.new_session().await;
    let r = app.post("/set-user/alice", Some(&cookie)).await;
    assert!(user_tag_of(&app, &r.cookie().unwrap()).is_some());
    assert!(
        r.set_cookies[0]
            .ends_with("; Max-Age=3600; Path=/; HttpOnly; Secure; SameSite=None; Partitioned"),
        "{}",
        r.set_cookies[0]
    );
}

#[tokio::test]
async fn without_the_user_tag_option_a_user_change_sends_no_cookie() {
    let app = App::with(
        Arc::new(MemoryStore::new()),
        builder(),
        routes_with_user_changes(),
    );
    assert!(!app.config.tags_users());
    let cookie = app.new_session().await;
    let r = app.post("/set-user/alice", Some(&cookie)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.set_cookies.is_empty(), "{:?}", r.set_cookies);
    assert_eq!(app.get("/user", Some(&cookie)).await.body, "alice");
    let r = app.post("/login/bob", Some(&cookie)).await;
    let signed_in = r.cookie().unwrap();
    assert_eq!(value_len(&signed_in), 64);
    assert_eq!(user_tag_of(&app, &signed_in), None);
}

/// Turning the option on (and off again) on a running store: cookies set before carry no tag
/// until their session's next save, and both forms are read either way.
#[tokio::test]
async fn cookies_follow_the_option_on_their_next_save() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let clock = tower_rampart::clock::ManualClock::starting_now();
    let off = App::with_clock(
        store.clone(),
        builder(),
        routes_with_user_changes(),
        clock.clone(),
    );
    let on = App::with_clock(
        store,
        builder().user_tag(true),
        routes_with_user_changes(),
        clock,
    );
    // Signed in before the option: an untagged cookie of a session with a user.
    let old = off.post("/login/alice", None).await.cookie().unwrap();
    assert_eq!(user_tag_of(&on, &old), None);
    // With the option: read as before, and a read does not send the cookie.
    let r = on.get("/user", Some(&old)).await;
    assert_eq!((r.body.as_str(), r.set_cookies.len()), ("alice", 0));
    // The next save tags it, same session.
    let r = on.post("/set/k/v", Some(&old)).await;
    let tagged = r.cookie().expect("the cookie is sent again");
    assert_eq!(on.key_of(&tagged), on.key_of(&old));
    assert!(user_tag_of(&on, &tagged).is_some());
    // An instance without the option reads the tagged cookie, and its next save removes
    // the tag.
    let r = off.get("/user", Some(&tagged)).await;
    assert_eq!((r.body.as_str(), r.set_cookies.len()), ("alice", 0));
    let r = off.post("/set/k/w", Some(&tagged)).await;
    let untagged = r.cookie().expect("the cookie is sent again");
    assert_eq!(untagged, old);
}

/// Cookie tossing: a sibling subdomain can plant cookies of the session's name (with another
/// Domain or Path) that the browser sends beside the real one. Cookies of the name that do not
/// verify (garbage, unsigned, oversized) are ignored, so a planted one cannot keep the user
/// signed out; identical copies are one cookie.
#[tokio::test]
async fn a_planted_invalid_duplicate_does_not_sign_the_user_out() {
    let app = App::with(
        Arc::new(MemoryStore::new()),
        builder().user_tag(true),
        routes(),
    );
    let victim = app.post("/login/victim", None).await.cookie().unwrap();
    let value = victim.split_once('=').unwrap().1;
    let mut flipped = cookie_bytes(&victim);
    *flipped.last_mut().unwrap() ^= 1;
    let planted = [
        format!("{COOKIE}=garbage"),
        format!("{COOKIE}="),
        format!("{COOKIE}={}", b64(&flipped)),
        format!("{COOKIE}={}", "A".repeat(64)),
        format!("{COOKIE}={}", "A".repeat(4000)),
        victim.clone(),
    ];
    let reader = app.config.cookie_reader();
    let expected_key = app.key_of(&victim);
    for plant in &planted {
        for header in [format!("{plant}; {victim}"), format!("{victim}; {plant}")] {
            let r = app.get("/user", Some(&header)).await;
            assert_eq!(r.body, "victim", "{header}");
            let mut headers = http::HeaderMap::new();
            headers.insert(header::COOKIE, header.parse().unwrap());
            assert_eq!(reader.session_key(&headers), Some(expected_key.clone()));
            assert!(reader.user_tag(&headers).is_some());
        }
        // In separate Cookie headers too.
        let res = send(
            &app.router,
            Request::get("/user")
                .header(header::COOKIE, plant)
                .header(header::COOKIE, &victim),
        )
        .await;
        assert_eq!(body_text(res).await, "victim", "{plant}");
    }
    assert!(!value.is_empty());
}

/// A planted *valid* cookie (the planter's own session) beside the victim's: neither is used,
/// so the victim is never signed into the planter's session; the layer logs it (without
/// values) and the rate limiter's keys agree (no key).
#[tokio::test]
async fn two_valid_different_session_cookies_are_no_session_and_a_log_line() {
    use tower_rampart::rate_limit::{Key, KeyExtractor};
    let (capture, _logs) = capture_logs();
    let app = App::with(
        Arc::new(MemoryStore::new()),
        builder().user_tag(true),
        routes(),
    );
    let victim = app.post("/login/victim", None).await.cookie().unwrap();
    let planter = app.post("/login/planter", None).await.cookie().unwrap();
    let reader = app.config.cookie_reader();
    let extractors: Vec<Box<dyn KeyExtractor>> = vec![
        Box::new(Key::session(reader.clone())),
        Box::new(Key::user(reader.clone())),
        Box::new(Key::user_or_session(reader.clone())),
    ];
    for header in [
        format!("{planter}; {victim}"),
        format!("{victim}; {planter}"),
    ] {
        app.counts.reset();
        let r = app.get("/user", Some(&header)).await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, ""), "{header}");
        assert_eq!(app.counts.total(), 0, "no store call");
        let req = Request::get("/")
            .header(header::COOKIE, &header)
            .body(())
            .unwrap();
        assert!(reader.session_key(req.headers()).is_none());
        assert!(reader.user_tag(req.headers()).is_none());
        for key in &extractors {
            assert!(key.extract(&req).is_none(), "{header}");
        }
        // A logout removes the cookie (the one of the configured attributes).
        let r = app.post("/logout", Some(&header)).await;
        assert!(r.removes_cookie());
        // Both sessions are untouched.
        assert_eq!(app.get("/user", Some(&victim)).await.body, "victim");
        assert_eq!(app.get("/user", Some(&planter)).await.body, "planter");
    }
    let logs = capture.text();
    assert!(
        logs.contains("several valid session cookies"),
        "a log line: {logs}"
    );
    for cookie in [&victim, &planter] {
        let value = cookie.split_once('=').unwrap().1;
        assert!(!logs.contains(value), "a cookie value was logged");
    }
}
