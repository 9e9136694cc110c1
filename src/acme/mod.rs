//! Certificates from an ACME CA (RFC 8555) through `instant-acme`: HTTP-01 answered on the
//! plaintext listeners, the issued chain and key kept in `storage` and loaded at start, and
//! renewal `renew_before` expiry in the background. The certificate is held here, outside
//! the config snapshot, so a reload neither loses it nor re-orders it; the handshake callback
//! asks for it by name (see `tls::store`), and a renewal swaps it atomically.

mod issue;
mod storage;
mod worker;

pub use worker::AcmeWorker;

use crate::tls::LoadedCert;
use arc_swap::ArcSwapOption;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// What the proxy and the handshake callback read; the worker writes.
#[derive(Default)]
pub struct AcmeState {
    /// `[tls.acme]` is configured (fixed at start).
    pub active: bool,
    /// HTTP-01 token -> key authorization, while an order is open.
    challenges: RwLock<HashMap<String, String>>,
    cert: ArcSwapOption<LoadedCert>,
}

impl AcmeState {
    pub fn new(active: bool) -> AcmeState {
        AcmeState {
            active,
            ..Default::default()
        }
    }

    /// The key authorization for `path`, when it asks for a token of an open order.
    pub fn answer(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(CHALLENGE_PREFIX)?;
        self.challenges.read().ok()?.get(token).cloned()
    }

    fn put_challenge(&self, token: &str, key_authorization: String) {
        if let Ok(mut m) = self.challenges.write() {
            m.insert(token.to_string(), key_authorization);
        }
    }

    fn drop_challenge(&self, token: &str) {
        if let Ok(mut m) = self.challenges.write() {
            m.remove(token);
        }
    }

    pub fn cert(&self) -> Option<Arc<LoadedCert>> {
        self.cert.load_full()
    }

    fn set_cert(&self, c: LoadedCert) {
        crate::metrics::METRICS.cert_expiry.with_label_values(&[&c.name]).set(c.not_after);
        self.cert.store(Some(Arc::new(c)));
    }
}
