//! What the crate's axum extractors share (feature `axum`): a value a layer put in the
//! request extensions, and a `500` naming the missing layer when it is not there.

/// Implements `FromRequestParts` and `OptionalFromRequestParts` for `$value` (cloned from the
/// request extensions) and defines `$rejection`, the error of a route without `$layer`.
macro_rules! extension_extractor {
    ($value:ty, $rejection:ident, $message:literal, $layer:literal) => {
        #[doc = concat!("The rejection of the [`", stringify!($value), "`] extractor: the router has no")]
        #[doc = concat!("[`", $layer, "`](", $layer, ") around the route. A bug in the")]
        /// application, answered with `500` and logged as an error.
        #[derive(Clone, Copy, Debug, Default)]
        pub struct $rejection;

        impl ::std::fmt::Display for $rejection {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str($message)
            }
        }

        impl ::std::error::Error for $rejection {}

        impl ::axum::response::IntoResponse for $rejection {
            fn into_response(self) -> ::axum::response::Response {
                ::tracing::error!("{self}");
                (
                    ::http::StatusCode::INTERNAL_SERVER_ERROR,
                    [(::http::header::CONTENT_TYPE, "application/json")],
                    concat!(r#"{"detail":""#, $message, r#""}"#),
                )
                    .into_response()
            }
        }

        impl<S: Send + Sync> ::axum::extract::FromRequestParts<S> for $value {
            type Rejection = $rejection;

            async fn from_request_parts(
                parts: &mut ::http::request::Parts,
                _: &S,
            ) -> Result<Self, Self::Rejection> {
                parts.extensions.get::<$value>().cloned().ok_or($rejection)
            }
        }

        impl<S: Send + Sync> ::axum::extract::OptionalFromRequestParts<S> for $value {
            type Rejection = ::std::convert::Infallible;

            async fn from_request_parts(
                parts: &mut ::http::request::Parts,
                _: &S,
            ) -> Result<Option<Self>, Self::Rejection> {
                Ok(parts.extensions.get::<$value>().cloned())
            }
        }
    };
}

pub(crate) use extension_extractor;
