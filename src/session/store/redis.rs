//! [`RedisStore`]: sessions in Redis, shared by every instance (feature `redis`).

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, OnceLock};
use std::task::Poll;
use std::time::Duration;

use super::{SessionRecord, SessionStore, StoreError, StoreFuture, UserSession, WriteOutcome};
use crate::digest::sha256_hex128;
use crate::redis::driver::{self, Script, ToRedisArgs, Value};
use crate::redis::{DedicatedPool, RedisConnection, RedisError, RedisErrorKind, key_slot};
use crate::session::SessionKey;

const DEFAULT_PREFIX: &str = "rampart:session:";

/// The scripts, one Lua file each under `lua/`; each file opens with what it reads (KEYS,
/// ARGV) and what it replies and leaves. Record fields come back in the order
/// `v c a i x u d b`.
pub(crate) mod lua {
    /// Reads a session, refreshing its idle deadline when due (run after a plain `HMGET`
    /// found the refresh due).
    pub(crate) const LOAD: &str = include_str!("lua/load.lua");
    /// Stores a new session, only if no live one has its key.
    pub(crate) const CREATE: &str = include_str!("lua/create.lua");
    /// Compare-and-set write of a live session.
    pub(crate) const SAVE: &str = include_str!("lua/save.lua");
    /// Removes a session, unconditionally or at an expected version.
    pub(crate) const DELETE: &str = include_str!("lua/delete.lua");
    /// Marks a live session as used now.
    pub(crate) const TOUCH: &str = include_str!("lua/touch.lua");
    /// Records a session in its user's index.
    pub(crate) const INDEX_ADD: &str = include_str!("lua/index_add.lua");
    /// Removes a session if it belongs to a user.
    pub(crate) const DELETE_IF_USER: &str = include_str!("lua/delete_if_user.lua");
}

static LOAD: LazyLock<Script> = LazyLock::new(|| Script::new(lua::LOAD));
static CREATE: LazyLock<Script> = LazyLock::new(|| Script::new(lua::CREATE));
static SAVE: LazyLock<Script> = LazyLock::new(|| Script::new(lua::SAVE));
static DELETE: LazyLock<Script> = LazyLock::new(|| Script::new(lua::DELETE));
static TOUCH: LazyLock<Script> = LazyLock::new(|| Script::new(lua::TOUCH));
static INDEX_ADD: LazyLock<Script> = LazyLock::new(|| Script::new(lua::INDEX_ADD));
static DELETE_IF_USER: LazyLock<Script> = LazyLock::new(|| Script::new(lua::DELETE_IF_USER));

/// Dedicated connections of a store that waits for replicas, unless configured otherwise.
const DEFAULT_WAIT_CONNECTIONS: u32 = 8;

/// One call of a script on one key: run as `EVALSHA` through the shared connection, or
/// as a command of a pipeline (`EVALSHA`, or `EVAL` after `NOSCRIPT`) on a dedicated one.
struct Call {
    script: &'static LazyLock<Script>,
    source: &'static str,
    key: String,
    args: Vec<Vec<u8>>,
}

impl Call {
    fn new(script: &'static LazyLock<Script>, source: &'static str, key: String) -> Self {
        Self {
            script,
            source,
            key,
            args: Vec::new(),
        }
    }

    fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        self.args.extend(arg.to_redis_args());
        self
    }

    /// The invocation for [`RedisConnection::invoke_script`] (the same bytes on the wire as
    /// building it directly).
    fn invocation(&self) -> driver::ScriptInvocation<'static> {
        let script: &'static Script = self.script;
        let mut inv = script.prepare_invoke();
        inv.key(&self.key);
        for arg in &self.args {
            inv.arg(arg.as_slice());
        }
        inv
    }

    /// `EVALSHA sha 1 key args..` (`by_hash`), or `EVAL source 1 key args..`.
    fn command(&self, by_hash: bool) -> driver::Cmd {
        let mut cmd = if by_hash {
            let mut c = driver::cmd("EVALSHA");
            c.arg(self.script.get_hash());
            c
        } else {
            let mut c = driver::cmd("EVAL");
            c.arg(self.source);
            c
        };
        cmd.arg(1).arg(&self.key);
        for arg in &self.args {
            cmd.arg(arg.as_slice());
        }
        cmd
    }
}

/// [`RedisStore::with_wait_replicas`] and its companions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct WaitSettings {
    replicas: u32,
    /// `None`: the connection's command timeout.
    timeout: Option<Duration>,
    connections: u32,
}

/// Sessions in Redis: every instance behind the load balancer sees the same sessions.
///
/// Each write of a session is one Lua script on one key (one round trip, atomic); a read is
/// one plain `HMGET` of the record (scripts cost Redis several times the commands they run),
/// followed by the LOAD script only when the idle refresh is due. Expiry is enforced both by
/// the store (against the layer's clock: the scripts, and the same check in Rust after a
/// read) and by a Redis TTL set to the earlier of the idle and absolute deadlines, so
/// abandoned sessions disappear by themselves.
///
/// Layout, for the default prefix `rampart:session:`:
///
/// - `rampart:session:{<session key>}`: a hash with the version `v`, times `c`, `a`, `x`
///   (microseconds) and idle timeout `i`, the user id `u`, the data `d` (encrypted by
///   the layer unless configured otherwise) and the binding `b` (a MAC of the key and
///   `v c i x u` by the layer, see
///   [`SessionConfigBuilder::require_record_binding`](crate::session::SessionConfigBuilder::require_record_binding);
///   absent from records written by earlier versions, which read the hash field by field
///   and ignore it). The key is a hash of the session id, so a dump holds no usable cookie.
/// - `rampart:session:user:{<hash of the user id>}`: the user's index, a sorted set of
///   session keys scored by absolute deadline, for
///   [`delete_user_sessions`](SessionStore::delete_user_sessions) ("sign out everywhere"),
///   [`list_user_sessions`](SessionStore::list_user_sessions) and
///   [`delete_user_session`](SessionStore::delete_user_session).
///
/// Round trips: load 1 (2 when the idle refresh is due, at most once per quarter of the idle
/// timeout: the `HMGET`, then the LOAD script), save 1, delete 1, create 1; a create with a
/// user adds 1 (the index entry, written first); a save that gives the session a user, or
/// another user, or moves its absolute deadline later, costs 3 (the refused save, the index
/// entry, the save). Sign out everywhere: at most 3 on a single server (read the index, one
/// pipeline of deletes, unindex); on a cluster the deletes are one pipeline per hash slot,
/// at most 16 at a time. Listing a user's sessions: 2 on a single server (read the index,
/// one pipeline of `HMGET`s of the records; on a cluster one pipeline per hash slot);
/// ending one of them: 2 (the owner-checked delete, unindex). Waiting for replicas ([`RedisStore::with_wait_replicas`]) adds no
/// round trip: each write and its `WAIT` go as one pipeline (the call lasts until the
/// replicas acknowledge).
///
/// # Redis Cluster
///
/// The store runs on a Redis Cluster through the same [`RedisConnection`] (cluster mode),
/// and passes the same conformance suite there as on one server (plain and TLS). What holds:
///
/// - Every script declares exactly one key, written with a hash tag (`{...}`), so it runs
///   on the node that owns that key's slot; no script or pipeline spans two slots (a
///   cluster refuses `CROSSSLOT`). Every operation on one session is therefore one atomic
///   script (or, for a read, one `HMGET`) on one node, with the same guarantees as on one
///   server (compare-and-set saves, create only if absent, logout wins, expiry).
/// - A session and its user's index live in different slots (often on different masters),
///   so they are never written together atomically; the index design below does not need
///   them to be. Sign out everywhere groups its deletes by slot.
/// - Failover: replication is asynchronous, so a write a master acknowledged and did not
///   pass to its replica before dying is lost with it: a save (the session goes back to its
///   previous version), a logout (the session comes back), a create, or an index entry. A
///   lost index entry whose session write, on another master, survived leaves that session
///   unindexed: this is the one case where sign out everywhere can miss a live session, and
///   it needs a failover within the replication delay after the sign-in. Waiting for
///   replicas ([`RedisStore::with_wait_replicas`], below) closes it: the index entry is then
///   on a replica before the session write is sent. (On one server there is no such case: a
///   restart that loses recent writes, without persistence or with `appendfsync everysec`,
///   loses them in order, so never an index entry without the session write that followed
///   it.)
///
/// # Waiting for replicas (durable writes)
///
/// Redis replicates asynchronously: a master answers a write before its replicas have it.
/// [`RedisStore::with_wait_replicas`] (the gateway's `REDIS_WAIT_REPLICAS`) trades latency
/// for durability:
///
/// - **Off (`0`, the default).** A write is acknowledged when the master has it. A failover
///   (a Redis Cluster promoting a replica, Sentinel, a managed service's patching) can lose
///   the writes that master acknowledged in the last moments before it died, those not yet
///   passed to the replica that takes over (usually well under a second's worth; with a
///   replica that had fallen behind, more): a save goes back to the previous version, a
///   logout is undone (the session comes back until it expires), a sign-in is lost (its
///   next request is anonymous), and on a cluster an index entry can be lost while its
///   session survives on another master (see above). The crate's failover test cuts a
///   master off from its replica, saves, kills the master: the save it acknowledged is
///   lost, the session back at its previous version.
/// - **On (`n` ≥ 1).** Every create, save and delete of a session, every index entry and
///   the deletes of sign out everywhere are followed, on the same connection and the same
///   node, by `WAIT n timeout`; the call succeeds only if at least `n` replicas of that node
///   acknowledged the write within [`RedisStore::with_wait_timeout`] (default: the command
///   timeout). An acknowledged write is then on `n` replicas, and survives the failure of
///   its master as long as the replica promoted is one of them (a Redis Cluster and
///   Sentinel promote the replica with the most data; with one replica per master and
///   `n = 1`, always that one). Under the same fault as above the save is not
///   acknowledged (it fails after the wait timeout), so nothing the application was told
///   succeeded is lost. Loads and touches (the idle deadline) do not wait: losing one
///   only moves an idle deadline back.
///
/// **When fewer replicas acknowledge**, the call fails with
/// [`StoreErrorKind::Unavailable`](super::StoreErrorKind::Unavailable) and the request is
/// answered `503`, after the wait timeout. The write itself is *not* undone (Redis cannot):
/// the master keeps it, as after a timeout, so the outcome is unknown to the client, and a
/// retry sees it (a retried save conflicts or succeeds, a retried logout finds the session
/// gone). Failing is the point of the setting: with `n` set, every write the application
/// was told succeeded is on `n` replicas, with no silent exception. The price is
/// availability: while a master has fewer than `n` replicas in sync (a replica down or
/// resyncing, or right after a failover, when the promoted master has none until another
/// node rejoins as its replica) the writes to its keys fail. Set `n` below the number of
/// replicas per master to ride out the loss of one (Redis's own `min-replicas-to-write`
/// makes the same trade on the server side).
///
/// `WAIT` blocks the connection it runs on, so waiting writes never use the shared
/// multiplexed connection: they run on a small pool of dedicated connections
/// ([`RedisStore::with_wait_connections`], default 8; on a cluster each is a cluster
/// connection of its own, and the write and its `WAIT` go as one pipeline to the master of
/// the key's slot). The rate limiter and session loads on the shared connection are not
/// held up by a waiting write. A waiting write costs one extra round trip to a replica
/// (the replica applies the write and acknowledges; Redis sends acknowledgements at once
/// for `WAIT`), and takes at most the connect timeout (a free connection), the command
/// timeout and the wait timeout in all.
///
/// A prefix must not contain `{` or `}`.
///
/// # The user index: why sign out everywhere never misses a live session
///
/// The invariant: *every live session that belongs to a user has an entry in that user's
/// index whose score is at least the session's absolute deadline.* It holds on a single
/// server and on a cluster, whatever call fails and whenever a node dies, because:
///
/// - **The index entry is written first.** A write that makes a session belong to a user
///   (a create with a user; a save that sets or changes the user) or that moves its
///   absolute deadline later first writes the entry (a score is raised, never lowered;
///   without `ZADD GT`, so Redis 6.0 servers work too), and only when that succeeded writes the session. The save script checks this
///   atomically on the session's node: it refuses (without writing) a save that would need
///   a new entry unless the caller says it wrote one. If the index write fails, the session
///   is not written (the request is answered `503`); if the session write fails or its node
///   dies after the entry was written, the entry is *stale*: it names a session that is
///   missing or not the user's, which is harmless (sign out everywhere checks the owner of
///   every session it deletes).
/// - **Nothing else adds a user or extends a deadline.** Loads and touches move the idle
///   deadline only, which is capped by the absolute one; a save that moves the absolute
///   deadline earlier keeps the higher score.
/// - **An entry is removed only when it cannot matter:** when its score is at or before
///   `now` (its session is dead: pruned on every index write), or by sign out everywhere
///   or [`delete_user_session`](SessionStore::delete_user_session) after it deleted that
///   very session (listing removes nothing). The layer never creates a session key twice (ids
///   are 128 random bits), so a deleted session cannot come back under an entry removed
///   later.
///   Entries of sessions that are missing or belong to someone else are *not* removed by
///   sign out everywhere: such an entry may be a sign-in whose session write is still on
///   its way. Stale entries therefore live until their deadline; a user's index holds at
///   most one entry per session signed in for that user within the absolute lifetime (the
///   same bound as before this design), and each sign out everywhere checks each of them.
///   A sign out everywhere that fails part-way removes no entry; running it again finishes
///   it.
///
/// **A sign-in racing sign out everywhere.** Sign out everywhere reads the index, then
/// deletes, on each session's node, the sessions that belong to the user at that moment.
/// For each session, the order of two scripts on its own key decides: a sign-in whose
/// session write landed before the delete reached that key is ended (so every sign-in that
/// was answered before sign out everywhere started is ended); a sign-in whose session write
/// lands after it (or whose index entry was written after the index was read) survives this
/// sign-out, still indexed, and the next sign out everywhere ends it. A session is never
/// left unindexed by the race.
///
/// Time: liveness, like everywhere in the layer, is judged by the caller's clock; instances
/// whose clocks differ by `d` may prune an entry up to `d` before its session's absolute
/// deadline as another instance sees it. Instances of earlier versions (index written after
/// the save) sharing Redis during a rolling deploy keep their old behaviour for the writes
/// they make: a session they saved whose index write failed may be unindexed until it
/// expires. The stored record and index formats are unchanged.
///
/// ```no_run
/// use tower_rampart::redis::RedisConfig;
/// use tower_rampart::session::{RedisStore, SessionConfig, SessionLayer};
///
/// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = RedisConfig::from_url("rediss://:password@cache.example.com:6380")?.connect_lazy()?;
/// let store = RedisStore::new(redis).with_prefix("myapp:session:");
/// let config = SessionConfig::builder().key(std::env::var("SECRET_KEY")?).build()?;
/// let layer = SessionLayer::new(store, config);
/// # let _ = layer; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    conn: RedisConnection,
    prefix: Arc<str>,
    wait: WaitSettings,
    /// The dedicated connections of waiting writes, made on first use (inside a runtime).
    wait_pool: Arc<OnceLock<DedicatedPool>>,
    /// Faults the crate's own tests inject between two calls of one operation.
    #[cfg(test)]
    faults: Arc<TestFaults>,
}

/// Faults the crate's own tests inject into a [`RedisStore`].
#[cfg(test)]
#[derive(Debug, Default)]
struct TestFaults {
    /// Fail every write right after its index write succeeded, before the session write (as
    /// if the node holding the session died between the two calls).
    fail_after_index: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("conn", &self.conn)
            .field("prefix", &self.prefix)
            .field("wait_replicas", &self.wait.replicas)
            .field("wait_timeout", &self.wait_timeout())
            .finish()
    }
}

impl RedisStore {
    /// A store using `conn`, with the key prefix `rampart:session:`.
    pub fn new(conn: RedisConnection) -> Self {
        Self {
            conn,
            prefix: DEFAULT_PREFIX.into(),
            wait: WaitSettings {
                replicas: 0,
                timeout: None,
                connections: DEFAULT_WAIT_CONNECTIONS,
            },
            wait_pool: Arc::default(),
            #[cfg(test)]
            faults: Arc::default(),
        }
    }

    /// Uses `prefix` for every key (e.g. `"myapp:session:"`); it must not contain `{` or `}`.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into().into();
        self
    }

    /// Makes every write of a session (create, save, delete) and every index entry wait
    /// until `replicas` replicas of the node that took it acknowledge it (`WAIT`), so that an
    /// acknowledged write survives a failover; `0` (the default) does not wait. See
    /// [Waiting for replicas](RedisStore#waiting-for-replicas-durable-writes).
    ///
    /// A write that fewer replicas acknowledge within [`RedisStore::with_wait_timeout`]
    /// fails (the request is answered `503`), although the node that took it keeps it.
    pub fn with_wait_replicas(mut self, replicas: u32) -> Self {
        self.wait.replicas = replicas;
        self.wait_pool = Arc::default();
        self
    }

    /// How long a waiting write waits for its replicas (`WAIT`'s timeout; at least 1 ms).
    /// Default: the connection's command timeout (500 ms unless configured).
    pub fn with_wait_timeout(mut self, timeout: Duration) -> Self {
        self.wait.timeout = Some(timeout.max(Duration::from_millis(1)));
        self.wait_pool = Arc::default();
        self
    }

    /// How many dedicated connections waiting writes may use at once (default 8); further
    /// waiting writes queue for one. `WAIT` blocks its connection, so waiting writes never
    /// run on the shared connection the rate limiter and the loads use.
    pub fn with_wait_connections(mut self, connections: u32) -> Self {
        self.wait.connections = connections.max(1);
        self.wait_pool = Arc::default();
        self
    }

    /// Replicas each write waits for (`0`: none).
    pub fn wait_replicas(&self) -> u32 {
        self.wait.replicas
    }

    /// How long a waiting write waits for its replicas.
    pub fn wait_timeout(&self) -> Duration {
        self.wait
            .timeout
            .unwrap_or_else(|| self.conn.command_timeout())
    }

    /// The connection.
    pub fn connection(&self) -> &RedisConnection {
        &self.conn
    }

    /// The Redis key of a session.
    pub fn redis_key(&self, key: &SessionKey) -> String {
        format!("{}{{{}}}", self.prefix, key.as_str())
    }

    fn user_key(&self, user: &str) -> String {
        let hex = sha256_hex128(&[b"tower-rampart/session/user/v1:", user.as_bytes()]);
        format!("{}user:{{{hex}}}", self.prefix)
    }

    /// Runs one writing script: on the shared connection, or, when waiting for replicas, on
    /// a dedicated connection followed by `WAIT`.
    async fn write(&self, call: &Call) -> Result<Value, StoreError> {
        if self.wait.replicas == 0 {
            return self
                .conn
                .invoke_script(&call.invocation())
                .await
                .map_err(store_error);
        }
        let mut replies = self.write_and_wait(std::slice::from_ref(call)).await?;
        replies.pop().ok_or_else(|| protocol("write"))
    }

    /// `calls` (keys of one slot) then `WAIT replicas timeout`, as one pipeline on one
    /// dedicated connection; the scripts' replies in order. Fails when a script failed or
    /// when fewer replicas than asked acknowledged the writes.
    async fn write_and_wait(&self, calls: &[Call]) -> Result<Vec<Value>, StoreError> {
        let pool = self.wait_pool.get_or_init(|| {
            DedicatedPool::new(
                self.conn.clone(),
                self.wait.connections,
                self.wait_timeout(),
            )
        });
        let wait_ms = u64::try_from(self.wait_timeout().as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let pipeline = |by_hash: bool| {
            let mut pipe = driver::pipe();
            pipe.ignore_errors();
            for call in calls {
                pipe.add_command(call.command(by_hash));
            }
            pipe.cmd("WAIT").arg(self.wait.replicas).arg(wait_ms);
            pipe
        };
        let mut replies = pool.pipeline(&pipeline(true)).await.map_err(store_error)?;
        if replies.iter().any(is_noscript) {
            // A node that does not know a script yet (a restart, a promoted replica): `EVAL`
            // sends its source, and caches it there for the next `EVALSHA`.
            replies = pool.pipeline(&pipeline(false)).await.map_err(store_error)?;
        }
        if replies.len() != calls.len() + 1 {
            return Err(protocol("write and wait"));
        }
        let acknowledged = replies.pop().as_ref().and_then(number);
        for reply in &replies {
            if let Value::ServerError(e) = reply {
                let err = driver::RedisError::from(e.clone());
                return Err(store_error(RedisError::from_driver(&err, None)));
            }
        }
        let acknowledged = acknowledged.ok_or_else(|| protocol("WAIT"))?;
        if acknowledged < u64::from(self.wait.replicas) {
            return Err(StoreError::unavailable(format!(
                "the session write was acknowledged by {acknowledged} of the {} replicas \
                 required within {wait_ms} ms (REDIS_WAIT_REPLICAS): it may not survive a \
                 failover",
                self.wait.replicas
            )));
        }
        Ok(replies)
    }

    /// Records `key` in `user`'s index with the absolute deadline `expires`: the first of
    /// the two calls of a write that makes a session belong to `user` (or moves its deadline
    /// later); the write itself follows only if this succeeded.
    async fn index_first(
        &self,
        key: &SessionKey,
        user: &str,
        expires: u64,
        now: u64,
    ) -> Result<(), StoreError> {
        let mut call = Call::new(&INDEX_ADD, lua::INDEX_ADD, self.user_key(user));
        call.arg(now).arg(key.as_str()).arg(expires);
        number(&self.write(&call).await?).ok_or_else(|| protocol("index"))?;
        #[cfg(test)]
        if self
            .faults
            .fail_after_index
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(StoreError::unavailable(
                "injected failure after the index write",
            ));
        }
        Ok(())
    }

    /// One SAVE call; `indexed`: the index entry for the record's user and deadline is
    /// written.
    async fn save_once(
        &self,
        key: &SessionKey,
        record: &SessionRecord,
        now: u64,
        indexed: bool,
    ) -> Result<Value, StoreError> {
        let mut call = Call::new(&SAVE, lua::SAVE, self.redis_key(key));
        call.arg(now).arg(record.version);
        write_args(&mut call, record, now);
        call.arg(if indexed { "1" } else { "0" })
            .arg(record.binding.as_deref().unwrap_or(""));
        // The version a write leaves, as text made here: formatting it in the script cost
        // Redis about 0.45 us a write (the script computes it itself when it is absent).
        if let Some(next) = record.version.checked_add(1) {
            call.arg(next);
        }
        self.write(&call).await
    }

    /// The indices of `redis_keys` in groups that may each go as one pipeline: one group on
    /// a single server; on a cluster one per hash slot (a pipeline's keys must share a slot
    /// there).
    fn pipeline_groups(&self, redis_keys: &[String]) -> Vec<Vec<usize>> {
        if self.conn.is_cluster() {
            let mut by_slot: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
            for (i, k) in redis_keys.iter().enumerate() {
                by_slot.entry(key_slot(k.as_bytes())).or_default().push(i);
            }
            by_slot.into_values().collect()
        } else {
            vec![(0..redis_keys.len()).collect()]
        }
    }

    /// The keys in `user`'s index whose entries are alive at `now` (score after `now`).
    async fn indexed(&self, user: &str, now: u64) -> Result<Vec<SessionKey>, StoreError> {
        let members: Vec<String> = self
            .conn
            .query(
                driver::cmd("ZRANGEBYSCORE")
                    .arg(self.user_key(user))
                    .arg(format!("({now}"))
                    .arg("+inf"),
            )
            .await
            .map_err(store_error)?;
        Ok(members
            .iter()
            .filter_map(|m| SessionKey::parse(m))
            .collect())
    }

    /// DELETE_IF_USER on each of `keys`: one pipeline on a single server; on a cluster one
    /// pipeline per hash slot (a pipeline's keys must share a slot there), at most
    /// [`SWEEP_CONCURRENCY`] at a time. The replies, in the order of `keys`.
    async fn delete_if_user(
        &self,
        keys: &[SessionKey],
        user: &str,
        now: u64,
    ) -> Result<Vec<u64>, StoreError> {
        let redis_keys: Vec<String> = keys.iter().map(|k| self.redis_key(k)).collect();
        let groups = self.pipeline_groups(&redis_keys);
        let conn = &self.conn;
        let calls: Vec<_> = groups
            .into_iter()
            .map(|group| {
                let wait = self.wait.replicas > 0;
                let durable: Vec<Call> = if wait {
                    group
                        .iter()
                        .map(|&i| {
                            let mut call = Call::new(
                                &DELETE_IF_USER,
                                lua::DELETE_IF_USER,
                                redis_keys[i].clone(),
                            );
                            call.arg(user).arg(now);
                            call
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                let mut pipe = driver::pipe();
                for &i in &group {
                    pipe.cmd("EVAL")
                        .arg(lua::DELETE_IF_USER)
                        .arg(1)
                        .arg(&redis_keys[i])
                        .arg(user)
                        .arg(now);
                }
                async move {
                    let replies: Vec<u64> = if wait {
                        self.write_and_wait(&durable)
                            .await?
                            .iter()
                            .map(|v| number(v).ok_or_else(|| protocol("sweep")))
                            .collect::<Result<_, _>>()?
                    } else {
                        conn.query_pipeline(&pipe).await.map_err(store_error)?
                    };
                    if replies.len() != group.len() {
                        return Err(protocol("sweep"));
                    }
                    Ok(group.into_iter().zip(replies).collect::<Vec<_>>())
                }
            })
            .collect();
        let mut replies = vec![0; keys.len()];
        for result in join_bounded(calls, SWEEP_CONCURRENCY).await {
            for (i, reply) in result? {
                replies[i] = reply;
            }
        }
        Ok(replies)
    }
}

/// Pipelines a sign-out everywhere runs at once on a cluster.
const SWEEP_CONCURRENCY: usize = 16;

/// Runs `futures` with at most `limit` of them in flight; their outputs in order.
async fn join_bounded<F: Future>(
    futures: impl IntoIterator<Item = F>,
    limit: usize,
) -> Vec<F::Output> {
    let mut pending = futures.into_iter().enumerate();
    let mut running: Vec<(usize, Pin<Box<F>>)> = Vec::new();
    let mut done: Vec<Option<F::Output>> = Vec::new();
    loop {
        while running.len() < limit.max(1) {
            let Some((i, f)) = pending.next() else { break };
            done.push(None);
            running.push((i, Box::pin(f)));
        }
        if running.is_empty() {
            break;
        }
        std::future::poll_fn(|cx| {
            let mut progressed = false;
            running.retain_mut(|(i, f)| match f.as_mut().poll(cx) {
                Poll::Ready(out) => {
                    done[*i] = Some(out);
                    progressed = true;
                    false
                }
                Poll::Pending => true,
            });
            if progressed {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }
    done.into_iter()
        .map(|o| o.expect("every future ran"))
        .collect()
}

fn store_error(e: RedisError) -> StoreError {
    let kind = match e.kind() {
        RedisErrorKind::Timeout => super::StoreErrorKind::Timeout,
        _ if e.is_unavailable() => super::StoreErrorKind::Unavailable,
        _ => super::StoreErrorKind::Other,
    };
    StoreError::new(kind, e.to_string())
}

fn is_noscript(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if e.code() == "NOSCRIPT")
}

fn protocol(what: &'static str) -> StoreError {
    StoreError::other(format!("unexpected reply from the session script ({what})"))
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => std::str::from_utf8(bytes(other)?).ok()?.parse().ok(),
    }
}

fn text(v: &Value) -> Option<String> {
    bytes(v).and_then(|b| String::from_utf8(b.to_vec()).ok())
}

/// The fields of a record, in the order the scripts reply them.
const RECORD_FIELDS: [&str; 8] = ["v", "c", "a", "i", "x", "u", "d", "b"];

/// A record from the 8 fields `v c a i x u d b`.
fn record(fields: &[Value]) -> Result<SessionRecord, StoreError> {
    let [v, c, a, i, x, u, d, b] = fields else {
        return Err(protocol("record"));
    };
    let n = |v: &Value| number(v).ok_or_else(|| protocol("record field"));
    Ok(SessionRecord {
        version: n(v)?,
        created_micros: n(c)?,
        accessed_micros: n(a)?,
        idle_micros: n(i)?,
        expires_micros: n(x)?,
        user_id: text(u),
        data: bytes(d).map(<[u8]>::to_vec).unwrap_or_default(),
        binding: text(b),
    })
}

fn array(v: Value) -> Result<Vec<Value>, StoreError> {
    match v {
        Value::Array(items) => Ok(items),
        _ => Err(protocol("not an array")),
    }
}

/// SAVE's reply when the index entry must be written first.
const INDEX_FIRST: u64 = 3;

/// The outcome of SAVE / DELETE: `{0}`, `{1, fields..}`, `{2, ..}`, or SAVE's plain `2` for
/// written.
fn write_outcome(reply: Value) -> Result<WriteOutcome, StoreError> {
    match reply {
        Value::Int(2) => Ok(WriteOutcome::Written),
        Value::Array(items) => outcome(&items),
        _ => Err(protocol("outcome")),
    }
}

/// The outcome of a table reply of SAVE / DELETE: `{0}`, `{1, fields..}`, `{2, ..}`.
fn outcome(reply: &[Value]) -> Result<WriteOutcome, StoreError> {
    match reply.first().and_then(number) {
        Some(0) => Ok(WriteOutcome::Missing),
        Some(1) => Ok(WriteOutcome::Conflict(record(&reply[1..])?)),
        Some(2) => Ok(WriteOutcome::Written),
        _ => Err(protocol("outcome")),
    }
}

fn write_args(call: &mut Call, record: &SessionRecord, now: u64) {
    call.arg(record.created_micros)
        .arg(record.accessed_micros)
        .arg(record.idle_micros)
        .arg(record.expires_micros)
        .arg(if record.user_id.is_some() { "1" } else { "0" })
        .arg(record.user_id.as_deref().unwrap_or(""))
        .arg(record.data.as_slice())
        .arg(record.ttl_millis(now));
}

impl SessionStore for RedisStore {
    fn load<'a>(
        &'a self,
        key: &'a SessionKey,
        now: u64,
        refresh: bool,
    ) -> StoreFuture<'a, Option<SessionRecord>> {
        Box::pin(async move {
            // A plain HMGET: no script for the usual read (a script call costs Redis several
            // times the command it runs). Liveness is judged as the scripts judge it.
            let redis_key = self.redis_key(key);
            let fields: Value = self
                .conn
                .query(driver::cmd("HMGET").arg(&redis_key).arg(&RECORD_FIELDS))
                .await
                .map_err(store_error)?;
            let fields = array(fields)?;
            if fields.first().is_none_or(|v| *v == Value::Nil) {
                return Ok(None);
            }
            let found = record(&fields)?;
            if found.is_expired(now) {
                return Ok(None);
            }
            if !(refresh && found.needs_refresh(now)) {
                return Ok(Some(found));
            }
            // The idle refresh is due (at most once per quarter of the idle timeout): LOAD
            // checks again and refreshes atomically, and its reply is the record.
            let mut inv = LOAD.prepare_invoke();
            inv.key(redis_key).arg(now).arg("1");
            match self.conn.invoke_script(&inv).await.map_err(store_error)? {
                Value::Nil => Ok(None),
                reply => record(&array(reply)?).map(Some),
            }
        })
    }

    fn create<'a>(
        &'a self,
        key: &'a SessionKey,
        record: &'a SessionRecord,
        now: u64,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            if let Some(user) = &record.user_id {
                self.index_first(key, user, record.expires_micros, now)
                    .await?;
            }
            let mut call = Call::new(&CREATE, lua::CREATE, self.redis_key(key));
            call.arg(now);
            write_args(&mut call, record, now);
            call.arg(record.binding.as_deref().unwrap_or(""));
            let created = number(&self.write(&call).await?).ok_or_else(|| protocol("create"))?;
            Ok(created == 1)
        })
    }

    fn save<'a>(
        &'a self,
        key: &'a SessionKey,
        record: &'a SessionRecord,
        now: u64,
    ) -> StoreFuture<'a, WriteOutcome> {
        Box::pin(async move {
            let mut reply = self.save_once(key, record, now, false).await?;
            if matches!(&reply, Value::Array(r) if r.first().and_then(number) == Some(INDEX_FIRST))
            {
                // The save would make the session belong to its user (or move its deadline
                // later): index it first, then save, saying so.
                let user = record.user_id.as_deref().ok_or_else(|| protocol("save"))?;
                self.index_first(key, user, record.expires_micros, now)
                    .await?;
                reply = self.save_once(key, record, now, true).await?;
            }
            write_outcome(reply)
        })
    }

    fn delete<'a>(
        &'a self,
        key: &'a SessionKey,
        expected_version: Option<u64>,
        now: u64,
    ) -> StoreFuture<'a, WriteOutcome> {
        Box::pin(async move {
            let mut call = Call::new(&DELETE, lua::DELETE, self.redis_key(key));
            call.arg(now)
                .arg(expected_version.map(|v| v.to_string()).unwrap_or_default());
            write_outcome(self.write(&call).await?)
        })
    }

    fn touch<'a>(&'a self, key: &'a SessionKey, now: u64) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut inv = TOUCH.prepare_invoke();
            inv.key(self.redis_key(key)).arg(now);
            let touched: i64 = self.conn.invoke_script(&inv).await.map_err(store_error)?;
            Ok(touched == 1)
        })
    }

    fn delete_user_sessions<'a>(&'a self, user: &'a str, now: u64) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            let index = self.user_key(user);
            let keys = self.indexed(user, now).await?;
            if keys.is_empty() {
                return Ok(0);
            }
            let replies = self.delete_if_user(&keys, user, now).await?;
            // Unindex only the sessions removed here. An entry whose session is missing or
            // not the user's stays (until its deadline): it may belong to a sign-in whose
            // session write has not landed yet, and that session must stay indexed.
            let removed: Vec<&SessionKey> = keys
                .iter()
                .zip(&replies)
                .filter(|(_, r)| **r != 0)
                .map(|(k, _)| k)
                .collect();
            if !removed.is_empty() {
                let mut zrem = driver::cmd("ZREM");
                zrem.arg(&index);
                for key in removed {
                    zrem.arg(key.as_str());
                }
                let _: i64 = self.conn.query(&zrem).await.map_err(store_error)?;
            }
            Ok(replies.iter().filter(|r| **r == 1).count() as u64)
        })
    }

    /// Reads the index, then the fields `u c a i x` of every session it names (`HMGET`, one
    /// pipeline; on a cluster one per hash slot, at most 16 at a time): 2 round trips on a
    /// single server. Only the records decide: an entry whose session is missing, expired
    /// or someone else's is skipped, and left in the index (it may be a sign-in whose
    /// session write is on its way; entries are pruned by score on every index write).
    /// Reads only: no `WAIT`.
    fn list_user_sessions<'a>(
        &'a self,
        user: &'a str,
        now: u64,
    ) -> StoreFuture<'a, Vec<UserSession>> {
        Box::pin(async move {
            let keys = self.indexed(user, now).await?;
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let redis_keys: Vec<String> = keys.iter().map(|k| self.redis_key(k)).collect();
            let reads = self.pipeline_groups(&redis_keys).into_iter().map(|group| {
                let mut pipe = driver::pipe();
                for &i in &group {
                    pipe.cmd("HMGET")
                        .arg(&redis_keys[i])
                        .arg(&["u", "c", "a", "i", "x"]);
                }
                async move {
                    let replies: Vec<Vec<Option<String>>> =
                        self.conn.query_pipeline(&pipe).await.map_err(store_error)?;
                    if replies.len() != group.len() {
                        return Err(protocol("list"));
                    }
                    Ok(group.into_iter().zip(replies).collect::<Vec<_>>())
                }
            });
            let mut sessions = Vec::new();
            for result in join_bounded(reads, SWEEP_CONCURRENCY).await {
                for (i, fields) in result? {
                    let [u, c, a, idle, x] = fields.as_slice() else {
                        return Err(protocol("list"));
                    };
                    if u.as_deref() != Some(user) {
                        continue;
                    }
                    let n = |v: &Option<String>| {
                        v.as_deref()
                            .and_then(|t| t.parse().ok())
                            .ok_or_else(|| protocol("record field"))
                    };
                    let session = UserSession {
                        key: keys[i].clone(),
                        created_micros: n(c)?,
                        accessed_micros: n(a)?,
                        idle_micros: n(idle)?,
                        expires_micros: n(x)?,
                    };
                    if now < session.deadline() {
                        sessions.push(session);
                    }
                }
            }
            Ok(sessions)
        })
    }

    /// DELETE_IF_USER on the session's own key (one atomic script: the owner is checked
    /// where the record lives; with `WAIT` when waiting for replicas), then the session's
    /// index entry is removed if the script removed the session: 2 round trips.
    fn delete_user_session<'a>(
        &'a self,
        user: &'a str,
        key: &'a SessionKey,
        now: u64,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut call = Call::new(&DELETE_IF_USER, lua::DELETE_IF_USER, self.redis_key(key));
            call.arg(user).arg(now);
            let reply = number(&self.write(&call).await?).ok_or_else(|| protocol("delete"))?;
            if reply != 0 {
                // The session is gone (its key is never created again): its entry can go.
                // If this fails the entry stays until its deadline, which is harmless (an
                // entry may outlive its session, never the reverse): the session was ended.
                let mut zrem = driver::cmd("ZREM");
                zrem.arg(self.user_key(user)).arg(key.as_str());
                let _: Result<i64, _> = self.conn.query(&zrem).await;
            }
            Ok(reply == 1)
        })
    }
}

#[cfg(test)]
mod tests {
    //! The index design against a real Redis, with faults and interleavings the store cannot
    //! be driven into from outside: a failure between the index write and the session write,
    //! and a sign-in whose session write lands in the middle of a sign-out everywhere.
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::redis::RedisConfig;
    use rampart_test_support::RedisServer;

    const SEC: u64 = 1_000_000;
    const T0: u64 = 1_700_000_000 * SEC;

    fn store(server: &RedisServer) -> RedisStore {
        let conn = RedisConfig::from_parts("127.0.0.1", server.port())
            .connect_lazy()
            .unwrap();
        RedisStore::new(conn).with_prefix("t:")
    }

    fn key(n: u8) -> SessionKey {
        SessionKey::parse(&format!("{n:032x}")).unwrap()
    }

    /// SAVE's written reply is a plain integer, its other outcomes and DELETE's are tables;
    /// any other shape is a protocol error, never a panic.
    #[test]
    fn write_replies_decode() {
        assert_eq!(write_outcome(Value::Int(2)).unwrap(), WriteOutcome::Written);
        let table = |n| Value::Array(vec![Value::Int(n)]);
        assert_eq!(write_outcome(table(2)).unwrap(), WriteOutcome::Written);
        assert_eq!(write_outcome(table(0)).unwrap(), WriteOutcome::Missing);
        for bad in [
            Value::Int(0),
            Value::Int(3),
            Value::Nil,
            Value::Array(vec![]),
            table(7),
            Value::Array(vec![Value::Int(1)]),
        ] {
            assert!(write_outcome(bad.clone()).is_err(), "{bad:?}");
        }
    }

    fn record(user: Option<&str>) -> SessionRecord {
        SessionRecord {
            version: 0,
            created_micros: T0,
            accessed_micros: T0,
            idle_micros: 600 * SEC,
            expires_micros: T0 + 3600 * SEC,
            user_id: user.map(str::to_owned),
            data: b"{}".to_vec(),
            binding: None,
        }
    }

    /// The members of `user`'s index with their scores.
    fn index(server: &RedisServer, store: &RedisStore, user: &str) -> Vec<(String, u64)> {
        server.run(
            driver::cmd("ZRANGE")
                .arg(store.user_key(user))
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES"),
        )
    }

    /// A fault between the two calls of a sign-in (the index written, the session write
    /// never sent, as when the session's node dies in between): the sign-in fails, and no
    /// session of the user exists that "sign out everywhere" could miss. The entry left
    /// behind is harmless, and a later sign-in of the same session is ended as usual.
    #[tokio::test]
    async fn a_fault_between_the_index_write_and_the_session_write() {
        let server = RedisServer::start();
        let s = store(&server);
        let (created, saved) = (key(1), key(2));
        s.faults.fail_after_index.store(true, Ordering::SeqCst);
        // Through a create (a sign-in with cycle_id).
        assert!(
            s.create(&created, &record(Some("alice")), T0)
                .await
                .is_err()
        );
        assert_eq!(s.load(&created, T0, false).await.unwrap(), None);
        // Through a save (the user set on an anonymous session).
        assert!(s.create(&saved, &record(None), T0).await.unwrap());
        let mut r = s.load(&saved, T0, false).await.unwrap().unwrap();
        r.user_id = Some("alice".into());
        assert!(s.save(&saved, &r, T0).await.is_err());
        assert_eq!(
            s.load(&saved, T0, false).await.unwrap().unwrap().user_id,
            None
        );
        // Both entries were written; neither session is alice's.
        assert_eq!(index(&server, &s, "alice").len(), 2);
        assert_eq!(s.delete_user_sessions("alice", T0 + SEC).await.unwrap(), 0);
        assert!(s.load(&saved, T0 + SEC, false).await.unwrap().is_some());
        // Once the store works again, the same sign-in succeeds and is ended.
        s.faults.fail_after_index.store(false, Ordering::SeqCst);
        assert_eq!(
            s.save(&saved, &r, T0 + SEC).await.unwrap(),
            WriteOutcome::Written
        );
        assert_eq!(
            s.delete_user_sessions("alice", T0 + 2 * SEC).await.unwrap(),
            1
        );
        assert_eq!(s.load(&saved, T0 + 2 * SEC, false).await.unwrap(), None);
        // The entry of the session removed is gone; the one of the failed create stays until
        // its deadline (its session may still be on its way).
        let left: Vec<String> = index(&server, &s, "alice")
            .into_iter()
            .map(|(m, _)| m)
            .collect();
        assert_eq!(left, vec![created.to_string()]);
    }

    /// A sign-in racing "sign out everywhere", in both orders on the session's key: its
    /// session write landing before the sweep reaches the session is ended by the sweep; one
    /// landing after survives this sweep, still indexed, and the next sweep ends it.
    #[tokio::test]
    async fn a_sign_in_racing_sign_out_everywhere() {
        let server = RedisServer::start();
        let s = store(&server);
        let (before, after) = (key(3), key(4));
        for k in [&before, &after] {
            assert!(s.create(k, &record(None), T0).await.unwrap());
        }
        let mut signed_in = record(Some("bob"));
        signed_in.version = 1;
        // Both sign-ins have written their index entries (the first call of each).
        for k in [&before, &after] {
            s.index_first(k, "bob", signed_in.expires_micros, T0)
                .await
                .unwrap();
        }
        // `before` lands, then the sweep runs, then `after` lands (its second call).
        let reply = s.save_once(&before, &signed_in, T0, true).await.unwrap();
        assert_eq!(write_outcome(reply).unwrap(), WriteOutcome::Written);
        assert_eq!(s.delete_user_sessions("bob", T0 + SEC).await.unwrap(), 1);
        let reply = s
            .save_once(&after, &signed_in, T0 + SEC, true)
            .await
            .unwrap();
        assert_eq!(write_outcome(reply).unwrap(), WriteOutcome::Written);
        assert_eq!(s.load(&before, T0 + SEC, false).await.unwrap(), None);
        let survivor = s.load(&after, T0 + SEC, false).await.unwrap().unwrap();
        assert_eq!(survivor.user_id.as_deref(), Some("bob"));
        // Still indexed: the next sign-out everywhere ends it.
        assert_eq!(
            index(&server, &s, "bob"),
            vec![(after.to_string(), signed_in.expires_micros)]
        );
        assert_eq!(
            s.delete_user_sessions("bob", T0 + 2 * SEC).await.unwrap(),
            1
        );
        assert_eq!(s.load(&after, T0 + 2 * SEC, false).await.unwrap(), None);
        assert!(index(&server, &s, "bob").is_empty());
    }

    /// A save that moves the absolute deadline earlier writes no index entry and never lowers
    /// the entry's score; one that moves it later raises the score first.
    #[tokio::test]
    async fn index_scores_follow_the_latest_deadline() {
        let server = RedisServer::start();
        let s = store(&server);
        let k = key(5);
        assert!(s.create(&k, &record(Some("carol")), T0).await.unwrap());
        let x = T0 + 3600 * SEC;
        assert_eq!(index(&server, &s, "carol"), vec![(k.to_string(), x)]);
        server.run::<()>(driver::cmd("CONFIG").arg("RESETSTAT"));
        let mut r = s.load(&k, T0, false).await.unwrap().unwrap();
        r.data = b"{\"a\":1}".to_vec();
        r.expires_micros = x - 1000 * SEC;
        assert_eq!(s.save(&k, &r, T0).await.unwrap(), WriteOutcome::Written);
        let calls: String = server.run(driver::cmd("INFO").arg("commandstats"));
        assert!(!calls.contains("cmdstat_zadd"), "no index write: {calls}");
        assert_eq!(index(&server, &s, "carol"), vec![(k.to_string(), x)]);
        let mut r = s.load(&k, T0, false).await.unwrap().unwrap();
        r.expires_micros = x + 1000 * SEC;
        assert_eq!(s.save(&k, &r, T0).await.unwrap(), WriteOutcome::Written);
        assert_eq!(
            index(&server, &s, "carol"),
            vec![(k.to_string(), x + 1000 * SEC)]
        );
        // Past the first deadline, the session is still found.
        assert_eq!(
            s.delete_user_sessions("carol", x + SEC).await.unwrap(),
            0,
            "idle-expired"
        );
    }
}
