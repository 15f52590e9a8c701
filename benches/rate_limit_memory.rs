//! Memory backend decisions per second against `governor`'s keyed limiter, measured in the same
//! run: 1 key and 100 000 keys, 1 and 2 threads, client addresses and text keys, both meanings
//! of a quota.
//!
//! ```text
//! cargo bench --all-features --bench rate_limit_memory
//! ```
//!
//! Every limiter reads its own clock on each decision (governor: quanta's TSC clock; ours:
//! [`MonotonicClock`](tower_rampart::rate_limit::MonotonicClock)), and keys are visited in a
//! scattered order. Two kinds of keys, each given to governor in its natural type:
//!
//! * **ip**: client IPv4 addresses (governor keyed by `IpAddr`, ours by [`LimitKey::ip`]);
//! * **text**: the text keys of user ids, API keys and sessions, here `u:` and 32 hex digits
//!   as [`LimitKey::hashed`] (and so `Key::user` and `Key::header`) builds them (governor keyed
//!   by `String` holding the same text, ours by the [`LimitKey`]).
//!
//! governor hashes its keys with SipHash (the standard `RandomState`).
//!
//! The quotas are large enough that the 100k-key runs are dominated by admissions (state
//! written), which is the expensive path:
//!
//! * governor: 1 000 000 000 per second (burst = rate), GCRA;
//! * governor 10/min saturated: `per_minute(10)`, every key's burst used up beforehand, so
//!   nearly every decision is a refusal (the baseline of the saturated window);
//! * ours, GCRA: `Quota::rate(1_000_000_000, 1 s).burst(1_000_000_000)`;
//! * ours, window: `Quota::window(10, 1 ms)`, an exact log of the last 10 admissions per key
//!   (each 100k-key visit is >1 ms after the previous one, so all are admitted and a key holds
//!   one live admission; with 1 key most are refused after the window fills);
//! * ours, window saturated: `Quota::per_minute(10)`: every key holds its 10 live admissions
//!   (filled beforehand) and nearly every decision is a refusal that reads them (the heaviest
//!   window state).
//!
//! After the criterion cases, the bench prints same-run ratios measured by interleaving short
//! slices of each limiter (robust to the load of other processes on a shared machine);
//! `RATIOS_ONLY=1` prints only those, `RATIOS_FILTER=TEXT` only the rows whose title contains
//! TEXT (e.g. `RATIOS_FILTER="100000 keys, text"`).
//!
//! The memory backend is bounded at 262 144 keys (no eviction happens at 100k keys).
//! A throughput line is printed per case: criterion's "thrpt" in decisions per second.

use std::hash::Hash;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use governor::{Quota as GQuota, RateLimiter};
use tower_rampart::rate_limit::{KeyedLimiter, LimitKey, MemoryBackend, Quota};

const MAX_KEYS: usize = 1 << 18;

/// Scattered visiting order (multiplicative step modulo n).
fn scattered(n: usize) -> impl Iterator<Item = u64> {
    (0..n).map(move |i| (i as u64 * 2_654_435_761) % n as u64)
}

fn ips(n: usize) -> Vec<IpAddr> {
    scattered(n)
        .map(|j| IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32 + j as u32)))
        .collect()
}

/// `u:` and 32 hex digits, as `LimitKey::hashed("u", user id)` makes them.
fn texts(n: usize) -> Vec<String> {
    scattered(n)
        .map(|j| LimitKey::hashed("u", format!("user-{j}").as_bytes()).to_string())
        .collect()
}

/// The two kinds of keys: governor's keys of one type, and ours.
enum Keys {
    Ip(Arc<Vec<IpAddr>>),
    Text(Arc<Vec<String>>),
}

impl Keys {
    /// Each kind with its `LimitKey`s, and a copy of those built apart (see [`rampart_job`]).
    fn kinds(n: usize) -> [(&'static str, Keys, OurKeys); 2] {
        let ip = ips(n);
        let ip_lk: Arc<Vec<LimitKey>> = Arc::new(ip.iter().map(|a| LimitKey::ip(*a)).collect());
        let text = texts(n);
        let build = || -> Arc<Vec<LimitKey>> {
            Arc::new(text.iter().map(|t| LimitKey::new(t.as_str())).collect())
        };
        let text_lk: OurKeys = (build(), build());
        [
            ("ip", Keys::Ip(Arc::new(ip)), (ip_lk.clone(), ip_lk)),
            ("text", Keys::Text(Arc::new(text)), text_lk),
        ]
    }

    /// A governor keyed limiter over these keys; filled up first if `saturate`.
    fn governor(&self, quota: GQuota, threads: usize, saturate: bool) -> Job {
        match self {
            Keys::Ip(k) => governor_job(k.clone(), quota, threads, saturate),
            Keys::Text(k) => governor_job(k.clone(), quota, threads, saturate),
        }
    }
}

/// Our keys: the ones decided on, and equal keys built apart that the backend stores.
type OurKeys = (Arc<Vec<LimitKey>>, Arc<Vec<LimitKey>>);

/// A benchmark body: `(thread index, decisions to make)`.
type Job = Arc<dyn Fn(usize, u64) + Send + Sync>;

fn governor_job<K>(keys: Arc<Vec<K>>, quota: GQuota, threads: usize, saturate: bool) -> Job
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    let g = RateLimiter::keyed(quota);
    if saturate {
        for _ in 0..11 {
            for k in keys.iter() {
                black_box(g.check_key(k).is_ok());
            }
        }
    }
    Arc::new(move |t: usize, per: u64| {
        let n = keys.len();
        for i in 0..per as usize {
            black_box(g.check_key(&keys[(i * threads + t) % n]).is_ok());
        }
    })
}

/// Our limiter. Its first decision for each key (11 if `saturate`) is made with an equal key
/// built apart, so that the backend stores its own copy, as it does from the first request of
/// a client: a text key decided on later is compared byte by byte, as a fresh request's key
/// is (not found equal by its address).
fn rampart_job(keys: &OurKeys, quota: Quota, threads: usize, saturate: bool) -> Job {
    let limiter: KeyedLimiter = MemoryBackend::builder()
        .max_keys(MAX_KEYS)
        .build()
        .keyed("bench", quota)
        .unwrap();
    let (keys, first) = (keys.0.clone(), &keys.1);
    for _ in 0..if saturate { 11 } else { 1 } {
        for k in first.iter() {
            black_box(limiter.check(k).is_allowed());
        }
    }
    Arc::new(move |t: usize, per: u64| {
        let n = keys.len();
        for i in 0..per as usize {
            black_box(limiter.check(&keys[(i * threads + t) % n]).is_allowed());
        }
    })
}

fn governor_fast() -> GQuota {
    GQuota::per_second(NonZeroU32::new(1_000_000_000).unwrap())
}

fn governor_per_minute() -> GQuota {
    GQuota::per_minute(NonZeroU32::new(10).unwrap())
}

/// Our cases: (label, quota, filled up beforehand).
fn ours() -> [(&'static str, Quota, bool); 3] {
    [
        (
            "GCRA",
            Quota::rate(1_000_000_000, Duration::from_secs(1)).burst(1_000_000_000),
            false,
        ),
        (
            "window N=10",
            Quota::window(10, Duration::from_millis(1)),
            false,
        ),
        ("window N=10 saturated", Quota::per_minute(10), true),
    ]
}

/// The limiters of one case, governor's two first.
fn jobs(keys: &Keys, lk: &OurKeys, threads: usize) -> Vec<(String, Job)> {
    let mut runs = vec![
        (
            "governor".to_string(),
            keys.governor(governor_fast(), threads, false),
        ),
        (
            "governor 10/min saturated".to_string(),
            keys.governor(governor_per_minute(), threads, true),
        ),
    ];
    for (label, quota, saturate) in ours() {
        runs.push((
            format!("rampart {label}"),
            rampart_job(lk, quota, threads, saturate),
        ));
    }
    runs
}

/// Runs `iters` decisions split over `threads` threads; returns the wall time.
fn run_parallel<F>(iters: u64, threads: usize, f: Arc<F>) -> Duration
where
    F: Fn(usize, u64) + Send + Sync + ?Sized + 'static,
{
    let per = iters / threads as u64 + 1;
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let f = f.clone();
            s.spawn(move || f(t, per));
        }
    });
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    for &n_keys in &[1usize, 100_000] {
        for (kind, keys, lk) in Keys::kinds(n_keys) {
            for &threads in &[1usize, 2] {
                let mut group =
                    c.benchmark_group(format!("memory/{n_keys}keys/{kind}/{threads}thr"));
                group.throughput(Throughput::Elements(1));
                for (label, run) in jobs(&keys, &lk, threads) {
                    group.bench_function(label, |b| {
                        b.iter_custom(|iters| run_parallel(iters, threads, run.clone()))
                    });
                }
                group.finish();
            }
        }
    }
}

/// Same-run ratios measured by interleaving: short alternating slices of each limiter, so
/// that load from other processes (this machine is shared) hits all of them alike. Ratios are
/// against governor (1e9/s); the saturated window also against governor 10/min saturated.
fn interleaved() {
    const SLICE: u64 = 200_000;
    const ROUNDS: usize = 30;
    println!("\ninterleaved ratios ({ROUNDS} rounds of {SLICE} decisions per limiter and case):");
    // RATIOS_FILTER=TEXT keeps the rows whose title ("100000 keys, text, 1 thr") contains TEXT.
    let filter = std::env::var("RATIOS_FILTER").unwrap_or_default();
    for &n_keys in &[1usize, 100_000] {
        for (kind, keys, lk) in Keys::kinds(n_keys) {
            for &threads in &[1usize, 2] {
                if !format!("{n_keys} keys, {kind}, {threads} thr").contains(filter.as_str()) {
                    continue;
                }
                let runs = jobs(&keys, &lk, threads);
                let mut spent = vec![Duration::ZERO; runs.len()];
                for round in 0..=ROUNDS {
                    for (i, (_, f)) in runs.iter().enumerate() {
                        let d = run_parallel(SLICE, threads, f.clone());
                        if round > 0 {
                            spent[i] += d; // round 0 warms up (inserts the keys)
                        }
                    }
                }
                let rate = |d: Duration| (SLICE * ROUNDS as u64) as f64 / d.as_secs_f64();
                let (base, base_min) = (rate(spent[0]), rate(spent[1]));
                print!(
                    "  {n_keys:>6} keys, {kind:>4}, {threads} thr: governor {:>5.2} M/s, 10/min {:>5.2} M/s",
                    base / 1e6,
                    base_min / 1e6
                );
                for (i, (label, _)) in runs.iter().enumerate().skip(2) {
                    let r = rate(spent[i]);
                    print!(" | {label} {:>5.2} M/s = {:.2}x", r / 1e6, r / base);
                    if label.ends_with("saturated") {
                        print!(" ({:.2}x of 10/min)", r / base_min);
                    }
                }
                println!();
            }
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(700))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = bench
}

fn main() {
    // RATIOS_ONLY=1 skips the criterion cases.
    if std::env::var_os("RATIOS_ONLY").is_some() {
        interleaved();
        return;
    }
    benches();
    // `cargo bench -- <filter>` runs only the criterion cases; the interleaved ratios run when
    // no filter is given.
    if !std::env::args().skip(1).any(|a| !a.starts_with('-')) {
        interleaved();
    }
    Criterion::default().configure_from_args().final_summary();
}
