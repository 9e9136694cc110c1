//! Allocation counting, for the benchmark's allocations-per-request figure (#15).
//!
//! The binary's global allocator is [`Counting`] around the real one. It counts nothing
//! unless `GATEHOUSE_COUNT_ALLOCS=1` was set at start: then every allocation adds to two
//! relaxed counters that `/metrics` shows as `gatehouse_allocations_total` and
//! `gatehouse_allocated_bytes_total`. Off, the cost is one relaxed load and a branch that
//! always goes the same way per allocation, far under the benchmark's noise; the counters
//! are shared cache lines, so they are for measuring, not for production.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

static ON: AtomicBool = AtomicBool::new(false);
static COUNT: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
/// Bytes allocated and not yet freed (wrapping: it may dip below zero for memory freed
/// that was allocated before counting began).
static LIVE: AtomicU64 = AtomicU64::new(0);

/// A global allocator that counts what it hands to `A` while counting is on.
pub struct Counting<A>(pub A);

#[inline(always)]
fn note(size: usize) {
    if ON.load(Relaxed) {
        COUNT.fetch_add(1, Relaxed);
        BYTES.fetch_add(size as u64, Relaxed);
        LIVE.fetch_add(size as u64, Relaxed);
    }
}

#[inline(always)]
fn freed(size: usize) {
    if ON.load(Relaxed) {
        LIVE.fetch_sub(size as u64, Relaxed);
    }
}

// SAFETY: every call is passed unchanged to `A`, which upholds GlobalAlloc's contract.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { self.0.alloc(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { self.0.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        freed(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { self.0.dealloc(ptr, layout) }
    }

    /// A growth counts as an allocation: it usually is one (a copy to a larger block).
    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        freed(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { self.0.realloc(ptr, layout, new_size) }
    }
}

/// Turns counting on when `GATEHOUSE_COUNT_ALLOCS=1`; called once, first thing in `main`.
pub fn enable_from_env() {
    if std::env::var_os("GATEHOUSE_COUNT_ALLOCS").is_some_and(|v| v == "1") {
        ON.store(true, Relaxed);
    }
}

/// Allocations, bytes and bytes still held, counted so far, when counting is on.
pub fn counts() -> Option<(u64, u64, i64)> {
    ON.load(Relaxed)
        .then(|| (COUNT.load(Relaxed), BYTES.load(Relaxed), LIVE.load(Relaxed) as i64))
}

/// The two counters in Prometheus text form, when counting is on.
pub fn exposition() -> Option<String> {
    let (n, bytes, live) = counts()?;
    Some(format!(
        "# HELP gatehouse_allocations_total Heap allocations since start (GATEHOUSE_COUNT_ALLOCS=1).\n\
         # TYPE gatehouse_allocations_total counter\ngatehouse_allocations_total {n}\n\
         # HELP gatehouse_allocated_bytes_total Bytes those allocations asked for.\n\
         # TYPE gatehouse_allocated_bytes_total counter\ngatehouse_allocated_bytes_total {bytes}\n\
         # HELP gatehouse_allocated_live_bytes Bytes allocated since start and not yet freed.\n\
         # TYPE gatehouse_allocated_live_bytes gauge\ngatehouse_allocated_live_bytes {live}\n"
    ))
}
