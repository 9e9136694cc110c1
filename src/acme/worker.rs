//! The background task: the stored certificate at start, then an order whenever none is
//! held or the held one is within `renew_before` of its end; failures retry with backoff
//! (10 s doubling to an hour), each success and failure logged and counted.

use super::storage;
use crate::live::Live;
use crate::metrics::METRICS;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub struct AcmeWorker {
    pub live: Arc<Live>,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

const FIRST_RETRY: Duration = Duration::from_secs(10);
const LAST_RETRY: Duration = Duration::from_secs(3600);

#[async_trait]
impl BackgroundService for AcmeWorker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(cfg) = self.live.boot().tls.acme.clone() else { return };
        let state = self.live.acme.clone();
        let hosts = cfg.hosts.join(",");
        match storage::load(&cfg) {
            Ok(Some(c)) => {
                log::info!(
                    "acme: loaded the stored certificate for {hosts} (serial {}, until {})",
                    c.serial,
                    c.not_after
                );
                state.set_cert(c);
            }
            Ok(None) => log::info!("acme: no stored certificate for {hosts} in {}; ordering one", cfg.storage),
            Err(e) => log::warn!("acme: the stored certificate for {hosts} is not usable ({e}); ordering one"),
        }
        let renew_before = cfg.renew_before.0.as_secs() as i64;
        let mut retry = FIRST_RETRY;
        loop {
            let wait = match state.cert() {
                Some(c) => Duration::from_secs((c.not_after - renew_before - now()).max(0) as u64),
                None => Duration::ZERO,
            };
            if !wait.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(wait.min(LAST_RETRY)) => continue,
                    _ = shutdown.changed() => return,
                }
            }
            let result = super::issue::order(&cfg, &state).await.and_then(|(chain, key)| {
                let cert = storage::certificate(&cfg, &chain, &key).map_err(|e| format!("the CA's certificate: {e}"))?;
                let dir = Path::new(&cfg.storage);
                storage::write(dir, "key.pem", &key, 0o600)?;
                storage::write(dir, "cert.pem", &chain, 0o644)?;
                Ok(cert)
            });
            match result {
                Ok(c) => {
                    log::info!("acme: certificate for {hosts} issued (serial {}, until {})", c.serial, c.not_after);
                    METRICS.acme_orders.with_label_values(&["ok"]).inc();
                    state.set_cert(c);
                    retry = FIRST_RETRY;
                }
                Err(e) => {
                    log::error!(
                        "acme: ordering the certificate for {hosts} failed: {e}; retrying in {}s",
                        retry.as_secs()
                    );
                    METRICS.acme_orders.with_label_values(&["error"]).inc();
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        _ = shutdown.changed() => return,
                    }
                    retry = (retry * 2).min(LAST_RETRY);
                }
            }
        }
    }
}
