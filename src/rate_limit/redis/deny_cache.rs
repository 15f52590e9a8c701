//! The exact local deny cache (see the backend's docs).

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Mutex;

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
        }
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

    pub(super) fn put(&self, id: u32, key: &LimitKey, until: u64, now: u64) {
        if self.capacity == 0 {
            return;
        }
        let mut shard = lock(self.shard(key));
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
