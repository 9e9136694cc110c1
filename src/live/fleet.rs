//! Fleet mode's changes to the live config: a new shared revision from etcd, and a reload
//! trying again a revision this node refused.

use super::{errors_of, lock, needs_upgrade, Live};
use crate::config::{self, ConfigErrors};
use crate::fleet::etcd::Revision;
use crate::fleet::FleetText;
use crate::metrics::METRICS;
use crate::snapshot::Snapshot;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

impl Live {
    /// A fleet node's live config: `text` joins `fleet`'s two documents.
    pub fn with_fleet(path: &Path, text: &str, file: config::File, fleet: FleetText) -> Result<Live, ConfigErrors> {
        let live = Live::new(path, text, file)?;
        *lock(&live.fleet) = Some(fleet);
        Ok(live)
    }

    /// The shared revision serving now, in fleet mode.
    pub fn fleet_revision(&self) -> Option<i64> {
        lock(&self.fleet).as_ref().map(|f| f.shared.revision)
    }

    /// The newest shared revision this node refused and has not applied since.
    pub fn fleet_refused_revision(&self) -> Option<i64> {
        lock(&self.fleet).as_ref().and_then(|f| f.refused.as_ref().map(|r| r.revision))
    }

    pub(super) fn shared_name(&self, revision: i64) -> String {
        let key = self.boot.config_source.as_ref().map(|c| c.key.as_str()).unwrap_or("");
        crate::fleet::shared_name(key, revision)
    }

    /// Applies a new revision of the shared document: joined to the node text last loaded
    /// (an unreloaded edit of the node file is not carried along) and built as a reload
    /// builds, under the same lock. An error changes nothing but the refused mark.
    pub fn apply_shared(&self, shared: Revision) -> Result<(), Vec<String>> {
        let _serial = lock(&self.serial);
        self.apply_shared_locked(shared)?;
        let mut status = lock(&self.status);
        status.reloads += 1;
        status.last_attempt = Some(humantime::format_rfc3339_seconds(SystemTime::now()).to_string());
        METRICS.reloads.with_label_values(&["ok"]).inc();
        Ok(())
    }

    /// [`Live::apply_shared`] with the reload lock held by the caller.
    fn apply_shared_locked(&self, shared: Revision) -> Result<(), Vec<String>> {
        let Some(node_text) = lock(&self.fleet).as_ref().map(|f| f.node_text.clone()) else {
            return Err(vec!["this node is not in fleet mode (no [config_source])".into()]);
        };
        match self.build_shared(&node_text, &shared) {
            Ok(needs) => {
                for n in &needs {
                    log::warn!("config change needs an upgrade (gatehouse -u) to take effect: {n}");
                }
                lock(&self.status).needs_upgrade = needs;
                if let Some(f) = lock(&self.fleet).as_mut() {
                    f.shared = shared;
                    f.refused = None;
                }
                Ok(())
            }
            Err(errors) => {
                if let Some(f) = lock(&self.fleet).as_mut() {
                    f.refused = Some(shared);
                }
                Err(errors)
            }
        }
    }

    fn build_shared(&self, node_text: &str, shared: &Revision) -> Result<Vec<String>, Vec<String>> {
        let name = self.path.display().to_string();
        let shared_name = self.shared_name(shared.revision);
        let (file, text) = config::source::compose(&name, node_text, &shared_name, &shared.text).map_err(errors_of)?;
        let current = self.current.load_full();
        let needs = needs_upgrade(&self.boot, &file);
        if current.material != crate::snapshot::material_digest(&file, &text) {
            let snap = Snapshot::build(file, &text, &name, Some(&current)).map_err(|mut e| {
                config::source::attribute(&mut e, &shared.text, &shared_name);
                errors_of(e)
            })?;
            crate::logging::set_level(&snap.file.log.level);
            self.current.store(Arc::new(snap));
        }
        Ok(needs)
    }

    /// After a reload of the node file: the revision refused last may have failed because
    /// of the node file, so it is tried again.
    pub(super) fn retry_refused(&self) {
        let Some(rev) = lock(&self.fleet).as_ref().and_then(|f| f.refused.clone()) else {
            return;
        };
        let revision = rev.revision;
        match self.apply_shared_locked(rev.clone()) {
            Ok(()) => {
                log::info!("config_source: revision {revision}, refused before, applies with the reloaded node file");
                crate::fleet::applied(revision, "etcd");
                if let Some(cfg) = &self.boot.config_source {
                    crate::fleet::save_cache(cfg, &rev);
                }
            }
            Err(errors) => crate::fleet::refused(revision, errors),
        }
    }
}
