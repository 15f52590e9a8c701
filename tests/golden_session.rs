//! The stored format of sessions in Redis, pinned by checked-in files (tests/golden/):
//!
//! - a plaintext record written by `RedisStore` through the layer on a fixed clock: every
//!   hash field and value, the TTLs and the user index, against
//!   `session_plain_record.txt`;
//! - an encrypted record of the format before bindings (its nonce is random, so it cannot
//!   be rewritten identically), written once and checked in with its secret key and cookie
//!   in `session_encrypted_record.txt`: the current code must read it back (and refuse it
//!   when bindings are required);
//! - an encrypted record with a binding (`b`), checked in the same way in
//!   `session_bound_record.txt`: read back, refused once its user id or a timestamp is
//!   changed; and read by the scripts of the versions before bindings (copied unchanged in
//!   `session_scripts_unbound/`) as they read any record, whose saves leave a binding the
//!   current code ignores (by default) or refuses (when bindings are required);
//! - the session cookie carrying a user tag, and the rate limiter's keys derived from it,
//!   against `session_user_tag_cookie.txt`: read back, and written again byte for byte.
//!
//! The files are only read here, never written: a deliberate format change edits them by
//! hand and says so in the CHANGELOG.
#![cfg(all(feature = "session", feature = "redis"))]

mod session_common;
use rampart_test_support as support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use session_common::*;
use support::RedisServer;
use tower_rampart::clock::ManualClock;
use tower_rampart::redis::driver::{self, Value};
use tower_rampart::session::RedisStore;

const PLAIN: &str = include_str!("golden/session_plain_record.txt");
const ENCRYPTED: &str = include_str!("golden/session_encrypted_record.txt");
const USER_TAG: &str = include_str!("golden/session_user_tag_cookie.txt");
const BOUND: &str = include_str!("golden/session_bound_record.txt");
/// The LOAD and SAVE scripts of the versions before bindings, byte for byte (what instances
/// of those versions run during a rolling deploy).
const UNBOUND_LOAD: &str = include_str!("golden/session_scripts_unbound/load.lua");
const UNBOUND_SAVE: &str = include_str!("golden/session_scripts_unbound/save.lua");

/// The clock the golden traces start at: 2023-11-14T22:13:20Z, in microseconds.
const T0: u64 = 1_700_000_000_000_000;
/// Each test finishes well within this.
const DEADLINE: Duration = Duration::from_secs(60);
/// Real time the test may take between a write and the TTL check, in milliseconds.
const TTL_SLACK_MS: i64 = 10_000;

/// The `name: value` lines of a golden file (comments and blank lines skipped).
fn entries(text: &str) -> Vec<(&str, &str)> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            l.split_once(": ")
                .unwrap_or_else(|| panic!("bad line {l:?}"))
        })
        .collect()
}

/// The single value of `name` in a golden file.
fn entry<'a>(text: &'a str, name: &str) -> &'a str {
    let found: Vec<&str> = entries(text)
        .into_iter()
        .filter(|(n, _)| *n == name)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(found.len(), 1, "one {name:?} in the golden file");
    found[0]
}

/// The `field X` (text) and `field-hex X` (hex) lines of a golden file, decoded.
fn fields(text: &str) -> BTreeMap<String, Vec<u8>> {
    entries(text)
        .into_iter()
        .filter_map(|(name, value)| {
            if let Some(field) = name.strip_prefix("field ") {
                Some((field.to_owned(), value.as_bytes().to_vec()))
            } else {
                name.strip_prefix("field-hex ")
                    .map(|field| (field.to_owned(), unhex(value)))
            }
        })
        .collect()
}

fn unhex(text: &str) -> Vec<u8> {
    assert_eq!(text.len() % 2, 0, "hex of whole bytes");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

fn hash(server: &RedisServer, key: &str) -> BTreeMap<String, Vec<u8>> {
    let fields: Vec<(String, Vec<u8>)> = server.run(driver::cmd("HGETALL").arg(key));
    fields.into_iter().collect()
}

/// `ttl` (from Redis) is the golden one, counted down by at most the slack.
fn assert_ttl(what: &str, ttl: i64, golden: &str) {
    let golden: i64 = golden.parse().expect("a TTL in milliseconds");
    assert!(
        ttl <= golden && ttl > golden - TTL_SLACK_MS,
        "{what}: TTL {ttl} ms, golden {golden} ms"
    );
}

#[tokio::test]
async fn plaintext_record_matches_the_golden_fields() {
    tokio::time::timeout(DEADLINE, plaintext_record())
        .await
        .expect("deadline");
}

async fn plaintext_record() {
    let server = RedisServer::start();
    let store = Arc::new(RedisStore::new(server.config().connect_lazy().unwrap()));
    let clock = ManualClock::new(T0);
    let app = App::with_clock(
        store,
        builder().encrypt_at_rest(false),
        routes(),
        clock.clone(),
    );
    // The trace of the golden file.
    let first = app
        .post("/set/greeting/hello", None)
        .await
        .cookie()
        .unwrap();
    clock.advance(Duration::from_secs(10));
    assert_eq!(app.post("/set/n/2", Some(&first)).await.status, 200);
    clock.advance(Duration::from_secs(10));
    let cookie = app
        .post("/login/alice", Some(&first))
        .await
        .cookie()
        .unwrap();
    clock.advance(Duration::from_secs(10));
    assert_eq!(app.post("/set/n/3", Some(&cookie)).await.status, 200);

    // Exactly two keys: the session (name by shape) and the user's index (name exact).
    let session_key = format!("rampart:session:{{{}}}", app.key_of(&cookie));
    let index_key = entry(PLAIN, "index-key");
    let mut keys: Vec<String> = server.run(driver::cmd("KEYS").arg("*"));
    keys.sort();
    let mut expected = vec![session_key.clone(), index_key.to_owned()];
    expected.sort();
    assert_eq!(keys, expected);
    let hex = session_key
        .strip_prefix("rampart:session:{")
        .and_then(|k| k.strip_suffix('}'))
        .expect("rampart:session:{...}");
    assert!(
        hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "{session_key}"
    );

    // Every field and value; the binding by shape (it covers the random key).
    let mut stored = hash(&server, &session_key);
    let binding = String::from_utf8(stored.remove("b").expect("a binding")).unwrap();
    let tag = binding
        .strip_prefix(entry(PLAIN, "binding-prefix"))
        .unwrap_or_else(|| panic!("binding {binding:?}"));
    assert!(
        tag.len() == 43
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "binding {binding:?}"
    );
    assert_eq!(stored, fields(PLAIN));
    let ttl: i64 = server.run(driver::cmd("PTTL").arg(&session_key));
    assert_ttl("session", ttl, entry(PLAIN, "ttl-ms"));

    // The index: this session, scored by its absolute deadline.
    let members: Vec<(String, u64)> = server.run(
        driver::cmd("ZRANGE")
            .arg(index_key)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES"),
    );
    let score: u64 = entry(PLAIN, "index-score").parse().unwrap();
    assert_eq!(members, vec![(hex.to_owned(), score)]);
    let ttl: i64 = server.run(driver::cmd("PTTL").arg(index_key));
    assert_ttl("user index", ttl, entry(PLAIN, "index-ttl-ms"));
}

#[tokio::test]
async fn encrypted_golden_record_is_read_back() {
    tokio::time::timeout(DEADLINE, encrypted_record())
        .await
        .expect("deadline");
}

async fn encrypted_record() {
    let server = RedisServer::start();
    let redis_key = entry(ENCRYPTED, "redis-key");
    let mut hset = driver::cmd("HSET");
    hset.arg(redis_key);
    for (field, value) in fields(ENCRYPTED) {
        hset.arg(field).arg(value);
    }
    let _: i64 = server.run(&hset);

    let store = Arc::new(RedisStore::new(server.config().connect_lazy().unwrap()));
    let secret = entry(ENCRYPTED, "secret");
    // Within the record's lifetime: 10 s after its last save.
    let clock = ManualClock::new(T0 + 20_000_000);
    let app = App::with_clock(
        store,
        builder_with_keys(&[secret.as_bytes()]),
        routes(),
        clock,
    );
    assert!(app.config.encrypts_at_rest());
    let cookie = entry(ENCRYPTED, "cookie");
    // The cookie still verifies and names the stored record (same id hash, same key name).
    assert_eq!(
        format!("rampart:session:{{{}}}", app.key_of(cookie)),
        redis_key
    );
    let values: Vec<(&str, &str)> = entries(ENCRYPTED)
        .into_iter()
        .filter_map(|(n, v)| n.strip_prefix("value ").map(|n| (n, v)))
        .collect();
    assert_eq!(values.len(), 2);
    for (name, json) in values {
        let r = app.get(&format!("/get/{name}"), Some(cookie)).await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, json), "{name}");
    }
    // The values came from decrypting these exact bytes: one flipped bit of the sealed data
    // and the record is unreadable (a fresh, empty session).
    let mut data = fields(ENCRYPTED).remove("d").expect("field d");
    *data.last_mut().unwrap() ^= 1;
    let _: i64 = server.run(driver::cmd("HSET").arg(redis_key).arg("d").arg(data));
    let r = app.get("/get/greeting", Some(cookie)).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "null"));

    // Without a binding, it is no session once bindings are required.
    load_golden(&server, ENCRYPTED);
    let strict = App::with_clock(
        Arc::new(RedisStore::new(server.config().connect_lazy().unwrap())),
        builder_with_keys(&[secret.as_bytes()]).require_record_binding(true),
        routes(),
        ManualClock::new(T0 + 20_000_000),
    );
    let r = strict.get("/get/greeting", Some(cookie)).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "null"));
}

/// Writes the fields of a golden record into Redis, raw, replacing whatever was there.
fn load_golden(server: &RedisServer, golden: &str) {
    let redis_key = entry(golden, "redis-key");
    let _: i64 = server.run(driver::cmd("DEL").arg(redis_key));
    let mut hset = driver::cmd("HSET");
    hset.arg(redis_key);
    for (field, value) in fields(golden) {
        hset.arg(field).arg(value);
    }
    let _: i64 = server.run(&hset);
}

/// An app reading the bound golden record, bindings required or not, at +30 s.
fn bound_app(server: &RedisServer, require: bool) -> App {
    App::with_clock(
        Arc::new(RedisStore::new(server.config().connect_lazy().unwrap())),
        builder_with_keys(&[entry(BOUND, "secret").as_bytes()]).require_record_binding(require),
        routes(),
        ManualClock::new(T0 + 30_000_000),
    )
}

/// `(user, every value)` of the session named by the bound golden cookie, as `app` sees it:
/// `("", nulls)` when it is no session.
async fn bound_session(app: &App) -> (String, Vec<String>) {
    let cookie = entry(BOUND, "cookie");
    let user = app.get("/user", Some(cookie)).await;
    assert_eq!(user.status, 200, "{}", user.body);
    let mut values = Vec::new();
    for (name, _) in entries(BOUND)
        .into_iter()
        .filter_map(|(n, v)| n.strip_prefix("value ").map(|n| (n, v)))
    {
        values.push(app.get(&format!("/get/{name}"), Some(cookie)).await.body);
    }
    (user.body, values)
}

#[tokio::test]
async fn bound_golden_record_is_read_back_and_refused_once_tampered() {
    tokio::time::timeout(DEADLINE, bound_record())
        .await
        .expect("deadline");
}

async fn bound_record() {
    let server = RedisServer::start();
    let redis_key = entry(BOUND, "redis-key");
    let golden_values: Vec<String> = entries(BOUND)
        .into_iter()
        .filter(|(n, _)| n.starts_with("value "))
        .map(|(_, v)| v.to_owned())
        .collect();
    assert_eq!(golden_values.len(), 3);
    let intact = ("alice".to_owned(), golden_values);
    let gone = (String::new(), vec!["null".to_owned(); 3]);
    for require in [false, true] {
        let app = bound_app(&server, require);
        assert_eq!(
            format!("rampart:session:{{{}}}", app.key_of(entry(BOUND, "cookie"))),
            redis_key
        );
        load_golden(&server, BOUND);
        assert_eq!(bound_session(&app).await, intact, "require {require}");
        // Each bound field changed (a day later, another user, another version): no session.
        // The last access `a` is not bound (the scripts refresh it): a change is accepted.
        for (field, value, accepted) in [
            ("u", "mallory", false),
            ("c", "1700086400000000", false),
            ("x", "1700090000000000", false),
            ("i", "86400000000", false),
            (
                "b",
                "1.2.x5A4HHh0nMDKSW1vDt3s5723wvRuyeyc_pQhES0b3VV",
                false,
            ),
            ("a", "1700000025000000", true),
        ] {
            load_golden(&server, BOUND);
            let _: i64 = server.run(driver::cmd("HSET").arg(redis_key).arg(field).arg(value));
            let expected = if accepted { &intact } else { &gone };
            assert_eq!(
                &bound_session(&app).await,
                expected,
                "{field} = {value}, require {require}"
            );
        }
    }
}

#[tokio::test]
async fn scripts_before_bindings_read_bound_records() {
    tokio::time::timeout(DEADLINE, unbound_scripts())
        .await
        .expect("deadline");
}

/// A rolling deploy, both ways: the scripts of the versions before bindings read a bound
/// record's fields as they read any record (they ask for `v c a i x u d` by name); an
/// earlier version's save leaves the binding of the previous version, which the current
/// code then ignores (by default) or refuses (bindings required) until it saves the record
/// itself.
async fn unbound_scripts() {
    let server = RedisServer::start();
    let redis_key = entry(BOUND, "redis-key");
    load_golden(&server, BOUND);
    let golden = fields(BOUND);
    let now = T0 + 30_000_000;

    // An earlier version's LOAD: the fields it parses, as stored.
    let reply: Vec<Option<Vec<u8>>> = server.run(
        driver::cmd("EVAL")
            .arg(UNBOUND_LOAD)
            .arg(1)
            .arg(redis_key)
            .arg(now)
            .arg("0"),
    );
    let expected: Vec<Option<Vec<u8>>> = ["v", "c", "a", "i", "x", "u", "d"]
        .iter()
        .map(|f| golden.get(*f).cloned())
        .collect();
    assert_eq!(reply, expected);

    // An earlier version's SAVE gives the session to bob (data unchanged, index written).
    let text = |f: &str| String::from_utf8(golden[f].clone()).unwrap();
    let reply: Vec<Value> = server.run(
        driver::cmd("EVAL")
            .arg(UNBOUND_SAVE)
            .arg(1)
            .arg(redis_key)
            .arg(now)
            .arg(2)
            .arg(text("c"))
            .arg(now)
            .arg(text("i"))
            .arg(text("x"))
            .arg("1")
            .arg("bob")
            .arg(golden["d"].as_slice())
            .arg(600_000)
            .arg("1"),
    );
    assert_eq!(reply.first(), Some(&Value::Int(2)), "{reply:?}");
    let stored = hash(&server, redis_key);
    assert_eq!(stored["v"], b"3");
    assert_eq!(
        stored["b"], golden["b"],
        "the earlier version leaves b as it was"
    );

    // The current code: bob's session by default (the binding is of version 2, not 3: an
    // earlier version wrote since); no session when bindings are required.
    let (lenient, strict) = (bound_app(&server, false), bound_app(&server, true));
    let (user, values) = bound_session(&lenient).await;
    assert_eq!(user, "bob");
    assert_eq!(values[0], "\"hello\"");
    assert_eq!(bound_session(&strict).await.0, "");
    // A save by the current code binds it again: accepted either way.
    let cookie = entry(BOUND, "cookie");
    assert_eq!(lenient.post("/set/n/3", Some(cookie)).await.status, 200);
    let b = String::from_utf8(hash(&server, redis_key)["b"].clone()).unwrap();
    assert!(b.starts_with("1.4."), "{b}");
    assert_eq!(bound_session(&strict).await.0, "bob");
}

#[tokio::test]
async fn user_tag_cookie_matches_the_golden_values() {
    tokio::time::timeout(DEADLINE, user_tag_cookie())
        .await
        .expect("deadline");
}

async fn user_tag_cookie() {
    use axum::Router;
    use axum::extract::{Extension, Path};
    use axum::routing::{get, post};
    use tower_rampart::rate_limit::{Key, KeyExtractor, LimitKey};
    use tower_rampart::session::Session;

    let server = RedisServer::start();
    let redis_key = entry(USER_TAG, "redis-key");
    let mut hset = driver::cmd("HSET");
    hset.arg(redis_key);
    for (field, value) in fields(USER_TAG) {
        hset.arg(field).arg(value);
    }
    let _: i64 = server.run(&hset);

    let router = Router::new()
        .route(
            "/user",
            get(|Extension(s): Extension<Session>| async move {
                Ok::<_, Error>(s.user_id().await?.unwrap_or_default())
            }),
        )
        .route(
            "/clear-user",
            post(|Extension(s): Extension<Session>| async move {
                s.clear_user_id().await?;
                Ok::<_, Error>("ok")
            }),
        )
        .route(
            "/set-user/{user}",
            post(
                |Extension(s): Extension<Session>, Path(user): Path<String>| async move {
                    s.set_user_id(user).await?;
                    Ok::<_, Error>("ok")
                },
            ),
        );
    let store = Arc::new(RedisStore::new(server.config().connect_lazy().unwrap()));
    let secret = entry(USER_TAG, "secret");
    let clock = ManualClock::new(T0 + 10_000_000);
    let app = App::with_clock(
        store,
        builder_with_keys(&[secret.as_bytes()])
            .encrypt_at_rest(false)
            .user_tag(true),
        router,
        clock,
    );
    let tagged = entry(USER_TAG, "tagged-cookie");
    let untagged = entry(USER_TAG, "untagged-cookie");

    // Both forms verify and name the stored record.
    for cookie in [tagged, untagged] {
        assert_eq!(
            format!("rampart:session:{{{}}}", app.key_of(cookie)),
            redis_key
        );
        let r = app.get("/user", Some(cookie)).await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "alice"));
    }

    // The rate limiter's keys: the user's for the tagged cookie only, the session's for both.
    let request = |cookie: &str| {
        http::Request::builder()
            .header("cookie", cookie)
            .body(())
            .unwrap()
    };
    let reader = app.config.cookie_reader();
    let user_key = LimitKey::new(entry(USER_TAG, "user-limit-key"));
    let session_key = LimitKey::new(entry(USER_TAG, "session-limit-key"));
    let user = Key::user(reader.clone());
    let either = Key::user_or_session(reader.clone());
    let session = Key::session(reader);
    assert_eq!(user.extract(&request(tagged)), Some(user_key.clone()));
    assert_eq!(user.extract(&request(untagged)), None);
    assert_eq!(either.extract(&request(tagged)), Some(user_key));
    assert_eq!(
        either.extract(&request(untagged)),
        Some(session_key.clone())
    );
    assert_eq!(session.extract(&request(tagged)), Some(session_key.clone()));
    assert_eq!(session.extract(&request(untagged)), Some(session_key));

    // The writer: clearing the user sends the untagged cookie, setting it again the tagged
    // one, byte for byte.
    let r = app.post("/clear-user", Some(tagged)).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert_eq!(r.cookie().as_deref(), Some(untagged));
    let r = app.post("/set-user/alice", Some(untagged)).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert_eq!(r.cookie().as_deref(), Some(tagged));
}
