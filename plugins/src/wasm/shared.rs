//! What every instance of one filter shares: its name and configuration, its shared-data
//! table (`proxy_get_shared_data` / `proxy_set_shared_data`, with compare-and-swap) and the
//! metrics it defines, exported as `gatehouse_wasm_{counter,gauge}{filter,name}` and
//! `gatehouse_wasm_histogram`.

use super::abi;
use once_cell::sync::Lazy;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};
use std::collections::HashMap;
use std::sync::Mutex;

/// Per filter: enough for a filter's own counters, not for a label per request.
const MAX_METRICS: usize = 64;
const MAX_SHARED_BYTES: usize = 1 << 20;

struct Vecs {
    counters: IntCounterVec,
    gauges: IntGaugeVec,
    histograms: HistogramVec,
}

static VECS: Lazy<Vecs> = Lazy::new(|| {
    let labels = &["filter", "name"];
    Vecs {
        counters: crate::metrics::register(
            IntCounterVec::new(Opts::new("gatehouse_wasm_counter", "Counters wasm filters define."), labels).expect("static metric"),
        ),
        gauges: crate::metrics::register(
            IntGaugeVec::new(Opts::new("gatehouse_wasm_gauge", "Gauges wasm filters define."), labels).expect("static metric"),
        ),
        histograms: crate::metrics::register(
            HistogramVec::new(
                HistogramOpts::new("gatehouse_wasm_histogram", "Histograms wasm filters define."),
                labels,
            )
            .expect("static metric"),
        ),
    }
});

pub enum Metric {
    Counter(IntCounter),
    Gauge(IntGauge),
    Histogram(Histogram),
}

impl Metric {
    pub fn add(&self, by: i64) {
        match self {
            Metric::Counter(c) if by >= 0 => c.inc_by(by as u64),
            Metric::Gauge(g) => g.add(by),
            _ => {}
        }
    }

    pub fn record(&self, v: i64) {
        match self {
            // A counter only goes up: a negative value is ignored.
            Metric::Counter(c) => c.inc_by(u64::try_from(v).unwrap_or(0).saturating_sub(c.get())),
            Metric::Gauge(g) => g.set(v),
            Metric::Histogram(h) => h.observe(v as f64),
        }
    }

    fn value(&self) -> u64 {
        match self {
            Metric::Counter(c) => c.get(),
            Metric::Gauge(g) => g.get() as u64,
            Metric::Histogram(h) => h.get_sample_count(),
        }
    }
}

/// Key -> (value, cas).
type Table = HashMap<Vec<u8>, (Vec<u8>, u32)>;

pub struct Shared {
    pub name: String,
    pub root_id: String,
    pub config: Vec<u8>,
    /// The upstreams `proxy_http_call` may name.
    pub upstreams: Vec<String>,
    /// Largest body (request, response or call answer) held for the filter.
    pub max_body: usize,
    pub data: Mutex<Table>,
    metrics: Mutex<Vec<(String, i32, Metric)>>,
}

impl Shared {
    pub fn new(name: &str, root_id: &str, config: Vec<u8>, upstreams: Vec<String>, max_body: usize) -> Shared {
        Shared {
            name: name.to_string(),
            root_id: root_id.to_string(),
            config,
            upstreams,
            max_body,
            data: Mutex::new(HashMap::new()),
            metrics: Mutex::new(Vec::new()),
        }
    }

    /// `cas` 0 writes whatever is there; otherwise it must match the value's current cas.
    pub fn set_data(&self, key: Vec<u8>, value: Vec<u8>, cas: u32) -> i32 {
        let mut d = self.data.lock().unwrap_or_else(|p| p.into_inner());
        let held: usize = d.iter().map(|(k, (v, _))| k.len() + v.len()).sum();
        let current = d.get(&key).map(|(v, c)| (v.len(), *c));
        if held - current.map_or(0, |(l, _)| l + key.len()) + key.len() + value.len() > MAX_SHARED_BYTES {
            return abi::BAD_ARGUMENT;
        }
        match current {
            Some((_, c)) if cas != 0 && cas != c => abi::CAS_MISMATCH,
            Some((_, c)) => {
                d.insert(key, (value, c.wrapping_add(1).max(1)));
                abi::OK
            }
            None => {
                d.insert(key, (value, 1));
                abi::OK
            }
        }
    }

    /// The id of the metric `name` of `kind`, defined on first use (by any instance).
    pub fn define_metric(&self, kind: i32, name: &str) -> Option<u32> {
        let mut m = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = m.iter().position(|(n, k, _)| n == name && *k == kind) {
            return Some(i as u32);
        }
        if m.len() >= MAX_METRICS || name.is_empty() || name.len() > 128 {
            return None;
        }
        let labels = [self.name.as_str(), name];
        let metric = match kind {
            abi::METRIC_COUNTER => Metric::Counter(VECS.counters.with_label_values(&labels)),
            abi::METRIC_GAUGE => Metric::Gauge(VECS.gauges.with_label_values(&labels)),
            abi::METRIC_HISTOGRAM => Metric::Histogram(VECS.histograms.with_label_values(&labels)),
            _ => return None,
        };
        m.push((name.to_string(), kind, metric));
        Some((m.len() - 1) as u32)
    }

    pub fn metric(&self, id: i32, f: impl FnOnce(&Metric)) -> i32 {
        let m = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        match usize::try_from(id).ok().and_then(|i| m.get(i)) {
            Some((_, _, metric)) => {
                f(metric);
                abi::OK
            }
            None => abi::NOT_FOUND,
        }
    }

    pub fn metric_value(&self, id: i32) -> Option<u64> {
        let m = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        usize::try_from(id).ok().and_then(|i| m.get(i)).map(|(_, _, metric)| metric.value())
    }
}
