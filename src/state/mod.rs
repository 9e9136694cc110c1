//! Counters that outlive a request live in the plugins crate's stores (local memory, the
//! on-disk store, Redis). The core opens them from `[store]` at start and flushes the
//! local quota counters to disk every second.

use crate::config::File;
use async_trait::async_trait;
use gatehouse_plugins::store::{self, StoreConfig};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::time::Duration;

/// Opens the stores `[store]` describes. Bound at start: changing `[store]` needs an
/// upgrade.
pub fn open_stores(file: &File) -> Result<(), String> {
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

/// Writes local quota counts to the on-disk store every second, including while the
/// process drains, so a restart or upgrade loses at most the last second.
pub struct Flusher;

#[async_trait]
impl BackgroundService for Flusher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut draining = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed(), if !draining => { draining = true; }
            }
            let _ = tokio::task::spawn_blocking(gatehouse_plugins::limits::quota::flush).await;
        }
    }
}
