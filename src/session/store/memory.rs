//! [`MemoryStore`]: sessions in this process's memory.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::future::ready;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{SessionRecord, SessionStore, StoreFuture, UserSession, WriteOutcome};
use crate::session::SessionKey;

/// Default maximum number of sessions.
const DEFAULT_CAPACITY: usize = 100_000;
/// Expired sessions reclaimed per write at most, so one write never does unbounded work.
/// Every write adds at most one session, so expired ones cannot pile up faster than this.
const SWEEP_PER_WRITE: usize = 16;

/// Sessions in this process's memory: the embedded default, for a single instance and tests.
///
/// Sessions vanish when the process exits and are not shared between instances: behind a load
/// balancer use [`RedisStore`](super::RedisStore) (feature `redis`).
///
/// **Bounded**: it holds at most [`capacity`](Self::capacity) sessions. Expired sessions are
/// reclaimed as it goes (every write first drops a few expired sessions, soonest deadline
/// first; reads drop the expired session they find), with no background task. When it is
/// full of live sessions, creating one **evicts the session closest to its deadline** (the
/// one that would expire first, typically the longest idle), so logins keep working under a
/// flood of new sessions; refusing new sessions instead would let such a flood lock every
/// user out. Evictions are counted ([`evictions`](Self::evictions)) and logged.
///
/// ```
/// use tower_rampart::session::{MemoryStore, SessionConfig, SessionLayer};
///
/// let store = MemoryStore::with_capacity(10_000);
/// let config = SessionConfig::builder().random_key().build().unwrap();
/// let layer = SessionLayer::new(store.clone(), config);
/// assert_eq!(store.len(), 0);
/// # drop(layer);
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    capacity: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    sessions: HashMap<SessionKey, SessionRecord>,
    /// `(deadline, key)` of every session, soonest first.
    by_deadline: BTreeSet<(u64, SessionKey)>,
    /// Keys of the sessions of each user.
    by_user: HashMap<String, HashSet<SessionKey>>,
    evictions: u64,
}

impl State {
    fn insert(&mut self, key: &SessionKey, record: SessionRecord) {
        self.remove(key);
        self.by_deadline.insert((record.deadline(), key.clone()));
        if let Some(user) = &record.user_id {
            self.by_user
                .entry(user.clone())
                .or_default()
                .insert(key.clone());
        }
        self.sessions.insert(key.clone(), record);
    }

    fn remove(&mut self, key: &SessionKey) -> Option<SessionRecord> {
        let record = self.sessions.remove(key)?;
        self.by_deadline.remove(&(record.deadline(), key.clone()));
        if let Some(user) = &record.user_id
            && let Some(keys) = self.by_user.get_mut(user)
        {
            keys.remove(key);
            if keys.is_empty() {
                self.by_user.remove(user);
            }
        }
        Some(record)
    }

    /// The live record under `key`; drops it if it has expired.
    fn live(&mut self, key: &SessionKey, now: u64) -> Option<&SessionRecord> {
        if self.sessions.get(key)?.is_expired(now) {
            self.remove(key);
            return None;
        }
        self.sessions.get(key)
    }

    fn sweep(&mut self, now: u64) {
        for _ in 0..SWEEP_PER_WRITE {
            match self.by_deadline.first() {
                Some((deadline, key)) if *deadline <= now => {
                    let key = key.clone();
                    self.remove(&key);
                }
                _ => break,
            }
        }
    }
}

impl MemoryStore {
    /// A store holding at most 100 000 sessions.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    /// A store holding at most `capacity` sessions (at least 1).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                capacity: capacity.max(1),
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// The maximum number of sessions.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// Sessions held, including expired ones not reclaimed yet.
    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Whether the store holds no session.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Live sessions evicted so far because the store was full.
    pub fn evictions(&self) -> u64 {
        self.lock().evictions
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps inconsistent in a way that
        // matters more than losing every session, so keep going.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("capacity", &self.inner.capacity)
            .field("len", &self.len())
            .finish()
    }
}

impl SessionStore for MemoryStore {
    fn load<'a>(
        &'a self,
        key: &'a SessionKey,
        now: u64,
        refresh: bool,
    ) -> StoreFuture<'a, Option<SessionRecord>> {
        let mut state = self.lock();
        let result = match state.live(key, now) {
            None => None,
            Some(record) if refresh && record.needs_refresh(now) => {
                let mut record = record.clone();
                record.refresh(now);
                state.insert(key, record.clone());
                Some(record)
            }
            Some(record) => Some(record.clone()),
        };
        Box::pin(ready(Ok(result)))
    }

    fn create<'a>(
        &'a self,
        key: &'a SessionKey,
        record: &'a SessionRecord,
        now: u64,
    ) -> StoreFuture<'a, bool> {
        let mut state = self.lock();
        state.sweep(now);
        let created = if state.live(key, now).is_some() {
            false
        } else {
            if state.sessions.len() >= self.inner.capacity
                && let Some((_, victim)) = state.by_deadline.first().cloned()
            {
                state.remove(&victim);
                state.evictions += 1;
                if state.evictions.is_power_of_two() {
                    tracing::warn!(
                        capacity = self.inner.capacity,
                        evictions = state.evictions,
                        "memory session store is full: evicting the sessions closest to expiry"
                    );
                }
            }
            let mut record = record.clone();
            record.version = 1;
            state.insert(key, record);
            true
        };
        Box::pin(ready(Ok(created)))
    }

    fn save<'a>(
        &'a self,
        key: &'a SessionKey,
        record: &'a SessionRecord,
        now: u64,
    ) -> StoreFuture<'a, WriteOutcome> {
        let mut state = self.lock();
        state.sweep(now);
        let outcome = match state.live(key, now) {
            None => WriteOutcome::Missing,
            Some(current) if current.version != record.version => {
                WriteOutcome::Conflict(current.clone())
            }
            Some(_) => {
                let mut record = record.clone();
                record.version += 1;
                state.insert(key, record);
                WriteOutcome::Written
            }
        };
        Box::pin(ready(Ok(outcome)))
    }

    fn delete<'a>(
        &'a self,
        key: &'a SessionKey,
        expected_version: Option<u64>,
        now: u64,
    ) -> StoreFuture<'a, WriteOutcome> {
        let mut state = self.lock();
        let outcome = match (state.live(key, now), expected_version) {
            (None, _) => WriteOutcome::Missing,
            (Some(current), Some(v)) if current.version != v => {
                WriteOutcome::Conflict(current.clone())
            }
            (Some(_), _) => {
                state.remove(key);
                WriteOutcome::Written
            }
        };
        Box::pin(ready(Ok(outcome)))
    }

    fn touch<'a>(&'a self, key: &'a SessionKey, now: u64) -> StoreFuture<'a, bool> {
        let mut state = self.lock();
        state.sweep(now);
        let touched = match state.live(key, now) {
            None => false,
            Some(record) => {
                let mut record = record.clone();
                record.refresh(now);
                state.insert(key, record);
                true
            }
        };
        Box::pin(ready(Ok(touched)))
    }

    fn delete_user_sessions<'a>(&'a self, user: &'a str, now: u64) -> StoreFuture<'a, u64> {
        let mut state = self.lock();
        let keys: Vec<SessionKey> = state
            .by_user
            .get(user)
            .map(|keys| keys.iter().cloned().collect())
            .unwrap_or_default();
        let mut deleted = 0;
        for key in keys {
            if let Some(record) = state.remove(&key)
                && !record.is_expired(now)
            {
                deleted += 1;
            }
        }
        Box::pin(ready(Ok(deleted)))
    }

    fn list_user_sessions<'a>(
        &'a self,
        user: &'a str,
        now: u64,
    ) -> StoreFuture<'a, Vec<UserSession>> {
        let state = self.lock();
        let sessions = state
            .by_user
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|key| {
                let record = state.sessions.get(key)?;
                (!record.is_expired(now)).then(|| UserSession::of(key.clone(), record))
            })
            .collect();
        Box::pin(ready(Ok(sessions)))
    }

    fn delete_user_session<'a>(
        &'a self,
        user: &'a str,
        key: &'a SessionKey,
        now: u64,
    ) -> StoreFuture<'a, bool> {
        let mut state = self.lock();
        let deleted = match state.live(key, now) {
            Some(record) if record.user_id.as_deref() == Some(user) => {
                state.remove(key);
                true
            }
            _ => false,
        };
        Box::pin(ready(Ok(deleted)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000;

    fn key(n: u8) -> SessionKey {
        SessionKey::parse(&format!("{n:032x}")).unwrap()
    }

    fn record(now: u64, idle_secs: u64) -> SessionRecord {
        SessionRecord {
            version: 0,
            created_micros: now,
            accessed_micros: now,
            idle_micros: idle_secs * SEC,
            expires_micros: now + 3600 * SEC,
            user_id: None,
            data: b"{}".to_vec(),
            binding: None,
        }
    }

    async fn create(store: &MemoryStore, n: u8, now: u64, idle: u64) -> bool {
        store
            .create(&key(n), &record(now, idle), now)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn full_store_evicts_the_session_closest_to_expiry() {
        let store = MemoryStore::with_capacity(3);
        assert!(create(&store, 1, 0, 100).await);
        assert!(create(&store, 2, 0, 50).await); // expires first
        assert!(create(&store, 3, 0, 200).await);
        assert!(create(&store, 4, 10 * SEC, 100).await);
        assert_eq!(store.len(), 3);
        assert_eq!(store.evictions(), 1);
        assert!(
            store
                .load(&key(2), 10 * SEC, false)
                .await
                .unwrap()
                .is_none()
        );
        for n in [1, 3, 4] {
            assert!(
                store
                    .load(&key(n), 10 * SEC, false)
                    .await
                    .unwrap()
                    .is_some()
            );
        }
    }

    #[tokio::test]
    async fn expired_sessions_are_reclaimed_by_writes_without_eviction() {
        let store = MemoryStore::with_capacity(100);
        for n in 0..10 {
            assert!(create(&store, n, 0, 10).await);
        }
        assert_eq!(store.len(), 10);
        // Long after they expired, one write reclaims them (10 <= SWEEP_PER_WRITE).
        assert!(create(&store, 200, 100 * SEC, 10).await);
        assert_eq!(store.len(), 1);
        assert_eq!(store.evictions(), 0);
    }

    #[tokio::test]
    async fn a_full_store_of_expired_sessions_does_not_evict_live_ones() {
        let store = MemoryStore::with_capacity(2);
        assert!(create(&store, 1, 0, 10).await);
        assert!(create(&store, 2, 0, 1000).await);
        assert!(create(&store, 3, 20 * SEC, 1000).await); // 1 expired: reclaimed, not evicted
        assert_eq!(store.evictions(), 0);
        assert!(
            store
                .load(&key(2), 20 * SEC, false)
                .await
                .unwrap()
                .is_some()
        );
    }
}
