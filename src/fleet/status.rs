//! What `/status` and the metrics say about the shared config: the revision serving, the
//! one refused, and the connection to etcd.

use once_cell::sync::Lazy;
use prometheus::{IntCounter, IntGauge};
use serde::Serialize;
use std::sync::Mutex;
use std::time::SystemTime;

/// What `/status` shows under `config_source`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct FleetStatus {
    pub key: String,
    pub endpoints: Vec<String>,
    pub connected: bool,
    /// The shared revision serving now, and where it came from (`etcd` or `cache`).
    pub applied_revision: Option<i64>,
    pub applied_from: Option<&'static str>,
    pub applied_at: Option<String>,
    /// The newest revision this node refused, and why; cleared when a later one applies.
    pub refused_revision: Option<i64>,
    pub refused_errors: Vec<String>,
    /// Why the connection to etcd is down, while it is.
    pub last_error: Option<String>,
    pub last_contact: Option<String>,
    pub reconnects: u64,
    /// The last cache write failed: a start with etcd down would use an older revision.
    pub cache_error: Option<String>,
    /// The refusal is of a deleted key (counted once, however often it is read again).
    #[serde(skip)]
    pub(super) deleted: bool,
}

pub(super) static STATUS: Mutex<Option<FleetStatus>> = Mutex::new(None);

pub(super) fn status_mut() -> std::sync::MutexGuard<'static, Option<FleetStatus>> {
    STATUS.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn update(f: impl FnOnce(&mut FleetStatus)) {
    if let Some(s) = status_mut().as_mut() {
        f(s)
    }
}

/// `None` unless the node runs in fleet mode.
pub fn status() -> Option<FleetStatus> {
    status_mut().clone()
}

struct Metrics {
    revision: IntGauge,
    refused_revision: IntGauge,
    refused: IntCounter,
    connected: IntGauge,
}

static METRICS: Lazy<Metrics> = Lazy::new(|| {
    let r = &crate::metrics::METRICS.registry;
    let gauge = |name: &str, help: &str| {
        let g = IntGauge::new(name, help).expect("static gauge definition");
        let _ = r.register(Box::new(g.clone()));
        g
    };
    let refused = IntCounter::new(
        "gatehouse_config_source_refused_total",
        "Shared config revisions from etcd this node refused (the previous one kept serving)",
    )
    .expect("static counter definition");
    let _ = r.register(Box::new(refused.clone()));
    Metrics {
        revision: gauge(
            "gatehouse_config_source_revision",
            "The etcd revision of the shared config serving now",
        ),
        refused_revision: gauge(
            "gatehouse_config_source_refused_revision",
            "The newest etcd revision of the shared config this node refused (0: none)",
        ),
        refused,
        connected: gauge("gatehouse_config_source_connected", "1 while the watch on the etcd key is up"),
    }
});

pub(super) fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

pub fn applied(rev: i64, from: &'static str) {
    METRICS.revision.set(rev);
    update(|s| {
        s.applied_revision = Some(rev);
        s.applied_from = Some(from);
        s.applied_at = Some(now());
        if s.refused_revision.is_some_and(|r| r <= rev) {
            s.refused_revision = None;
            s.refused_errors.clear();
            s.deleted = false;
            METRICS.refused_revision.set(0);
        }
    });
}

pub fn refused(rev: i64, errors: Vec<String>) {
    METRICS.refused.inc();
    METRICS.refused_revision.set(rev);
    for e in &errors {
        log::error!("config_source: revision {rev} refused, still serving the previous config: {e}");
    }
    update(|s| {
        s.refused_revision = Some(rev);
        s.refused_errors = errors;
        s.deleted = false;
    });
}

/// A deleted (or never pushed) key: refused once until a revision applies.
pub(super) fn refused_deletion(rev: i64, key: &str) {
    if status().is_some_and(|s| s.deleted) {
        return;
    }
    refused(
        rev,
        vec![format!(
            "etcd key {key} does not exist (deleted or never pushed): keeping the config serving now"
        )],
    );
    update(|s| s.deleted = true);
}

pub(super) fn connected(up: bool, error: Option<String>) {
    METRICS.connected.set(up as i64);
    update(|s| {
        if s.connected && !up {
            s.reconnects += 1;
        }
        s.connected = up;
        s.last_error = error;
        if up {
            s.last_contact = Some(now());
        }
    });
}
