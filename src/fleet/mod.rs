//! Fleet mode: every node watches one etcd key holding the shared config, and applies each
//! new revision through the same build as a hot reload.
//!
//! A revision that does not validate is refused on the node (the old config keeps
//! serving, `/status` and a metric name the refused revision); etcd unreachable keeps the
//! last good config and reconnects with backoff; a start with etcd down serves the last
//! good revision cached on disk, or refuses to start.

pub mod cache;
pub mod etcd;
pub mod push;

use crate::config::source::ConfigSourceCfg;
use crate::config::{self, File};
use crate::live::Live;
use async_trait::async_trait;
use etcd::Revision;
use once_cell::sync::Lazy;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use prometheus::{IntCounter, IntGauge};
use serde::Serialize;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// The two halves of a fleet node's config as last applied.
#[derive(Debug, Clone)]
pub struct FleetText {
    pub node_text: String,
    pub shared: Revision,
}

/// How the shared document is named in errors and logs.
pub fn shared_name(key: &str, revision: i64) -> String {
    format!("etcd:{key}@{revision}")
}

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
}

static STATUS: Mutex<Option<FleetStatus>> = Mutex::new(None);

fn status_mut() -> std::sync::MutexGuard<'static, Option<FleetStatus>> {
    STATUS.lock().unwrap_or_else(|p| p.into_inner())
}

fn update(f: impl FnOnce(&mut FleetStatus)) {
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

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn applied(rev: i64, from: &'static str) {
    METRICS.revision.set(rev);
    update(|s| {
        s.applied_revision = Some(rev);
        s.applied_from = Some(from);
        s.applied_at = Some(now());
        if s.refused_revision.is_some_and(|r| r <= rev) {
            s.refused_revision = None;
            s.refused_errors.clear();
        }
    });
}

fn refused(rev: i64, errors: Vec<String>) {
    METRICS.refused.inc();
    METRICS.refused_revision.set(rev);
    for e in &errors {
        log::error!("config_source: revision {rev} refused, still serving the previous config: {e}");
    }
    update(|s| {
        s.refused_revision = Some(rev);
        s.refused_errors = errors;
    });
}

fn connected(up: bool, error: Option<String>) {
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

/// The config a fleet node starts with.
pub struct Started {
    pub file: File,
    pub text: String,
    pub fleet: FleetText,
    /// Why the node starts from its cache, for the log once it is set up.
    pub warning: Option<String>,
}

/// Reads the shared document (or, with etcd down or the document refused, the cache) and
/// joins it to the node file. An error says why the node cannot start.
pub fn start(node_name: &str, node_text: &str, cfg: &ConfigSourceCfg) -> Result<Started, String> {
    *status_mut() = Some(FleetStatus {
        key: cfg.key.clone(),
        endpoints: cfg.endpoints.clone(),
        ..Default::default()
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("config_source: cannot start a runtime to read etcd: {e}"))?;
    let fetched = rt.block_on(etcd::fetch(cfg));
    drop(rt);
    let compose = |rev: &Revision| config::source::compose(node_name, node_text, &shared_name(&cfg.key, rev.revision), &rev.text);
    let why = match fetched {
        Ok(Some(rev)) => match compose(&rev) {
            Ok((file, text)) => {
                save_cache(cfg, &rev);
                connected(true, None);
                applied(rev.revision, "etcd");
                return Ok(started(file, text, node_text, rev));
            }
            Err(errors) => {
                let list: Vec<String> = errors.0.iter().map(|e| e.to_string()).collect();
                refused(rev.revision, list);
                format!("revision {} of etcd key {} is refused:\n{errors}", rev.revision, cfg.key)
            }
        },
        Ok(None) => format!(
            "etcd key {} does not exist: push the shared config first (gatehouse config push)",
            cfg.key
        ),
        Err(e) => {
            connected(false, Some(e.clone()));
            e
        }
    };
    let Some(path) = &cfg.cache else {
        return Err(format!(
            "{why}\nconfig_source.cache is not set, so there is no last good config to start from"
        ));
    };
    let cached = match cache::read(Path::new(path), &cfg.key) {
        Ok(Some(rev)) => rev,
        Ok(None) => return Err(format!("{why}\nno last good config is cached at {path} (config_source.cache)")),
        Err(e) => return Err(format!("{why}\n{e}")),
    };
    match compose(&cached) {
        Ok((file, text)) => {
            let warning = format!("config_source: {why}; serving revision {} from the cache {path}", cached.revision);
            applied(cached.revision, "cache");
            let mut s = started(file, text, node_text, cached);
            s.warning = Some(warning);
            Ok(s)
        }
        Err(errors) => Err(format!(
            "{why}\nthe cached revision {} in {path} is refused too:\n{errors}",
            cached.revision
        )),
    }
}

fn started(file: File, text: String, node_text: &str, shared: Revision) -> Started {
    Started {
        file,
        text,
        fleet: FleetText {
            node_text: node_text.to_string(),
            shared,
        },
        warning: None,
    }
}

fn save_cache(cfg: &ConfigSourceCfg, rev: &Revision) {
    if let Some(path) = &cfg.cache {
        if let Err(e) = cache::write(Path::new(path), &cfg.key, rev) {
            log::error!("config_source: {e}");
        }
    }
}

/// Watches the key for the node's life, applying each new revision.
pub struct FleetService {
    pub live: Arc<Live>,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(200);

#[async_trait]
impl BackgroundService for FleetService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(cfg) = self.live.boot().config_source.clone() else {
            return;
        };
        let mut backoff = FIRST_BACKOFF;
        loop {
            let err = tokio::select! {
                _ = shutdown.changed() => return,
                e = self.session(&cfg, &mut backoff) => e,
            };
            log::warn!("config_source: {err}; serving the last good config, reconnecting");
            connected(false, Some(err));
            // Jitter keeps a fleet from reconnecting in step after an etcd restart.
            let wait = backoff.mul_f64(0.5 + fastrand::f64() * 0.5);
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            backoff = (backoff * 2).min(cfg.max_backoff.0);
        }
    }
}

impl FleetService {
    /// One connection: read the key, then follow its changes from that point until the
    /// connection fails. Returns why it ended.
    async fn session(&self, cfg: &ConfigSourceCfg, backoff: &mut Duration) -> String {
        let mut client = match etcd::connect(cfg).await {
            Ok(c) => c,
            Err(e) => return e,
        };
        let read = match etcd::read(&mut client, &cfg.key).await {
            Ok(r) => r,
            Err(e) => return e,
        };
        connected(true, None);
        *backoff = FIRST_BACKOFF;
        match read.value {
            Some(rev) => self.offer(cfg, rev).await,
            None => self.deleted(cfg, read.header_revision),
        }
        let opts = etcd_client::WatchOptions::new().with_start_revision(read.header_revision + 1);
        let mut stream = match client.watch(cfg.key.as_str(), Some(opts)).await {
            Ok(s) => s,
            Err(e) => return format!("cannot watch etcd key {}: {e}", cfg.key),
        };
        loop {
            let msg = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => return "etcd closed the watch stream".into(),
                Err(e) => return format!("the watch on etcd key {} failed: {e}", cfg.key),
            };
            if msg.canceled() {
                // Compacted past our revision: the next session reads the key afresh.
                return format!(
                    "etcd cancelled the watch on {} ({}; compacted at {})",
                    cfg.key,
                    msg.cancel_reason(),
                    msg.compact_revision()
                );
            }
            update(|s| s.last_contact = Some(now()));
            // Only the newest event of a batch matters: each is the whole document.
            let Some(ev) = msg.events().last() else { continue };
            let Some(kv) = ev.kv() else { continue };
            match ev.event_type() {
                etcd_client::EventType::Put => match etcd::revision_of(&cfg.key, kv) {
                    Ok(rev) => self.offer(cfg, rev).await,
                    Err(e) => refused(kv.mod_revision(), vec![e]),
                },
                etcd_client::EventType::Delete => self.deleted(cfg, kv.mod_revision()),
            }
        }
    }

    /// Applies a revision unless it is the one serving.
    async fn offer(&self, cfg: &ConfigSourceCfg, rev: Revision) {
        // The one serving, or one refused already (after a reconnect): nothing to do.
        if self.live.fleet_revision() == Some(rev.revision) {
            // A start from the cache that etcd now confirms is etcd's revision.
            update(|s| s.applied_from = Some("etcd"));
            return;
        }
        if status().and_then(|s| s.refused_revision) == Some(rev.revision) {
            return;
        }
        let live = self.live.clone();
        let r = rev.clone();
        match tokio::task::spawn_blocking(move || live.apply_shared(r)).await {
            Ok(Ok(())) => {
                log::info!("config_source: applied revision {} of etcd key {}", rev.revision, cfg.key);
                applied(rev.revision, "etcd");
                let cfg = cfg.clone();
                let _ = tokio::task::spawn_blocking(move || save_cache(&cfg, &rev)).await;
            }
            Ok(Err(errors)) => refused(rev.revision, errors),
            Err(e) => refused(rev.revision, vec![format!("applying it failed: {e}")]),
        }
    }

    /// A deleted key is never taken as "no routes": the fleet keeps serving.
    fn deleted(&self, cfg: &ConfigSourceCfg, at: i64) {
        refused(
            at,
            vec![format!(
                "etcd key {} does not exist (deleted or never pushed): keeping the config serving now",
                cfg.key
            )],
        );
    }
}
