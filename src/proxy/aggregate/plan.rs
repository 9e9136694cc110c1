//! An aggregate route's runtime form, built at config load: each backend's cluster, parsed
//! path template and metric handles resolved once, so a request only fills in values.

use crate::config::{self, Merge, OnPartial, Template};
use crate::upstream::function::Function;
use crate::upstream::Cluster;
use once_cell::sync::Lazy;
use prometheus::{exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounterVec, Opts};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub struct Plan {
    pub timeout: Duration,
    pub merge: Merge,
    pub on_partial: OnPartial,
    pub max_body: usize,
    pub include_errors: bool,
    pub backends: Vec<Backend>,
}

/// Where a backend's calls go.
pub enum Call {
    Cluster(Arc<Cluster>),
    Function(Arc<Function>),
}

pub struct Backend {
    pub name: Arc<str>,
    pub call: Call,
    pub template: Template,
    pub method: http::Method,
    pub timeout: Duration,
    pub required: bool,
    /// Empty: keep every field.
    pub allow: Vec<String>,
    pub duration: Histogram,
    /// `route`, `backend` fixed; `reason` per failure.
    route: Arc<str>,
}

impl Backend {
    pub fn upstream(&self) -> &str {
        match &self.call {
            Call::Cluster(c) => &c.name,
            Call::Function(f) => &f.name,
        }
    }

    pub fn failed(&self, reason: &str) {
        METRICS.failures.with_label_values(&[&self.route, &self.name, reason]).inc();
    }
}

struct Metrics {
    duration: HistogramVec,
    failures: IntCounterVec,
}

static METRICS: Lazy<Metrics> = Lazy::new(|| {
    let r = &crate::metrics::METRICS.registry;
    let buckets = exponential_buckets(0.0005, 2.0, 18).unwrap_or_default();
    let duration = HistogramVec::new(
        HistogramOpts::new(
            "gatehouse_aggregate_backend_duration_seconds",
            "Time one aggregation backend took to answer (or to fail).",
        )
        .buckets(buckets),
        &["route", "backend"],
    )
    .expect("static histogram definition");
    let failures = IntCounterVec::new(
        Opts::new(
            "gatehouse_aggregate_backend_failures_total",
            "Aggregation backend calls that failed, by reason.",
        ),
        &["route", "backend", "reason"],
    )
    .expect("static counter definition");
    let _ = r.register(Box::new(duration.clone()));
    let _ = r.register(Box::new(failures.clone()));
    Metrics { duration, failures }
});

impl Plan {
    /// `Err((key, reason))` names the key under `routes.ROUTE.aggregate`.
    pub fn build(
        route: &str,
        cfg: &config::AggregateCfg,
        clusters: &BTreeMap<String, Arc<Cluster>>,
        functions: &BTreeMap<String, Arc<Function>>,
    ) -> Result<Plan, (String, String)> {
        let route_name: Arc<str> = Arc::from(route);
        let mut backends = Vec::with_capacity(cfg.backends.len());
        for (i, b) in cfg.backends.iter().enumerate() {
            let key = |k: &str| format!("backends[{i}].{k}");
            let call = match (clusters.get(&b.upstream), functions.get(&b.upstream)) {
                (Some(c), _) => Call::Cluster(c.clone()),
                (None, Some(f)) => Call::Function(f.clone()),
                (None, None) => return Err((key("upstream"), format!("upstream `{}` is not defined", b.upstream))),
            };
            let template = Template::parse(&b.path).map_err(|e| (key("path"), e))?;
            let method = http::Method::from_bytes(b.method.as_bytes()).map_err(|e| (key("method"), e.to_string()))?;
            for reason in super::call::REASONS {
                METRICS.failures.with_label_values(&[route, &b.name, reason]);
            }
            backends.push(Backend {
                name: Arc::from(b.name.as_str()),
                call,
                template,
                method,
                timeout: b.timeout.map_or(cfg.timeout.0, |t| t.0.min(cfg.timeout.0)),
                required: b.required,
                allow: b.allow.clone(),
                duration: METRICS.duration.with_label_values(&[route, &b.name]),
                route: route_name.clone(),
            });
        }
        Ok(Plan {
            timeout: cfg.timeout.0,
            merge: cfg.merge,
            on_partial: cfg.on_partial,
            max_body: usize::try_from(cfg.max_body.0).unwrap_or(usize::MAX),
            include_errors: cfg.include_errors,
            backends,
        })
    }
}
