//! Changes to the live config that do not come from editing the file: config writes of
//! the admin API (into the managed file) and target sets found by DNS discovery.

use super::{lock, text_hash, Live};
use crate::config;
use crate::metrics::METRICS;
use crate::snapshot::Snapshot;
use std::sync::Arc;
use std::time::SystemTime;

/// Why a config write changed nothing.
#[derive(Debug)]
pub enum WriteError {
    /// `admin.managed` is not set: there is nowhere to persist a write.
    NoManaged,
    /// The `If-Match` ETag is not the serving config's; holds the current one.
    Stale(String),
    /// The edit cannot be made (names no entry, cannot become TOML, the files changed
    /// underneath): the status to answer and why.
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
    /// Rebuilds the live snapshot from its own text after DNS discovery changed a target
    /// set: the same build as a reload (clusters that stay are reused, targets that stay
    /// keep their state), under the same lock.
    pub fn rediscover(&self) {
        let _serial = lock(&self.serial);
        let current = self.current.load_full();
        let name = self.path.display().to_string();
        let built = config::parse_str(&name, &current.text).and_then(|file| Snapshot::build(file, &current.text, &name, Some(&current)));
        match built {
            Ok(snap) => self.current.store(Arc::new(snap)),
            Err(e) => log::error!("discovery: the new targets are not applied, the config no longer builds: {e}"),
        }
    }

    /// Applies `edit` to the managed file and swaps in the result, or changes nothing.
    ///
    /// Runs under the reload lock, so a write and a reload never interleave. The new
    /// config is built completely (the same parse, validation and snapshot build as a
    /// reload); then `commit` runs (the audit record: a write that cannot be recorded is
    /// not made), the managed file is replaced atomically and the snapshot swapped. A
    /// main file edited since the last reload refuses the write (409): the write would
    /// otherwise apply those edits unseen.
    pub fn write_managed(
        &self,
        if_match: Option<&str>,
        dry_run: bool,
        edit: impl FnOnce(&mut toml_edit::DocumentMut, &toml::Table) -> Result<(), WriteError>,
        commit: impl FnOnce(&Written) -> Result<(), WriteError>,
    ) -> Result<Written, WriteError> {
        let _serial = lock(&self.serial);
        if self.boot.config_source.is_some() {
            return Err(WriteError::Edit(
                409,
                "this node's routes, upstreams, consumers and plugins come from etcd ([config_source]): change them with `gatehouse config push`".into(),
            ));
        }
        let before = self.current.load_full();
        if let Some(tag) = if_match {
            if tag != before.hash {
                return Err(WriteError::Stale(before.hash.clone()));
            }
        }
        let name = self.path.display().to_string();
        let bad = |reason: String| WriteError::Invalid(vec![config::ConfigError::new(&name, "", reason)]);
        let main_text = std::fs::read_to_string(&self.path).map_err(|e| bad(format!("cannot read file: {e}")))?;
        if text_hash(&main_text) != *lock(&self.main_seen) {
            return Err(WriteError::Edit(
                409,
                format!("{name} changed since it was last loaded: reload first (POST /reload), then write"),
            ));
        }
        let main: toml::Table = main_text.parse().map_err(|e: toml::de::Error| bad(e.message().to_string()))?;
        let path = config::managed::managed_path(&self.path, &main).ok_or(WriteError::NoManaged)?;
        let shown = path.display().to_string();
        let old = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(WriteError::Io(format!("{shown}: {e}"))),
        };
        // The managed file as it serves: one edited by hand since the last load would
        // otherwise come along unseen, as the main file would.
        let serving = config::managed::merged_text(&main_text, main.clone(), &path, &old).map_err(|e| WriteError::Invalid(e.0))?;
        if text_hash(&serving) != before.hash {
            return Err(WriteError::Edit(
                409,
                format!("{shown} changed since it was last loaded: reload first (POST /reload), then write"),
            ));
        }
        let mut doc: toml_edit::DocumentMut = old
            .parse()
            .map_err(|e| WriteError::Invalid(vec![config::ConfigError::new(&shown, "", format!("{e}"))]))?;
        edit(&mut doc, &main)?;
        let managed_text = doc.to_string();
        if managed_text == old && !dry_run {
            return Err(WriteError::Edit(409, "the write changes nothing in the managed file".into()));
        }
        let text = config::managed::merged_text(&main_text, main, &path, &managed_text).map_err(|e| WriteError::Invalid(e.0))?;
        let file = config::parse_str(&name, &text).map_err(|e| WriteError::Invalid(e.0))?;
        let snap = Snapshot::build(file, &text, &name, Some(&before)).map_err(|e| WriteError::Invalid(e.0))?;
        let written = Written {
            before,
            text,
            hash: snap.hash.clone(),
        };
        if dry_run {
            return Ok(written);
        }
        commit(&written)?;
        config::managed::write_atomic(&path, &managed_text).map_err(|e| WriteError::Io(format!("{shown}: {e}")))?;
        crate::logging::set_level(&snap.file.log.level);
        self.current.store(Arc::new(snap));
        let mut status = lock(&self.status);
        status.last_attempt = Some(humantime::format_rfc3339_seconds(SystemTime::now()).to_string());
        status.last_error.clear();
        status.reloads += 1;
        METRICS.reloads.with_label_values(&["ok"]).inc();
        log::info!(
            "config changed through the admin API (hash {} -> {}), written to {shown}",
            written.before.hash,
            written.hash
        );
        Ok(written)
    }
}
