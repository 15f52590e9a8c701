//! The cost of the metrics (feature `opentelemetry`): the full layer stack with a real SDK
//! recording every instrument, the same stack with no provider (the API's no-op
//! instruments), and a bare handler, measured in the same run.
//!
//! ```text
//! cargo bench --bench telemetry
//! ```
//!
//! The stack, outermost first: correlation id (HTTP server metrics), rate limit (memory
//! backend, a per-IP and a global quota, never refusing here), cookie policy, sessions
//! (memory store; the request carries a session cookie and the handler reads the session:
//! one store call, timed). "On" builds every layer with `.meter(..)` from an SDK
//! `SdkMeterProvider` (a periodic reader into an in-memory exporter, which does not export
//! during the run; the SDK aggregates every measurement as it is recorded); "off" builds
//! them with no provider installed. Client addresses rotate over 256 IPs. The interleaved
//! table also runs the stack with one layer recording at a time, to show where the cost is.
//!
//! Two tracing settings: no subscriber (the layers' mechanics alone: the worst case for the
//! ratio) and the production JSON subscriber writing to a sink (the access log and spans
//! included, as in the gateway).
//!
//! After the criterion cases it prints same-run ratios measured by interleaving short slices
//! of each variant (robust to the load of other processes on a shared machine);
//! `RATIOS_ONLY=1` prints only those.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use http::{Request, Response, header};
use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use tower::{Layer, Service, service_fn};
use tower_rampart::cookie_policy::{CookiePolicy, CookiePolicyLayer};
use tower_rampart::correlation::CorrelationIdLayer;
use tower_rampart::net::PeerAddr;
use tower_rampart::rate_limit::{Key, Quota, RateLimitLayer};
use tower_rampart::session::{MemoryStore, Session, SessionConfig, SessionLayer};

/// Polls a future that is ready at once (the memory backends answer synchronously). Must
/// run inside the runtime context (`rt.enter()`): store calls are bounded by a Tokio timeout.
fn now<F: Future>(future: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the benchmarked service was not ready at once"),
    }
}

/// The handler: reads `n` from the session when there is one.
fn handler() -> impl Service<Request<()>, Response = Response<String>, Error = Infallible> + Clone {
    service_fn(|req: Request<()>| async move {
        let body = match req.extensions().get::<Session>().cloned() {
            Some(s) => s.get::<u64>("n").await.unwrap().unwrap_or(0).to_string(),
            None => "hello".to_owned(),
        };
        Ok::<_, Infallible>(Response::new(body))
    })
}

/// The full stack; the correlation, rate limit and session layers on the meter given for
/// each (else the global provider's: none).
fn stack(
    [m_correlation, m_limits, m_sessions]: [Option<Meter>; 3],
) -> (
    impl Service<Request<()>, Response = Response<impl Sized>, Error = Infallible>,
    String,
) {
    let mut correlation = CorrelationIdLayer::new();
    let mut limits = RateLimitLayer::builder()
        .quota("ip", Quota::per_minute(1_000_000_000), Key::peer_ip())
        .quota("all", Quota::per_minute(1_000_000_000), Key::global());
    let mut sessions =
        SessionConfig::builder().key(b"benchmark key, at least thirty-two bytes long");
    if let Some(meter) = m_correlation {
        correlation = correlation.meter(meter);
    }
    if let Some(meter) = m_limits {
        limits = limits.meter(meter);
    }
    if let Some(meter) = m_sessions {
        sessions = sessions.meter(meter);
    }
    let session_layer = SessionLayer::new(MemoryStore::new(), sessions.build().unwrap());
    let cookie = session_cookie(&session_layer);
    let svc = correlation.layer(limits.build().unwrap().layer(
        CookiePolicyLayer::new(CookiePolicy::strict()).layer(session_layer.layer(handler())),
    ));
    (svc, cookie)
}

/// A session cookie (`name=value`) created through `layer`, holding `n`.
fn session_cookie(layer: &SessionLayer) -> String {
    let mut svc = layer.layer(service_fn(|req: Request<()>| async move {
        let s = req.extensions().get::<Session>().cloned().unwrap();
        s.insert("n", 7u64).await.unwrap();
        s.insert("user", "someone@example.com").await.unwrap();
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    let res = now(svc.call(Request::new(()))).unwrap();
    let set_cookie = res.headers()[header::SET_COOKIE].to_str().unwrap();
    set_cookie.split(';').next().unwrap().to_owned()
}

fn request(i: u32, cookie: &str) -> Request<()> {
    let mut req = Request::get("/api/items?page=2")
        .header("x-correlation-id", "bench-1234")
        .header("host", "example.com")
        .header(header::COOKIE, cookie)
        .body(())
        .unwrap();
    let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, (i % 256) as u8));
    req.extensions_mut()
        .insert(PeerAddr(SocketAddr::new(ip, 40000)));
    req
}

/// A meter provider of the bench's own, with the exporter it flushes into.
fn sdk() -> (SdkMeterProvider, InMemoryMetricExporter) {
    let exporter = InMemoryMetricExporter::default();
    let reader = PeriodicReader::builder(exporter.clone()).build();
    (
        SdkMeterProvider::builder().with_reader(reader).build(),
        exporter,
    )
}

/// The `http.server.request.duration` count the SDK has (checks "on" really records).
fn recorded_requests(provider: &SdkMeterProvider, exporter: &InMemoryMetricExporter) -> u64 {
    exporter.reset();
    provider.force_flush().unwrap();
    let exported = exporter.get_finished_metrics().unwrap();
    let mut count = 0;
    for rm in exported.last().into_iter() {
        for scope in rm.scope_metrics() {
            for metric in scope.metrics() {
                if metric.name() == tower_rampart::telemetry::HTTP_SERVER_REQUEST_DURATION
                    && let AggregatedMetrics::F64(MetricData::Histogram(h)) = metric.data()
                {
                    count += h.data_points().map(|p| p.count()).sum::<u64>();
                }
            }
        }
    }
    count
}

/// The three variants: bare handler, stack without provider, stack with the SDK.
struct Variants<B, S> {
    bare: B,
    off: S,
    on: S,
    /// One layer recording (on a provider of its own), the others not: where the cost is.
    one_layer: Vec<(&'static str, S, String)>,
    _one_layer_provider: SdkMeterProvider,
    cookie_off: String,
    cookie_on: String,
    provider: SdkMeterProvider,
    exporter: InMemoryMetricExporter,
}

fn variants() -> Variants<
    impl Service<Request<()>, Response = Response<String>, Error = Infallible>,
    impl Service<Request<()>, Response = Response<impl Sized>, Error = Infallible>,
> {
    {
        let (provider, exporter) = sdk();
        let meter = provider.meter("tower-rampart");
        let (off, cookie_off) = stack([None, None, None]);
        let (on, cookie_on) = stack([Some(meter.clone()), Some(meter.clone()), Some(meter)]);
        let (one_layer_provider, _) = sdk();
        let m = || Some(one_layer_provider.meter("tower-rampart"));
        let one_layer = [
            ("correlation", stack([m(), None, None])),
            ("rate limit", stack([None, m(), None])),
            ("sessions", stack([None, None, m()])),
        ]
        .into_iter()
        .map(|(label, (svc, cookie))| (label, svc, cookie))
        .collect();
        Variants {
            bare: handler(),
            off,
            on,
            one_layer,
            _one_layer_provider: one_layer_provider,
            cookie_off,
            cookie_on,
            provider,
            exporter,
        }
    }
}

fn run<S, R>(svc: &mut S, cookie: &str, n: u32)
where
    S: Service<Request<()>, Response = R, Error = Infallible>,
{
    for i in 0..n {
        black_box(now(svc.call(black_box(request(i, cookie)))).unwrap());
    }
}

fn criterion_cases<B, S, R>(c: &mut Criterion, v: &mut Variants<B, S>, label: &str)
where
    B: Service<Request<()>, Response = Response<String>, Error = Infallible>,
    S: Service<Request<()>, Response = R, Error = Infallible>,
{
    let mut group = c.benchmark_group(format!("telemetry/{label}"));
    let mut i = 0u32;
    group.bench_function("bare handler", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            now(v.bare.call(black_box(request(i, "")))).unwrap()
        })
    });
    group.bench_function("full stack, metrics off (no provider)", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            now(v.off.call(black_box(request(i, &v.cookie_off)))).unwrap()
        })
    });
    group.bench_function("full stack, metrics on (SDK)", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            now(v.on.call(black_box(request(i, &v.cookie_on)))).unwrap()
        })
    });
    group.finish();
}

/// Same-run ratios by interleaving short slices of each variant.
fn interleaved<B, S, R>(v: &mut Variants<B, S>, label: &str)
where
    B: Service<Request<()>, Response = Response<String>, Error = Infallible>,
    S: Service<Request<()>, Response = R, Error = Infallible>,
{
    const SLICE: u32 = 20_000;
    const ROUNDS: usize = 20;
    let n = 3 + v.one_layer.len();
    let mut spent = vec![Duration::ZERO; n];
    for round in 0..=ROUNDS {
        for (k, spent) in spent.iter_mut().enumerate() {
            let started = Instant::now();
            match k {
                0 => run(&mut v.bare, "", SLICE),
                1 => run(&mut v.off, &v.cookie_off.clone(), SLICE),
                2 => run(&mut v.on, &v.cookie_on.clone(), SLICE),
                _ => {
                    let (_, svc, cookie) = &mut v.one_layer[k - 3];
                    let cookie = cookie.clone();
                    run(svc, &cookie, SLICE)
                }
            }
            if round > 0 {
                *spent += started.elapsed(); // round 0 warms up
            }
        }
    }
    let per = |d: Duration| d.as_nanos() as f64 / (f64::from(SLICE) * ROUNDS as f64);
    let rate = |d: Duration| 1e9 / per(d);
    let (bare, off, on) = (spent[0], spent[1], spent[2]);
    println!(
        "  {label}: bare {:.0} ns ({:.2} M/s) | off {:.0} ns ({:.0} k/s) | on {:.0} ns ({:.0} k/s) | \
         on/off throughput {:.3}x | off/bare throughput {:.3}x",
        per(bare),
        rate(bare) / 1e6,
        per(off),
        rate(off) / 1e3,
        per(on),
        rate(on) / 1e3,
        rate(on) / rate(off),
        rate(off) / rate(bare),
    );
    print!("    only one layer recording, extra ns per request over off:");
    for (k, (layer, _, _)) in v.one_layer.iter().enumerate() {
        print!(" {layer} {:+.0}", per(spent[k + 3]) - per(off));
    }
    println!(" (all three: {:+.0})", per(on) - per(off));
    sdk_floor(per(off));
}

/// The SDK's own price for what one "on" request records, measured alone on a provider like
/// the bench's: three histogram records with the layers' attribute shapes (HTTP duration:
/// method and status; decision duration: backend; store call: operation and outcome) and the
/// three clock readings pairs that time them. No layer can record those three durations for
/// less; printed beside the budget the 0.95x goal leaves.
fn sdk_floor(off_ns: f64) {
    use opentelemetry::KeyValue;
    const N: u32 = 400_000;
    let (provider, _exporter) = sdk();
    let meter = provider.meter("floor");
    let http = meter
        .f64_histogram("http.server.request.duration")
        .with_unit("s")
        .with_boundaries(vec![
            0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
        ])
        .build();
    let fast = || {
        vec![
            0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01,
            0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
        ]
    };
    let decision = meter
        .f64_histogram("rampart.rate_limit.decision.duration")
        .with_unit("s")
        .with_boundaries(fast())
        .build();
    let store = meter
        .f64_histogram("rampart.session.store.duration")
        .with_unit("s")
        .with_boundaries(fast())
        .build();
    let method = KeyValue::new("http.request.method", "GET");
    let backend = [KeyValue::new("rampart.rate_limit.backend", "memory")];
    let call = [
        KeyValue::new("rampart.session.operation", "load"),
        KeyValue::new("rampart.session.outcome", "ok"),
    ];
    let mut best = f64::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        for _ in 0..N {
            let t = Instant::now();
            let d = Instant::now();
            decision.record(black_box(d.elapsed().as_secs_f64()), &backend);
            let s = Instant::now();
            store.record(black_box(s.elapsed().as_secs_f64()), &call);
            let attrs = [
                method.clone(),
                KeyValue::new("http.response.status_code", black_box(200_i64)),
            ];
            http.record(black_box(t.elapsed().as_secs_f64()), &attrs);
        }
        best = best.min(started.elapsed().as_nanos() as f64 / f64::from(N));
    }
    println!(
        "    SDK floor (3 histogram records and their 3 clock pairs, alone): {best:.0} ns per \
         request; the 0.95x goal allows {:.0} ns over off",
        off_ns / 0.95 - off_ns
    );
}

fn with_subscriber<R>(json: bool, f: impl FnOnce() -> R) -> R {
    if json {
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_writer(std::io::sink)
            .finish();
        tracing::subscriber::with_default(subscriber, f)
    } else {
        tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), f)
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _enter = rt.enter();
    for (json, label) in [(false, "no subscriber"), (true, "JSON log to a sink")] {
        with_subscriber(json, || {
            let mut v = variants();
            criterion_cases(c, &mut v, label);
        });
    }
}

fn ratios() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _enter = rt.enter();
    println!("\ninterleaved (20 rounds of 20 000 requests per variant):");
    for (json, label) in [(false, "no subscriber"), (true, "JSON log to a sink")] {
        with_subscriber(json, || {
            let mut v = variants();
            interleaved(&mut v, label);
            let recorded = recorded_requests(&v.provider, &v.exporter);
            assert_eq!(
                recorded,
                21 * 20_000,
                "the SDK recorded every request of the \"on\" variant"
            );
        });
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
    if std::env::var_os("RATIOS_ONLY").is_none() {
        benches();
    }
    // `cargo bench -- <filter>` runs only the criterion cases.
    if !std::env::args().skip(1).any(|a| !a.starts_with('-')) {
        ratios();
    }
    Criterion::default().configure_from_args().final_summary();
}
