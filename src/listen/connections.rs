//! Caps on open downstream connections, per process and per client address, and the last
//! line against a panic: a connection task that panics is counted
//! (`gatehouse_panics_total`) and closed, and the process goes on serving.

use super::framed::peer_ip;
use super::reply::refuse;
use crate::live::Live;
use crate::metrics::METRICS;
use async_trait::async_trait;
use futures_util::FutureExt;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use std::collections::HashMap;
use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Past `max` open connections a connection gets a 503 and is closed at once, instead of
/// queueing where it would hold memory and file descriptors. Past `per_ip` from one
/// address (not a trusted proxy), a 429.
pub struct Connections<A> {
    pub inner: Arc<A>,
    pub max: usize,
    open: Arc<AtomicUsize>,
    per_ip: Option<Arc<PerIp>>,
    live: Arc<Live>,
}

const SHARDS: usize = 64;

/// Open connections per client address, sharded so accepts do not wait on one lock.
struct PerIp {
    max: usize,
    shards: Vec<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerIp {
    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, usize>> {
        let h = match ip {
            IpAddr::V4(v4) => u32::from(*v4) as usize,
            IpAddr::V6(v6) => (u128::from(*v6) ^ (u128::from(*v6) >> 64)) as usize,
        };
        &self.shards[h % SHARDS]
    }

    /// Counts one more connection from `ip`; `false` (and nothing counted) past the cap.
    fn enter(&self, ip: IpAddr) -> bool {
        let mut m = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= self.max {
            return false;
        }
        *n += 1;
        true
    }

    fn leave(&self, ip: IpAddr) {
        let mut m = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }
}

impl<A> Connections<A> {
    /// `per_ip` 0: no per-address cap.
    pub fn new(inner: A, max: usize, per_ip: usize, live: Arc<Live>) -> Self {
        Connections {
            inner: Arc::new(inner),
            max,
            open: Arc::new(AtomicUsize::new(0)),
            per_ip: (per_ip > 0).then(|| {
                Arc::new(PerIp {
                    max: per_ip,
                    shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
                })
            }),
            live,
        }
    }
}

/// Gives a connection's places back however its task ends (a panic included).
struct Slot {
    open: Arc<AtomicUsize>,
    ip: Option<(Arc<PerIp>, IpAddr)>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        METRICS.open_connections.dec();
        if let Some((per_ip, ip)) = self.ip.take() {
            per_ip.leave(ip);
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Connections<A> {
    async fn process_new(self: &Arc<Self>, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let now = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        METRICS.open_connections.inc();
        let mut slot = Slot {
            open: self.open.clone(),
            ip: None,
        };
        if now > self.max {
            METRICS.rejections.with_label_values(&["_none", "too_many_connections"]).inc();
            refuse(&mut stream, 503, "Service Unavailable", "too many connections").await;
            super::linger::run(&mut stream).await;
            return None;
        }
        if let (Some(per_ip), Some(ip)) = (&self.per_ip, peer_ip(&stream)) {
            if !self.live.load().is_trusted(ip) {
                if !per_ip.enter(ip) {
                    METRICS
                        .rejections
                        .with_label_values(&["_none", "too_many_connections_per_ip"])
                        .inc();
                    refuse(&mut stream, 429, "Too Many Requests", "too many connections from this address").await;
                    super::linger::run(&mut stream).await;
                    return None;
                }
                slot.ip = Some((per_ip.clone(), ip));
            }
        }
        let served = AssertUnwindSafe(self.inner.process_new(stream, shutdown)).catch_unwind().await;
        drop(slot);
        match served {
            Ok(s) => s,
            Err(_) => {
                // The panic message went to the log through the panic hook.
                METRICS.panics.inc();
                None
            }
        }
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}
