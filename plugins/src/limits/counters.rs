//! The local quota counters: counted in memory on the request path, kept on disk by a
//! background worker (the core's `state` module drives it).
//!
//! - No disk access on the request path. A counter seen for the first time starts from
//!   zero and is queued for loading; until the worker has read the stored total (within
//!   milliseconds), the request is admitted by the in-memory count alone.
//! - Deltas are flushed every second (`count = count + delta`, returning the total, which
//!   also brings in what other processes flushed), on every stop (SIGINT and SIGTERM alike)
//!   and before an upgrade hands the sockets over. A failed flush keeps its delta for the
//!   next one and is counted in `gatehouse_store_errors_total{store="disk",op="quota_flush"}`.
//!   A crash loses at most the last second.
//! - Flushes, loads, resets and evictions take one lock (`STORE_OPS`), so a reset is never
//!   undone by a flush that had already taken its delta.
//! - Memory is bounded: counters of past periods, and idle ones (10 minutes) that are on
//!   disk, are dropped; without a disk store, only idle anonymous ones (`ip:`, `jwt:`).

use super::calendar::{now_secs, Period};
use crate::store::{self, disk::QuotaKey};
use once_cell::sync::Lazy;
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
struct Counter {
    /// Total in the store as of the last flush or load (all processes).
    base: u64,
    /// Counted here since.
    delta: u64,
    /// Taken by the flush in progress.
    flushing: u64,
    /// Unix seconds of the last request.
    last_used: u64,
}

impl Counter {
    fn used(&self) -> u64 {
        self.base + self.flushing + self.delta
    }
}

const SHARDS: usize = 32;
pub const IDLE_EVICT_SECS: u64 = 600;

type Shard = Mutex<HashMap<QuotaKey, Counter>>;

/// Keyed by (scope, consumer, period), in shards so that requests of different consumers
/// do not wait on one lock.
static LOCAL: Lazy<Vec<Shard>> = Lazy::new(|| (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect());
/// Counters waiting for their stored total.
static PENDING: Lazy<Mutex<Vec<QuotaKey>>> = Lazy::new(|| Mutex::new(Vec::new()));
/// Wakes the worker when `PENDING` has work.
pub static WORK: Lazy<tokio::sync::Notify> = Lazy::new(tokio::sync::Notify::new);
static STORE_OPS: Mutex<()> = Mutex::new(());

fn shard(key: &QuotaKey) -> &'static Shard {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.1.hash(&mut h);
    &LOCAL[(h.finish() as usize) % SHARDS]
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn anonymous(consumer: &str) -> bool {
    consumer.starts_with("ip:") || consumer.starts_with("jwt:")
}

/// Counts one request unless the quota is spent: (allowed, used).
pub fn take(key: QuotaKey, limit: u64) -> (bool, u64) {
    let now = now_secs();
    let mut map = lock(shard(&key));
    let c = match map.get_mut(&key) {
        Some(c) => c,
        None => {
            if store::get().has_disk() {
                lock(&PENDING).push(key.clone());
                WORK.notify_one();
            }
            map.entry(key).or_default()
        }
    };
    c.last_used = now;
    let used = c.used();
    if used >= limit {
        return (false, used);
    }
    c.delta += 1;
    (true, used + 1)
}

/// Loads the stored counts of the current periods (a new process starts from them).
pub fn preload(disk: &crate::store::disk::Disk) -> Result<usize, String> {
    let _ops = lock(&STORE_OPS);
    let now = now_secs();
    let rows = disk.current(&[Period::Day.at(now).0, Period::Month.at(now).0])?;
    for (k, used) in &rows {
        let mut map = lock(shard(k));
        let c = map.entry(k.clone()).or_insert_with(|| Counter {
            last_used: now,
            ..Counter::default()
        });
        c.base = c.base.max(*used);
    }
    Ok(rows.len())
}

/// Reads the stored totals of counters seen for the first time. Returns how many.
pub fn load_pending() -> usize {
    let _ops = lock(&STORE_OPS);
    let stores = store::get();
    let Some(disk) = stores.disk() else { return 0 };
    let keys = std::mem::take(&mut *lock(&PENDING));
    let mut retry = Vec::new();
    for k in &keys {
        match disk.get(k) {
            Ok(total) => {
                if let Some(c) = lock(shard(k)).get_mut(k) {
                    // Flushes since then already made `base` the store's total.
                    c.base = c.base.max(total);
                }
            }
            Err(e) => {
                log::warn!("quota: loading {k:?} failed (will retry): {e}");
                crate::metrics::STORE_ERRORS.with_label_values(&["disk", "quota_load"]).inc();
                retry.push(k.clone());
            }
        }
    }
    if !retry.is_empty() {
        lock(&PENDING).extend(retry);
    }
    keys.len()
}

/// Flushes local deltas to the on-disk store and refreshes totals; returns how many
/// counters were written.
pub fn flush() -> usize {
    let _ops = lock(&STORE_OPS);
    let stores = store::get();
    let Some(disk) = stores.disk() else { return 0 };
    let mut taken: HashMap<QuotaKey, u64> = HashMap::new();
    for m in LOCAL.iter() {
        for (k, c) in lock(m).iter_mut().filter(|(_, c)| c.delta > 0) {
            c.flushing += c.delta;
            taken.insert(k.clone(), c.delta);
            c.delta = 0;
        }
    }
    if taken.is_empty() {
        return 0;
    }
    let result = disk.flush(&taken);
    for (k, n) in &taken {
        let mut map = lock(shard(k));
        let Some(c) = map.get_mut(k) else { continue };
        c.flushing -= (*n).min(c.flushing);
        match &result {
            Ok(totals) => c.base = totals.get(k).copied().unwrap_or(c.base + n),
            // Kept for the next flush.
            Err(_) => c.delta += n,
        }
    }
    match result {
        Ok(_) => taken.len(),
        Err(e) => {
            log::error!("quota: flushing to the store failed (will retry): {e}");
            crate::metrics::STORE_ERRORS.with_label_values(&["disk", "quota_flush"]).inc();
            0
        }
    }
}

/// Drops counters that memory need not hold; returns how many.
pub fn evict() -> usize {
    let _ops = lock(&STORE_OPS);
    let now = now_secs();
    let current = [Period::Day.at(now).0, Period::Month.at(now).0];
    let on_disk = store::get().has_disk();
    let mut dropped = 0;
    for m in LOCAL.iter() {
        let mut map = lock(m);
        let before = map.len();
        map.retain(|(_, consumer, period), c| {
            if c.delta > 0 || c.flushing > 0 {
                return true;
            }
            let idle = now.saturating_sub(c.last_used) > IDLE_EVICT_SECS;
            let past = !current.contains(period);
            !(past || (idle && (on_disk || anonymous(consumer))))
        });
        dropped += before - map.len();
    }
    dropped
}

/// Local counters not yet on disk (admin usage shows it; tests wait for 0).
pub fn unflushed() -> u64 {
    LOCAL
        .iter()
        .map(|m| lock(m).values().map(|c| c.delta + c.flushing).sum::<u64>())
        .sum()
}

/// What this process counts for `consumer`: (scope, period) -> used.
pub fn usage_of(consumer: &str, out: &mut HashMap<(String, String), u64>) {
    for m in LOCAL.iter() {
        for ((scope, c, period), counter) in lock(m).iter() {
            if c == consumer {
                let e = out.entry((scope.clone(), period.clone())).or_default();
                *e = (*e).max(counter.base) + counter.flushing + counter.delta;
            }
        }
    }
}

/// Resets a consumer's counters for these periods, here and on disk, with no flush in
/// between that could bring the old counts back.
pub fn reset(consumer: &str, periods: &[String]) -> Result<(), String> {
    let _ops = lock(&STORE_OPS);
    for m in LOCAL.iter() {
        for ((_, c, period), counter) in lock(m).iter_mut() {
            if c == consumer && periods.contains(period) {
                *counter = Counter {
                    last_used: counter.last_used,
                    ..Counter::default()
                };
            }
        }
    }
    if let Some(d) = store::get().disk() {
        for p in periods {
            d.reset(consumer, p)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(scope: &str, who: &str, period: &str) -> QuotaKey {
        (scope.into(), who.into(), period.into())
    }

    #[test]
    fn counting_and_eviction() {
        let now = now_secs();
        let today = Period::Day.at(now).0;
        let (a, b) = (key("t-route", "ip:192.0.2.1", &today), key("t-route", "ip:192.0.2.1", "1999-01-01"));
        assert_eq!(take(a.clone(), 2), (true, 1));
        assert_eq!(take(a.clone(), 2), (true, 2));
        assert_eq!(take(a.clone(), 2), (false, 2));
        assert_eq!(take(b.clone(), 2), (true, 1));
        // Unflushed counters stay; once flushed (no disk here: nothing to flush, so make
        // them clean by hand) past periods go, current ones stay while in use.
        for k in [&a, &b] {
            if let Some(c) = lock(shard(k)).get_mut(k) {
                c.base += c.delta;
                c.delta = 0;
            }
        }
        evict();
        assert!(lock(shard(&a)).contains_key(&a));
        assert!(!lock(shard(&b)).contains_key(&b), "a past period is dropped");
        if let Some(c) = lock(shard(&a)).get_mut(&a) {
            c.last_used = now - IDLE_EVICT_SECS - 1;
        }
        evict();
        assert!(!lock(shard(&a)).contains_key(&a), "an idle anonymous counter is dropped");
    }

    #[test]
    fn reset_zeroes_what_is_counted() {
        let today = Period::Day.at(now_secs()).0;
        let k = key("t-reset", "acme-reset", &today);
        for _ in 0..3 {
            take(k.clone(), 10);
        }
        reset("acme-reset", std::slice::from_ref(&today)).unwrap();
        assert_eq!(take(k, 10), (true, 1));
    }
}
