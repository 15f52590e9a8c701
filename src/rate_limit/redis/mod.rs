//! The Redis backend: every quota of a request decided atomically by a Lua script, in one
//! round trip; concurrent requests share script calls (natural batching, `redis/batch.rs`).

use std::fmt;
use std::sync::Arc;

use super::Names;
use super::decision::QuotaDecision;
use super::key::LimitKey;
use super::quota::{Quota, QuotaError};
use crate::clock::Clock;
use crate::redis::{RedisConnection, RedisError, RedisErrorKind, driver};

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "rampart:rl:";

/// Default bound on the deny cache.
pub const DEFAULT_DENY_CACHE: usize = 100_000;

/// Default bound on concurrent script calls when batching.
const DEFAULT_MAX_IN_FLIGHT: usize = 2;

/// Default bound on the decisions of one batched call.
const DEFAULT_MAX_BATCH: usize = 128;

mod batch;
mod deny_cache;
mod scripts;
mod split;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use self::batch::{Batcher, Turn};
use self::deny_cache::DenyCache;
use self::scripts::{Ask, Check, Definition};
use self::split::Router;

/// Quota state in Redis, shared by every instance: limits are global.
///
/// * **One round trip per decision**: all the quotas of a request are decided by one Lua
///   script (`EVALSHA`, loading it on `NOSCRIPT`), atomically: a refused request consumes
///   nothing. The script computes exactly the pure functions the memory backend uses, with the
///   Redis server's clock (`TIME`, integer microseconds), so instances with skewed clocks
///   agree. Under load, concurrent decisions share script calls: see
///   [natural batching](#natural-batching) below.
/// * **Small state that cleans itself up**: GCRA keeps one integer per key (16 digits); a
///   window keeps at most `min(limit, max_slots)` (time, count) slots in a compact binary form:
///   times modulo 256^w under one shared high part, w from the window (3 bytes up to 16.7 s, 4
///   up to 71 minutes), and counts only once one differs from 1. "10/minute" takes at most 44
///   bytes while its admissions are of one unit at distinct times (the usual case), so Redis
///   stores it inline, "100/hour" at most 404; counts, once needed (a cost above 1, two
///   admissions in one microsecond), add a byte per slot. Each key expires (`PX`) when its
///   bucket is full again. The format is a contract between versions: see `scripts.rs`.
/// * **Key names** are `<prefix>{<key>}:<quota name>` (e.g. `rampart:rl:{ip:203.0.113.7}:ip`):
///   the hash tag is the client key, so all quotas of one client key live in one Redis Cluster
///   slot (keep `{` and `}` out of the prefix: a hash tag there would put every key in one
///   slot). A request whose quotas use *different* keys (per IP and per session) touches
///   several slots: on one server one script still decides it; on a cluster it is reserved
///   slot by slot and stays all or nothing: see [Redis Cluster](#redis-cluster).
/// * **Exact local deny cache**: once Redis answers that a key has no unit left until `t`, this
///   instance answers that key locally until `t`, with no round trip. Exact because limiter
///   state only moves forward (other instances can only add admissions): no unit can come
///   back before `t`. `t` is measured from when the request was *sent*, so the cache never
///   outlives the truth. Only what Redis really refused, or what an admitted request really
///   used up, is cached (not a quota that passed in a request another quota refused: that
///   request consumed nothing), and requests of cost 0, which Redis admits on a used-up key,
///   never consult it. Bounded ([`RedisBackendBuilder::deny_cache_capacity`]). The one
///   step back is [`reset`](RedisBackend::reset): it clears this instance's entry, while
///   other instances keep refusing that client until their own `t` (see there).
///
/// Failures (timeouts, connection loss, the connection's circuit breaker) are handled by the
/// layer's [`FailureMode`](super::FailureMode).
///
/// # Natural batching
///
/// On by default ([`RedisBackendBuilder::batching`]). Redis spends much of a rate-limit
/// script call on the call itself (the `EVALSHA`, `TIME`, argument handling) rather than on
/// the decision, so concurrent decisions share calls:
///
/// * At most [2 script calls](RedisBackendBuilder::max_calls_in_flight) are in flight per
///   backend. A decision that finds a free slot and nobody waiting is sent **at once**, by its
///   own task, alone, with the single-request script: exactly the call made without batching.
///   There is no timer: at low load nothing waits and nothing changes.
/// * A decision that finds both slots busy queues. When a call returns, its slot takes the
///   whole queue (up to [128 decisions](RedisBackendBuilder::max_batch)) into **one**
///   `EVALSHA`, driven by a spawned task. Under load the batches grow by themselves, to about
///   half the number of concurrent callers.
/// * A batch reads the server's `TIME` once (all decisions of a batch are taken at one
///   instant) and every distinct key with one `MGET`, and writes each changed key once (`SET
///   key value PX ttl`; refused requests write nothing). The common batch, requests of one
///   quota on keys of their own (one limit per client IP, say), runs the single-request
///   script with all its keys, each decided on its own. Any other batch (IP plus session
///   quotas, one key twice) runs a general script that decides the requests **in arrival
///   order**, each one's quotas all or nothing against the state left by the requests before
///   it. Either way the decisions are those of the same requests sent one by one (tested, on
///   a client clock, against single calls). Key names and state encodings are those of the
///   single-request scripts: instances with batching on and off share state.
/// * Failures: an error or timeout of a call fails every decision in it, each through the
///   layer's failure mode. The circuit breaker sees one call per batch. A queued decision that
///   waited longer than the command timeout for a slot fails as a timeout, so a decision waits
///   at most about two command timeouts (plus the connect timeout when a connection must be
///   made). The deny cache answers before anything is queued.
/// * A caller that goes away (its future dropped) loses only its own decision: a queued one
///   is left out of its batch (it consumes nothing), one in flight is decided and its answer
///   dropped; a dropped caller that held a slot hands it on to the queue.
/// * Latency: at low load, none added. Under load, a decision waits for at most one call in
///   flight to return before it is sent, in exchange for far fewer, larger calls, which keeps
///   Redis and the connection below saturation. While Redis has room (a few callers), the
///   wait for a slot can cost more than it saves: measure with `limiter_bench
///   --batching on|off`.
/// * Throughput and Redis CPU: several times fewer round trips and less Redis CPU per
///   decision than one script call each; what remains per decision is mostly the key's read
///   and its `SET` with an expiry, which every design with per-key expiry pays, and the
///   interpreter's share of the decision. Figures, and how to reproduce them:
///   `benches/README.md` in the repository.
/// * Redis Cluster: a batch is split by hash slot, one call per slot, all sent at once (see
///   [Redis Cluster](#redis-cluster)). `batching(false)` restores one call per decision.
///
/// # Redis Cluster
///
/// Nothing to configure: on a [`RedisConnection`] that talks to a cluster
/// ([`is_cluster`](RedisConnection::is_cluster)) every script call touches the keys of one
/// hash slot only, and goes to that slot's master. A connection made lazily learns the
/// topology on its first call; a first call the cluster refuses as `CROSSSLOT` (it ran
/// nothing) is split and sent again. The same refusal from what the connection sees as one
/// server (a proxy in front of a cluster, such as Azure Managed Redis's Enterprise clustering
/// policy: one endpoint, no cluster protocol, scripts still limited to one slot) is
/// remembered: from then on the backend splits by slot as below, over that one endpoint. On
/// a single server nothing below happens: the scripts, calls and stored bytes are those
/// described above.
///
/// * **Requests on one slot** (every quota of the request on one client key, or keys that
///   share a slot) are decided exactly as on one server, by one call on that slot's master.
/// * **Batches per slot**: a batch's requests that each live on one slot are grouped by slot,
///   one call per slot (the per-key script or `BATCH`, as on one server), sent at once.
///   Requests on different slots share no state, so the decisions are still those of the
///   requests one by one in arrival order (tested on a cluster against single calls). What
///   batching buys there is smaller than on one server: keys of different clients rarely
///   share one of the 16 384 slots, so a batch of per-client keys becomes about one call per
///   key; what it keeps is the concurrency bound, and shared keys (a global quota) still
///   share calls. A design batching per node would need one script over several slots,
///   which a cluster refuses.
/// * **Requests spanning slots are all or nothing: a refused request consumes nothing on any
///   slot.** Such a request (an IP quota and a session quota, say) is decided in two steps.
///   `RESERVE` runs on every slot at once: on each, the request's share is decided exactly
///   as `MULTI` decides it, and taken only if the whole share admits. If every slot
///   admitted, the request is admitted: one round trip, as on one server. Otherwise
///   `RELEASE` undoes, on each slot that took its share, exactly that share (a second round
///   trip), and the request is refused. Its per-quota decisions (remaining, reset, retry
///   times) are the values `MULTI` computes, combined as `MULTI` combines them, so the
///   headers, the deny cache and the failure modes (an error on any slot: the others are
///   released, the failure mode decides) behave as on one server.
///
///   **The guarantee.** Never more admitted than a quota on any key, under any concurrency:
///   a reservation is an admission in every respect while it stands, and a release removes
///   only what that reservation added (below). A refused request holds at most `cost` units
///   per quota on the other slots, for the time between its reserve and its release (one
///   round trip); meanwhile a concurrent request on those keys may be refused although it
///   would have fit (a false refusal, never an over-admission). Within one backend, a
///   request spanning slots is the only call in flight from its reserve to its release (the
///   batcher holds the others back; a caller that goes away mid-decision lets them go, and
///   its release still runs, on a task of its own), so one instance's requests never see
///   each other's reservations and are decided exactly as one by one in arrival order; false
///   refusals come only from other instances' reservations. If the release cannot be made
///   (the process dies, the connection or a node fails between the two calls; a reserve that
///   timed out may also have taken its share unseen, and on a cluster the driver resends a
///   call after a connection error even if it had run, so a reserve can take its share
///   twice), each such key keeps the refused request's `cost` units counted as if it had
///   been admitted: on a window quota until that admission leaves the window (at most
///   window + granularity later), on a GCRA quota like any admission (cost·T on its TAT,
///   drained within burst·T once the key is idle). At most `cost` units per quota per
///   refused request (`2·cost` only if the driver ran its reserve twice and the release
///   failed as well); a failed or skipped release is counted by
///   [`unreleased_reservations`](RedisBackend::unreleased_reservations) and logged (`warn`,
///   with the slot and how long the units stay), a reserve run unseen is not.
///
///   **Why a release never undoes someone else's admission.** If the key still holds
///   exactly what the reservation wrote, nothing happened to it since (a state changes only
///   by admissions, which add a slot or a count, or raise a TAT; with a server clock that
///   does not step back, a value once replaced never comes back), so the value before is
///   restored, byte for byte. Otherwise, for a window, the reservation added `cost` units to
///   the slot at its recorded time (the newest slot of what it wrote); units of one slot are
///   interchangeable, so taking `cost` from that slot leaves exactly the others' admissions;
///   if that slot is gone or holds fewer, the admission has left the window already and
///   nothing is changed. For GCRA, with `tat0` the TAT before, `tat_r = max(tat0, n0) +
///   cost·T` the one written, `cur` the current one and `now` the release's time: each
///   admission since (at `n_i <= now`, cost `c_i`) maps `x` to `max(x, n_i) + c_i·T`, a
///   non-decreasing map adding at least `c_i·T`, so `cur >= tat_r + Σ c_i·T`, and the TAT
///   without this reservation would be at most `max(tat0, now) + Σ c_i·T`, hence at most
///   `max(tat0, now) + cur - tat_r`. `RELEASE` sets
///   `min(cur, max(tat0, now) + cur - tat_r)`: never below
///   the TAT the others alone would have left (no over-admission), equal to it when the
///   bucket was not empty at the reservation (`tat0 >= now`), and otherwise above it by at
///   most what the bucket would have drained between reserve and release (one round trip's
///   worth of microseconds). If `cur < tat_r` the key expired and began again: nothing is
///   changed.
///
///   **Why reserve on every slot at once** rather than slot by slot in slot order: the order
///   only helps two requests racing for the last unit of the same two keys (which, inside
///   one backend, never run at once anyway), and it would cost one round trip per slot on
///   every admitted request.
/// * **Cost**: a request spanning slots takes one call per slot (two when refused), and runs
///   alone: batches decide such requests one after the other, so they cost more calls and
///   latency than requests on one slot (the batching test's three quotas on three slots:
///   about four calls per request, against one call per batch on one server). Quotas of one
///   client key share a slot and keep the one-call path.
/// * **Failover and resharding** (figures in the [`redis` module docs](crate::redis)): while
///   a master is dead, decisions on its slots fail (the failure mode decides) until its
///   replica is promoted (about 2.5 s with a 1 s `cluster-node-timeout`), then continue on
///   the same connection; increments the dead master acknowledged but had not replicated
///   are lost, each one admission a quota could exceed by (none in the tests), and a quota
///   spent before stays spent. While a slot moves, a batch whose keys are on both sides
///   (`TRYAGAIN`) is decided request by request, in order, as one by one would; no
///   decision fails and no quota is exceeded.
///
/// ```no_run
/// use tower_rampart::net::TrustedProxies;
/// use tower_rampart::rate_limit::{FailureMode, Key, Quota, RateLimitLayer, RedisBackend};
/// use tower_rampart::redis::RedisConfig;
///
/// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let conn = RedisConfig::from_url("redis://127.0.0.1:6379")?.connect_lazy()?;
/// let layer = RateLimitLayer::builder()
///     .quota("ip", Quota::parse("10/minute")?, Key::client_ip(TrustedProxies::none()))
///     .backend(RedisBackend::new(conn))
///     .failure_mode(FailureMode::Local)
///     .build()?;
/// # let _ = layer; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    conn: RedisConnection,
    router: Arc<Router>,
    prefix: String,
    clock: Option<Arc<dyn Clock>>,
    deny: DenyCache,
    names: Names,
    /// `None`: one script call per decision.
    batcher: Option<Arc<Batcher<Ask>>>,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("conn", &self.inner.conn)
            .field("prefix", &self.inner.prefix)
            .field("client_clock", &self.inner.clock.is_some())
            .field("deny_cache_capacity", &self.inner.deny.capacity)
            .field("batching", &self.inner.batcher)
            .finish()
    }
}

/// Builder of a [`RedisBackend`].
#[derive(Debug, Clone)]
pub struct RedisBackendBuilder {
    conn: RedisConnection,
    prefix: String,
    deny_cache: usize,
    clock: Option<Arc<dyn Clock>>,
    batching: bool,
    max_in_flight: usize,
    max_batch: usize,
    every_key_own_slot: bool,
    skip_releases: bool,
    #[cfg(feature = "opentelemetry")]
    meter: Option<opentelemetry::metrics::Meter>,
}

impl RedisBackendBuilder {
    /// Prefix of every key name (default `"rampart:rl:"`). Layers that must share quotas
    /// (several instances of one service) use the same prefix and quota names.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Bound on the local deny cache (default 100 000 keys; 0 disables it).
    pub fn deny_cache_capacity(mut self, n: usize) -> Self {
        self.deny_cache = n;
        self
    }

    /// Decides at `clock`'s time instead of the Redis server's `TIME`.
    ///
    /// For tests and replays on a [`ManualClock`](crate::clock::ManualClock) only: in
    /// production every instance's clock would have to agree to the microsecond, which is the
    /// problem the server clock solves.
    pub fn client_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Coalesces concurrent decisions into shared script calls (default on; see
    /// [natural batching](RedisBackend#natural-batching)). Off, every decision is one script
    /// call of its own.
    pub fn batching(mut self, on: bool) -> Self {
        self.batching = on;
        self
    }

    /// Most script calls in flight at once when batching (default 2, at least 1): a
    /// decision that finds a free slot and no queue is sent at once, alone; the others queue
    /// for the next free slot.
    ///
    /// The trade-off: more slots lower the latency under moderate load, but halve the
    /// batches under heavy load, which costs Redis more CPU per decision (figures in the
    /// repository's `benches/README.md`). Raise it when Redis has CPU to spare and latency
    /// under moderate load matters more.
    pub fn max_calls_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// Most decisions in one batched call (default 128, at least 1).
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    /// Test switch: routes as on a Redis Cluster where every distinct key is in a slot of
    /// its own, also on a single server, so that the split paths (per-slot batches, a
    /// request's quotas reserved slot by slot and released if another refuses) can be tested
    /// there. Not for production: it only costs more calls.
    #[doc(hidden)]
    pub fn every_key_in_its_own_slot(mut self, on: bool) -> Self {
        self.every_key_own_slot = on;
        self
    }

    /// Test hook: a request refused on one slot keeps what it reserved on the others (no
    /// release), as if the process died between its reserve and its release. Counted by
    /// [`RedisBackend::unreleased_reservations`].
    #[doc(hidden)]
    pub fn skip_releases(mut self, on: bool) -> Self {
        self.skip_releases = on;
        self
    }

    /// The meter of the backend's metrics (`rampart.rate_limit.script.*`, see
    /// [`telemetry`](crate::telemetry)). Default: the global provider's, taken by
    /// [`build`](Self::build).
    #[cfg(feature = "opentelemetry")]
    #[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
    pub fn meter(mut self, meter: opentelemetry::metrics::Meter) -> Self {
        self.meter = Some(meter);
        self
    }

    /// Builds the backend.
    pub fn build(self) -> RedisBackend {
        let router = Arc::new(Router {
            conn: self.conn.clone(),
            #[cfg(feature = "opentelemetry")]
            metrics: super::metrics::otel::ScriptMetrics::new(
                &self.meter.unwrap_or_else(crate::telemetry::global_meter),
            ),
            every_key_own_slot: self.every_key_own_slot,
            skip_releases: AtomicBool::new(self.skip_releases),
            unreleased: AtomicU64::new(0),
            slotted: AtomicBool::new(false),
        });
        let batcher = self.batching.then(|| {
            Arc::new(Batcher::new(
                &self.conn,
                router.clone(),
                self.max_in_flight,
                self.max_batch,
            ))
        });
        RedisBackend {
            inner: Arc::new(Inner {
                router,
                batcher,
                conn: self.conn,
                prefix: self.prefix,
                clock: self.clock,
                deny: DenyCache::new(self.deny_cache),
                names: Names::default(),
            }),
        }
    }
}

/// One quota check of a multi-quota decision.
pub(crate) struct RedisItem<'a> {
    pub(crate) id: u32,
    pub(crate) name: &'a str,
    pub(crate) quota: &'a Quota,
    pub(crate) key: &'a LimitKey,
}

impl RedisBackend {
    /// A backend with the default prefix and deny cache.
    pub fn new(conn: RedisConnection) -> Self {
        Self::builder(conn).build()
    }

    /// A builder.
    pub fn builder(conn: RedisConnection) -> RedisBackendBuilder {
        RedisBackendBuilder {
            conn,
            prefix: DEFAULT_PREFIX.to_owned(),
            deny_cache: DEFAULT_DENY_CACHE,
            clock: None,
            batching: true,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_batch: DEFAULT_MAX_BATCH,
            every_key_own_slot: false,
            skip_releases: false,
            #[cfg(feature = "opentelemetry")]
            meter: None,
        }
    }

    /// The connection.
    pub fn connection(&self) -> &RedisConnection {
        &self.inner.conn
    }

    /// A limiter for one named quota that asks Redis on every call (no deny cache, no failure
    /// mode: errors are returned).
    pub fn keyed(&self, name: &str, quota: Quota) -> Result<RedisKeyedLimiter, QuotaError> {
        quota.validate()?;
        Ok(RedisKeyedLimiter {
            backend: self.clone(),
            name: name.into(),
            id: self.intern(name),
            quota,
        })
    }

    /// Reservations that could not be released (Redis Cluster only): a request whose quotas
    /// live in several hash slots reserves its units on each and, if one slot refuses,
    /// releases the others; when that release fails (a node or the connection failing
    /// between the two calls), each such key keeps the refused request's units counted as
    /// if it had been admitted, until they leave the window (window meaning) or are drained
    /// like any admission (GCRA). Each is also logged. Always 0 on a single server. See
    /// [Redis Cluster](RedisBackend#redis-cluster).
    pub fn unreleased_reservations(&self) -> u64 {
        self.inner.router.unreleased.load(Ordering::Relaxed)
    }

    /// Number of keys in the deny cache.
    pub fn deny_cache_len(&self) -> usize {
        self.inner.deny.len()
    }

    /// The Redis key holding the state of quota `name` for `key`.
    pub fn key_name(&self, name: &str, key: &LimitKey) -> String {
        // Written piece by piece into one allocation: this runs for every decision sent.
        let prefix = &self.inner.prefix;
        let mut out = String::with_capacity(prefix.len() + name.len() + 40);
        out.push_str(prefix);
        out.push('{');
        key.push_to(&mut out);
        out.push_str("}:");
        out.push_str(name);
        out
    }

    /// Forgets the state of quota `name` for `key`, in Redis and in this instance's deny
    /// cache: the client starts over with a full quota (a window quota with no admission in
    /// its window, a GCRA quota with a full bucket). For support staff unblocking a customer.
    ///
    /// One `DEL` of [`key_name(name, key)`](Self::key_name) (on a Redis Cluster, sent to the
    /// master of that key's slot). Returns whether Redis held state for that key: resetting
    /// a key that was never seen, or whose state already expired, is `Ok(false)`, not an
    /// error. Other keys, and the same key under other quota names, are untouched; the
    /// stored format of every other key is unchanged. The key is the [`LimitKey`] the
    /// quota's key extractor yields (e.g. [`LimitKey::ip`] for
    /// [`Key::client_ip`](super::Key::client_ip)) and `name` the quota's name in the layer;
    /// the backend's prefix is applied as for decisions.
    ///
    /// **Other instances.** The deny cache of *this* backend forgets the key's denial, so
    /// this instance admits the client's next request at once. Every other instance (another
    /// process, or another `RedisBackend` value built separately on the same Redis) keeps a
    /// denial it had cached for that key and quota, and refuses the client locally, without
    /// asking Redis, **until that cached time passes**: the time at which, by the last
    /// answer Redis gave that instance, the client's next unit comes back. That is at most
    /// the quota's window after that answer (window meaning) or one emission interval
    /// `T = window / limit` (GCRA, e.g. 6 s for 10 per minute), and is what that instance
    /// sent the client as `RateLimit`'s `t`. From then on it asks Redis and sees the reset. Instances that had not cached a denial for
    /// that key see the reset at once. To make a reset take effect everywhere at once, run it
    /// on every instance (each call deletes again, harmlessly) or build the backends with
    /// [`deny_cache_capacity(0)`](RedisBackendBuilder::deny_cache_capacity).
    ///
    /// A decision of this instance that is in flight while the reset runs is decided by
    /// Redis before or after the `DEL` (either is a correct answer), and a denial it brings
    /// back is not cached. With [`FailureMode::Local`](super::FailureMode::Local), the
    /// layer's local fallback is a separate [`MemoryBackend`](super::MemoryBackend): reset it
    /// too (its [`reset`](super::MemoryBackend::reset)) if Redis was unreachable while the
    /// client was refused.
    ///
    /// ```no_run
    /// use tower_rampart::rate_limit::{LimitKey, RedisBackend};
    /// use tower_rampart::redis::RedisConfig;
    ///
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let conn = RedisConfig::from_url("redis://127.0.0.1:6379")?.connect().await?;
    /// // The backend given to the layer (clones share the deny cache).
    /// let backend = RedisBackend::new(conn);
    /// // Support unblocks a customer refused by the "ip" quota.
    /// let customer = LimitKey::ip("203.0.113.7".parse()?);
    /// if backend.reset("ip", &customer).await? {
    ///     println!("unblocked");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn reset(&self, name: &str, key: &LimitKey) -> Result<bool, RedisError> {
        let deny = &self.inner.deny;
        deny.bump();
        let deleted: Result<i64, RedisError> = self
            .inner
            .conn
            .query(crate::redis::driver::cmd("DEL").arg(self.key_name(name, key)))
            .await;
        // Also after an error: the DEL may have run, and the cache is only a shortcut.
        deny.bump();
        if let Some(id) = self.inner.names.get(name) {
            deny.remove(id, key);
        }
        Ok(deleted? > 0)
    }

    /// Interns a quota name: quotas of the same name share buckets.
    pub(crate) fn intern(&self, name: &str) -> u32 {
        self.inner.names.intern(name)
    }

    /// A denial known locally for a request of cost >= 1 (see the deny cache above). The
    /// caller asks only for such requests: one of cost 0 is checked without being counted,
    /// so Redis admits it even on a used-up key.
    pub(crate) fn cached_denial(&self, id: u32, key: &LimitKey, now: u64) -> Option<QuotaDecision> {
        let until = self.inner.deny.get(id, key, now)?;
        let wait = until - now;
        Some(QuotaDecision::new(false, 0, wait, wait))
    }

    /// Decides every item in one script call. `sent_at` (local clock) anchors deny-cache
    /// entries.
    pub(crate) async fn decide(
        &self,
        items: &[RedisItem<'_>],
        cost: u64,
        sent_at: u64,
    ) -> Result<(bool, Vec<QuotaDecision>), RedisError> {
        let now = self.inner.clock.as_ref().map_or(0, |c| c.now_micros());
        let generation = self.inner.deny.generation();
        let (all, decisions) = self.run(items, cost, now).await?;
        if cost > 0 {
            for (item, d) in items.iter().zip(&decisions) {
                // Only what Redis really refused, or what an admitted request really used
                // up. A quota that passed in a refused request reports what it would have
                // left had the request been admitted: nothing was consumed, so its 0 is no
                // denial (a request needing only that quota may still be admitted).
                let real = all || !d.is_allowed();
                if real && d.remaining() == 0 && d.reset_us() > 0 {
                    self.inner.deny.put(
                        item.id,
                        item.key,
                        sent_at.saturating_add(d.reset_us()),
                        sent_at,
                        generation,
                    );
                }
            }
        }
        Ok((all, decisions))
    }

    async fn run(
        &self,
        items: &[RedisItem<'_>],
        cost: u64,
        now: u64,
    ) -> Result<(bool, Vec<QuotaDecision>), RedisError> {
        if let Some(batcher) = &self.inner.batcher {
            let router = &self.inner.router;
            let exclusive = items.len() > 1
                && router.splits()
                && router
                    .groups(
                        items
                            .iter()
                            .map(|item| self.key_name(item.name, item.key))
                            .collect::<Vec<_>>()
                            .iter()
                            .map(String::as_str),
                    )
                    .len()
                    > 1;
            let ask = || Ask {
                exclusive,
                checks: items
                    .iter()
                    .map(|item| Check {
                        key: self.key_name(item.name, item.key),
                        def: Definition::of(item.quota),
                    })
                    .collect(),
                cost,
                now,
            };
            match batcher.enqueue(exclusive, ask) {
                Turn::Alone(slot) => {
                    // Nobody waiting: this call goes out now, alone, with the single-request
                    // scripts (exactly the call made without batching); the slot is passed
                    // on when it is dropped, at the end of the call or if this future is.
                    let decided = self.run_alone(items, cost, now).await;
                    drop(slot);
                    return decided;
                }
                Turn::Queued(pending) => {
                    let answer = pending.answer().await?;
                    let defs = items.iter().map(|item| Definition::of(item.quota));
                    return scripts::decode_keys(defs, cost, answer.values());
                }
            }
        }
        self.run_alone(items, cost, now).await
    }

    /// One script call for one request (`GCRA_ONE`, `WINDOW_ONE`, or
    /// `MULTI`); on a cluster, a request whose keys span slots is split.
    async fn run_alone(
        &self,
        items: &[RedisItem<'_>],
        cost: u64,
        now: u64,
    ) -> Result<(bool, Vec<QuotaDecision>), RedisError> {
        let defs = || items.iter().map(|item| Definition::of(item.quota));
        let router = &self.inner.router;
        #[cfg(feature = "opentelemetry")]
        router.metrics.call(1);
        if items.len() > 1 && router.splits() {
            let checks: Vec<Check> = items
                .iter()
                .map(|item| Check {
                    key: self.key_name(item.name, item.key),
                    def: Definition::of(item.quota),
                })
                .collect();
            if router.groups(checks.iter().map(|c| c.key.as_str())).len() > 1 {
                let reply = self.run_split(checks, cost, now).await?;
                return scripts::decode_multi(defs(), &reply);
            }
        }
        if let [item] = items {
            let (mut inv, decode) = Definition::of(item.quota).one_key_invocation(cost, now);
            inv.key(self.key_name(item.name, item.key));
            let reply: driver::Value = self.inner.conn.invoke_script(&inv).await?;
            let decision = decode(&reply).ok_or_else(scripts::replied_shape)?;
            return Ok((decision.allowed, vec![decision]));
        }
        let mut inv = scripts::multi_invocation(defs(), cost, now);
        for item in items {
            inv.key(self.key_name(item.name, item.key));
        }
        let reply: Vec<i64> = match self.inner.conn.invoke_script(&inv).await {
            Ok(reply) => reply,
            // Refused before running: the first call of a connection that had not yet learnt
            // it talks to a cluster (`REDIS_CLUSTER=auto`, connected lazily), or a single
            // endpoint that enforces slots (the router remembers it). Split it now.
            Err(e) if items.len() > 1 && router.learn_slots(&e) => {
                let checks = items
                    .iter()
                    .map(|item| Check {
                        key: self.key_name(item.name, item.key),
                        def: Definition::of(item.quota),
                    })
                    .collect();
                let reply = self.run_split(checks, cost, now).await?;
                return scripts::decode_multi(defs(), &reply);
            }
            Err(e) => return Err(e),
        };
        scripts::decode_multi(defs(), &reply)
    }

    /// A request spanning slots, on a task of its own, so that a caller going away between
    /// its reserve and its release does not leave the reservation behind.
    async fn run_split(
        &self,
        checks: Vec<Check>,
        cost: u64,
        now: u64,
    ) -> Result<Vec<i64>, RedisError> {
        let router = self.inner.router.clone();
        let task = async move { router.split(&checks, cost, now).await };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => runtime
                .spawn(task)
                .await
                .unwrap_or_else(|_| Err(split::abandoned())),
            Err(_) => task.await,
        }
    }
}

/// A single-quota limiter over a [`RedisBackend`] (see [`RedisBackend::keyed`]).
#[derive(Clone, Debug)]
pub struct RedisKeyedLimiter {
    backend: RedisBackend,
    name: Arc<str>,
    id: u32,
    quota: Quota,
}

impl RedisKeyedLimiter {
    /// Checks (and, if admitted, records) a request of `cost` units for `key`, at the Redis
    /// server's time (or the backend's client clock).
    pub async fn check(&self, key: &LimitKey, cost: u64) -> Result<QuotaDecision, RedisError> {
        let now = self
            .backend
            .inner
            .clock
            .as_ref()
            .map_or(0, |c| c.now_micros());
        self.check_at(key, cost, now).await
    }

    /// Checks a request at `now_micros` instead of the server's time (tests and replays;
    /// `0` means the server's time).
    pub async fn check_at(
        &self,
        key: &LimitKey,
        cost: u64,
        now_micros: u64,
    ) -> Result<QuotaDecision, RedisError> {
        let item = RedisItem {
            id: self.id,
            name: &self.name,
            quota: &self.quota,
            key,
        };
        let (_, mut d) = self.backend.run(&[item], cost, now_micros).await?;
        d.pop()
            .ok_or_else(|| RedisError::new(RedisErrorKind::Protocol, "empty script reply"))
    }

    /// The quota.
    pub fn quota(&self) -> &Quota {
        &self.quota
    }
}
