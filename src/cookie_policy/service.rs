//! The tower layer, service and response future.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{CookiePolicy, SecureMode};

/// Applies a [`CookiePolicy`] to every `Set-Cookie` header of the wrapped service's responses.
///
/// See the [module documentation](super) for an example.
#[derive(Clone, Debug)]
pub struct CookiePolicyLayer {
    policy: Arc<CookiePolicy>,
}

impl CookiePolicyLayer {
    /// A layer enforcing `policy`.
    pub fn new(policy: CookiePolicy) -> Self {
        Self {
            policy: Arc::new(policy),
        }
    }

    /// The policy this layer enforces.
    pub fn policy(&self) -> &CookiePolicy {
        &self.policy
    }
}

impl Default for CookiePolicyLayer {
    /// [`CookiePolicy::lax`].
    fn default() -> Self {
        Self::new(CookiePolicy::default())
    }
}

impl From<CookiePolicy> for CookiePolicyLayer {
    fn from(policy: CookiePolicy) -> Self {
        Self::new(policy)
    }
}

impl<S> Layer<S> for CookiePolicyLayer {
    type Service = CookiePolicyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CookiePolicyService {
            inner,
            policy: Arc::clone(&self.policy),
        }
    }
}

/// The service built by [`CookiePolicyLayer`].
#[derive(Clone, Debug)]
pub struct CookiePolicyService<S> {
    inner: S,
    policy: Arc<CookiePolicy>,
}

impl<S> CookiePolicyService<S> {
    /// Wraps `inner` with `policy`.
    pub fn new(inner: S, policy: CookiePolicy) -> Self {
        Self {
            inner,
            policy: Arc::new(policy),
        }
    }

    /// A [`CookiePolicyLayer`] for `policy`.
    pub fn layer(policy: CookiePolicy) -> CookiePolicyLayer {
        CookiePolicyLayer::new(policy)
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CookiePolicyService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The scheme must be read from the request, which the inner service consumes.
        let request_is_https = match self.policy.secure {
            SecureMode::WhenHttps => self.policy.trusted_proxies.is_https(&req),
            SecureMode::Always | SecureMode::Never => false,
        };
        ResponseFuture {
            inner: self.inner.call(req),
            policy: Arc::clone(&self.policy),
            request_is_https,
        }
    }
}

pin_project! {
    /// Response future of [`CookiePolicyService`]: the inner future, then the rewrite.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        policy: Arc<CookiePolicy>,
        request_is_https: bool,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        this.policy
            .apply(response.headers_mut(), *this.request_is_https);
        Poll::Ready(Ok(response))
    }
}
