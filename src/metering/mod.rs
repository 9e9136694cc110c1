//! Usage metering: one CloudEvent per finished request, spooled to disk before any sink
//! sees it, delivered at least once to each sink with its own cursor.
//!
//! The request path encodes the event and `try_send`s it into a bounded channel (a full
//! queue drops and counts; it never waits). The writer thread wakes every `WRITE_EVERY`,
//! appends what queued to the open segment and fsyncs it: a `kill -9` loses at most the
//! events of that last interval. Each sink's task (`deliver`) reads whole lines after its
//! cursor, and moves the cursor only when the sink acknowledged them. On every stop the
//! queue is written and the segment sealed; the next process resumes from the cursors.

pub mod analytics;
mod deliver;
pub mod event;
mod fields;
pub mod fleet;
pub mod ledger;
mod sinks;
pub mod spool;

use crate::config::MeteringCfg;
use once_cell::sync::{Lazy, OnceCell};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use event::{RouteMeter, Usage};

/// Group fsync: the writer's clock. The bound is 100 ms; half of it leaves room for
/// a slow fsync.
const WRITE_EVERY: Duration = Duration::from_millis(50);

/// One finished request: its encoded event, and what analytics counts.
pub struct Item {
    pub line: Vec<u8>,
    pub sample: analytics::Sample,
}

struct Started {
    tx: SyncSender<Item>,
    rx: Mutex<Option<Receiver<Item>>>,
    cfg: MeteringCfg,
    source: String,
    redis: Option<String>,
}

static STARTED: OnceCell<Started> = OnceCell::new();
static CLOSING: AtomicBool = AtomicBool::new(false);
static THREADS: Mutex<Vec<std::thread::JoinHandle<()>>> = Mutex::new(Vec::new());

pub struct Metrics {
    pub events: IntCounterVec,
    /// `events{result="produced"}` and `{result="dropped"}`, resolved once: the request
    /// path does no label lookup.
    pub produced: IntCounter,
    pub queue_full: IntCounter,
    pub spooled: IntCounter,
    pub delivered: IntCounterVec,
    pub dead_lettered: IntCounterVec,
    pub dropped: IntCounterVec,
    pub failures: IntCounterVec,
    pub spool_bytes: IntGauge,
    pub oldest: prometheus::GaugeVec,
}

pub static METRICS: Lazy<Metrics> = Lazy::new(|| {
    let r = &crate::metrics::METRICS.registry;
    let counter = |name: &str, help: &str, labels: &[&str]| {
        let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static counter definition");
        let _ = r.register(Box::new(c.clone()));
        c
    };
    let spooled = IntCounter::new("gatehouse_metering_spooled_total", "Usage events written and fsynced to the spool")
        .expect("static metric definition");
    let _ = r.register(Box::new(spooled.clone()));
    let spool_bytes =
        IntGauge::new("gatehouse_metering_spool_bytes", "Bytes of usage events kept in the spool").expect("static metric definition");
    let _ = r.register(Box::new(spool_bytes.clone()));
    let oldest = prometheus::GaugeVec::new(
        Opts::new(
            "gatehouse_metering_oldest_undelivered_seconds",
            "Age of the oldest event a sink has not acknowledged (0 when it is caught up)",
        ),
        &["sink"],
    )
    .expect("static metric definition");
    let _ = r.register(Box::new(oldest.clone()));
    let events = counter(
        "gatehouse_metering_events_total",
        "Usage events of finished requests: produced (queued for the spool), dropped (queue full), lost (the spool write failed)",
        &["result"],
    );
    let m = Metrics {
        produced: events.with_label_values(&["produced"]),
        queue_full: events.with_label_values(&["dropped"]),
        events,
        spooled,
        delivered: counter("gatehouse_metering_delivered_total", "Usage events a sink acknowledged", &["sink"]),
        dead_lettered: counter(
            "gatehouse_metering_dead_lettered_total",
            "Usage events a sink refused for good, kept in the dead-letter file",
            &["sink"],
        ),
        dropped: counter(
            "gatehouse_metering_dropped_total",
            "Usage events removed before a sink had them",
            &["sink", "reason"],
        ),
        failures: counter(
            "gatehouse_metering_delivery_failures_total",
            "Failed delivery attempts (retried)",
            &["sink"],
        ),
        spool_bytes,
        oldest,
    };
    for r in ["produced", "dropped", "lost"] {
        m.events.with_label_values(&[r]);
    }
    m
});

/// Called once at start with the boot config (the spool and sinks are bound at start: a
/// change needs an upgrade). Threads start later, in [`MeteringService`], after Pingora
/// has daemonized; events of requests before that wait in the queue.
pub fn init(file: &crate::config::File) {
    let Some(cfg) = file.metering.clone() else { return };
    Lazy::force(&METRICS);
    for name in cfg.sinks.keys() {
        METRICS.delivered.with_label_values(&[name]);
        METRICS.dead_lettered.with_label_values(&[name]);
        METRICS.dropped.with_label_values(&[name, "spool_full"]);
        METRICS.failures.with_label_values(&[name]);
        METRICS.oldest.with_label_values(&[name]);
    }
    let (tx, rx) = sync_channel(cfg.queue);
    let source = cfg.source.clone().unwrap_or_else(|| format!("gatehouse://{}", hostname()));
    let _ = STARTED.set(Started {
        tx,
        rx: Mutex::new(Some(rx)),
        source,
        redis: file.store.as_ref().and_then(|s| s.redis.clone()),
        cfg,
    });
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match (rc, std::str::from_utf8(&buf[..end])) {
        (0, Ok(h)) if !h.is_empty() => h.to_string(),
        _ => "localhost".to_string(),
    }
}

pub fn enabled() -> bool {
    STARTED.get().is_some()
}

/// The CloudEvents `source` of this process's events.
pub fn source() -> &'static str {
    STARTED.get().map_or("", |s| s.source.as_str())
}

/// The request path's only call: never blocks.
pub fn record(usage: &Usage<'_>, sample: analytics::Sample) {
    let Some(s) = STARTED.get() else { return };
    let mut line = Vec::with_capacity(640);
    usage.encode(&mut line);
    line.push(b'\n');
    match s.tx.try_send(Item { line, sample }) {
        Ok(()) => METRICS.produced.inc(),
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => METRICS.queue_full.inc(),
    }
}

pub fn spool_dir() -> Option<PathBuf> {
    STARTED.get().map(|s| PathBuf::from(&s.cfg.spool_dir))
}

/// Starts the writer and the delivery threads (once).
pub struct MeteringService;

#[async_trait::async_trait]
impl pingora_core::services::background::BackgroundService for MeteringService {
    async fn start(&self, _shutdown: pingora_core::server::ShutdownWatch) {
        let Some(s) = STARTED.get() else { return };
        let Some(rx) = s.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let dir = PathBuf::from(&s.cfg.spool_dir);
        let writer = match spool::Writer::new(&dir, s.cfg.segment_size.0) {
            Ok(w) => w,
            Err(e) => {
                log::error!("metering: cannot open the spool {}: {e}; usage events are not kept", dir.display());
                return;
            }
        };
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| match std::thread::Builder::new().name(name.into()).spawn(f) {
            Ok(h) => THREADS.lock().unwrap_or_else(|p| p.into_inner()).push(h),
            Err(e) => log::error!("metering: cannot start {name}: {e}"),
        };
        spawn("gatehouse-metering-spool", Box::new(move || write_loop(rx, writer)));
        let (cfg, redis) = (s.cfg.clone(), s.redis.clone());
        spawn("gatehouse-metering-deliver", Box::new(move || deliver::run(cfg, redis)));
    }
}

fn write_loop(rx: Receiver<Item>, mut writer: spool::Writer) {
    let mut buf = Vec::with_capacity(256 * 1024);
    let mut samples = Vec::with_capacity(1024);
    let mut behind = false;
    loop {
        let closing = CLOSING.load(Ordering::Acquire);
        if !closing && !behind {
            std::thread::sleep(WRITE_EVERY);
        }
        let mut gone = false;
        let mut n = 0u64;
        behind = false;
        loop {
            match rx.try_recv() {
                Ok(item) => {
                    buf.extend_from_slice(&item.line);
                    samples.push(item.sample);
                    n += 1;
                    if buf.len() >= 4 << 20 {
                        behind = true;
                        break;
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    gone = true;
                    break;
                }
            }
        }
        if let Err(e) = writer.rotate_if_asked() {
            log::error!("metering: cannot seal the open segment: {e}");
        }
        if !buf.is_empty() {
            match writer.append(&buf) {
                Ok(()) => METRICS.spooled.inc_by(n),
                Err(e) => {
                    log::error!("metering: spool write failed, {n} events lost: {e}");
                    METRICS.events.with_label_values(&["lost"]).inc_by(n);
                }
            }
            buf.clear();
        }
        // After the fsync, and never waiting: an admin query holding the aggregates must not
        // delay the spool. Samples wait for the next wake instead (a bounded number).
        let added = !samples.is_empty() && analytics::try_add(&samples);
        if added || samples.len() > 1 << 20 {
            samples.clear();
        }
        // Stops once the queue is empty: every event of an answered request is on disk.
        if (closing && n == 0) || gone {
            if let Err(e) = writer.seal() {
                log::error!("metering: cannot seal the last segment: {e}");
            }
            return;
        }
    }
}

/// Writes what is queued, seals the segment and stops the sinks (an attempt in flight is
/// abandoned: its events stay after the cursor and the next process sends them again).
pub fn close_all() {
    CLOSING.store(true, Ordering::Release);
    deliver::stop();
    let threads = std::mem::take(&mut *THREADS.lock().unwrap_or_else(|p| p.into_inner()));
    for t in threads {
        let _ = t.join();
    }
}

/// `/status`'s `metering` section.
pub fn status() -> Option<serde_json::Value> {
    STARTED.get()?;
    Some(deliver::status())
}

/// Usage events of one request, from `observe::finish`.
pub fn sample_of(
    route: Option<&Arc<str>>,
    consumer: Option<&Arc<str>>,
    status: u16,
    latency: Duration,
    bytes: (u64, u64),
    at: std::time::SystemTime,
) -> analytics::Sample {
    analytics::Sample {
        route: route.cloned(),
        consumer: consumer.cloned(),
        status,
        latency_us: latency.as_micros().min(u32::MAX as u128) as u32,
        bytes_in: bytes.0,
        bytes_out: bytes.1,
        at,
    }
}
