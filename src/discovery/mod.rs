//! Upstream targets from DNS: a `discovery` table (A/AAAA or SRV) or `host:port` targets.
//!
//! One background task asks DNS for every upstream that needs it, each at its records'
//! TTL clamped to `[min_ttl, max_ttl]`. A changed answer is put in the discovered set and
//! the live snapshot is rebuilt from the same config text (`Live::rediscover`), so the
//! swap is the same atomic store as a reload, and targets that stay keep their health and
//! ejection state (`Cluster::new` carries them over). A failed round keeps the last good
//! set; an answer with no records (NXDOMAIN, no data) empties the cluster, which then
//! answers 503 at once.

pub mod dns;

use crate::config::discovery::hostname_target;
use crate::config::{self, TargetSpec};
use crate::live::Live;
use async_trait::async_trait;
use dns::Query;
use once_cell::sync::Lazy;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

struct Entry {
    /// The questions the answer is for: a reload that changes them starts afresh.
    queries: Vec<Query>,
    targets: Option<Vec<TargetSpec>>,
    due: Instant,
    last_success: Option<SystemTime>,
    last_error: Option<String>,
}

static STATE: Mutex<BTreeMap<String, Entry>> = Mutex::new(BTreeMap::new());

struct Metrics {
    targets: IntGaugeVec,
    failures: IntCounterVec,
    last_success: IntGaugeVec,
}

static METRICS: Lazy<Metrics> = Lazy::new(|| {
    let r = &crate::metrics::METRICS.registry;
    let gauge = |name: &str, help: &str| {
        let g = IntGaugeVec::new(Opts::new(name, help), &["upstream"]).expect("static gauge definition");
        let _ = r.register(Box::new(g.clone()));
        g
    };
    let failures = IntCounterVec::new(
        Opts::new(
            "gatehouse_discovery_failures_total",
            "DNS rounds that failed (the last good targets kept)",
        ),
        &["upstream"],
    )
    .expect("static counter definition");
    let _ = r.register(Box::new(failures.clone()));
    Metrics {
        targets: gauge("gatehouse_discovery_targets", "Targets the last good DNS answer gave"),
        failures,
        last_success: gauge(
            "gatehouse_discovery_last_success_timestamp_seconds",
            "Unix time of the last DNS round that got an answer",
        ),
    }
});

fn state() -> std::sync::MutexGuard<'static, BTreeMap<String, Entry>> {
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

/// What `u` asks DNS; empty when every target is an address.
pub fn queries(u: &config::Upstream) -> Vec<Query> {
    let mut q: Vec<Query> = u.discovery.iter().cloned().map(Query::Table).collect();
    for t in &u.targets {
        if let Some((name, port)) = hostname_target(t.addr()) {
            q.push(Query::Host {
                name: name.to_string(),
                port,
                weight: t.weight(),
                priority: t.priority(),
            });
        }
    }
    q
}

/// Every upstream's questions, as the file declares them (before `apply`).
pub fn declared(file: &config::File) -> BTreeMap<String, Vec<Query>> {
    file.upstreams
        .iter()
        .map(|(n, u)| (n.clone(), queries(u)))
        .filter(|(_, q)| !q.is_empty())
        .collect()
}

/// Replaces the names in `file`'s upstreams by the addresses last discovered for them
/// (none yet: the upstream has only its literal addresses, perhaps none).
pub fn apply(file: &mut config::File) {
    let st = state();
    for (name, u) in file.upstreams.iter_mut() {
        let q = queries(u);
        if q.is_empty() {
            continue;
        }
        let mut targets: Vec<TargetSpec> = u.targets.iter().filter(|t| hostname_target(t.addr()).is_none()).cloned().collect();
        // A reload that changed the questions (TTL bounds, resolvers, weights) keeps the
        // last answer until the next round, due at once, replaces it: better than an
        // empty cluster meanwhile.
        if let Some(found) = st.get(name).and_then(|e| e.targets.as_ref()) {
            for t in found {
                if !targets.iter().any(|x| x.addr() == t.addr()) {
                    targets.push(t.clone());
                }
            }
        }
        u.targets = targets;
    }
}

/// One round for one upstream: every question answered, or the first failure.
async fn round(q: &[Query]) -> Result<(Vec<TargetSpec>, Instant), String> {
    let mut all = Vec::new();
    let mut expires = Instant::now() + Duration::from_secs(300);
    for one in q {
        let a = dns::ask(one).await?;
        expires = expires.min(a.expires);
        all.extend(a.targets);
    }
    // The same order for the same records, so an unchanged answer is seen as unchanged;
    // an address given twice keeps its lowest priority, then its largest weight.
    all.sort_by(|a, b| {
        (a.addr(), a.priority(), std::cmp::Reverse(a.weight())).cmp(&(b.addr(), b.priority(), std::cmp::Reverse(b.weight())))
    });
    all.dedup_by(|a, b| a.addr() == b.addr());
    Ok((all, expires))
}

fn bounds(q: &[Query]) -> (Duration, Duration) {
    q.iter()
        .map(|x| match x {
            Query::Table(d) => (d.min_ttl.0, d.max_ttl.0),
            Query::Host { .. } => dns::HOST_TTL,
        })
        .fold((Duration::ZERO, Duration::MAX), |(lo, hi), (a, b)| (lo.max(a), hi.min(b)))
}

/// `bounds` of questions whose ranges do not overlap (a table's 200ms-2s beside a host
/// target's 5s-300s): the upper bound wins over the lower, so a round is never later
/// than any question's `max_ttl`.
fn clamp_ttl(ttl: Duration, (lo, hi): (Duration, Duration)) -> Duration {
    ttl.max(lo.min(hi)).min(hi)
}

/// Resolves `name`'s questions once and records the outcome; whether the targets changed.
async fn refresh(name: &str, q: Vec<Query>) -> bool {
    let range = bounds(&q);
    let min_ttl = range.0.min(range.1);
    let result = round(&q).await;
    let now = Instant::now();
    let mut st = state();
    let e = st.entry(name.to_string()).or_insert_with(|| Entry {
        queries: q.clone(),
        targets: None,
        due: now,
        last_success: None,
        last_error: None,
    });
    // New questions keep the last answer until one of theirs succeeds.
    e.queries = q;
    match result {
        Ok((targets, expires)) => {
            let ttl = clamp_ttl(expires.saturating_duration_since(now), range);
            e.due = now + ttl;
            e.last_success = Some(SystemTime::now());
            e.last_error = None;
            METRICS.targets.with_label_values(&[name]).set(targets.len() as i64);
            let secs = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            METRICS.last_success.with_label_values(&[name]).set(secs as i64);
            let changed = e.targets.as_ref() != Some(&targets);
            if changed {
                log::info!("discovery: upstream {name} now has {} targets", targets.len());
            }
            e.targets = Some(targets);
            changed
        }
        Err(err) => {
            e.due = now + min_ttl;
            METRICS.failures.with_label_values(&[name]).inc();
            if e.last_error.as_deref() != Some(&err) {
                log::warn!("discovery: upstream {name}: {err}; keeping the last good targets");
            }
            e.last_error = Some(err);
            false
        }
    }
}

/// Before serving: one round for every upstream that needs one, so the first requests do
/// not meet empty clusters. Bounded by the resolver's timeouts.
pub fn prime(file: &config::File) {
    let todo = declared(file);
    if todo.is_empty() {
        return;
    }
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => {
            rt.block_on(async {
                for (name, q) in todo {
                    refresh(&name, q).await;
                }
            });
            dns::forget_resolvers();
        }
        Err(e) => log::error!("discovery: cannot start the first round: {e}"),
    }
}

/// For `/status`: per upstream, what was found and when.
pub fn status() -> serde_json::Value {
    let st = state();
    let now = Instant::now();
    serde_json::Value::Object(
        st.iter()
            .map(|(name, e)| {
                (
                    name.clone(),
                    serde_json::json!({
                        "targets": e.targets.as_ref().map(|t| t.iter().map(|x| x.addr().to_string()).collect::<Vec<_>>()),
                        "last_success": e.last_success.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                        "last_error": e.last_error,
                        "next_in_ms": e.due.saturating_duration_since(now).as_millis() as u64,
                    }),
                )
            })
            .collect(),
    )
}

pub struct DiscoveryService {
    pub live: Arc<Live>,
}

const TICK: Duration = Duration::from_millis(100);

#[async_trait]
impl BackgroundService for DiscoveryService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let snap = self.live.load();
            let now = Instant::now();
            let mut due = Vec::new();
            {
                let mut st = state();
                // Upstreams a reload removed are forgotten.
                st.retain(|name, _| snap.discovery.contains_key(name));
                for (name, q) in &snap.discovery {
                    match st.get(name) {
                        Some(e) if e.queries == *q && e.due > now => {}
                        _ => due.push((name.clone(), q.clone())),
                    }
                }
            }
            let mut changed = false;
            for (name, q) in due {
                changed |= refresh(&name, q).await;
            }
            if changed {
                let live = self.live.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || live.rediscover()).await {
                    log::error!("discovery: rebuilding the config failed: {e}");
                }
            }
        }
    }
}
