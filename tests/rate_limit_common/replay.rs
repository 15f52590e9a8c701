//! The replay tests of the Redis rate limiter, one body for every topology: memory vs Redis
//! (identical decisions and headers) and batched vs one by one. `tests/rate_limit_redis.rs`
//! runs them on a single server, `tests/rate_limit_cluster.rs` on a Redis Cluster (and with
//! every key in a slot of its own on a single server), `tests/rate_limit_sentinel.rs` behind
//! Redis Sentinel.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use tower::{Service, ServiceExt};
use tower_rampart::clock::ManualClock;
use tower_rampart::rate_limit::{
    Key, Limit, LimitKey, MissingKey, Quota, RateLimitLayer, RedisBackend,
};
use tower_rampart::redis::RedisConfig;

use super::{
    LimitedResponse, Resp, T0, cost_header, header, limited, read, req_from, req_with, send,
};

/// The servers behind a [`Target`]: their command statistics.
pub trait Servers {
    /// Resets every node's command statistics.
    fn reset_stats(&self);
    /// `EVALSHA` calls on every node since the last reset.
    fn evalsha_count(&self) -> u64;
}

impl Servers for rampart_test_support::RedisServer {
    fn reset_stats(&self) {
        rampart_test_support::RedisServer::reset_stats(self);
    }
    fn evalsha_count(&self) -> u64 {
        self.command_count("evalsha")
    }
}

impl Servers for rampart_test_support::RedisCluster {
    fn reset_stats(&self) {
        rampart_test_support::RedisCluster::reset_stats(self);
    }
    fn evalsha_count(&self) -> u64 {
        self.command_count("evalsha")
    }
}

impl Servers for rampart_test_support::RedisSentinel {
    fn reset_stats(&self) {
        rampart_test_support::RedisSentinel::reset_stats(self);
    }
    fn evalsha_count(&self) -> u64 {
        self.command_count("evalsha")
    }
}

/// Where a replay body runs.
pub struct Target<'a> {
    pub config: RedisConfig,
    /// Prefix of every key name.
    pub prefix: String,
    pub servers: &'a dyn Servers,
    /// The most script calls the batching test may take (`None`: printed, not bounded).
    pub most_batch_calls: Option<u64>,
}

/// The parts of a response the replay compares.
pub fn visible(r: &Resp) -> (u16, String, String, String, String) {
    (
        r.0.as_u16(),
        header(&r.1, "retry-after"),
        header(&r.1, "ratelimit"),
        header(&r.1, "ratelimit-policy"),
        r.2.clone(),
    )
}

/// Replays one request trace through a memory layer and a Redis layer driven by the same
/// manual clock: every response (status, Retry-After, RateLimit, RateLimit-Policy, body) must be
/// identical, for both meanings.
pub async fn memory_and_redis_give_identical_responses(config: &RedisConfig, prefix: &str) {
    let quotas = [
        ("window", Quota::per_minute(10)),
        (
            "window-bucketed",
            Quota::window(12, Duration::from_secs(60)).max_slots(4),
        ),
        ("gcra", Quota::rate(10, Duration::from_secs(60)).burst(4)),
        (
            "gcra-odd",
            Quota::rate(7, Duration::from_millis(300_001)).burst(3),
        ),
    ];
    for (name, quota) in quotas {
        let clock = ManualClock::starting_now();
        let memory = RateLimitLayer::builder()
            .quota(name, quota, Key::peer_ip())
            .clock(clock.clone())
            .build()
            .unwrap();
        let conn = config.connect().await.unwrap();
        let backend = RedisBackend::builder(conn)
            .prefix(format!("{prefix}{name}:"))
            .client_clock(clock.clone())
            .build();
        let on_redis = RateLimitLayer::builder()
            .quota(name, quota, Key::peer_ip())
            .backend(backend)
            .clock(clock.clone())
            .build()
            .unwrap();
        let mut a = limited(&memory);
        let mut b = limited(&on_redis);
        let mut next = xorshift(0x1234_5678_9abc_def1u64 ^ name.len() as u64);
        let (mut allowed, mut denied) = (0, 0);
        for step in 0..600 {
            // Bursts and pauses: mostly sub-second steps, sometimes long quiet periods.
            let gap = match next(10) {
                0 => next(30_000_000),
                1..=3 => 0,
                _ => next(1_500_000),
            };
            clock.advance(Duration::from_micros(gap));
            let peer = format!("192.0.2.{}:1", next(3));
            let ra = send(&mut a, req_from(&peer)).await;
            let rb = send(&mut b, req_from(&peer)).await;
            assert_eq!(visible(&ra), visible(&rb), "{name}, step {step}");
            if ra.0 == StatusCode::OK {
                allowed += 1;
            } else {
                denied += 1;
            }
        }
        assert!(
            allowed > 50 && denied > 50,
            "{name}: {allowed} allowed, {denied} denied"
        );
        let m = on_redis.metrics();
        assert_eq!(m.degraded, 0);
        assert!(m.deny_cache_hits > 0, "{name}: the deny cache took part");
    }
}

/// Several quotas per request (a window per IP, a GCRA per user, a bucketed global window),
/// random costs: the all-or-nothing script and the memory backend give identical responses.
pub async fn multi_quota_traces_are_identical(config: &RedisConfig, prefix: &str) {
    let clock = ManualClock::starting_now();
    let conn = config.connect().await.unwrap();
    // No deny cache here: with costs above 1 its Retry-After is a lower bound, not the exact
    // value (the other replay covers the cache).
    let backend = RedisBackend::builder(conn)
        .prefix(prefix)
        .client_clock(clock.clone())
        .deny_cache_capacity(0)
        .build();
    let quotas = ThreeQuotas {
        ip: 10,
        user: (6, 3),
        all: 30,
    };
    let mut a = limited(&three_quota_layer(quotas, None, &clock));
    let mut b = limited(&three_quota_layer(quotas, Some(backend), &clock));
    let mut next = xorshift(0x5eed_u64);
    let mut ratelimit_headers = HashMap::new();
    for step in 0..500 {
        clock.advance(Duration::from_micros(match next(6) {
            0 => next(20_000_000),
            1 | 2 => 0,
            _ => next(2_000_000),
        }));
        let (peer, user, cost) = (next(4), next(4), 1 + next(3));
        let ra = send(&mut a, traced_request(peer, user, cost)).await;
        let rb = send(&mut b, traced_request(peer, user, cost)).await;
        assert_eq!(visible(&ra), visible(&rb), "step {step}");
        *ratelimit_headers.entry(visible(&ra).2).or_insert(0) += 1;
    }
    // Each quota refused something: every branch of the script took part.
    for name in ["\"ip\";r=0", "\"user\";r=", "\"all\";r="] {
        assert!(
            ratelimit_headers
                .keys()
                .any(|k| k.starts_with(name) && !k.contains(',')),
            "{name} never refused alone: {ratelimit_headers:?}"
        );
    }
}

/// The limits of [`three_quota_layer`]: per-IP window, per-user GCRA (rate, burst), global
/// window, all per minute.
#[derive(Clone, Copy)]
pub struct ThreeQuotas {
    pub ip: u32,
    pub user: (u32, u32),
    pub all: u32,
}

/// A layer with three quotas (window per IP, GCRA per user when present, global window of 4
/// slots) and the `x-cost` header as cost, on `backend` (memory for `None`), for the
/// comparisons of multi-quota traces.
pub fn three_quota_layer(
    quotas: ThreeQuotas,
    backend: Option<RedisBackend>,
    clock: &ManualClock,
) -> RateLimitLayer {
    let minute = Duration::from_secs(60);
    let (rate, burst) = quotas.user;
    let mut builder = RateLimitLayer::builder()
        .quota("ip", Quota::per_minute(quotas.ip), Key::peer_ip())
        .limit(
            Limit::new(
                "user",
                Quota::rate(rate, minute).burst(burst),
                Key::header("x-user"),
            )
            .on_missing_key(MissingKey::Skip),
        )
        .quota(
            "all",
            Quota::window(quotas.all, minute).max_slots(4),
            Key::global(),
        )
        .cost_with(cost_header)
        .clock(clock.clone());
    if let Some(backend) = backend {
        builder = builder.backend(backend);
    }
    builder.build().unwrap()
}

/// A request of the multi-quota traces: from `198.51.100.{peer}`, as user `u{user}` (no user
/// for 0), costing `cost`.
pub fn traced_request(peer: u64, user: u64, cost: u64) -> Request<Full<Bytes>> {
    let peer = format!("198.51.100.{peer}:1");
    let (user, cost) = (format!("u{user}"), cost.to_string());
    if user == "u0" {
        req_with(&peer, &[("x-cost", &cost)])
    } else {
        req_with(&peer, &[("x-user", &user), ("x-cost", &cost)])
    }
}

/// A small deterministic generator for the random traces: `next(n)` is in `0..n`.
pub fn xorshift(mut state: u64) -> impl FnMut(u64) -> u64 {
    move |n| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    }
}

// ---------------------------------------------------------------------------------------------
// Natural batching: concurrent decisions share script calls.

pub type RespFuture = Pin<Box<dyn Future<Output = LimitedResponse> + Send>>;

/// Starts `requests` on `svc` in order without awaiting them (each future is polled for the
/// first time, in this order, by [`join_in_order`]).
pub async fn start_all<S>(svc: &mut S, requests: Vec<Request<Full<Bytes>>>) -> Vec<RespFuture>
where
    S: Service<
            Request<Full<Bytes>>,
            Response = LimitedResponse,
            Error = Infallible,
            Future: Send + 'static,
        >,
{
    let mut futures = Vec::new();
    for req in requests {
        let fut = svc.ready().await.unwrap().call(req);
        futures.push(Box::pin(async move { fut.await.unwrap() }) as RespFuture);
    }
    futures
}

/// Polls every future, in order, until all are done (a minimal `join_all` that keeps the
/// first-poll order deterministic: that order is the arrival order at the batcher).
pub async fn join_all_in_order<F: Future + Unpin>(mut futures: Vec<F>) -> Vec<F::Output> {
    let mut out: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        for (f, o) in futures.iter_mut().zip(out.iter_mut()) {
            if o.is_none()
                && let Poll::Ready(v) = Pin::new(f).poll(cx)
            {
                *o = Some(v);
            }
        }
        if out.iter().all(Option::is_some) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// [`join_all_in_order`], then reads every response.
pub async fn join_in_order(futures: Vec<RespFuture>) -> Vec<Resp> {
    let mut out = Vec::new();
    for resp in join_all_in_order(futures).await {
        out.push(read(resp).await);
    }
    out
}

/// The acceptance test of natural batching: requests sent concurrently (so that they queue
/// and share script calls, with repeated keys inside one call) get exactly the responses the
/// same requests get when sent one by one, each in its own script call, on the test-only
/// client clock.
pub async fn batch_decides_like_one_by_one(target: &Target<'_>) {
    // A fixed start: the bucketed global window rounds times to 15 s boundaries.
    let clock = ManualClock::new(T0);
    let layer = async |prefix: &str, batching: bool| {
        let conn = target.config.connect().await.unwrap();
        let backend = RedisBackend::builder(conn)
            .prefix(prefix)
            .client_clock(clock.clone())
            .deny_cache_capacity(0)
            .batching(batching)
            .build();
        let quotas = ThreeQuotas {
            ip: 15,
            user: (30, 6),
            all: 60,
        };
        three_quota_layer(quotas, Some(backend), &clock)
    };
    let mut together = limited(&layer(&format!("{}batched:", target.prefix), true).await);
    let mut one_by_one = limited(&layer(&format!("{}single:", target.prefix), false).await);
    // Load the scripts first (a lone request uses the single-request script, a batch the
    // batch script), so that no call of the rounds below is a NOSCRIPT retry.
    let warm = (0..4).map(|_| req_from("192.0.2.200:1")).collect();
    let warm = start_all(&mut together, warm).await;
    for r in join_in_order(warm).await {
        assert_eq!(r.0, StatusCode::OK);
    }
    for _ in 0..4 {
        let _ = send(&mut one_by_one, req_from("192.0.2.200:1")).await;
    }

    let mut next = xorshift(0x0ba7_c4ed_u64);
    let (mut calls, mut requests, mut refused) = (0, 0, 0);
    let mut refusing = HashSet::new();
    for round in 0..8 {
        clock.advance(Duration::from_micros(next(25_000_000)));
        let trace: Vec<(u64, u64, u64)> =
            // One heavy client (its own quota refuses it) among light ones (the global
            // quota refuses them).
            (0..50)
                .map(|_| {
                    let peer = if next(3) == 0 { 0 } else { 1 + next(8) };
                    (peer, next(4), 1 + next(2))
                })
                .collect();
        target.servers.reset_stats();
        let futures = start_all(
            &mut together,
            trace
                .iter()
                .map(|&(p, u, c)| traced_request(p, u, c))
                .collect(),
        )
        .await;
        let concurrent = join_in_order(futures).await;
        calls += target.servers.evalsha_count();
        for (i, &(p, u, c)) in trace.iter().enumerate() {
            let alone = send(&mut one_by_one, traced_request(p, u, c)).await;
            assert_eq!(
                visible(&concurrent[i]),
                visible(&alone),
                "round {round}, request {i}"
            );
            if alone.0 != StatusCode::OK {
                refused += 1;
                refusing.insert(
                    header(&alone.1, "ratelimit")
                        .split(';')
                        .next()
                        .map(str::to_owned),
                );
            }
            requests += 1;
        }
    }
    // The first two requests of a round go out at once, alone, in calls of their own (two
    // calls may be in flight); the other 48 queue and share one call.
    if let Some(most) = target.most_batch_calls {
        assert!(
            calls <= most,
            "{calls} script calls for {requests} requests"
        );
    } else {
        println!("{calls} script calls for {requests} requests");
    }
    assert!(
        refused > 50 && refused < requests - 50,
        "{refused} refused of {requests}: both outcomes took part"
    );
    for name in [r#""ip""#, r#""user""#, r#""all""#] {
        assert!(
            refusing.contains(&Some(name.to_owned())),
            "{name} never refused first: {refusing:?}"
        );
    }
}

/// The raw decisions of the batch scripts and of the single-request scripts agree on random
/// quotas, costs and times (single-quota requests; the multi-quota script is compared above).
/// Each checked batch is queued behind a filler request holding the only call slot, so that
/// it is decided as one batch: one request alone; two on one key (the general batch script,
/// where the second reads the first's write); or two on two keys with one cost (the per-key
/// script of the common batch).
pub async fn batched_and_single_calls_agree(config: &RedisConfig, prefix: &str) {
    let batched = RedisBackend::builder(config.connect().await.unwrap())
        .prefix(format!("{prefix}b:"))
        .max_calls_in_flight(1)
        .build();
    let filler = batched
        .keyed("filler", Quota::rate(1_000, Duration::from_secs(1)))
        .unwrap();
    let filler_key = LimitKey::new("filler");
    let single = RedisBackend::builder(config.connect().await.unwrap())
        .prefix(format!("{prefix}s:"))
        .batching(false)
        .build();
    let mut next = xorshift(0x5ca1_ab1e_u64);
    let mut checked = [0; 3];
    for round in 0..24u64 {
        let window = Duration::from_micros(1_000 + next(3_000_000_000));
        let n = 1 + next(40) as u32;
        let quota = match round % 3 {
            0 => Quota::window(n, window),
            1 => Quota::window(n, window).max_slots(1 + next(8) as u32),
            _ => Quota::rate(n, window).burst(1 + next(12) as u32),
        };
        if quota.validate().is_err() {
            continue;
        }
        let name = format!("q{round}");
        let a = batched.keyed(&name, quota).unwrap();
        let b = single.keyed(&name, quota).unwrap();
        let keys = [
            LimitKey::new(format!("k{round}")),
            LimitKey::new(format!("j{round}")),
        ];
        let mut now = T0 + next(1 << 40);
        let step = (quota.window_length().as_micros() as u64 / u64::from(n)).max(1);
        for _ in 0..60 {
            now += match next(3) {
                0 => 0,
                1 => next(step * 2),
                _ => next(quota.window_length().as_micros() as u64),
            };
            let kind = next(3) as usize;
            let max = quota.burst_size().min(4) + 2;
            // (key index, cost) of each request of the batch, in arrival order.
            let batch = match kind {
                0 => vec![(0, next(max))],
                1 => vec![(0, next(max)), (0, next(max))],
                _ => {
                    let c = next(max);
                    vec![(0, c), (1, c)]
                }
            };
            let mut futures: Vec<Pin<Box<dyn Future<Output = _> + '_>>> =
                vec![Box::pin(filler.check_at(&filler_key, 0, 0))];
            for &(k, c) in &batch {
                futures.push(Box::pin(a.check_at(&keys[k], c, now)));
            }
            let got = join_all_in_order(futures).await;
            for (&(k, c), got) in batch.iter().zip(&got[1..]) {
                let want = b.check_at(&keys[k], c, now).await.unwrap();
                let got = got.as_ref().unwrap();
                assert_eq!(
                    *got, want,
                    "round {round} {quota:?} now {now} batch {batch:?}"
                );
            }
            checked[kind] += 1;
        }
    }
    assert!(checked.iter().all(|&n| n > 250), "{checked:?}");
}
