//! Redis CPU per request of the session layer on [`RedisStore`], against a baseline measured in
//! the same run on the same `redis-server` (started by the bench): a plain `HGETALL` + `PEXPIRE`
//! of a session's hash, sent by the bench itself as one pipeline.
//!
//! ```text
//! cargo bench --all-features --bench session_redis
//! SESSION_BENCH_REQUESTS=5000 SESSION_BENCH_ROUNDS=3 cargo bench --all-features --bench session_redis
//! ```
//!
//! Cases (16 concurrent callers, each on its own session; the session holds three small values
//! as in `benches/session.rs`; encrypted at rest unless said otherwise):
//!
//! * `untouched`: the cookie is sent, the handler never touches the session;
//! * `read`: one load (the idle refresh is not due);
//! * `read, refresh due`: one load whose idle refresh is due (the layer's clock moves a
//!   quarter of the idle timeout forward on every request);
//! * `new session`: no cookie, the handler writes a value (a create);
//! * `write`: load + save of a changed value; `write, plaintext`: the same, not encrypted;
//! * `write, user`: the session belongs to a user (unchanged by the request);
//! * `floor: a write's commands`: not the layer, the floor of any scripted write: the
//!   bench sends the load's `HMGET` and then a script that only runs the commands a save
//!   runs (`HMGET`, one `HSET` of the same six fields with the session's own values,
//!   `PEXPIRE`), without deciding anything.
//!
//! Each round runs every case for `SESSION_BENCH_REQUESTS` requests (default 20 000) after
//! `CONFIG RESETSTAT`; the table shows medians over `SESSION_BENCH_ROUNDS` rounds (default 3).
//!
//! How it counts:
//!
//! * `redis µs/req`: from `INFO commandstats`, the `usec` of the script calls (`evalsha`,
//!   `eval`, `evalsha_ro`, `eval_ro`; in Redis 7 they include the commands the scripts run),
//!   plus the plain commands the client sent (for a command name also run inside scripts,
//!   its `usec_per_call` times the number the client sent), divided by the requests.
//!   These are wall-clock times inside Redis: on a machine shared with other work they grow
//!   with the load, so compare cases within one run (the `× base` column).
//! * `cmds/req` (round trips): commands the client sent per request (script calls and plain
//!   commands, not the ones scripts run), counted with `MONITOR`
//!   (`rampart_test_support::CommandMonitor`) on a separate pass of 500 requests per case (`MONITOR` slows Redis, so never during the timed rounds). Every call
//!   of the store is one round trip; the baseline's two commands go as one pipeline (one
//!   round trip).
//! * `nested/req`: commands run inside the scripts per request, and which.
//! * `proc µs/req`: the redis-server process's CPU time (`INFO cpu`, user + system) per
//!   request: everything Redis did, reading requests and writing replies included.
//! * `req/s`: requests per second of the whole stack (client, layer, Redis) on this machine.

mod session_common;

use rampart_test_support as support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response};
use session_common::{Work, answer, cookie_pair, fill, request};
use tower::{Layer, ServiceExt, service_fn};
use tower_rampart::clock::{ManualClock, SystemClock};
use tower_rampart::redis::{RedisConnection, driver};
use tower_rampart::session::{RedisStore, ResponseBody, Session, SessionConfig, SessionLayer};

const CALLERS: usize = 16;
const PREFIX: &str = "bench:session:";
const MONITORED: u64 = 500;
const IDLE: Duration = Duration::from_secs(3600);
const SCRIPTS: [&str; 4] = ["evalsha", "eval", "evalsha_ro", "eval_ro"];
/// The commands of a save and nothing else (see the `floor` case).
const FLOOR_SAVE: &str = "redis.call('HMGET', KEYS[1], 'v', 'a', 'i', 'x', 'u', 'b') \
    redis.call('HSET', KEYS[1], 'v', ARGV[1], 'c', ARGV[2], 'a', ARGV[3], 'i', ARGV[4], \
    'x', ARGV[5], 'd', ARGV[6]) redis.call('PEXPIRE', KEYS[1], ARGV[7]) return 2";
/// The fields a save writes, in `FLOOR_SAVE`'s order.
const SAVED: [&str; 6] = ["v", "c", "a", "i", "x", "d"];
#[derive(Clone, Copy, PartialEq, Eq)]
enum Case {
    Baseline,
    Untouched,
    Read,
    ReadRefresh,
    Create,
    Write,
    WritePlain,
    WriteUser,
    Floor,
}

impl Case {
    const ALL: [Case; 9] = [
        Case::Baseline,
        Case::Untouched,
        Case::Read,
        Case::ReadRefresh,
        Case::Create,
        Case::Write,
        Case::WritePlain,
        Case::WriteUser,
        Case::Floor,
    ];

    fn name(self) -> &'static str {
        match self {
            Case::Baseline => "baseline: HGETALL + PEXPIRE",
            Case::Untouched => "untouched",
            Case::Read => "read",
            Case::ReadRefresh => "read, refresh due",
            Case::Create => "new session",
            Case::Write => "write",
            Case::WritePlain => "write, plaintext",
            Case::WriteUser => "write, user",
            Case::Floor => "floor: a write's commands",
        }
    }
}

type Svc = tower::util::BoxCloneSyncService<Request<()>, Response<String>, Infallible>;
type Layered =
    tower::util::BoxCloneSyncService<Request<()>, Response<ResponseBody<String>>, Infallible>;

/// The handler: `work` on the session; `advance`: moves the layer's clock first.
fn handler(work: Work, advance: Option<ManualClock>) -> Svc {
    let counter = Arc::new(AtomicU64::new(0));
    tower::util::BoxCloneSyncService::new(service_fn(move |req: Request<()>| {
        let (counter, advance) = (counter.clone(), advance.clone());
        async move {
            if let Some(clock) = advance {
                clock.advance(IDLE / 4 + Duration::from_secs(1));
            }
            let session = req.extensions().get::<Session>().cloned();
            let body = answer(work, session, &counter).await;
            Ok::<_, Infallible>(Response::new(body))
        }
    }))
}

fn layer(conn: &RedisConnection, encrypt: bool, clock: Option<ManualClock>) -> SessionLayer {
    let mut config = SessionConfig::builder()
        .key(b"benchmark key, at least thirty-two bytes long")
        .encrypt_at_rest(encrypt)
        .idle_timeout(IDLE)
        .absolute_lifetime(Duration::from_secs(400 * 24 * 3600));
    config = match clock {
        Some(c) => config.clock(c),
        None => config.clock(SystemClock),
    };
    let store = RedisStore::new(conn.clone()).with_prefix(PREFIX);
    SessionLayer::new(store, config.build().unwrap())
}

/// A new session through `layer`, holding `n` and a few other small values (and a user id
/// if `user`); its cookie.
async fn session_cookie(layer: &SessionLayer, user: Option<String>) -> String {
    let svc = layer.layer(service_fn(move |req: Request<()>| {
        let user = user.clone();
        async move {
            let s = req.extensions().get::<Session>().cloned().unwrap();
            fill(&s).await;
            if let Some(u) = user {
                s.set_user_id(u).await.unwrap();
            }
            Ok::<_, Infallible>(Response::new(String::new()))
        }
    }));
    let res = svc.oneshot(request(None)).await.unwrap();
    cookie_pair(&res)
}

/// What one case runs: a service and a cookie per caller, or the baseline's keys.
enum Target {
    Layer {
        /// One service per caller (callers share one unless each has its own clock).
        svcs: Vec<Layered>,
        cookies: Vec<Option<String>>,
    },
    Baseline {
        conn: RedisConnection,
        keys: Vec<String>,
    },
    Floor {
        conn: RedisConnection,
        /// Per caller: the session's key and the values `FLOOR_SAVE` writes back.
        saves: Vec<(String, Vec<Vec<u8>>)>,
    },
}

/// One caller's work in [`Target::run`].
enum Job {
    Layer(Layered, Option<String>),
    Baseline(RedisConnection, String),
    Floor(RedisConnection, String, Vec<Vec<u8>>),
}

impl Target {
    /// Runs `n` requests from [`CALLERS`] tasks; the wall time.
    async fn run(&self, n: u64) -> Duration {
        let left = Arc::new(AtomicU64::new(n));
        let floor = Arc::new(driver::Script::new(FLOOR_SAVE));
        let start = Instant::now();
        let tasks: Vec<_> = (0..CALLERS)
            .map(|c| {
                let left = left.clone();
                let job = match self {
                    Target::Layer { svcs, cookies } => Job::Layer(
                        svcs[c % svcs.len()].clone(),
                        cookies[c % cookies.len()].clone(),
                    ),
                    Target::Baseline { conn, keys } => Job::Baseline(conn.clone(), keys[c].clone()),
                    Target::Floor { conn, saves } => {
                        let (key, values) = saves[c].clone();
                        Job::Floor(conn.clone(), key, values)
                    }
                };
                let floor = floor.clone();
                tokio::spawn(async move {
                    while left
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| l.checked_sub(1))
                        .is_ok()
                    {
                        match &job {
                            Job::Layer(svc, cookie) => {
                                let res = svc.clone().oneshot(request(cookie.as_deref())).await;
                                assert!(res.unwrap().status().is_success());
                            }
                            Job::Floor(conn, key, values) => {
                                let load: Vec<Option<Vec<u8>>> = conn
                                    .query(driver::cmd("HMGET").arg(key).arg(&SAVED[..]))
                                    .await
                                    .unwrap();
                                assert!(load[0].is_some());
                                let mut save = floor.key(key);
                                save.arg(values).arg(IDLE.as_millis() as u64);
                                let r: i64 = conn.invoke_script(&save).await.unwrap();
                                assert_eq!(r, 2);
                            }
                            Job::Baseline(conn, key) => {
                                let mut pipe = driver::pipe();
                                pipe.cmd("HGETALL").arg(key);
                                pipe.cmd("PEXPIRE").arg(key).arg(IDLE.as_millis() as u64);
                                let (fields, _): (Vec<Vec<u8>>, i64) =
                                    conn.query_pipeline(&pipe).await.unwrap();
                                assert!(fields.len() >= 14);
                            }
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        start.elapsed()
    }
}

/// `INFO cpu`: user + system CPU seconds of redis-server.
fn process_cpu(server: &support::RedisServer) -> f64 {
    let info: String = server.run(driver::cmd("INFO").arg("cpu"));
    info.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| *k == "used_cpu_user" || *k == "used_cpu_sys")
        .map(|(_, v)| v.trim().parse::<f64>().unwrap())
        .sum()
}

struct Sample {
    redis_us: f64,
    proc_us: f64,
    rps: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this in test mode: skip.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let requests = env("SESSION_BENCH_REQUESTS", 20_000);
    let rounds = env("SESSION_BENCH_ROUNDS", 3) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = support::RedisServer::start();
    let conn = rt.block_on(server.config().connect()).unwrap();

    let encrypted = layer(&conn, true, None);
    let plain = layer(&conn, false, None);
    let (cookies, plain_cookies, user_cookies) = rt.block_on(async {
        let mut cookies = Vec::new();
        let mut plain_cookies = Vec::new();
        let mut user_cookies = Vec::new();
        for c in 0..CALLERS {
            cookies.push(Some(session_cookie(&encrypted, None).await));
            plain_cookies.push(Some(session_cookie(&plain, None).await));
            user_cookies.push(Some(
                session_cookie(&encrypted, Some(format!("user{c}@example.com"))).await,
            ));
        }
        (cookies, plain_cookies, user_cookies)
    });
    // The baseline reads the hashes of the read case's sessions (the same size).
    let all_keys: Vec<String> = server.run(driver::cmd("KEYS").arg(format!("{PREFIX}{{*")));
    let read_keys: Vec<String> = {
        let mut keys = Vec::new();
        for k in all_keys {
            let fields: BTreeMap<String, Vec<u8>> = server.run(driver::cmd("HGETALL").arg(&k));
            if !fields.contains_key("u") && fields.get("d").is_some_and(|d| d.len() > 60) {
                keys.push(k);
            }
        }
        keys
    };
    assert!(read_keys.len() >= CALLERS);
    // The floor case writes back each session's values as they were here (its binding and
    // user fields stay as later writes leave them: no case checks the binding).
    let floor_saves: Vec<(String, Vec<Vec<u8>>)> = read_keys[..CALLERS]
        .iter()
        .map(|k| {
            let fields: BTreeMap<String, Vec<u8>> = server.run(driver::cmd("HGETALL").arg(k));
            let values = SAVED.iter().map(|f| fields[*f].clone()).collect();
            (k.clone(), values)
        })
        .collect();

    let target = |case: Case| -> Target {
        let on = |l: &SessionLayer, work, cookies: &Vec<Option<String>>| Target::Layer {
            svcs: vec![Layered::new(l.layer(handler(work, None)))],
            cookies: cookies.clone(),
        };
        match case {
            Case::Baseline => Target::Baseline {
                conn: conn.clone(),
                keys: read_keys.clone(),
            },
            Case::Untouched => on(&encrypted, Work::Nothing, &cookies),
            Case::Read => on(&encrypted, Work::Read, &cookies),
            Case::ReadRefresh => {
                // A layer and a clock per caller: each request of a caller moves its clock
                // past a quarter of the idle timeout, so every load refreshes.
                let (svcs, cookies) = rt.block_on(async {
                    let (mut svcs, mut cookies) = (Vec::new(), Vec::new());
                    for _ in 0..CALLERS {
                        let clock = ManualClock::starting_now();
                        let l = layer(&conn, true, Some(clock.clone()));
                        cookies.push(Some(session_cookie(&l, None).await));
                        svcs.push(Layered::new(l.layer(handler(Work::Read, Some(clock)))));
                    }
                    (svcs, cookies)
                });
                Target::Layer { svcs, cookies }
            }
            Case::Create => on(&encrypted, Work::Write, &vec![None]),
            Case::Write => on(&encrypted, Work::Write, &cookies),
            Case::WritePlain => on(&plain, Work::Write, &plain_cookies),
            Case::WriteUser => on(&encrypted, Work::Write, &user_cookies),
            Case::Floor => Target::Floor {
                conn: conn.clone(),
                saves: floor_saves.clone(),
            },
        }
    };

    // Warm up (scripts loaded, connections made), then count commands under MONITOR.
    for case in Case::ALL {
        rt.block_on(target(case).run(200));
    }
    let monitor = server.monitor();
    let mut counts = BTreeMap::new();
    for case in Case::ALL {
        let t = target(case);
        monitor.reset();
        rt.block_on(t.run(MONITORED));
        let seen = monitor.counts();
        counts.insert(case.name(), (seen.sent, seen.nested));
    }
    drop(monitor);

    let mut samples: BTreeMap<&str, Vec<Sample>> = BTreeMap::new();
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        for case in Case::ALL {
            let t = target(case);
            server.reset_stats();
            let cpu0 = process_cpu(&server);
            let wall = rt.block_on(t.run(requests));
            let cpu = process_cpu(&server) - cpu0;
            let stats = server.command_stats();
            let (client, _) = &counts[case.name()];
            let mut usec = 0.0;
            for (name, &(calls, per_call)) in &stats {
                if SCRIPTS.contains(&name.as_str()) {
                    usec += calls as f64 * per_call;
                } else if let Some(&sent) = client.get(name) {
                    usec += sent as f64 / MONITORED as f64 * requests as f64 * per_call;
                }
            }
            samples.entry(case.name()).or_default().push(Sample {
                redis_us: usec / requests as f64,
                proc_us: cpu * 1e6 / requests as f64,
                rps: requests as f64 / wall.as_secs_f64(),
            });
        }
    }

    let redis = |case: Case| median(samples[case.name()].iter().map(|s| s.redis_us).collect());
    let base = redis(Case::Baseline);
    println!(
        "\nsession layer on RedisStore: {requests} requests x {rounds} rounds, {CALLERS} callers, medians"
    );
    println!(
        "{:<28} {:>12} {:>7} {:>9} {:>11} {:>9}  nested commands",
        "case", "redis µs/req", "× base", "cmds/req", "proc µs/req", "req/s"
    );
    for case in Case::ALL {
        let s = &samples[case.name()];
        let (client, nested) = &counts[case.name()];
        let per = |n: u64| n as f64 / MONITORED as f64;
        let sent: u64 = client.values().sum();
        let inner: u64 = nested.values().sum();
        let which: Vec<String> = nested
            .iter()
            .map(|(k, &v)| format!("{k} {:.2}", per(v)))
            .collect();
        let sent_which: Vec<String> = client
            .iter()
            .map(|(k, &v)| format!("{k} {:.2}", per(v)))
            .collect();
        println!(
            "{:<28} {:>12.2} {:>7.2} {:>9.2} {:>11.2} {:>9.0}  {:.2} ({}) | sent: {}",
            case.name(),
            redis(case),
            redis(case) / base,
            per(sent),
            median(s.iter().map(|s| s.proc_us).collect()),
            median(s.iter().map(|s| s.rps).collect()),
            per(inner),
            which.join(", "),
            sent_which.join(", "),
        );
    }
}
