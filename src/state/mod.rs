//! Counters that outlive a request live in the plugins crate's stores (local memory, the
//! on-disk store, Redis). The core declares them from `[store]` at start, and one worker
//! keeps the local quota counters on disk: it loads stored totals for new counters, flushes
//! deltas every second, drops counters memory need not hold, and flushes on the way out.
//!
//! Order at start, for the store's files: daemonise (Pingora, before any service runs),
//! drop privileges (handing the store directory to the run user first), then open the
//! on-disk store. So the files belong to the run user and no database handle crosses a fork.

use crate::config::File;
use crate::privileges::DropPrivileges;
use async_trait::async_trait;
use gatehouse_plugins::limits::quota;
use gatehouse_plugins::store::{self, StoreConfig};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::time::Duration;

/// Declares the stores `[store]` describes; nothing is opened yet. Bound at start:
/// changing `[store]` needs an upgrade.
pub fn declare_stores(file: &File) -> Result<(), String> {
    let cfg = match &file.store {
        Some(s) => StoreConfig {
            path: s.path.clone(),
            redis: s.redis.clone(),
            timeout: s.timeout.0,
            allow_on_error: s.on_error != "deny",
        },
        None => StoreConfig {
            path: None,
            redis: None,
            timeout: Duration::from_millis(20),
            allow_on_error: true,
        },
    };
    gatehouse_plugins::metrics::init();
    store::init(cfg).map(|_| ())
}

/// Flushes what is still counted in memory. Called on the way out (after the runtimes
/// stopped) and before an upgrade hands the sockets over.
pub fn final_flush() {
    quota::load_pending();
    let n = quota::flush();
    if n > 0 {
        log::info!("quota: flushed {n} counters on the way out");
    }
    if quota::unflushed() > 0 {
        log::error!("quota: {} counts could not be written to the store", quota::unflushed());
    }
}

/// The store worker (see the module doc).
pub struct StoreWorker {
    pub privileges: Option<DropPrivileges>,
}

async fn blocking<T: Send + 'static>(f: fn() -> T) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

#[async_trait]
impl BackgroundService for StoreWorker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let stores = store::get();
        if let Some(p) = &self.privileges {
            let own: Vec<String> = stores.config.path.iter().cloned().collect();
            p.run(&own).await;
        }
        if let Err(e) = tokio::task::spawn_blocking(|| store::get().open_disk())
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
        {
            log::error!("store: {e}; quotas are counted in memory only");
        }
        if let Some(r) = stores.redis.as_ref() {
            r.warm();
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut evict = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    blocking(quota::flush).await;
                }
                _ = evict.tick() => {
                    blocking(quota::evict).await;
                }
                _ = quota::wait_for_loads() => {
                    blocking(quota::load_pending).await;
                }
                _ = shutdown.changed() => {
                    // Draining: requests still count for the grace period; the final
                    // flush after the runtimes stop writes the rest.
                    blocking(quota::flush).await;
                }
            }
        }
    }
}
