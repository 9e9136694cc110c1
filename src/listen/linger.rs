//! Lingering close, as nginx does it: after an early answer (413, 400, 408, 431) to a
//! client that is still sending, the write side is shut (the client sees the answer, then
//! end of stream) and what the client still sends is read and thrown away for a short,
//! bounded time before the socket is closed.
//!
//! Closing at once would leave the client's unread bytes in the kernel, which answers them
//! with a reset; the client's sends then fail, and most clients report the reset instead
//! of reading the answer that was already there.

use pingora_core::protocols::Stream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The longest a connection lingers, in total and without the client sending anything.
const LINGER_TIME: Duration = Duration::from_secs(5);
const LINGER_IDLE: Duration = Duration::from_secs(1);

/// Connections lingering at once, across the process. Past the cap a connection is closed
/// at once: lingering is a courtesy, never a way to hold the gateway's sockets.
const MAX_LINGERING: usize = 4096;
static LINGERING: AtomicUsize = AtomicUsize::new(0);

/// Shuts the write side, then discards input until the client closes, goes quiet for
/// `LINGER_IDLE`, or `LINGER_TIME` has passed. Past `MAX_LINGERING` it only shuts.
pub async fn run(stream: &mut Stream) {
    let _ = stream.shutdown().await;
    if LINGERING.fetch_add(1, Ordering::Relaxed) >= MAX_LINGERING {
        LINGERING.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    let deadline = Instant::now() + LINGER_TIME;
    // On the heap: a buffer here would be part of every connection task's future (the
    // guard awaits this), lingering or not: 4 KiB per idle connection.
    let mut scratch = vec![0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match pingora_timeout::timeout(left.min(LINGER_IDLE), stream.read(&mut scratch)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => break,
        }
    }
    LINGERING.fetch_sub(1, Ordering::Relaxed);
}

/// Lingers on `stream` in a task of its own (from a drop, where nothing can be awaited).
pub fn spawn(mut stream: Stream) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move { run(&mut stream).await });
    }
}
