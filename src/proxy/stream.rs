//! Long-lived exchanges: WebSocket sessions and streamed responses (server-sent events,
//! long polls), which a per-read deadline or a body limit would cut.

use crate::metrics::METRICS;
use once_cell::sync::Lazy;
use pingora_http::RequestHeader;
use pingora_proxy::Session;
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts};

pub struct StreamMetrics {
    open: IntGaugeVec,
    sessions: IntCounterVec,
    bytes: IntCounterVec,
}

static STREAM_METRICS: Lazy<StreamMetrics> = Lazy::new(|| {
    let open = IntGaugeVec::new(
        Opts::new("gatehouse_websocket_sessions_open", "WebSocket sessions open now, by route."),
        &["route"],
    )
    .expect("static gauge definition");
    let sessions = IntCounterVec::new(
        Opts::new("gatehouse_websocket_sessions_total", "WebSocket sessions opened, by route."),
        &["route"],
    )
    .expect("static counter definition");
    let bytes = IntCounterVec::new(
        Opts::new(
            "gatehouse_websocket_bytes_total",
            "WebSocket bytes after the upgrade, by route and direction (in: from clients).",
        ),
        &["route", "direction"],
    )
    .expect("static counter definition");
    for c in [
        Box::new(open.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(sessions.clone()),
        Box::new(bytes.clone()),
    ] {
        if let Err(e) = METRICS.registry.register(c) {
            log::error!("metric registration failed: {e}");
        }
    }
    StreamMetrics { open, sessions, bytes }
});

/// Whether the request asks to become a WebSocket (`Upgrade: websocket` on HTTP/1.1).
pub fn wants_websocket(session: &Session) -> bool {
    session.is_upgrade_req()
        && session
            .req_header()
            .headers
            .get_all(http::header::UPGRADE)
            .iter()
            .any(|v| has_token(v.as_bytes(), b"websocket"))
}

/// What the request's headers say about how it streams, read in one pass over them (two
/// hashed lookups cost more on every request than walking the few headers a request has).
pub struct Shape {
    /// Content-Type names gRPC or grpc-web.
    pub grpc: Option<super::grpc::Kind>,
    /// The client waits for server-sent events: browsers' EventSource asks with
    /// `Accept: text/event-stream`, and the answer then has no read deadline between events.
    pub event_stream: bool,
}

pub fn shape(req: &RequestHeader) -> Shape {
    let mut s = Shape {
        grpc: None,
        event_stream: false,
    };
    for (name, v) in req.headers.iter() {
        if name == http::header::CONTENT_TYPE {
            s.grpc = super::grpc::kind_of(v.as_bytes());
        } else if name == http::header::ACCEPT && !s.event_stream {
            s.event_stream = v.as_bytes().split(|b| *b == b',').any(|t| {
                let media = t.split(|b| *b == b';').next().unwrap_or(t);
                media.trim_ascii().eq_ignore_ascii_case(b"text/event-stream")
            });
        }
    }
    s
}

fn has_token(v: &[u8], token: &[u8]) -> bool {
    v.split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// An open session, counted in the gauge until it is dropped (with the request's context,
/// however the session ends).
pub struct Open {
    gauge: IntGauge,
}

impl Open {
    pub fn start(route: &str) -> Open {
        let m = &*STREAM_METRICS;
        m.sessions.with_label_values(&[route]).inc();
        let gauge = m.open.with_label_values(&[route]);
        gauge.inc();
        Open { gauge }
    }

    /// The session's bytes after the 101, each way.
    pub fn finish(&self, route: &str, bytes_in: usize, bytes_out: usize) {
        let m = &*STREAM_METRICS;
        m.bytes.with_label_values(&[route, "in"]).inc_by(bytes_in as u64);
        m.bytes.with_label_values(&[route, "out"]).inc_by(bytes_out as u64);
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_stream_accept() {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        assert!(!shape(&r).event_stream);
        r.insert_header("accept", "text/html, Text/Event-Stream;q=0.9").unwrap();
        r.insert_header("content-type", "application/grpc-web-text").unwrap();
        let s = shape(&r);
        assert!(s.event_stream);
        assert_eq!(s.grpc, Some(crate::proxy::grpc::Kind::WebText));
        assert!(has_token(b"keep-alive, Upgrade", b"upgrade"));
        assert!(!has_token(b"websocketx", b"websocket"));
    }
}
