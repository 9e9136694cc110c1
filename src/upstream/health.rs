//! Active health checks: one background task for the whole process that walks the clusters
//! of the *live* snapshot each tick. Clusters added by a reload are picked up, removed ones
//! stop being checked, and reused ones keep their state, with no task to hand over.

use super::tls::PeerTls;
use super::Cluster;
use crate::config::{CheckKind, HealthCheck};
use crate::live::Live;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A connection a check talks HTTP over: plain or TLS.
pub(super) trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

pub struct HealthChecker {
    pub live: Arc<Live>,
}

const TICK: Duration = Duration::from_millis(100);

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Next due time per cluster, keyed by the cluster's address: a rebuilt cluster is a
        // new key and is checked at once.
        let mut due: HashMap<usize, Instant> = HashMap::new();
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let snap = self.live.load();
            let now = Instant::now();
            let mut live_keys = Vec::with_capacity(snap.clusters.len());
            for cluster in snap.clusters.values() {
                let Some(hc) = cluster.config.health_check.clone() else { continue };
                let key = Arc::as_ptr(cluster) as usize;
                live_keys.push(key);
                if due.get(&key).is_some_and(|d| *d > now) {
                    continue;
                }
                due.insert(key, now + hc.interval.0);
                for idx in 0..cluster.targets.len() {
                    let c = cluster.clone();
                    let hc = hc.clone();
                    tokio::spawn(async move {
                        let t = &c.targets[idx];
                        let host = t.host_header.to_str().unwrap_or(&t.name).to_string();
                        let ok = probe(t.addr, &host, &hc, c.tls.as_ref()).await;
                        t.record_check(&c.name, ok, &hc);
                    });
                }
            }
            due.retain(|k, _| live_keys.contains(k));
        }
    }
}

/// One check, bounded by the check's timeout. HTTP checks send a minimal GET and read the
/// status line; gRPC checks ask `grpc.health.v1.Health/Check`; anything unexpected counts
/// as a failure. TLS targets are checked over TLS, verified as requests are (a certificate
/// that stops verifying takes a target out).
pub async fn probe(addr: std::net::SocketAddr, host: &str, hc: &HealthCheck, tls: Option<&PeerTls>) -> bool {
    let check = async {
        let s = connect(addr, tls, hc.kind == CheckKind::Grpc).await?;
        match hc.kind {
            CheckKind::Tcp => Some(true),
            CheckKind::Grpc => super::health_grpc::serving(s, hc.service.as_deref().unwrap_or("")).await,
            CheckKind::Http => http_check(s, hc.host.as_deref().unwrap_or(host), hc).await,
        }
    };
    matches!(tokio::time::timeout(hc.timeout.0, check).await, Ok(Some(true)))
}

/// A connection to the target, over TLS when it has it (offering h2 for a gRPC check).
pub(super) async fn connect(addr: std::net::SocketAddr, tls: Option<&PeerTls>, h2: bool) -> Option<Box<dyn Io>> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    Some(match tls {
        Some(t) => {
            let mut conf = t.connector.configure().ok()?;
            if h2 {
                conf.set_alpn_protos(b"\x02h2").ok()?;
            }
            let ssl = conf.into_ssl(&t.sni).ok()?;
            let mut s = pingora_core::tls::tokio_ssl::SslStream::new(ssl, tcp).ok()?;
            std::pin::Pin::new(&mut s).connect().await.ok()?;
            Box::new(s)
        }
        None => Box::new(tcp),
    })
}

async fn http_check(mut s: Box<dyn Io>, host: &str, hc: &HealthCheck) -> Option<bool> {
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: gatehouse-health-check\r\nConnection: close\r\n\r\n",
        hc.path
    );
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let r = s.read(&mut buf[n..]).await.ok()?;
        if r == 0 {
            break;
        }
        n += r;
    }
    let line = std::str::from_utf8(&buf[..n]).ok()?;
    let status: u16 = line.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()?;
    Some(hc.expect_status.contains(&status))
}

impl Cluster {
    /// (target, healthy, in flight, ejected, ejections so far)
    pub fn health_summary(&self) -> Vec<(Arc<str>, bool, usize, bool, u32)> {
        self.targets
            .iter()
            .map(|t| {
                let (ejected, ejections) = t.ejection_info();
                (
                    t.name.clone(),
                    t.is_healthy(),
                    t.in_flight.load(std::sync::atomic::Ordering::Relaxed),
                    ejected,
                    ejections,
                )
            })
            .collect()
    }
}
