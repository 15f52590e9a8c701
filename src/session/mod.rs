//! Sessions that survive many instances behind a load balancer: [`SessionLayer`], the
//! [`Session`] handle, the [`SessionStore`] trait, [`MemoryStore`] and (feature `redis`)
//! [`RedisStore`].
//!
//! In axum, [`Session`] is an extractor with the crate's `axum` feature
//! (`features = ["axum"]`); without a framework, read it from the request extensions as
//! below.
//!
//! ```
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_rampart::session::{MemoryStore, Session, SessionConfig, SessionError, SessionLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let config = SessionConfig::builder()
//!     .key(b"a secret key of at least 32 bytes, from configuration")
//!     .build()
//!     .unwrap();
//! let app = ServiceBuilder::new()
//!     .layer(SessionLayer::new(MemoryStore::new(), config))
//!     .service_fn(|req: Request<String>| async move {
//!         let session = req.extensions().get::<Session>().unwrap().clone();
//!         let visits: u64 = session.get("visits").await?.unwrap_or(0) + 1;
//!         session.insert("visits", visits).await?;
//!         Ok::<_, SessionError>(Response::new(format!("visit #{visits}")))
//!     });
//!
//! let response = app.clone().oneshot(Request::new(String::new())).await.unwrap();
//! let cookie = response.headers()["set-cookie"].to_str().unwrap();
//! assert!(cookie.starts_with("session="));
//! assert!(cookie.contains("HttpOnly; Secure; SameSite=Lax"));
//! # }
//! ```
//!
//! # What a request costs
//!
//! | request | store round trips |
//! |---|---|
//! | no session cookie, or a forged / malformed one | 0 (1 if the handler writes: create) |
//! | reads the session | 1 (load; 2 on Redis when the idle refresh is due, at most once per quarter of the idle timeout) |
//! | changes the session | 1 more (compare-and-set save); 1 per conflict |
//! | unchanged session, or a `5xx` response | no write |
//! | logout ([`Session::delete`]) | 1 (0 when the cookie was rejected) |
//! | login with [`Session::cycle_id`] on an existing session | load, create, delete: 3 |
//!
//! Nothing is loaded until a handler touches the session, so the idle timeout is only
//! refreshed by requests that use the session.
//!
//! # Guarantees
//!
//! - **No lost updates**: saves are compare-and-set on a version; on a conflict the layer
//!   re-applies only this request's changes to the newer record. Concurrent requests
//!   changing different keys keep all changes; for one key, the later save wins.
//! - **Logout wins**: a save never creates a record, and new records are only created under
//!   fresh random ids ("only if absent"), so a deleted session cannot come back.
//! - **Login never loses the session**: [`Session::cycle_id`] creates the record under the new
//!   id first, then deletes the old record (compare-and-set: writes saved to it meanwhile are
//!   carried over, a concurrent logout wins and the new id is dropped). If either call fails
//!   the request is answered `503` without the new cookie and the old session stays in use.
//! - **Expiry** (idle timeout and absolute lifetime) is enforced by the store; an expired
//!   session is a fresh, empty one.
//! - **Ids** are 128 random bits from the OS, sent signed (HMAC-SHA256, key rotation: the
//!   first key signs, all verify) and stored under a hash ([`SessionKey`]). Data is encrypted
//!   at rest (AES-256-GCM) by default.
//! - **Integrity at rest**: the user id, the creation time, the idle timeout and the absolute
//!   deadline of every record written are bound to it by a MAC ([`SessionRecord::binding`]);
//!   a record changed in the store is no session. Records written before bindings existed
//!   are read until [`SessionConfigBuilder::require_record_binding`] is turned on, which is
//!   when the protection is complete (its docs explain the rollout).
//! - **Failure**: each store call is bounded by a timeout; when the store fails the layer
//!   answers `503` with a configurable body, logs once per burst, and recovers by itself.
//! - **Bad cookies** (malformed, unsigned, wrongly signed, oversized) count as no session,
//!   cost no store call, and their values are never logged. Beside a valid cookie of the same name (one
//!   planted from a sibling subdomain) they are ignored; valid cookies of two different
//!   sessions count as no session (and a throttled warning), so a planted valid cookie cannot
//!   sign the user into the planter's session. A logout ([`Session::delete`]) still
//!   removes such a cookie from the browser; a new session's cookie replaces it.
//!
//! The layer needs a Tokio runtime (store timeouts use `tokio::time`).

#[cfg(feature = "axum")]
mod axum;
mod commit;
mod config;
mod cookie;
mod crypto;
mod error;
mod expiry;
mod id;
mod layer;
#[cfg(feature = "opentelemetry")]
mod metrics;
// The handle is the module's main type; `session::session` mirrors the file layout.
#[allow(clippy::module_inception)]
mod session;
pub mod store;

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use self::axum::MissingSessionLayer;
pub use crate::same_site::SameSite;
pub use config::{
    DEFAULT_MAX_RECORD_BYTES, MAX_LIFETIME, MIN_KEY_LEN, MIN_MAX_RECORD_BYTES, SessionConfig,
    SessionConfigBuilder, SessionConfigError,
};
pub use cookie::{SessionCookieReader, UserTag};
pub use error::{SessionError, ValueError};
pub use expiry::Expiry;
pub use id::SessionKey;
pub use layer::{ResponseBody, ResponseFuture, SessionLayer, SessionService};
pub use session::{Session, SessionInfo};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use store::RedisStore;
pub use store::{
    MemoryStore, SessionRecord, SessionStore, StoreError, StoreErrorKind, StoreFuture, UserSession,
    WriteOutcome,
};
