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
    /// Serializes reloads (SIGHUP, admin, file watch) and holds what /status reports.
    status: Mutex<ReloadStatus>,
    /// The ACME certificate and open challenges (outside the snapshot: reloads keep them).
    pub acme: Arc<crate::acme::AcmeState>,
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
            status: Mutex::new(ReloadStatus::default()),
            acme: Arc::new(crate::acme::AcmeState::new(file.tls.acme.is_some())),
            boot: file,
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
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Re-reads the file and swaps in the new snapshot, or changes nothing and says why.
    pub fn reload(&self) -> Result<Reloaded, Vec<String>> {
        let mut status = match self.status.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        status.last_attempt = Some(humantime::format_rfc3339_seconds(SystemTime::now()).to_string());
        let result = self.try_reload();
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
        let text = std::fs::read_to_string(&self.path).map_err(|e| vec![format!("{name}: cannot read file: {e}")])?;
        let text = config::managed::effective(&self.path, &text)
            .map_err(|e| e.0.iter().map(|x| x.to_string()).collect::<Vec<_>>())?
            .text;
        let file = config::parse_str(&name, &text).map_err(|e| e.0.iter().map(|x| x.to_string()).collect::<Vec<_>>())?;
        let current = self.current.load_full();
        let changed = current.material != crate::snapshot::material_digest(&file, &text);
        let needs_upgrade = needs_upgrade(&self.boot, &file);
        if changed {
            let snap =
                Snapshot::build(file, &text, &name, Some(&current)).map_err(|e| e.0.iter().map(|x| x.to_string()).collect::<Vec<_>>())?;
            crate::logging::set_level(&snap.file.log.level);
            self.current.store(Arc::new(snap));
        }
        Ok(Reloaded {
            hash: self.current.load().hash.clone(),
            changed,
            needs_upgrade,
        })
    }
}

impl Live {
    /// Rebuilds the live snapshot from its own text after DNS discovery changed a target
    /// set: the same build as a reload (clusters that stay are reused, targets that stay
    /// keep their state), under the same lock.
    pub fn rediscover(&self) {
        let _status = match self.status.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let current = self.current.load_full();
        let name = self.path.display().to_string();
        let built = config::parse_str(&name, &current.text).and_then(|file| Snapshot::build(file, &current.text, &name, Some(&current)));
        match built {
            Ok(snap) => self.current.store(Arc::new(snap)),
            Err(e) => log::error!("discovery: the new targets are not applied, the config no longer builds: {e}"),
        }
    }
}

/// Why a config write changed nothing.
#[derive(Debug)]
pub enum WriteError {
    /// `admin.managed` is not set: there is nowhere to persist a write.
    NoManaged,
    /// The `If-Match` ETag is not the serving config's; holds the current one.
    Stale(String),
    /// The edit itself is malformed (names no entry, or cannot become TOML).
    Edit(u16, String),
    /// The config the write would make is refused, as `-t` would refuse it.
    Invalid(Vec<config::ConfigError>),
    Io(String),
}

/// A config write that was applied (or, for a dry run, would be).
pub struct Written {
    pub before: Arc<Snapshot>,
    /// The effective text after the write.
    pub text: String,
    pub hash: String,
}

impl Live {
    /// Applies `edit` to the managed file and swaps in the result, or changes nothing.
    ///
    /// Runs under the reload lock, so a write and a reload never interleave. The new
    /// config is built completely (the same parse, validation and snapshot build as a
    /// reload) before the managed file is replaced atomically and the snapshot swapped.
    /// The main file is read afresh: an edit not yet reloaded there takes effect too,
    /// as it would with a reload.
    pub fn write_managed(
        &self,
        if_match: Option<&str>,
        dry_run: bool,
        edit: impl FnOnce(&mut toml_edit::DocumentMut, &toml::Table) -> Result<(), WriteError>,
    ) -> Result<Written, WriteError> {
        let mut status = match self.status.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let before = self.current.load_full();
        if let Some(tag) = if_match {
            if tag != before.hash {
                return Err(WriteError::Stale(before.hash.clone()));
            }
        }
        let name = self.path.display().to_string();
        let bad = |reason: String| WriteError::Invalid(vec![config::ConfigError::new(&name, "", reason)]);
        let main_text = std::fs::read_to_string(&self.path).map_err(|e| bad(format!("cannot read file: {e}")))?;
        let main: toml::Table = main_text.parse().map_err(|e: toml::de::Error| bad(e.message().to_string()))?;
        let path = config::managed::managed_path(&self.path, &main).ok_or(WriteError::NoManaged)?;
        let old = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(WriteError::Io(format!("{}: {e}", path.display()))),
        };
        let mut doc: toml_edit::DocumentMut = old
            .parse()
            .map_err(|e| WriteError::Invalid(vec![config::ConfigError::new(&path.display().to_string(), "", format!("{e}"))]))?;
        edit(&mut doc, &main)?;
        let managed_text = doc.to_string();
        let text = config::managed::merged_text(&main_text, main, &path, &managed_text).map_err(|e| WriteError::Invalid(e.0))?;
        let file = config::parse_str(&name, &text).map_err(|e| WriteError::Invalid(e.0))?;
        let snap = Snapshot::build(file, &text, &name, Some(&before)).map_err(|e| WriteError::Invalid(e.0))?;
        let hash = snap.hash.clone();
        if dry_run {
            return Ok(Written { before, text, hash });
        }
        config::managed::write_atomic(&path, &managed_text).map_err(|e| WriteError::Io(format!("{}: {e}", path.display())))?;
        crate::logging::set_level(&snap.file.log.level);
        self.current.store(Arc::new(snap));
        status.last_attempt = Some(humantime::format_rfc3339_seconds(SystemTime::now()).to_string());
        status.last_error.clear();
        status.reloads += 1;
        METRICS.reloads.with_label_values(&["ok"]).inc();
        log::info!(
            "config changed through the admin API (hash {} -> {hash}), written to {}",
            before.hash,
            path.display()
        );
        Ok(Written { before, text, hash })
    }
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
