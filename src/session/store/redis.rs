//! [`RedisStore`]: sessions in Redis, shared by every instance (feature `redis`).

use std::fmt;
use std::sync::{Arc, LazyLock};

use sha2::{Digest, Sha256};

use super::{SessionRecord, SessionStore, StoreError, StoreFuture, WriteOutcome};
use crate::redis::driver::{self, Script, Value};
use crate::redis::{RedisConnection, RedisError, RedisErrorKind};
use crate::session::SessionKey;

const DEFAULT_PREFIX: &str = "rampart:session:";

/// Fields of a session hash, in the order every script returns them.
const FIELDS: &str = "'v', 'c', 'a', 'i', 'x', 'u', 'd'";

/// Shared Lua: `r` = the record's fields, `now` = ARGV[now_index] as a number; `alive` is
/// whether the record exists and has not expired at `now`.
fn script(now_arg: usize, body: &str) -> Script {
    Script::new(&format!(
        "local r = redis.call('HMGET', KEYS[1], {FIELDS})\n\
         local now = tonumber(ARGV[{now_arg}])\n\
         local alive = r[1] and now < math.min(tonumber(r[3]) + tonumber(r[4]), tonumber(r[5]))\n\
         local function ttl(a)\n\
           return math.max(1, math.ceil((math.min(a + tonumber(r[4]), tonumber(r[5])) - now) / 1000))\n\
         end\n\
         {body}"
    ))
}

/// ARGV: now, refresh ('1'/'0'). Returns the fields, or nil.
static LOAD: LazyLock<Script> = LazyLock::new(|| {
    script(
        1,
        "if not alive then return false end\n\
         if ARGV[2] == '1' and now - tonumber(r[3]) > math.floor(tonumber(r[4]) / 4) then\n\
           redis.call('HSET', KEYS[1], 'a', ARGV[1])\n\
           redis.call('PEXPIRE', KEYS[1], ttl(now))\n\
           r[3] = ARGV[1]\n\
         end\n\
         return r",
    )
});

/// ARGV: now, c, a, i, x, has_user, user, data, ttl_ms. Returns 1 (created) or 0 (taken).
static CREATE: LazyLock<Script> = LazyLock::new(|| {
    script(
        1,
        "if alive then return 0 end\n\
         redis.call('DEL', KEYS[1])\n\
         redis.call('HSET', KEYS[1], 'v', '1', 'c', ARGV[2], 'a', ARGV[3], 'i', ARGV[4], 'x', ARGV[5], 'd', ARGV[8])\n\
         if ARGV[6] == '1' then redis.call('HSET', KEYS[1], 'u', ARGV[7]) end\n\
         redis.call('PEXPIRE', KEYS[1], ARGV[9])\n\
         return 1",
    )
});

/// ARGV: now, expected version, c, a, i, x, has_user, user, data, ttl_ms.
/// Returns {0} missing, {1, fields...} conflict, {2, old user, old x} written.
static SAVE: LazyLock<Script> = LazyLock::new(|| {
    script(
        1,
        "if not alive then return {0} end\n\
         if r[1] ~= ARGV[2] then return {1, r[1], r[2], r[3], r[4], r[5], r[6], r[7]} end\n\
         redis.call('HSET', KEYS[1], 'v', tostring(tonumber(r[1]) + 1), 'c', ARGV[3], 'a', ARGV[4], 'i', ARGV[5], 'x', ARGV[6], 'd', ARGV[9])\n\
         if ARGV[7] == '1' then redis.call('HSET', KEYS[1], 'u', ARGV[8]) else redis.call('HDEL', KEYS[1], 'u') end\n\
         redis.call('PEXPIRE', KEYS[1], ARGV[10])\n\
         return {2, r[6], r[5]}",
    )
});

/// ARGV: now, expected version or ''. Returns {0} missing, {1, fields...} conflict, {2} deleted.
static DELETE: LazyLock<Script> = LazyLock::new(|| {
    script(
        1,
        "if not alive then redis.call('DEL', KEYS[1]) return {0} end\n\
         if ARGV[2] ~= '' and r[1] ~= ARGV[2] then return {1, r[1], r[2], r[3], r[4], r[5], r[6], r[7]} end\n\
         redis.call('DEL', KEYS[1])\n\
         return {2}",
    )
});

/// ARGV: now. Returns 1 (touched) or 0.
static TOUCH: LazyLock<Script> = LazyLock::new(|| {
    script(
        1,
        "if not alive then return 0 end\n\
         redis.call('HSET', KEYS[1], 'a', ARGV[1])\n\
         redis.call('PEXPIRE', KEYS[1], ttl(now))\n\
         return 1",
    )
});

/// KEYS[1] = a user's index (sorted set of session keys scored by absolute deadline).
/// ARGV: now, session key, deadline. Drops entries past their deadline, adds this one, and
/// keeps the index alive as long as its longest-lived session.
static INDEX_ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])\n\
         redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])\n\
         local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')\n\
         redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil((tonumber(top[2]) - tonumber(ARGV[1])) / 1000)))\n\
         return 1",
    )
});

/// KEYS[1] = a session; ARGV: user, now. Deletes it if it is alive and belongs to the user.
const DELETE_IF_USER: &str = "local r = redis.call('HMGET', KEYS[1], 'u', 'a', 'i', 'x')\n\
     if r[1] ~= ARGV[1] then return 0 end\n\
     local now = tonumber(ARGV[2])\n\
     local alive = now < math.min(tonumber(r[2]) + tonumber(r[3]), tonumber(r[4]))\n\
     redis.call('DEL', KEYS[1])\n\
     if alive then return 1 else return 0 end";

/// Sessions in Redis: every instance behind the load balancer sees the same sessions.
///
/// Each operation is one Lua script on one key (one round trip, atomic); expiry is enforced
/// both by the scripts (against the layer's clock) and by a Redis TTL set to the earlier of
/// the idle and absolute deadlines, so abandoned sessions disappear by themselves.
///
/// Layout, for the default prefix `rampart:session:`:
///
/// - `rampart:session:{<session key>}`: a hash with the version `v`, times `c`, `a`, `x`
///   (microseconds) and idle timeout `i`, the user id `u` and the data `d` (encrypted by
///   the layer unless configured otherwise). The key is a hash of the session id, so a dump
///   holds no usable cookie.
/// - `rampart:session:user:{<hash of the user id>}`: the user's sessions (a sorted set by
///   absolute deadline), for [`delete_user_sessions`](SessionStore::delete_user_sessions).
///
/// Every script touches one key, in braces (a hash tag), so it runs unchanged on a Redis
/// Cluster. A prefix must not contain `{` or `}`.
///
/// Round trips: load 1 (idle refresh included), create 1, save 1, delete 1; a save or create
/// that changes the session's user or absolute deadline adds 1 to update the user's index.
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
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("conn", &self.conn)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisStore {
    /// A store using `conn`, with the key prefix `rampart:session:`.
    pub fn new(conn: RedisConnection) -> Self {
        Self {
            conn,
            prefix: DEFAULT_PREFIX.into(),
        }
    }

    /// Uses `prefix` for every key (e.g. `"myapp:session:"`); it must not contain `{` or `}`.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into().into();
        self
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
        let digest = Sha256::new()
            .chain_update(b"tower-rampart/session/user/v1:")
            .chain_update(user.as_bytes())
            .finalize();
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("{}user:{{{hex}}}", self.prefix)
    }

    async fn index(
        &self,
        key: &SessionKey,
        record: &SessionRecord,
        now: u64,
    ) -> Result<(), StoreError> {
        let Some(user) = &record.user_id else {
            return Ok(());
        };
        let mut inv = INDEX_ADD.prepare_invoke();
        inv.key(self.user_key(user))
            .arg(now)
            .arg(key.as_str())
            .arg(record.expires_micros);
        let _: i64 = self.conn.invoke_script(&inv).await.map_err(store_error)?;
        Ok(())
    }
}

fn store_error(e: RedisError) -> StoreError {
    let kind = match e.kind() {
        RedisErrorKind::Timeout => super::StoreErrorKind::Timeout,
        _ if e.is_unavailable() => super::StoreErrorKind::Unavailable,
        _ => super::StoreErrorKind::Other,
    };
    StoreError::new(kind, e.to_string())
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

/// A record from the 7 fields `v c a i x u d`.
fn record(fields: &[Value]) -> Result<SessionRecord, StoreError> {
    let [v, c, a, i, x, u, d] = fields else {
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
    })
}

fn array(v: Value) -> Result<Vec<Value>, StoreError> {
    match v {
        Value::Array(items) => Ok(items),
        _ => Err(protocol("not an array")),
    }
}

/// The outcome of SAVE / DELETE: `{0}`, `{1, fields..}`, `{2, ..}`.
fn outcome(reply: &[Value]) -> Result<WriteOutcome, StoreError> {
    match reply.first().and_then(number) {
        Some(0) => Ok(WriteOutcome::Missing),
        Some(1) => Ok(WriteOutcome::Conflict(record(&reply[1..])?)),
        Some(2) => Ok(WriteOutcome::Written),
        _ => Err(protocol("outcome")),
    }
}

fn write_args(inv: &mut driver::ScriptInvocation<'_>, record: &SessionRecord, now: u64) {
    inv.arg(record.created_micros)
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
            let mut inv = LOAD.prepare_invoke();
            inv.key(self.redis_key(key))
                .arg(now)
                .arg(if refresh { "1" } else { "0" });
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
            let mut inv = CREATE.prepare_invoke();
            inv.key(self.redis_key(key)).arg(now);
            write_args(&mut inv, record, now);
            let created: i64 = self.conn.invoke_script(&inv).await.map_err(store_error)?;
            if created == 1 {
                self.index(key, record, now).await?;
            }
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
            let mut inv = SAVE.prepare_invoke();
            inv.key(self.redis_key(key)).arg(now).arg(record.version);
            write_args(&mut inv, record, now);
            let reply = array(self.conn.invoke_script(&inv).await.map_err(store_error)?)?;
            let result = outcome(&reply)?;
            if result == WriteOutcome::Written {
                let old_user = reply.get(1).and_then(text);
                let old_expires = reply.get(2).and_then(number);
                if record.user_id != old_user || Some(record.expires_micros) != old_expires {
                    self.index(key, record, now).await?;
                }
            }
            Ok(result)
        })
    }

    fn delete<'a>(
        &'a self,
        key: &'a SessionKey,
        expected_version: Option<u64>,
        now: u64,
    ) -> StoreFuture<'a, WriteOutcome> {
        Box::pin(async move {
            let mut inv = DELETE.prepare_invoke();
            inv.key(self.redis_key(key))
                .arg(now)
                .arg(expected_version.map(|v| v.to_string()).unwrap_or_default());
            outcome(&array(
                self.conn.invoke_script(&inv).await.map_err(store_error)?,
            )?)
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
            let members: Vec<String> = self
                .conn
                .query(
                    driver::cmd("ZRANGEBYSCORE")
                        .arg(&index)
                        .arg(format!("({now}"))
                        .arg("+inf"),
                )
                .await
                .map_err(store_error)?;
            let keys: Vec<SessionKey> = members
                .iter()
                .filter_map(|m| SessionKey::parse(m))
                .collect();
            if keys.is_empty() {
                return Ok(0);
            }
            // Sessions live in other hash slots than the index: one script per session, all
            // in one pipeline (one round trip), each checking that the session still belongs
            // to this user.
            let mut pipe = driver::pipe();
            for key in &keys {
                pipe.cmd("EVAL")
                    .arg(DELETE_IF_USER)
                    .arg(1)
                    .arg(self.redis_key(key))
                    .arg(user)
                    .arg(now);
            }
            let deleted: Vec<u64> = self.conn.query_pipeline(&pipe).await.map_err(store_error)?;
            // Only the members seen: a session added meanwhile stays indexed.
            let mut zrem = driver::cmd("ZREM");
            zrem.arg(&index);
            for key in &keys {
                zrem.arg(key.as_str());
            }
            let _: i64 = self.conn.query(&zrem).await.map_err(store_error)?;
            Ok(deleted.iter().sum())
        })
    }
}
