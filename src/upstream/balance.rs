//! Choosing a target. Every strategy skips unhealthy targets and the ones this request
//! already tried, and returns `None` when nothing is left (the proxy answers 503).

use super::Cluster;
use crate::config::Balance;
use std::cell::Cell;
use std::sync::atomic::Ordering;

/// What `consistent_hash` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    Ip,
    Path,
    Header(http::HeaderName),
    Cookie(String),
}

impl HashKey {
    pub fn parse(s: &str) -> Option<HashKey> {
        match s {
            "ip" => Some(HashKey::Ip),
            "path" => Some(HashKey::Path),
            _ => {
                if let Some(h) = s.strip_prefix("header:") {
                    http::HeaderName::from_bytes(h.as_bytes()).ok().map(HashKey::Header)
                } else {
                    s.strip_prefix("cookie:").map(|c| HashKey::Cookie(c.to_string()))
                }
            }
        }
    }
}

/// nginx's smooth weighted round robin, unrolled once: weights [5,1,1] give
/// a a b a c a a rather than a a a a a b c.
pub(super) fn smooth_schedule(weights: &[u32]) -> Vec<u32> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let w: Vec<i64> = weights.iter().map(|w| i64::from(w / g)).collect();
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// FNV-1a with a final mix: stable across processes and restarts, which consistent hashing
/// needs (std's hasher is randomly keyed per process).
fn hash64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let local = 0u8;
    (t ^ (&local as *const u8 as u64)) | 1
}

fn next_random() -> u64 {
    RNG.with(|c| {
        let mut x = c.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.set(x);
        x
    })
}

impl Cluster {
    fn eligible(&self, i: usize, tried: &[usize]) -> bool {
        self.targets[i].is_healthy() && !tried.contains(&i) && !self.targets[i].is_ejected() && self.has_room(i)
    }

    /// Picks a target index. `key` is the consistent-hash key when the strategy uses one.
    pub fn select(&self, key: Option<&[u8]>, tried: &[usize]) -> Option<usize> {
        if !self.tiered {
            return self.select_among(key, tried);
        }
        // The lowest priority with a target that can take the request; the targets of
        // every other priority count as tried. Only clusters with priorities pay for it.
        let best = (0..self.targets.len())
            .filter(|&i| self.eligible(i, tried))
            .map(|i| self.targets[i].priority)
            .min()?;
        let mut skip = tried.to_vec();
        skip.extend((0..self.targets.len()).filter(|&i| self.targets[i].priority != best));
        self.select_among(key, &skip)
    }

    fn select_among(&self, key: Option<&[u8]>, tried: &[usize]) -> Option<usize> {
        match self.balance {
            Balance::RoundRobin => self.round_robin(tried),
            Balance::Random => self.random(tried),
            Balance::ConsistentHash => match key {
                Some(k) => self.rendezvous(k, tried),
                // No key on this request (header missing): spread it like round robin.
                None => self.round_robin(tried),
            },
            Balance::LeastRequests => self.least_requests(tried),
        }
    }

    fn round_robin(&self, tried: &[usize]) -> Option<usize> {
        let n = self.schedule.len();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| self.schedule[(start + k) % n] as usize)
            .find(|&i| self.eligible(i, tried))
    }

    fn random(&self, tried: &[usize]) -> Option<usize> {
        let total: u64 = (0..self.targets.len())
            .filter(|&i| self.eligible(i, tried))
            .map(|i| u64::from(self.targets[i].weight))
            .sum();
        if total == 0 {
            return None;
        }
        let mut r = next_random() % total;
        for i in 0..self.targets.len() {
            if !self.eligible(i, tried) {
                continue;
            }
            let w = u64::from(self.targets[i].weight);
            if r < w {
                return Some(i);
            }
            r -= w;
        }
        None
    }

    /// Weighted rendezvous hashing: a key stays on its target while that target is healthy,
    /// and only the keys of a target that leaves move.
    fn rendezvous(&self, key: &[u8], tried: &[usize]) -> Option<usize> {
        let mut best: Option<(usize, f64)> = None;
        for (i, t) in self.targets.iter().enumerate() {
            if !self.eligible(i, tried) {
                continue;
            }
            let h = hash64(&[key, t.name.as_bytes()]);
            // Map to (0,1) and score = w / -ln(u): the weighted HRW of Schindelhauer & Schomaker.
            let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let score = f64::from(t.weight) / -u.ln();
            if best.is_none_or(|(_, s)| score > s) {
                best = Some((i, score));
            }
        }
        best.map(|(i, _)| i)
    }

    fn least_requests(&self, tried: &[usize]) -> Option<usize> {
        let n = self.targets.len();
        // Rotate the start so ties do not all land on the first target.
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(usize, u64, u64)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if !self.eligible(i, tried) {
                continue;
            }
            let t = &self.targets[i];
            let load = t.in_flight.load(Ordering::Relaxed) as u64 + 1;
            let w = u64::from(t.weight);
            // load/w < best_load/best_w, without division
            if best.is_none_or(|(_, bl, bw)| load * bw < bl * w) {
                best = Some((i, load, w));
            }
        }
        best.map(|(i, ..)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{TargetSpec, Upstream};

    fn cluster(weights: &[u32], balance: Balance) -> Cluster {
        let cfg: Upstream = toml::from_str(&format!(
            "targets = [{}]\nbalance = \"{}\"\n{}",
            weights
                .iter()
                .enumerate()
                .map(|(i, w)| format!("{{ addr = \"127.0.0.1:{}\", weight = {w} }}", 10000 + i))
                .collect::<Vec<_>>()
                .join(","),
            match balance {
                Balance::RoundRobin => "round_robin",
                Balance::Random => "random",
                Balance::ConsistentHash => "consistent_hash",
                Balance::LeastRequests => "least_requests",
            },
            if balance == Balance::ConsistentHash {
                "hash_on = \"ip\""
            } else {
                ""
            }
        ))
        .unwrap();
        assert!(matches!(cfg.targets[0], TargetSpec::Weighted { .. }));
        Cluster::new("t", &cfg, None).unwrap()
    }

    #[test]
    fn smooth_weights() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_schedule(&[2, 2]), vec![0, 1]);
    }

    #[test]
    fn round_robin_honours_weights_and_skips_tried() {
        let c = cluster(&[1, 3], Balance::RoundRobin);
        let mut counts = [0; 2];
        for _ in 0..400 {
            counts[c.select(None, &[]).unwrap()] += 1;
        }
        assert_eq!(counts, [100, 300]);
        assert_eq!(c.select(None, &[1]), Some(0));
        assert_eq!(c.select(None, &[0, 1]), None);
    }

    #[test]
    fn random_is_weighted() {
        let c = cluster(&[1, 3], Balance::Random);
        let mut counts = [0; 2];
        for _ in 0..8000 {
            counts[c.select(None, &[]).unwrap()] += 1;
        }
        assert!(counts[1] > counts[0] * 2, "{counts:?}");
    }

    #[test]
    fn hash_is_sticky_and_only_moves_keys_of_a_removed_target() {
        let c = cluster(&[1, 1, 1], Balance::ConsistentHash);
        let keys: Vec<String> = (0..300).map(|i| format!("user-{i}")).collect();
        let before: Vec<usize> = keys.iter().map(|k| c.select(Some(k.as_bytes()), &[]).unwrap()).collect();
        let again: Vec<usize> = keys.iter().map(|k| c.select(Some(k.as_bytes()), &[]).unwrap()).collect();
        assert_eq!(before, again);
        let hc: crate::config::HealthCheck = toml::from_str("unhealthy_after = 1").unwrap();
        c.targets[1].record_check("t", false, &hc);
        for (k, b) in keys.iter().zip(&before) {
            let now = c.select(Some(k.as_bytes()), &[]).unwrap();
            if *b != 1 {
                assert_eq!(now, *b, "key {k} moved although its target stayed");
            } else {
                assert_ne!(now, 1);
            }
        }
        assert!(before.iter().filter(|&&b| b == 0).count() > 50);
    }

    #[test]
    fn least_requests_prefers_idle() {
        let c = cluster(&[1, 1], Balance::LeastRequests);
        c.targets[0].in_flight.store(5, Ordering::Relaxed);
        for _ in 0..10 {
            assert_eq!(c.select(None, &[]), Some(1));
        }
    }
}
