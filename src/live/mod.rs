//! The live config: one `ArcSwap<Snapshot>` read by every request (no lock), and the
//! reload procedure that replaces it.
//!
//! A reload parses and builds the new snapshot completely before the swap, so an invalid
//! file changes nothing and an in-flight request keeps the snapshot it started with.

use crate::config::{self, ConfigErrors};
use crate::metrics::METRICS;
use crate::snapshot::Snapshot;
use arc_swap::ArcSwap;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

mod fleet;
mod write;
pub use write::{WriteError, Written};

/// What `/status` shows about reloads.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ReloadStatus {
    pub last_attempt: Option<String>,
    pub last_error: Vec<String>,
    /// Changes in the file that only take effect after `gatehouse -u` (an upgrade).
    pub needs_upgrade: Vec<String>,
    pub reloads: u64,
}

pub struct Live {
    pub path: PathBuf,
    current: ArcSwap<Snapshot>,
    /// The sections the process was started with; changing them needs an upgrade.
    boot: config::File,
    /// Serializes reloads (SIGHUP, admin, file watch), config writes and rediscovery.
    serial: Mutex<()>,
    /// What /status reports; held only to copy or update it, so a slow reload never
    /// blocks a status read.
    status: Mutex<ReloadStatus>,
    /// FNV-1a of the main file's text the serving snapshot was built from: a config write
    /// refuses to carry along edits of the file that were not reloaded.
    main_seen: Mutex<String>,
    /// The ACME certificate and open challenges (outside the snapshot: reloads keep them).
    pub acme: Arc<crate::acme::AcmeState>,
    /// Fleet mode: the node text and the shared revision the serving config joins.
    fleet: Mutex<Option<crate::fleet::FleetText>>,
}

#[derive(Debug, Serialize)]
pub struct Reloaded {
    pub hash: String,
    pub changed: bool,
    pub needs_upgrade: Vec<String>,
}

impl Live {
    pub fn new(path: &Path, text: &str, file: config::File) -> Result<Live, ConfigErrors> {
        let snap = Snapshot::build(file.clone(), text, &path.display().to_string(), None)?;
        Ok(Live {
            path: path.to_path_buf(),
            current: ArcSwap::from_pointee(snap),
            serial: Mutex::new(()),
            status: Mutex::new(ReloadStatus::default()),
            main_seen: Mutex::new(main_hash(path)),
            acme: Arc::new(crate::acme::AcmeState::new(file.tls.acme.is_some())),
            boot: file,
            fleet: Mutex::new(None),
        })
    }

    /// The snapshot a request should use from start to end.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn boot(&self) -> &config::File {
        &self.boot
    }

    pub fn status(&self) -> ReloadStatus {
        lock(&self.status).clone()
    }

    /// Re-reads the file and swaps in the new snapshot, or changes nothing and says why.
    pub fn reload(&self) -> Result<Reloaded, Vec<String>> {
        let _serial = lock(&self.serial);
        let result = self.try_reload();
        let mut status = lock(&self.status);
        status.last_attempt = Some(humantime::format_rfc3339_seconds(SystemTime::now()).to_string());
        match &result {
            Ok(r) => {
                status.last_error.clear();
                status.needs_upgrade = r.needs_upgrade.clone();
                status.reloads += 1;
                METRICS.reloads.with_label_values(&["ok"]).inc();
                crate::alerts::reload_result(None);
                log::info!(
                    "config reloaded from {} (hash {}, changed: {})",
                    self.path.display(),
                    r.hash,
                    r.changed
                );
                for n in &r.needs_upgrade {
                    log::warn!("config change needs an upgrade (gatehouse -u) to take effect: {n}");
                }
            }
            Err(errors) => {
                status.last_error = errors.clone();
                METRICS.reloads.with_label_values(&["error"]).inc();
                crate::alerts::reload_result(Some(&errors.join("; ")));
                for e in errors {
                    log::error!("config reload refused, still serving the previous config: {e}");
                }
            }
        }
        result
    }

    fn try_reload(&self) -> Result<Reloaded, Vec<String>> {
        let name = self.path.display().to_string();
        let node_text = std::fs::read_to_string(&self.path).map_err(|e| vec![format!("{name}: cannot read file: {e}")])?;
        let main_seen = text_hash(&node_text);
        let fleet = lock(&self.fleet).clone();
        let (file, text) = match &fleet {
            // The node file re-read, joined to the shared revision serving now.
            Some(f) => {
                config::source::compose(&name, &node_text, &self.shared_name(f.shared.revision), &f.shared.text).map_err(errors_of)?
            }
            None => {
                let text = config::managed::effective(&self.path, &node_text).map_err(errors_of)?.text;
                (config::parse_str(&name, &text).map_err(errors_of)?, text)
            }
        };
        let current = self.current.load_full();
        let changed = current.material != crate::snapshot::material_digest(&file, &text);
        let needs_upgrade = needs_upgrade(&self.boot, &file);
        if changed {
            let snap = Snapshot::build(file, &text, &name, Some(&current)).map_err(errors_of)?;
            crate::logging::set_level(&snap.file.log.level);
            self.current.store(Arc::new(snap));
        }
        *lock(&self.main_seen) = main_seen;
        if let Some(f) = lock(&self.fleet).as_mut() {
            f.node_text = node_text;
        }
        self.retry_refused();
        Ok(Reloaded {
            hash: self.current.load().hash.clone(),
            changed,
            needs_upgrade,
        })
    }
}

/// A lock that outlives a panic of its holder: what it guards stays consistent (every
/// holder writes whole values).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn errors_of(e: ConfigErrors) -> Vec<String> {
    e.0.iter().map(|x| x.to_string()).collect()
}

fn text_hash(text: &str) -> String {
    crate::snapshot::text_hash(text)
}

fn main_hash(path: &Path) -> String {
    std::fs::read_to_string(path).map(|t| text_hash(&t)).unwrap_or_default()
}

/// Sections that are bound at start (sockets, threads, paths): a reload cannot apply them,
/// so it names them instead of ignoring them silently.
fn needs_upgrade(boot: &config::File, new: &config::File) -> Vec<String> {
    let mut out = Vec::new();
    if boot.listeners != new.listeners {
        out.push("listeners".to_string());
    }
    if boot.cache != new.cache {
        out.push("cache".to_string());
    }
    if boot.metering != new.metering {
        out.push("metering".to_string());
    }
    if boot.config_source != new.config_source {
        out.push("config_source".to_string());
    }
    if boot.store != new.store {
        out.push("store".to_string());
    }
    if boot.tls.acme != new.tls.acme {
        out.push("tls.acme".to_string());
    }
    if boot.admin.as_ref().map(|a| &a.addr) != new.admin.as_ref().map(|a| &a.addr) {
        out.push("admin.addr".to_string());
    }
    let (b, n) = (&boot.server, &new.server);
    let fields: [(&str, bool); 16] = [
        ("server.threads", b.threads != n.threads),
        ("server.pid_file", b.pid_file != n.pid_file),
        ("server.upgrade_sock", b.upgrade_sock != n.upgrade_sock),
        ("server.grace_period", b.grace_period != n.grace_period),
        (
            "server.graceful_shutdown_timeout",
            b.graceful_shutdown_timeout != n.graceful_shutdown_timeout,
        ),
        ("server.header_timeout", b.header_timeout != n.header_timeout),
        ("server.keepalive_timeout", b.keepalive_timeout != n.keepalive_timeout),
        ("server.max_header_size", b.max_header_size != n.max_header_size),
        ("server.max_headers", b.max_headers != n.max_headers),
        ("server.max_uri", b.max_uri != n.max_uri),
        ("server.max_connections", b.max_connections != n.max_connections),
        (
            "server.max_connections_per_ip",
            b.max_connections_per_ip != n.max_connections_per_ip,
        ),
        ("server.read_buffer", b.read_buffer != n.read_buffer),
        ("server.keepalive_requests", b.keepalive_requests != n.keepalive_requests),
        ("server.user/group", b.user != n.user || b.group != n.group),
        ("server.watch_config", b.watch_config != n.watch_config),
    ];
    out.extend(fields.iter().filter(|(_, c)| *c).map(|(k, _)| k.to_string()));
    out
}
