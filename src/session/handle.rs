//! The [`Session`] handle that handlers use, and the commit that runs after the response.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio::sync::{Mutex, MutexGuard};

use super::config::{ConfigInner, MAX_LIFETIME};
use super::cookie::SessionId;
use super::store::{SessionRecord, SessionStore, StoreError, StoreFuture, WriteOutcome};
use super::{SessionKey, crypto};

/// Compare-and-set attempts of one commit before it gives up with
/// [`SessionError::Contention`]. Each attempt after a conflict costs one round trip (the
/// conflicting record comes back with the refusal), so this only bounds pathological cases.
const MAX_ATTEMPTS: usize = 128;
/// Attempts to find an unused id (a collision of 128 random bits does not happen; a broken
/// random generator must not loop forever).
const MAX_CREATE_ATTEMPTS: usize = 4;

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
    config: Arc<ConfigInner>,
    store: Arc<dyn SessionStore>,
    /// The verified id of the request's cookie.
    incoming: Option<SessionId>,
    /// The request carried a cookie with the session cookie's name that the layer rejected
    /// (malformed, wrongly signed, oversized, duplicated). Its value is not kept.
    rejected_cookie: bool,
    state: Mutex<State>,
    /// A store call failed during this request.
    failed: AtomicBool,
}

#[derive(Default)]
struct State {
    loaded: bool,
    /// The live record the request's cookie points to, as loaded.
    current: Option<Current>,
    /// The data as this request sees it: the loaded data with this request's changes.
    data: Map<String, Value>,
    user: Option<String>,
    changes: Changes,
    cycle: bool,
    /// Delete this session when committing.
    delete: Option<SessionId>,
    /// Remove the browser's session cookie (logout of a request that carried one, valid or
    /// rejected).
    remove_cookie: bool,
}

struct Current {
    id: SessionId,
    record: SessionRecord,
}

/// This request's own changes, re-applied on top of a newer record after a conflict.
#[derive(Default)]
struct Changes {
    cleared: bool,
    /// Per key: the new value, or `None` for a removal. Later changes replace earlier ones.
    ops: BTreeMap<String, Option<Value>>,
    user: Option<Option<String>>,
    expiry: Option<Expiry>,
}

impl Changes {
    fn is_empty(&self) -> bool {
        !self.cleared && self.ops.is_empty() && self.user.is_none() && self.expiry.is_none()
    }

    fn apply(&self, data: &mut Map<String, Value>) {
        if self.cleared {
            data.clear();
        }
        for (key, op) in &self.ops {
            match op {
                Some(value) => data.insert(key.clone(), value.clone()),
                None => data.remove(key),
            };
        }
    }
}

/// A per-session override of the layer's expiry settings, for
/// [`Session::set_expiry`]: e.g. a shorter idle timeout for an administrator, or an
/// absolute deadline tied to a token's expiry.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tower_rampart::session::Expiry;
///
/// let expiry = Expiry::new()
///     .idle_timeout(Duration::from_secs(15 * 60))
///     .expires_at(SystemTime::now() + Duration::from_secs(3600));
/// # let _ = expiry;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expiry {
    idle: Option<Duration>,
    end: Option<End>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Lifetime(Duration),
    At(SystemTime),
}

impl Expiry {
    /// Keeps everything as it is; set parts with the other methods.
    pub fn new() -> Self {
        Self::default()
    }

    /// The idle timeout of this session (at least one second).
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle = Some(idle.max(Duration::from_secs(1)));
        self
    }

    /// The absolute lifetime of this session, counted from its creation. It may exceed the
    /// layer's (a "remember me" session), up to 400 days from now; the cookie's `Max-Age`
    /// follows it.
    pub fn absolute_lifetime(mut self, lifetime: Duration) -> Self {
        self.end = Some(End::Lifetime(lifetime));
        self
    }

    /// The absolute deadline of this session, e.g. the expiry of a token stored in it (at
    /// most 400 days from now). A deadline in the past ends the session.
    pub fn expires_at(mut self, at: SystemTime) -> Self {
        self.end = Some(End::At(at));
        self
    }

    fn merge(self, newer: Expiry) -> Expiry {
        Expiry {
            idle: newer.idle.or(self.idle),
            end: newer.end.or(self.end),
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Which session value could not be converted (its key), and nothing else: serde's own
/// messages quote the offending value, and sessions hold tokens, so neither the value nor
/// serde's error is kept, shown or offered as a source.
///
/// ```
/// use tower_rampart::session::{SessionError, ValueError};
///
/// let e = SessionError::Deserialize(ValueError::of("visits"));
/// assert_eq!(e.to_string(), r#"session value "visits" does not have the requested type"#);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ValueError {
    key: Option<String>,
}

impl ValueError {
    /// The error of the value under `key`.
    pub fn of(key: &str) -> Self {
        Self {
            key: Some(key.to_owned()),
        }
    }

    /// The key of the value, if the error concerns one value (not the whole record).
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }
}

/// Writes ` "key"` (with a leading space), or nothing for the whole record.
impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(k) => write!(f, " {k:?}"),
            None => Ok(()),
        }
    }
}

/// An error of a [`Session`] method or of saving the session.
///
/// With the `axum` feature it is also a response: `503` for store failures,
/// `500` for data that cannot be (de)serialized. The layer answers a `5xx` response given
/// while the store was failing with its configured "unavailable" response.
#[derive(Debug)]
#[non_exhaustive]
pub enum SessionError {
    /// The store failed or did not answer in time.
    Store(StoreError),
    /// A value could not be serialized.
    Serialize(ValueError),
    /// A stored value does not deserialize into the requested type.
    Deserialize(ValueError),
    /// The operating system's random generator failed.
    Random,
    /// Concurrent requests kept changing this session; this request's changes were not saved.
    Contention,
}

impl SessionError {
    /// Whether this error means the session service is unavailable (answer `503`), rather than
    /// a bug in the data (answer `500`).
    pub fn is_unavailable(&self) -> bool {
        !matches!(
            self,
            SessionError::Serialize(_) | SessionError::Deserialize(_)
        )
    }
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Store(e) => e.fmt(f),
            SessionError::Serialize(e) => write!(f, "session value{e} cannot be serialized"),
            SessionError::Deserialize(e) => {
                write!(f, "session value{e} does not have the requested type")
            }
            SessionError::Random => f.write_str("the operating system's random generator failed"),
            SessionError::Contention => {
                f.write_str("the session was changed by too many concurrent requests")
            }
        }
    }
}

impl std::error::Error for SessionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SessionError::Store(e) => Some(e),
            SessionError::Serialize(_) | SessionError::Deserialize(_) => None,
            _ => None,
        }
    }
}

impl From<StoreError> for SessionError {
    fn from(e: StoreError) -> Self {
        SessionError::Store(e)
    }
}

/// What the commit asks of the response's cookies.
pub(crate) enum CookieUpdate {
    Keep,
    Set { id: SessionId, max_age_secs: u64 },
    Remove,
}

impl Session {
    pub(crate) fn new(
        config: Arc<ConfigInner>,
        store: Arc<dyn SessionStore>,
        incoming: Option<SessionId>,
        rejected_cookie: bool,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                store,
                incoming,
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
            state.data.insert(key.clone(), value.clone());
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
    /// opaque id (not an email): stores keep it unencrypted.
    pub async fn set_user_id(&self, user: impl Into<String>) -> Result<(), SessionError> {
        self.change_user(Some(user.into())).await
    }

    /// Forgets the user of this session.
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

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("key", &self.key())
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// A store call bounded by the configured timeout; failures are remembered for the layer
    /// and logged once per burst.
    async fn call<T>(&self, fut: StoreFuture<'_, T>) -> Result<T, StoreError> {
        let timeout = self.config.store_timeout;
        let result = match tokio::time::timeout(timeout, fut).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::timeout(timeout)),
        };
        if let Err(error) = &result {
            self.failed.store(true, Ordering::Relaxed);
            if self.config.log_throttle.allow(self.config.now()) {
                tracing::warn!(%error, "session store call failed");
            }
        }
        result
    }

    async fn load(&self, state: &mut State) -> Result<(), SessionError> {
        let Some(id) = &self.incoming else {
            state.loaded = true;
            return Ok(());
        };
        let now = self.config.now();
        let record = self.call(self.store.load(id.key(), now, true)).await?;
        state.loaded = true;
        if let Some(record) = record {
            match decode(&self.config, id.key(), &record.data) {
                Some(data) => {
                    state.data = data;
                    state.user.clone_from(&record.user_id);
                    state.current = Some(Current {
                        id: id.clone(),
                        record,
                    });
                }
                None => tracing::warn!(
                    session = %id.key(),
                    "session record cannot be decoded (unknown key or corrupt): starting a new session"
                ),
            }
        }
        Ok(())
    }

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

    /// Writes this request's changes. `server_error`: the response is a 5xx, so only a
    /// deletion is carried out.
    pub(crate) async fn commit(&self, server_error: bool) -> Result<CookieUpdate, SessionError> {
        let mut guard = self.state.lock().await;
        let state = &mut *guard;
        let mut update = CookieUpdate::Keep;
        if let Some(old) = state.delete.take() {
            let now = self.config.now();
            self.call(self.store.delete(old.key(), None, now)).await?;
        }
        if std::mem::take(&mut state.remove_cookie) {
            update = CookieUpdate::Remove;
        }
        if server_error || (state.changes.is_empty() && !state.cycle) {
            return Ok(update);
        }
        let changes = std::mem::take(&mut state.changes);
        let cycle = std::mem::take(&mut state.cycle);
        let now = self.config.now();
        let Some(current) = state.current.take() else {
            let record = self.build(None, &changes, now);
            let (id, record) = self.create(record, &state.data, now).await?;
            return Ok(self.set_cookie(id, &record, now));
        };
        let mut data = std::mem::take(&mut state.data);
        if cycle {
            return self.cycle(current, &changes, &data, now, update).await;
        }
        let key = current.id.key();
        let mut base = current.record;
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                backoff(attempt).await;
            }
            let mut record = self.build(Some(&base), &changes, now);
            record.data = encode(&self.config, key, &data)?;
            match self.call(self.store.save(key, &record, now)).await? {
                WriteOutcome::Written if changes.expiry.is_some() => {
                    return Ok(self.set_cookie(current.id, &record, now));
                }
                WriteOutcome::Written => return Ok(update),
                WriteOutcome::Missing => {
                    // Deleted (logout wins) or expired meanwhile: never recreate it.
                    tracing::debug!(session = %key, "session ended by a concurrent request; changes dropped");
                    return Ok(update);
                }
                WriteOutcome::Conflict(newer) => {
                    let Some(mut newer_data) = decode(&self.config, key, &newer.data) else {
                        tracing::warn!(session = %key, "concurrently saved session cannot be decoded; changes dropped");
                        return Ok(update);
                    };
                    changes.apply(&mut newer_data);
                    data = newer_data;
                    base = newer;
                }
            }
        }
        Err(SessionError::Contention)
    }

    /// Moves the session `old` to a fresh id (`cycle_id`): creates the new record (only if
    /// absent), then deletes the old one if it still has the version the new record was built
    /// from. A concurrent save of the old record is merged into the new record and the delete
    /// retried; a concurrent logout or expiry of the old record wins: the new record is
    /// discarded and no cookie is sent.
    ///
    /// A failed store call is returned (the request is answered `503`) and the new id is
    /// never sent, so the browser keeps the old session. A record left under the unsent id
    /// is unreachable and expires with its idle timeout; it is not cleaned up here, as that
    /// would add one more call (and possibly one more timeout) to a store that just failed.
    async fn cycle(
        &self,
        old: Current,
        changes: &Changes,
        data: &Map<String, Value>,
        now: u64,
        update: CookieUpdate,
    ) -> Result<CookieUpdate, SessionError> {
        let old_key = old.id.key();
        let mut base = old.record;
        let (mut id, mut record) = self
            .create(self.build(Some(&base), changes, now), data, now)
            .await?;
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                backoff(attempt).await;
            }
            match self
                .call(self.store.delete(old_key, Some(base.version), now))
                .await?
            {
                WriteOutcome::Written => return Ok(self.set_cookie(id, &record, now)),
                WriteOutcome::Missing => {
                    // Logged out (logout wins) or expired meanwhile: the new id is never sent.
                    tracing::debug!(session = %old_key, "session ended by a concurrent request; its new id is dropped");
                    self.discard(&id, now).await;
                    return Ok(update);
                }
                WriteOutcome::Conflict(newer) => {
                    let Some(mut newer_data) = decode(&self.config, old_key, &newer.data) else {
                        tracing::warn!(session = %old_key, "concurrently saved session cannot be decoded; changes dropped");
                        self.discard(&id, now).await;
                        return Ok(update);
                    };
                    changes.apply(&mut newer_data);
                    let mut next = self.build(Some(&newer), changes, now);
                    next.version = record.version;
                    next.data = encode(&self.config, id.key(), &newer_data)?;
                    match self.call(self.store.save(id.key(), &next, now)).await? {
                        WriteOutcome::Written => {
                            next.version += 1;
                            record = next;
                        }
                        // Only this request knows the new id, so its record can only have been
                        // evicted (a full memory store): start over under another fresh id.
                        WriteOutcome::Missing | WriteOutcome::Conflict(_) => {
                            (id, record) = self.create(next, &newer_data, now).await?;
                        }
                    }
                    base = newer;
                }
            }
        }
        self.discard(&id, now).await;
        Err(SessionError::Contention)
    }

    /// Deletes a record this request created but whose id it will not send. Best effort: a
    /// failure is logged by [`call`](Self::call), and the record is unreachable anyway.
    async fn discard(&self, id: &SessionId, now: u64) {
        let _ = self.call(self.store.delete(id.key(), None, now)).await;
    }

    /// The record to write: `base`'s fields with this request's user and expiry changes.
    fn build(&self, base: Option<&SessionRecord>, changes: &Changes, now: u64) -> SessionRecord {
        let config = &self.config;
        let created = base.map_or(now, |b| b.created_micros);
        let mut idle = base.map_or(micros(config.idle_timeout), |b| b.idle_micros);
        let mut expires = base.map_or(now.saturating_add(micros(config.absolute_lifetime)), |b| {
            b.expires_micros
        });
        if let Some(expiry) = changes.expiry {
            if let Some(d) = expiry.idle {
                idle = micros(d.min(MAX_LIFETIME));
            }
            match expiry.end {
                Some(End::Lifetime(d)) => expires = created.saturating_add(micros(d)),
                Some(End::At(at)) => {
                    expires = at
                        .duration_since(UNIX_EPOCH)
                        .map(micros)
                        .unwrap_or_default();
                }
                None => {}
            }
            // Browsers keep cookies at most 400 days; so do stores.
            expires = expires.min(now.saturating_add(micros(MAX_LIFETIME)));
        }
        let user_id = match &changes.user {
            Some(user) => user.clone(),
            None => base.and_then(|b| b.user_id.clone()),
        };
        SessionRecord {
            version: base.map_or(0, |b| b.version),
            created_micros: created,
            accessed_micros: now,
            idle_micros: idle,
            expires_micros: expires,
            user_id,
            data: Vec::new(),
        }
    }

    /// Stores `record` under a fresh id (only if absent: an existing session is never
    /// overwritten).
    async fn create(
        &self,
        mut record: SessionRecord,
        data: &Map<String, Value>,
        now: u64,
    ) -> Result<(SessionId, SessionRecord), SessionError> {
        for _ in 0..MAX_CREATE_ATTEMPTS {
            let id = SessionId::generate().map_err(|_| SessionError::Random)?;
            record.data = encode(&self.config, id.key(), data)?;
            if self.call(self.store.create(id.key(), &record, now)).await? {
                record.version = 1;
                return Ok((id, record));
            }
        }
        Err(SessionError::Random)
    }

    fn set_cookie(&self, id: SessionId, record: &SessionRecord, now: u64) -> CookieUpdate {
        CookieUpdate::Set {
            id,
            max_age_secs: record.expires_micros.saturating_sub(now) / 1_000_000,
        }
    }
}

/// After a conflict: retry at once a few times, then wait a little, randomly, so a crowd of
/// requests of one session stops colliding.
async fn backoff(attempt: usize) {
    if attempt >= 4 {
        let mut r = [0u8; 2];
        let _ = crypto::random_bytes(&mut r);
        let cap = 200 * attempt.min(10) as u64;
        let wait = u64::from(u16::from_le_bytes(r)) % cap;
        tokio::time::sleep(Duration::from_micros(wait)).await;
    }
}

fn encode(
    config: &ConfigInner,
    key: &SessionKey,
    data: &Map<String, Value>,
) -> Result<Vec<u8>, SessionError> {
    let json =
        serde_json::to_vec(data).map_err(|_| SessionError::Serialize(ValueError::default()))?;
    if !config.encrypt {
        return Ok(json);
    }
    config.keys()[0]
        .encrypt(key.as_str(), &json)
        .map_err(|_| SessionError::Random)
}

/// The data of a record: decrypted with any configured key, or plain JSON when encryption is
/// off (so turning it off keeps encrypted sessions readable, and turning it on does not
/// trust records it did not seal).
fn decode(config: &ConfigInner, key: &SessionKey, bytes: &[u8]) -> Option<Map<String, Value>> {
    if bytes.first() == Some(&b'{') {
        return if config.encrypt {
            None
        } else {
            serde_json::from_slice(bytes).ok()
        };
    }
    config
        .keys()
        .iter()
        .find_map(|k| k.decrypt(key.as_str(), bytes))
        .and_then(|plain| serde_json::from_slice(&plain).ok())
}

#[cfg(feature = "axum")]
mod axum_impls {
    use super::{Session, SessionError};
    use axum::extract::{FromRequestParts, OptionalFromRequestParts};
    use axum::response::{IntoResponse, Response};
    use http::StatusCode;
    use http::request::Parts;
    use std::convert::Infallible;
    use std::fmt;

    /// The rejection of the [`Session`] extractor: the router has no
    /// [`SessionLayer`](crate::session::SessionLayer). A bug in the application, answered with
    /// `500`.
    #[derive(Clone, Copy, Debug, Default)]
    pub struct MissingSessionLayer;

    impl fmt::Display for MissingSessionLayer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(
                "the Session extractor needs tower_rampart::session::SessionLayer around this route",
            )
        }
    }

    impl std::error::Error for MissingSessionLayer {}

    impl IntoResponse for MissingSessionLayer {
        fn into_response(self) -> Response {
            tracing::error!("{self}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(http::header::CONTENT_TYPE, "application/json")],
                format!(r#"{{"detail":"{self}"}}"#),
            )
                .into_response()
        }
    }

    impl<S: Send + Sync> FromRequestParts<S> for Session {
        type Rejection = MissingSessionLayer;

        async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
            parts
                .extensions
                .get::<Session>()
                .cloned()
                .ok_or(MissingSessionLayer)
        }
    }

    impl<S: Send + Sync> OptionalFromRequestParts<S> for Session {
        type Rejection = Infallible;

        async fn from_request_parts(
            parts: &mut Parts,
            _: &S,
        ) -> Result<Option<Self>, Self::Rejection> {
            Ok(parts.extensions.get::<Session>().cloned())
        }
    }

    impl IntoResponse for SessionError {
        fn into_response(self) -> Response {
            let (status, body) = if self.is_unavailable() {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    r#"{"detail":"Session store unavailable"}"#,
                )
            } else {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    r#"{"detail":"Session data error"}"#,
                )
            };
            (
                status,
                [(http::header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response()
        }
    }
}

#[cfg(feature = "axum")]
pub use axum_impls::MissingSessionLayer;
