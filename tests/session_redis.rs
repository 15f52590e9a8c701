//! Session layer on a real Redis: round trips counted by the server, TTLs set by the
//! server, what a Redis dump reveals, failure (503 fast, recovery) and what the logs say.
#![cfg(all(feature = "session", feature = "redis"))]

mod session_common;
use rampart_test_support as support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use session_common::*;
use support::RedisServer;
use tower_rampart::redis::driver;
use tower_rampart::session::{RedisStore, SessionStore};

fn store(server: &RedisServer, prefix: &str) -> Arc<dyn SessionStore> {
    let conn = server.config().connect_lazy().unwrap();
    Arc::new(RedisStore::new(conn).with_prefix(prefix))
}

/// Commands that write, run by the scripts.
fn writes(server: &RedisServer) -> u64 {
    let stats = server.command_stats();
    ["hset", "hdel", "del", "pexpire", "zadd"]
        .iter()
        .map(|c| stats.get(*c).map_or(0, |s| s.0))
        .sum()
}

#[tokio::test]
async fn round_trips_counted_by_the_server() {
    let server = RedisServer::start();
    let app = App::new(store(&server, "rt:"));
    // Warm up: load every script once (a cold script cache costs an extra SCRIPT LOAD).
    let warm = app.new_session().await;
    app.post("/set/a/1", Some(&warm)).await;
    // A read with the idle refresh due runs the LOAD script (a plain read does not).
    app.clock.advance(Duration::from_secs(151));
    assert_eq!(app.get("/get/a", Some(&warm)).await.body, "\"1\"");
    app.post("/login/u", Some(&warm)).await;
    let cookie = app.new_session().await;
    app.post("/logout", Some(&warm)).await;

    // Client round trips: every command a client sent (script calls, plain commands such as
    // the read's HMGET, and EVAL / SCRIPT LOAD when the script cache is cold), not those
    // the scripts run.
    let monitor = server.monitor();
    let measure = |label: &str, expected_trips: u64, expected_writes: Option<u64>| {
        let (trips, w) = (monitor.counts(), writes(&server));
        assert_eq!(
            trips.sent_total(),
            expected_trips,
            "{label}: round trips {trips:?}"
        );
        if let Some(ew) = expected_writes {
            assert_eq!(w, ew, "{label}: writes");
        }
        server.reset_stats();
        monitor.reset();
    };
    server.reset_stats();
    monitor.reset();

    app.get("/nothing", None).await;
    app.get("/get/k0", None).await;
    measure("no cookie", 0, Some(0));

    let forged = format!("{COOKIE}={}", "A".repeat(64));
    app.get("/get/k0", Some(&forged)).await;
    measure("forged cookie", 0, Some(0));

    app.get("/nothing", Some(&cookie)).await;
    measure("cookie, session untouched", 0, Some(0));

    assert_eq!(app.get("/count/10", Some(&cookie)).await.body, "1");
    measure("read (refresh not due)", 1, Some(0));

    app.post("/set/k0/v0", Some(&cookie)).await;
    measure("unchanged write", 1, Some(0));

    app.post("/set/k1/v1", Some(&cookie)).await;
    let w = writes(&server);
    measure("write", 2, None);
    assert!(w >= 2, "the save writes the hash and its TTL");

    // Once a quarter of the idle timeout has passed, the read (a plain HMGET) finds the
    // refresh due and runs LOAD, which refreshes: one more round trip, at most once per
    // quarter of the idle timeout.
    app.clock.advance(Duration::from_secs(151));
    app.get("/get/k1", Some(&cookie)).await;
    assert_eq!(
        server.command_count("hset"),
        1,
        "refresh: HSET of the access time"
    );
    assert_eq!(server.command_count("pexpire"), 1, "refresh: new TTL");
    measure("read with idle refresh", 2, None);

    let r = app.post("/set/new/1", None).await;
    assert!(r.cookie().is_some());
    measure("new session", 1, None);

    app.post("/logout", Some(&cookie)).await;
    measure("logout", 1, None);
}

#[tokio::test]
async fn redis_ttl_is_the_earlier_of_idle_and_absolute() {
    let server = RedisServer::start();
    let app = App::new(store(&server, "ttl:")); // idle 600 s, absolute 3600 s
    let cookie = app.new_session().await;
    let redis_key = format!("ttl:{{{}}}", app.key_of(&cookie));
    let pttl = || server.run::<i64>(driver::cmd("PTTL").arg(&redis_key));
    let t = pttl();
    assert!((599_000..=600_000).contains(&t), "idle-bound TTL, got {t}");
    // Used every 500 s: the TTL follows the idle timeout until the absolute deadline is
    // nearer, then the absolute deadline.
    for _ in 0..6 {
        app.clock.advance(Duration::from_secs(500));
        app.post(&format!("/set/t/{}", app.now()), Some(&cookie))
            .await;
    }
    // 3000 s after creation: 600 s left in both senses; one more step leaves 100 s.
    app.clock.advance(Duration::from_secs(500));
    app.post("/set/t/last", Some(&cookie)).await;
    let t = pttl();
    assert!(
        (99_000..=100_000).contains(&t),
        "absolute-bound TTL, got {t}"
    );
}

#[tokio::test]
async fn redis_expires_abandoned_sessions_by_itself() {
    let server = RedisServer::start();
    let app = App::with(
        store(&server, "exp:"),
        builder()
            .idle_timeout(Duration::from_secs(1))
            .absolute_lifetime(Duration::from_secs(60)),
        routes(),
    );
    assert!(app.post("/set/a/1", None).await.cookie().is_some());
    let keys = || server.run::<Vec<String>>(driver::cmd("KEYS").arg("exp:*"));
    assert_eq!(keys().len(), 1);
    // Waiting for the server's own expiry (not for our logic): gone after the idle timeout.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !keys().is_empty() {
        assert!(
            Instant::now() < deadline,
            "Redis did not expire the session"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_redis_dump_reveals_neither_cookies_nor_data() {
    let server = RedisServer::start();
    let app = App::new(store(&server, "dump:"));
    let secret_token = "eyJ-fabric-token-SECRET-0123456789";
    let cookie = app
        .post(&format!("/set/fabric_token/{secret_token}"), None)
        .await
        .cookie()
        .unwrap();
    let r = app.post("/login/user-42", Some(&cookie)).await;
    let cookie = r.cookie().unwrap();
    assert_eq!(
        app.get("/get/fabric_token", Some(&cookie)).await.body,
        format!("\"{secret_token}\"")
    );
    let value = cookie.split_once('=').unwrap().1;
    let (id, id_hex, id_b64) = id_forms(&cookie);

    let mut dump = Vec::new();
    for key in server.run::<Vec<Vec<u8>>>(driver::cmd("KEYS").arg("*")) {
        dump.extend_from_slice(&key);
        let kind: String = server.run(driver::cmd("TYPE").arg(&key));
        if kind == "hash" {
            for field in server.run::<Vec<Vec<u8>>>(driver::cmd("HGETALL").arg(&key)) {
                dump.extend_from_slice(&field);
            }
        } else if kind == "zset" {
            for m in server.run::<Vec<Vec<u8>>>(driver::cmd("ZRANGE").arg(&key).arg(0).arg(-1)) {
                dump.extend_from_slice(&m);
            }
        }
        dump.push(b'\n');
    }
    let contains = |needle: &[u8]| dump.windows(needle.len()).any(|w| w == needle);
    assert!(!dump.is_empty());
    assert!(!contains(value.as_bytes()), "cookie value in Redis");
    assert!(!contains(&id), "raw id in Redis");
    assert!(!contains(id_hex.as_bytes()), "hex id in Redis");
    assert!(!contains(id_b64.as_bytes()), "base64 id in Redis");
    assert!(
        !contains(secret_token.as_bytes()),
        "plaintext token in Redis"
    );
    assert!(!contains(b"SECRET"), "plaintext token in Redis");
    // The session is stored under its hash-derived key.
    assert!(contains(app.key_of(&cookie).as_str().as_bytes()));
}

/// Redis stopped mid-test: the layer answers 503 within its timeout, with the configured
/// body, logs once for the burst; restarted: sessions work again, no restart of the app.
/// Nothing logged on the way contains a cookie value or a session id.
#[tokio::test]
async fn redis_down_answers_503_fast_then_recovers_and_logs_no_secrets() {
    let (logs, _guard) = capture_logs();
    let mut server = RedisServer::start();
    let store_timeout = Duration::from_millis(300);
    let app = App::with(
        store(&server, "down:"),
        builder().store_timeout(store_timeout),
        routes(),
    );
    let cookie = app.new_session().await;
    let login = app
        .post("/login/someone", Some(&cookie))
        .await
        .cookie()
        .unwrap();
    assert_eq!(app.get("/get/k0", Some(&login)).await.body, "\"v0\"");

    server.stop();
    for i in 0..20 {
        let started = Instant::now();
        let r = app.post(&format!("/set/k{i}/x"), Some(&login)).await;
        let took = started.elapsed();
        assert_eq!(r.status, 503, "request {i}: {}", r.body);
        assert_eq!(r.body, r#"{"detail":"Session store unavailable"}"#);
        assert!(
            took < store_timeout + Duration::from_millis(500),
            "request {i} took {took:?}"
        );
        assert!(r.cookie().is_none());
    }
    // A request that does not touch the session is not affected.
    assert_eq!(app.get("/nothing", Some(&login)).await.status, 200);
    let warnings = logs.text().matches("session store call failed").count();
    assert_eq!(warnings, 1, "one warning per burst:\n{}", logs.text());

    server.restart();
    // The data was lost with the server (no persistence): the session is fresh, and works.
    let deadline = Instant::now() + Duration::from_secs(20);
    let fresh = loop {
        let r = app.post("/set/back/1", Some(&login)).await;
        if r.status == 200 {
            break r.cookie().expect("a fresh session");
        }
        assert!(
            Instant::now() < deadline,
            "sessions did not recover: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(app.get("/get/back", Some(&fresh)).await.body, "\"1\"");
    app.post("/logout", Some(&fresh)).await;
    let forged = format!("{COOKIE}={}", &login.split_once('=').unwrap().1[..40]);
    app.get("/get/k0", Some(&forged)).await;

    let text = logs.text();
    assert!(
        text.contains("ignoring the session cookie"),
        "debug events are captured"
    );
    for cookie in [&cookie, &login, &fresh] {
        let value = cookie.split_once('=').unwrap().1;
        let (_, id_hex, id_b64) = id_forms(cookie);
        for secret in [value, &value[..20], &id_hex, &id_b64] {
            assert!(
                !text.contains(secret),
                "a secret leaked into the logs:\n{text}"
            );
        }
    }
}

/// The unavailable response is customisable; a Redis that never existed (connection
/// refused) gives it too.
#[tokio::test]
async fn custom_unavailable_response() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let conn = tower_rampart::redis::RedisConfig::from_parts("127.0.0.1", port)
        .connect_timeout(Duration::from_millis(200))
        .connect_lazy()
        .unwrap();
    let app = App::with(
        Arc::new(RedisStore::new(conn)),
        builder().unavailable_response("text/plain", "try again later"),
        routes(),
    );
    let r = app.post("/set/a/b", None).await;
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (503, "try again later")
    );
    let cookie = format!("{COOKIE}={}", "A".repeat(64));
    // Forged cookie + read: no store call at all, so no failure either.
    assert_eq!(app.get("/get/a", Some(&cookie)).await.status, 200);
}

/// Regression (issue 14, item 5): a sign-in whose user-index write fails must not leave a
/// session that "sign out everywhere" misses. The index key of `alice` is made to hold a
/// string, so every index write fails (`WRONGTYPE`) while she signs in twice: through
/// `cycle_id` (the store creates a record) and by setting the user on the current session
/// (the store saves one). Once the index works again, "sign out everywhere" must leave no
/// session of hers in Redis, whatever the sign-ins answered.
#[tokio::test]
async fn sign_out_everywhere_ends_every_session_whose_index_write_failed() {
    use axum::extract::{Extension, Path};
    use axum::routing::post;
    use tower_rampart::session::Session;

    let server = RedisServer::start();
    let conn = server.config().connect_lazy().unwrap();
    let router = routes()
        .route(
            "/adopt/{user}",
            post(
                |Extension(s): Extension<Session>, Path(user): Path<String>| async move {
                    s.set_user_id(user).await?;
                    Ok::<_, Error>("ok")
                },
            ),
        )
        .route(
            "/everywhere/{user}",
            post(
                |Extension(s): Extension<Session>, Path(user): Path<String>| async move {
                    Ok::<_, Error>(s.delete_user_sessions(&user).await?.to_string())
                },
            ),
        );
    let app = App::with(Arc::new(RedisStore::new(conn)), builder(), router);
    // alice's index under the default prefix (tests/golden/session_plain_record.txt).
    let index = "rampart:session:user:{2e45f5205182f867394a62ed4320ce3e}";
    let sessions_of = |user: &str| -> usize {
        let keys: Vec<String> = server.run(driver::cmd("KEYS").arg("rampart:session:{*"));
        keys.iter()
            .filter(|k| {
                let u: Option<String> = server.run(driver::cmd("HGET").arg(*k).arg("u"));
                u.as_deref() == Some(user)
            })
            .count()
    };

    // The control: with a working index, a sign-in is ended by sign-out everywhere.
    let ok = app.new_session().await;
    assert_eq!(app.post("/login/alice", Some(&ok)).await.status, 200);
    assert_eq!(sessions_of("alice"), 1);
    assert_eq!(app.post("/everywhere/alice", None).await.body, "1");
    assert_eq!(sessions_of("alice"), 0);

    let () = server.run(driver::cmd("SET").arg(index).arg("not a sorted set"));
    let via_cycle = app.new_session().await;
    let r = app.post("/login/alice", Some(&via_cycle)).await;
    assert_eq!(r.status, 503, "{}", r.body);
    let via_save = app.new_session().await;
    let r = app.post("/adopt/alice", Some(&via_save)).await;
    assert_eq!(r.status, 503, "{}", r.body);

    let _: i64 = server.run(driver::cmd("DEL").arg(index));
    let r = app.post("/everywhere/alice", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        sessions_of("alice"),
        0,
        "a session of alice survived sign-out everywhere"
    );
    for cookie in [&via_cycle, &via_save] {
        assert_eq!(app.get("/user", Some(cookie)).await.body, "");
    }
}

// ---------------------------------------------------------------------------------------------
// Integrity at rest of the user id and the timestamps (issue 14, item 4): someone who can write
// to Redis (but holds no secret) must not be able to change whom a session belongs to, nor how
// long it lives. A tampered record is no session, like a record that cannot be decoded.

const TAMPER_PREFIX: &str = "tamper:";

/// An app on `server` (encryption at rest `encrypt`), and the cookie of a session signed in
/// as `alice`.
async fn signed_in_as_alice(server: &RedisServer, encrypt: bool) -> (App, String) {
    let app = App::with(
        store(server, TAMPER_PREFIX),
        builder().encrypt_at_rest(encrypt),
        routes(),
    );
    let anonymous = app.new_session().await;
    let cookie = app
        .post("/login/alice", Some(&anonymous))
        .await
        .cookie()
        .expect("signing in cycles the id");
    assert_eq!(app.get("/user", Some(&cookie)).await.body, "alice");
    (app, cookie)
}

/// The Redis key of the session named by `cookie`.
fn redis_key_of(app: &App, cookie: &str) -> String {
    format!("{TAMPER_PREFIX}{{{}}}", app.key_of(cookie).as_str())
}

/// A numeric field of the session hash.
fn field(server: &RedisServer, key: &str, name: &str) -> u64 {
    let v: String = server.run(driver::cmd("HGET").arg(key).arg(name));
    v.parse().unwrap()
}

/// Writes `value` into the field `name` of the session hash, as an attacker with write access
/// to Redis (and no secret) could.
fn tamper(server: &RedisServer, key: &str, name: &str, value: &str) {
    let _: i64 = server.run(driver::cmd("HSET").arg(key).arg(name).arg(value));
}

/// After tampering: the session is gone (no user, no data), a warning says why without any
/// secret, and a new request that writes starts a fresh session.
async fn assert_rejected(app: &App, cookie: &str, what: &str) {
    let (logs, _guard) = capture_logs();
    let user = app.get("/user", Some(cookie)).await;
    assert_eq!(user.status, 200, "{what}: {}", user.body);
    assert_eq!(
        user.body, "",
        "{what}: the tampered record was served as a session"
    );
    assert_eq!(
        app.get("/get/user", Some(cookie)).await.body,
        "null",
        "{what}: the tampered record's data was served"
    );
    let text = logs.text();
    assert!(
        text.contains("WARN") && text.contains("integrity check"),
        "{what}: no warning:\n{text}"
    );
    let (_, hex, b64) = id_forms(cookie);
    let value = cookie.split_once('=').unwrap().1;
    for secret in [hex.as_str(), b64.as_str(), value, "mallory"] {
        assert!(!text.contains(secret), "{what}: logged {secret:?}:\n{text}");
    }
}

async fn tampered_user_id_is_no_session(encrypt: bool) {
    let server = RedisServer::start();
    let (app, cookie) = signed_in_as_alice(&server, encrypt).await;
    let key = redis_key_of(&app, &cookie);
    tamper(&server, &key, "u", "mallory");
    assert_rejected(&app, &cookie, "u = mallory").await;
}

#[tokio::test]
async fn tampered_user_id_is_no_session_encrypted() {
    tampered_user_id_is_no_session(true).await;
}

#[tokio::test]
async fn tampered_user_id_is_no_session_plain() {
    tampered_user_id_is_no_session(false).await;
}

/// Pushing the creation time (`c`), the absolute deadline (`x`) or the idle timeout (`i`)
/// into the future: the record is refused at once, and never outlives its real deadline.
async fn tampered_timestamp_is_no_session(encrypt: bool, name: &str) {
    const DAY: u64 = 86_400_000_000;
    let server = RedisServer::start();
    let (app, cookie) = signed_in_as_alice(&server, encrypt).await;
    let key = redis_key_of(&app, &cookie);
    let later = field(&server, &key, name) + 30 * DAY;
    tamper(&server, &key, name, &later.to_string());
    match name {
        // Past the real absolute deadline (3600 s), used often enough for the idle timeout
        // (600 s).
        "x" => {
            for _ in 0..9 {
                app.clock.advance(Duration::from_secs(500));
                let _ = app.get("/user", Some(&cookie)).await;
            }
        }
        // Unused for longer than the real idle timeout.
        "i" => app.clock.advance(Duration::from_secs(1200)),
        _ => {}
    }
    assert_rejected(&app, &cookie, &format!("{name} + 30 days")).await;
}

#[tokio::test]
async fn tampered_creation_time_is_no_session_encrypted() {
    tampered_timestamp_is_no_session(true, "c").await;
}

#[tokio::test]
async fn tampered_creation_time_is_no_session_plain() {
    tampered_timestamp_is_no_session(false, "c").await;
}

#[tokio::test]
async fn tampered_absolute_deadline_is_no_session_encrypted() {
    tampered_timestamp_is_no_session(true, "x").await;
}

#[tokio::test]
async fn tampered_absolute_deadline_is_no_session_plain() {
    tampered_timestamp_is_no_session(false, "x").await;
}

#[tokio::test]
async fn tampered_idle_timeout_is_no_session_encrypted() {
    tampered_timestamp_is_no_session(true, "i").await;
}

#[tokio::test]
async fn tampered_idle_timeout_is_no_session_plain() {
    tampered_timestamp_is_no_session(false, "i").await;
}

/// An app on the same store and clock as `app`, requiring bindings.
fn strict_twin(server: &RedisServer, app: &App, encrypt: bool) -> App {
    App::with_clock(
        store(server, TAMPER_PREFIX),
        builder()
            .encrypt_at_rest(encrypt)
            .require_record_binding(true),
        routes(),
        app.clock.clone(),
    )
}

/// Records written before bindings existed (no `b`) still load; once bindings are required
/// they are no session, with a warning; the next save by the layer binds them.
async fn unbound_records_load_unless_bindings_are_required(encrypt: bool) {
    let server = RedisServer::start();
    let (app, cookie) = signed_in_as_alice(&server, encrypt).await;
    let strict = strict_twin(&server, &app, encrypt);
    let key = redis_key_of(&app, &cookie);
    let _: i64 = server.run(driver::cmd("HDEL").arg(&key).arg("b"));
    assert_eq!(app.get("/user", Some(&cookie)).await.body, "alice");
    let (logs, guard) = capture_logs();
    assert_eq!(strict.get("/user", Some(&cookie)).await.body, "");
    drop(guard);
    assert!(
        logs.text()
            .contains("no binding of its user id and timestamps"),
        "{}",
        logs.text()
    );
    assert_eq!(app.post("/set/k1/v1", Some(&cookie)).await.status, 200);
    assert_eq!(strict.get("/user", Some(&cookie)).await.body, "alice");
}

#[tokio::test]
async fn unbound_records_load_unless_bindings_are_required_encrypted() {
    unbound_records_load_unless_bindings_are_required(true).await;
}

#[tokio::test]
async fn unbound_records_load_unless_bindings_are_required_plain() {
    unbound_records_load_unless_bindings_are_required(false).await;
}

/// The price of reading records written before bindings existed, pinned so that it stays
/// documented: until bindings are required, a Redis writer who removes the binding (or
/// makes it name another version, as an earlier version's save leaves it) can change the
/// user id; with bindings required, that is no session.
#[tokio::test]
async fn without_required_bindings_a_removed_binding_is_a_downgrade() {
    for encrypt in [true, false] {
        let server = RedisServer::start();
        let (app, cookie) = signed_in_as_alice(&server, encrypt).await;
        let strict = strict_twin(&server, &app, encrypt);
        let key = redis_key_of(&app, &cookie);
        let _: i64 = server.run(driver::cmd("HDEL").arg(&key).arg("b"));
        tamper(&server, &key, "u", "mallory");
        assert_eq!(app.get("/user", Some(&cookie)).await.body, "mallory");
        assert_eq!(strict.get("/user", Some(&cookie)).await.body, "");
    }
}
