//! [`SessionLayer`], [`SessionService`], their response future and body.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::header::{CACHE_CONTROL, CONTENT_TYPE, SET_COOKIE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::commit::CookieUpdate;
use super::config::ConfigInner;
use super::cookie::Rejected;
use super::error::SessionError;
use super::session::{Bound, Session, Shared};
use super::store::SessionStore;
use super::{SessionConfig, SessionCookieReader};

/// Adds a lazily loaded [`Session`] to every request and commits its changes after the
/// response. See the [module docs](super) for an example.
///
/// Holds the store (shared by all services it builds) and the config.
#[derive(Clone, Debug)]
pub struct SessionLayer {
    bound: Arc<Bound>,
}

impl SessionLayer {
    /// A layer keeping sessions in `store`.
    pub fn new(store: impl SessionStore, config: SessionConfig) -> Self {
        Self::from_arc(Arc::new(store), config)
    }

    /// A layer keeping sessions in a store chosen at run time (e.g. memory or Redis).
    pub fn from_arc(store: Arc<dyn SessionStore>, config: SessionConfig) -> Self {
        Self {
            bound: Arc::new(Bound { config, store }),
        }
    }

    /// A reader of the session cookie for other layers (the rate limiter's session key).
    pub fn cookie_reader(&self) -> SessionCookieReader {
        self.bound.config.cookie_reader()
    }

    /// The config.
    pub fn config(&self) -> &SessionConfig {
        &self.bound.config
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.bound.store
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionService {
            inner,
            bound: self.bound.clone(),
        }
    }
}

/// The service built by [`SessionLayer`].
#[derive(Clone, Debug)]
pub struct SessionService<S> {
    inner: S,
    bound: Arc<Bound>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body,
    ResBody::Data: From<Vec<u8>>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let config = &*self.bound.config.inner;
        // Nothing async happens before the inner call (the session loads lazily, inside the
        // handler), so the ready inner service is called directly.
        let (incoming, rejected_cookie) = match config.codec.read(req.headers()) {
            Ok(incoming) => (incoming, false),
            Err(reason) => {
                // The value is never logged, nor kept: only that such a cookie was present,
                // so a logout can remove it. Conflicting valid cookies are worth a warning (a
                // cookie planted from a sibling subdomain), throttled: any client can send two.
                if reason == Rejected::Conflict && config.conflict_log_throttle.allow(config.now())
                {
                    tracing::warn!(
                        reason = reason.as_str(),
                        "ignoring the session cookies: no session for this request"
                    );
                } else {
                    tracing::debug!(reason = reason.as_str(), "ignoring the session cookie");
                }
                (None, true)
            }
        };
        let (id, user_tag) = incoming.map_or((None, None), |i| (Some(i.id), i.user_tag));
        let session = Session::new(self.bound.clone(), id, user_tag, rejected_cookie);
        req.extensions_mut().insert(session.clone());
        ResponseFuture {
            state: State::Inner {
                future: self.inner.call(req),
                session: Some(session),
            },
        }
    }
}

type CommitFuture = Pin<Box<dyn Future<Output = Result<CookieUpdate, SessionError>> + Send>>;

pin_project! {
    /// Response future of [`SessionService`]: the inner future, then (only if the session
    /// changed) the commit to the store.
    ///
    /// The commit is boxed: it awaits store calls through `dyn SessionStore`. Requests that did
    /// not change their session never allocate it.
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Inner {
            #[pin]
            future: F,
            session: Option<Session>,
        },
        Commit {
            future: CommitFuture,
            response: Option<Response<B>>,
            shared: Arc<Shared>,
        },
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
    B::Data: From<Vec<u8>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project().state.project() {
                StateProj::Inner { future, session } => {
                    let response = ready!(future.poll(cx))?;
                    let Some(session) = session.take() else {
                        // Polled again after completion: keep the response as it is.
                        return Poll::Ready(Ok(response.map(ResponseBody::inner)));
                    };
                    let shared = session.shared;
                    if !shared.needs_commit() {
                        return Poll::Ready(Ok(finish(response, &shared, CookieUpdate::Keep)));
                    }
                    let server_error = response.status().is_server_error();
                    let committing = shared.clone();
                    let future: CommitFuture =
                        Box::pin(async move { committing.commit(server_error).await });
                    self.as_mut().project().state.set(State::Commit {
                        future,
                        response: Some(response),
                        shared,
                    });
                }
                StateProj::Commit {
                    future,
                    response,
                    shared,
                } => {
                    let result = ready!(future.as_mut().poll(cx));
                    let Some(response) = response.take() else {
                        return Poll::Ready(Ok(unavailable(shared.config())));
                    };
                    return Poll::Ready(Ok(match result {
                        Ok(update) => finish(response, shared, update),
                        Err(error) if !error.is_unavailable() => {
                            // A data problem (too large, not serializable), not an outage:
                            // every occurrence is worth a line, and the client a 500.
                            tracing::error!(%error, "session could not be saved: answering 500");
                            internal_error()
                        }
                        Err(error) => {
                            let config = shared.config();
                            if config.log_throttle.allow(config.now()) {
                                tracing::warn!(%error, "session could not be saved: answering 503");
                            }
                            unavailable(config)
                        }
                    }));
                }
            }
        }
    }
}

/// The response after a successful (or unneeded) commit.
fn finish<B>(
    response: Response<B>,
    shared: &Shared,
    update: CookieUpdate,
) -> Response<ResponseBody<B>>
where
    B: Body,
    B::Data: From<Vec<u8>>,
{
    let config = shared.config();
    if shared.store_failed() && response.status().is_server_error() {
        // The handler failed because the store did: say so clearly.
        return unavailable(config);
    }
    let cookie = match update {
        CookieUpdate::Keep => return response.map(ResponseBody::inner),
        CookieUpdate::Set {
            id,
            user_tag,
            max_age_secs,
        } => config
            .codec
            .set_cookie(&id, user_tag.as_ref(), max_age_secs),
        CookieUpdate::Remove => config.codec.removal_cookie(),
    };
    let Ok(cookie) = cookie else {
        // Unreachable with a config from `SessionConfig::build`, which validates the name
        // and attributes. Answering the handler's response without the cookie would hide the
        // bug (a logout would leave the cookie in the browser), so fail loudly.
        tracing::error!(
            cookie_name = %config.codec.name,
            "the session cookie cannot be encoded as a Set-Cookie header (invalid cookie name or attributes): answering 500"
        );
        return internal_error();
    };
    let mut response = response.map(ResponseBody::inner);
    let headers = response.headers_mut();
    headers.append(SET_COOKIE, cookie);
    // A response that sets a session cookie must not be stored by shared caches.
    if !headers.contains_key(CACHE_CONTROL) {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// An empty `500`, when the layer itself cannot answer correctly.
fn internal_error<B>() -> Response<ResponseBody<B>>
where
    B: Body,
    B::Data: From<Vec<u8>>,
{
    let mut response = Response::new(ResponseBody::full(Vec::new()));
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The configured `503`.
fn unavailable<B>(config: &ConfigInner) -> Response<ResponseBody<B>>
where
    B: Body,
    B::Data: From<Vec<u8>>,
{
    #[cfg(feature = "opentelemetry")]
    config.metrics.unavailable();
    let mut response = Response::new(ResponseBody::full(config.unavailable_body.to_vec()));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, config.unavailable_content_type.clone());
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Response body of [`SessionService`]: the inner body, or the layer's own `503` body.
pub type ResponseBody<B> = crate::body::LayerBody<B>;
