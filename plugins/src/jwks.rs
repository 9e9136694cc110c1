//! Keys for `jwt_auth`: static keys from the config and keys fetched from a JWKS URL.
//!
//! The JWKS is fetched on first use, refreshed in the background every `refresh`, and
//! fetched again when a token names an unknown `kid`, at most once per `min_refetch`, so a
//! stream of tokens with made-up kids costs one fetch per cooldown, not one per request.
//! When the endpoint fails, the keys already held stay in use.

use crate::http_client::CLIENT;
use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone)]
pub struct Key {
    pub kid: Option<String>,
    /// Each key verifies exactly one algorithm: a token's `alg` must equal it, which is
    /// what stops HS256-signed-with-the-RSA-public-key confusion.
    pub alg: Algorithm,
    pub key: DecodingKey,
}

pub struct Jwks {
    url: String,
    refresh: Duration,
    min_refetch: Duration,
    timeout: Duration,
    /// Algorithms allowed for keys whose JWK names none.
    allowed: Vec<Algorithm>,
    keys: ArcSwap<Vec<Key>>,
    epoch: Instant,
    /// Milliseconds since `epoch` of the last fetch attempt and success (0: never).
    last_attempt: AtomicU64,
    last_success: AtomicU64,
    refreshing: AtomicBool,
    fetch_lock: tokio::sync::Mutex<()>,
    pub fetches: AtomicU64,
}

fn family_algs(params: &AlgorithmParameters, allowed: &[Algorithm]) -> Vec<Algorithm> {
    use Algorithm::*;
    let fam: &[Algorithm] = match params {
        AlgorithmParameters::RSA(_) => &[RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::EllipticCurve(_) => &[ES256, ES384],
        AlgorithmParameters::OctetKey(_) => &[HS256, HS384, HS512],
        AlgorithmParameters::OctetKeyPair(_) => &[EdDSA],
    };
    fam.iter().copied().filter(|a| allowed.contains(a)).collect()
}

/// Converts a JWK set; keys that cannot be used are skipped with a log line.
pub fn keys_from_set(set: &JwkSet, allowed: &[Algorithm]) -> Vec<Key> {
    let mut out = Vec::new();
    for jwk in &set.keys {
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            log::warn!("jwks: skipping a key that cannot be used (kid {:?})", jwk.common.key_id);
            continue;
        };
        let algs = match jwk.common.key_algorithm.and_then(|a| a.to_string().parse::<Algorithm>().ok()) {
            Some(a) => vec![a],
            None => family_algs(&jwk.algorithm, allowed),
        };
        for alg in algs {
            out.push(Key {
                kid: jwk.common.key_id.clone(),
                alg,
                key: key.clone(),
            });
        }
    }
    out
}

impl Jwks {
    pub fn new(url: String, refresh: Duration, min_refetch: Duration, timeout: Duration, allowed: Vec<Algorithm>) -> Self {
        Jwks {
            url,
            refresh,
            min_refetch,
            timeout,
            allowed,
            keys: ArcSwap::from_pointee(Vec::new()),
            epoch: Instant::now(),
            last_attempt: AtomicU64::new(0),
            last_success: AtomicU64::new(0),
            refreshing: AtomicBool::new(false),
            fetch_lock: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    pub fn keys(&self) -> Arc<Vec<Key>> {
        self.keys.load_full()
    }

    /// Called per request: fetches inline the first time, refreshes in the background when
    /// the keys are older than `refresh`.
    pub async fn ensure(self: &Arc<Self>) {
        let last = self.last_success.load(Ordering::Relaxed);
        if last == 0 && self.last_attempt.load(Ordering::Relaxed) == 0 {
            self.fetch_once(Duration::ZERO).await;
            return;
        }
        let age = Duration::from_millis(self.now_ms().saturating_sub(last.max(self.last_attempt.load(Ordering::Relaxed))));
        if age >= self.refresh && !self.refreshing.swap(true, Ordering::AcqRel) {
            let me = self.clone();
            tokio::spawn(async move {
                me.fetch_once(Duration::ZERO).await;
                me.refreshing.store(false, Ordering::Release);
            });
        }
    }

    /// An unknown kid: refetch unless one happened within `min_refetch`. Returns whether
    /// the keys may have changed.
    pub async fn refetch_for_unknown_kid(&self) -> bool {
        self.fetch_once(self.min_refetch).await
    }

    /// One fetch, unless another attempt happened within `cooldown`. Concurrent callers
    /// wait for the fetch in progress instead of starting their own.
    async fn fetch_once(&self, cooldown: Duration) -> bool {
        let started = self.now_ms();
        let _guard = self.fetch_lock.lock().await;
        let last = self.last_attempt.load(Ordering::Relaxed);
        if last >= started {
            // Someone fetched while we waited for the lock.
            return true;
        }
        if last != 0 && Duration::from_millis(self.now_ms() - last) < cooldown {
            return false;
        }
        self.last_attempt.store(self.now_ms(), Ordering::Relaxed);
        self.fetches.fetch_add(1, Ordering::Relaxed);
        match self.fetch().await {
            Ok(keys) => {
                log::info!("jwks: fetched {} keys from {}", keys.len(), self.url);
                self.keys.store(Arc::new(keys));
                self.last_success.store(self.now_ms(), Ordering::Relaxed);
                true
            }
            Err(e) => {
                log::warn!(
                    "jwks: fetching {} failed, keeping {} cached keys: {e}",
                    self.url,
                    self.keys.load().len()
                );
                false
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<Key>, String> {
        let resp = CLIENT
            .get(&self.url)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| format!("not a JWK set: {e}"))?;
        Ok(keys_from_set(&set, &self.allowed))
    }
}
