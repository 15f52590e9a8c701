//! Per-request cost of the session layer on `MemoryStore`, against the bare handler measured
//! in the same run: a request that does not touch its session, a read (one load) and a write
//! (load + compare-and-set save, with and without encryption at rest).
//!
//! ```text
//! cargo bench --bench session --features session
//! ```

mod session_common;

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use session_common::{Work, answer, cookie_pair, fill, request};
use tower::{Layer, Service, service_fn};
use tower_rampart::session::{MemoryStore, Session, SessionConfig, SessionLayer};

/// Polls a future that is ready at once: the memory store answers synchronously, so the
/// whole request completes in one poll. Must run inside the runtime context (`rt.enter()`)
/// because store calls are bounded by `tokio::time::timeout`.
fn now<F: Future>(future: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the benchmarked service was not ready at once"),
    }
}

fn handler(
    work: Work,
) -> impl Service<Request<()>, Response = Response<String>, Error = Infallible> + Clone {
    let counter = Arc::new(AtomicU64::new(0));
    service_fn(move |req: Request<()>| {
        let counter = counter.clone();
        async move {
            let session = req.extensions().get::<Session>().cloned();
            let body = answer(work, session, &counter).await;
            Ok::<_, Infallible>(Response::new(body))
        }
    })
}

fn layer(encrypt: bool) -> SessionLayer {
    let config = SessionConfig::builder()
        .key(b"benchmark key, at least thirty-two bytes long")
        .encrypt_at_rest(encrypt)
        .build()
        .unwrap();
    SessionLayer::new(MemoryStore::new(), config)
}

/// A session cookie created through `layer`, holding `n` and a few other small values.
fn session_cookie(layer: &SessionLayer) -> String {
    let mut svc = layer.layer(service_fn(|req: Request<()>| async move {
        let s = req.extensions().get::<Session>().cloned().unwrap();
        fill(&s).await;
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    let res = now(svc.call(Request::new(()))).unwrap();
    cookie_pair(&res)
}

fn session(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut group = c.benchmark_group("session");

    let mut bare = handler(Work::Nothing);
    group.bench_function("bare handler", |b| {
        b.iter(|| now(bare.call(black_box(request(None)))).unwrap())
    });

    let l = layer(true);
    let cookie = session_cookie(&l);
    let mut untouched = l.layer(handler(Work::Nothing));
    group.bench_function("layer, cookie, session untouched", |b| {
        b.iter(|| now(untouched.call(black_box(request(Some(&cookie))))).unwrap())
    });

    let mut read = l.layer(handler(Work::Read));
    group.bench_function("layer, read (1 load)", |b| {
        b.iter(|| now(read.call(black_box(request(Some(&cookie))))).unwrap())
    });

    let mut write = l.layer(handler(Work::Write));
    group.bench_function("layer, write (load + save), encrypted", |b| {
        b.iter(|| now(write.call(black_box(request(Some(&cookie))))).unwrap())
    });

    let plain = layer(false);
    let plain_cookie = session_cookie(&plain);
    let mut write_plain = plain.layer(handler(Work::Write));
    group.bench_function("layer, write (load + save), plaintext", |b| {
        b.iter(|| now(write_plain.call(black_box(request(Some(&plain_cookie))))).unwrap())
    });
    group.finish();
}

criterion_group!(benches, session);
criterion_main!(benches);
