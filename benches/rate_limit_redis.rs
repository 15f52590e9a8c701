//! Redis backend decisions per second with 64 concurrent callers, against two baselines
//! measured in the same run on the same `redis-server` (started by the bench):
//!
//! * a redis_rate-style GCRA script (`TIME` + `GET` + `SET PX`, seconds as floats, results
//!   formatted with `tostring`) called the plain way, `Script::invoke_async` over a shared
//!   `MultiplexedConnection`;
//! * `PING` round trips over the same `MultiplexedConnection` (the ceiling of one connection).
//!
//! ```text
//! cargo bench --bench rate_limit_redis --features redis
//! ```
//!
//! Quotas: 10 per 10 s per key for every limiter (GCRA burst 10; window N = 10), keys drawn
//! from 100 000 client addresses, so nearly every decision is an admission that writes state.
//! After each case the Redis CPU per call is read from `INFO commandstats` (`usec_per_call`
//! of `evalsha`, which includes the commands the script runs) and printed.

#[path = "../tests/support/mod.rs"]
mod support;

use std::future::Future;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tower_rampart::rate_limit::{LimitKey, Quota, RedisBackend, RedisKeyedLimiter};
use tower_rampart::redis::driver::{self, Script, aio::MultiplexedConnection};

const CALLERS: usize = 64;
const KEYS: usize = 100_000;

/// A GCRA in the style of go-redis/redis_rate: float seconds, `tostring` results.
const FLOAT_GCRA: &str = r"
local burst = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local interval = period / rate
local increment = interval * cost
local offset = interval * burst
local t = redis.call('TIME')
local now = (t[1] - 1483228800) + t[2] / 1000000
local tat = redis.call('GET', KEYS[1])
if not tat then tat = now else tat = tonumber(tat) end
if tat < now then tat = now end
local new_tat = tat + increment
local diff = now - (new_tat - offset)
local remaining = diff / interval
if remaining < 0 then
  return {0, 0, tostring(-diff), tostring(tat - now)}
end
local reset_after = new_tat - now
if reset_after > 0 then
  redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(reset_after * 1000))
end
return {cost, remaining, tostring(-1), tostring(reset_after)}
";

fn ip(i: usize) -> IpAddr {
    let j = (i as u64 * 2_654_435_761) % KEYS as u64;
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32 + j as u32))
}

/// One call of a variant: the caller's running index in, a finished call out.
type Call = Arc<dyn Fn(usize) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Runs `iters` calls from 64 tasks; returns the wall time.
async fn run(iters: u64, call: Call) -> Duration {
    let left = Arc::new(AtomicI64::new(iters as i64));
    let start = Instant::now();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|c| {
            let (left, call) = (left.clone(), call.clone());
            tokio::spawn(async move {
                let mut i = c * 7919;
                while left.fetch_sub(1, Ordering::Relaxed) > 0 {
                    call(i).await;
                    i += CALLERS;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

/// Runs 64 callers for `time`; returns the number of calls made.
async fn run_for(time: Duration, call: Call) -> u64 {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..CALLERS)
        .map(|c| {
            let (stop, call) = (stop.clone(), call.clone());
            tokio::spawn(async move {
                let mut i = c * 7919;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    call(i).await;
                    i += CALLERS;
                    n += 1;
                }
                n
            })
        })
        .collect();
    tokio::time::sleep(time).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total
}

fn stats(server: &support::RedisServer, command: &str) -> (u64, f64) {
    server
        .command_stats()
        .get(command)
        .copied()
        .unwrap_or((0, f64::NAN))
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = support::RedisServer::start();
    let (conn, plain) = rt.block_on(async {
        let conn = server.config().connect().await.unwrap();
        let client = driver::Client::open(server.url()).unwrap();
        let plain: MultiplexedConnection = client.get_multiplexed_async_connection().await.unwrap();
        (conn, plain)
    });
    let backend = RedisBackend::new(conn);
    let keys: Arc<Vec<LimitKey>> = Arc::new((0..KEYS).map(|i| LimitKey::ip(ip(i))).collect());
    let names: Arc<Vec<String>> = Arc::new(
        (0..KEYS)
            .map(|i| format!("bench:rl:{{ip:{}}}:plain", ip(i)))
            .collect(),
    );
    let script = Arc::new(Script::new(FLOAT_GCRA));

    let ping: Call = {
        let plain = plain.clone();
        Arc::new(move |_| {
            let mut con = plain.clone();
            Box::pin(async move {
                let r: String = driver::cmd("PING").query_async(&mut con).await.unwrap();
                black_box(r);
            })
        })
    };
    let float_gcra: Call = {
        let (plain, names, script) = (plain.clone(), names.clone(), script.clone());
        Arc::new(move |i| {
            let mut con = plain.clone();
            let (names, script) = (names.clone(), script.clone());
            Box::pin(async move {
                let r: (i64, f64, String, String) = script
                    .key(&names[i % KEYS])
                    .arg(10)
                    .arg(10)
                    .arg(10)
                    .arg(1)
                    .invoke_async(&mut con)
                    .await
                    .unwrap();
                black_box(r);
            })
        })
    };
    let ours = |label: &str, quota: Quota| -> Call {
        let limiter: Arc<RedisKeyedLimiter> = Arc::new(backend.keyed(label, quota).unwrap());
        let keys = keys.clone();
        Arc::new(move |i| {
            let (limiter, keys) = (limiter.clone(), keys.clone());
            Box::pin(async move {
                let d = limiter.check(&keys[i % KEYS], 1).await.unwrap();
                black_box(d);
            })
        })
    };
    let variants: Vec<(&str, &str, Call)> = vec![
        ("PING (multiplexed)", "ping", ping),
        (
            "float GCRA script (redis_rate style)",
            "evalsha",
            float_gcra,
        ),
        (
            "rampart GCRA",
            "evalsha",
            ours("gcra", Quota::rate(10, Duration::from_secs(10)).burst(10)),
        ),
        (
            "rampart window N=10",
            "evalsha",
            ours("window", Quota::window(10, Duration::from_secs(10))),
        ),
    ];

    let mut group = c.benchmark_group("redis/64 callers");
    group.throughput(Throughput::Elements(1));
    let mut cpu = Vec::new();
    for (label, command, call) in &variants {
        server.reset_stats();
        group.bench_function(*label, |b| {
            b.iter_custom(|iters| rt.block_on(run(iters, call.clone())))
        });
        cpu.push((*label, stats(&server, command)));
    }
    group.finish();
    println!("\nRedis CPU per call (INFO commandstats usec_per_call), criterion runs:");
    for (label, (calls, usec)) in cpu {
        println!("  {label:<40} {usec:>6.2} us/call over {calls} calls");
    }

    // Same-run ratios by interleaving short slices of each variant, so that the load of other
    // processes on this shared machine hits all of them alike.
    const ROUNDS: usize = 10;
    const SLICE: Duration = Duration::from_millis(400);
    let mut calls = vec![0u64; variants.len()];
    let mut usec = vec![0f64; variants.len()];
    let mut server_calls = vec![0u64; variants.len()];
    for _ in 0..ROUNDS {
        for (i, (_, command, call)) in variants.iter().enumerate() {
            server.reset_stats();
            calls[i] += rt.block_on(run_for(SLICE, call.clone()));
            let (n, per) = stats(&server, command);
            server_calls[i] += n;
            usec[i] += per * n as f64;
        }
    }
    let secs = SLICE.as_secs_f64() * ROUNDS as f64;
    let base = calls[1] as f64 / secs;
    println!("\ninterleaved ({ROUNDS} rounds of {SLICE:?} per variant, 64 callers):");
    for (i, (label, _, _)) in variants.iter().enumerate() {
        let rate = calls[i] as f64 / secs;
        println!(
            "  {label:<40} {:>8.0} calls/s = {:.2}x the float GCRA script | Redis {:.2} us/call",
            rate,
            rate / base,
            usec[i] / server_calls[i].max(1) as f64
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10);
    targets = bench
}
criterion_main!(benches);
