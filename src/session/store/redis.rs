//! [`RedisStore`]: sessions in Redis, shared by every instance (feature `redis`).

use std::fmt;
use std::sync::{Arc, LazyLock};

use super::{SessionRecord, SessionStore, StoreError, StoreFuture, WriteOutcome};
use crate::digest::sha256_hex128;
use crate::redis::driver::{self, Script, Value};
use crate::redis::{RedisConnection, RedisError, RedisErrorKind};
use crate::session::SessionKey;

const DEFAULT_PREFIX: &str = "rampart:session:";

/// The scripts, one Lua file each under `lua/`; each file opens with what it reads (KEYS,
/// ARGV) and what it replies and leaves. Record fields come back in the order
/// `v c a i x u d`.
pub(crate) mod lua {
    /// Reads a session, refreshing its idle deadline when due.
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
        let hex = sha256_hex128(&[b"tower-rampart/session/user/v1:", user.as_bytes()]);
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
                    .arg(lua::DELETE_IF_USER)
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
