//! The conformance suite of [`SessionStore`]s (feature `testing`): the checks every store
//! shipped with the crate passes, for a store of your own.
//!
//! It runs in two parts: the store contract through the trait (create only if absent,
//! compare-and-set save that never creates, conditional delete, idle and absolute expiry,
//! throttled idle refresh, touch, the per-user index: sign out everywhere, listing a user's
//! sessions, ending one), then the session layer's guarantees
//! on top of the store (no lost updates between concurrent requests, logout wins, `cycle_id`
//! merges and loses to a logout, key rotation, round trips per request, ...). Each check is
//! a function of its own, so a test can run them one by one; [`run_all`] runs them all.
//!
//! A failed check panics with the assertion that failed, as a test does. Keys and user names
//! are fresh on every run, so a store shared by several runs (a Redis server) is fine. Time
//! is a [`ManualClock`] started at the current time: stores judge expiry by the `now` they
//! are given. The checks spawn tasks: run them on a multi-threaded Tokio runtime.
//!
//! ```
//! use std::sync::Arc;
//! use tower_rampart::session::store::testing;
//! use tower_rampart::session::{
//!     MemoryStore, SessionKey, SessionRecord, SessionStore, StoreFuture, UserSession,
//!     WriteOutcome,
//! };
//!
//! /// A store of your own (here it hands every call to a `MemoryStore`).
//! #[derive(Debug, Default)]
//! struct MyStore(MemoryStore);
//!
//! impl SessionStore for MyStore {
//!     fn load<'a>(&'a self, key: &'a SessionKey, now: u64, refresh: bool)
//!         -> StoreFuture<'a, Option<SessionRecord>> {
//!         self.0.load(key, now, refresh)
//!     }
//!     fn create<'a>(&'a self, key: &'a SessionKey, record: &'a SessionRecord, now: u64)
//!         -> StoreFuture<'a, bool> {
//!         self.0.create(key, record, now)
//!     }
//!     fn save<'a>(&'a self, key: &'a SessionKey, record: &'a SessionRecord, now: u64)
//!         -> StoreFuture<'a, WriteOutcome> {
//!         self.0.save(key, record, now)
//!     }
//!     fn delete<'a>(&'a self, key: &'a SessionKey, expected_version: Option<u64>, now: u64)
//!         -> StoreFuture<'a, WriteOutcome> {
//!         self.0.delete(key, expected_version, now)
//!     }
//!     fn touch<'a>(&'a self, key: &'a SessionKey, now: u64) -> StoreFuture<'a, bool> {
//!         self.0.touch(key, now)
//!     }
//!     fn delete_user_sessions<'a>(&'a self, user: &'a str, now: u64) -> StoreFuture<'a, u64> {
//!         self.0.delete_user_sessions(user, now)
//!     }
//!     fn list_user_sessions<'a>(&'a self, user: &'a str, now: u64)
//!         -> StoreFuture<'a, Vec<UserSession>> {
//!         self.0.list_user_sessions(user, now)
//!     }
//!     fn delete_user_session<'a>(&'a self, user: &'a str, key: &'a SessionKey, now: u64)
//!         -> StoreFuture<'a, bool> {
//!         self.0.delete_user_session(user, key, now)
//!     }
//! }
//!
//! // In a test: `#[tokio::test(flavor = "multi_thread")] async fn my_store_conforms()`.
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() {
//! testing::run_all(Arc::new(MyStore::default())).await;
//! // Or one check at a time, e.g. with a fresh store each:
//! testing::store_create_is_only_if_absent(Arc::new(MyStore::default())).await;
//! # }
//! ```

use std::convert::Infallible;
use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{Request, Response, StatusCode, header};
use http_body::Body;
use serde_json::Value;
use tokio::sync::Notify;
use tower_layer::Layer;
use tower_service::Service;

use super::{SessionRecord, SessionStore, StoreError, StoreFuture, UserSession, WriteOutcome};
use crate::clock::{Clock, ManualClock};
use crate::session::crypto::DerivedKeys;
use crate::session::{
    Expiry, Session, SessionConfig, SessionConfigBuilder, SessionError, SessionKey, SessionLayer,
    SessionService,
};

const SEC: u64 = 1_000_000;
const KEY_A: &[u8] = b"test key A: 0123456789abcdef0123456789abcdef";
const KEY_B: &[u8] = b"test key B: 0123456789abcdef0123456789abcdef";
const COOKIE: &str = "sid";

/// Runs every check of the suite against `store`, in order: first the store contract, then
/// the layer's guarantees. Panics at the first failed assertion.
pub async fn run_all(store: Arc<dyn SessionStore>) {
    store_create_is_only_if_absent(store.clone()).await;
    store_save_is_compare_and_set_and_never_creates(store.clone()).await;
    store_delete_unconditional_and_conditional(store.clone()).await;
    store_idle_and_absolute_expiry(store.clone()).await;
    store_idle_refresh_is_throttled(store.clone()).await;
    store_touch(store.clone()).await;
    store_user_index(store.clone()).await;
    store_user_index_follows_saves(store.clone()).await;
    sign_ins_racing_sign_out_everywhere(store.clone()).await;
    store_list_user_sessions(store.clone()).await;
    store_delete_user_session(store.clone()).await;
    concurrent_requests_changing_different_keys_lose_nothing(store.clone()).await;
    same_key_later_save_wins_other_keys_merge(store.clone()).await;
    logout_racing_saves_never_comes_back(store.clone()).await;
    round_trips_per_request(store.clone()).await;
    idle_and_absolute_expiry_through_the_layer(store.clone()).await;
    cycle_id_keeps_data_and_invalidates_the_old_id(store.clone()).await;
    cycle_id_merges_a_concurrent_write_and_loses_to_a_concurrent_logout(store.clone()).await;
    key_rotation(store.clone()).await;
    records_changed_behind_the_layer_are_no_session(store.clone()).await;
    bad_cookies_cost_no_store_call_and_are_not_accepted(store.clone()).await;
    server_error_responses_are_not_saved(store.clone()).await;
    sign_out_everywhere(store.clone()).await;
    user_sessions_list_and_end_one(store.clone()).await;
    user_session_handles_across_key_rotation(store).await;
}

fn key(n: u64) -> SessionKey {
    // Random per run, so a shared store never sees a key twice.
    let salt = ManualClock::starting_now().now_micros();
    SessionKey::parse(&format!("{salt:016x}{n:016x}")).expect("32 hex characters")
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
        binding: Some("binding of the create".into()),
    }
}

fn now() -> u64 {
    ManualClock::starting_now().now_micros()
}

/// Store contract: `create` stores only if no live record is there, at version 1, and a key
/// whose record has expired can be created again.
pub async fn store_create_is_only_if_absent(store: Arc<dyn SessionStore>) {
    let s = &store;
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

/// Store contract: `save` is compare-and-set on the version (a refusal carries the current
/// record), increments the version, can remove the user, keeps the binding it is given (or
/// none), and never creates a record.
pub async fn store_save_is_compare_and_set_and_never_creates(store: Arc<dyn SessionStore>) {
    let s = &store;
    let (k, t) = (key(2), now());
    let mut r = record(t, 60, 600, b"v1");
    r.user_id = Some("alice".into());
    assert!(s.create(&k, &r, t).await.unwrap());
    let mut next = s.load(&k, t, false).await.unwrap().unwrap();
    next.data = b"v2".to_vec();
    next.accessed_micros = t + SEC;
    next.binding = Some("binding of the save".into());
    assert_eq!(
        s.save(&k, &next, t + SEC).await.unwrap(),
        WriteOutcome::Written
    );
    let stored = s.load(&k, t + SEC, false).await.unwrap().unwrap();
    assert_eq!(stored.version, 2);
    assert_eq!(stored.data, b"v2");
    assert_eq!(stored.accessed_micros, t + SEC);
    assert_eq!(stored.user_id.as_deref(), Some("alice"));
    assert_eq!(stored.binding.as_deref(), Some("binding of the save"));
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
    no_user.binding = None;
    assert_eq!(
        s.save(&k, &no_user, t + SEC).await.unwrap(),
        WriteOutcome::Written
    );
    let stored = s.load(&k, t + SEC, false).await.unwrap().unwrap();
    assert_eq!(stored.user_id, None);
    assert_eq!(stored.binding, None, "a save without a binding leaves none");
    // A save never creates.
    let ghost = key(3);
    assert_eq!(
        s.save(&ghost, &record(t, 60, 600, b"x"), t).await.unwrap(),
        WriteOutcome::Missing
    );
    assert!(s.load(&ghost, t, false).await.unwrap().is_none());
}

/// Store contract: `delete` with an expected version is compare-and-set, without one it is
/// unconditional, and a deleted record cannot be saved back.
pub async fn store_delete_unconditional_and_conditional(store: Arc<dyn SessionStore>) {
    let s = &store;
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

/// Store contract: a record dies at its idle deadline, and at its absolute deadline however
/// busy; an expired record cannot be saved or touched back to life.
pub async fn store_idle_and_absolute_expiry(store: Arc<dyn SessionStore>) {
    let s = &store;
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

/// Store contract: a load with `refresh` refreshes only once more than a quarter of the idle
/// timeout has passed, without changing the version; a load without it never refreshes.
pub async fn store_idle_refresh_is_throttled(store: Arc<dyn SessionStore>) {
    let s = &store;
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

/// Store contract: `touch` refreshes a live record without changing its version, and
/// reports a missing one.
pub async fn store_touch(store: Arc<dyn SessionStore>) {
    let s = &store;
    let (k, t) = (key(9), now());
    assert!(!s.touch(&k, t).await.unwrap());
    assert!(s.create(&k, &record(t, 10, 100, b"x"), t).await.unwrap());
    assert!(s.touch(&k, t + 5 * SEC).await.unwrap());
    let r = s.load(&k, t + 14 * SEC, false).await.unwrap().unwrap();
    assert_eq!((r.version, r.accessed_micros), (1, t + 5 * SEC));
}

/// Store contract: `delete_user_sessions` deletes exactly the live sessions that belong to
/// the user now (not one saved meanwhile under another user) and counts them.
pub async fn store_user_index(store: Arc<dyn SessionStore>) {
    let s = &store;
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

/// Store contract: a session that gets its user through a `save` (not at its creation), or
/// whose absolute deadline a save moves later, is ended by `delete_user_sessions`, also
/// after its first deadline has passed; one whose deadline a save moves earlier too.
pub async fn store_user_index_follows_saves(store: Arc<dyn SessionStore>) {
    let s = &store;
    let t = now();
    let user = format!("carol-{t}");
    let (later, earlier) = (key(14), key(15));
    // Anonymous, idle 600 s, absolute 60 s; then the user and a later deadline, in two saves.
    assert!(
        s.create(&later, &record(t, 600, 60, b"x"), t)
            .await
            .unwrap()
    );
    let mut r = s.load(&later, t, false).await.unwrap().unwrap();
    r.user_id = Some(user.clone());
    assert_eq!(s.save(&later, &r, t).await.unwrap(), WriteOutcome::Written);
    let mut r = s.load(&later, t, false).await.unwrap().unwrap();
    r.expires_micros = t + 500 * SEC;
    assert_eq!(s.save(&later, &r, t).await.unwrap(), WriteOutcome::Written);
    // With the user from the start, then an earlier deadline.
    let mut r = record(t, 600, 400, b"x");
    r.user_id = Some(user.clone());
    assert!(s.create(&earlier, &r, t).await.unwrap());
    let mut r = s.load(&earlier, t, false).await.unwrap().unwrap();
    r.expires_micros = t + 300 * SEC;
    assert_eq!(
        s.save(&earlier, &r, t).await.unwrap(),
        WriteOutcome::Written
    );
    // 120 s later the first deadline (60 s) has passed; both are alive and both end.
    let at = t + 120 * SEC;
    assert!(s.load(&later, at, false).await.unwrap().is_some());
    assert_eq!(s.delete_user_sessions(&user, at).await.unwrap(), 2);
    assert!(s.load(&later, at, false).await.unwrap().is_none());
    assert!(s.load(&earlier, at, false).await.unwrap().is_none());
}

/// Store contract: sign-ins (creates with the user, and saves that give an anonymous
/// session the user) racing `delete_user_sessions` calls. A session signed in meanwhile may
/// survive a sweep that ran before its write landed, but never escapes the index: one sweep
/// after they all finished ends every one of them.
pub async fn sign_ins_racing_sign_out_everywhere(store: Arc<dyn SessionStore>) {
    let t = now();
    let user = format!("frank-{t}");
    let done = Arc::new(AtomicBool::new(false));
    // Two sweepers, each sweeping again and again until every sign-in has finished.
    let sweepers: Vec<_> = (0..2)
        .map(|_| {
            let (s, user, done) = (store.clone(), user.clone(), done.clone());
            tokio::spawn(async move {
                let mut ended = 0;
                while !done.load(Ordering::SeqCst) {
                    ended += s.delete_user_sessions(&user, t).await.unwrap();
                    tokio::task::yield_now().await;
                }
                ended
            })
        })
        .collect();
    let sign_ins: Vec<_> = (0..40)
        .map(|i| {
            let (s, owner) = (store.clone(), user.clone());
            tokio::spawn(async move {
                let k = key(100 + i);
                if i % 2 == 0 {
                    let mut r = record(t, 600, 3600, b"x");
                    r.user_id = Some(owner);
                    assert!(s.create(&k, &r, t).await.unwrap());
                } else {
                    assert!(s.create(&k, &record(t, 600, 3600, b"x"), t).await.unwrap());
                    let mut r = s.load(&k, t, false).await.unwrap().unwrap();
                    r.user_id = Some(owner);
                    assert_eq!(s.save(&k, &r, t).await.unwrap(), WriteOutcome::Written);
                }
                k
            })
        })
        .collect();
    let mut keys = Vec::new();
    for task in sign_ins {
        keys.push(task.await.unwrap());
    }
    done.store(true, Ordering::SeqCst);
    let mut ended = 0;
    for task in sweepers {
        ended += task.await.unwrap();
    }
    ended += store.delete_user_sessions(&user, t + SEC).await.unwrap();
    assert_eq!(ended, 40, "every sign-in ended exactly once");
    for k in &keys {
        assert!(store.load(k, t + SEC, false).await.unwrap().is_none());
    }
}

/// Store contract: `list_user_sessions` lists exactly the live sessions that belong to the
/// user now, with their times, read from the records: not another user's, not one saved
/// meanwhile under another user, not an expired one, not an anonymous one.
pub async fn store_list_user_sessions(store: Arc<dyn SessionStore>) {
    let s = &store;
    let t = now();
    let user = format!("grace-{t}");
    let other = format!("heidi-{t}");
    let mk = |u: Option<&str>, at: u64, idle: u64| {
        let mut r = record(at, idle, 3600, b"x");
        r.user_id = u.map(str::to_owned);
        r
    };
    let (a1, a2, short, b1, moved, anon) = (key(20), key(21), key(22), key(23), key(24), key(25));
    assert!(s.create(&a1, &mk(Some(&user), t, 600), t).await.unwrap());
    assert!(
        s.create(&a2, &mk(Some(&user), t + SEC, 600), t + SEC)
            .await
            .unwrap()
    );
    assert!(s.create(&short, &mk(Some(&user), t, 10), t).await.unwrap());
    assert!(s.create(&b1, &mk(Some(&other), t, 600), t).await.unwrap());
    assert!(s.create(&moved, &mk(Some(&user), t, 600), t).await.unwrap());
    assert!(s.create(&anon, &mk(None, t, 600), t).await.unwrap());
    let mut m = s.load(&moved, t, false).await.unwrap().unwrap();
    m.user_id = Some(other.clone());
    assert_eq!(s.save(&moved, &m, t).await.unwrap(), WriteOutcome::Written);
    // a2 used at t + 5 s.
    assert!(s.touch(&a2, t + 5 * SEC).await.unwrap());
    let sorted = |mut v: Vec<UserSession>| {
        v.sort_by(|x, y| x.key.cmp(&y.key));
        v
    };
    let at = t + 20 * SEC; // `short` (idle 10 s) has expired
    let listed = sorted(s.list_user_sessions(&user, at).await.unwrap());
    let expected = sorted(vec![
        UserSession {
            key: a1.clone(),
            created_micros: t,
            accessed_micros: t,
            idle_micros: 600 * SEC,
            expires_micros: t + 3600 * SEC,
        },
        UserSession {
            key: a2.clone(),
            created_micros: t + SEC,
            accessed_micros: t + 5 * SEC,
            idle_micros: 600 * SEC,
            expires_micros: t + SEC + 3600 * SEC,
        },
    ]);
    assert_eq!(listed, expected);
    assert_eq!(listed[0].deadline(), listed[0].accessed_micros + 600 * SEC);
    let theirs = sorted(s.list_user_sessions(&other, at).await.unwrap());
    let mut want = vec![b1.clone(), moved.clone()];
    want.sort();
    assert_eq!(
        theirs.iter().map(|u| u.key.clone()).collect::<Vec<_>>(),
        want
    );
    assert!(
        s.list_user_sessions(&format!("nobody-{t}"), at)
            .await
            .unwrap()
            .is_empty()
    );
    // Listing changes nothing; after a logout and past a1's idle deadline, a2 is left.
    assert_eq!(
        s.delete(&a1, None, at).await.unwrap(),
        WriteOutcome::Written
    );
    let listed = s.list_user_sessions(&user, at).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, a2);
    assert!(
        s.list_user_sessions(&user, t + 606 * SEC)
            .await
            .unwrap()
            .is_empty(),
        "a2's idle deadline (t + 605 s) has passed"
    );
}

/// Store contract: `delete_user_session` deletes one live session only if it belongs to the
/// user: another user's session (also one that was the user's before a save moved it), a
/// missing or an expired one answer `false` and stay as they were.
pub async fn store_delete_user_session(store: Arc<dyn SessionStore>) {
    let s = &store;
    let t = now();
    let user = format!("ivan-{t}");
    let other = format!("judy-{t}");
    let mk = |u: &str, idle: u64| {
        let mut r = record(t, idle, 3600, b"x");
        r.user_id = Some(u.to_owned());
        r
    };
    let (mine, keep, theirs, moved, short) = (key(30), key(31), key(32), key(33), key(34));
    assert!(s.create(&mine, &mk(&user, 600), t).await.unwrap());
    assert!(s.create(&keep, &mk(&user, 600), t).await.unwrap());
    assert!(s.create(&theirs, &mk(&other, 600), t).await.unwrap());
    assert!(s.create(&moved, &mk(&user, 600), t).await.unwrap());
    assert!(s.create(&short, &mk(&user, 10), t).await.unwrap());
    let mut m = s.load(&moved, t, false).await.unwrap().unwrap();
    m.user_id = Some(other.clone());
    assert_eq!(s.save(&moved, &m, t).await.unwrap(), WriteOutcome::Written);
    let at = t + 20 * SEC;
    // Not the user's: refused, untouched.
    assert!(!s.delete_user_session(&user, &theirs, at).await.unwrap());
    assert!(!s.delete_user_session(&user, &moved, at).await.unwrap());
    assert!(s.load(&theirs, at, false).await.unwrap().is_some());
    assert!(s.load(&moved, at, false).await.unwrap().is_some());
    // Expired or missing: nothing to end.
    assert!(!s.delete_user_session(&user, &short, at).await.unwrap());
    assert!(!s.delete_user_session(&user, &key(35), at).await.unwrap());
    // The user's own: ended, once; the user's other session stays.
    assert!(s.delete_user_session(&user, &mine, at).await.unwrap());
    assert!(s.load(&mine, at, false).await.unwrap().is_none());
    assert!(!s.delete_user_session(&user, &mine, at).await.unwrap());
    assert!(s.load(&keep, at, false).await.unwrap().is_some());
    let listed = s.list_user_sessions(&user, at).await.unwrap();
    assert_eq!(
        listed.iter().map(|u| u.key.clone()).collect::<Vec<_>>(),
        vec![keep.clone()]
    );
    // Sign out everywhere still finds the rest.
    assert_eq!(s.delete_user_sessions(&user, at).await.unwrap(), 1);
    assert_eq!(s.delete_user_sessions(&other, at).await.unwrap(), 2);
}

/// Layer: 100 concurrent requests of one session each insert their own key; none is lost.
pub async fn concurrent_requests_changing_different_keys_lose_nothing(
    store: Arc<dyn SessionStore>,
) {
    // 100 saves at once, each perhaps waiting for a replica: on a loaded 2-core machine one
    // can take longer than the default 500 ms store timeout. This check is about losing
    // nothing, not about latency.
    let app = App::with(
        store,
        builder().store_timeout(Duration::from_secs(10)),
        Router::standard(),
    );
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
    assert!(app.counts.save.load(Ordering::SeqCst) >= 99);
}

/// Layer: two requests load the same version; the first saves, then the second saves on
/// top (a conflict, merged): the shared key has the second's value, and each one's own key
/// survives.
pub async fn same_key_later_save_wins_other_keys_merge(store: Arc<dyn SessionStore>) {
    use tokio::sync::Barrier;

    let loaded = Arc::new(Barrier::new(2));
    let first_done = Arc::new(Notify::new());
    let (l1, l2, f2) = (loaded.clone(), loaded.clone(), first_done.clone());
    let router = Router::standard()
        .route("POST", "/first", move |s, _| {
            let l = l1.clone();
            async move {
                s.get::<String>("k").await?;
                l.wait().await;
                s.insert("k", "first").await?;
                s.insert("only_first", 1).await?;
                ok("ok")
            }
        })
        .route("POST", "/second", move |s, _| {
            let (l, f) = (l2.clone(), f2.clone());
            async move {
                s.get::<String>("k").await?;
                l.wait().await;
                f.notified().await;
                s.insert("k", "second").await?;
                s.insert("only_second", 2).await?;
                ok("ok")
            }
        });
    let app = App::with(store, builder(), router);
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
    assert_eq!(app.counts.save.load(Ordering::SeqCst), 3);
    assert_eq!(app.get("/get/k", Some(&cookie)).await.body, "\"second\"");
    assert_eq!(app.get("/get/only_first", Some(&cookie)).await.body, "1");
    assert_eq!(app.get("/get/only_second", Some(&cookie)).await.body, "2");
    assert_eq!(app.get("/get/k0", Some(&cookie)).await.body, "\"v0\"");
}

/// Layer: a logout racing concurrent saves of the same session always wins; a writer that
/// arrives after it gets a brand-new, empty session.
pub async fn logout_racing_saves_never_comes_back(store: Arc<dyn SessionStore>) {
    let app = App::new(store);
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

/// Layer: the store calls of each kind of request (none without a cookie or when the
/// handler does not touch the session, one load for reads, load and save for a change, no
/// write when nothing changed, load, create and delete for a login, one delete for a logout).
pub async fn round_trips_per_request(store: Arc<dyn SessionStore>) {
    use Ordering::SeqCst;
    let app = App::new(store);
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

/// Layer: use refreshes the idle timeout, the absolute lifetime ends a busy session, an
/// expired session is a fresh one, and a per-session idle override applies.
pub async fn idle_and_absolute_expiry_through_the_layer(store: Arc<dyn SessionStore>) {
    let app = App::new(store); // idle 600 s, absolute 3600 s
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

/// Layer: `cycle_id` (login) moves the data to a new id and the old id stops working.
pub async fn cycle_id_keeps_data_and_invalidates_the_old_id(store: Arc<dyn SessionStore>) {
    let app = App::new(store);
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

/// Layer: the commit of `cycle_id` is held between creating the new record and deleting the
/// old one while another request of the same session runs: a write then is carried over to
/// the new session; a logout then wins (no new id, the new record is gone).
pub async fn cycle_id_merges_a_concurrent_write_and_loses_to_a_concurrent_logout(
    store: Arc<dyn SessionStore>,
) {
    let app = App::new(store);

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

/// Layer: with a new key first and the old one kept, old cookies and records still work
/// and new cookies use the new key; once the old key is dropped its cookies cost nothing
/// and are refused.
pub async fn key_rotation(store: Arc<dyn SessionStore>) {
    let clock = ManualClock::starting_now();
    let old_app = App::with_clock(store.clone(), builder(), Router::standard(), clock.clone());
    let cookie = old_app.new_session().await;
    // New key first, old key kept: old cookies still work; new cookies use the new key.
    let rotated = App::with_clock(
        store.clone(),
        builder_with_keys(&[KEY_B, KEY_A]),
        Router::standard(),
        clock.clone(),
    );
    assert_eq!(rotated.get("/get/k0", Some(&cookie)).await.body, "\"v0\"");
    let fresh = rotated.new_session().await;
    let only_new = App::with_clock(
        store,
        builder_with_keys(&[KEY_B]),
        Router::standard(),
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

/// Layer: a record whose user id or lifetime was changed behind the layer's back (here through
/// the store itself, keeping the record's binding) is no session, and a write then starts a
/// new one; a record without a binding (written by a version before bindings) is read, unless
/// bindings are required. The store must keep [`SessionRecord::binding`] as it was given.
pub async fn records_changed_behind_the_layer_are_no_session(store: Arc<dyn SessionStore>) {
    let clock = ManualClock::starting_now();
    let app = App::with_clock(store.clone(), builder(), Router::standard(), clock.clone());
    let strict = App::with_clock(
        store,
        builder().require_record_binding(true),
        Router::standard(),
        clock,
    );
    async fn signed_in(app: &App) -> String {
        let anonymous = app.new_session().await;
        app.post("/login/alice", Some(&anonymous))
            .await
            .cookie()
            .expect("signing in cycles the id")
    }
    type Change = fn(&mut SessionRecord);
    let changes: [(&str, Change); 6] = [
        ("nothing (the control)", |_| {}),
        ("user id", |r| r.user_id = Some("mallory".into())),
        ("no user", |r| r.user_id = None),
        ("creation time", |r| r.created_micros += 86_400 * SEC),
        ("absolute deadline", |r| r.expires_micros += 86_400 * SEC),
        ("idle timeout", |r| r.idle_micros += 86_400 * SEC),
    ];
    for (what, change) in changes {
        let cookie = signed_in(&app).await;
        assert_eq!(app.get("/user", Some(&cookie)).await.body, "alice");
        let k = app.key_of(&cookie);
        let mut r = app.stored(&k).await.expect("a live record");
        assert!(r.binding.is_some(), "the layer binds what it writes");
        // A save through the store increments the version: give the record the binding the
        // layer would give its original fields at that version, then change a field, as
        // someone editing the stored field (and nothing else) would.
        r.binding = Some(DerivedKeys::derive(KEY_A).bind(k.as_str(), r.version + 1, &r));
        change(&mut r);
        let now = app.clock.now_micros();
        assert_eq!(
            app.store.save(&k, &r, now).await.unwrap(),
            WriteOutcome::Written
        );
        let (user, value) = if what.starts_with("nothing") {
            ("alice", "\"alice\"")
        } else {
            ("", "null")
        };
        for app in [&app, &strict] {
            assert_eq!(app.get("/user", Some(&cookie)).await.body, user, "{what}");
            assert_eq!(
                app.get("/get/user", Some(&cookie)).await.body,
                value,
                "{what}"
            );
        }
    }
    // Without a binding: read by default, refused when bindings are required.
    let cookie = signed_in(&app).await;
    let k = app.key_of(&cookie);
    let mut r = app.stored(&k).await.expect("a live record");
    r.binding = None;
    let now = app.clock.now_micros();
    assert_eq!(
        app.store.save(&k, &r, now).await.unwrap(),
        WriteOutcome::Written
    );
    assert_eq!(app.get("/user", Some(&cookie)).await.body, "alice");
    assert_eq!(strict.get("/user", Some(&cookie)).await.body, "");
    // A write through the layer binds it again.
    assert_eq!(
        app.post("/set/k1/v1", Some(&cookie)).await.status,
        StatusCode::OK
    );
    assert_eq!(strict.get("/user", Some(&cookie)).await.body, "alice");
}

/// Layer: tampered, unsigned, oversized and malformed cookies, and valid cookies of two
/// different sessions, cost no store call, and a write then starts a new session instead of
/// adopting the forged id.
pub async fn bad_cookies_cost_no_store_call_and_are_not_accepted(store: Arc<dyn SessionStore>) {
    let app = App::new(store);
    let good = app.new_session().await;
    let value = good.split_once('=').unwrap().1.to_owned();
    let raw = URL_SAFE_NO_PAD.decode(&value).expect("a base64url cookie");
    let mut flipped_tag = raw.clone();
    *flipped_tag.last_mut().unwrap() ^= 1;
    let mut other_id = raw.clone();
    other_id[0] ^= 1;
    let unsigned_id = URL_SAFE_NO_PAD.encode(&raw[..16]);
    let bad = [
        format!("{COOKIE}={}", URL_SAFE_NO_PAD.encode(&flipped_tag)),
        format!("{COOKIE}={}", URL_SAFE_NO_PAD.encode(&other_id)),
        format!("{COOKIE}={unsigned_id}"),
        format!("{COOKIE}={}", "A".repeat(64)),
        format!("{COOKIE}={}", "A".repeat(4000)),
        format!("{COOKIE}=not base64!"),
        format!("{COOKIE}="),
        format!("{COOKIE}=\"{value}\""),
        format!("{COOKIE}={value}x"),
        format!("{good}; {}", app.new_session().await),
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
    // Beside the valid cookie, invalid cookies of the name (planted from a sibling
    // subdomain) and identical copies are ignored.
    for other in [
        bad[0].as_str(),
        bad[4].as_str(),
        bad[6].as_str(),
        good.as_str(),
    ] {
        let r = app.get("/get/k0", Some(&format!("{other}; {good}"))).await;
        assert_eq!(r.body, "\"v0\"", "{other}");
    }
}

/// Layer: changes of a request answered with a server error are neither saved nor created.
pub async fn server_error_responses_are_not_saved(store: Arc<dyn SessionStore>) {
    let app = App::new(store);
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

/// Layer: [`Session::delete_user_sessions`] ends every session of the user and no other.
pub async fn sign_out_everywhere(store: Arc<dyn SessionStore>) {
    let router = Router::standard().route("POST", "/everywhere/{}", |s, p| async move {
        ok(s.delete_user_sessions(&p[0]).await?.to_string())
    });
    let app = App::with(store, builder(), router);
    let user = format!("user-{}", app.clock.now_micros());
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

/// Layer: [`Session::user_sessions`] lists the live sessions of the request's user with
/// opaque handles (no cookie, id or store key in them) and marks the request's own;
/// [`Session::end_user_session`] ends one of them by its handle, the request's own as a
/// logout, and never another user's session.
pub async fn user_sessions_list_and_end_one(store: Arc<dyn SessionStore>) {
    let app = App::with(store, builder(), sessions_router());
    let t0 = app.clock.now_micros();
    let user = format!("user-{t0}");
    let login = |app: &App| {
        let (app, user) = (app.clone(), user.clone());
        async move {
            app.post(&format!("/login/{user}"), None)
                .await
                .cookie()
                .unwrap()
        }
    };
    let phone = login(&app).await;
    app.clock.advance(Duration::from_secs(1));
    let laptop = login(&app).await;
    let stranger = app
        .post(&format!("/login/other-{t0}"), None)
        .await
        .cookie()
        .unwrap();
    // Each line: handle, current, created, last seen, expires.
    let list = |cookie: &str| {
        let (app, cookie) = (app.clone(), cookie.to_owned());
        async move {
            let r = app.get("/sessions", Some(&cookie)).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            r.body
                .lines()
                .map(|l| l.split(' ').map(str::to_owned).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        }
    };
    let seen = list(&phone).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    // Oldest first: the phone (the request's own), then the laptop.
    assert_eq!(seen[0][1], "true");
    assert_eq!(seen[1][1], "false");
    assert_eq!(seen[0][2], t0.to_string());
    assert_eq!(seen[1][2], (t0 + SEC).to_string());
    assert_eq!(
        seen[1][4],
        (t0 + SEC + 600 * SEC).to_string(),
        "idle deadline"
    );
    let (phone_handle, laptop_handle) = (seen[0][0].clone(), seen[1][0].clone());
    // The laptop sees the same sessions under the same handles, itself current.
    let from_laptop = list(&laptop).await;
    assert_eq!(from_laptop[0][0], phone_handle);
    assert_eq!(from_laptop[1][0], laptop_handle);
    assert_eq!(
        (from_laptop[0][1].as_str(), from_laptop[1][1].as_str()),
        ("false", "true")
    );
    // A handle is no cookie, id or store key, and names nothing for another user.
    for cookie in [&phone, &laptop] {
        let value = cookie.split_once('=').unwrap().1;
        let key = app.key_of(cookie);
        for handle in [&phone_handle, &laptop_handle] {
            assert_eq!(handle.len(), 22);
            assert!(!value.contains(handle.as_str()) && !handle.contains(value));
            assert!(!key.as_str().contains(handle.as_str()));
        }
    }
    let theirs = list(&stranger).await;
    assert_eq!(theirs.len(), 1);
    assert!(theirs[0][0] != phone_handle && theirs[0][0] != laptop_handle);
    let r = app
        .post(&format!("/end/{laptop_handle}"), Some(&stranger))
        .await;
    assert_eq!(r.body, "false");
    assert_eq!(app.get("/user", Some(&laptop)).await.body, user);
    for junk in ["nothing", "AAAAAAAAAAAAAAAAAAAAAA", ""] {
        let r = app.post(&format!("/end/{junk}"), Some(&phone)).await;
        assert_eq!(r.body, "false", "{junk:?}");
    }
    // The phone ends the laptop's session: the laptop is signed out, the phone is not.
    let r = app
        .post(&format!("/end/{laptop_handle}"), Some(&phone))
        .await;
    assert_eq!(r.body, "true");
    assert!(!r.removes_cookie());
    assert_eq!(app.get("/user", Some(&laptop)).await.body, "");
    assert_eq!(app.get("/user", Some(&phone)).await.body, user);
    let r = app
        .post(&format!("/end/{laptop_handle}"), Some(&phone))
        .await;
    assert_eq!(r.body, "false", "already ended");
    assert_eq!(list(&phone).await.len(), 1);
    // An expired session is not listed: a second phone idles past its deadline.
    let idle = login(&app).await;
    assert_eq!(list(&phone).await.len(), 2);
    app.clock.advance(Duration::from_secs(400));
    assert_eq!(app.get("/user", Some(&phone)).await.body, user); // refreshed
    app.clock.advance(Duration::from_secs(300));
    let seen = list(&phone).await;
    assert_eq!(seen.len(), 1, "the idle session expired: {seen:?}");
    assert_eq!(seen[0][0], phone_handle);
    assert_eq!(app.get("/user", Some(&idle)).await.body, "");
    // Ending the request's own session is a logout.
    let r = app
        .post(&format!("/end/{phone_handle}"), Some(&phone))
        .await;
    assert_eq!(r.body, "true");
    assert!(r.removes_cookie());
    assert_eq!(app.get("/user", Some(&phone)).await.body, "");
    // Without a session there is nothing to list or end.
    assert_eq!(app.get("/sessions", None).await.body, "");
    assert_eq!(
        app.post(&format!("/end/{phone_handle}"), None).await.body,
        "false"
    );
}

/// The standard routes and:
/// - `GET /sessions` → one line per session: handle, current, created, last seen, expires
/// - `POST /end/{handle}` → whether a session was ended
fn sessions_router() -> Router {
    Router::standard()
        .route("GET", "/sessions", |s, _| async move {
            let lines: Vec<String> = s
                .user_sessions()
                .await?
                .into_iter()
                .map(|i| {
                    format!(
                        "{} {} {} {} {}",
                        i.handle, i.current, i.created_micros, i.last_seen_micros, i.expires_micros
                    )
                })
                .collect();
            ok(lines.join("\n"))
        })
        .route("POST", "/end/{}", |s, p| async move {
            ok(s.end_user_session(&p[0]).await?.to_string())
        })
}

/// Layer: handles stay usable across a key rotation: after the first key changes, the
/// listing shows new handles, and a handle listed under the previous key still ends its
/// session while that key is configured.
pub async fn user_session_handles_across_key_rotation(store: Arc<dyn SessionStore>) {
    let clock = ManualClock::starting_now();
    let old_app = App::with_clock(store.clone(), builder(), sessions_router(), clock.clone());
    let user = format!("rotating-{}", clock.now_micros());
    let phone = old_app
        .post(&format!("/login/{user}"), None)
        .await
        .cookie()
        .unwrap();
    let laptop = old_app
        .post(&format!("/login/{user}"), None)
        .await
        .cookie()
        .unwrap();
    let handles = |app: &App| {
        let (app, phone) = (app.clone(), phone.clone());
        async move {
            let r = app.get("/sessions", Some(&phone)).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            r.body
                .lines()
                .map(|l| l.split(' ').next().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    let before = handles(&old_app).await;
    assert_eq!(before.len(), 2);
    let rotated = App::with_clock(
        store,
        builder_with_keys(&[KEY_B, KEY_A]),
        sessions_router(),
        clock,
    );
    let after = handles(&rotated).await;
    assert_eq!(after.len(), 2);
    assert!(after.iter().all(|h| !before.contains(h)), "new handles");
    // Which of `before` is the laptop's: the one that is not current from the phone.
    let r = old_app.get("/sessions", Some(&phone)).await;
    let laptop_handle = r
        .body
        .lines()
        .find(|l| l.split(' ').nth(1) == Some("false"))
        .and_then(|l| l.split(' ').next())
        .unwrap()
        .to_owned();
    let r = rotated
        .post(&format!("/end/{laptop_handle}"), Some(&phone))
        .await;
    assert_eq!(r.body, "true");
    assert_eq!(rotated.get("/user", Some(&laptop)).await.body, "");
    assert_eq!(rotated.get("/user", Some(&phone)).await.body, user);
}

// ---- The test application: a few routes behind the session layer, on a manual clock. ----

/// What a handler answers: a status and a text body, or a session error.
type Answer = Result<(StatusCode, String), SessionError>;
type HandlerFuture = Pin<Box<dyn Future<Output = Answer> + Send>>;
/// A handler: the request's session and the path's `{}` segments.
type Handler = Arc<dyn Fn(Session, Vec<String>) -> HandlerFuture + Send + Sync>;

fn ok(body: impl Into<String>) -> Answer {
    Ok((StatusCode::OK, body.into()))
}

/// Routes by method and path pattern (`{}` matches one segment).
#[derive(Clone, Default)]
struct Router {
    routes: Vec<(&'static str, &'static str, Handler)>,
}

impl Router {
    fn route<F, Fut>(mut self, method: &'static str, pattern: &'static str, handler: F) -> Self
    where
        F: Fn(Session, Vec<String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Answer> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |s, p| Box::pin(handler(s, p)));
        self.routes.push((method, pattern, handler));
        self
    }

    /// The standard routes:
    /// - `GET /get/{k}` → the value as JSON, or `null`
    /// - `POST /set/{k}/{v}`, `POST /remove/{k}` (→ whether it was there), `POST /clear`
    /// - `GET /count/{n}` → how many of `k0..k{n-1}` exist
    /// - `POST /login/{user}` → cycle id, set the user, insert `user`
    /// - `POST /logout`, `GET /user` → the user id
    /// - `POST /fail/{k}/{v}` → inserts, then answers 500
    /// - `GET /nothing` → does not touch the session
    /// - `POST /cycle` → cycle id only
    /// - `POST /expiry/{idle_secs}` → per-session idle override
    fn standard() -> Self {
        Self::default()
            .route("GET", "/get/{}", |s, p| async move {
                let v: Option<Value> = s.get(&p[0]).await?;
                ok(v.unwrap_or(Value::Null).to_string())
            })
            .route("POST", "/set/{}/{}", |s, p| async move {
                let [k, v] = <[String; 2]>::try_from(p).expect("two segments");
                s.insert(k, v).await?;
                ok("ok")
            })
            .route("POST", "/remove/{}", |s, p| async move {
                ok(s.remove(&p[0]).await?.to_string())
            })
            .route("POST", "/clear", |s, _| async move {
                s.clear().await?;
                ok("ok")
            })
            .route("GET", "/count/{}", |s, p| async move {
                let n: usize = p[0].parse().expect("a count");
                let mut found = 0;
                for i in 0..n {
                    if s.get::<Value>(&format!("k{i}")).await?.is_some() {
                        found += 1;
                    }
                }
                ok(found.to_string())
            })
            .route("POST", "/login/{}", |s, p| async move {
                let user = p[0].clone();
                s.cycle_id().await?;
                s.set_user_id(user.clone()).await?;
                s.insert("user", user).await?;
                ok("ok")
            })
            .route("POST", "/logout", |s, _| async move {
                s.delete().await?;
                ok("ok")
            })
            .route("GET", "/user", |s, _| async move {
                ok(s.user_id().await?.unwrap_or_default())
            })
            .route("POST", "/fail/{}/{}", |s, p| async move {
                let [k, v] = <[String; 2]>::try_from(p).expect("two segments");
                s.insert(k, v).await?;
                Ok((StatusCode::INTERNAL_SERVER_ERROR, "boom".to_owned()))
            })
            .route("GET", "/nothing", |_, _| async { ok("nothing") })
            .route("POST", "/cycle", |s, _| async move {
                s.cycle_id().await?;
                ok("ok")
            })
            .route("POST", "/expiry/{}", |s, p| async move {
                let secs: u64 = p[0].parse().expect("seconds");
                s.set_expiry(Expiry::new().idle_timeout(Duration::from_secs(secs)))
                    .await?;
                ok("ok")
            })
    }

    fn find(&self, method: &str, path: &str) -> Option<(Handler, Vec<String>)> {
        let segments: Vec<&str> = path.split('/').collect();
        self.routes.iter().find_map(|(m, pattern, handler)| {
            let parts: Vec<&str> = pattern.split('/').collect();
            if *m != method || parts.len() != segments.len() {
                return None;
            }
            let mut captures = Vec::new();
            for (part, segment) in parts.iter().zip(&segments) {
                if *part == "{}" {
                    captures.push((*segment).to_owned());
                } else if part != segment {
                    return None;
                }
            }
            Some((handler.clone(), captures))
        })
    }
}

/// The inner service: finds the route, runs its handler, maps a session error to `503`
/// (store) or `500` (data).
#[derive(Clone)]
struct Handlers(Arc<Router>);

impl Service<Request<()>> for Handlers {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<String>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<()>) -> Self::Future {
        let session = req
            .extensions()
            .get::<Session>()
            .cloned()
            .expect("the session layer puts a Session in the extensions");
        let route = self.0.find(req.method().as_str(), req.uri().path());
        Box::pin(async move {
            let (status, body) = match route {
                None => (StatusCode::NOT_FOUND, String::new()),
                Some((handler, captures)) => match handler(session, captures).await {
                    Ok(answer) => answer,
                    Err(e) if e.is_unavailable() => {
                        (StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                    }
                    Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                },
            };
            let mut response = Response::new(body);
            *response.status_mut() = status;
            Ok(response)
        })
    }
}

/// How many calls of each kind an [`InstrumentedStore`] received.
#[derive(Debug, Default)]
pub struct StoreCalls {
    /// `load` calls.
    pub load: AtomicU64,
    /// `create` calls.
    pub create: AtomicU64,
    /// `save` calls.
    pub save: AtomicU64,
    /// `delete` calls.
    pub delete: AtomicU64,
    /// `touch` calls.
    pub touch: AtomicU64,
}

impl StoreCalls {
    fn all(&self) -> [&AtomicU64; 5] {
        [
            &self.load,
            &self.create,
            &self.save,
            &self.delete,
            &self.touch,
        ]
    }

    /// Every call so far (`delete_user_sessions` is not counted).
    pub fn total(&self) -> u64 {
        self.all().iter().map(|c| c.load(Ordering::SeqCst)).sum()
    }

    /// Calls that write: `create`, `save`, `delete`, `touch`.
    pub fn writes(&self) -> u64 {
        self.total() - self.loads()
    }

    /// `load` calls.
    pub fn loads(&self) -> u64 {
        self.load.load(Ordering::SeqCst)
    }

    /// Back to zero.
    pub fn reset(&self) {
        for c in self.all() {
            c.store(0, Ordering::SeqCst);
        }
    }
}

/// Faults an [`InstrumentedStore`] injects on demand: failing `create` or `delete` (as an
/// unavailable store), and holding the next successful `create` until released, so that a
/// test can run a concurrent request in between.
#[derive(Debug, Default)]
pub struct StoreFaults {
    /// While true, `create` fails with an unavailable-store error.
    pub fail_create: AtomicBool,
    /// While true, `delete` fails with an unavailable-store error.
    pub fail_delete: AtomicBool,
    /// `(reached, release)`: taken by the next successful `create`, which notifies `reached`
    /// and waits for `release`.
    hold_after_create: Mutex<Option<(Arc<Notify>, Arc<Notify>)>>,
    created: Mutex<Vec<SessionKey>>,
}

impl StoreFaults {
    /// Arms the hold of the next successful `create`; returns `(reached, release)`: wait
    /// for `reached`, do what must happen in between, then `release.notify_one()`.
    pub fn hold_next_create(&self) -> (Arc<Notify>, Arc<Notify>) {
        let pair = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        *self.hold_after_create.lock().unwrap() = Some(pair.clone());
        pair
    }

    /// The key of the last record created.
    ///
    /// # Panics
    ///
    /// If no record was created yet.
    pub fn last_created(&self) -> SessionKey {
        let created = self.created.lock().unwrap();
        created.last().cloned().expect("a record was created")
    }
}

/// A store that hands every call to another store, counting the calls ([`StoreCalls`]) and
/// injecting faults on demand ([`StoreFaults`]): for tests of a layer or an application on
/// top of any store, e.g. "a request without a cookie costs no store call", or "a store
/// outage during login answers 503".
///
/// ```
/// use std::sync::Arc;
/// use tower_rampart::session::MemoryStore;
/// use tower_rampart::session::store::testing::InstrumentedStore;
///
/// let store = InstrumentedStore::new(Arc::new(MemoryStore::new()));
/// let (calls, faults) = (store.calls().clone(), store.faults().clone());
/// // ... build a SessionLayer on `store`, send requests ...
/// assert_eq!(calls.total(), 0);
/// faults.fail_create.store(true, std::sync::atomic::Ordering::SeqCst);
/// ```
#[derive(Debug, Clone)]
pub struct InstrumentedStore {
    inner: Arc<dyn SessionStore>,
    counts: Arc<StoreCalls>,
    faults: Arc<StoreFaults>,
}

impl InstrumentedStore {
    /// Wraps `inner`, with no call counted and no fault armed.
    pub fn new(inner: Arc<dyn SessionStore>) -> Self {
        Self {
            inner,
            counts: Arc::default(),
            faults: Arc::default(),
        }
    }

    /// The call counts (shared by clones).
    pub fn calls(&self) -> &Arc<StoreCalls> {
        &self.counts
    }

    /// The fault switches (shared by clones).
    pub fn faults(&self) -> &Arc<StoreFaults> {
        &self.faults
    }
}

fn injected() -> StoreError {
    StoreError::unavailable("injected failure")
}

impl SessionStore for InstrumentedStore {
    fn load<'a>(
        &'a self,
        key: &'a SessionKey,
        now: u64,
        refresh: bool,
    ) -> StoreFuture<'a, Option<SessionRecord>> {
        self.counts.load.fetch_add(1, Ordering::SeqCst);
        self.inner.load(key, now, refresh)
    }

    fn create<'a>(
        &'a self,
        key: &'a SessionKey,
        record: &'a SessionRecord,
        now: u64,
    ) -> StoreFuture<'a, bool> {
        self.counts.create.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            if self.faults.fail_create.load(Ordering::SeqCst) {
                return Err(injected());
            }
            let created = self.inner.create(key, record, now).await?;
            if created {
                self.faults.created.lock().unwrap().push(key.clone());
                let hold = self.faults.hold_after_create.lock().unwrap().take();
                if let Some((reached, release)) = hold {
                    reached.notify_one();
                    release.notified().await;
                }
            }
            Ok(created)
        })
    }

    fn save<'a>(
        &'a self,
        key: &'a SessionKey,
        record: &'a SessionRecord,
        now: u64,
    ) -> StoreFuture<'a, WriteOutcome> {
        self.counts.save.fetch_add(1, Ordering::SeqCst);
        self.inner.save(key, record, now)
    }

    fn delete<'a>(
        &'a self,
        key: &'a SessionKey,
        expected_version: Option<u64>,
        now: u64,
    ) -> StoreFuture<'a, WriteOutcome> {
        self.counts.delete.fetch_add(1, Ordering::SeqCst);
        if self.faults.fail_delete.load(Ordering::SeqCst) {
            return Box::pin(async { Err(injected()) });
        }
        self.inner.delete(key, expected_version, now)
    }

    fn touch<'a>(&'a self, key: &'a SessionKey, now: u64) -> StoreFuture<'a, bool> {
        self.counts.touch.fetch_add(1, Ordering::SeqCst);
        self.inner.touch(key, now)
    }

    fn delete_user_sessions<'a>(&'a self, user: &'a str, now: u64) -> StoreFuture<'a, u64> {
        self.inner.delete_user_sessions(user, now)
    }

    fn list_user_sessions<'a>(
        &'a self,
        user: &'a str,
        now: u64,
    ) -> StoreFuture<'a, Vec<UserSession>> {
        self.inner.list_user_sessions(user, now)
    }

    fn delete_user_session<'a>(
        &'a self,
        user: &'a str,
        key: &'a SessionKey,
        now: u64,
    ) -> StoreFuture<'a, bool> {
        self.inner.delete_user_session(user, key, now)
    }
}

/// The response of one test request.
struct Reply {
    status: StatusCode,
    body: String,
    /// Every `Set-Cookie` header.
    set_cookies: Vec<String>,
}

impl Reply {
    /// `name=value` of the session cookie set by this response, if any (not a removal).
    fn cookie(&self) -> Option<String> {
        self.set_cookies.iter().find_map(|c| {
            let pair = c.split(';').next()?.trim();
            let (name, value) = pair.split_once('=')?;
            (name == COOKIE && !value.is_empty()).then(|| pair.to_owned())
        })
    }

    /// Whether this response removes the session cookie.
    fn removes_cookie(&self) -> bool {
        self.set_cookies
            .iter()
            .any(|c| c.starts_with(&format!("{COOKIE}=;")) && c.contains("Max-Age=0"))
    }
}

/// The test config: key A, cookie `sid`, idle 600 s, absolute 3600 s.
fn builder() -> SessionConfigBuilder {
    builder_with_keys(&[KEY_A])
}

/// [`builder`] with other keys (the first signs).
fn builder_with_keys(keys: &[&[u8]]) -> SessionConfigBuilder {
    SessionConfig::builder()
        .keys(keys.iter().copied())
        .cookie_name(COOKIE)
        .idle_timeout(Duration::from_secs(600))
        .absolute_lifetime(Duration::from_secs(3600))
}

/// The routes behind a session layer, with a manual clock and an [`InstrumentedStore`].
#[derive(Clone)]
struct App {
    service: SessionService<Handlers>,
    clock: ManualClock,
    counts: Arc<StoreCalls>,
    faults: Arc<StoreFaults>,
    /// The store under test, without the instrumentation.
    store: Arc<dyn SessionStore>,
    config: SessionConfig,
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
}

impl App {
    fn new(store: Arc<dyn SessionStore>) -> Self {
        Self::with(store, builder(), Router::standard())
    }

    fn with(store: Arc<dyn SessionStore>, config: SessionConfigBuilder, router: Router) -> Self {
        Self::with_clock(store, config, router, ManualClock::starting_now())
    }

    fn with_clock(
        store: Arc<dyn SessionStore>,
        config: SessionConfigBuilder,
        router: Router,
        clock: ManualClock,
    ) -> Self {
        let config = config.clock(clock.clone()).build().expect("valid config");
        let instrumented = InstrumentedStore::new(store.clone());
        let (counts, faults) = (instrumented.calls().clone(), instrumented.faults().clone());
        let service =
            SessionLayer::new(instrumented, config.clone()).layer(Handlers(Arc::new(router)));
        Self {
            service,
            clock,
            counts,
            faults,
            store,
            config,
        }
    }

    async fn call(&self, method: &str, path: &str, cookie: Option<&str>) -> Reply {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, c);
        }
        let req = req.body(()).expect("a valid request");
        let mut service = self.service.clone();
        let Ok(()) = poll_fn(|cx| service.poll_ready(cx)).await;
        let Ok(res) = service.call(req).await;
        let status = res.status();
        let set_cookies = res
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().expect("an ASCII Set-Cookie").to_owned())
            .collect();
        let mut body = Box::pin(res.into_body());
        let mut bytes = Vec::new();
        while let Some(frame) = poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            if let Ok(data) = frame.expect("an in-memory body").into_data() {
                bytes.extend_from_slice(&data);
            }
        }
        Reply {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
            set_cookies,
        }
    }

    async fn get(&self, path: &str, cookie: Option<&str>) -> Reply {
        self.call("GET", path, cookie).await
    }

    async fn post(&self, path: &str, cookie: Option<&str>) -> Reply {
        self.call("POST", path, cookie).await
    }

    /// Creates a session holding `k0 = v0` and returns its cookie (`name=value`).
    async fn new_session(&self) -> String {
        let r = self.post("/set/k0/v0", None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.cookie().expect("a new session sets a cookie")
    }

    /// The store key of the session named by `cookie`.
    fn key_of(&self, cookie: &str) -> SessionKey {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            header::COOKIE,
            cookie.parse().expect("a valid cookie header"),
        );
        self.config
            .cookie_reader()
            .session_key(&headers)
            .expect("a valid cookie")
    }

    /// The live record under `key` in the store (bypassing the layer), at the app's time.
    async fn stored(&self, key: &SessionKey) -> Option<SessionRecord> {
        let now = self.clock.now_micros();
        self.store.load(key, now, false).await.unwrap()
    }
}
