//! The [`Session`] handle that handlers use.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio::sync::{Mutex, MutexGuard};

use super::commit::{Changes, Op};
use super::config::{ConfigInner, SessionConfig};
use super::cookie::UserTag;
use super::crypto;
use super::crypto::HANDLE_LEN;
use super::error::{SessionError, ValueError};
use super::expiry::Expiry;
use super::id::{SessionId, SessionKey};
use super::store::{SessionRecord, SessionStore, UserSession};

/// The session of the current request, put in the request extensions by
/// [`SessionLayer`](super::SessionLayer). Cheap to clone; clones share the same state.
///
/// Nothing is read from the store until a method needs it; the first such call does one
/// round trip (load, plus the idle refresh when due: one more round trip on Redis, at most
/// once per quarter of the idle timeout) and later calls reuse the result.
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

/// What every request of a layer shares: its config and its store, behind one count.
///
/// A layer's service is cloned for every request (axum does), and every request builds a
/// [`Session`] holding both: two counts would mean two more cache lines that the worker
/// threads of a busy server take from each other on every request.
#[derive(Debug)]
pub(crate) struct Bound {
    pub(crate) config: SessionConfig,
    pub(crate) store: Arc<dyn SessionStore>,
}

pub(crate) struct Shared {
    pub(super) bound: Arc<Bound>,
    /// The verified id of the request's cookie.
    pub(super) incoming: Option<SessionId>,
    /// The user tag the request's cookie carries (a save re-sends the cookie when it is out
    /// of date).
    pub(super) incoming_user_tag: Option<UserTag>,
    /// The request carried a cookie with the session cookie's name that the layer rejected
    /// (malformed, wrongly signed, oversized, or valid cookies of different sessions). Its
    /// value is not kept.
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
        bound: Arc<Bound>,
        incoming: Option<SessionId>,
        incoming_user_tag: Option<UserTag>,
        rejected_cookie: bool,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                bound,
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
            let size = crypto::encoded_len(self.shared.config(), json_len(&state.data));
            let limit = self.shared.config().max_record_bytes;
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
        let now = self.shared.config().now();
        Ok(self
            .shared
            .call(
                Op::DeleteUserSessions,
                self.shared.store().delete_user_sessions(user, now),
            )
            .await?)
    }

    /// The live sessions of this session's user (its [`user_id`](Self::user_id)), this one
    /// included, oldest first: read from the store's records, so a session signed out or
    /// expired is not listed, and with an opaque [`handle`](SessionInfo::handle) each, never
    /// an id. A session without a user lists only itself (if it exists); a request without
    /// a session lists nothing. One store call (two round trips on Redis).
    ///
    /// # Errors
    /// [`SessionError::Store`], also when the store does not keep a per-user index
    /// ([`SessionStore::list_user_sessions`]).
    pub async fn user_sessions(&self) -> Result<Vec<SessionInfo>, SessionError> {
        let (user, sessions) = self.listed().await?;
        let first = &self.shared.config().keys()[0];
        Ok(sessions
            .into_iter()
            .map(|(s, current)| SessionInfo {
                handle: URL_SAFE_NO_PAD.encode(first.handle(&user, s.key.as_str())),
                current,
                created_micros: s.created_micros,
                last_seen_micros: s.accessed_micros,
                expires_micros: s.deadline(),
            })
            .collect())
    }

    /// Ends the session of this session's user that `handle` (from
    /// [`user_sessions`](Self::user_sessions)) names, now, and returns `true`; `false` when
    /// `handle` names no live session of this user (malformed, already ended, or another
    /// user's: only the user's own sessions are reachable). Ending the request's own session
    /// is a [`delete`](Self::delete) (logout: the cookie is removed when the response is
    /// committed). Costs a listing and, for another session, one delete.
    ///
    /// # Errors
    /// [`SessionError::Store`], also when the store does not support it
    /// ([`SessionStore::delete_user_session`]).
    pub async fn end_user_session(&self, handle: &str) -> Result<bool, SessionError> {
        let raw = match URL_SAFE_NO_PAD.decode(handle) {
            Ok(raw) if raw.len() == HANDLE_LEN => raw,
            _ => return Ok(false),
        };
        let (user, sessions) = self.listed().await?;
        let keys = self.shared.config().keys();
        let found = sessions.into_iter().find(|(s, _)| {
            keys.iter()
                .any(|k| constant_time_eq(&k.handle(&user, s.key.as_str()), &raw))
        });
        let Some((session, current)) = found else {
            return Ok(false);
        };
        if current {
            self.delete().await?;
            return Ok(true);
        }
        let now = self.shared.config().now();
        Ok(self
            .shared
            .call(
                Op::DeleteUserSession,
                self.shared
                    .store()
                    .delete_user_session(&user, &session.key, now),
            )
            .await?)
    }

    /// This session's user (`""` for none) and the live sessions [`Self::user_sessions`] shows,
    /// each with whether it is the request's own, oldest first.
    async fn listed(&self) -> Result<(String, Vec<(UserSession, bool)>), SessionError> {
        let (user, current) = {
            let state = self.loaded().await?;
            let current = state
                .current
                .as_ref()
                .map(|c| UserSession::of(c.id.key().clone(), &c.record));
            (state.user.clone(), current)
        };
        let mut sessions = match &user {
            Some(user) => {
                let now = self.shared.config().now();
                self.shared
                    .call(
                        Op::ListUserSessions,
                        self.shared.store().list_user_sessions(user, now),
                    )
                    .await?
            }
            None => Vec::new(),
        };
        // The request's own session is listed even when the store does not (yet) list it
        // under this user: its user was set by this request and is not saved yet.
        if let Some(current) = current
            && !sessions.iter().any(|s| s.key == current.key)
        {
            sessions.push(current);
        }
        sessions.sort_by(|a, b| (a.created_micros, &a.key).cmp(&(b.created_micros, &b.key)));
        let own = self.key();
        let sessions = sessions
            .into_iter()
            .map(|s| {
                let current = own == Some(&s.key);
                (s, current)
            })
            .collect();
        Ok((user.unwrap_or_default(), sessions))
    }
}

/// Whether `a == b`, in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One session of the signed-in user, as [`Session::user_sessions`] lists it. Times are unix
/// microseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionInfo {
    /// An opaque name for this session, to pass back to [`Session::end_user_session`]:
    /// 22 URL-safe characters (base64url of 128 bits of an HMAC of the session's store key
    /// and its user under a key derived from the first configured secret). It is neither
    /// the cookie, nor the id, nor the store key, none of them can be derived from it, and
    /// it ends a session only for that session's own user, so it is safe to show to the
    /// user and useless to anyone else. It changes when the first key is rotated (handles
    /// made with any configured key are still accepted).
    pub handle: String,
    /// Whether this is the session of the request.
    pub current: bool,
    /// When the session was created.
    pub created_micros: u64,
    /// When the session was last refreshed (the idle refresh is throttled to a quarter of
    /// the idle timeout, so this is that recent).
    pub last_seen_micros: u64,
    /// When the session expires unless used again: the earlier of its idle deadline and its
    /// absolute one.
    pub expires_micros: u64,
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
        &self.bound.config.inner
    }

    pub(crate) fn store(&self) -> &dyn SessionStore {
        &*self.bound.store
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
