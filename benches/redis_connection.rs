//! Which connection shape should the Redis backends use? Measures calls per second of 64
//! concurrent callers each running a small GCRA-like Lua script with `EVALSHA` (what the rate
//! limiter does once per request) against a local `redis-server` this bench starts itself:
//!
//! - (a) a bb8-redis pool (bb8 defaults: 10 connections, `test_on_check_out` = PING per get)
//! - (b) the same pool without `test_on_check_out`
//! - (c) one shared `MultiplexedConnection`, cloned per call
//! - (d) `tower_rampart::redis::RedisConnection` (multiplexed + timeout + circuit breaker)
//!
//! ```text
//! cargo bench --bench redis_connection --features redis
//! BENCH_SECS=5 cargo bench --bench redis_connection --features redis   # longer runs
//! ```
//!
//! A plain timed harness (`harness = false`): each variant warms up for 0.5 s, then runs for
//! `BENCH_SECS` seconds (default 3); the result is printed as calls/s.

use rampart_test_support as support;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bb8_redis::RedisConnectionManager;
use support::RedisServer;
use tower_rampart::redis::driver::{self, Script, ScriptInvocation};

const CALLERS: usize = 64;
const KEYS: u64 = 1024;

/// GCRA-like: theoretical arrival time per key, Redis server clock, integer microseconds.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
if tat - now <= burst then
  tat = tat + interval
  redis.call('SET', KEYS[1], tat, 'PX', 60000)
  return 1
end
return 0
";

/// The call every variant makes: the script on the `i`-th key (modulo `KEYS`).
fn gcra_call(script: &Script, i: u64) -> ScriptInvocation<'_> {
    let mut invocation = script.key(format!("{{bench}}:k{}", i % KEYS));
    invocation.arg(1000).arg(100_000);
    invocation
}

/// Measures and reports (a) or (b): each call checks a connection out of `pool`.
async fn measure_pool(
    name: &str,
    secs: f64,
    pool: bb8::Pool<RedisConnectionManager>,
    script: Arc<Script>,
) {
    let call = move |i: u64| {
        let (pool, script) = (pool.clone(), script.clone());
        async move {
            let mut conn = pool.get().await.expect("pool get");
            let _: i64 = gcra_call(&script, i)
                .invoke_async(&mut *conn)
                .await
                .expect("evalsha");
        }
    };
    report(name, measure(secs, call).await);
}

/// Runs `call` from `CALLERS` tasks for warm-up + `secs`, returns calls per second.
async fn measure<F, Fut>(secs: f64, call: F) -> f64
where
    F: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..CALLERS as u64)
        .map(|caller| {
            let (stop, count, call) = (stop.clone(), count.clone(), call.clone());
            tokio::spawn(async move {
                let mut i = caller * 7919;
                while !stop.load(Ordering::Relaxed) {
                    call(i).await;
                    i += 1;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start_count = count.load(Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let done = count.load(Ordering::Relaxed) - start_count;
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("bench task");
    }
    done as f64 / elapsed
}

fn report(name: &str, per_sec: f64) {
    println!("{name:<58} {per_sec:>10.0} calls/s");
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs it too: keep that short.
    let quick = !std::env::args().any(|a| a == "--bench");
    let secs: f64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 0.2 } else { 3.0 });

    let server = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    println!(
        "{CALLERS} callers, EVALSHA of a GCRA-like script over {KEYS} keys, {secs} s per variant, \
         {} tokio worker threads",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    runtime.block_on(async {
        let script = Arc::new(Script::new(GCRA));

        // (a) bb8 pool, defaults (test_on_check_out = true); (b) without test_on_check_out.
        // Each pool is dropped (its connections closed) before the next variant runs.
        for (name, test_on_check_out) in [
            ("(a) bb8-redis pool, test_on_check_out (default)", true),
            ("(b) bb8-redis pool, no test_on_check_out", false),
        ] {
            let manager = RedisConnectionManager::new(server.url()).expect("manager");
            let pool = bb8::Pool::builder()
                .test_on_check_out(test_on_check_out)
                .build(manager)
                .await
                .expect("pool");
            measure_pool(name, secs, pool, script.clone()).await;
        }

        // (c) one shared MultiplexedConnection.
        let client = driver::Client::open(server.url()).expect("client");
        let shared = client
            .get_multiplexed_async_connection()
            .await
            .expect("multiplexed");
        let call = {
            let script = script.clone();
            move |i: u64| {
                let (mut conn, script) = (shared.clone(), script.clone());
                async move {
                    let _: i64 = gcra_call(&script, i)
                        .invoke_async(&mut conn)
                        .await
                        .expect("evalsha");
                }
            }
        };
        report(
            "(c) one shared MultiplexedConnection",
            measure(secs, call).await,
        );

        // (d) RedisConnection.
        let conn = server
            .config()
            .connect_timeout(Duration::from_secs(1))
            .command_timeout(Duration::from_millis(500))
            .connect()
            .await
            .expect("RedisConnection");
        let call = {
            let script = script.clone();
            move |i: u64| {
                let (conn, script) = (conn.clone(), script.clone());
                async move {
                    let _: i64 = conn
                        .invoke_script(&gcra_call(&script, i))
                        .await
                        .expect("evalsha");
                }
            }
        };
        report(
            "(d) tower_rampart RedisConnection (multiplexed + breaker)",
            measure(secs, call).await,
        );
    });

    let stats = server.command_stats();
    let evalsha = stats.get("evalsha").map_or(0, |s| s.0);
    let ping = stats.get("ping").map_or(0, |s| s.0);
    println!("server saw {evalsha} EVALSHA, {ping} PING");
}
