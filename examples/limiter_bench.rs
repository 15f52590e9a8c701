//! Load tool for the rate limiter backends: decisions per second, latency, allowed/denied.
//!
//! ```text
//! cargo run --release --example limiter_bench -- --backend memory --concurrency 64 \
//!     --keys 100000 --duration 10s
//! cargo run --release --example limiter_bench -- --backend redis \
//!     --redis-url redis://127.0.0.1:6379 --concurrency 64 --keys 100000 --duration 10s
//! ```
//!
//! The tool starts no server: for `--backend redis`, start one yourself (for example
//! `redis-server --port 6379 --save "" --appendonly no`) and pass its URL with `--redis-url`
//! (or set `REDIS_URL`); without either it stops with a message. It writes keys under the
//! prefix `rampart:bench:` (they expire by themselves), so do not point it at a production
//! server.
//!
//! Options (all optional, except the URL with `--backend redis`):
//!
//! | option            | default      | meaning                                               |
//! |-------------------|--------------|-------------------------------------------------------|
//! | `--backend`       | `memory`     | `memory` or `redis` (feature `redis`)                 |
//! | `--redis-url`     | `$REDIS_URL` | the Redis server (`redis://` or `rediss://`)          |
//! | `--batching`      | `on`         | Redis: concurrent decisions share script calls, or `off`: one call each |
//! | `--max-in-flight` | `2`          | Redis with batching: most script calls at once        |
//! | `--concurrency`   | `64`         | concurrent callers (threads for memory, tasks for Redis) |
//! | `--keys`          | `100000`     | distinct client keys                                  |
//! | `--duration`      | `10s`        | run time (`500ms`, `10s`, `2m`)                       |
//! | `--quota`         | `100/minute` | quota string per key                                  |
//! | `--meaning`       | `window`     | `window` or `gcra` (burst = the count)                |
//!
//! Latency percentiles come from every 16th decision (memory) or every decision (Redis) and
//! include the cost of reading the timer. With Redis the tool also prints the script calls the
//! server counted during the run (`INFO commandstats`, so other clients of the same server
//! count too), the decisions per call, and the Redis CPU per decision: the scripts' time
//! and the whole process's (`INFO cpu`, user + system). Against a cluster (`--redis-url`
//! of any node) it prints the same per master, and the share of the keys each master holds.

use std::net::{IpAddr, Ipv4Addr};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tower_rampart::rate_limit::{LimitKey, MemoryBackend, Quota};

#[derive(Debug)]
struct Options {
    backend: String,
    redis_url: Option<String>,
    batching: bool,
    max_in_flight: usize,
    concurrency: usize,
    keys: usize,
    duration: Duration,
    quota: Quota,
    meaning: String,
}

fn parse_duration(s: &str) -> Option<Duration> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = s[..digits].parse().ok()?;
    match &s[digits..] {
        "ms" => Some(Duration::from_millis(n)),
        "s" | "" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n * 60)),
        _ => None,
    }
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        backend: "memory".into(),
        redis_url: std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty()),
        batching: true,
        max_in_flight: 2,
        concurrency: 64,
        keys: 100_000,
        duration: Duration::from_secs(10),
        quota: Quota::parse("100/minute").map_err(|e| e.to_string())?,
        meaning: "window".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Err(String::new());
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |what: &str| format!("{flag}: invalid {what} {value:?}");
        match flag.as_str() {
            "--backend" => o.backend = value.clone(),
            "--redis-url" => o.redis_url = Some(value.clone()),
            "--batching" => {
                o.batching = match value.as_str() {
                    "on" => true,
                    "off" => false,
                    _ => return Err(bad("value (on or off)")),
                }
            }
            "--max-in-flight" => o.max_in_flight = value.parse().map_err(|_| bad("number"))?,
            "--concurrency" => o.concurrency = value.parse().map_err(|_| bad("number"))?,
            "--keys" => o.keys = value.parse().map_err(|_| bad("number"))?,
            "--duration" => o.duration = parse_duration(&value).ok_or_else(|| bad("duration"))?,
            "--quota" => o.quota = Quota::parse(&value).map_err(|e| e.to_string())?,
            "--meaning" => o.meaning = value.clone(),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if o.concurrency == 0 || o.keys == 0 {
        return Err("--concurrency and --keys must be at least 1".into());
    }
    match o.meaning.as_str() {
        "window" => {}
        "gcra" => {
            let n = u32::try_from(o.quota.limit()).map_err(|_| "quota too large")?;
            o.quota = Quota::rate(n, o.quota.window_length()).burst(n);
        }
        other => return Err(format!("--meaning: expected window or gcra, got {other:?}")),
    }
    if !matches!(o.backend.as_str(), "memory" | "redis") {
        return Err(format!(
            "--backend: expected memory or redis, got {:?}",
            o.backend
        ));
    }
    if o.backend == "redis" && o.redis_url.is_none() {
        return Err(
            "--backend redis needs --redis-url URL (or REDIS_URL): this tool starts no \
             server; start one (e.g. `redis-server --port 6379 --save \"\" --appendonly no`) \
             and pass redis://127.0.0.1:6379"
                .into(),
        );
    }
    Ok(o)
}

fn key(i: u64, keys: usize) -> LimitKey {
    key_of((i.wrapping_mul(2_654_435_761)) % keys as u64)
}

/// The `j`th distinct client key: an IPv4 address from 10.0.0.0 on.
fn key_of(j: u64) -> LimitKey {
    LimitKey::ip(IpAddr::V4(Ipv4Addr::from(
        0x0a00_0000u32.wrapping_add(j as u32),
    )))
}

#[derive(Default)]
struct Totals {
    allowed: AtomicU64,
    denied: AtomicU64,
}

fn report(o: &Options, elapsed: Duration, totals: &Totals, mut latencies_ns: Vec<u64>) {
    let allowed = totals.allowed.load(Ordering::Relaxed);
    let denied = totals.denied.load(Ordering::Relaxed);
    let total = allowed + denied;
    latencies_ns.sort_unstable();
    let pct = |p: f64| {
        if latencies_ns.is_empty() {
            return Duration::ZERO;
        }
        let i = ((latencies_ns.len() as f64 - 1.0) * p).round() as usize;
        Duration::from_nanos(latencies_ns[i])
    };
    println!(
        "backend {} | {} {} | {} callers | {} keys | {:.1?}",
        o.backend, o.meaning, o.quota, o.concurrency, o.keys, elapsed
    );
    println!(
        "decisions/s {:.0} | p50 {:.2?} | p99 {:.2?} | allowed {allowed} | denied {denied}",
        total as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
    );
}

fn run_memory(o: &Options) {
    let backend = MemoryBackend::builder()
        .max_keys(o.keys.saturating_mul(2).max(1024))
        .build();
    let limiter = backend.keyed("bench", o.quota).expect("valid quota");
    let totals = Totals::default();
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let latencies: Vec<Vec<u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..o.concurrency as u64)
            .map(|c| {
                let (limiter, totals, stop) = (&limiter, &totals, &stop);
                s.spawn(move || {
                    let mut lat = Vec::new();
                    let (mut allowed, mut denied) = (0u64, 0u64);
                    let mut i = c * 7919;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..16 {
                            let k = key(i, o.keys);
                            i += 1;
                            if limiter.check(&k).is_allowed() {
                                allowed += 1;
                            } else {
                                denied += 1;
                            }
                        }
                        let k = key(i, o.keys);
                        i += 1;
                        let t = Instant::now();
                        let ok = limiter.check(&k).is_allowed();
                        lat.push(t.elapsed().as_nanos() as u64);
                        if ok {
                            allowed += 1;
                        } else {
                            denied += 1;
                        }
                    }
                    totals.allowed.fetch_add(allowed, Ordering::Relaxed);
                    totals.denied.fetch_add(denied, Ordering::Relaxed);
                    lat
                })
            })
            .collect();
        std::thread::sleep(o.duration);
        stop.store(true, Ordering::Relaxed);
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let elapsed = started.elapsed();
    report(o, elapsed, &totals, latencies.concat());
    println!("keys held {} (bound {})", backend.len(), backend.max_keys());
}

#[cfg(feature = "redis")]
fn run_redis(o: &Options) -> Result<(), String> {
    use tower_rampart::rate_limit::RedisBackend;
    use tower_rampart::redis::{RedisConfig, RedisConnection, driver, key_slot};

    /// What one server has counted so far: script calls (`evalsha` and `eval`) and the
    /// microseconds spent in them (`INFO commandstats`), and the process's CPU time in
    /// microseconds, user + system (`INFO cpu`: it includes reading, parsing and answering
    /// the calls, which the scripts' time does not).
    #[derive(Clone, Copy, Default)]
    struct Sample {
        calls: u64,
        script_us: u64,
        cpu_us: u64,
    }

    impl Sample {
        fn parse(commandstats: &str, cpu: &str) -> Self {
            let field = |line: &str, name: &str| -> u64 {
                line.split(name)
                    .nth(1)
                    .and_then(|rest| rest.split(',').next())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            let (calls, script_us) = commandstats
                .lines()
                .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
                .fold((0, 0), |(c, u), l| {
                    (c + field(l, "calls="), u + field(l, "usec="))
                });
            let seconds = |name: &str| -> f64 {
                cpu.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0.0)
            };
            let cpu_us = ((seconds("used_cpu_user:") + seconds("used_cpu_sys:")) * 1e6) as u64;
            Self {
                calls,
                script_us,
                cpu_us,
            }
        }

        fn since(self, before: Self) -> Self {
            Self {
                calls: self.calls.saturating_sub(before.calls),
                script_us: self.script_us.saturating_sub(before.script_us),
                cpu_us: self.cpu_us.saturating_sub(before.cpu_us),
            }
        }
    }

    /// Where the statistics are read: the one server, or each master of a cluster (a
    /// direct connection to each, with the URL's password and TLS).
    enum Stats {
        Single(RedisConnection),
        Masters(Vec<(String, driver::aio::MultiplexedConnection)>),
    }

    impl Stats {
        /// Per server: its address and what it has counted so far.
        async fn read(&self) -> Option<Vec<(String, Sample)>> {
            let mut out = Vec::new();
            match self {
                Stats::Single(conn) => {
                    let stats: String = conn
                        .query(driver::cmd("INFO").arg("commandstats"))
                        .await
                        .ok()?;
                    let cpu: String = conn.query(driver::cmd("INFO").arg("cpu")).await.ok()?;
                    out.push(("server".to_owned(), Sample::parse(&stats, &cpu)));
                }
                Stats::Masters(masters) => {
                    for (addr, conn) in masters {
                        let mut conn = conn.clone();
                        let stats: String = driver::cmd("INFO")
                            .arg("commandstats")
                            .query_async(&mut conn)
                            .await
                            .ok()?;
                        let cpu: String = driver::cmd("INFO")
                            .arg("cpu")
                            .query_async(&mut conn)
                            .await
                            .ok()?;
                        out.push((addr.clone(), Sample::parse(&stats, &cpu)));
                    }
                }
            }
            Some(out)
        }
    }

    /// A master's host, port and the slot ranges it serves.
    type Master = (String, u16, Vec<(u16, u16)>);

    /// The masters of a cluster and the slot ranges each serves, from `CLUSTER SLOTS`.
    async fn masters(conn: &RedisConnection) -> Result<Vec<Master>, String> {
        let reply: Vec<Vec<driver::Value>> = conn
            .query(driver::cmd("CLUSTER").arg("SLOTS"))
            .await
            .map_err(|e| e.to_string())?;
        let mut out: Vec<Master> = Vec::new();
        for range in reply {
            let int = |v: &driver::Value| match v {
                driver::Value::Int(n) => u16::try_from(*n).ok(),
                _ => None,
            };
            let (Some(start), Some(end), Some(driver::Value::Array(node))) = (
                range.first().and_then(int),
                range.get(1).and_then(int),
                range.get(2),
            ) else {
                return Err("unexpected CLUSTER SLOTS reply".into());
            };
            let host = match node.first() {
                Some(driver::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                _ => return Err("unexpected CLUSTER SLOTS node".into()),
            };
            let Some(port) = node.get(1).and_then(int) else {
                return Err("unexpected CLUSTER SLOTS port".into());
            };
            match out.iter_mut().find(|(h, p, _)| *h == host && *p == port) {
                Some(m) => m.2.push((start, end)),
                None => out.push((host, port, vec![(start, end)])),
            }
        }
        out.sort();
        Ok(out)
    }

    /// A direct connection to `host:port` with the password and TLS of `url`.
    async fn direct(
        url: &str,
        host: &str,
        port: u16,
    ) -> Result<driver::aio::MultiplexedConnection, String> {
        use driver::{ConnectionAddr, IntoConnectionInfo};
        let info = url.into_connection_info().map_err(|e| e.to_string())?;
        let addr = match info.addr().clone() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure,
                tls_params,
            },
            _ => ConnectionAddr::Tcp(host.to_owned(), port),
        };
        driver::Client::open(info.set_addr(addr))
            .map_err(|e| e.to_string())?
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let url = o.redis_url.as_deref().unwrap_or_default();
        let config = RedisConfig::from_url(url).map_err(|e| e.to_string())?;
        let conn = config.connect().await.map_err(|e| e.to_string())?;
        let backend = RedisBackend::builder(conn.clone())
            .prefix("rampart:bench:")
            .batching(o.batching)
            .max_calls_in_flight(o.max_in_flight)
            .build();
        let stats = if conn.is_cluster() {
            let first_url = url.split(',').next().unwrap_or(url).trim();
            let masters = masters(&conn).await?;
            // Where the run's keys live: the share of the distinct client keys per master.
            let mut per_master = vec![0usize; masters.len()];
            for j in 0..o.keys as u64 {
                let slot = key_slot(backend.key_name("bench", &key_of(j)).as_bytes());
                if let Some(m) = masters
                    .iter()
                    .position(|(_, _, ranges)| ranges.iter().any(|&(a, b)| (a..=b).contains(&slot)))
                {
                    per_master[m] += 1;
                }
            }
            println!("cluster: {} masters", masters.len());
            let mut direct_conns = Vec::new();
            for ((host, port, ranges), n) in masters.iter().zip(&per_master) {
                let slots: u32 = ranges.iter().map(|&(a, b)| u32::from(b - a) + 1).sum();
                println!(
                    "  master {host}:{port}: {slots} slots ({:.1} %), {n} of the {} keys ({:.1} %)",
                    f64::from(slots) * 100.0 / 16_384.0,
                    o.keys,
                    *n as f64 * 100.0 / o.keys as f64
                );
                direct_conns.push((
                    format!("{host}:{port}"),
                    direct(first_url, host, *port).await?,
                ));
            }
            Stats::Masters(direct_conns)
        } else {
            Stats::Single(conn.clone())
        };
        let limiter = Arc::new(backend.keyed("bench", o.quota).map_err(|e| e.to_string())?);
        let stats_before = stats.read().await;
        let totals = Arc::new(Totals::default());
        let errors = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let tasks: Vec<_> = (0..o.concurrency as u64)
            .map(|c| {
                let (limiter, totals, stop, errors) = (
                    limiter.clone(),
                    totals.clone(),
                    stop.clone(),
                    errors.clone(),
                );
                let keys = o.keys;
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    let mut i = c * 7919;
                    while !stop.load(Ordering::Relaxed) {
                        let k = key(i, keys);
                        i += 1;
                        let t = Instant::now();
                        match limiter.check(&k, 1).await {
                            Ok(d) if d.is_allowed() => {
                                totals.allowed.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(_) => {
                                totals.denied.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                        }
                        lat.push(t.elapsed().as_nanos() as u64);
                    }
                    lat
                })
            })
            .collect();
        tokio::time::sleep(o.duration).await;
        stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap_or_default());
        }
        let elapsed = started.elapsed();
        let decisions = all.len() as u64;
        report(o, elapsed, &totals, all);
        if let (Some(before), Some(after)) = (stats_before, stats.read().await) {
            let delta: Vec<(String, Sample)> = after
                .into_iter()
                .zip(before)
                .map(|((addr, a), (_, b))| (addr, a.since(b)))
                .collect();
            let calls: u64 = delta.iter().map(|(_, d)| d.calls).sum::<u64>().max(1);
            let script_us: u64 = delta.iter().map(|(_, d)| d.script_us).sum();
            let cpu_us: u64 = delta.iter().map(|(_, d)| d.cpu_us).sum();
            let per_decision = |us: u64| us as f64 / decisions.max(1) as f64;
            println!(
                "batching {} | script calls {calls} ({:.0}/s) | {:.1} decisions per call | \
                 Redis CPU per decision: {:.2} us in scripts, {:.2} us in all (all servers)",
                if o.batching { "on" } else { "off" },
                calls as f64 / elapsed.as_secs_f64(),
                decisions as f64 / calls as f64,
                per_decision(script_us),
                per_decision(cpu_us),
            );
            if delta.len() > 1 {
                for (addr, d) in &delta {
                    println!(
                        "  {addr}: script calls {} ({:.0}/s) | CPU {:.0} % of one core \
                         ({:.0} % in scripts) | {:.2} us per call in all",
                        d.calls,
                        d.calls as f64 / elapsed.as_secs_f64(),
                        d.cpu_us as f64 / 1e4 / elapsed.as_secs_f64(),
                        d.script_us as f64 / 1e4 / elapsed.as_secs_f64(),
                        d.cpu_us as f64 / d.calls.max(1) as f64
                    );
                }
            }
        }
        let errors = errors.load(Ordering::Relaxed);
        if errors > 0 {
            println!("errors {errors}");
        }
        Ok(())
    })
}

#[cfg(not(feature = "redis"))]
fn run_redis(_: &Options) -> Result<(), String> {
    Err("this build has no Redis support: add --features redis".into())
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}");
            }
            eprintln!(
                "usage: limiter_bench [--backend memory|redis] [--redis-url URL] \
                 [--batching on|off] [--max-in-flight N] [--concurrency N] [--keys N] [--duration 10s] \
                 [--quota 100/minute] [--meaning window|gcra]"
            );
            return ExitCode::from(2);
        }
    };
    let result = match o.backend.as_str() {
        "redis" => run_redis(&o),
        _ => {
            run_memory(&o);
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
