use super::reply::refuse;
use crate::live::Live;
use crate::metrics::METRICS;
use async_trait::async_trait;
use bytes::BytesMut;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_timeout::fast_timeout::fast_timeout;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// Pingora's own cap on header lines; ours may only be lower.
pub const MAX_HEADERS_CEILING: usize = 256;

#[derive(Debug, Clone)]
pub struct Limits {
    /// From the first byte of a request to the end of its header.
    pub header_timeout: Duration,
    /// How long an idle keep-alive connection may wait for its next request.
    pub keepalive_timeout: Duration,
    pub max_header_size: usize,
    pub max_headers: usize,
    pub max_uri: usize,
}

/// Reads each HTTP/1 request header itself, under a deadline, and checks it before
/// Pingora sees it. What it read is handed back untouched, so Pingora parses the same
/// bytes and body data read along with the header is not lost.
pub struct HeaderGuard<A> {
    pub inner: Arc<A>,
    pub limits: Limits,
    pub live: Arc<Live>,
}

/// The keep-alive idle timer of one connection, armed lazily and kept across requests:
/// arming a timer for every wait costs an allocation and a timer registration per request
/// (about 1k instructions). When one armed during an earlier, shorter wait fires, the waiter
/// sees its own deadline has not passed and re-arms for the rest, as nginx does.
#[derive(Default)]
struct IdleTimer {
    sleep: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl IdleTimer {
    /// Completes when the armed timer fires (arming it for the whole deadline first).
    async fn fired(&mut self, until: Instant) {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(pingora_timeout::sleep(until.saturating_duration_since(Instant::now()))));
        sleep.as_mut().await;
        self.sleep = None;
    }
}

enum Verdict {
    /// Header complete and acceptable.
    Pass,
    NeedMore,
    Refuse(u16, &'static str, &'static str, &'static str),
}

const BAD: (u16, &str) = (400, "Bad Request");

fn refuse_with(status: (u16, &'static str), message: &'static str, reason: &'static str) -> Verdict {
    Verdict::Refuse(status.0, status.1, message, reason)
}

impl<A> HeaderGuard<A> {
    fn check(&self, buf: &[u8]) -> Verdict {
        // Uninitialised: filling 256 empty headers first costs ~1k instructions per request.
        let mut storage = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_CEILING];
        let mut req = httparse::Request::new(&mut []);
        let status = req.parse_with_uninit_headers(buf, &mut storage[..self.limits.max_headers]);
        if let Some(path) = req.path {
            if path.len() > self.limits.max_uri {
                return refuse_with((414, "URI Too Long"), "request URI is too long", "uri_too_long");
            }
        } else if buf.len() > self.limits.max_uri + 64 && !buf.contains(&b'\n') {
            // The request line alone is already longer than any URI we accept.
            return refuse_with((414, "URI Too Long"), "request URI is too long", "uri_too_long");
        }
        match status {
            Ok(httparse::Status::Partial) => {
                if buf.len() > self.limits.max_header_size {
                    refuse_with(
                        (431, "Request Header Fields Too Large"),
                        "request header is too large",
                        "header_too_large",
                    )
                } else {
                    Verdict::NeedMore
                }
            }
            Err(httparse::Error::TooManyHeaders) => refuse_with(
                (431, "Request Header Fields Too Large"),
                "too many request header fields",
                "too_many_headers",
            ),
            Err(_) => refuse_with(BAD, "malformed request", "malformed"),
            Ok(httparse::Status::Complete(len)) => {
                if len > self.limits.max_header_size {
                    return refuse_with(
                        (431, "Request Header Fields Too Large"),
                        "request header is too large",
                        "header_too_large",
                    );
                }
                framing(&req)
            }
        }
    }

    /// Reads until a complete header is buffered. `None`: the connection is finished
    /// (closed, idle too long, refused).
    async fn pre_read(&self, stream: &mut Stream, idle: &mut IdleTimer, shutdown: &mut ShutdownWatch) -> Option<BytesMut> {
        // Small to start: most request headers fit, and an idle keep-alive connection waits
        // here holding this buffer (it grows when a header needs more).
        let mut buf = BytesMut::with_capacity(1024);
        if *shutdown.borrow() {
            return None;
        }
        let idle_until = Instant::now() + self.limits.keepalive_timeout;
        loop {
            tokio::select! {
                r = stream.read_buf(&mut buf) => match r {
                    Ok(n) if n > 0 => break,
                    _ => return None,
                },
                // Armed for an earlier wait if not yet past our deadline: the connection was
                // busy since, and the next turn arms the timer for the rest.
                _ = idle.fired(idle_until) => if Instant::now() >= idle_until {
                    return None;
                },
                _ = shutdown.changed() => return None,
            }
        }
        let deadline = Instant::now() + self.limits.header_timeout;
        loop {
            match self.check(&buf) {
                Verdict::Pass => return Some(buf),
                Verdict::Refuse(status, text, message, reason) => {
                    self.reject(stream, status, text, message, reason).await;
                    return None;
                }
                Verdict::NeedMore => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match fast_timeout(left, stream.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return None,
                Err(_) => {
                    self.reject(
                        stream,
                        408,
                        "Request Timeout",
                        "request header not received in time",
                        "header_timeout",
                    )
                    .await;
                    return None;
                }
            }
        }
    }

    async fn reject(&self, stream: &mut Stream, status: u16, text: &str, message: &str, reason: &'static str) {
        METRICS.rejections.with_label_values(&["_none", reason]).inc();
        let id = refuse(stream, status, text, message).await;
        let snap = self.live.load();
        if snap.access_log.enabled() {
            let peer = stream
                .get_socket_digest()
                .and_then(|d| d.peer_addr().and_then(|a| a.as_inet().map(|i| i.ip())))
                .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
            snap.access_log.write(&crate::access_log::Line {
                time: std::time::SystemTime::now(),
                request_id: &id,
                client_ip: peer,
                method: "",
                host: "",
                path: "",
                status,
                route: "",
                upstream: "",
                target: "",
                bytes_in: 0,
                bytes_out: 0,
                duration_ms: 0.0,
                upstream_ms: None,
                consumer: None,
                rejection: Some(reason),
                error: None,
            });
        }
    }
}

/// Message framing rules, stricter than RFC 9112 allows a server to be, because a proxy
/// that reads framing differently from its upstream is how requests get smuggled:
/// one Transfer-Encoding, and only `chunked`; never with Content-Length; one
/// Content-Length of digits; Host required on HTTP/1.1.
fn framing(req: &httparse::Request<'_, '_>) -> Verdict {
    let mut te = 0;
    let mut cl = 0;
    let mut host = 0;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te += 1;
            if !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return refuse_with(
                    BAD,
                    "unsupported transfer-encoding (only a single `chunked` is accepted)",
                    "bad_transfer_encoding",
                );
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            cl += 1;
            let v = h.value.trim_ascii();
            if v.is_empty() || !v.iter().all(u8::is_ascii_digit) || v.len() > 18 {
                return refuse_with(BAD, "invalid content-length", "bad_content_length");
            }
        } else if h.name.eq_ignore_ascii_case("host") {
            host += 1;
        }
    }
    if te > 1 {
        return refuse_with(BAD, "repeated transfer-encoding", "bad_transfer_encoding");
    }
    if cl > 1 {
        return refuse_with(BAD, "repeated content-length", "bad_content_length");
    }
    if te > 0 && cl > 0 {
        return refuse_with(BAD, "both content-length and transfer-encoding", "ambiguous_framing");
    }
    if te > 0 && req.version == Some(0) {
        return refuse_with(BAD, "transfer-encoding on HTTP/1.0", "bad_transfer_encoding");
    }
    if host != 1 && req.version == Some(1) {
        return refuse_with(BAD, "HTTP/1.1 requires exactly one Host header", "bad_host");
    }
    Verdict::Pass
}

/// Pingora's own keep-alive loop for HTTP/1 (`impl ServerApp for T: HttpServerApp`), with
/// the guard's read in front of each request. Owning the loop means the guard costs no
/// extra boxed future or session per request: wrapping `process_new_http` instead took the
/// session Pingora had just built apart and built another.
#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for HeaderGuard<A> {
    async fn process_new(self: &Arc<Self>, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let opts = self.inner.server_options();
        // TLS (ALPN decides), h2c and custom protocols are Pingora's to dispatch.
        if stream.get_ssl_digest().is_some() || opts.is_some_and(|o| o.h2c || o.force_custom) {
            return ServerApp::process_new(&self.inner, stream, shutdown).await;
        }
        let limit = opts.and_then(|o| o.keepalive_request_limit);
        let mut persistent: Option<HttpPersistentSettings> = None;
        let mut idle = IdleTimer::default();
        let mut watch = shutdown.clone();
        loop {
            let buf = self.pre_read(&mut stream, &mut idle, &mut watch).await?;
            let mut session = ServerSession::new_http1(stream);
            match persistent.take() {
                Some(p) => p.apply_to_session(&mut session),
                None => {
                    session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
                    session.set_keepalive_reuses_remaining(limit);
                }
            }
            // Pingora carries over-read bytes in the persistent settings only when HTTP/1
            // pipelining is enabled, which Gatehouse never does; the guard's bytes are the
            // only prefix.
            session.set_pipelined_prefix(buf);
            let (next, settings) = self.inner.process_new_http(session, shutdown).await?.consume();
            stream = next;
            persistent = settings;
        }
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> HeaderGuard<()> {
        let text = "[listeners.a]\naddr = \"127.0.0.1:1\"\n[routes.r]\n[routes.r.plugins.respond]\n";
        let file = crate::config::parse_str("t", text).unwrap();
        HeaderGuard {
            inner: Arc::new(()),
            limits: Limits {
                header_timeout: Duration::from_secs(1),
                keepalive_timeout: Duration::from_secs(1),
                max_header_size: 256,
                max_headers: 4,
                max_uri: 32,
            },
            live: Arc::new(Live::new(std::path::Path::new("t"), text, file).unwrap()),
        }
    }

    fn status(raw: &str) -> Option<u16> {
        match guard().check(raw.as_bytes()) {
            Verdict::Pass => None,
            Verdict::NeedMore => Some(0),
            Verdict::Refuse(s, ..) => Some(s),
        }
    }

    #[test]
    fn framing_rules() {
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), None);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a\r\n"), Some(0));
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(400)
        );
        assert_eq!(status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n"), Some(400));
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n"), Some(400));
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), Some(400));
    }

    #[test]
    fn limits() {
        assert_eq!(status(&format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(40))), Some(414));
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\n\r\n"),
            Some(431)
        );
        assert_eq!(
            status(&format!("GET / HTTP/1.1\r\nHost: a\r\nA: {}\r\n\r\n", "x".repeat(300))),
            Some(431)
        );
        assert_eq!(status(&format!("GET / HTTP/1.1\r\nHost: a\r\nA: {}", "x".repeat(300))), Some(431));
    }
}
