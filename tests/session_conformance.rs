//! The session store conformance suite (`tower_rampart::session::store::testing`, feature
//! `testing`), run against `MemoryStore` and `RedisStore` (plain and TLS, real
//! `redis-server` processes): first the store contract through the `SessionStore` trait,
//! then the layer's guarantees on top of each store. One test per check and store, each on a
//! fresh store.
#![cfg(all(feature = "session", feature = "redis", feature = "testing"))]

use rampart_test_support as support;

use std::sync::Arc;
use std::time::Duration;

use tower_rampart::redis::RedisConfig;
use tower_rampart::session::{MemoryStore, RedisStore, SessionStore};

/// Each check finishes well within this, even on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(120);

/// A store to run the suite against, with whatever keeps it alive (a server, a prefix).
struct Backend {
    store: Arc<dyn SessionStore>,
    _keep: Box<dyn std::any::Any + Send>,
}

fn memory() -> Backend {
    Backend {
        store: Arc::new(MemoryStore::new()),
        _keep: Box::new(()),
    }
}

fn redis_backend(
    config: RedisConfig,
    prefix: String,
    keep: Box<dyn std::any::Any + Send>,
) -> Backend {
    let conn = config.connect_lazy().expect("redis connection");
    Backend {
        store: Arc::new(RedisStore::new(conn).with_prefix(format!("{prefix}session:"))),
        _keep: keep,
    }
}

fn redis() -> Backend {
    let test = support::shared();
    let (config, prefix) = (test.config.clone(), test.prefix.clone());
    redis_backend(config, prefix, Box::new(test))
}

fn redis_tls() -> Backend {
    let server = support::RedisServer::start_tls();
    let config = server.config();
    redis_backend(config, support::unique_prefix(), Box::new(server))
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::check(super::memory(), tower_rampart::session::store::testing::$case).await;
                }
            )*
        }
        mod redis_plain {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::check(super::redis(), tower_rampart::session::store::testing::$case).await;
                }
            )*
        }
        mod redis_tls {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::check(super::redis_tls(), tower_rampart::session::store::testing::$case).await;
                }
            )*
        }
    };
}

/// Runs one check on `backend`'s store, within the deadline.
async fn check<F, Fut>(backend: Backend, case: F)
where
    F: FnOnce(Arc<dyn SessionStore>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    tokio::time::timeout(DEADLINE, case(backend.store.clone()))
        .await
        .expect("the check finishes in time");
}

suite!(
    store_create_is_only_if_absent,
    store_save_is_compare_and_set_and_never_creates,
    store_delete_unconditional_and_conditional,
    store_idle_and_absolute_expiry,
    store_idle_refresh_is_throttled,
    store_touch,
    store_user_index,
    store_user_index_follows_saves,
    sign_ins_racing_sign_out_everywhere,
    store_list_user_sessions,
    store_delete_user_session,
    concurrent_requests_changing_different_keys_lose_nothing,
    same_key_later_save_wins_other_keys_merge,
    logout_racing_saves_never_comes_back,
    round_trips_per_request,
    idle_and_absolute_expiry_through_the_layer,
    cycle_id_keeps_data_and_invalidates_the_old_id,
    cycle_id_merges_a_concurrent_write_and_loses_to_a_concurrent_logout,
    key_rotation,
    records_changed_behind_the_layer_are_no_session,
    bad_cookies_cost_no_store_call_and_are_not_accepted,
    server_error_responses_are_not_saved,
    sign_out_everywhere,
    user_sessions_list_and_end_one,
    user_session_handles_across_key_rotation,
);

/// `run_all` runs every check in one go on one store (what a custom store's test calls).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_on_one_memory_store() {
    let backend = memory();
    tokio::time::timeout(
        DEADLINE,
        tower_rampart::session::store::testing::run_all(backend.store.clone()),
    )
    .await
    .expect("the suite finishes in time");
}

/// The methods of a test store that only forward to the `MemoryStore` it wraps (`self.0`):
/// each test store writes out the one it breaks and lists the rest here.
macro_rules! delegate_to_inner {
    ($($method:ident),*) => { $(delegate_to_inner!(@ $method);)* };
    (@ load) => {
        fn load<'a>(
            &'a self,
            key: &'a SessionKey,
            now: u64,
            refresh: bool,
        ) -> StoreFuture<'a, Option<SessionRecord>> {
            self.0.load(key, now, refresh)
        }
    };
    (@ create) => {
        fn create<'a>(
            &'a self,
            key: &'a SessionKey,
            record: &'a SessionRecord,
            now: u64,
        ) -> StoreFuture<'a, bool> {
            self.0.create(key, record, now)
        }
    };
    (@ save) => {
        fn save<'a>(
            &'a self,
            key: &'a SessionKey,
            record: &'a SessionRecord,
            now: u64,
        ) -> StoreFuture<'a, WriteOutcome> {
            self.0.save(key, record, now)
        }
    };
    (@ delete) => {
        fn delete<'a>(
            &'a self,
            key: &'a SessionKey,
            expected_version: Option<u64>,
            now: u64,
        ) -> StoreFuture<'a, WriteOutcome> {
            self.0.delete(key, expected_version, now)
        }
    };
    (@ touch) => {
        fn touch<'a>(&'a self, key: &'a SessionKey, now: u64) -> StoreFuture<'a, bool> {
            self.0.touch(key, now)
        }
    };
    (@ delete_user_sessions) => {
        fn delete_user_sessions<'a>(&'a self, user: &'a str, now: u64) -> StoreFuture<'a, u64> {
            self.0.delete_user_sessions(user, now)
        }
    };
    (@ list_user_sessions) => {
        fn list_user_sessions<'a>(
            &'a self,
            user: &'a str,
            now: u64,
        ) -> StoreFuture<'a, Vec<UserSession>> {
            self.0.list_user_sessions(user, now)
        }
    };
}

/// A store that breaks the contract (its `create` overwrites a live session) fails the suite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_overwrites_on_create_fails() {
    use tower_rampart::session::{SessionKey, SessionRecord, StoreFuture, WriteOutcome};

    #[derive(Debug, Default)]
    struct Overwriting(MemoryStore);

    impl SessionStore for Overwriting {
        delegate_to_inner!(load, save, delete, touch, delete_user_sessions);
        fn create<'a>(
            &'a self,
            key: &'a SessionKey,
            record: &'a SessionRecord,
            now: u64,
        ) -> StoreFuture<'a, bool> {
            Box::pin(async move {
                self.0.delete(key, None, now).await?;
                self.0.create(key, record, now).await
            })
        }
    }

    let store: Arc<dyn SessionStore> = Arc::new(Overwriting::default());
    let run = tokio::spawn(tower_rampart::session::store::testing::run_all(store));
    let result = tokio::time::timeout(DEADLINE, run)
        .await
        .expect("the suite finishes in time");
    assert!(result.expect_err("the suite must fail").is_panic());
}

/// A store written before the per-user listing (only the required methods) still compiles,
/// and answers the new calls `Unsupported`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_the_per_user_methods_answers_unsupported() {
    use tower_rampart::session::{
        SessionKey, SessionRecord, StoreErrorKind, StoreFuture, WriteOutcome,
    };

    #[derive(Debug, Default)]
    struct Minimal(MemoryStore);

    impl SessionStore for Minimal {
        delegate_to_inner!(load, create, save, delete, touch);
    }

    let store = Minimal::default();
    let key = SessionKey::parse("0123456789abcdef0123456789abcdef").unwrap();
    let err = store.list_user_sessions("alice", 1).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unsupported);
    assert!(err.to_string().contains("list_user_sessions"), "{err}");
    let err = store
        .delete_user_session("alice", &key, 1)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unsupported);
    // Through an `Arc<dyn SessionStore>` as the layer holds it.
    let shared: Arc<dyn SessionStore> = Arc::new(store);
    let err = shared.list_user_sessions("alice", 1).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unsupported);
}

/// A store that ends a session without checking its owner fails the suite's check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_ends_another_users_session_fails() {
    use tower_rampart::session::{
        SessionKey, SessionRecord, StoreFuture, UserSession, WriteOutcome,
    };

    #[derive(Debug, Default)]
    struct Careless(MemoryStore);

    impl SessionStore for Careless {
        delegate_to_inner!(
            load,
            create,
            save,
            delete,
            touch,
            delete_user_sessions,
            list_user_sessions
        );
        // Deletes whatever live session the key names, whoever owns it.
        fn delete_user_session<'a>(
            &'a self,
            _user: &'a str,
            key: &'a SessionKey,
            now: u64,
        ) -> StoreFuture<'a, bool> {
            Box::pin(
                async move { Ok(self.0.delete(key, None, now).await? == WriteOutcome::Written) },
            )
        }
    }

    let store: Arc<dyn SessionStore> = Arc::new(Careless::default());
    let run =
        tokio::spawn(tower_rampart::session::store::testing::store_delete_user_session(store));
    let result = tokio::time::timeout(DEADLINE, run)
        .await
        .expect("the check finishes in time");
    assert!(result.expect_err("the check must fail").is_panic());
}
