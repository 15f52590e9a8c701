//! Memory backend decisions per second against `governor`'s keyed limiter, measured in the same
//! run: 1 key and 100 000 keys, 1 and 2 threads, both meanings of a quota.
//!
//! ```text
//! cargo bench --bench rate_limit_memory
//! ```
//!
//! Every limiter reads its own clock on each decision (governor: quanta's TSC clock; ours: the
//! system clock), hashes the key with SipHash (both use the standard `RandomState`), and keys
//! are client IPv4 addresses visited in a scattered order. The quotas are large enough that the
//! 100k-key runs are dominated by admissions (state written), which is the expensive path:
//!
//! * governor: 1 000 000 000 per second (burst = rate), GCRA;
//! * ours, GCRA: `Quota::rate(1_000_000_000, 1 s).burst(1_000_000_000)`;
//! * ours, window: `Quota::window(10, 1 ms)`, an exact log of the last 10 admissions per key
//!   (each 100k-key visit is >1 ms after the previous one, so all are admitted and a key holds
//!   one live admission; with 1 key most are refused after the window fills);
//! * ours, window saturated: `Quota::per_minute(10)`: every key holds its 10 live admissions
//!   and nearly every decision is a refusal that reads them (the heaviest window state).
//!
//! After the criterion cases, the bench prints same-run ratios measured by interleaving short
//! slices of each limiter (robust to the load of other processes on a shared machine);
//! `RATIOS_ONLY=1` prints only those.
//!
//! The memory backend is bounded at 262 144 keys (no eviction happens at 100k keys).
//! A throughput line is printed per case: criterion's "thrpt" in decisions per second.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use governor::{Quota as GQuota, RateLimiter};
use tower_rampart::rate_limit::{KeyedLimiter, LimitKey, MemoryBackend, Quota};

const MAX_KEYS: usize = 1 << 18;

fn ips(n: usize) -> Vec<IpAddr> {
    // Scattered visiting order (multiplicative step modulo n).
    (0..n)
        .map(|i| {
            let j = (i as u64 * 2_654_435_761) % n as u64;
            IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32 + j as u32))
        })
        .collect()
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
        let keys = Arc::new(ips(n_keys));
        let limit_keys: Arc<Vec<LimitKey>> =
            Arc::new(keys.iter().map(|ip| LimitKey::ip(*ip)).collect());
        for &threads in &[1usize, 2] {
            let mut group = c.benchmark_group(format!("memory/{n_keys}keys/{threads}thr"));
            group.throughput(Throughput::Elements(1));

            let governor = Arc::new(RateLimiter::keyed(GQuota::per_second(
                NonZeroU32::new(1_000_000_000).unwrap(),
            )));
            let keys_g = keys.clone();
            let g = governor.clone();
            let run_g = Arc::new(move |t: usize, per: u64| {
                let n = keys_g.len();
                for i in 0..per as usize {
                    let k = &keys_g[(i * threads + t) % n];
                    black_box(g.check_key(k).is_ok());
                }
            });
            group.bench_function("governor keyed (GCRA)", |b| {
                b.iter_custom(|iters| run_parallel(iters, threads, run_g.clone()))
            });

            let ours = |quota: Quota| -> KeyedLimiter {
                MemoryBackend::builder()
                    .max_keys(MAX_KEYS)
                    .build()
                    .keyed("bench", quota)
                    .unwrap()
            };
            for (label, quota) in [
                (
                    "rampart GCRA",
                    Quota::rate(1_000_000_000, Duration::from_secs(1)).burst(1_000_000_000),
                ),
                (
                    "rampart window N=10",
                    Quota::window(10, Duration::from_millis(1)),
                ),
                ("rampart window N=10 saturated", Quota::per_minute(10)),
            ] {
                let limiter = ours(quota);
                let lk = limit_keys.clone();
                let run = Arc::new(move |t: usize, per: u64| {
                    let n = lk.len();
                    for i in 0..per as usize {
                        let k = &lk[(i * threads + t) % n];
                        black_box(limiter.check(k).is_allowed());
                    }
                });
                group.bench_function(label, |b| {
                    b.iter_custom(|iters| run_parallel(iters, threads, run.clone()))
                });
            }
            group.finish();
            drop(governor);
        }
    }
}

/// A benchmark body: `(thread index, decisions to make)`.
type Job = Arc<dyn Fn(usize, u64) + Send + Sync>;

/// Same-run ratios measured by interleaving: short alternating slices of each limiter, so
/// that load from other processes (this machine is shared) hits all of them alike.
fn interleaved() {
    const SLICE: u64 = 200_000;
    const ROUNDS: usize = 30;
    println!("\ninterleaved ratios ({ROUNDS} rounds of {SLICE} decisions per limiter and case):");
    for &n_keys in &[1usize, 100_000] {
        let keys = Arc::new(ips(n_keys));
        let limit_keys: Arc<Vec<LimitKey>> =
            Arc::new(keys.iter().map(|ip| LimitKey::ip(*ip)).collect());
        for &threads in &[1usize, 2] {
            let governor = Arc::new(RateLimiter::keyed(GQuota::per_second(
                NonZeroU32::new(1_000_000_000).unwrap(),
            )));
            let (g, kg) = (governor.clone(), keys.clone());
            let run_g: Job = Arc::new(move |t: usize, per: u64| {
                let n = kg.len();
                for i in 0..per as usize {
                    black_box(g.check_key(&kg[(i * threads + t) % n]).is_ok());
                }
            });
            let mut runs: Vec<(&str, Job)> = vec![("governor", run_g)];
            for (label, quota) in [
                (
                    "GCRA",
                    Quota::rate(1_000_000_000, Duration::from_secs(1)).burst(1_000_000_000),
                ),
                ("window N=10", Quota::window(10, Duration::from_millis(1))),
                ("window N=10 saturated", Quota::per_minute(10)),
            ] {
                let limiter = MemoryBackend::builder()
                    .max_keys(MAX_KEYS)
                    .build()
                    .keyed("bench", quota)
                    .unwrap();
                let lk = limit_keys.clone();
                runs.push((
                    label,
                    Arc::new(move |t: usize, per: u64| {
                        let n = lk.len();
                        for i in 0..per as usize {
                            black_box(limiter.check(&lk[(i * threads + t) % n]).is_allowed());
                        }
                    }),
                ));
            }
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
            let base = rate(spent[0]);
            print!(
                "  {n_keys:>6} keys, {threads} thr: governor {:>5.2} M/s",
                base / 1e6
            );
            for (i, (label, _)) in runs.iter().enumerate().skip(1) {
                let r = rate(spent[i]);
                print!(" | rampart {label} {:>5.2} M/s = {:.2}x", r / 1e6, r / base);
            }
            println!();
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
