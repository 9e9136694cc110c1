//! A WebSocket session's clock and its end, kept on the client's connection.
//!
//! After a 101 Pingora copies bytes both ways with a read deadline per direction, so a
//! session where only the server talks would die at the client side's deadline. The idle
//! rule operators expect is "no frame either way": one clock that every byte read from the
//! client and every byte written to it resets. The client's connection sees both
//! directions, so the clock lives here, in the stream the guard gives Pingora, and the
//! proxy arms it (`arm`) once the route allows the upgrade.
//!
//! Ending a session (idle, or the grace period of a shutdown or upgrade running out) sends
//! the client a close frame with 1001 (going away) at a frame boundary of what the server
//! was sending, then ends the read: Pingora then closes the upstream side too.

use pingora_core::protocols::Stream;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::io::AsyncWrite;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::{CloseFrame, Frame, FrameHeader};

/// The part the proxy reaches through the task-local: armed or not, and when the last
/// byte went by.
pub struct Clock {
    base: Instant,
    /// 0: not armed (the request has not been let through as a WebSocket upgrade).
    idle_ms: AtomicU64,
    last_ms: AtomicU64,
    /// WAITING for the upstream's answer, HEAD (a 101 is being written), OPEN (what goes
    /// to the client since is frames).
    phase: AtomicU8,
}

const WAITING: u8 = 0;
const HEAD: u8 = 1;
const OPEN: u8 = 2;

impl Clock {
    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn idle(&self) -> Option<Duration> {
        match self.idle_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Time left before the session counts as idle; `None` once it does.
    fn left(&self, idle: Duration) -> Option<Duration> {
        let quiet = self.now_ms().saturating_sub(self.last_ms.load(Ordering::Relaxed));
        idle.checked_sub(Duration::from_millis(quiet)).filter(|d| !d.is_zero())
    }
}

tokio::task_local! {
    static CURRENT: Arc<Clock>;
}

/// Called by the proxy when it lets an upgrade request through on a WebSocket route: the
/// session is closed after `idle` without a byte either way. False off the guard's HTTP/1
/// path (an h2 stream has no tunnel).
pub fn arm(idle: Duration) -> bool {
    CURRENT
        .try_with(|c| {
            c.touch();
            c.idle_ms.store((idle.as_millis() as u64).max(1), Ordering::Relaxed);
        })
        .is_ok()
}

/// Called by the proxy when the upstream's 101 is about to go to the client: after its
/// head, the bytes written are WebSocket frames.
pub fn upgraded() {
    let _ = CURRENT.try_with(|c| c.phase.store(HEAD, Ordering::Relaxed));
}

/// Runs `f` (Pingora serving one upgrade request) where [`arm`] can find the clock.
pub async fn scope<F: Future>(clock: Arc<Clock>, f: F) -> F::Output {
    CURRENT.scope(clock, f).await
}

type Drain = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What the connection does for a request that asked to upgrade.
pub struct Tunnel {
    clock: Arc<Clock>,
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// Resolves when open sessions must end: shortly before a shutdown's grace period does.
    /// (The mutex only makes the boxed future `Sync`, as Pingora's stream must be.)
    drain: Mutex<Drain>,
    out: Frames,
    /// How much of the head's closing CRLF CRLF has gone out.
    head_end: u8,
    /// The idle timer runs (armed sessions only).
    timer_set: bool,
    close: Close,
    /// The read waiting for a frame the server is still writing to end.
    reader: Option<Waker>,
}

enum Close {
    No,
    /// Ending: the close frame goes out once the server's current frame is complete.
    Wanted,
    Sending(Vec<u8>, usize),
    Sent,
}

impl Tunnel {
    /// `drain` resolves when the grace period is about to run out.
    pub fn new(drain: impl Future<Output = ()> + Send + 'static) -> Self {
        let clock = Arc::new(Clock {
            base: Instant::now(),
            idle_ms: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
            phase: AtomicU8::new(WAITING),
        });
        Tunnel {
            clock,
            sleep: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
            drain: Mutex::new(Box::pin(drain)),
            out: Frames::default(),
            head_end: 0,
            timer_set: false,
            close: Close::No,
            reader: None,
        }
    }

    pub fn clock(&self) -> Arc<Clock> {
        self.clock.clone()
    }

    fn armed(&self) -> bool {
        self.clock.idle().is_some()
    }

    /// Before each read from the client: `Ready(Ok)` with nothing read ends the session (the
    /// close frame is out), `Pending` means read on.
    pub fn poll_end(&mut self, cx: &mut Context<'_>, io: &mut Stream) -> Poll<io::Result<()>> {
        let Some(idle) = self.clock.idle() else { return Poll::Pending };
        if matches!(self.close, Close::No) {
            let drained = match self.drain.get_mut() {
                Ok(d) => d.as_mut().poll(cx).is_ready(),
                Err(_) => false,
            };
            if drained || self.idle_passed(cx, idle) {
                self.close = Close::Wanted;
            }
        }
        if matches!(self.close, Close::Wanted) {
            if self.clock.phase.load(Ordering::Relaxed) != OPEN {
                // No session yet (the upstream has not answered, or not with a 101): no
                // close frame to send, the connection just ends.
                self.close = Close::Sent;
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "idle before the upgrade")));
            }
            if !self.out.at_boundary() {
                self.reader = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let mut frame = Vec::with_capacity(4);
            let away = Frame::close(Some(CloseFrame {
                code: CloseCode::Away,
                reason: "".into(),
            }));
            if away.format(&mut frame).is_err() {
                return Poll::Ready(Err(io::Error::other("close frame")));
            }
            self.close = Close::Sending(frame, 0);
        }
        if let Close::Sending(frame, done) = &mut self.close {
            while *done < frame.len() {
                match Pin::new(&mut *io).poll_write(cx, &frame[*done..]) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        self.close = Close::Sent;
                        return Poll::Ready(Ok(()));
                    }
                    Poll::Ready(Ok(n)) => *done += n,
                    Poll::Pending => return Poll::Pending,
                }
            }
            if Pin::new(&mut *io).poll_flush(cx).is_pending() {
                return Poll::Pending;
            }
            self.close = Close::Sent;
        }
        if matches!(self.close, Close::Sent) {
            return Poll::Ready(Ok(()));
        }
        Poll::Pending
    }

    /// Whether `idle` has gone by without a byte; otherwise the timer is set to wake the
    /// read when it might have.
    ///
    /// The timer is moved only when it fires (to the real deadline, if traffic came since),
    /// not on every read: resetting a timer takes the timer wheel's lock, and per message
    /// that showed in the WebSocket benchmark.
    fn idle_passed(&mut self, cx: &mut Context<'_>, idle: Duration) -> bool {
        if !self.timer_set {
            self.timer_set = true;
            self.sleep.as_mut().reset(tokio::time::Instant::now() + idle);
        }
        while self.sleep.as_mut().poll(cx).is_ready() {
            let Some(left) = self.clock.left(idle) else { return true };
            self.sleep.as_mut().reset(tokio::time::Instant::now() + left);
        }
        false
    }

    /// A read from the client brought bytes.
    pub fn read(&self) {
        if self.armed() {
            self.clock.touch();
        }
    }

    /// How much of `len` bytes the server's side may write now: all of them, unless the
    /// session is ending, when writes stop at the end of the current frame.
    pub fn writable(&self, len: usize) -> usize {
        match self.close {
            Close::No => len,
            Close::Wanted => self.out.left_in_frame(len),
            Close::Sending(..) | Close::Sent => 0,
        }
    }

    /// `data` went to the client.
    pub fn wrote(&mut self, data: &[u8]) {
        if !self.armed() {
            return;
        }
        self.clock.touch();
        let frames = match self.clock.phase.load(Ordering::Relaxed) {
            OPEN => data,
            HEAD => {
                let Some(end) = self.head_done(data) else { return };
                self.clock.phase.store(OPEN, Ordering::Relaxed);
                &data[end..]
            }
            _ => return,
        };
        self.out.feed(frames);
        if matches!(self.close, Close::Wanted) && self.out.at_boundary() {
            if let Some(w) = self.reader.take() {
                w.wake();
            }
        }
    }
}

impl Tunnel {
    /// Where in `data` the 101's head ends (just past its CRLF CRLF), if it does.
    fn head_done(&mut self, data: &[u8]) -> Option<usize> {
        const END: &[u8; 4] = b"\r\n\r\n";
        for (i, b) in data.iter().enumerate() {
            let want = END[self.head_end as usize];
            self.head_end = if *b == want {
                self.head_end + 1
            } else if *b == b'\r' {
                1
            } else {
                0
            };
            if self.head_end == 4 {
                return Some(i + 1);
            }
        }
        None
    }
}

/// Where the server-to-client byte stream is in its frames: a header being read, or
/// payload bytes left. Headers are parsed by tungstenite.
#[derive(Default)]
struct Frames {
    header: Vec<u8>,
    payload_left: u64,
}

impl Frames {
    fn at_boundary(&self) -> bool {
        self.header.is_empty() && self.payload_left == 0
    }

    /// Of `len` bytes, how many belong to the frame under way (all of them between frames
    /// would start a new one, so none).
    fn left_in_frame(&self, len: usize) -> usize {
        if self.payload_left > 0 {
            return len.min(usize::try_from(self.payload_left).unwrap_or(usize::MAX));
        }
        if self.header.is_empty() {
            0
        } else {
            // The rest of a header, then its payload: one byte at a time is enough here.
            len.min(1)
        }
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.payload_left > 0 {
                let n = data.len().min(usize::try_from(self.payload_left).unwrap_or(usize::MAX));
                self.payload_left -= n as u64;
                data = &data[n..];
                continue;
            }
            // A header is at most 14 bytes: take what can be its rest and parse.
            let room = 14usize.saturating_sub(self.header.len()).min(data.len());
            let start = self.header.len();
            self.header.extend_from_slice(&data[..room]);
            let mut cur = io::Cursor::new(&self.header[..]);
            match FrameHeader::parse(&mut cur) {
                Ok(Some((_, len))) => {
                    let used = cur.position() as usize - start;
                    self.header.clear();
                    self.payload_left = len;
                    data = &data[used..];
                }
                Ok(None) => {
                    data = &data[room..];
                    if self.header.len() >= 14 {
                        // Not a frame header after all: stop tracking rather than guess.
                        self.header.clear();
                    }
                }
                Err(_) => {
                    self.header.clear();
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Frames;

    fn frame(len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        tungstenite::protocol::frame::Frame::message(
            vec![b'x'; len],
            tungstenite::protocol::frame::coding::OpCode::Data(tungstenite::protocol::frame::coding::Data::Binary),
            true,
        )
        .format(&mut out)
        .unwrap();
        out
    }

    #[test]
    fn boundaries_are_found_whatever_the_write_sizes() {
        let mut all = Vec::new();
        for len in [0usize, 5, 125, 126, 300, 70_000] {
            all.extend(frame(len));
        }
        for step in [1usize, 2, 3, 7, 13, 1000, all.len()] {
            let mut f = Frames::default();
            for chunk in all.chunks(step) {
                f.feed(chunk);
            }
            assert!(f.at_boundary(), "step {step}");
        }
        let mut f = Frames::default();
        f.feed(&all[..all.len() - 1]);
        assert!(!f.at_boundary());
        assert_eq!(f.left_in_frame(10), 1);
    }
}
