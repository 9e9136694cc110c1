//! Writes of an HTTP/2 connection gathered into fewer sends. Pingora runs each h2 stream in
//! a task of its own, and the h2 connection flushes after every stream that has something
//! to send: ten concurrent answers became ten TLS records and ten `send`s, where nginx
//! writes them together. Here a flush with bytes waiting first yields once (the connection
//! task is rescheduled behind the stream tasks already woken), so the answers that are ready
//! by then go out in one write. A flush is never held longer than that one turn.

use bytes::BytesMut;
use pingora_core::protocols::{Peek, Stream};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Past this much waiting, writes go to the socket without waiting for a flush.
const CAP: usize = 16 * 1024;

#[derive(Debug)]
pub struct Coalesce {
    inner: Stream,
    buf: BytesMut,
    /// The flush has yielded its one turn.
    yielded: bool,
}

impl Coalesce {
    pub fn new(inner: Stream) -> Coalesce {
        Coalesce {
            inner,
            buf: BytesMut::new(),
            yielded: false,
        }
    }

    fn io(&self) -> Option<&Stream> {
        Some(&self.inner)
    }

    fn io_mut(&mut self) -> Option<&mut Stream> {
        Some(&mut self.inner)
    }

    /// Writes out what is waiting.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.buf.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let _ = self.buf.split_to(n);
        }
        // An idle connection should not keep a large buffer.
        if self.buf.capacity() > CAP {
            self.buf = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Coalesce {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Coalesce {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if self.buf.len() + data.len() > CAP {
            ready!(self.poll_drain(cx))?;
            if data.len() >= CAP {
                return Pin::new(&mut self.inner).poll_write(cx, data);
            }
        }
        self.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if self.buf.len() + total > CAP {
            ready!(self.poll_drain(cx))?;
            if total >= CAP {
                return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
            }
        }
        for b in bufs {
            self.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.buf.is_empty() && !self.yielded {
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(self.poll_drain(cx))?;
        self.yielded = false;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait::async_trait]
impl pingora_core::protocols::Shutdown for Coalesce {
    async fn shutdown(&mut self) {
        let _ = std::future::poll_fn(|cx| self.poll_drain(cx)).await;
        pingora_core::protocols::Shutdown::shutdown(&mut *self.inner).await;
    }
}

super::io::delegate_meta!(Coalesce);

#[async_trait::async_trait]
impl Peek for Coalesce {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
