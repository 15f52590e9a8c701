//! The commit that runs after the response: load, compare-and-set save, merge after a
//! conflict, `cycle_id`, create.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::config::MAX_LIFETIME;
use super::cookie::UserTag;
use super::crypto::{self, bind, encode, open};
use super::error::SessionError;
use super::expiry::{End, Expiry};
use super::id::SessionId;
use super::session::{Current, Shared, State};
use super::store::{SessionRecord, StoreError, StoreFuture, WriteOutcome};

/// Compare-and-set attempts of one commit before it gives up with
/// [`SessionError::Contention`]. Each attempt after a conflict costs one round trip (the
/// conflicting record comes back with the refusal), so this only bounds pathological cases.
const MAX_ATTEMPTS: usize = 128;
/// Attempts to find an unused id (a collision of 128 random bits does not happen; a broken
/// random generator must not loop forever).
const MAX_CREATE_ATTEMPTS: usize = 4;

/// This request's own changes, re-applied on top of a newer record after a conflict.
#[derive(Default)]
pub(super) struct Changes {
    pub(super) cleared: bool,
    /// Per key: the new value, or `None` for a removal. Later changes replace earlier ones.
    pub(super) ops: BTreeMap<String, Option<Value>>,
    pub(super) user: Option<Option<String>>,
    pub(super) expiry: Option<Expiry>,
}

impl Changes {
    pub(super) fn is_empty(&self) -> bool {
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

/// A session store call, as `rampart.session.operation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Load = 0,
    Create = 1,
    Save = 2,
    Delete = 3,
    ListUserSessions = 4,
    DeleteUserSessions = 5,
    DeleteUserSession = 6,
}

/// How a compare-and-set conflict ended, as `rampart.session.resolution`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Resolution {
    /// This request's changes were applied on top of the newer record.
    Merged = 0,
    /// The newer record could not be opened: this request's changes were dropped.
    Dropped = 1,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// What the commit asks of the response's cookies.
pub(crate) enum CookieUpdate {
    Keep,
    Set {
        id: SessionId,
        user_tag: Option<UserTag>,
        max_age_secs: u64,
    },
    Remove,
}

impl Shared {
    /// A store call bounded by the configured timeout; failures are remembered for the layer
    /// and logged once per burst.
    pub(super) async fn call<T>(&self, op: Op, fut: StoreFuture<'_, T>) -> Result<T, StoreError> {
        let timeout = self.config().store_timeout;
        #[cfg(feature = "opentelemetry")]
        let started = self.config().metrics.stopwatch();
        let result = match tokio::time::timeout(timeout, fut).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::timeout(timeout)),
        };
        #[cfg(feature = "opentelemetry")]
        self.config().metrics.call(op, result.is_ok(), started);
        #[cfg(not(feature = "opentelemetry"))]
        let _ = op;
        if let Err(error) = &result {
            self.failed.store(true, Ordering::Relaxed);
            if self.config().log_throttle.allow(self.config().now()) {
                tracing::warn!(%error, "session store call failed");
            }
        }
        result
    }

    /// Counts a compare-and-set conflict (nothing without the feature).
    fn conflict(&self, resolution: Resolution) {
        #[cfg(feature = "opentelemetry")]
        self.config().metrics.conflict(resolution);
        #[cfg(not(feature = "opentelemetry"))]
        let _ = resolution;
    }

    pub(super) async fn load(&self, state: &mut State) -> Result<(), SessionError> {
        let Some(id) = &self.incoming else {
            state.loaded = true;
            return Ok(());
        };
        let now = self.config().now();
        let record = self
            .call(Op::Load, self.store().load(id.key(), now, true))
            .await?;
        state.loaded = true;
        if let Some(record) = record {
            match open(self.config(), id.key(), &record) {
                Ok(data) => {
                    state.data = data;
                    state.user.clone_from(&record.user_id);
                    state.current = Some(Current {
                        id: id.clone(),
                        record,
                    });
                }
                // Like no cookie: a write starts a new session under a new id.
                Err(why) => tracing::warn!(session = %id.key(), "{}", why.describe()),
            }
        }
        Ok(())
    }
    /// Writes this request's changes. `server_error`: the response is a 5xx, so only a
    /// deletion is carried out.
    pub(crate) async fn commit(&self, server_error: bool) -> Result<CookieUpdate, SessionError> {
        let mut guard = self.state.lock().await;
        let state = &mut *guard;
        let mut update = CookieUpdate::Keep;
        if let Some(old) = state.delete.take() {
            let now = self.config().now();
            self.call(Op::Delete, self.store().delete(old.key(), None, now))
                .await?;
        }
        if std::mem::take(&mut state.remove_cookie) {
            update = CookieUpdate::Remove;
        }
        if state.changes.is_empty() && !state.cycle {
            return Ok(update);
        }
        if server_error {
            #[cfg(feature = "opentelemetry")]
            self.config().metrics.save_skipped();
            return Ok(update);
        }
        let changes = std::mem::take(&mut state.changes);
        let cycle = std::mem::take(&mut state.cycle);
        let now = self.config().now();
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
            record.data = encode(self.config(), key, &data)?;
            record.binding = Some(bind(
                self.config(),
                key,
                record.version.saturating_add(1),
                &record,
            ));
            match self
                .call(Op::Save, self.store().save(key, &record, now))
                .await?
            {
                // A new expiry, or a cookie whose user tag no longer matches the user (set or
                // cleared by this request or a concurrent one; or a cookie from before tagging
                // was turned on): the cookie is sent again.
                WriteOutcome::Written
                    if changes.expiry.is_some() || self.user_tag_outdated(&record) =>
                {
                    return Ok(self.set_cookie(current.id, &record, now));
                }
                WriteOutcome::Written => return Ok(update),
                WriteOutcome::Missing => {
                    // Deleted (logout wins) or expired meanwhile: never recreate it.
                    tracing::debug!(session = %key, "session ended by a concurrent request; changes dropped");
                    return Ok(update);
                }
                WriteOutcome::Conflict(newer) => {
                    let mut newer_data = match open(self.config(), key, &newer) {
                        Ok(data) => data,
                        Err(why) => {
                            self.conflict(Resolution::Dropped);
                            tracing::warn!(session = %key, "concurrently saved session: {}; changes dropped", why.describe());
                            return Ok(update);
                        }
                    };
                    self.conflict(Resolution::Merged);
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
                .call(
                    Op::Delete,
                    self.store().delete(old_key, Some(base.version), now),
                )
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
                    let mut newer_data = match open(self.config(), old_key, &newer) {
                        Ok(data) => data,
                        Err(why) => {
                            self.conflict(Resolution::Dropped);
                            tracing::warn!(session = %old_key, "concurrently saved session: {}; changes dropped", why.describe());
                            self.discard(&id, now).await;
                            return Ok(update);
                        }
                    };
                    self.conflict(Resolution::Merged);
                    changes.apply(&mut newer_data);
                    let mut next = self.build(Some(&newer), changes, now);
                    next.version = record.version;
                    next.data = encode(self.config(), id.key(), &newer_data)?;
                    next.binding = Some(bind(
                        self.config(),
                        id.key(),
                        next.version.saturating_add(1),
                        &next,
                    ));
                    match self
                        .call(Op::Save, self.store().save(id.key(), &next, now))
                        .await?
                    {
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
        let _ = self
            .call(Op::Delete, self.store().delete(id.key(), None, now))
            .await;
    }

    /// The record to write: `base`'s fields with this request's user and expiry changes.
    fn build(&self, base: Option<&SessionRecord>, changes: &Changes, now: u64) -> SessionRecord {
        let config = self.config();
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
            binding: None,
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
            record.data = encode(self.config(), id.key(), data)?;
            record.binding = Some(bind(self.config(), id.key(), 1, &record));
            if self
                .call(Op::Create, self.store().create(id.key(), &record, now))
                .await?
            {
                record.version = 1;
                return Ok((id, record));
            }
        }
        Err(SessionError::Random)
    }

    /// Whether the request's cookie carries another user tag than a cookie for `record`
    /// would.
    fn user_tag_outdated(&self, record: &SessionRecord) -> bool {
        self.config().codec.user_tag_for(record.user_id.as_deref()) != self.incoming_user_tag
    }

    fn set_cookie(&self, id: SessionId, record: &SessionRecord, now: u64) -> CookieUpdate {
        CookieUpdate::Set {
            id,
            user_tag: self.config().codec.user_tag_for(record.user_id.as_deref()),
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
