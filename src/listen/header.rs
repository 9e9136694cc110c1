//! The header guard: Pingora's HTTP/1 keep-alive loop, with each request header read and
//! checked here first, under a deadline Pingora does not have.
//!
//! A connection must send its first byte within `header_timeout` (a silent socket is closed
//! then, not after the keep-alive timeout), and each header must be complete within
//! `header_timeout` of its first byte (slowloris: 408). What was read is handed to Pingora
//! untouched as a "pipelined prefix", cut at the end of the request (see `framed`), so
//! Pingora parses the same bytes and body data read along with the header is not lost.

use super::check::{check, Limits, Refusal, Verdict};
use super::entry::{read_preface, tls_handshake, Listeners};
use super::framed::{peer_ip, Framed};
use super::reply::refuse;
use crate::live::Live;
use crate::metrics::METRICS;
use crate::tls::CertResolver;
use async_trait::async_trait;
use bytes::BytesMut;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::protocols::ALPN;
use pingora_core::server::ShutdownWatch;
use pingora_timeout::fast_timeout::fast_timeout;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::AsyncReadExt;

pub struct HeaderGuard<A> {
    pub inner: Arc<A>,
    pub limits: Limits,
    pub live: Arc<Live>,
    pub listeners: Arc<Listeners>,
    pub certs: Arc<CertResolver>,
    pub tls_handshake_timeout: std::time::Duration,
    /// `server.grace_period`: how long open WebSocket sessions may run on after a
    /// shutdown or upgrade begins.
    pub grace_period: std::time::Duration,
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

/// A header the guard accepted: its bytes (and the body bytes read with it) for Pingora.
struct Accepted {
    prefix: BytesMut,
    /// The request asked to upgrade (the bytes after it go to Pingora as they come).
    upgrade: bool,
}

enum Wait {
    /// The first request of a connection: `header_timeout` from the accept.
    First,
    /// A later request: the keep-alive idle time.
    KeepAlive,
}

impl<A> HeaderGuard<A> {
    /// Reads until a complete header is buffered (bytes already in `framed.ahead` first).
    /// `None`: the connection is finished (closed, idle too long, refused).
    async fn pre_read(&self, framed: &mut Framed, wait: Wait, idle: &mut IdleTimer, shutdown: &mut ShutdownWatch) -> Option<Accepted> {
        let mut buf = std::mem::take(&mut framed.ahead);
        if buf.is_empty() {
            // Small to start: most request headers fit, and an idle keep-alive connection
            // waits here holding this buffer (it grows when a header needs more).
            buf = BytesMut::with_capacity(1024);
            let stream = framed.inner_mut()?;
            match wait {
                // A connection accepted before a shutdown began is served, shutdown or not
                // (its client is waiting for an answer); its wait is bounded all the same.
                Wait::First => match fast_timeout(self.limits.header_timeout, stream.read_buf(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    Ok(_) => return None,
                    Err(_) => {
                        METRICS.rejections.with_label_values(&["_none", "first_byte_timeout"]).inc();
                        return None;
                    }
                },
                Wait::KeepAlive => {
                    if *shutdown.borrow() {
                        return None;
                    }
                    let idle_until = Instant::now() + self.limits.keepalive_timeout;
                    loop {
                        tokio::select! {
                            // A request already on its way is served rather than cut.
                            biased;
                            r = stream.read_buf(&mut buf) => match r {
                                Ok(n) if n > 0 => break,
                                _ => return None,
                            },
                            // Armed for an earlier wait if not yet past our deadline: the
                            // connection was busy since, and the next turn arms the timer for
                            // the rest.
                            _ = idle.fired(idle_until) => if Instant::now() >= idle_until {
                                return None;
                            },
                            _ = shutdown.changed() => return None,
                        }
                    }
                }
            }
        }
        let deadline = Instant::now() + self.limits.header_timeout;
        loop {
            match check(&self.limits, &buf) {
                Verdict::Pass { header_len, body, after } => {
                    let taken = match framed.begin(body, after, &buf[header_len..]) {
                        Ok(n) => n,
                        Err(e) => {
                            log::debug!("refused at the header guard: {e}");
                            let r = Refusal(400, "Bad Request", "malformed chunked body", "bad_chunked_body");
                            Box::pin(self.reject(framed, r)).await;
                            return None;
                        }
                    };
                    let end = header_len + taken;
                    if end < buf.len() {
                        framed.ahead = buf.split_off(end);
                    }
                    return Some(Accepted {
                        prefix: buf,
                        upgrade: after == super::framed::After::Pass,
                    });
                }
                Verdict::Refuse(r) => {
                    Box::pin(self.reject(framed, r)).await;
                    return None;
                }
                Verdict::NeedMore => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let stream = framed.inner_mut()?;
            match fast_timeout(left, stream.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return None,
                Err(_) => {
                    let r = Refusal(408, "Request Timeout", "request header not received in time", "header_timeout");
                    Box::pin(self.reject(framed, r)).await;
                    return None;
                }
            }
        }
    }

    /// Takes the PROXY protocol header off a connection from a trusted load balancer and
    /// makes its client the peer. `None`: refused (counted), the connection is closed.
    async fn proxy_header(&self, stream: &mut Stream) -> Option<()> {
        let trusted = peer_ip(stream).is_some_and(|ip| self.live.load().is_trusted(ip));
        let read = match trusted {
            true => super::proxy_protocol::read(stream, self.limits.header_timeout).await,
            false => Err("proxy_protocol_untrusted"),
        };
        match read {
            Ok(Some(client)) => super::proxy_protocol::set_peer(stream, client),
            Ok(None) => {}
            Err(reason) => {
                log::debug!("connection refused before HTTP: {reason}");
                METRICS.rejections.with_label_values(&["_none", reason]).inc();
                return None;
            }
        }
        Some(())
    }

    /// Answers a refused header, logs it, and closes the connection lingering. Callers box
    /// it (and the TLS and PROXY handshakes): a future awaited inline takes room in every
    /// connection's state for as long as it lives, and these run once or never.
    async fn reject(&self, framed: &mut Framed, Refusal(status, text, message, reason): Refusal) {
        METRICS.rejections.with_label_values(&["_none", reason]).inc();
        let Some(stream) = framed.inner_mut() else { return };
        let id = refuse(stream, status, text, message).await;
        let snap = self.live.load();
        if snap.access_log.enabled() {
            snap.access_log.write(&crate::access_log::Line {
                time: std::time::SystemTime::now(),
                request_id: &id,
                client_ip: peer_ip(stream).unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
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
                trace_id: None,
                websocket: false,
                grpc_status: None,
                grpc_method: None,
                tls: None,
            });
        }
        super::linger::run(stream).await;
        // Lingered already: nothing more for the drop to do.
        framed.ahead.clear();
        framed.settle();
    }
}

/// Pingora's own keep-alive loop for HTTP/1 (`impl ServerApp for T: HttpServerApp`), with
/// the guard's read in front of each request. Owning the loop means the guard costs no
/// extra boxed future or session per request: wrapping `process_new_http` instead took the
/// session Pingora had just built apart and built another.
#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for HeaderGuard<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let listener = self.listeners.of_stream(&stream).clone();
        let mut stream = stream;
        if listener.proxy_protocol {
            Box::pin(self.proxy_header(&mut stream)).await?;
        }
        let mut stream = match &listener.tls {
            Some(acceptor) => Box::pin(tls_handshake(acceptor, stream, &self.certs, self.tls_handshake_timeout)).await?,
            None => stream,
        };
        // HTTP/2 (ALPN, or h2c prior knowledge) is Pingora's to run, once its preface is
        // here: neither Pingora's h2c peek nor its h2 handshake has a deadline of its own.
        let alpn_h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        let mut ahead = BytesMut::new();
        if alpn_h2 || listener.h2c {
            ahead.reserve(64);
            match read_preface(&mut stream, &mut ahead, self.limits.header_timeout).await? {
                true => {
                    let mut framed = Framed::new(stream, self.limits.max_header_size);
                    framed.ahead = ahead;
                    framed.pass_through();
                    let stream = Box::new(super::coalesce::Coalesce::new(Box::new(framed)));
                    return ServerApp::process_new(&self.inner, stream, shutdown).await;
                }
                // ALPN said h2 and the client speaks something else.
                false if alpn_h2 => return None,
                false => {}
            }
        }
        let opts = self.inner.server_options();
        let limit = opts.and_then(|o| o.keepalive_request_limit);
        let mut persistent: Option<HttpPersistentSettings> = None;
        let mut idle = IdleTimer::default();
        let mut watch = shutdown.clone();
        // One allocation per connection; the box goes to Pingora as the session's stream
        // and comes back with each reused connection.
        let mut framed = Box::new(Framed::new(stream, self.limits.max_header_size));
        framed.ahead = ahead;
        let mut wait = Wait::First;
        loop {
            let accepted = self.pre_read(&mut framed, wait, &mut idle, &mut watch).await?;
            wait = Wait::KeepAlive;
            // A request that asks to upgrade may become a WebSocket session: its clock is
            // where the proxy can arm it.
            let clock = accepted.upgrade.then(|| {
                let t = super::tunnel::Tunnel::new(drain(shutdown.clone(), self.grace_period));
                let c = t.clock();
                framed.tunnel = Some(Box::new(t));
                c
            });
            let mut session = ServerSession::new_http1(framed);
            match persistent.take() {
                Some(p) => p.apply_to_session(&mut session),
                None => {
                    session.set_keepalive(Some(60));
                    session.set_keepalive_reuses_remaining(limit);
                }
            }
            // Draining: this answer says `Connection: close`, so the client sends nothing
            // more on a connection that is about to go.
            if *shutdown.borrow() {
                session.set_keepalive(None);
            }
            // Pingora's pipelining stays off: the framed stream never gives it bytes of the
            // next request, so the guard's bytes are the only prefix.
            session.set_pipelined_prefix(accepted.prefix);
            let served = match clock {
                None => self.inner.process_new_http(session, shutdown).await,
                Some(c) => super::tunnel::scope(c, self.inner.process_new_http(session, shutdown)).await,
            };
            let (next, settings) = served?.consume();
            framed = next.into_any().downcast::<Framed>().ok()?;
            framed.tunnel = None;
            persistent = settings;
        }
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await
    }
}

/// Resolves shortly before a shutdown's grace period ends (Pingora drops every task when it
/// does): open WebSocket sessions then get their close frame while it can still go out.
async fn drain(mut shutdown: ShutdownWatch, grace: std::time::Duration) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            // The server is gone without a shutdown: nothing to drain for.
            std::future::pending::<()>().await;
        }
    }
    let margin = (grace / 2).min(std::time::Duration::from_secs(1));
    tokio::time::sleep(grace.saturating_sub(margin)).await;
}
