//! Upstream clusters: their targets, how one is chosen, and how health is tracked.
//!
//! A `Cluster` is shared (`Arc`) between config snapshots when its section did not change,
//! so a reload keeps health state, in-flight counts and the round-robin position.

mod balance;
pub mod function;
pub mod health;
mod health_grpc;
pub mod stats;
mod tls;

use crate::config::{self, Balance};
use crate::metrics::METRICS;
use pingora_core::upstreams::peer::HttpPeer;
use prometheus::{Histogram, IntGauge};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use balance::HashKey;

pub struct Target {
    pub addr: SocketAddr,
    /// Lower serves first (`TargetSpec::priority`).
    pub priority: u16,
    /// Passive outlier detection: failures in a row, ejection deadline (ms on `clock()`,
    /// 0: not ejected), ejections so far (the next one lasts longer).
    failures: AtomicU32,
    ejected_until: AtomicU64,
    ejections: AtomicU32,
    last_ejection_end: AtomicU64,
    ejected_gauge: IntGauge,
    /// Text form for logs and labels, kept to avoid formatting per request.
    pub name: Arc<str>,
    pub weight: u32,
    healthy: AtomicBool,
    ok_streak: AtomicU32,
    fail_streak: AtomicU32,
    pub in_flight: AtomicUsize,
    /// A ready-made peer: cloning it is cheaper than building one per request.
    peer: HttpPeer,
    /// The Host header value for this target, built once (cloning shares the bytes).
    pub host_header: http::HeaderValue,
    healthy_gauge: IntGauge,
    pub stats: stats::TargetStats,
}

/// Milliseconds since the process started (never 0).
pub fn clock() -> u64 {
    static EPOCH: once_cell::sync::Lazy<std::time::Instant> = once_cell::sync::Lazy::new(std::time::Instant::now);
    EPOCH.elapsed().as_millis() as u64 + 1
}

impl Target {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Ejected by the circuit breaker right now. An expired ejection is cleared here.
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        let now = clock();
        if now < until {
            return true;
        }
        if self
            .ejected_until
            .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.last_ejection_end.store(now, Ordering::Relaxed);
            self.ejected_gauge.set(0);
        }
        false
    }

    /// Takes over the state of the same target in the cluster a reload replaces.
    fn inherit(&self, old: &Target) {
        let r = Ordering::Relaxed;
        self.healthy.store(old.healthy.load(r), r);
        self.ok_streak.store(old.ok_streak.load(r), r);
        self.fail_streak.store(old.fail_streak.load(r), r);
        self.failures.store(old.failures.load(r), r);
        self.ejected_until.store(old.ejected_until.load(r), r);
        self.ejections.store(old.ejections.load(r), r);
        self.last_ejection_end.store(old.last_ejection_end.load(r), r);
        self.healthy_gauge.set(i64::from(self.is_healthy()));
        self.ejected_gauge.set(i64::from(self.ejected_until.load(r) != 0));
    }

    pub fn ejection_info(&self) -> (bool, u32) {
        (self.is_ejected(), self.ejections.load(Ordering::Relaxed))
    }

    fn readmit(&self) {
        if self.ejected_until.swap(0, Ordering::AcqRel) != 0 {
            self.last_ejection_end.store(clock(), Ordering::Relaxed);
            self.ejected_gauge.set(0);
        }
    }

    /// Applies one health check result; flips state only after the configured streak.
    pub fn record_check(&self, cluster: &str, ok: bool, hc: &config::HealthCheck) {
        if ok {
            // A passing health check ends an ejection early.
            self.readmit();
            self.fail_streak.store(0, Ordering::Relaxed);
            let n = self.ok_streak.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= hc.healthy_after && !self.healthy.swap(true, Ordering::Relaxed) {
                log::warn!("upstream {cluster}: target {} is healthy again", self.name);
                self.healthy_gauge.set(1);
            }
        } else {
            self.ok_streak.store(0, Ordering::Relaxed);
            let n = self.fail_streak.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= hc.unhealthy_after && self.healthy.swap(false, Ordering::Relaxed) {
                log::warn!("upstream {cluster}: target {} is unhealthy, taking it out", self.name);
                self.healthy_gauge.set(0);
            }
        }
    }
}

pub struct Cluster {
    pub name: Arc<str>,
    /// The section this cluster was built from; a reload compares it to decide on reuse.
    pub config: config::Upstream,
    pub targets: Vec<Target>,
    pub balance: Balance,
    pub hash_key: Option<HashKey>,
    /// Smooth weighted round-robin order, precomputed so picking is one atomic add.
    schedule: Vec<u32>,
    cursor: AtomicUsize,
    /// Targets of more than one priority: selection looks at the lowest usable one first.
    tiered: bool,
    pub retries: u32,
    pub duration: Histogram,
    pub pool: stats::PoolStats,
    /// TLS to the targets, for the health checker's connections.
    pub tls: Option<tls::PeerTls>,
}

impl Cluster {
    /// `prev`: the cluster this one replaces on a reload; its targets that stay keep their
    /// health, streaks and ejection (a reload must not readmit a target the health checks
    /// or the breaker took out).
    pub fn new(name: &str, cfg: &config::Upstream, prev: Option<&Cluster>) -> Result<Cluster, String> {
        let peer_tls = tls::PeerTls::new(cfg)?;
        let mut targets = Vec::with_capacity(cfg.targets.len());
        for t in &cfg.targets {
            let addr: SocketAddr = t.addr().parse().map_err(|_| format!("`{}` is not an IP:port address", t.addr()))?;
            let mut peer = HttpPeer::new(addr, cfg.tls, String::new());
            if let Some(t) = &peer_tls {
                t.apply(&mut peer);
            }
            tls::apply_http2(cfg, &mut peer);
            let o = &mut peer.options;
            o.connection_timeout = Some(cfg.connect_timeout.0);
            o.read_timeout = Some(cfg.read_timeout.0);
            o.write_timeout = Some(cfg.write_timeout.0);
            o.idle_timeout = Some(cfg.idle_timeout.0);
            let gauge = METRICS.target_healthy.with_label_values(&[name, t.addr()]);
            gauge.set(1);
            let ejected_gauge = METRICS.target_ejected.with_label_values(&[name, t.addr()]);
            ejected_gauge.set(0);
            // At zero from the start: the ejection and retry panels need a series to rate.
            METRICS.ejections.with_label_values(&[name, t.addr()]);
            targets.push(Target {
                addr,
                priority: t.priority(),
                failures: AtomicU32::new(0),
                ejected_until: AtomicU64::new(0),
                ejections: AtomicU32::new(0),
                last_ejection_end: AtomicU64::new(0),
                ejected_gauge,
                name: Arc::from(t.addr()),
                weight: t.weight().max(1),
                healthy: AtomicBool::new(true),
                ok_streak: AtomicU32::new(0),
                fail_streak: AtomicU32::new(0),
                in_flight: AtomicUsize::new(0),
                peer,
                // Over TLS the target is the name it is verified as; otherwise its address.
                host_header: http::HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(
                    cfg.sni.as_deref().filter(|_| cfg.tls).unwrap_or(t.addr()).as_bytes(),
                ))
                .map_err(|_| format!("`{}` is not usable as a Host header", t.addr()))?,
                healthy_gauge: gauge,
                stats: stats::TargetStats::new(name, t.addr()),
            });
            if let Some(old) = prev.and_then(|p| p.targets.iter().find(|o| o.addr == addr)) {
                if let Some(new) = targets.last() {
                    new.inherit(old);
                }
            }
        }
        let weights: Vec<u32> = targets.iter().map(|t| t.weight).collect();
        METRICS.retries.with_label_values(&[name]);
        Ok(Cluster {
            name: Arc::from(name),
            config: cfg.clone(),
            tiered: targets.iter().any(|t| t.priority != targets[0].priority),
            schedule: balance::smooth_schedule(&weights),
            cursor: AtomicUsize::new(0),
            hash_key: cfg.hash_on.as_deref().and_then(HashKey::parse),
            balance: cfg.balance,
            targets,
            retries: cfg.retries,
            duration: METRICS.upstream_duration.with_label_values(&[name]),
            pool: stats::PoolStats::new(name),
            tls: peer_tls,
        })
    }

    /// A peer for target `idx`, with this route's read timeout if it has its own.
    pub fn peer(&self, idx: usize, read_timeout: Option<Duration>) -> Box<HttpPeer> {
        let mut p = Box::new(self.targets[idx].peer.clone());
        if let Some(t) = read_timeout {
            p.options.read_timeout = Some(t);
        }
        p
    }

    pub fn healthy_count(&self) -> usize {
        self.targets.iter().filter(|t| t.is_healthy()).count()
    }

    /// Passive outcome of one request to target `idx`: 5xx, connect errors and timeouts
    /// are failures. Enough in a row eject the target for `base_ejection * 2^n` (capped at
    /// `max_ejection`), unless `max_ejected_percent` of the cluster is already out.
    pub fn report(&self, idx: usize, ok: bool) {
        let Some(cb) = self.config.circuit_breaker.as_ref() else { return };
        let t = &self.targets[idx];
        if ok {
            t.failures.store(0, Ordering::Relaxed);
            return;
        }
        let n = t.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < cb.consecutive_failures || t.is_ejected() {
            return;
        }
        let out = self.targets.iter().filter(|x| x.is_ejected()).count();
        if (out + 1) * 100 > self.targets.len() * cb.max_ejected_percent as usize {
            return;
        }
        let now = clock();
        let max = cb.max_ejection.0.as_millis() as u64;
        // A target that stayed in for a whole max_ejection starts over at base_ejection.
        let last_end = t.last_ejection_end.load(Ordering::Relaxed);
        if last_end != 0 && now.saturating_sub(last_end) > max {
            t.ejections.store(0, Ordering::Relaxed);
        }
        let k = t.ejections.fetch_add(1, Ordering::Relaxed).min(20);
        let ms = (cb.base_ejection.0.as_millis() as u64).saturating_mul(1u64 << k).min(max);
        t.failures.store(0, Ordering::Relaxed);
        t.ejected_until.store(now + ms, Ordering::Relaxed);
        t.ejected_gauge.set(1);
        METRICS.ejections.with_label_values(&[&self.name, &t.name]).inc();
        log::warn!(
            "upstream {}: ejecting {} for {ms} ms after {n} failures in a row",
            self.name,
            t.name
        );
    }

    /// Whether a target may take one more request (max_in_flight).
    pub fn has_room(&self, idx: usize) -> bool {
        match self.config.circuit_breaker.as_ref() {
            Some(cb) if cb.max_in_flight > 0 => self.targets[idx].in_flight.load(Ordering::Relaxed) < cb.max_in_flight,
            _ => true,
        }
    }
}

/// Counts a request against a target for `least_requests` until dropped, so every exit path
/// (success, error, retry, client abort) gives the slot back.
pub struct InFlight {
    cluster: Arc<Cluster>,
    idx: usize,
}

impl InFlight {
    pub fn new(cluster: Arc<Cluster>, idx: usize) -> Self {
        cluster.targets[idx].in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { cluster, idx }
    }

    pub fn target(&self) -> &Target {
        &self.cluster.targets[self.idx]
    }

    pub fn report(&self, ok: bool) {
        self.cluster.report(self.idx, ok);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.cluster.targets[self.idx].in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
