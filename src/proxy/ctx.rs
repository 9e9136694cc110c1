//! Per-request state, carried through every phase.

use crate::snapshot::{Route, Snapshot};
use crate::upstream::InFlight;
use gatehouse_plugins::PluginCtx;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Ctx {
    pub start: Instant,
    /// The one config this request sees, even if a reload happens meanwhile.
    pub snapshot: Option<Arc<Snapshot>>,
    pub route: Option<Arc<Route>>,
    /// Bytes to cut from the front of the path (`strip_prefix`).
    pub strip: usize,
    pub peer_ip: IpAddr,
    pub peer_trusted: bool,
    pub plugin: PluginCtx,
    /// The request id as a header value, built once and shared by the upstream request and
    /// the response.
    pub request_id: Option<http::HeaderValue>,
    pub upstream: Upstream,
    /// Status of an answer the gateway wrote itself (errors, plugin answers).
    pub own_status: Option<u16>,
    pub error: Option<&'static str>,
    /// x-cache-status of this request on a cached route.
    pub cache_status: Option<&'static str>,
    /// Body limit for this request (route's, else the server's) and bytes seen so far.
    pub max_body: u64,
    pub body_bytes: u64,
    /// The connection's TLS, when it has one (version, cipher, and `tls::TlsInfo`).
    pub tls: Option<Arc<pingora_core::protocols::tls::SslDigest>>,
    /// The request asks to become a WebSocket session.
    pub websocket: bool,
    /// Set once the upstream answered 101: the session, counted while open.
    pub ws_open: Option<super::stream::Open>,
    /// The upstream may take any time between reads (a WebSocket, an event stream).
    pub unbounded_reads: bool,
    /// The client speaks gRPC (or grpc-web): the gateway's own answers are gRPC statuses.
    pub grpc: Option<super::grpc::Kind>,
    /// `grpc-status` of the answer (the upstream's trailers, or the gateway's own).
    pub grpc_status: Option<u16>,
    /// `grpc-timeout` on a gRPC route: no read from the upstream waits longer.
    pub grpc_deadline: Option<Duration>,
    /// grpc-web bridged to gRPC for this request.
    pub web: Option<Box<super::grpc_web::WebBridge>>,
    /// The request's spans, when tracing is on.
    pub trace: Option<Box<crate::trace::request::ReqTrace>>,
}

/// What happened on the upstream side.
#[derive(Default)]
pub struct Upstream {
    /// Indices of targets already tried, so a retry goes elsewhere.
    pub tried: Vec<usize>,
    pub in_flight: Option<InFlight>,
    pub started: Option<Instant>,
    pub elapsed: Option<Duration>,
    /// Status the upstream answered with.
    pub status: Option<u16>,
    /// Pingora is retrying after a pooled connection failed: the same target may be used.
    pub reuse_retry: bool,
    /// The last target chosen, for the access log.
    pub target: Option<std::sync::Arc<str>>,
    /// The current attempt was counted as failed (it may still have sent a status first).
    pub failed: bool,
}

/// Shared so that a new context does not allocate an empty name per request.
static NO_ROUTE: once_cell::sync::Lazy<Arc<str>> = once_cell::sync::Lazy::new(|| Arc::from(""));

impl Ctx {
    pub fn new() -> Self {
        let unspecified = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        Ctx {
            start: Instant::now(),
            snapshot: None,
            route: None,
            strip: 0,
            peer_ip: unspecified,
            peer_trusted: false,
            plugin: PluginCtx::new(unspecified, NO_ROUTE.clone(), String::new()),
            request_id: None,
            upstream: Upstream::default(),
            own_status: None,
            error: None,
            cache_status: None,
            max_body: u64::MAX,
            body_bytes: 0,
            tls: None,
            websocket: false,
            ws_open: None,
            unbounded_reads: false,
            grpc: None,
            grpc_status: None,
            grpc_deadline: None,
            web: None,
            trace: None,
        }
    }

    pub fn route_name(&self) -> &str {
        self.route.as_ref().map(|r| &*r.name).unwrap_or("")
    }

    /// What the TLS handshake told (SNI, client certificate), when there was one.
    pub fn tls_info(&self) -> Option<&crate::tls::TlsInfo> {
        self.tls.as_ref()?.extension.get::<crate::tls::TlsInfo>()
    }
}

impl Default for Ctx {
    fn default() -> Self {
        Self::new()
    }
}
