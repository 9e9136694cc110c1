//! Keys fetched from a JWKS URL.
//!
//! The JWKS is fetched on first use, refreshed in the background every `refresh`, and
//! fetched again when a token names an unknown `kid`, at most once per `min_refetch`, so a
//! stream of tokens with made-up kids costs one fetch per cooldown, not one per request.
//! A fetch that fails, or brings a set the key rules refuse (see `keys`), changes nothing:
//! the keys already held stay in use, and the refusal is logged and counted
//! (`gatehouse_jwks_refused_total`).

use super::keys::{self, Key};
use crate::http_client::CLIENT;
use arc_swap::ArcSwap;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::Algorithm;
use once_cell::sync::Lazy;
use prometheus::IntCounterVec;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A key set larger than this is not a key set: the body is not read past it.
pub const MAX_BODY: usize = 1 << 20;

static REFUSED: Lazy<IntCounterVec> = Lazy::new(|| {
    crate::metrics::register(
        IntCounterVec::new(
            prometheus::Opts::new(
                "gatehouse_jwks_refused_total",
                "JWKS fetches refused (unreachable, not a key set, too large, or against the key rules); the previous keys stay in use.",
            ),
            &["url"],
        )
        .expect("static metric"),
    )
});

pub struct Jwks {
    url: String,
    refresh: Duration,
    min_refetch: Duration,
    timeout: Duration,
    /// The route's `algorithms`: keys are made only for these.
    allowed: Vec<Algorithm>,
    allow_weak_rsa: bool,
    keys: ArcSwap<Vec<Key>>,
    epoch: Instant,
    /// Milliseconds since `epoch` of the last fetch attempt and success (0: never).
    last_attempt: AtomicU64,
    last_success: AtomicU64,
    refreshing: AtomicBool,
    fetch_lock: tokio::sync::Mutex<()>,
    pub fetches: AtomicU64,
}

/// The usable keys of a JWK set's JSON, or why the whole set is refused. Entries that are
/// not for signing (`use: enc`, an encryption `alg`, an unsupported curve) are skipped with
/// a log line; a weak key, or an entry that cannot be parsed at all, refuses the set (the
/// set rules, kids and key kinds, could not be checked without it).
pub fn keys_from_json(body: &[u8], allowed: &[Algorithm], allow_weak_rsa: bool) -> Result<Vec<Key>, String> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body).map_err(|e| format!("not a JWK set: {e}"))?;
    let mut entries: Vec<(Option<String>, Vec<Key>)> = Vec::with_capacity(set.keys.len());
    for (i, v) in set.keys.into_iter().enumerate() {
        let jwk: Jwk = serde_json::from_value(v).map_err(|e| format!("keys[{i}] is not a JWK: {e}"))?;
        let kid = jwk.common.key_id.clone();
        match keys::from_jwk(&jwk, None, allowed, allow_weak_rsa) {
            Ok(k) => entries.push((kid, k)),
            Err(keys::Unfit::Weak(e)) => return Err(format!("keys[{i}]: {e}")),
            Err(e) => {
                log::warn!("jwks: skipping keys[{i}] (kid {kid:?}): {e}");
                entries.push((kid, Vec::new()));
            }
        }
    }
    keys::check_set(entries.iter().map(|(kid, k)| (kid.as_deref(), k.as_slice())))?;
    let keys: Vec<Key> = entries.into_iter().flat_map(|(_, k)| k).collect();
    if keys.is_empty() {
        return Err("no usable signature key in the set".into());
    }
    Ok(keys)
}

impl Jwks {
    pub fn new(
        url: String,
        refresh: Duration,
        min_refetch: Duration,
        timeout: Duration,
        allowed: Vec<Algorithm>,
        allow_weak_rsa: bool,
    ) -> Self {
        Lazy::force(&REFUSED);
        Jwks {
            url,
            refresh,
            min_refetch,
            timeout,
            allowed,
            allow_weak_rsa,
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
                REFUSED.with_label_values(&[&self.url]).inc();
                log::warn!("jwks: refused {}, keeping {} keys: {e}", self.url, self.keys.load().len());
                false
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<Key>, String> {
        let mut resp = CLIENT
            .get(&self.url)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
            return Err(format!("body larger than {MAX_BODY} bytes"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(format!("body larger than {MAX_BODY} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        keys_from_json(&body, &self.allowed, self.allow_weak_rsa)
    }
}
