//! The span queue and its exporter thread.
//!
//! The SDK's own batch processor keeps its drop count to itself (it logs it at shutdown), and
//! the issue asks for drops as a metric, so the queue is ours: a bounded channel that the
//! request path only `try_send`s into, and one thread that batches and hands batches to the
//! OTLP exporter of `opentelemetry-otlp`, which does the protobuf or JSON encoding. The
//! thread runs its own small tokio runtime: a slow or dead collector only ever stalls it.

use crate::config::{OtlpProtocol, TracingCfg};
use once_cell::sync::{Lazy, OnceCell};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use prometheus::{IntCounter, IntCounterVec, Opts};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub struct TraceMetrics {
    pub dropped: IntCounterVec,
    pub exported: IntCounter,
}

pub static TRACE_METRICS: Lazy<TraceMetrics> = Lazy::new(|| {
    let r = &crate::metrics::METRICS.registry;
    let dropped = IntCounterVec::new(
        Opts::new(
            "gatehouse_tracing_spans_dropped_total",
            "Spans not delivered: the queue was full (queue_full) or the collector refused or did not answer (export_failed).",
        ),
        &["reason"],
    )
    .expect("static counter definition");
    let exported = IntCounter::new("gatehouse_tracing_spans_exported_total", "Spans the collector accepted.").expect("static counter");
    for c in [
        Box::new(dropped.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(exported.clone()),
    ] {
        if let Err(e) = r.register(c) {
            log::error!("metric registration failed: {e}");
        }
    }
    // Both reasons show from the start, so a dashboard's rate() has a series to work on.
    dropped.with_label_values(&["queue_full"]);
    dropped.with_label_values(&["export_failed"]);
    TraceMetrics { dropped, exported }
});

/// Set on the way out: exporter threads send what is queued and stop.
static CLOSING: AtomicBool = AtomicBool::new(false);
static WAKE: tokio::sync::Notify = tokio::sync::Notify::const_new();
static THREADS: Mutex<Vec<std::thread::JoinHandle<()>>> = Mutex::new(Vec::new());

/// Sends what every queue holds (bounded by each exporter's timeout) and waits for it, so
/// the spans of requests answered during a graceful stop are not lost.
pub fn close_all() {
    CLOSING.store(true, Ordering::Release);
    WAKE.notify_waiters();
    let threads = std::mem::take(&mut *THREADS.lock().unwrap_or_else(|p| p.into_inner()));
    for t in threads {
        let _ = t.join();
    }
}

/// One collector destination: the queue in front of it. Its thread starts with the first
/// span, after Pingora has daemonized (a thread started before the fork would not exist in
/// the child).
pub struct Pipeline {
    pub cfg: TracingCfg,
    tx: OnceCell<Option<mpsc::Sender<SpanData>>>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").field("endpoint", &self.cfg.endpoint).finish()
    }
}

impl Pipeline {
    pub fn new(cfg: TracingCfg) -> Pipeline {
        Lazy::force(&TRACE_METRICS);
        Pipeline { cfg, tx: OnceCell::new() }
    }

    pub fn push(&self, span: SpanData) {
        let Some(tx) = self.tx.get_or_init(|| self.start()) else {
            TRACE_METRICS.dropped.with_label_values(&["export_failed"]).inc();
            return;
        };
        if tx.try_send(span).is_err() {
            TRACE_METRICS.dropped.with_label_values(&["queue_full"]).inc();
        }
    }

    fn start(&self) -> Option<mpsc::Sender<SpanData>> {
        let exporter = match exporter(&self.cfg) {
            Ok(e) => e,
            Err(e) => {
                log::error!(
                    "tracing: cannot build the exporter for {}: {e}; spans are dropped",
                    self.cfg.endpoint
                );
                return None;
            }
        };
        let (tx, rx) = mpsc::channel(self.cfg.max_queue);
        let cfg = self.cfg.clone();
        let spawned = std::thread::Builder::new()
            .name("gatehouse-trace-export".into())
            .spawn(move || run(rx, exporter, cfg));
        match spawned {
            Ok(handle) => THREADS.lock().unwrap_or_else(|p| p.into_inner()).push(handle),
            Err(e) => {
                log::error!("tracing: cannot start the exporter thread: {e}");
                return None;
            }
        }
        Some(tx)
    }
}

fn exporter(cfg: &TracingCfg) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let client = reqwest::Client::builder()
        .timeout(cfg.timeout.0)
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    let headers = cfg.headers.iter().map(|(k, v)| (k.clone(), v.value.clone())).collect();
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(cfg.endpoint.clone())
        .with_protocol(match cfg.protocol {
            OtlpProtocol::Protobuf => Protocol::HttpBinary,
            OtlpProtocol::Json => Protocol::HttpJson,
        })
        .with_timeout(cfg.timeout.0)
        .with_headers(headers)
        .with_http_client(Client(client))
        .build()
        .map_err(|e| e.to_string())?;
    let resource = opentelemetry_sdk::Resource::builder_empty()
        .with_service_name(cfg.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    exporter.set_resource(&resource);
    Ok(exporter)
}

fn run(mut rx: mpsc::Receiver<SpanData>, exporter: opentelemetry_otlp::SpanExporter, cfg: TracingCfg) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("tracing: cannot start the exporter runtime: {e}");
            return;
        }
    };
    rt.block_on(async move {
        let mut batch = Vec::with_capacity(cfg.max_batch);
        loop {
            let closing = fill(&mut rx, &mut batch, cfg.max_batch, cfg.flush_interval.0).await;
            if !batch.is_empty() {
                let _ = send(&exporter, std::mem::take(&mut batch), cfg.timeout.0).await;
            }
            if closing {
                drain(&mut rx, &exporter, &cfg).await;
                return;
            }
        }
    });
}

/// What is still queued at a stop goes out in full batches, within one `timeout` in all and
/// only while the collector answers: a stop must not wait on a dead collector batch after
/// batch. What is left is counted as not delivered.
async fn drain(rx: &mut mpsc::Receiver<SpanData>, exporter: &opentelemetry_otlp::SpanExporter, cfg: &TracingCfg) {
    let deadline = Instant::now() + cfg.timeout.0;
    let mut batch = Vec::with_capacity(cfg.max_batch);
    let mut ok = true;
    loop {
        while batch.len() < cfg.max_batch {
            match rx.try_recv() {
                Ok(span) => batch.push(span),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if !ok || left.is_zero() {
            TRACE_METRICS
                .dropped
                .with_label_values(&["export_failed"])
                .inc_by(batch.len() as u64);
            batch.clear();
            continue;
        }
        ok = send(exporter, std::mem::take(&mut batch), left).await;
    }
}

/// Waits for a full batch or the flush interval, whichever comes first. True when the
/// process is stopping (or every sender is gone).
async fn fill(rx: &mut mpsc::Receiver<SpanData>, batch: &mut Vec<SpanData>, max: usize, every: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + every;
    while batch.len() < max {
        // Listening before looking at the flag: a wake between the two is not missed.
        let woken = WAKE.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if CLOSING.load(Ordering::Acquire) {
            return true;
        }
        tokio::select! {
            got = rx.recv() => match got {
                Some(span) => batch.push(span),
                None => return true,
            },
            _ = tokio::time::sleep_until(deadline) => return false,
            _ = woken => return true,
        }
    }
    false
}

/// True when the collector took the batch.
async fn send(exporter: &opentelemetry_otlp::SpanExporter, batch: Vec<SpanData>, timeout: Duration) -> bool {
    let n = batch.len() as u64;
    let started = Instant::now();
    // The HTTP client has the same timeout; this one also bounds the encoding and a
    // collector that accepts the connection and never answers.
    match tokio::time::timeout(timeout + Duration::from_millis(100), exporter.export(batch)).await {
        Ok(Ok(())) => {
            TRACE_METRICS.exported.inc_by(n);
            true
        }
        Ok(Err(e)) => {
            TRACE_METRICS.dropped.with_label_values(&["export_failed"]).inc_by(n);
            log::warn!("tracing: export of {n} spans failed: {e}");
            false
        }
        Err(_) => {
            TRACE_METRICS.dropped.with_label_values(&["export_failed"]).inc_by(n);
            log::warn!("tracing: export of {n} spans timed out after {:?}", started.elapsed());
            false
        }
    }
}

/// opentelemetry-otlp's HTTP client trait over the reqwest 0.12 the gateway already links.
#[derive(Debug)]
struct Client(reqwest::Client);

/// A collector's answer is a small protobuf or JSON message; anything longer is not one.
const MAX_ANSWER: usize = 64 * 1024;

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Client {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let mut answer = self.0.execute(request).await?;
        let mut out = http::Response::builder().status(answer.status());
        if let Some(h) = out.headers_mut() {
            *h = std::mem::take(answer.headers_mut());
        }
        let mut body = Vec::new();
        while let Some(chunk) = answer.chunk().await? {
            if body.len() + chunk.len() > MAX_ANSWER {
                return Err(format!("collector answer longer than {MAX_ANSWER} bytes").into());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(out.body(bytes::Bytes::from(body))?)
    }
}
