//! Per-minute aggregates of the last 24 hours, kept in memory on each node and fed by the
//! spool writer (never by the request path), for `GET /analytics`.
//!
//! Bounded: at most `MINUTES` minutes, and per minute at most `MAX_KEYS` routes and
//! consumers each (the rest count under `_other`: a client minting JWT subjects cannot grow
//! it). A minute costs about 100 bytes per route and 250 per active consumer, plus the
//! histogram buckets actually hit (8 bytes each).

use once_cell::sync::Lazy;
use std::collections::VecDeque;

/// The aggregates' maps: keyed by names the config and the consumers hold, hashed fast.
type HashMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

pub const MINUTES: u64 = 24 * 60;
const MAX_KEYS: usize = 1000;
/// Bucket `i` holds latencies up to `FIRST_MS * GROWTH^i`.
const FIRST_MS: f64 = 0.1;
const GROWTH: f64 = 1.25;
const BUCKETS: u8 = 80;

/// What the writer learns of one request besides its event line.
pub struct Sample {
    pub route: Option<Arc<str>>,
    pub consumer: Option<Arc<str>>,
    pub status: u16,
    pub latency_us: u32,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub at: SystemTime,
}

#[derive(Default, Clone, Copy)]
struct Counts {
    requests: u64,
    errors: u64,
    bytes_in: u64,
    bytes_out: u64,
}

impl Counts {
    fn add(&mut self, s: &Sample) {
        self.requests += 1;
        self.errors += u64::from(s.status >= 400 || s.status == 0);
        self.bytes_in += s.bytes_in;
        self.bytes_out += s.bytes_out;
    }

    fn merge(&mut self, o: &Counts) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
    }
}

/// Counts and a sparse latency histogram (bucket, count), sorted by bucket.
#[derive(Default, Clone)]
struct Agg {
    counts: Counts,
    hist: Vec<(u8, u32)>,
}

fn bucket(latency_us: u32) -> u8 {
    let ms = f64::from(latency_us) / 1000.0;
    if ms <= FIRST_MS {
        return 0;
    }
    ((ms / FIRST_MS).ln() / GROWTH.ln()).ceil().min(f64::from(BUCKETS - 1)) as u8
}

pub fn bucket_upper_ms(b: u8) -> f64 {
    FIRST_MS * GROWTH.powi(i32::from(b))
}

impl Agg {
    fn add(&mut self, s: &Sample) {
        self.counts.add(s);
        let b = bucket(s.latency_us);
        match self.hist.binary_search_by_key(&b, |&(k, _)| k) {
            Ok(i) => self.hist[i].1 += 1,
            Err(i) => self.hist.insert(i, (b, 1)),
        }
    }

    fn merge(&mut self, o: &Agg) {
        self.counts.merge(&o.counts);
        for &(b, n) in &o.hist {
            match self.hist.binary_search_by_key(&b, |&(k, _)| k) {
                Ok(i) => self.hist[i].1 += n,
                Err(i) => self.hist.insert(i, (b, n)),
            }
        }
    }

    /// The upper bound of the bucket holding the `q` quantile.
    fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.hist.iter().map(|&(_, n)| u64::from(n)).sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for &(b, n) in &self.hist {
            seen += u64::from(n);
            if seen >= rank {
                return Some(round3(bucket_upper_ms(b)));
            }
        }
        None
    }

    fn json(&self) -> serde_json::Value {
        let c = &self.counts;
        serde_json::json!({
            "requests": c.requests, "errors": c.errors, "bytes_in": c.bytes_in, "bytes_out": c.bytes_out,
            "p50_ms": self.quantile(0.5), "p95_ms": self.quantile(0.95), "p99_ms": self.quantile(0.99),
        })
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn class(status: u16) -> usize {
    usize::from(status / 100).min(5)
}

const CLASSES: [&str; 6] = ["other", "1xx", "2xx", "3xx", "4xx", "5xx"];

#[derive(Default)]
struct ConsumerMinute {
    total: Agg,
    routes: HashMap<Arc<str>, Counts>,
    status: [Counts; 6],
}

struct Minute {
    at: u64,
    total: Agg,
    routes: HashMap<Arc<str>, Agg>,
    consumers: HashMap<Arc<str>, ConsumerMinute>,
    status: [Agg; 6],
}

static OTHER: Lazy<Arc<str>> = Lazy::new(|| Arc::from("_other"));
static ANONYMOUS: Lazy<Arc<str>> = Lazy::new(|| Arc::from("anonymous"));
static NO_ROUTE: Lazy<Arc<str>> = Lazy::new(|| Arc::from("_none"));

static STORE: Mutex<VecDeque<Minute>> = Mutex::new(VecDeque::new());

fn minute_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 60
}

fn capped<'a, V: Default>(map: &'a mut HashMap<Arc<str>, V>, key: &Arc<str>) -> &'a mut V {
    let key = if map.len() >= MAX_KEYS && !map.contains_key(key) {
        &*OTHER
    } else {
        key
    };
    map.entry(key.clone()).or_default()
}

/// Adds the samples unless a query holds the aggregates right now (false: try again later).
pub fn try_add(samples: &[Sample]) -> bool {
    let mut store = match STORE.try_lock() {
        Ok(s) => s,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return false,
    };
    for s in samples {
        let at = minute_of(s.at);
        if store.back().is_none_or(|m| m.at < at) {
            store.push_back(Minute {
                at,
                total: Agg::default(),
                routes: HashMap::default(),
                consumers: HashMap::default(),
                status: Default::default(),
            });
        }
        // A sample of a minute already closed (a slow request that arrived late) goes into
        // the newest minute: counts stay exact, only its minute is off by one.
        let Some(m) = store.back_mut() else { continue };
        m.total.add(s);
        m.status[class(s.status)].add(s);
        capped(&mut m.routes, s.route.as_ref().unwrap_or(&NO_ROUTE)).add(s);
        let c = capped(&mut m.consumers, s.consumer.as_ref().unwrap_or(&ANONYMOUS));
        c.total.add(s);
        c.status[class(s.status)].add(s);
        capped(&mut c.routes, s.route.as_ref().unwrap_or(&NO_ROUTE)).add(s);
    }
    let newest = store.back().map_or(0, |m| m.at);
    while store.front().is_some_and(|m| m.at + MINUTES <= newest) {
        store.pop_front();
    }
    true
}

fn json_map<V>(m: &HashMap<Arc<str>, V>, f: impl Fn(&V) -> serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    let mut keys: Vec<_> = m.keys().collect();
    keys.sort();
    keys.into_iter().map(|k| (k.to_string(), f(&m[k]))).collect()
}

fn counts_json(c: &Counts) -> serde_json::Value {
    serde_json::json!({"requests": c.requests, "errors": c.errors, "bytes_in": c.bytes_in, "bytes_out": c.bytes_out})
}

/// `GET /analytics`: the last `minutes` minutes, the current one included.
pub fn overview(minutes: u64, top: usize) -> serde_json::Value {
    let now = minute_of(SystemTime::now());
    let store = STORE.lock().unwrap_or_else(|p| p.into_inner());
    let (mut total, mut status) = (Agg::default(), <[Agg; 6]>::default());
    let mut routes: HashMap<Arc<str>, Agg> = HashMap::default();
    let mut consumers: HashMap<Arc<str>, Agg> = HashMap::default();
    for m in store.iter().filter(|m| m.at + minutes > now) {
        total.merge(&m.total);
        for (a, b) in status.iter_mut().zip(m.status.iter()) {
            a.merge(b);
        }
        for (k, v) in &m.routes {
            routes.entry(k.clone()).or_default().merge(v);
        }
        for (k, v) in &m.consumers {
            consumers.entry(k.clone()).or_default().merge(&v.total);
        }
    }
    drop(store);
    let ranked = |key: fn(&Counts) -> u64, field: &str| {
        let mut v: Vec<_> = consumers
            .iter()
            .map(|(k, a)| (k.clone(), key(&a.counts)))
            .filter(|(_, n)| *n > 0)
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.into_iter()
            .take(top)
            .map(|(k, n)| serde_json::json!({"consumer": &*k, field: n}))
            .collect::<Vec<_>>()
    };
    serde_json::json!({
        "window_seconds": minutes * 60,
        "total": total.json(),
        "by_route": json_map(&routes, Agg::json),
        "by_consumer": json_map(&consumers, Agg::json),
        "by_status": status_json(&status, |a| a.counts.requests, Agg::json),
        "top_consumers": {
            "by_requests": ranked(|c| c.requests, "requests"),
            "by_errors": ranked(|c| c.errors, "errors"),
        },
    })
}

fn status_json<T>(s: &[T; 6], n: impl Fn(&T) -> u64, f: impl Fn(&T) -> serde_json::Value) -> serde_json::Value {
    let map: serde_json::Map<_, _> = s
        .iter()
        .enumerate()
        .filter(|(_, a)| n(a) > 0)
        .map(|(i, a)| (CLASSES[i].to_string(), f(a)))
        .collect();
    serde_json::Value::Object(map)
}

/// `GET /analytics/consumers/NAME`.
pub fn consumer(name: &str, minutes: u64) -> serde_json::Value {
    let now = minute_of(SystemTime::now());
    let store = STORE.lock().unwrap_or_else(|p| p.into_inner());
    let mut total = Agg::default();
    let mut status = <[Counts; 6]>::default();
    let mut routes: HashMap<Arc<str>, Counts> = HashMap::default();
    for m in store.iter().filter(|m| m.at + minutes > now) {
        let Some(c) = m.consumers.get(name) else { continue };
        total.merge(&c.total);
        for (a, b) in status.iter_mut().zip(c.status.iter()) {
            a.merge(b);
        }
        for (k, v) in &c.routes {
            routes.entry(k.clone()).or_default().merge(v);
        }
    }
    drop(store);
    serde_json::json!({
        "consumer": name,
        "window_seconds": minutes * 60,
        "total": total.json(),
        "by_route": json_map(&routes, counts_json),
        "by_status": status_json(&status, |c| c.requests, counts_json),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quantile_is_the_upper_bound_of_its_bucket_within_a_quarter() {
        for ms in [0.05, 0.3, 1.0, 12.0, 50.0, 333.0, 4000.0] {
            let b = bucket((ms * 1000.0) as u32);
            let upper = bucket_upper_ms(b);
            assert!(upper >= ms - 1e-9 && upper <= ms.max(FIRST_MS) * GROWTH + 1e-9, "{ms} -> {upper}");
        }
    }
}
