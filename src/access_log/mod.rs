//! JSON-lines access log. The request path only formats a line and hands it to a bounded
//! channel; a dedicated thread does the writing, so a slow disk never stalls a request.
//! When the writer falls behind, lines are dropped and counted
//! (`gatehouse_access_log_dropped_total`) rather than queued without bound.

use crate::metrics::METRICS;
use once_cell::sync::OnceCell;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Mutex;

/// Set on the way out: writers drain what is queued and stop.
static CLOSING: AtomicBool = AtomicBool::new(false);
static WRITERS: Mutex<Vec<std::thread::JoinHandle<()>>> = Mutex::new(Vec::new());

/// Writes what every access log still holds and waits for it (at most one writer wake-up,
/// `FLUSH_EVERY`): lines of requests answered during a graceful stop are not lost.
pub fn close_all() {
    CLOSING.store(true, Ordering::Release);
    let writers = std::mem::take(&mut *WRITERS.lock().unwrap_or_else(|p| p.into_inner()));
    for w in writers {
        let _ = w.join();
    }
}

pub(crate) mod line;
pub use line::{Line, TlsFields};

const QUEUE: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    Off,
    Stdout,
    File(String),
}

impl Sink {
    pub fn parse(s: &str) -> Sink {
        match s {
            "off" => Sink::Off,
            "stdout" => Sink::Stdout,
            path => Sink::File(path.to_string()),
        }
    }
}

/// One access-log destination. The writer thread starts on first use, after Pingora has
/// daemonized: a thread started before the fork would not exist in the child.
pub struct AccessLog {
    pub sink: Sink,
    tx: OnceCell<Option<SyncSender<Vec<u8>>>>,
}

impl AccessLog {
    pub fn new(sink: Sink) -> Self {
        AccessLog { sink, tx: OnceCell::new() }
    }

    pub fn enabled(&self) -> bool {
        self.sink != Sink::Off
    }

    pub fn write(&self, line: &Line<'_>) {
        let Some(tx) = self.tx.get_or_init(|| self.start()) else {
            return;
        };
        let mut buf = Vec::with_capacity(384);
        line.encode(&mut buf);
        match tx.try_send(buf) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => METRICS.access_log_dropped.inc(),
        }
    }

    fn start(&self) -> Option<SyncSender<Vec<u8>>> {
        let out: Box<dyn Write + Send> = match &self.sink {
            Sink::Off => return None,
            Sink::Stdout => Box::new(std::io::stdout()),
            Sink::File(path) => match std::fs::OpenOptions::new().create(true).append(true).open(path) {
                Ok(f) => Box::new(f),
                Err(e) => {
                    log::error!("access log: cannot open {path}: {e}; access logging is off");
                    return None;
                }
            },
        };
        let (tx, rx) = sync_channel(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("gatehouse-access-log".into())
            .spawn(move || writer(rx, out));
        match spawned {
            Ok(handle) => WRITERS.lock().unwrap_or_else(|p| p.into_inner()).push(handle),
            Err(e) => {
                log::error!("access log: cannot start writer thread: {e}");
                return None;
            }
        }
        Some(tx)
    }
}

/// The writer wakes on its own clock instead of on each line: a receiver blocked on the
/// channel would be woken by every request (a context switch per request, which the ladder
/// showed as the largest cost of logging). Each wake drains what queued and writes it in one
/// go, so a line reaches the disk within about `FLUSH_EVERY`.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

fn writer(rx: Receiver<Vec<u8>>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, out);
    loop {
        std::thread::sleep(FLUSH_EVERY);
        let mut wrote = false;
        loop {
            match rx.try_recv() {
                Ok(line) => {
                    let _ = out.write_all(&line);
                    wrote = true;
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
        }
        if wrote {
            if let Err(e) = out.flush() {
                log::error!("access log: write failed: {e}");
            }
        }
        if CLOSING.load(Ordering::Acquire) {
            let _ = out.flush();
            return;
        }
    }
}
