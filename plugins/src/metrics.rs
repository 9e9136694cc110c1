//! Metrics owned by plugins (store calls). The core renders this registry together with
//! its own on `/metrics`.

use once_cell::sync::Lazy;
use prometheus::{exponential_buckets, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

pub static REGISTRY: Lazy<Registry> = Lazy::new(Registry::new);

/// Registers a plugin metric; a duplicate name is logged, and the metric still counts.
pub fn register<T: prometheus::core::Collector + Clone + 'static>(c: T) -> T {
    if let Err(e) = REGISTRY.register(Box::new(c.clone())) {
        log::error!("metric registration failed: {e}");
    }
    c
}

pub static STORE_ERRORS: Lazy<IntCounterVec> = Lazy::new(|| {
    register(
        IntCounterVec::new(
            Opts::new("gatehouse_store_errors_total", "Failed or timed-out calls to a counter store."),
            &["store", "op"],
        )
        .expect("static metric"),
    )
});

pub static STORE_LATENCY: Lazy<HistogramVec> = Lazy::new(|| {
    let buckets = exponential_buckets(0.0001, 2.0, 14).unwrap_or_default();
    register(
        HistogramVec::new(
            HistogramOpts::new("gatehouse_store_latency_seconds", "Latency of counter store calls.").buckets(buckets),
            &["store", "op"],
        )
        .expect("static metric"),
    )
});

/// Requests per consumer of the config, whatever their answer; the usage panel of the
/// dashboard. Unregistered names (JWT subjects) and anonymous requests are not counted here.
pub static CONSUMER_REQUESTS: Lazy<IntCounterVec> = Lazy::new(|| {
    register(
        IntCounterVec::new(
            Opts::new("gatehouse_consumer_requests_total", "Requests by a consumer of the config."),
            &["consumer"],
        )
        .expect("static metric"),
    )
});

/// Makes sure every metric exists (with no samples) before the first scrape.
pub fn init() {
    Lazy::force(&STORE_ERRORS);
    Lazy::force(&STORE_LATENCY);
}
