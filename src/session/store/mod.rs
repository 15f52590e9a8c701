//! The [`SessionStore`] trait and the stores shipped with the crate.
//!
//! A store keeps [`SessionRecord`]s under a [`SessionKey`] and offers five atomic operations:
//! load (with an optional cheap idle refresh), create-if-absent, compare-and-set save,
//! delete (optionally compare-and-set) and touch; optionally, the per-user ones (sign out
//! everywhere, list a user's sessions, end one of them). The session layer builds everything else
//! (lazy loading, merging concurrent changes, "logout always wins") on these.
//!
//! Time is always passed in by the caller (`now`, unix microseconds, from the layer's
//! [`Clock`](crate::clock::Clock)), so expiry can be tested on a manual clock against any
//! store. A record is alive while `now < record.deadline()`; stores must treat a record whose
//! deadline has passed as absent, and may drop it any time after.
//!
//! The methods return boxed futures so the trait stays object safe: the layer holds an
//! `Arc<dyn SessionStore>` and the store can be chosen at run time.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::SessionKey;

mod memory;
pub use memory::MemoryStore;

#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::RedisStore;

/// The future returned by [`SessionStore`] methods.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// One session as a store keeps it. Times are unix microseconds.
///
/// `data` is opaque to the store: serialized (and, by default, encrypted) by the layer.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Incremented by the store on every successful [`save`](SessionStore::save); 1 after
    /// [`create`](SessionStore::create).
    pub version: u64,
    /// When the session was created.
    pub created_micros: u64,
    /// When the session was last refreshed (saved or touched).
    pub accessed_micros: u64,
    /// The idle timeout of this session, in microseconds.
    pub idle_micros: u64,
    /// The absolute deadline of this session.
    pub expires_micros: u64,
    /// The user this session belongs to, for [`SessionStore::delete_user_sessions`].
    pub user_id: Option<String>,
    /// The session data, encoded by the layer.
    pub data: Vec<u8>,
    /// The integrity tag of this record, written by the layer (opaque to the store, which
    /// must keep it with the record and return it unchanged): a MAC, under a key derived from
    /// the session secret, of the store key, the version this write gets, the creation
    /// time, the idle timeout, the absolute deadline and the user id. Not of
    /// [`accessed_micros`](Self::accessed_micros), which stores may refresh on their own.
    /// `None` for records written by versions of this crate before it existed.
    pub binding: Option<String>,
}

impl SessionRecord {
    /// The moment this record expires: the earlier of the idle deadline and the absolute one.
    pub fn deadline(&self) -> u64 {
        self.accessed_micros
            .saturating_add(self.idle_micros)
            .min(self.expires_micros)
    }

    /// Whether the record is dead at `now`.
    pub fn is_expired(&self, now: u64) -> bool {
        now >= self.deadline()
    }

    /// Whether a load at `now` should refresh the idle deadline: only once more than a quarter
    /// of the idle timeout has passed since the last refresh, so a busy session is not written
    /// on every request.
    pub fn needs_refresh(&self, now: u64) -> bool {
        now.saturating_sub(self.accessed_micros) > self.idle_micros / 4
    }

    /// Time to live at `now`, in whole milliseconds rounded up (at least 1): the TTL a store
    /// with server-side expiry should set.
    pub fn ttl_millis(&self, now: u64) -> u64 {
        self.deadline().saturating_sub(now).div_ceil(1000).max(1)
    }

    /// Marks the record as refreshed at `now` (what a touch does).
    pub fn refresh(&mut self, now: u64) {
        self.accessed_micros = now;
    }
}

impl fmt::Debug for SessionRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The data may hold tokens when encryption at rest is off: show its size only.
        f.debug_struct("SessionRecord")
            .field("version", &self.version)
            .field("created_micros", &self.created_micros)
            .field("accessed_micros", &self.accessed_micros)
            .field("idle_micros", &self.idle_micros)
            .field("expires_micros", &self.expires_micros)
            .field("user_id", &self.user_id.as_ref().map(|_| ".."))
            .field("data_len", &self.data.len())
            .field("bound", &self.binding.is_some())
            .finish()
    }
}

/// One live session of a user, as [`SessionStore::list_user_sessions`] reports it: its key
/// and times (unix microseconds), without its data. The fields have the meaning of the
/// [`SessionRecord`] fields of the same names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSession {
    /// The session's key (a hash of its id: safe to log, useless as a cookie).
    pub key: SessionKey,
    /// When the session was created.
    pub created_micros: u64,
    /// When the session was last refreshed (saved or touched).
    pub accessed_micros: u64,
    /// The idle timeout of this session.
    pub idle_micros: u64,
    /// The absolute deadline of this session.
    pub expires_micros: u64,
}

impl UserSession {
    /// The key and times of `record`, stored under `key`.
    pub fn of(key: SessionKey, record: &SessionRecord) -> Self {
        Self {
            key,
            created_micros: record.created_micros,
            accessed_micros: record.accessed_micros,
            idle_micros: record.idle_micros,
            expires_micros: record.expires_micros,
        }
    }

    /// The moment this session expires unless it is used again: the earlier of the idle
    /// deadline and the absolute one (as [`SessionRecord::deadline`]).
    pub fn deadline(&self) -> u64 {
        self.accessed_micros
            .saturating_add(self.idle_micros)
            .min(self.expires_micros)
    }
}

/// The result of a conditional write ([`SessionStore::save`], [`SessionStore::delete`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The write happened.
    Written,
    /// The live record has another version; here it is, so the caller can merge and retry
    /// without another round trip.
    Conflict(SessionRecord),
    /// No live record under this key (never created, deleted or expired).
    Missing,
}

/// A session store: where records live between requests.
///
/// Implementations must make each method one atomic step: the layer's guarantees (no lost
/// updates between concurrent requests, a deleted session never comes back, ids never
/// overwritten) rest on it. A store that cannot answer must fail fast with a [`StoreError`]
/// rather than hang; the layer also bounds every call with its own timeout.
///
/// The crate runs one conformance suite against every store it ships; a custom store should
/// pass it too: it is the module `testing` (feature `testing`).
pub trait SessionStore: fmt::Debug + Send + Sync + 'static {
    /// The live record under `key`, or `None`. When `refresh` is set and
    /// [`record.needs_refresh(now)`](SessionRecord::needs_refresh), also refreshes it at `now`
    /// (in the same atomic step, without changing its version) and returns it refreshed.
    fn load<'a>(
        &'a self,
        key: &'a SessionKey,
        now: u64,
        refresh: bool,
    ) -> StoreFuture<'a, Option<SessionRecord>>;

    /// Stores `record` under `key` with version 1, only if no live record is there. `Ok(false)`
    /// when the key is taken: a new session can never overwrite another.
    fn create<'a>(
        &'a self,
        key: &'a SessionKey,
        record: &'a SessionRecord,
        now: u64,
    ) -> StoreFuture<'a, bool>;

    /// Compare-and-set: when the live record under `key` has version `record.version`,
    /// replaces it with `record` at version `record.version + 1`. Never creates a record.
    fn save<'a>(
        &'a self,
        key: &'a SessionKey,
        record: &'a SessionRecord,
        now: u64,
    ) -> StoreFuture<'a, WriteOutcome>;

    /// Deletes the record under `key`: unconditionally when `expected_version` is `None`
    /// (logout), else only when the live record has that version.
    fn delete<'a>(
        &'a self,
        key: &'a SessionKey,
        expected_version: Option<u64>,
        now: u64,
    ) -> StoreFuture<'a, WriteOutcome>;

    /// Refreshes the idle deadline of the live record under `key` at `now`, without changing
    /// its version. `Ok(false)` when there is no live record.
    fn touch<'a>(&'a self, key: &'a SessionKey, now: u64) -> StoreFuture<'a, bool>;

    /// Deletes every live session whose [`user_id`](SessionRecord::user_id) is `user`
    /// ("sign out everywhere") and returns how many were deleted. The default implementation
    /// answers [`StoreErrorKind::Unsupported`].
    ///
    /// It must not miss a live session of `user`, also one whose write failed halfway (the
    /// request was answered `503`, or a node died between two calls): a store that keeps a
    /// separate per-user index must keep it ahead of its records, as
    /// `RedisStore` does (its docs say how and why it holds).
    fn delete_user_sessions<'a>(&'a self, user: &'a str, now: u64) -> StoreFuture<'a, u64> {
        let _ = (user, now);
        Box::pin(async { Err(StoreError::unsupported("delete_user_sessions")) })
    }

    /// The live sessions whose [`user_id`](SessionRecord::user_id) is `user` at `now`, in no
    /// particular order: read from the records themselves (a session saved meanwhile under
    /// another user, or expired, is not listed). The default implementation answers
    /// [`StoreErrorKind::Unsupported`].
    fn list_user_sessions<'a>(
        &'a self,
        user: &'a str,
        now: u64,
    ) -> StoreFuture<'a, Vec<UserSession>> {
        let _ = (user, now);
        Box::pin(async { Err(StoreError::unsupported("list_user_sessions")) })
    }

    /// Deletes the session under `key` only if it is live and belongs to `user` (ending one
    /// of a user's sessions); `Ok(false)`, touching nothing, when it is missing, expired or
    /// someone else's. The default implementation answers [`StoreErrorKind::Unsupported`].
    fn delete_user_session<'a>(
        &'a self,
        user: &'a str,
        key: &'a SessionKey,
        now: u64,
    ) -> StoreFuture<'a, bool> {
        let _ = (user, key, now);
        Box::pin(async { Err(StoreError::unsupported("delete_user_session")) })
    }
}

impl<S: SessionStore + ?Sized> SessionStore for Arc<S> {
    fn load<'a>(
        &'a self,
        key: &'a SessionKey,
        now: u64,
        refresh: bool,
    ) -> StoreFuture<'a, Option<SessionRecord>> {
        (**self).load(key, now, refresh)
    }

    fn create<'a>(
        &'a self,
        key: &'a SessionKey,
        record: &'a SessionRecord,
        now: u64,
    ) -> StoreFuture<'a, bool> {
        (**self).create(key, record, now)
    }

    fn save<'a>(
        &'a self,
        key: &'a SessionKey,
        record: &'a SessionRecord,
        now: u64,
    ) -> StoreFuture<'a, WriteOutcome> {
        (**self).save(key, record, now)
    }

    fn delete<'a>(
        &'a self,
        key: &'a SessionKey,
        expected_version: Option<u64>,
        now: u64,
    ) -> StoreFuture<'a, WriteOutcome> {
        (**self).delete(key, expected_version, now)
    }

    fn touch<'a>(&'a self, key: &'a SessionKey, now: u64) -> StoreFuture<'a, bool> {
        (**self).touch(key, now)
    }

    fn delete_user_sessions<'a>(&'a self, user: &'a str, now: u64) -> StoreFuture<'a, u64> {
        (**self).delete_user_sessions(user, now)
    }

    fn list_user_sessions<'a>(
        &'a self,
        user: &'a str,
        now: u64,
    ) -> StoreFuture<'a, Vec<UserSession>> {
        (**self).list_user_sessions(user, now)
    }

    fn delete_user_session<'a>(
        &'a self,
        user: &'a str,
        key: &'a SessionKey,
        now: u64,
    ) -> StoreFuture<'a, bool> {
        (**self).delete_user_session(user, key, now)
    }
}

/// What kind of failure a [`StoreError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The store cannot be reached (connection refused, circuit breaker open, ...).
    Unavailable,
    /// The store did not answer in time.
    Timeout,
    /// The store does not implement this operation.
    Unsupported,
    /// Any other failure (an unexpected reply, a server-side error).
    Other,
}

/// A failed store call. Its message never contains a session id, a cookie or a password.
#[derive(Clone, Debug)]
pub struct StoreError {
    kind: StoreErrorKind,
    message: Cow<'static, str>,
}

impl StoreError {
    /// A new error of `kind`; `message` must not contain secrets.
    pub fn new(kind: StoreErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// The store cannot be reached.
    pub fn unavailable(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StoreErrorKind::Unavailable, message)
    }

    /// The store did not answer within `timeout`.
    pub fn timeout(timeout: std::time::Duration) -> Self {
        Self::new(
            StoreErrorKind::Timeout,
            format!("no answer within {timeout:?}"),
        )
    }

    /// The store does not implement `operation`.
    pub fn unsupported(operation: &'static str) -> Self {
        Self::new(
            StoreErrorKind::Unsupported,
            format!("this session store does not support {operation}"),
        )
    }

    /// Any other failure.
    pub fn other(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StoreErrorKind::Other, message)
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            StoreErrorKind::Unavailable => "session store unavailable",
            StoreErrorKind::Timeout => "session store timed out",
            StoreErrorKind::Unsupported => "unsupported session store operation",
            StoreErrorKind::Other => "session store error",
        };
        write!(f, "{kind}: {}", self.message)
    }
}

impl std::error::Error for StoreError {}
