//! Per-target and per-pool series an operator looks for when one backend misbehaves: answers
//! by status class and failures per target, each target's latency, and how often a request
//! found a pooled connection. Handles are resolved when the cluster is built, so counting is
//! an atomic add with no label lookup.

use once_cell::sync::Lazy;
use prometheus::{exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts};

struct Families {
    requests: IntCounterVec,
    duration: HistogramVec,
    connections: IntCounterVec,
}

static FAMILIES: Lazy<Families> = Lazy::new(|| {
    let r = &crate::metrics::METRICS.registry;
    let requests = IntCounterVec::new(
        Opts::new(
            "gatehouse_upstream_target_requests_total",
            "Upstream attempts by target and outcome: the answer's status class, or error (no answer: refused, reset, timed out).",
        ),
        &["upstream", "target", "outcome"],
    )
    .expect("static counter definition");
    let buckets = exponential_buckets(0.0005, 2.0, 18).unwrap_or_default();
    let duration = HistogramVec::new(
        HistogramOpts::new(
            "gatehouse_upstream_target_duration_seconds",
            "Time from choosing the target to the end of its response, per target.",
        )
        .buckets(buckets),
        &["upstream", "target"],
    )
    .expect("static histogram definition");
    let connections = IntCounterVec::new(
        Opts::new(
            "gatehouse_upstream_connections_total",
            "Upstream connections a request used: reused from the pool (true) or newly made (false).",
        ),
        &["upstream", "reused"],
    )
    .expect("static counter definition");
    for c in [
        Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(duration.clone()),
        Box::new(connections.clone()),
    ] {
        if let Err(e) = r.register(c) {
            log::error!("metric registration failed: {e}");
        }
    }
    Families {
        requests,
        duration,
        connections,
    }
});

const OUTCOMES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

pub struct TargetStats {
    outcomes: [IntCounter; 6],
    pub duration: Histogram,
}

impl TargetStats {
    pub fn new(upstream: &str, target: &str) -> TargetStats {
        let f = &*FAMILIES;
        TargetStats {
            outcomes: OUTCOMES.map(|o| f.requests.with_label_values(&[upstream, target, o])),
            duration: f.duration.with_label_values(&[upstream, target]),
        }
    }

    pub fn answered(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.outcomes[class].inc();
    }

    pub fn failed(&self) {
        self.outcomes[5].inc();
    }
}

pub struct PoolStats {
    pub reused: IntCounter,
    pub new: IntCounter,
}

impl PoolStats {
    pub fn new(upstream: &str) -> PoolStats {
        let f = &*FAMILIES;
        PoolStats {
            reused: f.connections.with_label_values(&[upstream, "true"]),
            new: f.connections.with_label_values(&[upstream, "false"]),
        }
    }
}
