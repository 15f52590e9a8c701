//! The session store's Lua scripts, run whole with plain `EVAL` on a real Redis: each script
//! file, given fixed arguments, must reply and leave exactly what [`RedisStore`] does for the
//! same operation. Each step runs twice, on two keys: once through the store (prefix `s:`)
//! and once as `EVAL <file>` (prefix `e:`); replies are compared with the store's results and
//! the hashes, TTLs and user indexes with each other.
#![cfg(all(feature = "session", feature = "redis"))]

use rampart_test_support as support;

use std::time::{Duration, Instant};

use support::RedisServer;
use tower_rampart::redis::driver::{self, Value};
use tower_rampart::session::{RedisStore, SessionKey, SessionRecord, SessionStore, WriteOutcome};

const LOAD: &str = include_str!("../src/session/store/lua/load.lua");
const CREATE: &str = include_str!("../src/session/store/lua/create.lua");
const SAVE: &str = include_str!("../src/session/store/lua/save.lua");
const DELETE: &str = include_str!("../src/session/store/lua/delete.lua");
const TOUCH: &str = include_str!("../src/session/store/lua/touch.lua");
const INDEX_ADD: &str = include_str!("../src/session/store/lua/index_add.lua");
const DELETE_IF_USER: &str = include_str!("../src/session/store/lua/delete_if_user.lua");

const SEC: u64 = 1_000_000;
/// A fixed "now": 2023-11-14T22:13:20Z, in microseconds.
const T0: u64 = 1_700_000_000 * SEC;
const USER: &str = "user-42";
/// The whole test must finish well within this.
const DEADLINE: Duration = Duration::from_secs(60);

struct Pair {
    server: RedisServer,
    store: RedisStore,
    key: SessionKey,
}

impl Pair {
    fn store_key(&self) -> String {
        format!("s:{{{}}}", self.key)
    }

    fn eval_key(&self) -> String {
        format!("e:{{{}}}", self.key)
    }

    fn eval(&self, script: &str, keys: &[&str], args: &[Vec<u8>]) -> Value {
        let mut cmd = driver::cmd("EVAL");
        cmd.arg(script).arg(keys.len());
        for key in keys {
            cmd.arg(*key);
        }
        for arg in args {
            cmd.arg(arg.as_slice());
        }
        self.server.run(&cmd)
    }

    fn hash(&self, key: &str) -> Vec<(String, Vec<u8>)> {
        let mut fields: Vec<(String, Vec<u8>)> = self.server.run(driver::cmd("HGETALL").arg(key));
        fields.sort();
        fields
    }

    fn pttl(&self, key: &str) -> i64 {
        self.server.run(driver::cmd("PTTL").arg(key))
    }

    /// The session hashes under both keys are equal (fields, values and TTL to the
    /// millisecond, allowing for the time between the two calls).
    fn assert_same_effect(&self, step: &str) {
        let (s, e) = (self.store_key(), self.eval_key());
        assert_eq!(self.hash(&s), self.hash(&e), "{step}: hash");
        let (ts, te) = (self.pttl(&s), self.pttl(&e));
        assert_eq!(ts.signum(), te.signum(), "{step}: TTL {ts} vs {te}");
        assert!((ts - te).abs() < 1000, "{step}: TTL {ts} vs {te}");
    }

    /// The user index each side left (found by prefix: the key name holds a hash of the user).
    fn index(&self, prefix: &str) -> (String, Vec<(String, u64)>, i64) {
        let keys: Vec<String> = self
            .server
            .run(driver::cmd("KEYS").arg(format!("{prefix}user:*")));
        assert_eq!(keys.len(), 1, "{prefix}: one user index");
        let members: Vec<(String, u64)> = self.server.run(
            driver::cmd("ZRANGE")
                .arg(&keys[0])
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES"),
        );
        let ttl = self.pttl(&keys[0]);
        (keys[0].clone(), members, ttl)
    }
}

fn arg(v: impl ToString) -> Vec<u8> {
    v.to_string().into_bytes()
}

/// ARGV of CREATE and SAVE after `now` (and the version): c a i x has_user user data ttl (then
/// CREATE takes the binding, SAVE indexed and the binding).
fn write_args(record: &SessionRecord, now: u64) -> Vec<Vec<u8>> {
    vec![
        arg(record.created_micros),
        arg(record.accessed_micros),
        arg(record.idle_micros),
        arg(record.expires_micros),
        arg(if record.user_id.is_some() { "1" } else { "0" }),
        arg(record.user_id.as_deref().unwrap_or("")),
        record.data.clone(),
        arg(record.ttl_millis(now)),
    ]
}

fn bulk(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::Nil => None,
        other => panic!("not a bulk string: {other:?}"),
    }
}

fn num(v: &Value) -> u64 {
    match v {
        Value::Int(n) => u64::try_from(*n).unwrap(),
        other => String::from_utf8(bulk(other).unwrap())
            .unwrap()
            .parse()
            .unwrap(),
    }
}

fn items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items,
        other => panic!("not an array: {other:?}"),
    }
}

/// A record from the fields `v c a i x u d b` of a script reply.
fn record_of(fields: &[Value]) -> SessionRecord {
    let [v, c, a, i, x, u, d, b] = fields else {
        panic!("8 fields expected, got {fields:?}");
    };
    SessionRecord {
        version: num(v),
        created_micros: num(c),
        accessed_micros: num(a),
        idle_micros: num(i),
        expires_micros: num(x),
        user_id: bulk(u).map(|b| String::from_utf8(b).unwrap()),
        data: bulk(d).unwrap_or_default(),
        binding: bulk(b).map(|b| String::from_utf8(b).unwrap()),
    }
}

fn outcome_of(reply: Value) -> WriteOutcome {
    if reply == Value::Int(2) {
        // SAVE's reply when written.
        return WriteOutcome::Written;
    }
    let reply = items(reply);
    match num(&reply[0]) {
        0 => WriteOutcome::Missing,
        1 => WriteOutcome::Conflict(record_of(&reply[1..])),
        2 => WriteOutcome::Written,
        n => panic!("unknown outcome {n}"),
    }
}

fn record(now: u64, user: Option<&str>, data: &[u8]) -> SessionRecord {
    SessionRecord {
        version: 0,
        created_micros: now,
        accessed_micros: now,
        idle_micros: 3600 * SEC,
        expires_micros: now + 24 * 3600 * SEC,
        user_id: user.map(str::to_owned),
        data: data.to_vec(),
        binding: None,
    }
}

#[tokio::test]
async fn each_script_run_with_eval_does_what_the_store_does() {
    tokio::time::timeout(DEADLINE, scripts_match_the_store())
        .await
        .expect("deadline");
}

async fn scripts_match_the_store() {
    let started = Instant::now();
    let server = RedisServer::start();
    let conn = server.config().connect_lazy().unwrap();
    let p = Pair {
        store: RedisStore::new(conn).with_prefix("s:"),
        key: SessionKey::parse("00112233445566778899aabbccddeeff").unwrap(),
        server,
    };
    let (sk, ek) = (p.store_key(), p.eval_key());
    let key = &p.key;

    // CREATE: a fresh session with a user (and a binding, opaque to the store); then the key
    // is taken.
    let mut rec = record(T0, Some(USER), b"\x01sealed\x00bytes");
    rec.binding = Some("binding of the create".into());
    assert!(p.store.create(key, &rec, T0).await.unwrap());
    let mut args = vec![arg(T0)];
    args.extend(write_args(&rec, T0));
    args.push(arg("binding of the create"));
    assert_eq!(p.eval(CREATE, &[&ek], &args), Value::Int(1));
    p.assert_same_effect("create");
    assert!(!p.store.create(key, &rec, T0).await.unwrap());
    assert_eq!(p.eval(CREATE, &[&ek], &args), Value::Int(0));
    p.assert_same_effect("create on a taken key");

    // INDEX_ADD: what the store's create left in the user index.
    let (s_index, s_members, s_ttl) = p.index("s:");
    let e_index = s_index.replacen("s:", "e:", 1);
    let reply = p.eval(
        INDEX_ADD,
        &[&e_index],
        &[arg(T0), arg(key), arg(rec.expires_micros)],
    );
    assert_eq!(reply, Value::Int(1));
    let (_, e_members, e_ttl) = p.index("e:");
    assert_eq!(s_members, e_members, "index_add: members");
    assert_eq!(s_members, vec![(key.to_string(), rec.expires_micros)]);
    assert!(
        (s_ttl - e_ttl).abs() < 1000,
        "index_add: TTL {s_ttl} vs {e_ttl}"
    );

    // LOAD without refresh, then with a refresh that is due (more than idle/4 later).
    let loaded = p.store.load(key, T0 + SEC, false).await.unwrap().unwrap();
    let reply = p.eval(LOAD, &[&ek], &[arg(T0 + SEC), arg("0")]);
    assert_eq!(record_of(&items(reply)), loaded, "load");
    p.assert_same_effect("load");
    let later = T0 + 1000 * SEC;
    let loaded = p.store.load(key, later, true).await.unwrap().unwrap();
    assert_eq!(loaded.accessed_micros, later);
    let reply = p.eval(LOAD, &[&ek], &[arg(later), arg("1")]);
    assert_eq!(record_of(&items(reply)), loaded, "load with refresh");
    p.assert_same_effect("load with refresh");

    // SAVE: a stale version is refused with the live record; the right one writes.
    let mut next = loaded.clone();
    next.accessed_micros = later;
    next.user_id = None;
    next.data = b"{\"a\":1}".to_vec();
    next.binding = Some("binding of the save".into());
    next.version = 7;
    let stale = p.store.save(key, &next, later).await.unwrap();
    let WriteOutcome::Conflict(live) = &stale else {
        panic!("a conflict: {stale:?}");
    };
    assert_eq!(live.binding.as_deref(), Some("binding of the create"));
    let mut args = vec![arg(later), arg(7)];
    args.extend(write_args(&next, later));
    args.extend([arg("0"), arg("binding of the save")]);
    assert_eq!(
        outcome_of(p.eval(SAVE, &[&ek], &args)),
        stale,
        "save conflict"
    );
    p.assert_same_effect("save conflict");
    next.version = 1;
    assert_eq!(
        p.store.save(key, &next, later).await.unwrap(),
        WriteOutcome::Written
    );
    // The store passes the new version's text as a 13th argument; without it the script
    // computes the same text: the two writes must leave the same records.
    let mut args = vec![arg(later), arg(1)];
    args.extend(write_args(&next, later));
    args.extend([arg("0"), arg("binding of the save")]);
    // Written: a plain integer, no table (nothing of the record is needed back).
    assert_eq!(p.eval(SAVE, &[&ek], &args), Value::Int(2));
    p.assert_same_effect("save");
    assert_eq!(p.hash(&sk).iter().find(|(f, _)| f == "v").unwrap().1, b"2");
    assert_eq!(
        p.hash(&sk).iter().find(|(f, _)| f == "b").unwrap().1,
        b"binding of the save"
    );

    // TOUCH: a live session, then a missing one.
    let touched_at = later + SEC;
    assert!(p.store.touch(key, touched_at).await.unwrap());
    assert_eq!(p.eval(TOUCH, &[&ek], &[arg(touched_at)]), Value::Int(1));
    p.assert_same_effect("touch");
    let none = SessionKey::parse("ffffffffffffffffffffffffffffffff").unwrap();
    assert!(!p.store.touch(&none, touched_at).await.unwrap());
    let reply = p.eval(TOUCH, &[&format!("e:{{{none}}}")], &[arg(touched_at)]);
    assert_eq!(reply, Value::Int(0));

    // DELETE: at a stale version (refused), then at the right one, then of a missing key.
    let stale = p.store.delete(key, Some(1), touched_at).await.unwrap();
    assert!(matches!(stale, WriteOutcome::Conflict(_)));
    let reply = p.eval(DELETE, &[&ek], &[arg(touched_at), arg(1)]);
    assert_eq!(outcome_of(reply), stale, "delete conflict");
    p.assert_same_effect("delete conflict");
    let deleted = p.store.delete(key, Some(2), touched_at).await.unwrap();
    assert_eq!(deleted, WriteOutcome::Written);
    let reply = p.eval(DELETE, &[&ek], &[arg(touched_at), arg(2)]);
    assert_eq!(outcome_of(reply), deleted, "delete");
    p.assert_same_effect("delete");
    let missing = p.store.delete(key, None, touched_at).await.unwrap();
    assert_eq!(missing, WriteOutcome::Missing);
    let reply = p.eval(DELETE, &[&ek], &[arg(touched_at), arg("")]);
    assert_eq!(outcome_of(reply), missing, "delete of a missing session");

    // LOAD of a missing session: nil.
    assert_eq!(p.store.load(key, touched_at, true).await.unwrap(), None);
    let reply = p.eval(LOAD, &[&ek], &[arg(touched_at), arg("1")]);
    assert_eq!(reply, Value::Nil);

    // DELETE_IF_USER: the store's sign-out-everywhere runs it on every indexed session.
    let rec = record(touched_at, Some(USER), b"x");
    assert!(p.store.create(key, &rec, touched_at).await.unwrap());
    let mut args = vec![arg(touched_at)];
    args.extend(write_args(&rec, touched_at));
    assert_eq!(p.eval(CREATE, &[&ek], &args), Value::Int(1));
    let other = p.eval(
        DELETE_IF_USER,
        &[&ek],
        &[arg("someone-else"), arg(touched_at)],
    );
    assert_eq!(other, Value::Int(0));
    p.assert_same_effect("delete_if_user of another user");
    assert_eq!(
        p.store
            .delete_user_sessions(USER, touched_at)
            .await
            .unwrap(),
        1
    );
    let reply = p.eval(DELETE_IF_USER, &[&ek], &[arg(USER), arg(touched_at)]);
    assert_eq!(reply, Value::Int(1));
    p.assert_same_effect("delete_if_user");
    assert!(p.hash(&ek).is_empty());
    assert!(started.elapsed() < DEADLINE);
}

#[test]
fn the_five_record_scripts_read_a_session_the_same_way() {
    // Each script is readable whole, so the lines that read a record are written in each;
    // they must stay the same. LOAD, DELETE and TOUCH read the whole record; CREATE and SAVE
    // read only the fields they decide on (`v a i x` first), and judge liveness the same way.
    let reads = "local r = redis.call('HMGET', KEYS[1], 'v', 'c', 'a', 'i', 'x', 'u', 'd', 'b')\n\
                 local now = ARGV[1] + 0\n\
                 local alive = r[1] and now < r[3] + r[4] and now < r[5] + 0\n";
    let decides = "local r = redis.call('HMGET', KEYS[1], 'v', 'a', 'i', 'x'";
    let alive = "local now = ARGV[1] + 0\n\
                 local alive = r[1] and now < r[2] + r[3] and now < r[4] + 0\n";
    for (name, script) in [
        ("load", LOAD),
        ("create", CREATE),
        ("save", SAVE),
        ("delete", DELETE),
        ("touch", TOUCH),
    ] {
        let same = if name == "create" || name == "save" {
            // CREATE reads inside an `if` (only when the key exists): compare unindented.
            let flat: Vec<&str> = script.lines().map(str::trim_start).collect();
            let flat = flat.join("\n");
            flat.contains(decides) && flat.contains(alive)
        } else {
            script.contains(reads)
        };
        assert!(same, "{name}.lua reads a record differently");
        assert!(
            script.starts_with("-- "),
            "{name}.lua opens with its comment"
        );
    }
    for script in [LOAD, TOUCH] {
        assert!(script.contains(
            "local function ttl(a)\n  return math.max(1, math.ceil((math.min(a + tonumber(r[4]), tonumber(r[5])) - now) / 1000))\nend\n"
        ));
    }
}

/// The index design in the scripts themselves: SAVE refuses (`{3}`, nothing written) a
/// write that gives the session a user or a later absolute deadline until the caller says
/// it wrote the index entry; INDEX_ADD never lowers a score; DELETE_IF_USER tells a live
/// session (1) from an expired leftover (2). The store does the same (it ends up with the
/// same hash and index as the scripts run by hand).
#[tokio::test]
async fn save_asks_for_the_index_entry_first() {
    tokio::time::timeout(DEADLINE, index_first())
        .await
        .expect("deadline");
}

async fn index_first() {
    let server = RedisServer::start();
    let conn = server.config().connect_lazy().unwrap();
    let p = Pair {
        store: RedisStore::new(conn).with_prefix("s:"),
        key: SessionKey::parse("0123456789abcdef0123456789abcdef").unwrap(),
        server,
    };
    let (ek, key) = (p.eval_key(), &p.key);
    let anonymous = record(T0, None, b"x");
    assert!(p.store.create(key, &anonymous, T0).await.unwrap());
    let mut args = vec![arg(T0)];
    args.extend(write_args(&anonymous, T0));
    assert_eq!(p.eval(CREATE, &[&ek], &args), Value::Int(1));

    // Giving it a user: refused until indexed, then written.
    let mut next = record(T0, Some(USER), b"y");
    next.version = 1;
    let save_args = |r: &SessionRecord, indexed: Option<&str>| {
        let mut a = vec![arg(T0), arg(r.version)];
        a.extend(write_args(r, T0));
        a.extend(indexed.map(arg));
        a
    };
    for indexed in [None, Some("0")] {
        let reply = items(p.eval(SAVE, &[&ek], &save_args(&next, indexed)));
        assert_eq!(reply, vec![Value::Int(3)], "index first");
    }
    let reply = p.eval(SAVE, &[&ek], &save_args(&next, Some("1")));
    assert_eq!(reply, Value::Int(2));
    assert_eq!(
        p.store.save(key, &next, T0).await.unwrap(),
        WriteOutcome::Written
    );
    p.assert_same_effect("save with a new user");
    let (s_index, s_members, _) = p.index("s:");
    assert_eq!(s_members, vec![(key.to_string(), next.expires_micros)]);

    // The same user and an earlier deadline: written at once; a later one: index first.
    let mut earlier = next.clone();
    earlier.version = 2;
    earlier.expires_micros -= 1000 * SEC;
    let reply = p.eval(SAVE, &[&ek], &save_args(&earlier, None));
    assert_eq!(reply, Value::Int(2));
    let mut later = earlier.clone();
    later.version = 3;
    later.expires_micros += 5000 * SEC;
    let reply = items(p.eval(SAVE, &[&ek], &save_args(&later, None)));
    assert_eq!(reply, vec![Value::Int(3)]);

    // INDEX_ADD: a lower score leaves the entry as it is; a higher one raises it.
    let e_index = s_index.replacen("s:", "e:", 1);
    for (score, expected) in [
        (next.expires_micros, next.expires_micros),
        (earlier.expires_micros, next.expires_micros),
        (later.expires_micros, later.expires_micros),
    ] {
        p.eval(INDEX_ADD, &[&e_index], &[arg(T0), arg(key), arg(score)]);
        let (_, members, _) = p.index("e:");
        assert_eq!(members, vec![(key.to_string(), expected)], "score {score}");
    }

    // DELETE_IF_USER on a session of the user past its idle deadline: removed, reply 2.
    let idle_gone = T0 + 3601 * SEC;
    let reply = p.eval(DELETE_IF_USER, &[&ek], &[arg(USER), arg(idle_gone)]);
    assert_eq!(reply, Value::Int(2));
    assert!(p.hash(&ek).is_empty());
}
