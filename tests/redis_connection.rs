//! `RedisConnection` against real `redis-server` processes: plain, password, TLS, failures,
//! outage and recovery, script loading.
#![cfg(feature = "redis")]

mod common;
use rampart_test_support as support;

use std::time::{Duration, Instant};

use common::Capture;
use support::RedisServer;
use tower_rampart::redis::driver::{self, Script};
use tower_rampart::redis::{RedisConfig, RedisConnection, RedisErrorKind, RedisHealth};

const PASSWORD: &str = "s3cr3t-Pa55word";
/// Slack for scheduling on a loaded CI machine.
const MARGIN: Duration = Duration::from_millis(700);

async fn set_get_roundtrip(conn: &RedisConnection, key: &str) {
    let () = conn
        .query(driver::cmd("SET").arg(key).arg("value"))
        .await
        .expect("SET");
    let got: Option<String> = conn.query(driver::cmd("GET").arg(key)).await.expect("GET");
    assert_eq!(got.as_deref(), Some("value"));
}

/// Polls `conn` until a GET succeeds; panics after `within`.
async fn wait_until_usable(conn: &RedisConnection, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        match conn
            .query::<Option<String>>(driver::cmd("GET").arg("k"))
            .await
        {
            Ok(_) => return started.elapsed(),
            Err(e) => {
                assert!(
                    started.elapsed() < within,
                    "Redis not usable again after {within:?}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A connection to `server` with both the connect and the command timeout set to `timeout`.
async fn connect_with_timeouts(server: &RedisServer, timeout: Duration) -> RedisConnection {
    server
        .config()
        .connect_timeout(timeout)
        .command_timeout(timeout)
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn plain_server_commands_pipeline_and_health() {
    let server = RedisServer::start();
    let conn = server.config().connect().await.expect("connect");
    set_get_roundtrip(&conn, "plain").await;

    let mut pipe = driver::pipe();
    pipe.atomic()
        .cmd("INCR")
        .arg("n")
        .cmd("INCRBY")
        .arg("n")
        .arg(10);
    let (a, b): (i64, i64) = conn.query_pipeline(&pipe).await.expect("pipeline");
    assert_eq!((a, b), (1, 11));

    match conn.health_check().await {
        RedisHealth::Connected { latency } => assert!(latency < Duration::from_secs(1)),
        other => panic!("expected Connected, got {other:?}"),
    }
    assert!(conn.is_available());
}

#[tokio::test]
async fn server_errors_are_command_errors_and_do_not_open_the_breaker() {
    let server = RedisServer::start();
    let conn = server.config().connect_lazy().unwrap();
    let () = conn
        .query(driver::cmd("SET").arg("s").arg("x"))
        .await
        .unwrap();
    for _ in 0..5 {
        let err = conn
            .query::<i64>(driver::cmd("LPUSH").arg("s").arg("y"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), RedisErrorKind::Command, "{err}");
        assert_eq!(err.server_code(), Some("WRONGTYPE"));
    }
    // A reply of the wrong type for the caller is a protocol error, not an outage.
    let err = conn
        .query::<i64>(driver::cmd("GET").arg("s"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), RedisErrorKind::Protocol, "{err}");
    assert!(conn.is_available());
}

#[tokio::test]
async fn password_server_from_config_and_from_url() {
    let server = RedisServer::start_with_password(PASSWORD);
    let conn = server.config().connect().await.expect("connect");
    set_get_roundtrip(&conn, "pw").await;

    let from_url = RedisConfig::from_url(&server.url()).unwrap();
    assert!(!from_url.to_string().contains(PASSWORD));
    let conn = from_url.connect().await.expect("connect from url");
    set_get_roundtrip(&conn, "pw2").await;
}

#[tokio::test]
async fn wrong_password_is_an_auth_error_without_the_password() {
    let server = RedisServer::start_with_password(PASSWORD);
    let wrong = "Wr0ng-Passw0rd-xyz";
    let config = server.config().password(wrong);
    let started = Instant::now();
    let err = config.connect().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2) + MARGIN);
    assert_eq!(err.kind(), RedisErrorKind::Auth, "{err}");
    assert!(err.is_unavailable());
    for shown in [
        err.to_string(),
        format!("{err:?}"),
        format!("{config:?}"),
        config.to_string(),
    ] {
        assert!(!shown.contains(wrong), "{shown}");
        assert!(!shown.contains(PASSWORD), "{shown}");
    }

    // No password at all against a protected server: also Auth, on a lazy connection.
    let conn = RedisConfig::from_parts("127.0.0.1", server.port())
        .connect_lazy()
        .unwrap();
    let err = conn
        .query::<Option<String>>(driver::cmd("GET").arg("k"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), RedisErrorKind::Auth, "{err}");

    match conn.health_check().await {
        RedisHealth::Disconnected { reason } => {
            assert!(!reason.contains(PASSWORD), "{reason}");
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
}

#[tokio::test]
async fn tls_server_with_generated_ca() {
    let server = RedisServer::start_tls();
    let config = server.config();
    assert!(config.is_tls());
    assert!(server.url().starts_with("rediss://"));
    let conn = config.connect().await.expect("TLS connect");
    set_get_roundtrip(&conn, "tls").await;
    assert!(conn.health_check().await.is_connected());

    // The same server is not trusted without its CA (system trust store only).
    let untrusted = RedisConfig::from_parts("127.0.0.1", server.port())
        .tls(true)
        .connect_timeout(Duration::from_secs(2));
    let started = Instant::now();
    let err = untrusted.connect().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2) + MARGIN);
    assert_eq!(err.kind(), RedisErrorKind::Unavailable, "{err}");

    // Plain TCP to a TLS port does not hang either.
    let plain = RedisConfig::from_parts("127.0.0.1", server.port())
        .connect_timeout(Duration::from_millis(500))
        .command_timeout(Duration::from_millis(500));
    let started = Instant::now();
    assert!(plain.connect().await.is_err());
    assert!(started.elapsed() < Duration::from_secs(1) + MARGIN);
}

#[tokio::test]
async fn tls_with_password() {
    let server = RedisServer::start_tls_with_password(PASSWORD);
    let conn = server.config().connect().await.expect("TLS + password");
    set_get_roundtrip(&conn, "tlspw").await;
    // The harness's own blocking connection works over TLS with a password too.
    assert_eq!(server.command_count("set"), 1);
}

#[tokio::test]
async fn invalid_ca_pem_is_a_config_error() {
    let err = RedisConfig::from_parts("127.0.0.1", 1)
        .tls(true)
        .ca_certificate_pem(b"not a certificate".to_vec())
        .connect_lazy()
        .unwrap_err();
    assert_eq!(err.kind(), RedisErrorKind::Config, "{err}");
}

#[tokio::test]
async fn connect_lazy_does_not_touch_the_network() {
    let port = support::free_port();
    let conn = RedisConfig::from_parts("127.0.0.1", port)
        .connect_lazy()
        .expect("lazy");
    assert!(conn.is_available());
    let err = conn
        .query::<Option<String>>(driver::cmd("GET").arg("k"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), RedisErrorKind::Unavailable, "{err}");
}

#[tokio::test]
async fn refused_connection_fails_fast() {
    let port = support::free_port();
    let config = RedisConfig::from_parts("127.0.0.1", port).connect_timeout(Duration::from_secs(1));
    let started = Instant::now();
    let err = config.connect().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1) + MARGIN);
    assert_eq!(err.kind(), RedisErrorKind::Unavailable, "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_fails_within_the_timeouts() {
    // A loopback listener that accepts connections and then says nothing: the handshake
    // (and any command) must give up on its own. Tests send traffic only to loopback.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            keep.lock().unwrap().push(stream);
        }
    });
    let connect_timeout = Duration::from_millis(400);
    let command_timeout = Duration::from_millis(300);
    let bound = connect_timeout + command_timeout + MARGIN;
    let config = RedisConfig::from_parts("127.0.0.1", port)
        .connect_timeout(connect_timeout)
        .command_timeout(command_timeout);
    let started = Instant::now();
    let err = config.connect().await.unwrap_err();
    assert!(started.elapsed() < bound, "took {:?}", started.elapsed());
    assert!(
        matches!(
            err.kind(),
            RedisErrorKind::Timeout | RedisErrorKind::Unavailable
        ),
        "{err}"
    );

    // The same through a lazy connection's first call.
    let conn = config.connect_lazy().unwrap();
    let started = Instant::now();
    assert!(conn.query::<()>(&driver::cmd("PING")).await.is_err());
    assert!(started.elapsed() < bound, "took {:?}", started.elapsed());
    assert!(
        !held.lock().unwrap().is_empty(),
        "the client did reach the listener"
    );
}

#[tokio::test]
async fn slow_command_times_out() {
    let server = RedisServer::start();
    let timeout = Duration::from_millis(200);
    let conn = server
        .config()
        .command_timeout(timeout)
        .connect()
        .await
        .unwrap();
    let started = Instant::now();
    // Blocks server-side for 1 s, far beyond the command timeout.
    let err = conn
        .query::<Option<Vec<String>>>(driver::cmd("BLPOP").arg("nothing").arg(1))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < timeout + MARGIN,
        "{:?}",
        started.elapsed()
    );
    assert_eq!(err.kind(), RedisErrorKind::Timeout, "{err}");
    // One timeout neither opens the breaker nor breaks the connection for good.
    assert!(conn.is_available());
    wait_until_usable(&conn, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_calls_share_one_connection() {
    let server = RedisServer::start();
    let connections = || -> u64 {
        let info: String = server.run(driver::cmd("INFO").arg("stats"));
        info.lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("total_connections_received")
    };
    let before = connections();
    let conn = server.config().connect_lazy().unwrap();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let conn = conn.clone();
            tokio::spawn(async move {
                conn.query::<i64>(driver::cmd("INCR").arg(format!("c{}", i % 4)))
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().expect("INCR");
    }
    // One connection for the 64 callers, plus the one `connections()` itself opens.
    assert_eq!(connections() - before, 2);
}

#[tokio::test]
async fn outage_fails_fast_opens_breaker_and_recovers_after_restart() {
    let mut server = RedisServer::start_with_password(PASSWORD);
    let timeout = Duration::from_millis(300);
    let conn = connect_with_timeouts(&server, timeout).await;
    set_get_roundtrip(&conn, "before").await;

    server.stop();

    // Each call fails within its timeouts; after a few the breaker opens.
    let mut calls = 0;
    while conn.is_available() {
        calls += 1;
        assert!(calls <= 5, "breaker did not open after {calls} failures");
        let started = Instant::now();
        let err = conn
            .query::<Option<String>>(driver::cmd("GET").arg("k"))
            .await
            .unwrap_err();
        assert!(started.elapsed() < 2 * timeout + MARGIN);
        assert!(
            matches!(
                err.kind(),
                RedisErrorKind::Unavailable | RedisErrorKind::Timeout
            ),
            "{err}"
        );
        assert!(!format!("{err} {err:?}").contains(PASSWORD));
    }

    // Open: calls fail immediately without touching the network.
    for _ in 0..100 {
        let started = Instant::now();
        let err = conn
            .query::<Option<String>>(driver::cmd("GET").arg("k"))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_millis(50));
        assert_eq!(err.kind(), RedisErrorKind::Unavailable);
        assert!(err.to_string().contains("circuit breaker"), "{err}");
    }
    match conn.health_check().await {
        RedisHealth::Disconnected { reason } => assert!(!reason.contains(PASSWORD)),
        other => panic!("expected Disconnected, got {other:?}"),
    }

    server.restart();
    let took = wait_until_usable(&conn, Duration::from_secs(10)).await;
    assert!(took < Duration::from_secs(7), "recovery took {took:?}");
    assert!(conn.is_available());
    set_get_roundtrip(&conn, "after").await;
}

#[tokio::test]
async fn health_check_closes_the_breaker_once_redis_is_back() {
    let mut server = RedisServer::start();
    let conn = server
        .config()
        .connect_timeout(Duration::from_millis(300))
        .command_timeout(Duration::from_millis(300))
        .connect_lazy()
        .unwrap();
    assert!(conn.health_check().await.is_connected());
    server.stop();
    for _ in 0..5 {
        let _ = conn.query::<()>(&driver::cmd("PING")).await;
    }
    assert!(!conn.is_available());
    assert!(!conn.health_check().await.is_connected());
    server.restart();
    // The breaker's cool-down has not passed, but a health check goes through anyway.
    assert!(conn.health_check().await.is_connected());
    assert!(conn.is_available());
}

/// The recovery goal of the fault runs: once Redis answers again, calls resume within about
/// a second, without any call or health check driving it (the breaker's own recovery
/// watch), however long the cool-down has grown; while Redis is down, calls and the guarded
/// health report still fail at once.
#[tokio::test]
async fn the_breaker_closes_by_itself_soon_after_redis_answers_again() {
    let mut server = RedisServer::start();
    let conn = connect_with_timeouts(&server, Duration::from_millis(300)).await;
    server.stop();
    for _ in 0..5 {
        let _ = conn.query::<()>(&driver::cmd("PING")).await;
    }
    assert!(!conn.is_available());
    // Down for longer than the longest cool-down: failed probes have grown it to its maximum.
    let down_until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < down_until {
        let started = Instant::now();
        let err = conn
            .query::<Option<String>>(driver::cmd("GET").arg("k"))
            .await
            .unwrap_err();
        let took = started.elapsed();
        if err.to_string().contains("circuit breaker") {
            assert!(
                took < Duration::from_millis(50),
                "a rejected call took {took:?}"
            );
        }
        let started = Instant::now();
        let report = conn.guarded_health_report().await;
        let took = started.elapsed();
        match report.health {
            RedisHealth::Disconnected { reason } => {
                if reason.contains("circuit breaker") {
                    assert!(
                        took < Duration::from_millis(50),
                        "guarded report took {took:?}"
                    );
                }
            }
            other => panic!("expected Disconnected while Redis is down, got {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!conn.is_available());
    // The guarded report does not touch Redis while the breaker is open.
    match conn.guarded_health_report().await.health {
        RedisHealth::Disconnected { reason } => {
            assert!(reason.contains("circuit breaker"), "{reason}")
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }

    server.restart();
    let back = Instant::now();
    // No calls: only the breaker's own watch can close it.
    while !conn.is_available() {
        assert!(
            back.elapsed() < Duration::from_secs(3),
            "the breaker was still open {:?} after Redis answered again",
            back.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = back.elapsed();
    eprintln!("breaker closed {took:?} after Redis answered again (goal: 1 s)");
    set_get_roundtrip(&conn, "after").await;
    assert!(conn.guarded_health_report().await.health.is_connected());
}

#[tokio::test]
async fn script_is_one_evalsha_and_reloads_after_script_flush() {
    let server = RedisServer::start();
    let conn = server.config().connect().await.unwrap();
    let script = Script::new(
        "local v = redis.call('INCRBY', KEYS[1], ARGV[1]); \
         redis.call('PEXPIRE', KEYS[1], 60000); return v",
    );
    let first: i64 = conn
        .invoke_script(script.key("{s}:n").arg(2))
        .await
        .unwrap();
    assert_eq!(first, 2);

    server.reset_stats();
    for i in 1..=5 {
        let n: i64 = conn
            .invoke_script(script.key("{s}:n").arg(1))
            .await
            .unwrap();
        assert_eq!(n, 2 + i);
    }
    let stats = server.command_stats();
    assert_eq!(server.command_count("evalsha"), 5, "{stats:?}");
    assert_eq!(server.command_count("script|load"), 0, "{stats:?}");
    assert_eq!(server.command_count("eval"), 0, "{stats:?}");

    let () = server.run(driver::cmd("SCRIPT").arg("FLUSH"));
    server.reset_stats();
    let n: i64 = conn
        .invoke_script(script.key("{s}:n").arg(1))
        .await
        .unwrap();
    assert_eq!(n, 8);
    assert_eq!(server.command_count("script|load"), 1);
    let n: i64 = conn
        .invoke_script(script.key("{s}:n").arg(1))
        .await
        .unwrap();
    assert_eq!(n, 9);
    assert_eq!(server.command_count("script|load"), 1);

    // A failing script is a command error carrying the server's message.
    let broken = Script::new("return redis.call('NOSUCHCOMMAND')");
    let err = conn
        .invoke_script::<()>(&broken.prepare_invoke())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), RedisErrorKind::Command, "{err}");
    assert!(conn.is_available());
}

/// Log output captured from `tracing`: a process-wide subscriber (a thread-local one misses
/// events whose call sites other tests registered concurrently), so tests filter the lines by
/// their server's port.
fn captured_logs() -> &'static Capture {
    static CAPTURED: std::sync::OnceLock<Capture> = std::sync::OnceLock::new();
    CAPTURED.get_or_init(|| {
        let captured = Capture::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("global subscriber");
        captured
    })
}

#[tokio::test]
async fn state_changes_are_logged_once_without_the_password() {
    let captured = captured_logs();
    let mut server = RedisServer::start_with_password(PASSWORD);
    let conn = connect_with_timeouts(&server, Duration::from_millis(300)).await;
    for _ in 0..20 {
        let () = conn
            .query(driver::cmd("SET").arg("k").arg("v"))
            .await
            .unwrap();
    }
    server.stop();
    for _ in 0..50 {
        let _ = conn
            .query::<Option<String>>(driver::cmd("GET").arg("k"))
            .await;
    }
    server.restart();
    wait_until_usable(&conn, Duration::from_secs(10)).await;
    for _ in 0..20 {
        let () = conn
            .query(driver::cmd("SET").arg("k").arg("v"))
            .await
            .unwrap();
    }
    let addr = format!("addr=127.0.0.1:{}", server.port());
    let lines_of_this_server = |all: &str| -> String {
        all.lines()
            .filter(|l| l.split_whitespace().any(|w| w == addr))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let all = String::from_utf8(captured.bytes()).unwrap();
    assert!(!all.contains(PASSWORD), "{all}");
    let logs = lines_of_this_server(&all);
    let count = |needle: &str| logs.matches(needle).count();
    assert_eq!(count("redis connected"), 1, "{logs}");
    assert_eq!(count("redis connection lost"), 1, "{logs}");
    assert_eq!(count("redis circuit breaker open"), 1, "{logs}");
    assert_eq!(count("redis reconnected"), 1, "{logs}");
    assert_eq!(count("redis recovered"), 1, "{logs}");
    assert!(!logs.contains(PASSWORD), "{logs}");

    // A wrong password through another connection: failing to connect until its breaker
    // opens, which logs the error, scrubbed too.
    let before = captured.bytes().len();
    let wrong = server
        .config()
        .password("Other-Wrong-Pw-123")
        .connect_lazy()
        .unwrap();
    for calls in 1.. {
        if !wrong.is_available() {
            break;
        }
        assert!(calls <= 5, "breaker did not open after {calls} failures");
        let err = wrong.query::<()>(&driver::cmd("PING")).await.unwrap_err();
        assert_eq!(err.kind(), RedisErrorKind::Auth, "{err}");
    }
    let all = String::from_utf8(captured.bytes()[before..].to_vec()).unwrap();
    let logs = lines_of_this_server(&all);
    assert!(logs.contains("redis circuit breaker open"), "{logs}");
    assert!(!all.contains(PASSWORD), "{all}");
    assert!(!all.contains("Other-Wrong-Pw-123"), "{all}");
}
