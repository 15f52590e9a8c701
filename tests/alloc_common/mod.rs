//! A global allocator that counts the allocations (and reallocations) made on the current
//! thread, for the tests that pin what a request allocates. Each such test binary installs it:
//!
//! ```ignore
//! mod alloc_common;
//! #[global_allocator]
//! static GLOBAL: alloc_common::Counting = alloc_common::Counting;
//! ```
//!
//! Counting per thread keeps other threads (an SDK's reader, other tests) out of the count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, counting.
pub struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's contract is passed on as it is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// A request from one client (`192.0.2.1`, as `PeerAddr`) carrying one header, built before
/// the counting starts.
pub fn request_with(name: &'static str, value: &'static str) -> http::Request<String> {
    let mut req = http::Request::new(String::new());
    let peer: std::net::SocketAddr = "192.0.2.1:1".parse().unwrap();
    req.extensions_mut()
        .insert(tower_rampart::net::PeerAddr(peer));
    req.headers_mut()
        .insert(name, http::HeaderValue::from_static(value));
    req
}

/// Allocations made on this thread so far.
pub fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}
