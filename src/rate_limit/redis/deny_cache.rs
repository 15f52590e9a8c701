//! The exact local deny cache (see the backend's docs).

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::rate_limit::key::LimitKey;
use crate::rate_limit::lock;

const DENY_SHARDS: usize = 16;

/// Per key: (quota id, denied until) pairs.
type DenyShard = Mutex<HashMap<LimitKey, Vec<(u32, u64)>>>;

/// Keys known to have no unit left until a local time.
pub(super) struct DenyCache {
    pub(super) capacity: usize,
    per_shard: usize,
    hasher: RandomState,
    shards: Box<[DenyShard]>,
    /// Bumped at the start and at the end of every reset: a denial whose decision overlapped
    /// a reset (sent before its end, answered after its start) is not cached, as it may
    /// describe the state before the reset.
    resets: AtomicU64,
}

impl DenyCache {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            per_shard: capacity.div_ceil(DENY_SHARDS),
            hasher: RandomState::new(),
            shards: (0..DENY_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            resets: AtomicU64::new(0),
        }
    }

    /// The reset generation, read when a decision is sent and passed to [`put`](Self::put).
    pub(super) fn generation(&self) -> u64 {
        self.resets.load(Ordering::SeqCst)
    }

    /// Marks the start or the end of a reset.
    pub(super) fn bump(&self) {
        self.resets.fetch_add(1, Ordering::SeqCst);
    }

    /// Forgets the denial of quota `id` for `key`; true if there was one (live or not).
    pub(super) fn remove(&self, id: u32, key: &LimitKey) -> bool {
        if self.capacity == 0 {
            return false;
        }
        let mut shard = lock(self.shard(key));
        let Some(list) = shard.get_mut(key) else {
            return false;
        };
        let before = list.len();
        list.retain(|e| e.0 != id);
        let removed = list.len() != before;
        if list.is_empty() {
            shard.remove(key);
        }
        removed
    }

    fn shard(&self, key: &LimitKey) -> &DenyShard {
        let h = self.hasher.hash_one(key);
        &self.shards[(h % DENY_SHARDS as u64) as usize]
    }

    pub(super) fn get(&self, id: u32, key: &LimitKey, now: u64) -> Option<u64> {
        if self.capacity == 0 {
            return None;
        }
        let shard = lock(self.shard(key));
        let until = shard.get(key)?.iter().find(|e| e.0 == id)?.1;
        (until > now).then_some(until)
    }

    /// Records a denial of a decision sent at reset generation `generation` (dropped if a
    /// reset overlapped it).
    pub(super) fn put(&self, id: u32, key: &LimitKey, until: u64, now: u64, generation: u64) {
        if self.capacity == 0 {
            return;
        }
        let mut shard = lock(self.shard(key));
        // Checked under the shard lock: a reset bumps before its DEL and again before it
        // clears this entry, so a put that sees the old generation here is cleared after.
        if self.generation() != generation {
            return;
        }
        if let Some(list) = shard.get_mut(key) {
            list.retain(|e| e.0 != id && e.1 > now);
            list.push((id, until));
            return;
        }
        if shard.len() >= self.per_shard {
            shard.retain(|_, list| {
                list.retain(|e| e.1 > now);
                !list.is_empty()
            });
            if shard.len() >= self.per_shard {
                // Full of live denials: this one is simply not cached (Redis is asked again).
                return;
            }
        }
        shard.insert(key.clone(), vec![(id, until)]);
    }

    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_forgets_one_quota_of_one_key() {
        let cache = DenyCache::new(100);
        let (a, b) = (LimitKey::new("a"), LimitKey::new("b"));
        let g = cache.generation();
        cache.put(0, &a, 50, 10, g);
        cache.put(1, &a, 50, 10, g);
        cache.put(0, &b, 50, 10, g);
        assert!(cache.remove(0, &a));
        assert!(!cache.remove(0, &a));
        assert_eq!(cache.get(0, &a, 20), None);
        assert_eq!(cache.get(1, &a, 20), Some(50));
        assert_eq!(cache.get(0, &b, 20), Some(50));
        assert!(!cache.remove(7, &LimitKey::new("never")));
    }

    #[test]
    fn a_denial_sent_before_a_reset_and_answered_after_it_is_not_cached() {
        let cache = DenyCache::new(100);
        let key = LimitKey::new("k");
        // Sent before the reset started, answered after it started or ended.
        let sent = cache.generation();
        cache.bump();
        cache.put(0, &key, 50, 10, sent);
        assert_eq!(cache.get(0, &key, 20), None);
        cache.bump();
        cache.put(0, &key, 50, 10, sent);
        assert_eq!(cache.get(0, &key, 20), None);
        // Sent after the reset ended: cached.
        cache.put(0, &key, 50, 10, cache.generation());
        assert_eq!(cache.get(0, &key, 20), Some(50));
    }
}
