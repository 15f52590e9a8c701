//! Redis backend decisions per second with 64 concurrent callers, against two baselines
//! measured in the same run on the same `redis-server` (started by the bench):
//!
//! * a redis_rate-style GCRA script (`TIME` + `GET` + `SET PX`, seconds as floats, results
//!   formatted with `tostring`) called the plain way, `Script::invoke_async` over a shared
//!   `MultiplexedConnection`;
//! * `PING` round trips over the same `MultiplexedConnection` (the ceiling of one connection);
//! * the floor of any one-key script: a script that only runs the `GET` and the `SET PX` a
//!   GCRA decision needs (no clock, no arithmetic), called the same way.
//!
//! Ours run with natural batching (the default: concurrent decisions share one script call),
//! with `batching(false)` (one script call per decision), and with `batching(false)` on this
//! process's clock (`client_clock`, for tests only: the scripts skip the server's `TIME`),
//! which shows what reading the server's clock costs a one-call decision.
//!
//! ```text
//! cargo bench --all-features --bench rate_limit_redis
//! cargo bench --all-features --bench rate_limit_redis -- skip   # the interleaved table only
//! ```
//!
//! Quotas: 10 per 10 s per key for every limiter (GCRA burst 10; window N = 10), keys drawn
//! from 100 000 client addresses, so nearly every decision is an admission that writes state.
//!
//! Redis CPU is read from `INFO commandstats`: `usec_per_call` of `evalsha` includes the
//! commands the script runs, and is per *call*; with batching a call carries many decisions,
//! so the figure to compare is usec per call divided by decisions per call (the table prints
//! both, and the nested `SET`/`GET`/`MGET`/`TIME` part of it). The `proc/dec` column is the
//! redis-server process CPU time (`INFO cpu`, user + system) per decision: everything Redis
//! did, reading requests, writing replies and expiring keys included. `commandstats` times are
//! wall-clock times inside Redis, so on a machine shared with other work they grow with the
//! load: compare variants within one run (the interleaved table), not across runs.

use rampart_test_support as support;

use std::future::Future;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tower_rampart::clock::SystemClock;
use tower_rampart::rate_limit::{LimitKey, Quota, RedisBackend, RedisKeyedLimiter};
use tower_rampart::redis::driver::{self, Script, aio::MultiplexedConnection};

const CALLERS: usize = 64;
const KEYS: usize = 100_000;

/// The two commands of a one-key GCRA decision and nothing else: what a script call with
/// them costs Redis, whatever it decides.
const FLOOR_SCRIPT: &str = "local v = redis.call('GET', KEYS[1]) \
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 0";

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

/// A baseline: `text` called the plain way (`Script::invoke_async` over the shared
/// connection) on key `bench:rl:{ip:<address>}:<suffix>` with `args`, its reply read as `T`.
fn script_call<T: driver::FromRedisValue + Send + 'static>(
    plain: &MultiplexedConnection,
    suffix: &str,
    text: &str,
    args: &'static [i64],
) -> Call {
    let names: Arc<Vec<String>> = Arc::new(
        (0..KEYS)
            .map(|i| format!("bench:rl:{{ip:{}}}:{suffix}", ip(i)))
            .collect(),
    );
    let script = Arc::new(Script::new(text));
    let plain = plain.clone();
    Arc::new(move |i| {
        let mut con = plain.clone();
        let (names, script) = (names.clone(), script.clone());
        Box::pin(async move {
            let mut call = script.key(&names[i % KEYS]);
            for a in args {
                call.arg(a);
            }
            let r: T = call.invoke_async(&mut con).await.unwrap();
            black_box(r);
        })
    })
}

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
    let batched = RedisBackend::new(conn.clone());
    let single = RedisBackend::builder(conn.clone()).batching(false).build();
    // The same deciding at this process's clock: the scripts skip the server's `TIME` (for
    // tests and replays only, see `client_clock`): what reading the server's clock costs.
    let single_client_clock = RedisBackend::builder(conn)
        .batching(false)
        .client_clock(SystemClock)
        .build();
    let keys: Arc<Vec<LimitKey>> = Arc::new((0..KEYS).map(|i| LimitKey::ip(ip(i))).collect());
    let float_gcra =
        script_call::<(i64, f64, String, String)>(&plain, "plain", FLOAT_GCRA, &[10, 10, 10, 1]);
    // A TAT in microseconds (16 digits, as ours stores) expiring in 10 s.
    let floor = script_call::<i64>(
        &plain,
        "floor",
        FLOOR_SCRIPT,
        &[1_764_000_000_000_000, 10_000],
    );

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
    let ours = |backend: &RedisBackend, label: &str, quota: Quota| -> Call {
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
    let gcra = Quota::rate(10, Duration::from_secs(10)).burst(10);
    let window = Quota::window(10, Duration::from_secs(10));
    let mut variants: Vec<(&str, &str, Call)> = vec![
        ("PING (multiplexed)", "ping", ping),
        (
            "float GCRA script (redis_rate style)",
            "evalsha",
            float_gcra,
        ),
        ("floor: script of GET + SET PX only", "evalsha", floor),
    ];
    let limiters = [
        ("rampart GCRA (batched)", &batched, "gcra", gcra),
        ("rampart window N=10 (batched)", &batched, "window", window),
        ("rampart GCRA (one call each)", &single, "gcra1", gcra),
        (
            "rampart window N=10 (one call each)",
            &single,
            "window1",
            window,
        ),
        (
            "GCRA one call each, client clock",
            &single_client_clock,
            "gcra1c",
            gcra,
        ),
        (
            "window one call each, client clock",
            &single_client_clock,
            "window1c",
            window,
        ),
    ];
    for (label, backend, name, quota) in limiters {
        variants.push((label, "evalsha", ours(backend, name, quota)));
    }

    let mut group = c.benchmark_group("redis/64 callers");
    group.throughput(Throughput::Elements(1));
    let mut cpu = Vec::new();
    for (label, command, call) in &variants {
        server.reset_stats();
        let mut decisions = 0u64;
        group.bench_function(*label, |b| {
            b.iter_custom(|iters| {
                decisions += iters;
                rt.block_on(run(iters, call.clone()))
            })
        });
        cpu.push((*label, decisions, stats(&server, command)));
    }
    group.finish();
    println!("\nRedis CPU (INFO commandstats usec_per_call), criterion runs:");
    for (label, decisions, (calls, usec)) in cpu {
        if decisions == 0 {
            continue; // filtered out on the command line
        }
        let per_call = decisions as f64 / calls.max(1) as f64;
        println!(
            "  {label:<38} {usec:>7.2} us/call | {per_call:>5.1} decisions/call | {:>5.2} us/decision",
            usec / per_call
        );
    }

    // Same-run ratios by interleaving short slices of each variant, so that the load of other
    // processes on this shared machine hits all of them alike.
    const ROUNDS: usize = 10;
    const SLICE: Duration = Duration::from_millis(400);
    let n = variants.len();
    let mut decisions = vec![0u64; n];
    // Per variant: script (or PING) calls, their total usec, the usec of the commands the
    // scripts ran (SET, MGET, GET, TIME), and the Redis process CPU time.
    let mut calls = vec![0u64; n];
    let mut usec = vec![0f64; n];
    let mut nested = vec![[0f64; 3]; n];
    let mut process = vec![0f64; n];
    for _ in 0..ROUNDS {
        for (i, (_, command, call)) in variants.iter().enumerate() {
            server.reset_stats();
            let cpu_before = process_cpu(&server);
            decisions[i] += rt.block_on(run_for(SLICE, call.clone()));
            process[i] += process_cpu(&server) - cpu_before;
            let all = server.command_stats();
            let total = |c: &str| all.get(c).map_or(0.0, |&(n, per)| n as f64 * per);
            let (k, _) = all.get(*command).copied().unwrap_or((0, 0.0));
            calls[i] += k;
            usec[i] += total(command);
            if *command == "evalsha" {
                nested[i][0] += total("set");
                nested[i][1] += total("mget") + total("get");
                nested[i][2] += total("time");
            }
        }
    }
    let secs = SLICE.as_secs_f64() * ROUNDS as f64;
    let base = decisions[1] as f64 / secs;
    println!(
        "\ninterleaved, {ROUNDS} rounds of {SLICE:?} per variant, {CALLERS} callers, {KEYS} keys"
    );
    println!(
        "(Redis us: INFO commandstats usec of the script calls, which includes the commands they run; \
         process: the redis-server's CPU time from INFO cpu, all work included)"
    );
    println!(
        "  {:<36} {:>11} {:>7} {:>8} {:>9} {:>9} {:>9} {:>9} {:>24}",
        "variant",
        "decisions/s",
        "x float",
        "calls/s",
        "decs/call",
        "us/call",
        "us/dec",
        "proc/dec",
        "of us/dec: SET, GET, TIME",
    );
    for (i, (label, _, _)) in variants.iter().enumerate() {
        let d = decisions[i].max(1) as f64;
        let rate = decisions[i] as f64 / secs;
        let k = calls[i].max(1) as f64;
        println!(
            "  {label:<36} {rate:>11.0} {:>6.2}x {:>8.0} {:>9.1} {:>9.2} {:>9.2} {:>9.2} {:>8.2} {:>7.2} {:>7.2}",
            rate / base,
            k / secs,
            d / k,
            usec[i] / k,
            usec[i] / d,
            process[i] * 1e6 / d,
            nested[i][0] / d,
            nested[i][1] / d,
            nested[i][2] / d,
        );
    }
}

/// The redis-server's CPU time so far (user + system, seconds), from `INFO cpu`.
fn process_cpu(server: &support::RedisServer) -> f64 {
    let info: String = server.run(driver::cmd("INFO").arg("cpu"));
    info.lines()
        .filter_map(|l| {
            l.strip_prefix("used_cpu_user:")
                .or(l.strip_prefix("used_cpu_sys:"))
        })
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
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
