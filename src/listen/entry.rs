//! Which listener a connection came in on, and what happens before HTTP: the TLS handshake
//! (under `server.tls_handshake_timeout`, not Pingora's fixed 60 s), then the protocol:
//! ALPN `h2`, the h2c preface (read under the header deadline, where Pingora's own peek
//! waits forever), or HTTP/1 through the header guard.

use crate::config::File;
use crate::metrics::METRICS;
use crate::tls::CertResolver;
use bytes::BytesMut;
use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_core::protocols::tls::server::handshake_with_callback;
use pingora_core::protocols::Stream;
use pingora_core::tls::ssl::SslAcceptor;
use pingora_timeout::fast_timeout::fast_timeout;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// What one listener does with its connections, fixed at start.
pub struct ListenerRt {
    pub name: String,
    pub addr: SocketAddr,
    pub tls: Option<SslAcceptor>,
    pub h2c: bool,
    /// A PROXY protocol header comes first (from `trusted_proxies` only).
    pub proxy_protocol: bool,
    /// `Strict-Transport-Security` for every answer (TLS listeners).
    pub hsts: Option<http::HeaderValue>,
    /// The 308 target template (`https://{host}:8443{uri}`) of a plaintext listener.
    pub redirect_https: Option<String>,
}

/// Every listener of the process, looked up by a connection's local address.
pub struct Listeners {
    list: Vec<Arc<ListenerRt>>,
}

impl Listeners {
    /// Builds each listener's TLS acceptor; errors are (key path, reason).
    pub fn build(file: &File) -> Result<Listeners, (String, String)> {
        let mut list = Vec::new();
        for (name, l) in &file.listeners {
            let key = |f: &str| format!("listeners.{name}.{f}");
            let addr: SocketAddr = l.addr.parse().map_err(|_| (key("addr"), format!("`{}` is not IP:port", l.addr)))?;
            let tls = if l.tls {
                Some(crate::tls::acceptor(l).map_err(|(f, e)| (key(f), e))?)
            } else {
                None
            };
            let hsts = match &l.hsts {
                Some(v) => Some(http::HeaderValue::from_str(v).map_err(|_| (key("hsts"), "not a header value".into()))?),
                None => None,
            };
            list.push(Arc::new(ListenerRt {
                name: name.clone(),
                addr,
                tls,
                h2c: l.h2c,
                proxy_protocol: l.proxy_protocol,
                hsts,
                redirect_https: l.redirect_https.clone(),
            }));
        }
        Ok(Listeners { list })
    }

    /// A plaintext listener of its own (the admin API).
    pub fn plain(name: &str, addr: SocketAddr) -> Listeners {
        Listeners {
            list: vec![Arc::new(ListenerRt {
                name: name.to_string(),
                addr,
                tls: None,
                h2c: false,
                proxy_protocol: false,
                hsts: None,
                redirect_https: None,
            })],
        }
    }

    /// The listener whose address `local` is (its port, and its IP unless it listens on
    /// every address).
    pub fn of(&self, local: Option<SocketAddr>) -> &Arc<ListenerRt> {
        if self.list.len() > 1 {
            if let Some(local) = local {
                let found = self
                    .list
                    .iter()
                    .find(|l| l.addr.port() == local.port() && (l.addr.ip().is_unspecified() || l.addr.ip() == local.ip()));
                if let Some(l) = found {
                    return l;
                }
            }
        }
        &self.list[0]
    }

    pub fn of_stream(&self, s: &Stream) -> &Arc<ListenerRt> {
        let local = s.get_socket_digest().and_then(|d| match d.local_addr()? {
            PingoraAddr::Inet(a) => Some(*a),
            _ => None,
        });
        self.of(local)
    }
}

/// The socket under TLS: the TLS stream needs an `IO` it owns.
#[derive(Debug)]
pub struct Raw(Stream);

impl Raw {
    fn io(&self) -> Option<&Stream> {
        Some(&self.0)
    }
    fn io_mut(&mut self) -> Option<&mut Stream> {
        Some(&mut self.0)
    }
}

impl AsyncRead for Raw {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

super::io::delegate_stream!(Raw);

impl pingora_core::protocols::Peek for Raw {}

/// The TLS handshake, bounded. `None`: it failed or took too long (counted).
pub async fn tls_handshake(acceptor: &SslAcceptor, stream: Stream, certs: &CertResolver, deadline: Duration) -> Option<Stream> {
    match fast_timeout(deadline, handshake_with_callback(acceptor, Raw(stream), certs)).await {
        Ok(Ok(s)) => Some(Box::new(s)),
        Ok(Err(e)) => {
            log::debug!("tls: handshake failed: {e}");
            METRICS.rejections.with_label_values(&["_none", "tls_handshake_failed"]).inc();
            None
        }
        Err(_) => {
            METRICS.rejections.with_label_values(&["_none", "tls_handshake_timeout"]).inc();
            None
        }
    }
}

pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads the start of the connection into `buf` under `deadline`: `Some(true)` once it is
/// the HTTP/2 preface, `Some(false)` as soon as it cannot be (HTTP/1: the bytes stay in
/// `buf` for the header guard), `None` when the client closed or stayed silent.
pub async fn read_preface(stream: &mut Stream, buf: &mut BytesMut, deadline: Duration) -> Option<bool> {
    let until = Instant::now() + deadline;
    loop {
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] != H2_PREFACE[..n] {
            return Some(false);
        }
        if n == H2_PREFACE.len() {
            return Some(true);
        }
        let left = until.saturating_duration_since(Instant::now());
        match fast_timeout(left, stream.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return None,
            Err(_) => {
                METRICS.rejections.with_label_values(&["_none", "first_byte_timeout"]).inc();
                return None;
            }
        }
    }
}
