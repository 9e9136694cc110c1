//! Prometheus metrics. One registry for the process; label values are route and upstream
//! names from the config, never raw paths, so cardinality is bounded by the file.
//!
//! Handles that do not depend on the response (per-route histograms and byte counters) are
//! resolved once per route at config load (see `snapshot`), so the hot path skips the
//! label hash lookup for them.

use once_cell::sync::Lazy;
use prometheus::{
    exponential_buckets, Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub target_healthy: IntGaugeVec,
    pub target_ejected: IntGaugeVec,
    pub ejections: IntCounterVec,
    pub bytes_received: IntCounterVec,
    pub bytes_sent: IntCounterVec,
    pub rejections: IntCounterVec,
    pub retries: IntCounterVec,
    pub reloads: IntCounterVec,
    pub access_log_dropped: IntCounter,
    pub panics: IntCounter,
    pub cert_expiry: IntGaugeVec,
    pub acme_orders: IntCounterVec,
    pub cache_requests: IntCounterVec,
    pub cache_bytes: IntGauge,
    pub cache_objects: IntGauge,
    pub cache_evictions: IntCounter,
    pub open_connections: IntGauge,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    // Registration only fails on a duplicate name, which is a programming error caught by
    // the first test run; the metric still works unregistered, so do not abort the gateway.
    if let Err(e) = r.register(Box::new(c.clone())) {
        log::error!("metric registration failed: {e}");
    }
    c
}

/// Series that exist from the start with a zero, so that rules and panels have something to
/// compute `rate()` and `increase()` on before the first event.
fn zeroes(m: &Metrics) {
    for result in ["ok", "error"] {
        m.reloads.with_label_values(&[result]);
    }
}

pub static METRICS: Lazy<Metrics> = Lazy::new(|| {
    let m = build();
    zeroes(&m);
    m
});

fn build() -> Metrics {
    let r = Registry::new();
    // 0.5 ms .. ~65 s
    let buckets = exponential_buckets(0.0005, 2.0, 18).unwrap_or_default();
    let h = |name: &str, help: &str, label: &str| {
        HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.clone()), &[label]).expect("static histogram definition")
    };
    let c = |name: &str, help: &str, labels: &[&str]| IntCounterVec::new(Opts::new(name, help), labels).expect("static counter definition");
    Metrics {
        requests: reg(
            &r,
            c(
                "gatehouse_requests_total",
                "Requests answered, by route, method and status.",
                &["route", "method", "status"],
            ),
        ),
        request_duration: reg(
            &r,
            h(
                "gatehouse_request_duration_seconds",
                "Time from request start to the end of the response.",
                "route",
            ),
        ),
        upstream_duration: reg(
            &r,
            h(
                "gatehouse_upstream_duration_seconds",
                "Time from choosing a target to the end of the upstream response.",
                "upstream",
            ),
        ),
        target_healthy: reg(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    "gatehouse_upstream_target_healthy",
                    "1 when the target takes traffic, 0 when health checks took it out.",
                ),
                &["upstream", "target"],
            )
            .expect("static gauge definition"),
        ),
        target_ejected: reg(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    "gatehouse_upstream_target_ejected",
                    "1 while the circuit breaker keeps the target out.",
                ),
                &["upstream", "target"],
            )
            .expect("static gauge definition"),
        ),
        ejections: reg(
            &r,
            c(
                "gatehouse_upstream_ejections_total",
                "Targets ejected by the circuit breaker.",
                &["upstream", "target"],
            ),
        ),
        bytes_received: reg(
            &r,
            c(
                "gatehouse_bytes_received_total",
                "Request body bytes received from clients.",
                &["route"],
            ),
        ),
        bytes_sent: reg(
            &r,
            c("gatehouse_bytes_sent_total", "Response body bytes sent to clients.", &["route"]),
        ),
        rejections: reg(
            &r,
            c(
                "gatehouse_rejections_total",
                "Requests the gateway refused, by route and reason.",
                &["route", "reason"],
            ),
        ),
        retries: reg(
            &r,
            c(
                "gatehouse_upstream_retries_total",
                "Requests retried on another target after a connect failure.",
                &["upstream"],
            ),
        ),
        reloads: reg(
            &r,
            c("gatehouse_config_reloads_total", "Config reload attempts by result.", &["result"]),
        ),
        access_log_dropped: reg(
            &r,
            IntCounter::new(
                "gatehouse_access_log_dropped_total",
                "Access log lines dropped because the writer fell behind.",
            )
            .expect("static counter definition"),
        ),
        panics: reg(
            &r,
            IntCounter::new(
                "gatehouse_panics_total",
                "Panics caught in a connection task or a plugin (the connection or request failed, the process went on).",
            )
            .expect("static counter definition"),
        ),
        cert_expiry: reg(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    "gatehouse_tls_cert_expiry_seconds",
                    "Unix time at which each configured certificate expires.",
                ),
                &["cert"],
            )
            .expect("static gauge definition"),
        ),
        acme_orders: reg(
            &r,
            c(
                "gatehouse_acme_orders_total",
                "ACME certificate orders (first issue and renewals) by result: ok, error.",
                &["result"],
            ),
        ),
        cache_requests: reg(
            &r,
            c(
                "gatehouse_cache_requests_total",
                "Cacheable requests by route and cache status (HIT, MISS, STALE, ...).",
                &["route", "status"],
            ),
        ),
        cache_bytes: reg(
            &r,
            IntGauge::new("gatehouse_cache_bytes", "Bytes held by the response cache.").expect("static gauge"),
        ),
        cache_objects: reg(
            &r,
            IntGauge::new("gatehouse_cache_objects", "Objects held by the response cache.").expect("static gauge"),
        ),
        cache_evictions: reg(
            &r,
            IntCounter::new(
                "gatehouse_cache_evictions_total",
                "Objects the cache evicted (or refused) to stay within memory.",
            )
            .expect("static counter"),
        ),
        open_connections: reg(
            &r,
            IntGauge::new(
                "gatehouse_downstream_connections_open",
                "Client connections open now, on every listener (idle keep-alive ones included).",
            )
            .expect("static gauge"),
        ),
        registry: r,
    }
}

/// The Prometheus text exposition of every metric.
pub fn render() -> Vec<u8> {
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut families = METRICS.registry.gather();
    families.extend(gatehouse_plugins::metrics::REGISTRY.gather());
    if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
        log::error!("encoding metrics failed: {e}");
    }
    if let Some(text) = crate::alloc_count::exposition() {
        buf.extend_from_slice(text.as_bytes());
    }
    buf
}

/// `gatehouse_requests_total{route,method,status}` children for one route, resolved on first
/// use and then kept: counting a request is an index and an atomic add instead of hashing
/// three label values under the metric family's read lock. Methods and statuses outside
/// the table take the family lookup.
pub struct RequestCounters {
    route: std::sync::Arc<str>,
    slots: Box<[once_cell::sync::OnceCell<prometheus::IntCounter>]>,
}

const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

/// The `method` label: a standard method, or `other`. A client chooses the method, and
/// must not be able to create series.
pub fn method_label(m: &http::Method) -> &'static str {
    use http::Method as M;
    match *m {
        M::GET => "GET",
        M::HEAD => "HEAD",
        M::POST => "POST",
        M::PUT => "PUT",
        M::DELETE => "DELETE",
        M::PATCH => "PATCH",
        M::OPTIONS => "OPTIONS",
        M::TRACE => "TRACE",
        M::CONNECT => "CONNECT",
        _ => "other",
    }
}
const STATUSES: [u16; 24] = [
    200, 201, 202, 204, 206, 301, 302, 304, 307, 308, 400, 401, 403, 404, 405, 408, 413, 414, 429, 431, 500, 502, 503, 504,
];

impl RequestCounters {
    pub fn new(route: std::sync::Arc<str>) -> Self {
        RequestCounters {
            route,
            slots: (0..METHODS.len() * STATUSES.len())
                .map(|_| once_cell::sync::OnceCell::new())
                .collect(),
        }
    }

    /// `method` is a [`method_label`]; `status_text` is the status as the label shows it
    /// (`"200"`, or `"0"` when none).
    pub fn inc(&self, method: &'static str, status: u16, status_text: &str) {
        let slot = METHODS
            .iter()
            .position(|m| *m == method)
            .zip(STATUSES.iter().position(|s| *s == status))
            .map(|(m, s)| m * STATUSES.len() + s);
        let labels = [&*self.route, method, status_text];
        match slot.and_then(|i| self.slots.get(i)) {
            Some(cell) => cell.get_or_init(|| METRICS.requests.with_label_values(&labels)).inc(),
            None => METRICS.requests.with_label_values(&labels).inc(),
        }
    }
}
