//! The in-process backend: sharded, bounded, exact.

use std::fmt;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use hashbrown::HashTable;

use super::clock::MonotonicClock;
use super::decision::QuotaDecision;
use super::key::LimitKey;
use super::quota::{Meaning, Quota, QuotaError};
use super::{Names, gcra, lock, window};
use crate::clock::Clock;

/// Default bound on the number of keys a [`MemoryBackend`] holds.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

const DEFAULT_SHARDS: usize = 64;

/// In-process limiter state: per-instance limits (or the local fallback of the Redis backend).
///
/// * **Sharded**: keys are hashed once (foldhash keyed from the operating system's randomness,
///   so clients cannot aim at one shard; the hash never leaves the process) into 64 shards,
///   each a `Mutex<HashMap>`; a decision locks one shard (a request with several quotas locks
///   its shards in ascending order, so multi-quota decisions are atomic and deadlock-free).
/// * **Bounded**: at most `max_keys` keys (default 100 000). A key whose bucket is full again
///   is equivalent to an absent key, so reclaiming it changes no decision: when a shard is
///   full, an eighth of its entries are dropped — expired ones first (exact). Only if fewer
///   than an eighth have expired are live entries dropped too, those with the **least of
///   their quota in use** at that moment (among equals, those sooner full again): such a
///   client gets back only the few units it had used. A client that used up its quota is
///   the last to be dropped, so a flood of new keys (one request each) cannot buy it its
///   quota back. Those evictions are counted ([`evicted_live`]) so that an undersized bound
///   shows. Amortised cost: O(1) per new key; deciding for a key already held does no extra
///   work.
/// * **Compact**: one table per meaning and key form. A key that is an IPv4 address, an IPv6
///   network of up to /64 or the global key is stored exactly in 16 bytes: a GCRA entry takes
///   24 bytes (100k clients: 2.4 MB, mostly in cache), a window entry 40 bytes, plus a heap
///   ring of 16 bytes per admission once a key has two or more inside its window (at most
///   `min(limit, max_slots)`); a refusal of a client that used up its quota reads the entry
///   only. A text key of up to 34 bytes (the built-in ones: `u:`, `s:`, `h:` and 32 hex
///   digits) is copied into its entry, so that a lookup compares it without following a
///   pointer: a GCRA entry takes 48 bytes, a window entry 64, aligned to a cache line (a
///   decision reads one line). Longer texts (and IPv6 keys grouped by more than /64) are
///   held by the entry as the [`LimitKey`] itself. A window entry stores no expiry time: when
///   the shard makes room it is computed from the state (the newest admission leaving the
///   window).
///
/// ```
/// use tower_rampart::rate_limit::{LimitKey, MemoryBackend, Quota};
///
/// let backend = MemoryBackend::builder().max_keys(10_000).build();
/// let per_user = backend.keyed("user", Quota::per_second(5)).unwrap();
/// let alice = LimitKey::new("user:alice");
/// assert!(per_user.check(&alice).is_allowed());
/// assert_eq!(backend.len(), 1);
/// ```
///
/// [`evicted_live`]: MemoryBackend::evicted_live
#[derive(Clone)]
pub struct MemoryBackend {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Padded]>,
    shard_mask: u64,
    shard_cap: usize,
    max_keys: usize,
    hasher: TableHasher,
    names: Names,
    evicted_live: AtomicU64,
}

/// Builder of a [`MemoryBackend`].
///
/// ```
/// use tower_rampart::rate_limit::MemoryBackend;
///
/// // At most 10 000 clients tracked at once, in 16 shards.
/// let backend = MemoryBackend::builder().max_keys(10_000).shards(16).build();
/// # let _ = backend;
/// ```
#[derive(Debug, Clone)]
pub struct MemoryBackendBuilder {
    max_keys: usize,
    shards: usize,
}

impl MemoryBackendBuilder {
    /// Bound on the number of keys (default [`DEFAULT_MAX_KEYS`]; at least 1).
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n.max(1);
        self
    }

    /// Number of shards (rounded up to a power of two, default 64, at most `max_keys`).
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = n.clamp(1, 1 << 16).next_power_of_two();
        self
    }

    /// Builds the backend.
    pub fn build(self) -> MemoryBackend {
        let mut shards = self.shards;
        while shards > 1 && shards > self.max_keys {
            shards /= 2;
        }
        let shard_cap = (self.max_keys / shards).max(1);
        MemoryBackend {
            inner: Arc::new(Inner {
                shards: (0..shards)
                    .map(|_| Padded(Mutex::new(Shard::default())))
                    .collect(),
                shard_mask: (shards - 1) as u64,
                shard_cap,
                max_keys: self.max_keys,
                hasher: TableHasher::new(),
                names: Names::default(),
                evicted_live: AtomicU64::new(0),
            }),
        }
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("keys", &self.len())
            .field("max_keys", &self.inner.max_keys)
            .field("shards", &self.inner.shards.len())
            .finish()
    }
}

/// The hash of the tables' keys: foldhash (a few multiplications per key, where SipHash takes
/// tens of nanoseconds on a text key), keyed with seeds drawn from the operating system's
/// randomness (through the standard `RandomState`), per backend and per process, so that
/// clients cannot aim their keys at one shard or one probe sequence without knowing them.
/// The hash never leaves the process (Redis key names and logs use the key's text).
/// Even keys built to collide could only lengthen probes within one shard, which holds at
/// most `max_keys / shards` entries.
struct TableHasher {
    seed: u64,
    shared: &'static foldhash::SharedSeed,
}

impl TableHasher {
    fn new() -> Self {
        static SHARED: OnceLock<foldhash::SharedSeed> = OnceLock::new();
        let shared =
            SHARED.get_or_init(|| foldhash::SharedSeed::from_u64(RandomState::new().hash_one(0)));
        TableHasher {
            seed: RandomState::new().hash_one(1),
            shared,
        }
    }

    fn hasher(&self) -> foldhash::quality::FoldHasher<'static> {
        foldhash::quality::FoldHasher::with_seed(self.seed, self.shared)
    }
}

/// One quota check of a multi-quota decision.
#[derive(Clone, Copy)]
pub(crate) struct Item<'a> {
    pub(crate) id: u32,
    pub(crate) quota: &'a Quota,
    pub(crate) key: &'a LimitKey,
}

impl MemoryBackend {
    /// A backend with the default bound ([`DEFAULT_MAX_KEYS`]) and 64 shards.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder to set the bound and the number of shards.
    pub fn builder() -> MemoryBackendBuilder {
        MemoryBackendBuilder {
            max_keys: DEFAULT_MAX_KEYS,
            shards: DEFAULT_SHARDS,
        }
    }

    /// A limiter for one named quota, keyed by [`LimitKey`], sharing this backend's storage
    /// (like `governor`'s keyed limiter). Quotas of the same name share their buckets.
    pub fn keyed(&self, name: &str, quota: Quota) -> Result<KeyedLimiter, QuotaError> {
        quota.validate()?;
        MonotonicClock::init();
        Ok(KeyedLimiter {
            backend: self.clone(),
            id: self.intern(name),
            quota,
            clock: None,
        })
    }

    /// Number of keys held now.
    pub fn len(&self) -> usize {
        self.inner.shards.iter().map(|s| lock(&s.0).len()).sum()
    }

    /// True if no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bound on the number of keys.
    pub fn max_keys(&self) -> usize {
        self.inner.max_keys
    }

    /// Live entries dropped because the backend was full (each one let its client start over
    /// a little early, getting back the units it had in use: the least in use in its shard
    /// are dropped first). Zero unless `max_keys` is too small for the traffic.
    pub fn evicted_live(&self) -> u64 {
        self.inner.evicted_live.load(Ordering::Relaxed)
    }

    /// Forgets the state of quota `name` for `key`: that client starts over with a full
    /// quota (a window quota with no admission in its window, a GCRA quota with a full
    /// bucket), as if it had never been seen. For support staff unblocking a customer.
    ///
    /// Returns true if the backend held state for that key (possibly already full again
    /// and not yet reclaimed), false if it held none (a key never seen, or a name no quota of
    /// this backend uses): resetting an unknown key is not an error. Other keys of the quota,
    /// and the same key under other quota names, are untouched. The key is the
    /// [`LimitKey`] the quota's key extractor yields (e.g. [`LimitKey::ip`] for
    /// [`Key::client_ip`](super::Key::client_ip)).
    ///
    /// The reset takes effect at once for every limiter and layer sharing this backend (a
    /// decision racing with it is decided either before or after it, never half).
    ///
    /// ```
    /// use tower_rampart::rate_limit::{LimitKey, MemoryBackend, Quota};
    ///
    /// let backend = MemoryBackend::new();
    /// let login = backend.keyed("login", Quota::per_minute(2)).unwrap();
    /// let client = LimitKey::ip("198.51.100.7".parse().unwrap());
    /// let now = 1_700_000_000_000_000;
    /// assert!(login.check_at(&client, 1, now).is_allowed());
    /// assert!(login.check_at(&client, 1, now).is_allowed());
    /// assert!(!login.check_at(&client, 1, now).is_allowed());
    ///
    /// assert!(backend.reset("login", &client));
    /// let d = login.check_at(&client, 1, now);
    /// assert!(d.is_allowed());
    /// assert_eq!(d.remaining(), 1);
    /// // Unknown keys and names are not an error.
    /// assert!(!backend.reset("login", &LimitKey::new("never-seen")));
    /// assert!(!backend.reset("no-such-quota", &client));
    /// ```
    pub fn reset(&self, name: &str, key: &LimitKey) -> bool {
        let Some(id) = self.inner.names.get(name) else {
            return false;
        };
        let (probe, hash) = self.probe_key(id, key);
        // Both meanings' tables are searched: the backend does not keep a name's meaning.
        lock(self.shard_of(hash)).remove(hash, &probe)
    }

    /// Interns a quota name: quotas of the same name share buckets.
    pub(crate) fn intern(&self, name: &str) -> u32 {
        self.inner.names.intern(name)
    }

    fn hash_wide(&self, id: u32, key: &LimitKey) -> u64 {
        let mut h = self.inner.hasher.hasher();
        key.hash_with_id(id, &mut h);
        h.finish()
    }

    fn hash_compact(&self, c: [u64; 2]) -> u64 {
        let mut h = self.inner.hasher.hasher();
        h.write_u128((u128::from(c[0]) << 64) | u128::from(c[1]));
        h.finish()
    }

    fn probe<'a>(&self, item: &Item<'a>) -> (Probe<'a>, u64) {
        self.probe_key(item.id, item.key)
    }

    fn probe_key<'a>(&self, id: u32, key: &'a LimitKey) -> (Probe<'a>, u64) {
        let compact = key.compact(id);
        let hash = match compact {
            Some(c) => self.hash_compact(c),
            None => self.hash_wide(id, key),
        };
        let inline = if compact.is_none() {
            key.text()
                .map(str::as_bytes)
                .filter(|t| t.len() <= INLINE_TEXT)
        } else {
            None
        };
        (
            Probe {
                id,
                key,
                compact,
                inline,
            },
            hash,
        )
    }

    fn shard_of(&self, hash: u64) -> &Mutex<Shard> {
        // Bits 32.. pick the shard: the table inside uses the low bits (bucket) and the top 7
        // bits (control byte), which must stay varied within a shard.
        &self.inner.shards[((hash >> 32) & self.inner.shard_mask) as usize].0
    }

    fn shard_index(&self, hash: u64) -> usize {
        ((hash >> 32) & self.inner.shard_mask) as usize
    }

    /// Decides one quota check, and records it if admitted.
    pub(crate) fn decide_one(&self, item: Item<'_>, cost: u64, now: u64) -> QuotaDecision {
        let (probe, hash) = self.probe(&item);
        let mut shard = lock(self.shard_of(hash));
        shard.commit(self, hash, &probe, item.quota, cost, now)
    }

    /// Decides every check of a request atomically: all admitted and recorded, or none
    /// recorded. Pushes one decision per item to `out`; returns true if all were admitted.
    pub(crate) fn decide_all(
        &self,
        items: &[Item<'_>],
        cost: u64,
        now: u64,
        out: &mut super::Few<QuotaDecision>,
    ) -> bool {
        if let [one] = items {
            let d = self.decide_one(*one, cost, now);
            out.push(d);
            return d.allowed;
        }
        let probes: super::Few<(Probe<'_>, u64)> = items.iter().map(|i| self.probe(i)).collect();
        let shard_ids: super::Few<usize> = probes.iter().map(|p| self.shard_index(p.1)).collect();
        let mut order = shard_ids.clone();
        order.sort_unstable();
        order.dedup();
        // Position of each item's shard among the guards.
        let pos: super::Few<usize> = shard_ids
            .iter()
            .map(|s| order.partition_point(|o| o < s))
            .collect();
        // Locks taken in ascending shard order: no deadlock between concurrent requests.
        let mut guards: super::Few<MutexGuard<'_, Shard>> = order
            .into_iter()
            .map(|s| lock(&self.inner.shards[s].0))
            .collect();
        let mut all = true;
        for ((item, (probe, hash)), &p) in items.iter().zip(&probes).zip(&pos) {
            let d = guards[p].peek(*hash, probe, item.quota, cost, now);
            all &= d.allowed;
            out.push(d);
        }
        if all && cost > 0 {
            for ((item, (probe, hash)), &p) in items.iter().zip(&probes).zip(&pos) {
                guards[p].commit(self, *hash, probe, item.quota, cost, now);
            }
        }
        all
    }
}

/// A single-quota limiter over a [`MemoryBackend`] (see [`MemoryBackend::keyed`]).
///
/// ```
/// use tower_rampart::rate_limit::{LimitKey, MemoryBackend, Quota};
///
/// let login = MemoryBackend::new().keyed("login", Quota::per_minute(3)).unwrap();
/// let ip = LimitKey::new("ip:198.51.100.1");
/// let now = 1_700_000_000_000_000;
/// for _ in 0..3 {
///     assert!(login.check_at(&ip, 1, now).is_allowed());
/// }
/// assert!(!login.check_at(&ip, 1, now).is_allowed());
/// ```
#[derive(Clone)]
pub struct KeyedLimiter {
    backend: MemoryBackend,
    id: u32,
    quota: Quota,
    /// `None`: [`MonotonicClock`] (read without dynamic dispatch).
    clock: Option<Arc<dyn Clock>>,
}

impl fmt::Debug for KeyedLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedLimiter")
            .field("quota", &self.quota)
            .field("clock", &self.clock)
            .finish()
    }
}

impl KeyedLimiter {
    /// Uses `clock` for [`check`](Self::check) instead of [`MonotonicClock`].
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Checks (and, if admitted, records) one request of cost 1 for `key` now.
    pub fn check(&self, key: &LimitKey) -> QuotaDecision {
        let now = match &self.clock {
            Some(c) => c.now_micros(),
            None => MonotonicClock.now_micros(),
        };
        self.check_at(key, 1, now)
    }

    /// Checks a request of `cost` units at `now_micros` (unix microseconds).
    pub fn check_at(&self, key: &LimitKey, cost: u64, now_micros: u64) -> QuotaDecision {
        self.backend.decide_one(
            Item {
                id: self.id,
                quota: &self.quota,
                key,
            },
            cost,
            now_micros,
        )
    }

    /// The quota.
    pub fn quota(&self) -> &Quota {
        &self.quota
    }
}

/// A lookup: the quota id and key, and the key's compact form if it has one.
struct Probe<'a> {
    id: u32,
    key: &'a LimitKey,
    compact: Option<[u64; 2]>,
    /// The key's text if it is stored inline (compared in place: copying it into a fixed-size
    /// array first made the next reads of that copy wait on the copy's stores, 15 % of a
    /// one-key decision).
    inline: Option<&'a [u8]>,
}

/// How a table stores `(quota id, key)`: exactly, either as 16 bytes (IP addresses, global)
/// or as the full key.
trait KeyForm: Sized {
    /// The alignment a window entry with this key form takes (a zero-sized field): a whole
    /// cache line for the 64-byte entries of text keys, so that a decision reads one line,
    /// not two; nothing for the 40-byte entries of compact keys.
    type Line: Default;
    fn make(p: &Probe<'_>) -> Self;
    /// The quota id.
    fn id(&self) -> u32;
    fn matches(&self, p: &Probe<'_>) -> bool;
    fn hash(&self, backend: &MemoryBackend) -> u64;
    fn gcra(shard: &mut Shard) -> &mut HashTable<GcraSlot<Self>>;
    fn window(shard: &mut Shard) -> &mut HashTable<WindowSlot<Self>>;
    fn gcra_ref(shard: &Shard) -> &HashTable<GcraSlot<Self>>;
    fn window_ref(shard: &Shard) -> &HashTable<WindowSlot<Self>>;
}

/// `(id, key)` of an IPv4 address, an IPv6 network of up to /64, or the global key.
struct Compact([u64; 2]);

/// Text keys up to this length are stored in the table entry itself: the built-in text keys
/// (a one-letter label, `:` and 32 hex digits; `#` and 32 for long texts) and short ones
/// such as user ids. Longer would make every text entry larger: the entries of 100k clients
/// then no longer fit the caches as well, which costs more than it saves (measured).
const INLINE_TEXT: usize = 34;

/// A text of up to [`INLINE_TEXT`] bytes, zero-padded.
#[derive(Clone, Copy, PartialEq, Eq)]
struct InlineText {
    len: u8,
    text: [u8; INLINE_TEXT],
}

impl InlineText {
    fn from_bytes(t: &[u8]) -> Option<Self> {
        let len = u8::try_from(t.len())
            .ok()
            .filter(|&l| usize::from(l) <= INLINE_TEXT)?;
        let mut text = [0; INLINE_TEXT];
        text[..t.len()].copy_from_slice(t);
        Some(InlineText { len, text })
    }

    fn bytes(&self) -> &[u8] {
        &self.text[..usize::from(self.len)]
    }
}

/// `(id, key)` of any other key. A text of up to [`INLINE_TEXT`] bytes (the built-in text
/// keys: `u:`, `s:`, `h:` and 32 hex digits) is copied into the entry, so that a lookup
/// compares it without following a pointer to another cache line; longer texts and IPv6
/// addresses grouped by more than 64 bits keep the key itself.
enum Wide {
    Inline { id: u32, text: InlineText },
    Key { id: u32, key: LimitKey },
}

impl KeyForm for Compact {
    type Line = ();
    fn make(p: &Probe<'_>) -> Self {
        Compact(p.compact.unwrap_or_default())
    }
    fn id(&self) -> u32 {
        // The low 32 bits of the head (`LimitKey::compact`).
        self.0[0] as u32
    }
    fn matches(&self, p: &Probe<'_>) -> bool {
        p.compact == Some(self.0)
    }
    fn hash(&self, backend: &MemoryBackend) -> u64 {
        backend.hash_compact(self.0)
    }
    fn gcra(shard: &mut Shard) -> &mut HashTable<GcraSlot<Self>> {
        &mut shard.gcra
    }
    fn window(shard: &mut Shard) -> &mut HashTable<WindowSlot<Self>> {
        &mut shard.window
    }
    fn gcra_ref(shard: &Shard) -> &HashTable<GcraSlot<Self>> {
        &shard.gcra
    }
    fn window_ref(shard: &Shard) -> &HashTable<WindowSlot<Self>> {
        &shard.window
    }
}

impl KeyForm for Wide {
    type Line = CacheLine;
    fn make(p: &Probe<'_>) -> Self {
        match p.inline.and_then(InlineText::from_bytes) {
            Some(text) => Wide::Inline { id: p.id, text },
            None => Wide::Key {
                id: p.id,
                key: p.key.clone(),
            },
        }
    }
    fn id(&self) -> u32 {
        match self {
            Wide::Inline { id, .. } | Wide::Key { id, .. } => *id,
        }
    }
    fn matches(&self, p: &Probe<'_>) -> bool {
        match self {
            // A fixed-size compare; a probe whose text does not fit is never equal to it.
            Wide::Inline { id, text } => *id == p.id && p.inline == Some(text.bytes()),
            Wide::Key { id, key } => *id == p.id && key == p.key,
        }
    }
    fn hash(&self, backend: &MemoryBackend) -> u64 {
        match self {
            Wide::Inline { id, text } => {
                let mut h = backend.inner.hasher.hasher();
                LimitKey::hash_text_with_id(text.bytes(), *id, &mut h);
                h.finish()
            }
            Wide::Key { id, key } => backend.hash_wide(*id, key),
        }
    }
    fn gcra(shard: &mut Shard) -> &mut HashTable<GcraSlot<Self>> {
        &mut shard.gcra_wide
    }
    fn window(shard: &mut Shard) -> &mut HashTable<WindowSlot<Self>> {
        &mut shard.window_wide
    }
    fn gcra_ref(shard: &Shard) -> &HashTable<GcraSlot<Self>> {
        &shard.gcra_wide
    }
    fn window_ref(shard: &Shard) -> &HashTable<WindowSlot<Self>> {
        &shard.window_wide
    }
}

/// State of a key of a GCRA quota: the TAT, which is also when the bucket is full again.
/// 24 bytes with a compact key, so that 100k client addresses take 2.4 MB.
struct GcraSlot<K> {
    key: K,
    tat: u64,
}

/// State of a key of a window quota: the slot header inline, the admission times in one
/// allocation of at most `min(limit, max_slots)` entries. No expiry time is stored: it
/// follows from the state and the key's quota ([`window::expiry`]), and is read only when a
/// shard makes room; so an entry with a text key held inline is 64 bytes, one cache line.
struct WindowSlot<K: KeyForm> {
    key: K,
    window: window::WindowState,
    _line: K::Line,
}

/// Zero bytes aligned to a cache line (see [`KeyForm::Line`]).
#[derive(Default)]
#[repr(align(64))]
struct CacheLine;

/// What the shard needs from a slot type (one table per meaning and key form).
trait SlotKind: Sized {
    type Key: KeyForm;
    fn table(shard: &Shard) -> &HashTable<Self>;
    fn table_mut(shard: &mut Shard) -> &mut HashTable<Self>;
    fn fresh(key: Self::Key) -> Self;
    fn key(&self) -> &Self::Key;
    /// When the bucket is full again (the key may then be forgotten); `quotas` are the
    /// shard's quotas by id ([`Shard::quotas`]).
    fn expires_at(&self, quotas: &[Option<Quota>]) -> u64;
    fn decide(&self, q: &Quota, cost: u64, now: u64) -> QuotaDecision;
    fn decide_and_commit(&mut self, q: &Quota, cost: u64, now: u64) -> QuotaDecision;
}

impl<K: KeyForm> SlotKind for GcraSlot<K> {
    type Key = K;
    fn table(shard: &Shard) -> &HashTable<Self> {
        K::gcra_ref(shard)
    }
    fn table_mut(shard: &mut Shard) -> &mut HashTable<Self> {
        K::gcra(shard)
    }
    fn fresh(key: K) -> Self {
        GcraSlot { key, tat: 0 }
    }
    fn key(&self) -> &K {
        &self.key
    }
    fn expires_at(&self, _quotas: &[Option<Quota>]) -> u64 {
        self.tat
    }
    fn decide(&self, q: &Quota, cost: u64, now: u64) -> QuotaDecision {
        gcra::decide(self.tat, now, q, cost).0
    }
    fn decide_and_commit(&mut self, q: &Quota, cost: u64, now: u64) -> QuotaDecision {
        let (d, next) = gcra::decide(self.tat, now, q, cost);
        if d.allowed {
            self.tat = next;
        }
        d
    }
}

impl<K: KeyForm> SlotKind for WindowSlot<K> {
    type Key = K;
    fn table(shard: &Shard) -> &HashTable<Self> {
        K::window_ref(shard)
    }
    fn table_mut(shard: &mut Shard) -> &mut HashTable<Self> {
        K::window(shard)
    }
    fn fresh(key: K) -> Self {
        WindowSlot {
            key,
            window: window::WindowState::default(),
            _line: K::Line::default(),
        }
    }
    fn key(&self) -> &K {
        &self.key
    }
    fn expires_at(&self, quotas: &[Option<Quota>]) -> u64 {
        // A stored key always has its quota recorded (`note_quota` runs before the insert);
        // without one it is kept.
        match quotas.get(self.key.id() as usize) {
            Some(Some(q)) => window::expiry(&self.window, q),
            _ => u64::MAX,
        }
    }
    fn decide(&self, q: &Quota, cost: u64, now: u64) -> QuotaDecision {
        window::decide(&self.window, now, q, cost)
    }
    fn decide_and_commit(&mut self, q: &Quota, cost: u64, now: u64) -> QuotaDecision {
        let d = window::decide(&self.window, now, q, cost);
        if d.allowed && cost > 0 {
            window::admit(&mut self.window, now, q, cost);
        }
        d
    }
}

/// An entry's eviction rank at `now`: (the share of its quota in use, in 2^-32ths; when it
/// is full again). Lowest first.
trait Ranked {
    fn rank(&self, quotas: &[Option<Quota>], now: u64) -> (u64, u64);
}

impl<S: SlotKind> Ranked for S {
    fn rank(&self, quotas: &[Option<Quota>], now: u64) -> (u64, u64) {
        let quota = quotas.get(self.key().id() as usize).copied().flatten();
        let share = quota.map_or(u64::MAX, |q| {
            // What a request of cost 0 reads: exactly the decision functions' count.
            let burst = q.burst_size().max(1);
            let used = burst.saturating_sub(self.decide(&q, 0, now).remaining());
            ((u128::from(used) << 32) / u128::from(burst)) as u64
        });
        (share, self.expires_at(quotas))
    }
}

/// A shard, alone on its cache lines (no false sharing between threads on neighbours).
#[repr(align(128))]
struct Padded(Mutex<Shard>);

#[derive(Default)]
struct Shard {
    gcra: HashTable<GcraSlot<Compact>>,
    gcra_wide: HashTable<GcraSlot<Wide>>,
    window: HashTable<WindowSlot<Compact>>,
    window_wide: HashTable<WindowSlot<Wide>>,
    /// The quota of each quota id whose keys this shard stores (indexed by id), recorded when
    /// a key is added: eviction reads what each key still has in use. The slots themselves
    /// stay as small as before.
    quotas: Vec<Option<Quota>>,
}

impl Shard {
    fn len(&self) -> usize {
        self.gcra.len() + self.gcra_wide.len() + self.window.len() + self.window_wide.len()
    }

    /// Removes the entries of `(id, key)` in both meanings' tables; true if there was one.
    fn remove(&mut self, hash: u64, p: &Probe<'_>) -> bool {
        if p.compact.is_some() {
            Self::remove_in::<GcraSlot<Compact>>(self, hash, p)
                | Self::remove_in::<WindowSlot<Compact>>(self, hash, p)
        } else {
            Self::remove_in::<GcraSlot<Wide>>(self, hash, p)
                | Self::remove_in::<WindowSlot<Wide>>(self, hash, p)
        }
    }

    fn remove_in<S: SlotKind>(&mut self, hash: u64, p: &Probe<'_>) -> bool {
        match S::table_mut(self).find_entry(hash, |s| s.key().matches(p)) {
            Ok(entry) => {
                entry.remove();
                true
            }
            Err(_) => false,
        }
    }

    /// Decides without recording.
    fn peek(&self, hash: u64, p: &Probe<'_>, q: &Quota, cost: u64, now: u64) -> QuotaDecision {
        match (q.meaning(), p.compact.is_some()) {
            (Meaning::Gcra, true) => self.peek_in::<GcraSlot<Compact>>(hash, p, q, cost, now),
            (Meaning::Gcra, false) => self.peek_in::<GcraSlot<Wide>>(hash, p, q, cost, now),
            (Meaning::Window, true) => self.peek_in::<WindowSlot<Compact>>(hash, p, q, cost, now),
            (Meaning::Window, false) => self.peek_in::<WindowSlot<Wide>>(hash, p, q, cost, now),
        }
    }

    fn peek_in<S: SlotKind>(
        &self,
        hash: u64,
        p: &Probe<'_>,
        q: &Quota,
        cost: u64,
        now: u64,
    ) -> QuotaDecision {
        match S::table(self).find(hash, |s| s.key().matches(p)) {
            Some(slot) => slot.decide(q, cost, now),
            None => S::fresh(S::Key::make(p)).decide(q, cost, now),
        }
    }

    /// Decides and records an admission.
    fn commit(
        &mut self,
        backend: &MemoryBackend,
        hash: u64,
        p: &Probe<'_>,
        q: &Quota,
        cost: u64,
        now: u64,
    ) -> QuotaDecision {
        match (q.meaning(), p.compact.is_some()) {
            (Meaning::Gcra, true) => {
                self.commit_in::<GcraSlot<Compact>>(backend, hash, p, q, cost, now)
            }
            (Meaning::Gcra, false) => {
                self.commit_in::<GcraSlot<Wide>>(backend, hash, p, q, cost, now)
            }
            (Meaning::Window, true) => {
                self.commit_in::<WindowSlot<Compact>>(backend, hash, p, q, cost, now)
            }
            (Meaning::Window, false) => {
                self.commit_in::<WindowSlot<Wide>>(backend, hash, p, q, cost, now)
            }
        }
    }

    /// A key absent and refused (or checked at cost 0) is not stored: absent is the same as
    /// full.
    fn commit_in<S: SlotKind>(
        &mut self,
        backend: &MemoryBackend,
        hash: u64,
        p: &Probe<'_>,
        q: &Quota,
        cost: u64,
        now: u64,
    ) -> QuotaDecision {
        if let Some(slot) = S::table_mut(self).find_mut(hash, |s| s.key().matches(p)) {
            return slot.decide_and_commit(q, cost, now);
        }
        let mut fresh = S::fresh(S::Key::make(p));
        let d = fresh.decide_and_commit(q, cost, now);
        if d.allowed && cost > 0 {
            let inner = &backend.inner;
            self.note_quota(p.id, q);
            if self.len() >= inner.shard_cap {
                self.make_room(now, inner.shard_cap, &inner.evicted_live);
            }
            S::table_mut(self).insert_unique(hash, fresh, |s| s.key().hash(backend));
        }
        d
    }

    /// Records `q` as the quota of `id`'s keys (a compare, and a write only when it changed).
    fn note_quota(&mut self, id: u32, q: &Quota) {
        let i = id as usize;
        if self
            .quotas
            .get(i)
            .is_some_and(|known| known.as_ref() == Some(q))
        {
            return;
        }
        if self.quotas.len() <= i {
            self.quotas.resize(i + 1, None);
        }
        self.quotas[i] = Some(*q);
    }

    /// Drops an eighth of the entries (at least one): expired entries first (nothing in use:
    /// no effect on decisions), then the live ones with the least of their quota in use
    /// (those sooner full again first, among equals).
    fn make_room(&mut self, now: u64, cap: usize, evicted: &AtomicU64) {
        let target = cap - (cap / 8).max(1);
        let quotas = std::mem::take(&mut self.quotas);
        self.retain_all(&quotas, |e| e > now);
        let len = self.len();
        if len <= target {
            self.quotas = quotas;
            return;
        }
        let k = len - target;
        let rank = |s: &dyn Ranked| s.rank(&quotas, now);
        let mut ranks: Vec<(u64, u64)> = Vec::with_capacity(len);
        ranks.extend(self.gcra.iter().map(|s| rank(s)));
        ranks.extend(self.gcra_wide.iter().map(|s| rank(s)));
        ranks.extend(self.window.iter().map(|s| rank(s)));
        ranks.extend(self.window_wide.iter().map(|s| rank(s)));
        let threshold = *ranks.select_nth_unstable(k - 1).1;
        let below = ranks.iter().filter(|&&r| r < threshold).count();
        let mut ties = k - below;
        let mut keep = |r: (u64, u64)| {
            if r < threshold {
                false
            } else if r == threshold && ties > 0 {
                ties -= 1;
                false
            } else {
                true
            }
        };
        self.gcra.retain(|s| keep(rank(s)));
        self.gcra_wide.retain(|s| keep(rank(s)));
        self.window.retain(|s| keep(rank(s)));
        self.window_wide.retain(|s| keep(rank(s)));
        self.quotas = quotas;
        evicted.fetch_add(k as u64, Ordering::Relaxed);
    }

    /// Keeps the entries whose expiry time passes `keep`.
    fn retain_all(&mut self, quotas: &[Option<Quota>], mut keep: impl FnMut(u64) -> bool) {
        self.gcra.retain(|s| keep(s.expires_at(quotas)));
        self.gcra_wide.retain(|s| keep(s.expires_at(quotas)));
        self.window.retain(|s| keep(s.expires_at(quotas)));
        self.window_wide.retain(|s| keep(s.expires_at(quotas)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const S: u64 = 1_000_000;

    #[test]
    fn slots_are_small() {
        assert_eq!(std::mem::size_of::<GcraSlot<Compact>>(), 24);
        assert_eq!(std::mem::size_of::<GcraSlot<Wide>>(), 48);
        assert_eq!(std::mem::size_of::<WindowSlot<Compact>>(), 40);
        assert_eq!(std::mem::size_of::<WindowSlot<Wide>>(), 64);
        assert_eq!(std::mem::align_of::<WindowSlot<Wide>>(), 64);
    }

    /// Text keys on both sides of the inline bound (and IPv6 keys, held whole) are found again
    /// after the table grew (entries rehashed from their stored form), never confused with a
    /// neighbour, and separate per quota name.
    #[test]
    fn wide_keys_inline_or_not_are_exact_across_table_growth() {
        let backend = MemoryBackend::builder().max_keys(100_000).shards(1).build();
        let a = backend.keyed("a", Quota::per_minute(1)).unwrap();
        let b = backend
            .keyed("b", Quota::rate(1, Duration::from_secs(60)))
            .unwrap();
        let now = 1_000 * S;
        let mut keys: Vec<LimitKey> = (0..3_000)
            .map(|i| LimitKey::new(format!("{}{i}", "k".repeat(i % (INLINE_TEXT + 8)))))
            .collect();
        keys.extend(
            (0..200u128).map(|i| {
                LimitKey::ip(std::net::Ipv6Addr::from((0x2001_0db8u128 << 96) | i).into())
            }),
        );
        keys.push(LimitKey::new(""));
        for k in &keys {
            assert!(a.check_at(k, 1, now).is_allowed(), "{k}");
            assert!(b.check_at(k, 1, now).is_allowed(), "{k}");
        }
        assert_eq!(backend.len(), 2 * keys.len());
        for k in &keys {
            // Equal keys built apart (not the same allocation) are found.
            let again = match k.text() {
                Some(t) => LimitKey::new(t.to_owned()),
                None => k.clone(),
            };
            assert!(!a.check_at(&again, 1, now).is_allowed(), "{k}");
            assert!(!b.check_at(&again, 1, now).is_allowed(), "{k}");
        }
        for k in keys.iter().step_by(7) {
            assert!(backend.reset("a", k));
            assert!(a.check_at(k, 1, now).is_allowed(), "{k}");
            assert!(!b.check_at(k, 1, now).is_allowed(), "{k}");
        }
        assert_eq!(backend.len(), 2 * keys.len());
    }

    #[test]
    fn flood_of_distinct_keys_stays_within_the_bound() {
        let backend = MemoryBackend::builder().max_keys(10_000).build();
        let lim = backend.keyed("ip", Quota::per_minute(10)).unwrap();
        let now = 1_700_000_000 * S;
        for i in 0..1_000_000u32 {
            let ip = std::net::IpAddr::from(i.to_be_bytes());
            let d = lim.check_at(&LimitKey::ip(ip), 1, now + u64::from(i));
            assert!(d.is_allowed());
        }
        assert!(backend.len() <= 10_000, "{} keys", backend.len());
        assert!(backend.len() >= 8_000);
        assert!(backend.evicted_live() > 900_000);
    }

    #[test]
    fn expired_entries_are_reclaimed_before_live_ones() {
        let backend = MemoryBackend::builder().max_keys(64).shards(1).build();
        let lim = backend.keyed("k", Quota::per_second(1)).unwrap();
        let t0 = 1_000 * S;
        for i in 0..64 {
            lim.check_at(&LimitKey::new(format!("old{i}")), 1, t0);
        }
        assert_eq!(backend.len(), 64);
        // One second later all of them are full again: reclaiming them is exact.
        let hot = LimitKey::new("hot");
        assert!(lim.check_at(&hot, 1, t0 + 2 * S).is_allowed());
        assert_eq!(backend.len(), 1);
        assert_eq!(backend.evicted_live(), 0);
        // The hot key's state survived the reclaim.
        assert!(!lim.check_at(&hot, 1, t0 + 2 * S).is_allowed());
    }

    /// A window entry stores no expiry: it is computed from the state when a shard makes
    /// room, and is when the newest admission leaves the window. A key whose oldest admission
    /// has left but not its newest is live, not reclaimed with the expired ones.
    #[test]
    fn a_window_key_expires_when_its_newest_admission_leaves() {
        for key in [LimitKey::new("kept"), LimitKey::ip([192, 0, 2, 1].into())] {
            let backend = MemoryBackend::builder().max_keys(8).shards(1).build();
            let lim = backend.keyed("k", Quota::per_minute(2)).unwrap();
            let t0 = 1_000 * S;
            assert!(lim.check_at(&key, 1, t0).is_allowed());
            assert!(lim.check_at(&key, 1, t0 + 30 * S).is_allowed());
            for i in 0..7 {
                lim.check_at(&LimitKey::new(format!("once{i}")), 1, t0);
            }
            assert_eq!(backend.len(), 8);
            // A new key at t0 + 61 s makes room: the seven keys admitted once at t0 are
            // expired and go; `key` (newest admission inside until t0 + 90 s) stays.
            assert!(
                lim.check_at(&LimitKey::new("new"), 1, t0 + 61 * S)
                    .is_allowed()
            );
            assert_eq!(backend.len(), 2, "{key}");
            assert_eq!(backend.evicted_live(), 0);
            // One of its two units is still in use: one more admitted, then refused.
            assert!(lim.check_at(&key, 1, t0 + 62 * S).is_allowed());
            assert!(!lim.check_at(&key, 1, t0 + 63 * S).is_allowed());
        }
    }

    #[test]
    fn when_full_of_live_keys_the_soonest_to_expire_go_first() {
        let backend = MemoryBackend::builder().max_keys(16).shards(1).build();
        let lim = backend.keyed("k", Quota::per_minute(1)).unwrap();
        let t0 = 1_000 * S;
        for i in 0..16u64 {
            lim.check_at(&LimitKey::new(format!("k{i}")), 1, t0 + i * S);
        }
        lim.check_at(&LimitKey::new("new"), 1, t0 + 20 * S);
        // 16 - 2 (an eighth) + 1 new.
        assert_eq!(backend.len(), 15);
        assert_eq!(backend.evicted_live(), 2);
        // k0 and k1 (the oldest) were dropped: they start over; k2 is still limited.
        assert!(
            lim.check_at(&LimitKey::new("k0"), 1, t0 + 21 * S)
                .is_allowed()
        );
        assert!(
            !lim.check_at(&LimitKey::new("k2"), 1, t0 + 21 * S)
                .is_allowed()
        );
    }

    /// Issue 14: under a flood of new keys, a client that used its whole quota keeps it
    /// used: the keys with the least in use are evicted first (here the flood's, 1 of 10).
    #[test]
    fn a_key_flood_does_not_give_a_used_up_client_its_quota_back() {
        for shards in [1, 4] {
            let backend = MemoryBackend::builder().max_keys(64).shards(shards).build();
            let lim = backend.keyed("ip", Quota::per_minute(10)).unwrap();
            let t0 = 1_000 * S;
            let abuser = LimitKey::ip("198.51.100.66".parse().unwrap());
            for _ in 0..10 {
                assert!(lim.check_at(&abuser, 1, t0).is_allowed());
            }
            assert!(!lim.check_at(&abuser, 1, t0).is_allowed());
            // 10 000 distinct clients, one request each, within the next 10 s.
            for i in 0..10_000u32 {
                let ip = std::net::IpAddr::from((0x0a00_0000 | i).to_be_bytes());
                let d = lim.check_at(&LimitKey::ip(ip), 1, t0 + S + u64::from(i) * 1_000);
                assert!(d.is_allowed());
            }
            assert!(backend.len() <= 64, "{} keys", backend.len());
            assert!(backend.evicted_live() > 9_000, "{}", backend.evicted_live());
            let later = t0 + 20 * S;
            let d = lim.check_at(&abuser, 1, later);
            assert!(
                !d.is_allowed(),
                "{shards} shards: the abuser got its quota back"
            );
            assert_eq!(d.retry_after(), Some(Duration::from_secs(40)));
        }
    }

    #[test]
    fn denied_and_zero_cost_requests_of_new_keys_store_nothing() {
        let backend = MemoryBackend::new();
        let lim = backend.keyed("k", Quota::per_minute(1)).unwrap();
        assert!(lim.check_at(&LimitKey::new("a"), 0, 5).is_allowed());
        assert!(lim.check_at(&LimitKey::new("b"), 2, 5).is_impossible());
        assert!(backend.is_empty());
    }

    #[test]
    fn multi_quota_is_all_or_nothing() {
        let backend = MemoryBackend::builder().shards(8).build();
        let ip_q = Quota::per_minute(5);
        let user_q = Quota::rate(2, Duration::from_secs(60)).burst(2);
        let (ip_id, user_id) = (backend.intern("ip"), backend.intern("user"));
        assert_ne!(ip_id, user_id);
        assert_eq!(backend.intern("ip"), ip_id);
        let ip = LimitKey::new("ip:1");
        let user = LimitKey::new("u:1");
        let items = [
            Item {
                id: ip_id,
                quota: &ip_q,
                key: &ip,
            },
            Item {
                id: user_id,
                quota: &user_q,
                key: &user,
            },
        ];
        let mut out = crate::rate_limit::Few::new();
        for _ in 0..2 {
            out.clear();
            assert!(backend.decide_all(&items, 1, 10 * S, &mut out));
        }
        assert_eq!(out[0].remaining(), 3);
        out.clear();
        assert!(!backend.decide_all(&items, 1, 10 * S, &mut out));
        assert!(out[0].is_allowed() && !out[1].is_allowed());
        // The refused request did not consume the ip quota.
        let ip_only = backend.decide_one(items[0], 0, 10 * S);
        assert_eq!(ip_only.remaining(), 3);
    }

    #[test]
    fn concurrent_decisions_never_exceed_the_quota() {
        let backend = MemoryBackend::builder().shards(4).build();
        let lim = backend.keyed("k", Quota::per_minute(1_000)).unwrap();
        let key = LimitKey::global();
        let admitted = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1_000 {
                        if lim.check_at(&key, 1, 50 * S).is_allowed() {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::Relaxed), 1_000);
    }
}
