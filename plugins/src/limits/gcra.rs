//! The local rate limiter: GCRA, exact per key. State is one 8-byte "theoretical arrival
//! time" per key in sharded maps: no global lock, memory bounded by `MAX_KEYS_PER_SHARD`,
//! and a key whose bucket has refilled is the same as no entry, so idle keys are dropped
//! when a shard fills up.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 64;
const MAX_KEYS_PER_SHARD: usize = 16_384;
/// What a full shard is cut down to: room for an eighth of it before the next cut, so the
/// cut's cost (a pass over the shard) is spread over that many new keys. Cutting to just
/// under the cap made every new key pay a full pass once a million keys were active.
const LOW_WATER: usize = MAX_KEYS_PER_SHARD - MAX_KEYS_PER_SHARD / 8;

/// Drops the keys whose bucket has refilled (the same as no entry); if the shard is still
/// past `LOW_WATER`, it is full of active keys and arbitrary ones are forgotten (those
/// clients get a full bucket back) rather than let memory grow.
fn make_room(map: &mut HashMap<u64, u64>, now_ns: u64) {
    map.retain(|_, v| *v > now_ns);
    let excess = map.len().saturating_sub(LOW_WATER);
    if excess > 0 {
        let victims: Vec<u64> = map.keys().take(excess).copied().collect();
        for k in victims {
            map.remove(&k);
        }
    }
}

pub struct Gcra {
    epoch: Instant,
    shards: Vec<Mutex<HashMap<u64, u64>>>,
}

/// What a limiter said about one request.
#[derive(Debug, Clone, Copy)]
pub struct Decision {
    pub allowed: bool,
    pub retry_after: Duration,
    /// Requests left right now.
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset: Duration,
}

impl Decision {
    pub fn from_tat(allowed: bool, retry_after: Duration, tat_minus_now: Duration, interval: Duration, tau: Duration) -> Decision {
        let headroom = (tau + interval).saturating_sub(tat_minus_now);
        Decision {
            allowed,
            retry_after,
            remaining: (headroom.as_nanos() / interval.as_nanos().max(1)) as u64,
            reset: tat_minus_now,
        }
    }
}

impl Default for Gcra {
    fn default() -> Self {
        Gcra {
            epoch: Instant::now(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl Gcra {
    pub fn check(&self, key: u64, interval: Duration, tau: Duration) -> Decision {
        self.check_at(key, interval, tau, self.epoch.elapsed())
    }

    pub fn check_at(&self, key: u64, interval: Duration, tau: Duration, now: Duration) -> Decision {
        let now_ns = now.as_nanos() as u64;
        let (i, t) = (interval.as_nanos() as u64, tau.as_nanos() as u64);
        let shard = &self.shards[(key as usize) % SHARDS];
        let mut map = match shard.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        let tat = map.get(&key).copied().unwrap_or(now_ns).max(now_ns);
        if tat - now_ns > t {
            let d = Decision::from_tat(
                false,
                Duration::from_nanos(tat - now_ns - t),
                Duration::from_nanos(tat - now_ns),
                interval,
                tau,
            );
            return Decision { remaining: 0, ..d };
        }
        let new = tat + i;
        if map.len() >= MAX_KEYS_PER_SHARD && !map.contains_key(&key) {
            make_room(&mut map, now_ns);
        }
        map.insert(key, new);
        Decision::from_tat(true, Duration::ZERO, Duration::from_nanos(new - now_ns), interval, tau)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let g = Gcra::default();
        // 10 per second, burst 5: 15 back to back, then one per 100ms.
        let (i, tau) = (Duration::from_millis(100), Duration::from_millis(100) * 14);
        let t0 = Duration::from_secs(100);
        let admitted = (0..20).filter(|_| g.check_at(1, i, tau, t0).allowed).count();
        assert_eq!(admitted, 15);
        let d = g.check_at(1, i, tau, t0);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_millis(100));
        assert!(g.check_at(1, i, tau, t0 + Duration::from_millis(100)).allowed);
        assert!(!g.check_at(1, i, tau, t0 + Duration::from_millis(150)).allowed);
        // Other keys are untouched.
        assert!(g.check_at(2, i, tau, t0).allowed);
    }

    #[test]
    fn a_million_active_keys_stay_under_the_cap() {
        let g = Gcra::default();
        // One request per second per key with no burst: every key stays active for a second.
        let (i, tau) = (Duration::from_secs(1), Duration::ZERO);
        let t0 = Duration::from_secs(10);
        for k in 0..(SHARDS * MAX_KEYS_PER_SHARD + 200_000) as u64 {
            assert!(g.check_at(k, i, tau, t0).allowed, "a new key is always admitted");
        }
        let held: usize = g.shards.iter().map(|s| s.lock().map(|m| m.len()).unwrap_or(0)).sum();
        assert!(held <= SHARDS * MAX_KEYS_PER_SHARD, "{held} keys held");
        assert!(
            held > SHARDS * LOW_WATER,
            "a cut keeps the newest room's worth, not nothing: {held}"
        );
        // The latest key is still limited.
        let last = (SHARDS * MAX_KEYS_PER_SHARD + 199_999) as u64;
        assert!(!g.check_at(last, i, tau, t0).allowed);
    }

    #[test]
    fn remaining_counts_down() {
        let g = Gcra::default();
        let (i, tau) = (Duration::from_millis(100), Duration::from_millis(100) * 2);
        let t0 = Duration::from_secs(5);
        let r: Vec<u64> = (0..4).map(|_| g.check_at(7, i, tau, t0).remaining).collect();
        assert_eq!(r, vec![2, 1, 0, 0]);
    }
}
