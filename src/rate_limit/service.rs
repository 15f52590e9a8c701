//! The tower layer, its service and response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::builder::RateLimitBuilder;
use super::config::ResetError;
use super::engine::DecisionFuture;
use super::key::LimitKey;
use super::metrics::RateLimitMetrics;
use super::pipeline::{Plan, Settled, Shared};
use super::response::{RATELIMIT_NAME, RATELIMIT_POLICY_NAME, RateLimitBody, is_grpc};

/// Rate limiting layer: checks every request's quotas in one atomic step and answers 429
/// itself when one is used up. See the [module docs](super).
///
/// ```
/// use tower::ServiceBuilder;
/// use tower_rampart::rate_limit::{Key, Quota, RateLimitLayer};
///
/// let limits = RateLimitLayer::builder()
///     .quota("ip", Quota::per_minute(10), Key::peer_ip())
///     .build()
///     .unwrap();
/// let service = ServiceBuilder::new()
///     .layer(limits)
///     .service_fn(|_req: http::Request<String>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
///     });
/// # let _ = service;
/// ```
#[derive(Clone)]
pub struct RateLimitLayer {
    pub(super) shared: Arc<Shared>,
}

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("shared", &self.shared)
            .finish()
    }
}

impl RateLimitLayer {
    /// Starts a configuration.
    pub fn builder() -> RateLimitBuilder {
        RateLimitBuilder::new()
    }

    /// The decision counters so far.
    pub fn metrics(&self) -> RateLimitMetrics {
        self.shared.counters.snapshot()
    }

    /// Forgets the state of this layer's quota `name` for `key`: the client's next request
    /// is admitted with a full quota. For support staff unblocking a customer; `key` is the
    /// [`LimitKey`] the quota's key extractor yields for that client (e.g.
    /// [`LimitKey::ip`] for [`Key::client_ip`](super::Key::client_ip)).
    ///
    /// Resets the backend that decides ([`MemoryBackend::reset`](super::MemoryBackend::reset)
    /// or [`RedisBackend::reset`](super::RedisBackend::reset), whose docs say what other
    /// instances do until their cached denials expire) and also the in-process backend of
    /// [`FailureMode::Local`](super::FailureMode::Local), so that a client refused while
    /// Redis was unreachable is unblocked too (that one is reset even if Redis then
    /// fails). Returns whether any state was held for that
    /// key (`Ok(false)` for a client never seen). Layers and backends sharing state with
    /// this one see the reset too. An error for a name that is not one of this layer's
    /// quotas, or when Redis cannot be reached.
    ///
    /// ```
    /// use tower_rampart::rate_limit::{Key, LimitKey, Quota, RateLimitLayer, ResetError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let layer = RateLimitLayer::builder()
    ///     .quota("ip", Quota::per_minute(10), Key::peer_ip())
    ///     .build()?;
    /// let customer = LimitKey::ip("203.0.113.7".parse()?);
    /// // Never seen: nothing to forget, and not an error.
    /// assert!(!layer.reset("ip", &customer).await?);
    /// assert!(matches!(
    ///     layer.reset("login", &customer).await,
    ///     Err(ResetError::UnknownQuota { .. })
    /// ));
    /// # Ok(()) }
    /// ```
    pub async fn reset(&self, name: &str, key: &LimitKey) -> Result<bool, ResetError> {
        self.shared.reset(name, key).await
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Middleware of [`RateLimitLayer`].
#[derive(Clone)]
pub struct RateLimitService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for RateLimitService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitService")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S> RateLimitService<S> {
    /// The decision counters so far.
    pub fn metrics(&self) -> RateLimitMetrics {
        self.shared.counters.snapshot()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimitService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
{
    type Response = Response<RateLimitBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is the inner service's: per-client limits are decided in `call` and
        // answered with a 429, never by withholding readiness.
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let (parts, body) = req.into_parts();
        let head = Request::from_parts(parts, ());
        let grpc = is_grpc(head.headers());
        let plan = self.shared.plan(&head);
        let (parts, ()) = head.into_parts();
        let mut req = Request::from_parts(parts, body);
        let verdict = match plan {
            Plan::Done(v) => v,
            Plan::Check(checks) => match self.shared.decide_now(&checks) {
                Some(v) => v,
                None => {
                    // The decision needs a Redis round trip before the inner call: move the
                    // service that `poll_ready` prepared into the future and leave a fresh
                    // clone behind (the clone is made ready by the next `poll_ready`).
                    let clone = self.inner.clone();
                    let ready = std::mem::replace(&mut self.inner, clone);
                    return ResponseFuture {
                        state: State::Deciding {
                            decision: self.shared.decide_later(checks),
                            inner: Some(ready),
                            req: Some(req),
                            shared: self.shared.clone(),
                            grpc,
                        },
                    };
                }
            },
        };
        match self.shared.settle(verdict, &mut req, grpc) {
            Settled::Call(headers) => ResponseFuture {
                state: State::Inner {
                    fut: self.inner.call(req),
                    headers,
                },
            },
            Settled::Reject(resp) => ResponseFuture {
                state: State::Reject {
                    response: Some(resp),
                },
            },
        }
    }
}

pin_project! {
    /// Response future of [`RateLimitService`].
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        // The inner service is running; the headers are added to its response.
        Inner {
            #[pin]
            fut: S::Future,
            headers: Option<(HeaderValue, Option<HeaderValue>)>,
        },
        // Waiting for Redis (the only boxed future: the round trip is async work).
        Deciding {
            decision: DecisionFuture,
            inner: Option<S>,
            req: Option<Request<ReqBody>>,
            shared: Arc<Shared>,
            grpc: bool,
        },
        // Refused: the response is ready.
        Reject {
            response: Option<http::Response<Vec<u8>>>,
        },
    }
}

impl<S, ReqBody> fmt::Debug for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Inner { .. } => "inner",
            State::Deciding { .. } => "deciding",
            State::Reject { .. } => "reject",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Output = Result<Response<RateLimitBody<ResBody>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::Inner { fut, headers } => {
                    let resp = ready!(fut.poll(cx))?;
                    let mut resp = resp.map(RateLimitBody::inner);
                    if let Some((policy, status)) = headers.take() {
                        let h = resp.headers_mut();
                        h.append(RATELIMIT_POLICY_NAME, policy);
                        if let Some(s) = status {
                            h.append(RATELIMIT_NAME, s);
                        }
                    }
                    return Poll::Ready(Ok(resp));
                }
                StateProj::Reject { response } => {
                    let resp = response.take().unwrap_or_default();
                    return Poll::Ready(Ok(resp.map(RateLimitBody::full)));
                }
                StateProj::Deciding {
                    decision,
                    inner,
                    req,
                    shared,
                    grpc,
                } => {
                    let verdict = ready!(decision.as_mut().poll(cx));
                    let (Some(mut svc), Some(mut req)) = (inner.take(), req.take()) else {
                        // Polled after completion.
                        return Poll::Pending;
                    };
                    match shared.settle(verdict, &mut req, *grpc) {
                        Settled::Call(headers) => State::Inner {
                            fut: svc.call(req),
                            headers,
                        },
                        Settled::Reject(resp) => State::Reject {
                            response: Some(resp),
                        },
                    }
                }
            };
            self.as_mut().project().state.set(next);
        }
    }
}
