//! The response body of layers that can answer by themselves.
//!
//! The rate limiter (a `429`) and the session layer (a `503`) either pass the inner
//! service's response through or answer with a small body of their own. Both use
//! [`LayerBody`], so stacking them costs no extra boxing and the types read the same.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// Either the inner service's body, passed through untouched, or a layer's own
    /// in-memory body (a rejection or an error message).
    ///
    /// The inner body's `Data` type must be buildable from bytes (`From<Vec<u8>>`), which
    /// `bytes::Bytes`, the data type of hyper, axum and tonic bodies, is.
    pub struct LayerBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Full { data: Option<Vec<u8>> },
    }
}

impl<B> LayerBody<B> {
    /// The inner service's body.
    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    /// A body of the layer's own.
    pub(crate) fn full(data: Vec<u8>) -> Self {
        Self {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    /// Whether this is the layer's own body rather than the inner service's.
    pub fn is_from_layer(&self) -> bool {
        matches!(self.kind, Kind::Full { .. })
    }
}

impl<B: fmt::Debug> fmt::Debug for LayerBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Inner { body } => f.debug_tuple("LayerBody::Inner").field(body).finish(),
            Kind::Full { data } => f
                .debug_struct("LayerBody::Full")
                .field("len", &data.as_ref().map_or(0, Vec::len))
                .finish(),
        }
    }
}

impl<B> Body for LayerBody<B>
where
    B: Body,
    B::Data: From<Vec<u8>>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Full { data } => {
                Poll::Ready(data.take().map(|d| Ok(Frame::data(B::Data::from(d)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
