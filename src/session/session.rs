//! The [`Session`] handle that handlers use.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio::sync::{Mutex, MutexGuard};

use super::commit::Changes;
use super::config::ConfigInner;
use super::cookie::UserTag;
use super::crypto;
use super::error::{SessionError, ValueError};
use super::expiry::Expiry;
use super::id::{SessionId, SessionKey};
use super::store::{SessionRecord, SessionStore};

/// The session of the current request, put in the request extensions by
/// [`SessionLayer`](super::SessionLayer). Cheap to clone; clones share the same state.
///
/// Nothing is read from the store until a method needs it; the first such call does one
/// round trip (load, plus the idle refresh when due) and later calls reuse the result.
/// Changes are kept in memory and written once, after the handler has answered, and only if
/// something changed and the answer is not a server error (5xx).
///
/// Changes are recorded as a change log (inserts, removes, clear, user, expiry): if another
/// request saved the same session meanwhile, the layer re-applies only this request's
/// changes on top of the newer record, so concurrent requests changing different keys never
/// lose each other's writes, and for the same key the later save wins. A
/// [`delete`](Self::delete) always wins over concurrent saves.
///
/// The session id itself is never exposed; [`key`](Self::key) gives its hash, which is safe
/// to log.
///
/// **As an axum extractor** (`async fn handler(session: Session)`) it needs the crate's
/// `axum` feature: `tower-rampart = { version = "0.1", features = ["axum"] }`. Without it
/// axum reports only that `Handler<_, _>` is not implemented. Without axum, read it from the
/// request extensions (`req.extensions().get::<Session>()`). Return
/// `Result<_, SessionError>` from handlers and use `?`: with the `axum` feature a
/// `SessionError` answers `503` (store unavailable) or `500`, never a panic.
///
/// ```
/// use tower_rampart::session::{Session, SessionError};
///
/// async fn visit(session: Session) -> Result<u64, SessionError> {
///     let visits: u64 = session.get("visits").await?.unwrap_or(0) + 1;
///     session.insert("visits", visits).await?;
///     Ok(visits)
/// }
/// ```
#[derive(Clone)]
pub struct Session {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(super) config: Arc<ConfigInner>,
    pub(super) store: Arc<dyn SessionStore>,
    /// The verified id of the request's cookie.
    pub(super) incoming: Option<SessionId>,
    /// The user tag the request's cookie carries (a save re-sends the cookie when it is out
    /// of date).
    pub(super) incoming_user_tag: Option<UserTag>,
    /// The request carried a cookie with the session cookie's name that the layer rejected
    /// (malformed, wrongly signed, oversized, duplicated). Its value is not kept.
    pub(super) rejected_cookie: bool,
    pub(super) state: Mutex<State>,
    /// A store call failed during this request.
    pub(super) failed: AtomicBool,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) loaded: bool,
    /// The live record the request's cookie points to, as loaded.
    pub(super) current: Option<Current>,
    /// The data as this request sees it: the loaded data with this request's changes.
    pub(super) data: Map<String, Value>,
    pub(super) user: Option<String>,
    pub(super) changes: Changes,
    pub(super) cycle: bool,
    /// Delete this session when committing.
    pub(super) delete: Option<SessionId>,
    /// Remove the browser's session cookie (logout of a request that carried one, valid or
    /// rejected).
    pub(super) remove_cookie: bool,
}

pub(super) struct Current {
    pub(super) id: SessionId,
    pub(super) record: SessionRecord,
}

impl Session {
    pub(crate) fn new(
        config: Arc<ConfigInner>,
        store: Arc<dyn SessionStore>,
        incoming: Option<SessionId>,
        incoming_user_tag: Option<UserTag>,
        rejected_cookie: bool,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                store,
                incoming,
                incoming_user_tag,
                rejected_cookie,
                state: Mutex::new(State::default()),
                failed: AtomicBool::new(false),
            }),
        }
    }

    /// The key (hash of the id, safe to log) of the session the request's cookie names, if it
    /// carried a validly signed one. It may no longer exist in the store.
    pub fn key(&self) -> Option<&SessionKey> {
        self.shared.incoming.as_ref().map(SessionId::key)
    }

    async fn loaded(&self) -> Result<MutexGuard<'_, State>, SessionError> {
        let mut state = self.shared.state.lock().await;
        if !state.loaded {
            self.shared.load(&mut state).await?;
        }
        Ok(state)
    }

    /// The value under `key`, deserialized into `T`; `None` if absent.
    ///
    /// # Errors
    /// [`SessionError::Store`] when the session cannot be loaded,
    /// [`SessionError::Deserialize`] when the value is not a `T`.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        let state = self.loaded().await?;
        match state.data.get(key) {
            None => Ok(None),
            Some(value) => T::deserialize(value)
                .map(Some)
                .map_err(|_| SessionError::Deserialize(ValueError::of(key))),
        }
    }

    /// The value under `key` as JSON; `None` if absent.
    pub async fn get_value(&self, key: &str) -> Result<Option<Value>, SessionError> {
        Ok(self.loaded().await?.data.get(key).cloned())
    }

    /// Stores `value` (serialized as JSON) under `key`. Storing the value already there is not
    /// a change and causes no write.
    ///
    /// # Errors
    /// [`SessionError::TooLarge`] when the session data would exceed the configured
    /// [size limit](super::SessionConfigBuilder::max_record_bytes); the session is left as it
    /// was. [`SessionError::Store`] when the session cannot be loaded,
    /// [`SessionError::Serialize`] when `value` cannot be serialized.
    pub async fn insert(
        &self,
        key: impl Into<String>,
        value: impl Serialize,
    ) -> Result<(), SessionError> {
        let key = key.into();
        let value = serde_json::to_value(value)
            .map_err(|_| SessionError::Serialize(ValueError::of(&key)))?;
        let mut state = self.loaded().await?;
        if state.data.get(&key) != Some(&value) {
            let previous = state.data.insert(key.clone(), value.clone());
            let size = crypto::encoded_len(&self.shared.config, json_len(&state.data));
            let limit = self.shared.config.max_record_bytes;
            if size > limit {
                match previous {
                    Some(previous) => state.data.insert(key, previous),
                    None => state.data.remove(&key),
                };
                return Err(SessionError::TooLarge { size, limit });
            }
            state.changes.ops.insert(key, Some(value));
        }
        Ok(())
    }

    /// Removes `key`; `true` if it was there.
    pub async fn remove(&self, key: &str) -> Result<bool, SessionError> {
        let mut state = self.loaded().await?;
        if state.data.remove(key).is_none() {
            return Ok(false);
        }
        state.changes.ops.insert(key.to_owned(), None);
        Ok(true)
    }

    /// Removes every key (the session, its id and user stay).
    pub async fn clear(&self) -> Result<(), SessionError> {
        let mut state = self.loaded().await?;
        if !state.data.is_empty() {
            state.data.clear();
            state.changes.ops.clear();
            state.changes.cleared = true;
        }
        Ok(())
    }

    /// Whether the session holds no key.
    pub async fn is_empty(&self) -> Result<bool, SessionError> {
        Ok(self.loaded().await?.data.is_empty())
    }

    /// The user this session belongs to (see [`set_user_id`](Self::set_user_id)).
    pub async fn user_id(&self) -> Result<Option<String>, SessionError> {
        Ok(self.loaded().await?.user.clone())
    }

    /// Records the user this session belongs to. Stores index sessions by user, so
    /// [`delete_user_sessions`](Self::delete_user_sessions) can end all of them. Keep it an
    /// opaque id (not an email): stores keep it unencrypted. With
    /// [`user_tag`](super::SessionConfigBuilder::user_tag) on, the response sends the cookie
    /// again, carrying the new user's tag.
    pub async fn set_user_id(&self, user: impl Into<String>) -> Result<(), SessionError> {
        self.change_user(Some(user.into())).await
    }

    /// Forgets the user of this session. With
    /// [`user_tag`](super::SessionConfigBuilder::user_tag) on, the response sends the cookie
    /// again, without a tag.
    pub async fn clear_user_id(&self) -> Result<(), SessionError> {
        self.change_user(None).await
    }

    async fn change_user(&self, user: Option<String>) -> Result<(), SessionError> {
        let mut state = self.loaded().await?;
        if state.user != user {
            state.user.clone_from(&user);
            state.changes.user = Some(user);
        }
        Ok(())
    }

    /// Overrides the expiry settings of this session (see [`Expiry`]). The cookie is sent
    /// again with the new `Max-Age`.
    pub async fn set_expiry(&self, expiry: Expiry) -> Result<(), SessionError> {
        let mut state = self.loaded().await?;
        let merged = state.changes.expiry.unwrap_or_default().merge(expiry);
        state.changes.expiry = Some(merged);
        Ok(())
    }

    /// Gives the session a new id and keeps its data: call it when the user logs in (or gains
    /// privileges), so an id planted before the login (session fixation) becomes worthless.
    /// The old id stops working when the response is committed.
    ///
    /// The commit first creates the record under the new id, then deletes the old record, so
    /// a store failure never loses the session: if either call fails the request is answered
    /// `503` without the new cookie and the browser keeps using the old session (the record
    /// created under the never-sent id, if any, is unreachable and expires by itself). Only a
    /// delete that times out after taking effect ends the old session. Writes that concurrent
    /// requests save to the old session meanwhile are carried over to the new one; a
    /// concurrent logout wins (no new id is sent and the new record is deleted).
    pub async fn cycle_id(&self) -> Result<(), SessionError> {
        let mut state = self.loaded().await?;
        if state.current.is_some() {
            state.cycle = true;
        }
        Ok(())
    }

    /// Ends the session (logout): its record is deleted when the response is committed, even
    /// if the handler answers with an error, and whatever concurrent requests of the same
    /// session do, they cannot bring it back. The response removes the cookie, also when the
    /// request's session cookie was rejected (tampered, signed with a retired key, malformed):
    /// that costs no store call. Changes made after this call start a new session with a new
    /// id, whose cookie replaces the removal.
    pub async fn delete(&self) -> Result<(), SessionError> {
        let mut state = self.shared.state.lock().await;
        let target = state.delete.take().or_else(|| self.shared.incoming.clone());
        *state = State {
            loaded: true,
            delete: target,
            remove_cookie: self.shared.incoming.is_some() || self.shared.rejected_cookie,
            ..State::default()
        };
        Ok(())
    }

    /// Deletes every session of `user` now ("sign out everywhere"), this one included if it
    /// belongs to `user`, and returns how many were deleted.
    ///
    /// # Errors
    /// [`SessionError::Store`], also when the store does not keep a per-user index.
    pub async fn delete_user_sessions(&self, user: &str) -> Result<u64, SessionError> {
        let now = self.shared.config.now();
        Ok(self
            .shared
            .call(self.shared.store.delete_user_sessions(user, now))
            .await?)
    }
}

/// The length of `data` serialized as JSON, without building the bytes.
fn json_len(data: &Map<String, Value>) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Serializing a `Map` of `Value`s into a counter cannot fail.
    let _ = serde_json::to_writer(&mut count, data);
    count.0
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("key", &self.key())
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn config(&self) -> &ConfigInner {
        &self.config
    }

    pub(crate) fn store_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Whether the commit has anything to do. Cheap; `true` when undecidable.
    pub(crate) fn needs_commit(&self) -> bool {
        match self.state.try_lock() {
            Ok(state) => {
                state.delete.is_some()
                    || state.remove_cookie
                    || state.cycle
                    || !state.changes.is_empty()
            }
            Err(_) => true,
        }
    }
}
