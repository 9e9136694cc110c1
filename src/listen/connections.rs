use super::reply::refuse;
use crate::metrics::METRICS;
use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Caps open downstream connections per process. Past the cap a connection gets a 503 and
/// is closed at once, instead of queueing where it would hold memory and file descriptors.
pub struct Connections<A> {
    pub inner: Arc<A>,
    pub max: usize,
    open: Arc<AtomicUsize>,
}

impl<A> Connections<A> {
    pub fn new(inner: A, max: usize) -> Self {
        Connections {
            inner: Arc::new(inner),
            max,
            open: Arc::new(AtomicUsize::new(0)),
        }
    }
}

struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Connections<A> {
    async fn process_new(self: &Arc<Self>, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let now = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        let _slot = Slot(self.open.clone());
        if now > self.max {
            METRICS.rejections.with_label_values(&["_none", "too_many_connections"]).inc();
            refuse(&mut stream, 503, "Service Unavailable", "too many connections").await;
            return None;
        }
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}
