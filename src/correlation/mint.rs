//! Minting UUIDv7 correlation ids without a system call per id.
//!
//! `uuid::Uuid::now_v7` asks the OS for random bits on every id (a `getrandom` system call,
//! about 0.3 µs: the largest single cost of the whole layer stack under load). Here the random
//! bits come from a per-thread pool of the OS's random bytes, refilled one system call per
//! [`POOL_IDS`] ids, and the ids are laid out as RFC 9562 §5.7 and §6.2 (method 1) describe:
//!
//! | bits | field |
//! |---|---|
//! | 48 | Unix time, milliseconds |
//! | 4 | version `7` |
//! | 12 | a counter, restarted at 0 each millisecond (ids sort by minting order, process-wide) |
//! | 2 | variant `10` |
//! | 62 | random |
//!
//! More than 4096 ids in one millisecond carry into the time field (the id's time runs up to
//! a few milliseconds ahead), and a clock stepping back never makes an id sort before an
//! earlier one: the stamp only grows.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Ids per refill of a thread's pool (8 random bytes each).
const POOL_IDS: usize = 256;

/// The last stamp handed out: `unix_ms << 12 | counter`.
static LAST: AtomicU64 = AtomicU64::new(0);

/// A fallback's state, only used if the OS's random source fails.
static FALLBACK: AtomicU64 = AtomicU64::new(0);

struct Pool {
    bytes: [u8; POOL_IDS * 8],
    used: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = const {
        RefCell::new(Pool {
            bytes: [0; POOL_IDS * 8],
            used: POOL_IDS * 8,
        })
    };
}

/// A fresh UUIDv7 (see the module docs).
pub(super) fn uuid_v7() -> uuid::Uuid {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        & ((1 << 48) - 1);
    from_parts(next_stamp(&LAST, ms), random_u64())
}

/// The id of stamp `unix_ms << 12 | counter` with random bits `random` (the low 62 are used).
fn from_parts(stamp: u64, random: u64) -> uuid::Uuid {
    let high = ((stamp >> 12) << 16) | 0x7000 | (stamp & 0xfff);
    let low = (random >> 2) | (0b10 << 62);
    uuid::Uuid::from_u64_pair(high, low)
}

/// The next stamp: this millisecond's counter at 0, or one past the last stamp (several ids
/// in one millisecond, or a clock that stepped back).
fn next_stamp(last_stamp: &AtomicU64, ms: u64) -> u64 {
    let floor = ms << 12;
    let mut last = last_stamp.load(Ordering::Relaxed);
    loop {
        let next = floor.max(last.wrapping_add(1));
        match last_stamp.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// Eight random bytes from this thread's pool, refilled from the OS when used up.
fn random_u64() -> u64 {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.used + 8 > pool.bytes.len() {
            if getrandom::fill(&mut pool.bytes).is_err() {
                return fallback();
            }
            pool.used = 0;
        }
        let at = pool.used;
        pool.used += 8;
        let mut word = [0; 8];
        word.copy_from_slice(&pool.bytes[at..at + 8]);
        u64::from_ne_bytes(word)
    })
}

/// Bits that differ from id to id when the OS cannot give random ones (the stamp keeps the ids
/// unique in any case): a SplitMix64 step over a process-wide sequence started from the clock.
fn fallback() -> u64 {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos().into());
    let mut z = FALLBACK
        .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
        .wrapping_add(seed);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn the_layout_is_rfc_9562_version_7() {
        let id = from_parts((0x0123_4567_89ab << 12) | 0xcde, u64::MAX);
        assert_eq!(id.get_version_num(), 7);
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        assert_eq!(
            id.hyphenated().to_string(),
            "01234567-89ab-7cde-bfff-ffffffffffff"
        );
        let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
        assert_eq!(secs * 1000 + u64::from(nanos) / 1_000_000, 0x0123_4567_89ab);
    }

    #[test]
    fn ids_carry_the_time_and_sort_in_minting_order() {
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let ids: Vec<uuid::Uuid> = (0..20_000).map(|_| uuid_v7()).collect();
        let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        for id in &ids {
            assert_eq!(id.get_version_num(), 7);
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        }
        // Strictly increasing, as bytes and as the text logs sort.
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1], "{} then {}", pair[0], pair[1]);
            assert!(pair[0].hyphenated().to_string() < pair[1].hyphenated().to_string());
        }
        let ms = |id: &uuid::Uuid| {
            let (s, n) = id.get_timestamp().unwrap().to_unix();
            s * 1000 + u64::from(n) / 1_000_000
        };
        // Never behind the clock; ahead by at most the ids minted process-wide over 4096 a
        // millisecond (these 20 000 and the other tests' 40 000 when run in one process).
        assert!(ms(&ids[0]) >= u64::try_from(before.as_millis()).unwrap());
        assert!(ms(&ids[ids.len() - 1]) <= u64::try_from(after.as_millis()).unwrap() + 16);
        // The random bits differ from id to id.
        let randoms: HashSet<u64> = ids.iter().map(|id| id.as_u64_pair().1).collect();
        assert_eq!(randoms.len(), ids.len());
    }

    #[test]
    fn ids_minted_on_many_threads_are_unique() {
        let ids: Vec<Vec<uuid::Uuid>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..10_000).map(|_| uuid_v7()).collect::<Vec<_>>()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let all: HashSet<uuid::Uuid> = ids.iter().flatten().copied().collect();
        assert_eq!(all.len(), 40_000);
        // Each thread's ids sort in its minting order (the stamp is process-wide).
        for list in &ids {
            assert!(list.windows(2).all(|p| p[0] < p[1]));
        }
    }

    #[test]
    fn the_stamp_never_goes_back() {
        // A stamp of its own: the process-wide one must keep the real time for other tests.
        let last = AtomicU64::new(0);
        let a = next_stamp(&last, 5_000_000);
        assert_eq!(a, 5_000_000 << 12);
        // The same millisecond: the counter; a clock stepping back: still after.
        assert_eq!(next_stamp(&last, 5_000_000), a + 1);
        assert_eq!(next_stamp(&last, 4_000_000), a + 2);
        // A later millisecond: its counter at 0.
        assert_eq!(next_stamp(&last, 5_000_001), 5_000_001 << 12);
        // The fallback bits differ from call to call.
        assert_ne!(fallback(), fallback());
    }
}
