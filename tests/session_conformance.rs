//! The shared conformance suite of session stores, run against `MemoryStore` and
//! `RedisStore` (plain and TLS, real `redis-server` processes): first the store contract
//! through the `SessionStore` trait, then the layer's guarantees on top of each store.
//!
//! Time is a `ManualClock` (started at the current time so Redis TTLs stay realistic):
//! stores judge expiry by the `now` they are given, Redis TTLs only reclaim memory.
#![cfg(all(feature = "session", feature = "redis"))]

mod session_common;
use rampart_test_support as support;

use std::sync::Arc;
use std::time::Duration;

use session_common::*;
use tower_rampart::clock::{Clock, ManualClock};
use tower_rampart::redis::RedisConfig;
use tower_rampart::session::{RedisStore, SessionKey, SessionRecord, SessionStore, WriteOutcome};

const SEC: u64 = 1_000_000;

fn redis_backend(
    config: RedisConfig,
    prefix: String,
    keep: Box<dyn std::any::Any + Send>,
) -> Backend {
    let conn = config.connect_lazy().expect("redis connection");
    Backend {
        store: Arc::new(RedisStore::new(conn).with_prefix(format!("{prefix}session:"))),
        keep,
    }
}

fn redis() -> Backend {
    let test = support::shared();
    let (config, prefix) = (test.config.clone(), test.prefix.clone());
    redis_backend(config, prefix, Box::new(test))
}

fn redis_tls() -> Backend {
    let server = support::RedisServer::start_tls();
    let config = server.config();
    redis_backend(config, support::unique_prefix(), Box::new(server))
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::session_common::memory()).await;
                }
            )*
        }
        mod redis_plain {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::redis()).await;
                }
            )*
        }
        mod redis_tls {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::redis_tls()).await;
                }
            )*
        }
    };
}

suite!(
    store_create_is_only_if_absent,
    store_save_is_compare_and_set_and_never_creates,
    store_delete_unconditional_and_conditional,
    store_idle_and_absolute_expiry,
    store_idle_refresh_is_throttled,
    store_touch,
    store_user_index,
    concurrent_requests_changing_different_keys_lose_nothing,
    same_key_later_save_wins_other_keys_merge,
    logout_racing_saves_never_comes_back,
    round_trips_per_request,
    idle_and_absolute_expiry_through_the_layer,
    cycle_id_keeps_data_and_invalidates_the_old_id,
    cycle_id_merges_a_concurrent_write_and_loses_to_a_concurrent_logout,
    key_rotation,
    bad_cookies_cost_no_store_call_and_are_not_accepted,
    server_error_responses_are_not_saved,
    sign_out_everywhere,
);

fn key(n: u64) -> SessionKey {
    // Random per run, so a shared REDIS_URL server never sees a key twice.
    let salt = ManualClock::starting_now().now_micros();
    SessionKey::parse(&format!("{:016x}{:016x}", salt, n)).unwrap()
}

fn record(now: u64, idle_secs: u64, lifetime_secs: u64, data: &[u8]) -> SessionRecord {
    SessionRecord {
        version: 0,
        created_micros: now,
        accessed_micros: now,
        idle_micros: idle_secs * SEC,
        expires_micros: now + lifetime_secs * SEC,
        user_id: None,
        data: data.to_vec(),
    }
}

fn now() -> u64 {
    ManualClock::starting_now().now_micros()
}

async fn store_create_is_only_if_absent(b: Backend) {
    let s = &b.store;
    let (k, t) = (key(1), now());
    assert!(s.load(&k, t, false).await.unwrap().is_none());
    let r = record(t, 60, 600, b"\x01first\x00binary");
    assert!(s.create(&k, &r, t).await.unwrap());
    let loaded = s.load(&k, t, false).await.unwrap().unwrap();
    assert_eq!(
        loaded,
        SessionRecord {
            version: 1,
            ..r.clone()
        }
    );
    // A second create under the same key never overwrites.
    assert!(
        !s.create(&k, &record(t, 60, 600, b"second"), t)
            .await
            .unwrap()
    );
    assert_eq!(s.load(&k, t, false).await.unwrap().unwrap().data, r.data);
    // A key whose record has expired can be created again.
    let later = t + 61 * SEC;
    assert!(
        s.create(&k, &record(later, 60, 600, b"third"), later)
            .await
            .unwrap()
    );
    assert_eq!(
        s.load(&k, later, false).await.unwrap().unwrap().data,
        b"third"
    );
}

async fn store_save_is_compare_and_set_and_never_creates(b: Backend) {
    let s = &b.store;
    let (k, t) = (key(2), now());
    let mut r = record(t, 60, 600, b"v1");
    r.user_id = Some("alice".into());
    assert!(s.create(&k, &r, t).await.unwrap());
    let mut next = s.load(&k, t, false).await.unwrap().unwrap();
    next.data = b"v2".to_vec();
    next.accessed_micros = t + SEC;
    assert_eq!(
        s.save(&k, &next, t + SEC).await.unwrap(),
        WriteOutcome::Written
    );
    let stored = s.load(&k, t + SEC, false).await.unwrap().unwrap();
    assert_eq!(stored.version, 2);
    assert_eq!(stored.data, b"v2");
    assert_eq!(stored.accessed_micros, t + SEC);
    assert_eq!(stored.user_id.as_deref(), Some("alice"));
    // A stale version is refused, and the refusal carries the current record.
    let mut stale = next.clone();
    stale.data = b"stale".to_vec();
    match s.save(&k, &stale, t + SEC).await.unwrap() {
        WriteOutcome::Conflict(current) => assert_eq!(current, stored),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // Removing the user through a save.
    let mut no_user = stored.clone();
    no_user.user_id = None;
    assert_eq!(
        s.save(&k, &no_user, t + SEC).await.unwrap(),
        WriteOutcome::Written
    );
    assert_eq!(
        s.load(&k, t + SEC, false).await.unwrap().unwrap().user_id,
        None
    );
    // A save never creates.
    let ghost = key(3);
    assert_eq!(
        s.save(&ghost, &record(t, 60, 600, b"x"), t).await.unwrap(),
        WriteOutcome::Missing
    );
    assert!(s.load(&ghost, t, false).await.unwrap().is_none());
}

async fn store_delete_unconditional_and_conditional(b: Backend) {
    let s = &b.store;
    let (k, t) = (key(4), now());
    assert!(s.create(&k, &record(t, 60, 600, b"x"), t).await.unwrap());
    match s.delete(&k, Some(7), t).await.unwrap() {
        WriteOutcome::Conflict(current) => assert_eq!(current.version, 1),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        s.delete(&k, Some(1), t).await.unwrap(),
        WriteOutcome::Written
    );
    assert!(s.load(&k, t, false).await.unwrap().is_none());
    assert_eq!(s.delete(&k, None, t).await.unwrap(), WriteOutcome::Missing);
    // A deleted session cannot be saved back.
    let mut r = record(t, 60, 600, b"back");
    r.version = 1;
    assert_eq!(s.save(&k, &r, t).await.unwrap(), WriteOutcome::Missing);
    assert!(s.load(&k, t, false).await.unwrap().is_none());
    // Unconditional delete of a live session.
    let k2 = key(5);
    assert!(s.create(&k2, &record(t, 60, 600, b"x"), t).await.unwrap());
    assert_eq!(s.delete(&k2, None, t).await.unwrap(), WriteOutcome::Written);
    assert!(s.load(&k2, t, false).await.unwrap().is_none());
}

async fn store_idle_and_absolute_expiry(b: Backend) {
    let s = &b.store;
    let (k, t) = (key(6), now());
    assert!(s.create(&k, &record(t, 10, 30, b"x"), t).await.unwrap());
    assert!(s.load(&k, t + 9 * SEC, false).await.unwrap().is_some());
    assert!(
        s.load(&k, t + 10 * SEC, false).await.unwrap().is_none(),
        "idle timeout"
    );
    // Kept busy, it still ends at its absolute deadline.
    let k2 = key(7);
    assert!(s.create(&k2, &record(t, 10, 30, b"x"), t).await.unwrap());
    for step in 1..=5 {
        let at = t + step * 5 * SEC;
        assert!(
            s.load(&k2, at, true).await.unwrap().is_some(),
            "alive at {step}"
        );
    }
    assert!(s.load(&k2, t + 29 * SEC, true).await.unwrap().is_some());
    assert!(
        s.load(&k2, t + 30 * SEC, true).await.unwrap().is_none(),
        "absolute lifetime"
    );
    // Expired sessions cannot be saved or touched back to life.
    let mut r = record(t, 10, 30, b"y");
    r.version = 1;
    assert_eq!(
        s.save(&k, &r, t + 11 * SEC).await.unwrap(),
        WriteOutcome::Missing
    );
    assert!(!s.touch(&k, t + 11 * SEC).await.unwrap());
}

async fn store_idle_refresh_is_throttled(b: Backend) {
    let s = &b.store;
    let (k, t) = (key(8), now());
    assert!(s.create(&k, &record(t, 100, 1000, b"x"), t).await.unwrap());
    // Less than a quarter of the idle timeout: no refresh.
    let r = s.load(&k, t + 20 * SEC, true).await.unwrap().unwrap();
    assert_eq!(r.accessed_micros, t);
    // More than a quarter: refreshed, version unchanged.
    let r = s.load(&k, t + 30 * SEC, true).await.unwrap().unwrap();
    assert_eq!(r.accessed_micros, t + 30 * SEC);
    assert_eq!(r.version, 1);
    assert_eq!(
        s.load(&k, t + 31 * SEC, false)
            .await
            .unwrap()
            .unwrap()
            .accessed_micros,
        t + 30 * SEC
    );
    // Without `refresh`, loads never refresh.
    let r = s.load(&k, t + 90 * SEC, false).await.unwrap().unwrap();
    assert_eq!(r.accessed_micros, t + 30 * SEC);
    // The refresh moved the idle deadline: alive at t+129 s, dead at t+130 s.
    assert!(s.load(&k, t + 129 * SEC, false).await.unwrap().is_some());
    assert!(s.load(&k, t + 130 * SEC, false).await.unwrap().is_none());
}

async fn store_touch(b: Backend) {
    let s = &b.store;
    let (k, t) = (key(9), now());
    assert!(!s.touch(&k, t).await.unwrap());
    assert!(s.create(&k, &record(t, 10, 100, b"x"), t).await.unwrap());
    assert!(s.touch(&k, t + 5 * SEC).await.unwrap());
    let r = s.load(&k, t + 14 * SEC, false).await.unwrap().unwrap();
    assert_eq!((r.version, r.accessed_micros), (1, t + 5 * SEC));
}

async fn store_user_index(b: Backend) {
    let s = &b.store;
    let t = now();
    let user = format!("alice-{t}");
    let other = format!("bob-{t}");
    let mk = |u: &str| {
        let mut r = record(t, 60, 600, b"x");
        r.user_id = Some(u.to_owned());
        r
    };
    let (a1, a2, b1, moved) = (key(10), key(11), key(12), key(13));
    assert!(s.create(&a1, &mk(&user), t).await.unwrap());
    assert!(s.create(&a2, &mk(&user), t).await.unwrap());
    assert!(s.create(&b1, &mk(&other), t).await.unwrap());
    assert!(s.create(&moved, &mk(&user), t).await.unwrap());
    // `moved` now belongs to the other user: alice's sign-out must not touch it.
    let mut m = s.load(&moved, t, false).await.unwrap().unwrap();
    m.user_id = Some(other.clone());
    assert_eq!(s.save(&moved, &m, t).await.unwrap(), WriteOutcome::Written);
    assert_eq!(s.delete_user_sessions(&user, t + SEC).await.unwrap(), 2);
    assert!(s.load(&a1, t + SEC, false).await.unwrap().is_none());
    assert!(s.load(&a2, t + SEC, false).await.unwrap().is_none());
    assert!(s.load(&b1, t + SEC, false).await.unwrap().is_some());
    assert!(s.load(&moved, t + SEC, false).await.unwrap().is_some());
    assert_eq!(s.delete_user_sessions(&user, t + SEC).await.unwrap(), 0);
    assert_eq!(s.delete_user_sessions(&other, t + SEC).await.unwrap(), 2);
}

async fn concurrent_requests_changing_different_keys_lose_nothing(b: Backend) {
    let app = App::new(b.store.clone());
    let cookie = app.new_session().await;
    app.counts.reset();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let (app, cookie) = (app.clone(), cookie.clone());
        tasks.push(tokio::spawn(async move {
            app.post(&format!("/set/k{i}/v{i}"), Some(&cookie)).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.cookie().is_none(), "an update does not resend the cookie");
    }
    let r = app.get("/count/100", Some(&cookie)).await;
    assert_eq!(r.body, "100", "every concurrent insert survives");
    // Each request saved once, plus one save per conflict it met.
    assert!(app.counts.save.load(std::sync::atomic::Ordering::SeqCst) >= 99);
}

async fn same_key_later_save_wins_other_keys_merge(b: Backend) {
    use axum::extract::Extension;
    use axum::routing::post;
    use tokio::sync::Barrier;
    use tower_rampart::session::Session;

    // Two requests load the same version; the first saves, then the second saves on top
    // (a conflict, merged): k = the second's value, and each one's own key survives.
    let loaded = Arc::new(Barrier::new(2));
    let first_done = Arc::new(tokio::sync::Notify::new());
    let (l1, l2, f2) = (loaded.clone(), loaded.clone(), first_done.clone());
    let router = routes()
        .route(
            "/first",
            post(move |Extension(s): Extension<Session>| {
                let l = l1.clone();
                async move {
                    s.get::<String>("k").await.unwrap();
                    l.wait().await;
                    s.insert("k", "first").await.unwrap();
                    s.insert("only_first", 1).await.unwrap();
                    "ok"
                }
            }),
        )
        .route(
            "/second",
            post(move |Extension(s): Extension<Session>| {
                let (l, f) = (l2.clone(), f2.clone());
                async move {
                    s.get::<String>("k").await.unwrap();
                    l.wait().await;
                    f.notified().await;
                    s.insert("k", "second").await.unwrap();
                    s.insert("only_second", 2).await.unwrap();
                    "ok"
                }
            }),
        );
    let app = App::with(b.store.clone(), builder(), router);
    let cookie = app.new_session().await;
    app.counts.reset();
    let second = {
        let (app, cookie) = (app.clone(), cookie.clone());
        tokio::spawn(async move { app.post("/second", Some(&cookie)).await })
    };
    let r = app.post("/first", Some(&cookie)).await;
    assert_eq!(r.status, 200);
    first_done.notify_one();
    assert_eq!(second.await.unwrap().status, 200);
    // The second request's save conflicted once and was merged.
    assert_eq!(app.counts.save.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(app.get("/get/k", Some(&cookie)).await.body, "\"second\"");
    assert_eq!(app.get("/get/only_first", Some(&cookie)).await.body, "1");
    assert_eq!(app.get("/get/only_second", Some(&cookie)).await.body, "2");
    assert_eq!(app.get("/get/k0", Some(&cookie)).await.body, "\"v0\"");
}

async fn logout_racing_saves_never_comes_back(b: Backend) {
    let app = App::new(b.store.clone());
    for round in 0..30 {
        let cookie = app.new_session().await;
        let key = app.key_of(&cookie);
        let mut tasks = Vec::new();
        for i in 0..8 {
            let (a, c) = (app.clone(), cookie.clone());
            tasks.push(tokio::spawn(async move {
                a.post(&format!("/set/w{i}/{round}"), Some(&c)).await
            }));
            if i == 3 {
                let (a, c) = (app.clone(), cookie.clone());
                tasks.push(tokio::spawn(
                    async move { a.post("/logout", Some(&c)).await },
                ));
            }
        }
        for t in tasks {
            let r = t.await.unwrap();
            assert_eq!(r.status, 200, "{}", r.body);
            // A writer that arrives after the logout gets a brand-new, empty session: never
            // the logged-out one.
            if let Some(fresh) = r.cookie() {
                assert_ne!(fresh, cookie, "round {round}");
                assert_eq!(app.get("/get/k0", Some(&fresh)).await.body, "null");
            }
        }
        assert!(
            app.stored(&key).await.is_none(),
            "round {round}: the session came back"
        );
        assert_eq!(app.get("/get/k0", Some(&cookie)).await.body, "null");
    }
}

async fn round_trips_per_request(b: Backend) {
    use std::sync::atomic::Ordering::SeqCst;
    let app = App::new(b.store.clone());
    let c = &app.counts;
    // No cookie, handler does not touch the session / reads it: 0.
    app.get("/nothing", None).await;
    app.get("/get/a", None).await;
    assert_eq!(c.total(), 0);
    // No cookie, handler writes: 1 (create).
    let cookie = app.post("/set/a/1", None).await.cookie().unwrap();
    assert_eq!((c.total(), c.create.load(SeqCst)), (1, 1));
    c.reset();
    // Cookie, handler does not touch the session: 0.
    app.get("/nothing", Some(&cookie)).await;
    assert_eq!(c.total(), 0);
    // Read: 1 load, no write (several reads in one request share the load).
    let r = app.get("/count/5", Some(&cookie)).await;
    assert_eq!(r.body, "0");
    assert_eq!((c.loads(), c.writes()), (1, 0));
    c.reset();
    // Write: load + save.
    app.post("/set/b/2", Some(&cookie)).await;
    assert_eq!((c.loads(), c.save.load(SeqCst), c.total()), (1, 1, 2));
    c.reset();
    // Unchanged (same value again, or removing an absent key): no write.
    app.post("/set/b/2", Some(&cookie)).await;
    app.post("/remove/nope", Some(&cookie)).await;
    assert_eq!((c.loads(), c.writes()), (2, 0));
    c.reset();
    // Login (cycle_id): load, create the new record, delete the old one.
    let cookie = app.post("/login/u", Some(&cookie)).await.cookie().unwrap();
    assert_eq!(
        (
            c.loads(),
            c.create.load(SeqCst),
            c.delete.load(SeqCst),
            c.total()
        ),
        (1, 1, 1, 3)
    );
    c.reset();
    // Logout: 1.
    let r = app.post("/logout", Some(&cookie)).await;
    assert!(r.removes_cookie());
    assert_eq!((c.delete.load(SeqCst), c.total()), (1, 1));
}

async fn idle_and_absolute_expiry_through_the_layer(b: Backend) {
    let app = App::new(b.store.clone()); // idle 600 s, absolute 3600 s
    let cookie = app.new_session().await;
    app.clock.advance(Duration::from_secs(599));
    assert_eq!(
        app.get("/get/k0", Some(&cookie)).await.body,
        "\"v0\"",
        "refreshes idle"
    );
    app.clock.advance(Duration::from_secs(599));
    assert_eq!(app.get("/get/k0", Some(&cookie)).await.body, "\"v0\"");
    app.clock.advance(Duration::from_secs(600));
    let r = app.get("/get/k0", Some(&cookie)).await;
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (200, "null"),
        "idle expiry"
    );
    // An expired session is a fresh one: a write creates a new id.
    let r = app.post("/set/x/1", Some(&cookie)).await;
    let fresh = r.cookie().expect("new session");
    assert_ne!(fresh, cookie);
    // Absolute lifetime: used every 500 s, it still ends 3600 s after creation.
    let mut elapsed = 0;
    while elapsed + 500 < 3600 {
        app.clock.advance(Duration::from_secs(500));
        elapsed += 500;
        assert_eq!(
            app.get("/get/x", Some(&fresh)).await.body,
            "\"1\"",
            "at {elapsed}s"
        );
    }
    app.clock.advance(Duration::from_secs(3600 - elapsed));
    assert_eq!(
        app.get("/get/x", Some(&fresh)).await.body,
        "null",
        "absolute expiry"
    );
    // Per-session idle override.
    let c = app.new_session().await;
    app.post("/expiry/60", Some(&c)).await;
    app.clock.advance(Duration::from_secs(61));
    assert_eq!(
        app.get("/get/k0", Some(&c)).await.body,
        "null",
        "idle override"
    );
}

async fn cycle_id_keeps_data_and_invalidates_the_old_id(b: Backend) {
    let app = App::new(b.store.clone());
    let old = app.new_session().await;
    app.post("/set/cart/3", Some(&old)).await;
    let r = app.post("/login/u1", Some(&old)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let new = r.cookie().expect("login sets a new cookie");
    assert_ne!(new, old);
    assert_eq!(app.get("/get/cart", Some(&new)).await.body, "\"3\"");
    assert_eq!(app.get("/user", Some(&new)).await.body, "u1");
    assert_eq!(app.get("/get/cart", Some(&old)).await.body, "null");
    assert!(app.stored(&app.key_of(&old)).await.is_none());
    // Cycling alone also rotates.
    let r = app.post("/cycle", Some(&new)).await;
    let newer = r.cookie().expect("cycled");
    assert_eq!(app.get("/get/cart", Some(&newer)).await.body, "\"3\"");
    assert_eq!(app.get("/get/cart", Some(&new)).await.body, "null");
}

/// The commit of `cycle_id` is held between creating the new record and deleting the old
/// one while another request of the same session runs.
async fn cycle_id_merges_a_concurrent_write_and_loses_to_a_concurrent_logout(b: Backend) {
    let app = App::new(b.store.clone());

    // A write to the old session lands in between: the new session has it.
    let old = app.new_session().await;
    let (reached, release) = app.faults.hold_next_create();
    let login = {
        let (app, old) = (app.clone(), old.clone());
        tokio::spawn(async move { app.post("/login/u1", Some(&old)).await })
    };
    reached.notified().await;
    let r = app.post("/set/late/1", Some(&old)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    release.notify_one();
    let r = login.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let new = r.cookie().expect("login sets a new cookie");
    assert_eq!(app.get("/get/late", Some(&new)).await.body, "\"1\"");
    assert_eq!(app.get("/get/k0", Some(&new)).await.body, "\"v0\"");
    assert_eq!(app.get("/user", Some(&new)).await.body, "u1");
    assert!(app.stored(&app.key_of(&old)).await.is_none());

    // A logout of the old session lands in between: it wins, the login hands out no id and
    // the record it created is gone.
    let old = app.new_session().await;
    let (reached, release) = app.faults.hold_next_create();
    let login = {
        let (app, old) = (app.clone(), old.clone());
        tokio::spawn(async move { app.post("/login/u2", Some(&old)).await })
    };
    reached.notified().await;
    let created = app.faults.last_created();
    assert!(app.post("/logout", Some(&old)).await.removes_cookie());
    release.notify_one();
    let r = login.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.cookie().is_none(),
        "no id for a session logged out meanwhile"
    );
    for key in [app.key_of(&old), created] {
        assert!(app.stored(&key).await.is_none());
    }
}

async fn key_rotation(b: Backend) {
    let clock = ManualClock::starting_now();
    let old_app = App::with_clock(b.store.clone(), builder(), routes(), clock.clone());
    let cookie = old_app.new_session().await;
    // New key first, old key kept: old cookies still work; new cookies use the new key.
    let rotated = App::with_clock(
        b.store.clone(),
        builder_with_keys(&[KEY_B, KEY_A]),
        routes(),
        clock.clone(),
    );
    assert_eq!(rotated.get("/get/k0", Some(&cookie)).await.body, "\"v0\"");
    let fresh = rotated.new_session().await;
    let only_new = App::with_clock(
        b.store.clone(),
        builder_with_keys(&[KEY_B]),
        routes(),
        clock.clone(),
    );
    assert_eq!(only_new.get("/get/k0", Some(&fresh)).await.body, "\"v0\"");
    assert_eq!(
        old_app.get("/get/k0", Some(&fresh)).await.body,
        "null",
        "signed by the new key"
    );
    // Records written under the old key are still readable with the rotated list, and data
    // saved by the rotated app is encrypted with the new key.
    rotated.post("/set/k1/v1", Some(&cookie)).await;
    assert_eq!(rotated.get("/get/k1", Some(&cookie)).await.body, "\"v1\"");
    // Once the old key is dropped, its cookies are no longer accepted (and cost nothing).
    only_new.counts.reset();
    assert_eq!(only_new.get("/get/k0", Some(&cookie)).await.body, "null");
    assert_eq!(only_new.counts.total(), 0);
}

async fn bad_cookies_cost_no_store_call_and_are_not_accepted(b: Backend) {
    let app = App::new(b.store.clone());
    let good = app.new_session().await;
    let value = good.split_once('=').unwrap().1.to_owned();
    let raw = cookie_bytes(&good);
    let mut flipped_tag = raw.clone();
    *flipped_tag.last_mut().unwrap() ^= 1;
    let mut other_id = raw.clone();
    other_id[0] ^= 1;
    let unsigned_id = b64(&raw[..16]);
    let bad = [
        format!("{COOKIE}={}", b64(&flipped_tag)),
        format!("{COOKIE}={}", b64(&other_id)),
        format!("{COOKIE}={unsigned_id}"),
        format!("{COOKIE}={}", "A".repeat(64)),
        format!("{COOKIE}={}", "A".repeat(4000)),
        format!("{COOKIE}=not base64!"),
        format!("{COOKIE}="),
        format!("{COOKIE}=\"{value}\""),
        format!("{good}; {good}"),
        format!("{COOKIE}={value}x"),
    ];
    for cookie in &bad {
        app.counts.reset();
        let r = app.get("/get/k0", Some(cookie)).await;
        assert_eq!(
            (r.status.as_u16(), r.body.as_str()),
            (200, "null"),
            "{cookie}"
        );
        assert_eq!(app.counts.total(), 0, "no store call for {cookie}");
        // A write starts a brand-new session; the forged id is never adopted.
        let r = app.post("/set/k0/forged", Some(cookie)).await;
        let new = r.cookie().expect("new session");
        assert_ne!(new, good);
        assert_eq!(app.counts.loads(), 0);
    }
    assert_eq!(app.get("/get/k0", Some(&good)).await.body, "\"v0\"");
}

async fn server_error_responses_are_not_saved(b: Backend) {
    let app = App::new(b.store.clone());
    let cookie = app.new_session().await;
    app.counts.reset();
    let r = app.post("/fail/k0/changed", Some(&cookie)).await;
    assert_eq!(r.status, 500);
    assert_eq!(app.counts.writes(), 0);
    assert_eq!(app.get("/get/k0", Some(&cookie)).await.body, "\"v0\"");
    // Nor created.
    app.counts.reset();
    let r = app.post("/fail/k/v", None).await;
    assert!(r.cookie().is_none());
    assert_eq!(app.counts.total(), 0);
}

async fn sign_out_everywhere(b: Backend) {
    use axum::extract::{Extension, Path};
    use axum::routing::post;
    use tower_rampart::session::Session;
    let router = routes().route(
        "/everywhere/{user}",
        post(
            |Extension(s): Extension<Session>, Path(user): Path<String>| async move {
                s.delete_user_sessions(&user).await.unwrap().to_string()
            },
        ),
    );
    let app = App::with(b.store.clone(), builder(), router);
    let user = format!("user-{}", app.now());
    let phone = app
        .post(&format!("/login/{user}"), None)
        .await
        .cookie()
        .unwrap();
    let laptop = app
        .post(&format!("/login/{user}"), None)
        .await
        .cookie()
        .unwrap();
    let stranger = app
        .post("/login/someone-else", None)
        .await
        .cookie()
        .unwrap();
    let r = app.post(&format!("/everywhere/{user}"), Some(&phone)).await;
    assert_eq!(r.body, "2");
    assert_eq!(app.get("/user", Some(&phone)).await.body, "");
    assert_eq!(app.get("/user", Some(&laptop)).await.body, "");
    assert_eq!(app.get("/user", Some(&stranger)).await.body, "someone-else");
}
