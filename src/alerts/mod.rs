//! Alerts the gateway evaluates itself (`[alerts]`): SLO burn rates and latency over
//! per-route counts, upstreams with no target left, certificates near expiry, consumers near
//! their quota, refused reloads. Evaluated in a background service off the request path;
//! notices go to Slack or Alertmanager-shaped webhooks with retries. `GET /alerts` lists
//! what is active; `gatehouse alerts export-rules` turns the same rules into a Prometheus
//! rules file for fleet-wide evaluation.
//!
//! The counts are per node and in memory: a restart starts the windows afresh (a long
//! window then reads as "since the start"), and an alert that was firing is not resolved by
//! the process that stopped.

pub mod export;
pub mod notify;
mod rules;
pub mod series;
pub mod state;

use crate::config::{AlertsCfg, File, RuleKind};
use crate::live::Live;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Evaluations done: a test (or an operator) can tell that a rule was looked at.
pub static EVALUATIONS: once_cell::sync::Lazy<prometheus::IntCounter> = once_cell::sync::Lazy::new(|| {
    let c = prometheus::IntCounter::new("gatehouse_alert_evaluations_total", "Alert rule evaluations.").expect("static counter");
    if let Err(e) = crate::metrics::METRICS.registry.register(Box::new(c.clone())) {
        log::error!("metric registration failed: {e}");
    }
    c
});

/// What `GET /alerts` shows: the alerts pending or firing at the last evaluation.
static ACTIVE: Mutex<Vec<state::Alert>> = Mutex::new(Vec::new());
/// The last reload's refusal, until a reload succeeds.
static RELOAD_FAILURE: Mutex<Option<String>> = Mutex::new(None);

pub fn active() -> Vec<state::Alert> {
    ACTIVE.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

pub fn reload_result(error: Option<&str>) {
    *RELOAD_FAILURE.lock().unwrap_or_else(|p| p.into_inner()) = error.map(str::to_string);
}

fn reload_failure() -> Option<String> {
    RELOAD_FAILURE.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// The latency thresholds the rules covering `route` need, sorted.
fn thresholds(cfg: &AlertsCfg, route: &str) -> Vec<Duration> {
    let mut t: Vec<Duration> = cfg
        .rules
        .values()
        .filter(|r| r.kind == RuleKind::LatencySlo && covers(&r.routes(), route))
        .filter_map(|r| r.latency_threshold())
        .collect();
    t.sort();
    t.dedup();
    t
}

fn covers(routes: &[String], route: &str) -> bool {
    routes.iter().any(|r| r == "*" || r == route)
}

/// The counters a route's requests bump, when an SLO rule covers it.
pub fn series_for(file: &File, route: &str) -> Option<Arc<series::RouteSeries>> {
    let cfg = file.alerts.as_ref()?;
    let covered = cfg
        .rules
        .values()
        .any(|r| matches!(r.kind, RuleKind::SloBurnRate | RuleKind::LatencySlo) && covers(&r.routes(), route));
    covered.then(|| series::for_route(route, &thresholds(cfg, route)))
}

#[derive(Default)]
struct Engine {
    started: Option<Instant>,
    bucket_len: Duration,
    history: HashMap<(String, Vec<Duration>), series::History>,
    alerts: state::Alerts,
    outbox: notify::Outbox,
}

impl Engine {
    async fn evaluate(&mut self, file: &File, snap: &crate::snapshot::Snapshot, cfg: &AlertsCfg) {
        let now = Instant::now();
        let bucket_len = cfg.bucket.0.max(Duration::from_millis(1));
        if bucket_len != self.bucket_len {
            // Bucket numbers of another length mean other times: the windows start afresh.
            self.history.clear();
            self.started = None;
            self.bucket_len = bucket_len;
        }
        let started = *self.started.get_or_insert(now);
        let bucket = (now.duration_since(started).as_nanos() / bucket_len.as_nanos()) as u64;
        let holding = rules::conditions(&mut rules::Inputs {
            file,
            snap,
            cfg,
            bucket,
            bucket_len,
            history: &mut self.history,
            reload_failure: reload_failure(),
        })
        .await;
        let external = file.admin.as_ref().map(|a| format!("http://{}", a.addr)).unwrap_or_default();
        for a in self.alerts.step(now, SystemTime::now(), holding) {
            self.outbox.queue(&cfg.receivers, &a, &external);
        }
        *ACTIVE.lock().unwrap_or_else(|p| p.into_inner()) = self.alerts.list();
        EVALUATIONS.inc();
    }
}

/// Evaluates on `evaluation_interval` and delivers on a one-second tick (retries are due
/// sooner than a slow evaluation interval).
pub struct AlertsService {
    pub live: Arc<Live>,
}

#[async_trait]
impl BackgroundService for AlertsService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        once_cell::sync::Lazy::force(&notify::NOTICES);
        let client = reqwest::Client::new();
        let mut engine = Engine::default();
        let mut last_eval: Option<Instant> = None;
        // The receivers of the last config that had `[alerts]`: a reload that removes the
        // table still resolves what was firing, through them.
        let mut receivers = std::collections::BTreeMap::new();
        loop {
            let snap = self.live.load();
            let mut tick = Duration::from_secs(1);
            if let Some(cfg) = snap.file.alerts.as_ref() {
                receivers = cfg.receivers.clone();
                let every = cfg.evaluation_interval.0;
                if last_eval.is_none_or(|t| t.elapsed() >= every) {
                    last_eval = Some(Instant::now());
                    engine.evaluate(&snap.file, &snap, cfg).await;
                }
                tick = tick.min(every);
            } else if !engine.alerts.list().is_empty() {
                for a in engine.alerts.step(Instant::now(), SystemTime::now(), Vec::new()) {
                    engine.outbox.queue(&receivers, &a, "");
                }
                ACTIVE.lock().unwrap_or_else(|p| p.into_inner()).clear();
            }
            if engine.outbox.pending() > 0 {
                engine.outbox.deliver(&client, &receivers).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = shutdown.changed() => {
                    // One last try for what is queued; a receiver that is down loses it.
                    let _ = tokio::time::timeout(Duration::from_secs(2), engine.outbox.deliver(&client, &receivers)).await;
                    return;
                }
            }
        }
    }
}
