//! Delivery: one thread with its own small runtime, one task per sink and a janitor. It
//! first takes the spool's delivery lock (during an upgrade the new process waits for the
//! old one to exit), then seals what a dead process left open and resumes every sink from
//! its cursor.

use super::sinks::{self, Failure, Sink};
use super::spool::{self, Batch, Cursor};
use super::METRICS;
use crate::config::{MeteringCfg, SinkCfg};
use once_cell::sync::Lazy;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// What `/status` shows of one sink.
#[derive(Default)]
struct SinkState {
    cursor: Mutex<Cursor>,
    delivered: AtomicU64,
    dead_lettered: AtomicU64,
    lag_bytes: AtomicU64,
    oldest_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
}

type Named = Vec<(String, Arc<SinkState>)>;

static SINKS: Mutex<Named> = Mutex::new(Vec::new());
static STOP: Lazy<watch::Sender<bool>> = Lazy::new(|| watch::channel(false).0);
/// Segments the janitor dropped (spool full) that some sink had not passed yet. A sink
/// counts its loss when its next read finds the gap: only then is it known which of those
/// events it had sent already (a batch in flight when the segment went).
struct Dropped {
    stem: String,
    line_ends: Vec<u64>,
    pending: Vec<String>,
}

static DROPPED: Mutex<Vec<Dropped>> = Mutex::new(Vec::new());

/// After a read from `from`: counts the events of dropped segments the read skipped, and
/// moves an end stuck at a dropped segment past it.
fn settle_drops(name: &str, from: &Cursor, batch: &mut Batch) {
    let mut dropped = lock(&DROPPED);
    for d in dropped.iter_mut() {
        let Some(i) = d.pending.iter().position(|p| p == name) else {
            continue;
        };
        let lost = if d.stem < from.stem {
            // Passed by a batch that was in flight when the segment went: delivered.
            0
        } else if d.stem == from.stem {
            if batch.end == *from {
                batch.end.offset = u64::MAX;
            }
            d.line_ends.iter().filter(|&&e| e > from.offset).count() as u64
        } else if d.stem < batch.end.stem {
            d.line_ends.len() as u64
        } else {
            continue;
        };
        d.pending.swap_remove(i);
        if lost > 0 && !name.starts_with('_') {
            METRICS.dropped.with_label_values(&[name, "spool_full"]).inc_by(lost);
        }
    }
    dropped.retain(|d| !d.pending.is_empty());
}

static HOLDER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn stop() {
    STOP.send_replace(true);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn run(cfg: MeteringCfg, redis: Option<String>) {
    // Delivery yields to requests on a busy core: its backlog waits safely on disk, while a
    // request delayed by a burst of batch work shows in the tail latency. (The spool writer
    // keeps the normal priority: the queue in memory is what a stall would lose.)
    // SAFETY: setpriority on this thread's own id; no memory is touched.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("metering: cannot start the delivery runtime: {e}");
            return;
        }
    };
    rt.block_on(deliver(cfg, redis));
}

struct Task {
    name: String,
    cfg: SinkCfg,
    sink: Box<dyn Sink>,
    state: Arc<SinkState>,
}

/// The usage ledger and the fleet totals read the spool like sinks, with defaults that
/// keep them close behind the writer.
fn internal_cfg() -> SinkCfg {
    SinkCfg {
        kind: crate::config::SinkKind::File,
        url: None,
        headers: Default::default(),
        batch_max: Some(2000),
        flush_interval: crate::config::values::Dur(Duration::from_millis(200)),
        timeout: crate::config::values::Dur(Duration::from_secs(5)),
        retry: crate::config::RetryCfg {
            initial: crate::config::values::Dur(Duration::from_millis(200)),
            max: crate::config::values::Dur(Duration::from_secs(30)),
            max_elapsed: crate::config::values::Dur(Duration::from_secs(365 * 24 * 3600)),
        },
        api_key: None,
        metric_code: None,
        key: None,
        maxlen: 1,
        path: None,
    }
}

async fn deliver(cfg: MeteringCfg, redis: Option<String>) {
    let dir = PathBuf::from(&cfg.spool_dir);
    let mut stop = STOP.subscribe();
    // Waits for the lock: the process that holds it (the old one of an upgrade) is still
    // delivering, and will have written its queue to the spool when it exits.
    let _lock = loop {
        match spool::try_deliver_lock(&dir) {
            Ok(Some(f)) => break f,
            Ok(None) => {}
            Err(e) => log::error!("metering: {}: {e}", dir.join("deliver.lock").display()),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    };
    HOLDER.store(true, Ordering::Release);
    match spool::recover(&dir) {
        Ok(0) => {}
        Ok(n) => log::warn!("metering: sealed {n} segment(s) a stopped process left open"),
        Err(e) => log::error!("metering: recovering {}: {e}", dir.display()),
    }
    let mut tasks = Vec::new();
    for (name, s) in &cfg.sinks {
        // A sink that cannot start still holds its place: its events stay in the spool
        // (counted against spool_max) instead of being removed unread.
        let sink = sinks::build(name, s).unwrap_or_else(|e| {
            log::error!("{e}; its events stay in the spool");
            Box::new(sinks::Broken(e))
        });
        tasks.push(Task {
            name: name.clone(),
            cfg: s.clone(),
            sink,
            state: Arc::default(),
        });
    }
    tasks.push(Task {
        name: "_usage".into(),
        cfg: internal_cfg(),
        sink: Box::new(super::ledger::Ledger::open(&dir)),
        state: Arc::default(),
    });
    if let Some(url) = redis {
        match super::fleet::Fleet::new(&url) {
            Ok(f) => tasks.push(Task {
                name: "_fleet".into(),
                cfg: internal_cfg(),
                sink: Box::new(f),
                state: Arc::default(),
            }),
            Err(e) => log::error!("metering: fleet totals are off: {e}"),
        }
    }
    *lock(&SINKS) = tasks.iter().map(|t| (t.name.clone(), t.state.clone())).collect();
    let mut set = tokio::task::JoinSet::new();
    for t in tasks {
        set.spawn(sink_loop(dir.clone(), t, STOP.subscribe()));
    }
    set.spawn(janitor(dir.clone(), cfg.spool_max.0, STOP.subscribe()));
    while set.join_next().await.is_some() {}
}

fn cursor_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("cursors").join(name)
}

fn load_cursor(dir: &Path, name: &str) -> Cursor {
    std::fs::read_to_string(cursor_path(dir, name))
        .ok()
        .and_then(|s| Cursor::parse(&s))
        .unwrap_or_default()
}

/// Sleeps `d`, or returns false at once if the process is stopping.
async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    let stopped = tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.wait_for(|s| *s) => true,
    };
    !stopped && !*stop.borrow()
}

async fn sink_loop(dir: PathBuf, mut t: Task, mut stop: watch::Receiver<bool>) {
    let mut cursor = t.sink.own_cursor().unwrap_or_else(|| load_cursor(&dir, &t.name));
    *lock(&t.state.cursor) = cursor.clone();
    let name = t.name.clone();
    let labels = [name.as_str()];
    let internal = t.name.starts_with('_');
    let batch_max = t.cfg.batch();
    loop {
        if *stop.borrow() {
            return;
        }
        let mut batch = match spool::read_batch(&dir, &cursor, batch_max) {
            Ok(mut b) => {
                settle_drops(&t.name, &cursor, &mut b);
                b
            }
            Err(e) => {
                log::error!("metering sink {}: reading the spool: {e}", t.name);
                if !pause(&mut stop, t.cfg.flush_interval.0).await {
                    return;
                }
                continue;
            }
        };
        if batch.is_empty() {
            t.sink.idle().await;
            if batch.end != cursor {
                cursor = batch.end.clone();
            }
            let durable = t.sink.own_cursor().unwrap_or_else(|| cursor.clone());
            if *lock(&t.state.cursor) != durable {
                *lock(&t.state.cursor) = durable;
            }
            if !pause(&mut stop, t.cfg.flush_interval.0).await {
                return;
            }
            continue;
        }
        let Some(outcome) = attempt(&mut t, &dir, &cursor, &mut batch, &mut stop).await else {
            return;
        };
        let n = batch.len() as u64;
        match outcome {
            Ok(()) => {
                if !internal {
                    METRICS.delivered.with_label_values(&labels).inc_by(n);
                }
                t.state.delivered.fetch_add(n, Ordering::Relaxed);
                *lock(&t.state.last_error) = None;
            }
            Err(why) => {
                log::error!(
                    "metering sink {}: {n} events refused for good, kept in the dead-letter file: {why}",
                    t.name
                );
                if let Err(e) = dead_letter(&dir, &t.name, &batch) {
                    // Not moving on: losing them silently is worse than a stuck sink.
                    log::error!("metering sink {}: cannot write the dead-letter file: {e}", t.name);
                    if !pause(&mut stop, t.cfg.retry.max.0).await {
                        return;
                    }
                    continue;
                }
                METRICS.dead_lettered.with_label_values(&labels).inc_by(n);
                t.state.dead_lettered.fetch_add(n, Ordering::Relaxed);
                *lock(&t.state.last_error) = Some(why);
            }
        }
        cursor = batch.end.clone();
        // The ledger's own position is what it has made durable (it writes at intervals):
        // that, not how far it has read, is what keeps segments from removal.
        let durable = t.sink.own_cursor().unwrap_or_else(|| cursor.clone());
        if let Err(e) = spool::write_atomic(&cursor_path(&dir, &t.name), durable.text().as_bytes()) {
            log::error!("metering sink {}: cannot save its cursor: {e}", t.name);
        }
        *lock(&t.state.cursor) = durable;
        if batch.len() < batch_max && !pause(&mut stop, t.cfg.flush_interval.0).await {
            return;
        }
    }
}

/// Sends one batch until the sink takes it (`Ok`), refuses it for good or it is older than
/// `retry.max_elapsed` (`Err`, for the dead-letter file). `None`: the process is stopping
/// and the batch stays after the cursor.
///
/// Each retry reads the batch again from the cursor: the same events, unless the spool
/// dropped their segment meanwhile (full), in which case they are counted as dropped and
/// must not be sent as well.
async fn attempt(
    t: &mut Task,
    dir: &Path,
    cursor: &Cursor,
    batch: &mut Batch,
    stop: &mut watch::Receiver<bool>,
) -> Option<Result<(), String>> {
    let started = Instant::now();
    let mut delay = t.cfg.retry.initial.0;
    let batch_max = t.cfg.batch();
    loop {
        if batch.is_empty() {
            return Some(Ok(()));
        }
        let sent = tokio::select! {
            r = tokio::time::timeout(t.cfg.timeout.0, t.sink.send(&*batch)) => r,
            _ = stop.wait_for(|s| *s) => return None,
        };
        let why = match sent {
            Ok(Ok(())) => return Some(Ok(())),
            Ok(Err(Failure::Permanent(why))) => return Some(Err(why)),
            // The receiver takes smaller batches: halve this one and send again at once.
            Ok(Err(Failure::TooLarge(why))) if batch.len() > 1 => {
                let half = batch.len() / 2;
                log::warn!("metering sink {}: {why}; sending {half} events at a time", t.name);
                match spool::read_batch(dir, cursor, half) {
                    Ok(mut b) => {
                        settle_drops(&t.name, cursor, &mut b);
                        *batch = b;
                    }
                    Err(e) => log::error!("metering sink {}: reading the spool again: {e}", t.name),
                }
                continue;
            }
            Ok(Err(Failure::TooLarge(why))) => return Some(Err(why)),
            Ok(Err(Failure::Retry(why))) => why,
            Err(_) => format!("no answer within {}", humantime::format_duration(t.cfg.timeout.0)),
        };
        if !t.name.starts_with('_') {
            METRICS.failures.with_label_values(&[&t.name]).inc();
        }
        log::warn!("metering sink {}: delivery failed, retrying: {why}", t.name);
        *lock(&t.state.last_error) = Some(why.clone());
        if started.elapsed() >= t.cfg.retry.max_elapsed.0 {
            return Some(Err(format!(
                "still failing after {}: {why}",
                humantime::format_duration(t.cfg.retry.max_elapsed.0)
            )));
        }
        // Full jitter between half the delay and the delay: sinks that failed together do
        // not all come back at the same instant.
        let jittered = delay.mul_f64(0.5 + fastrand::f64() * 0.5);
        if !pause(stop, jittered).await {
            return None;
        }
        delay = (delay * 2).min(t.cfg.retry.max.0);
        match spool::read_batch(dir, cursor, batch_max) {
            Ok(mut b) => {
                settle_drops(&t.name, cursor, &mut b);
                *batch = b;
            }
            Err(e) => log::error!("metering sink {}: reading the spool again: {e}", t.name),
        }
    }
}

fn dead_letter(dir: &Path, name: &str, batch: &Batch) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("deadletter-{name}.jsonl")))?;
    let mut buf = Vec::with_capacity(batch.buf.len() + batch.len());
    for line in batch.lines() {
        buf.extend_from_slice(line);
        buf.push(b'\n');
    }
    f.write_all(&buf)?;
    f.sync_data()
}

/// Every second: seals segments of dead writers, removes segments every cursor has passed,
/// drops the oldest past `spool_max` (counted per sink that had not read them), and
/// refreshes the lag figures.
async fn janitor(dir: PathBuf, max: u64, mut stop: watch::Receiver<bool>) {
    loop {
        if let Err(e) = sweep(&dir, max) {
            log::error!("metering: spool upkeep: {e}");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = spool::SEALED.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

fn sweep(dir: &Path, max: u64) -> std::io::Result<()> {
    spool::recover(dir)?;
    let sinks: Named = lock(&SINKS).clone();
    let cursors: Vec<Cursor> = sinks.iter().map(|(_, s)| lock(&s.cursor).clone()).collect();
    let mut segs = spool::list(dir)?;
    segs.retain(|seg| {
        let done = seg.sealed && cursors.iter().all(|c| c.passed(seg));
        if done {
            let _ = std::fs::remove_file(&seg.path);
        }
        !done
    });
    let mut total: u64 = segs.iter().map(|s| s.len).sum();
    while total > max {
        let Some(i) = segs.iter().position(|s| s.sealed) else { break };
        let seg = segs.remove(i);
        let text = std::fs::read(&seg.path)?;
        let pending: Vec<String> = sinks
            .iter()
            .zip(&cursors)
            .filter(|(_, c)| !c.passed(&seg))
            .map(|((name, _), _)| name.clone())
            .collect();
        let ends: Vec<u64> = text
            .iter()
            .enumerate()
            .filter(|(_, &b)| b == b'\n')
            .map(|(i, _)| i as u64 + 1)
            .collect();
        std::fs::remove_file(&seg.path)?;
        total -= seg.len;
        log::error!(
            "metering: spool over metering.spool_max: dropped {} ({} events) before sink(s) {} had all of it",
            seg.path.display(),
            ends.len(),
            pending.join(", ")
        );
        lock(&DROPPED).push(Dropped {
            stem: seg.stem.clone(),
            line_ends: ends,
            pending,
        });
    }
    METRICS.spool_bytes.set(total as i64);
    for ((name, state), c) in sinks.iter().zip(&cursors) {
        let lag: u64 = segs
            .iter()
            .filter(|s| !c.passed(s) && s.stem >= c.stem)
            .map(|s| if s.stem == c.stem { s.len.saturating_sub(c.offset) } else { s.len })
            .sum();
        state.lag_bytes.store(lag, Ordering::Relaxed);
        let age = if lag == 0 { 0.0 } else { oldest_age(dir, c).unwrap_or(0.0) };
        state.oldest_ms.store((age * 1000.0) as u64, Ordering::Relaxed);
        if !name.starts_with('_') {
            METRICS.oldest.with_label_values(&[name]).set(age);
        }
    }
    Ok(())
}

/// Seconds since the first event after the cursor arrived.
fn oldest_age(dir: &Path, c: &Cursor) -> Option<f64> {
    let batch = spool::read_batch(dir, c, 1).ok()?;
    let line = batch.lines().next()?;
    #[derive(serde::Deserialize)]
    struct Time<'a> {
        time: &'a str,
    }
    let t: Time<'_> = serde_json::from_slice(line).ok()?;
    let at = humantime::parse_rfc3339(t.time).ok()?;
    Some(SystemTime::now().duration_since(at).unwrap_or_default().as_secs_f64())
}

pub fn status() -> serde_json::Value {
    let sinks: serde_json::Map<String, serde_json::Value> = lock(&SINKS)
        .iter()
        .map(|(name, s)| {
            (
                name.clone(),
                serde_json::json!({
                    "cursor": lock(&s.cursor).text(),
                    "lag_bytes": s.lag_bytes.load(Ordering::Relaxed),
                    "oldest_undelivered_seconds": s.oldest_ms.load(Ordering::Relaxed) as f64 / 1000.0,
                    "delivered": s.delivered.load(Ordering::Relaxed),
                    "dead_lettered": s.dead_lettered.load(Ordering::Relaxed),
                    "last_error": lock(&s.last_error).clone(),
                }),
            )
        })
        .collect();
    serde_json::json!({
        "delivering": HOLDER.load(Ordering::Acquire),
        "spool_bytes": METRICS.spool_bytes.get(),
        "queued_events": METRICS.events.with_label_values(&["produced"]).get()
            .saturating_sub(METRICS.spooled.get() + METRICS.events.with_label_values(&["lost"]).get()),
        "sinks": sinks,
    })
}
