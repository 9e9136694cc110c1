//! One access-log line and its JSON encoding. Written by hand rather than through serde:
//! serde_json's per-byte string escaping, float printing and an RFC 3339 timestamp
//! formatted from scratch were ~10k instructions per request by callgrind, most of the
//! access log's cost on the request path.

use gatehouse_plugins::ascii::{push_ip, push_u64};
use std::cell::RefCell;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

pub struct Line<'a> {
    pub time: SystemTime,
    pub request_id: &'a str,
    pub client_ip: IpAddr,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub route: &'a str,
    pub upstream: &'a str,
    pub target: &'a str,
    pub bytes_in: usize,
    pub bytes_out: usize,
    pub duration_ms: f64,
    pub upstream_ms: Option<f64>,
    pub consumer: Option<&'a str>,
    pub rejection: Option<&'a str>,
    pub error: Option<&'a str>,
    /// The request's trace id, when tracing is on: the join key between this line and its
    /// spans in the collector.
    pub trace_id: Option<&'a str>,
    /// The request became a WebSocket session: the line is written when it ends, with
    /// its duration and its bytes each way.
    pub websocket: bool,
    pub grpc_status: Option<u16>,
    /// `/package.Service/Method` of a gRPC call.
    pub grpc_method: Option<&'a str>,
    pub tls: Option<TlsFields<'a>>,
}

/// What a TLS connection adds to its lines.
pub struct TlsFields<'a> {
    pub version: &'a str,
    /// `h2` or `http/1.1`.
    pub alpn: &'a str,
    pub sni: Option<&'a str>,
    pub client_subject: Option<&'a str>,
    /// The client certificate verified against the listener's `client_ca` (an `optional`
    /// listener lets unverified ones through to the routes that ignore them).
    pub client_verified: bool,
}

impl Line<'_> {
    /// Appends the line as one JSON object and a newline.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"time\":\"");
        timestamp(self.time, out);
        out.push(b'"');
        field_str(out, "request_id", self.request_id);
        out.extend_from_slice(b",\"client_ip\":\"");
        push_ip(out, self.client_ip);
        out.push(b'"');
        field_str(out, "method", self.method);
        field_str(out, "host", self.host);
        field_str(out, "path", self.path);
        field_uint(out, "status", self.status as u64);
        field_str(out, "route", self.route);
        field_str(out, "upstream", self.upstream);
        field_str(out, "target", self.target);
        field_uint(out, "bytes_in", self.bytes_in as u64);
        field_uint(out, "bytes_out", self.bytes_out as u64);
        out.extend_from_slice(b",\"duration_ms\":");
        millis(self.duration_ms, out);
        out.extend_from_slice(b",\"upstream_ms\":");
        match self.upstream_ms {
            Some(ms) => millis(ms, out),
            None => out.extend_from_slice(b"null"),
        }
        for (name, v) in [
            ("consumer", self.consumer),
            ("rejection", self.rejection),
            ("error", self.error),
            ("trace_id", self.trace_id),
        ] {
            if let Some(v) = v {
                field_str(out, name, v);
            }
        }
        if self.websocket {
            out.extend_from_slice(b",\"websocket\":true");
        }
        if let Some(m) = self.grpc_method {
            field_str(out, "grpc_method", m);
        }
        if let Some(c) = self.grpc_status {
            field_uint(out, "grpc_status", c as u64);
        }
        if let Some(t) = &self.tls {
            field_str(out, "tls_version", t.version);
            field_str(out, "alpn", t.alpn);
            if let Some(v) = t.sni {
                field_str(out, "sni", v);
            }
            if let Some(v) = t.client_subject {
                field_str(out, "client_cert", v);
                out.extend_from_slice(if t.client_verified {
                    b",\"client_cert_verified\":true"
                } else {
                    b",\"client_cert_verified\":false"
                });
            }
        }
        out.extend_from_slice(b"}\n");
    }
}

fn field_str(out: &mut Vec<u8>, name: &str, v: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":\"");
    escape(v, out);
    out.push(b'"');
}

fn field_uint(out: &mut Vec<u8>, name: &str, v: u64) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    push_u64(out, v);
}

/// JSON string escaping; the common case (nothing to escape) is one copy.
pub(crate) fn escape(s: &str, out: &mut Vec<u8>) {
    let bytes = s.as_bytes();
    // A fold, not `any`: without the early exit the compiler checks many bytes per step.
    if !bytes.iter().fold(false, |hit, &b| hit | (b < 0x20) | (b == b'"') | (b == b'\\')) {
        out.extend_from_slice(bytes);
        return;
    }
    for &b in bytes {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
            }
            _ => out.push(b),
        }
    }
}

/// Milliseconds with microsecond precision, e.g. `12.345`.
pub(crate) fn millis(ms: f64, out: &mut Vec<u8>) {
    let micros = if ms.is_finite() && ms > 0.0 {
        (ms * 1000.0).round() as u64
    } else {
        0
    };
    push_u64(out, micros / 1000);
    let frac = micros % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

thread_local! {
    /// The RFC 3339 text of the last second this thread logged in, up to and including the
    /// dot: lines within one second only add their milliseconds.
    static SECOND: RefCell<(u64, [u8; 20])> = const { RefCell::new((u64::MAX, [0; 20])) };
}

/// `2026-11-26T12:41:09.123Z`, as humantime's `format_rfc3339_millis`.
pub(crate) fn timestamp(t: SystemTime, out: &mut Vec<u8>) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (secs, ms) = (since.as_secs(), since.subsec_millis());
    SECOND.with(|cell| {
        let mut c = cell.borrow_mut();
        if c.0 != secs {
            let text = humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_secs(secs)).to_string();
            // "YYYY-MM-DDTHH:MM:SSZ": keep the 19 characters before the Z, then the dot.
            if text.len() == 20 {
                c.1[..19].copy_from_slice(&text.as_bytes()[..19]);
                c.1[19] = b'.';
                c.0 = secs;
            } else {
                out.extend_from_slice(text.trim_end_matches('Z').as_bytes());
                out.push(b'.');
                c.0 = u64::MAX;
                drop(c);
                return push_ms(ms, out);
            }
        }
        out.extend_from_slice(&c.1);
        drop(c);
        push_ms(ms, out);
    })
}

fn push_ms(ms: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&[b'0' + (ms / 100) as u8, b'0' + (ms / 10 % 10) as u8, b'0' + (ms % 10) as u8, b'Z']);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(path: &'a str, consumer: Option<&'a str>) -> Line<'a> {
        Line {
            time: UNIX_EPOCH + std::time::Duration::from_millis(1_795_000_000_007),
            request_id: "id-1",
            client_ip: "2001:db8::1".parse().unwrap(),
            method: "GET",
            host: "example.com",
            path,
            status: 200,
            route: "r",
            upstream: "u",
            target: "127.0.0.1:80",
            bytes_in: 0,
            bytes_out: 1024,
            duration_ms: 1.5,
            upstream_ms: None,
            consumer,
            rejection: None,
            error: None,
            trace_id: None,
            websocket: false,
            grpc_status: None,
            grpc_method: None,
            tls: None,
        }
    }

    #[test]
    fn encodes_valid_json_with_escapes() {
        let nasty = "/a\"b\\c\nd\u{1}é";
        let mut out = Vec::new();
        line(nasty, Some("alice")).encode(&mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["path"], nasty);
        assert_eq!(v["consumer"], "alice");
        assert_eq!(v["client_ip"], "2001:db8::1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes_out"], 1024);
        assert_eq!(v["duration_ms"].as_f64(), Some(1.5));
        assert!(v["upstream_ms"].is_null());
        assert!(v.get("rejection").is_none());
        let expected = humantime::format_rfc3339_millis(UNIX_EPOCH + std::time::Duration::from_millis(1_795_000_000_007)).to_string();
        assert_eq!(v["time"], expected.as_str());
    }

    #[test]
    fn milliseconds() {
        let mut out = Vec::new();
        millis(0.0004, &mut out);
        out.push(b' ');
        millis(12.3456, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "0.000 12.346");
    }
}
