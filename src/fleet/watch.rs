//! The background task that follows the key for the node's life.

use super::etcd::{self, Revision};
use super::save_cache;
use super::status::{applied, connected, now, refused, refused_deletion, update};
use crate::config::source::ConfigSourceCfg;
use crate::live::Live;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;

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
        let at = read.header_revision;
        self.take(cfg, read).await;
        // From the revision after the read: nothing written in between is missed. Progress
        // notifications keep `last_contact` fresh on a quiet key.
        let opts = etcd_client::WatchOptions::new().with_start_revision(at + 1).with_progress_notify();
        let mut stream = match client.watch(cfg.key.as_str(), Some(opts)).await {
            Ok(s) => s,
            Err(e) => return format!("cannot watch etcd key {}: {}", cfg.key, etcd::chain(&e)),
        };
        *backoff = FIRST_BACKOFF;
        loop {
            let msg = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => return "etcd closed the watch stream".into(),
                Err(e) => return format!("the watch on etcd key {} failed: {}", cfg.key, etcd::chain(&e)),
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
            if msg.events().is_empty() {
                continue;
            }
            // Whatever the events were, the key as it is now is what counts: read it again
            // (each value is the whole document, and no event type needs decoding).
            match etcd::read(&mut client, &cfg.key).await {
                Ok(r) => self.take(cfg, r).await,
                Err(e) => return e,
            }
        }
    }

    async fn take(&self, cfg: &ConfigSourceCfg, read: etcd::Read) {
        match read.value {
            Some(Ok(rev)) => self.offer(cfg, rev).await,
            Some(Err((rev, e))) => {
                if super::status().and_then(|s| s.refused_revision) != Some(rev) {
                    refused(rev, vec![e]);
                }
            }
            None => refused_deletion(read.header_revision, &cfg.key),
        }
    }

    /// Applies a revision unless it is the one serving or one this node refused already
    /// (a reload that fixes the node file tries that one again).
    async fn offer(&self, cfg: &ConfigSourceCfg, rev: Revision) {
        if self.live.fleet_revision() == Some(rev.revision) {
            // A start from the cache that etcd now confirms is etcd's revision.
            update(|s| s.applied_from = Some("etcd"));
            return;
        }
        if self.live.fleet_refused_revision() == Some(rev.revision) {
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
}
