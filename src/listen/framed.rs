//! The client connection as Pingora reads it: bytes are handed over only up to the end of
//! the current request.
//!
//! Pingora, with pipelining off, closes a connection whose client sent anything past the
//! current request (the next request is dropped), and what it does depends on whether the
//! bytes arrived in the same packet. Here the header guard knows each request's framing
//! (none, Content-Length, chunked: checked strictly by [`Chunked`]), so this stream gives
//! Pingora exactly one request's bytes and keeps the rest in `ahead`, where the guard finds
//! the next request. Pipelined requests are then answered in order, whatever the packets.
//!
//! When Pingora gives the connection up while the client may still be sending (an early
//! 413, a malformed body), dropping the socket would make the kernel answer the client's
//! next segment with a reset, and the reset often destroys the answer before the client
//! reads it. The drop hands the socket to a lingering close instead (see `linger`).

use super::chunked::{Chunked, FramingError};
use super::linger;
use async_trait::async_trait;
use bytes::BytesMut;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::protocols::{Peek, Stream};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How the current request's body is framed, and how much of it is left.
#[derive(Debug, Clone)]
pub enum Body {
    /// No body left: the request is complete.
    Done,
    Length(u64),
    Chunked(Chunked),
}

/// What happens to bytes after the current request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Kept for the next request (HTTP/1.1 keep-alive and pipelining).
    Stash,
    /// Passed to Pingora: the request asked to upgrade, and after a 101 the bytes are the
    /// new protocol's.
    Pass,
}

pub struct Framed {
    /// `None` only while being handed to a lingering close on drop.
    inner: Option<Stream>,
    /// Read from the socket, not yet given to Pingora: the start of the next request.
    pub ahead: BytesMut,
    body: Body,
    after: After,
    /// The most `ahead` holds while a request is being served; past it the stream stops
    /// reading until the guard has parsed the next header (which has the same limit).
    ahead_limit: usize,
    /// Set while the request asked to upgrade: the WebSocket session's clock and close.
    pub tunnel: Option<Box<super::tunnel::Tunnel>>,
}

impl std::fmt::Debug for Framed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Framed")
            .field("ahead", &self.ahead.len())
            .field("body", &self.body)
            .field("after", &self.after)
            .finish()
    }
}

fn framing_error(e: FramingError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Whether `e` (from Pingora) came from a malformed request body this stream refused.
pub fn is_framing_error(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<io::Error>()
        .and_then(|io| io.get_ref())
        .is_some_and(|inner| inner.is::<FramingError>())
}

impl Framed {
    pub fn new(inner: Stream, ahead_limit: usize) -> Self {
        Framed {
            inner: Some(inner),
            ahead: BytesMut::new(),
            body: Body::Done,
            after: After::Stash,
            ahead_limit,
            tunnel: None,
        }
    }

    pub fn inner_mut(&mut self) -> Option<&mut Stream> {
        self.inner.as_mut()
    }

    fn io(&self) -> Option<&Stream> {
        self.inner.as_ref()
    }

    fn io_mut(&mut self) -> Option<&mut Stream> {
        self.inner.as_mut()
    }

    /// From now on every byte goes to Pingora as it comes (`ahead` first): for HTTP/2,
    /// which Pingora frames itself.
    pub fn pass_through(&mut self) {
        self.body = Body::Done;
        self.after = After::Pass;
    }

    /// Starts a request whose header the guard accepted. `prefix` is what was read past
    /// the header; returns how many of those bytes are this request's body (the rest is
    /// the next request's, and goes to `ahead`).
    pub fn begin(&mut self, body: Body, after: After, prefix: &[u8]) -> Result<usize, FramingError> {
        self.body = body;
        self.after = after;
        self.consume(prefix)
    }

    /// Accounts for body bytes Pingora receives without reading this stream.
    fn consume(&mut self, data: &[u8]) -> Result<usize, FramingError> {
        match &mut self.body {
            Body::Done => Ok(0),
            Body::Length(left) => {
                let n = (*left).min(data.len() as u64);
                *left -= n;
                if *left == 0 {
                    self.body = Body::Done;
                }
                Ok(n as usize)
            }
            Body::Chunked(c) => match c.feed(data)? {
                Some(n) => {
                    self.body = Body::Done;
                    Ok(n)
                }
                None => Ok(data.len()),
            },
        }
    }

    /// Marks the connection finished with: nothing is left to read or linger on.
    pub fn settle(&mut self) {
        self.body = Body::Done;
    }

    /// Whether the client may still be sending: the body is unfinished, or it already sent
    /// past the current request.
    fn client_still_sending(&self) -> bool {
        !matches!(self.body, Body::Done) || !self.ahead.is_empty()
    }

    /// Reads from the socket into `ahead`, while no request is being read.
    fn poll_ahead(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        if self.ahead.len() >= self.ahead_limit {
            // Enough of the next request is here; the guard reads the rest. Pingora's idle
            // read waits, woken by its other work.
            return Poll::Pending;
        }
        // Uninitialised: this read usually finds nothing (the client waits for its answer),
        // and zeroing a buffer for it each request showed in the profile.
        let mut scratch = [std::mem::MaybeUninit::<u8>::uninit(); 1024];
        let mut rb = ReadBuf::uninit(&mut scratch);
        ready!(Pin::new(inner).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        self.ahead.extend_from_slice(rb.filled());
        Poll::Ready(Ok(n))
    }
}

impl AsyncRead for Framed {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if matches!(this.body, Body::Done) {
            if this.after == After::Pass {
                if !this.ahead.is_empty() {
                    let n = this.ahead.len().min(buf.remaining());
                    buf.put_slice(&this.ahead.split_to(n));
                    return Poll::Ready(Ok(()));
                }
                let Some(s) = this.inner.as_mut() else { return Poll::Ready(Ok(())) };
                if let Some(t) = this.tunnel.as_mut() {
                    if let Poll::Ready(r) = t.poll_end(cx, s) {
                        return Poll::Ready(r);
                    }
                    let before = buf.filled().len();
                    ready!(Pin::new(s).poll_read(cx, buf))?;
                    if buf.filled().len() > before {
                        t.read();
                    }
                    return Poll::Ready(Ok(()));
                }
                return Pin::new(s).poll_read(cx, buf);
            }
            // The request is complete: whatever comes now is the next one. Keep it, and
            // tell Pingora only about the client closing.
            loop {
                match ready!(this.poll_ahead(cx))? {
                    0 => return Poll::Ready(Ok(())),
                    _ => continue,
                }
            }
        }
        // Body bytes already read (they came with the previous request's bytes).
        if !this.ahead.is_empty() {
            let n = this.ahead.len().min(buf.remaining());
            let chunk = this.ahead.split_to(n);
            let take = this.consume(&chunk).map_err(framing_error)?;
            buf.put_slice(&chunk[..take]);
            if take < chunk.len() {
                let mut rest = BytesMut::from(&chunk[take..]);
                rest.unsplit(std::mem::take(&mut this.ahead));
                this.ahead = rest;
            }
            return Poll::Ready(Ok(()));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let start = buf.filled().len();
        ready!(Pin::new(inner).poll_read(cx, buf))?;
        // Pingora caps its reads at a Content-Length body's end, but not at a chunked
        // body's: whatever came past this request's end goes back to `ahead`.
        let got = &buf.filled()[start..];
        let take = this.consume(got).map_err(framing_error)?;
        if take < got.len() {
            this.ahead.extend_from_slice(&got[take..]);
            buf.set_filled(start + take);
        }
        Poll::Ready(Ok(()))
    }
}

super::io::delegate_shutdown!(Framed);
super::io::delegate_meta!(Framed);

/// Writes go straight to the socket; a WebSocket session's also run its clock, and stop at
/// a frame's end while its close frame waits to go out.
impl AsyncWrite for Framed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let Some(s) = this.inner.as_mut() else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        let Some(t) = this.tunnel.as_mut() else {
            return Pin::new(s).poll_write(cx, data);
        };
        let n = t.writable(data.len());
        if n == 0 && !data.is_empty() {
            // The session is over; what the server still sends has nowhere to go.
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let wrote = ready!(Pin::new(s).poll_write(cx, &data[..n]))?;
        t.wrote(&data[..wrote]);
        Poll::Ready(Ok(wrote))
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        if self.tunnel.is_some() {
            let first = bufs.iter().find(|b| !b.is_empty()).map(|b| &**b).unwrap_or(&[]);
            return self.poll_write(cx, first);
        }
        match self.inner.as_mut() {
            Some(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.tunnel.is_none() && self.inner.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.inner.as_mut() {
            Some(s) => Pin::new(s).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.inner.as_mut() {
            Some(s) => Pin::new(s).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl Drop for Framed {
    fn drop(&mut self) {
        if self.client_still_sending() {
            if let Some(s) = self.inner.take() {
                linger::spawn(s);
            }
        }
    }
}

/// Pingora peeks for the h2c preface after the guard has read it into `ahead`.
#[async_trait]
impl Peek for Framed {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        if self.ahead.len() < buf.len() {
            return Ok(false);
        }
        buf.copy_from_slice(&self.ahead[..buf.len()]);
        Ok(true)
    }
}

/// The client's address, for logs and per-address limits.
pub fn peer_ip(s: &Stream) -> Option<std::net::IpAddr> {
    let d = s.get_socket_digest()?;
    match d.peer_addr()? {
        SocketAddr::Inet(a) => Some(a.ip()),
        _ => None,
    }
}
