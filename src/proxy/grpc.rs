//! gRPC's side of the gateway: which requests are gRPC, how the gateway's own refusals are
//! said in gRPC (a trailers-only answer, so clients read a status code instead of failing
//! on an HTTP error), `grpc-timeout`, and which upstream codes count against a target.

use http::header::CONTENT_TYPE;
use pingora_http::{RequestHeader, ResponseHeader};
use std::time::Duration;

/// How the client speaks gRPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `application/grpc` over HTTP/2.
    Grpc,
    /// `application/grpc-web`, the binary browser framing.
    Web,
    /// `application/grpc-web-text`: the same, base64-encoded both ways.
    WebText,
}

/// The request's gRPC flavour, from its content type; `None` for everything else.
#[cfg(test)]
pub fn kind(req: &RequestHeader) -> Option<Kind> {
    kind_of(req.headers.get(CONTENT_TYPE)?.as_bytes())
}

/// The gRPC flavour a content type names.
pub fn kind_of(ct: &[u8]) -> Option<Kind> {
    let rest = strip_prefix_ci(ct, b"application/grpc")?;
    if let Some(web) = strip_prefix_ci(rest, b"-web") {
        return if strip_prefix_ci(web, b"-text").is_some() {
            Some(Kind::WebText)
        } else {
            Some(Kind::Web)
        };
    }
    // `application/grpc`, `application/grpc+proto`, `application/grpc;...`.
    matches!(rest.first(), None | Some(b'+') | Some(b';')).then_some(Kind::Grpc)
}

fn strip_prefix_ci<'a>(v: &'a [u8], p: &[u8]) -> Option<&'a [u8]> {
    (v.len() >= p.len() && v[..p.len()].eq_ignore_ascii_case(p)).then(|| &v[p.len()..])
}

/// The gRPC status code for an answer the gateway gives with HTTP status `status`
/// (the mapping gRPC's own HTTP-to-gRPC table uses, where it has one).
pub fn code_for(status: u16) -> u16 {
    match status {
        400 => 13,       // INTERNAL: the request was malformed as HTTP
        401 => 16,       // UNAUTHENTICATED
        403 => 7,        // PERMISSION_DENIED
        404 | 405 => 12, // UNIMPLEMENTED
        408 | 504 => 4,  // DEADLINE_EXCEEDED
        413 | 429 => 8,  // RESOURCE_EXHAUSTED
        502..=503 => 14, // UNAVAILABLE
        _ => 2,          // UNKNOWN
    }
}

/// Codes that say the target failed (not the application answering): these count
/// against it in the circuit breaker.
pub fn target_fault(code: u16) -> bool {
    matches!(code, 4 | 13 | 14)
}

/// A trailers-only answer: HTTP 200, the client's own content type, `grpc-status` and
/// the percent-encoded `grpc-message`, and no body.
pub fn answer(kind: Kind, status: u16, message: &str) -> Option<ResponseHeader> {
    let mut resp = ResponseHeader::build(200, Some(5)).ok()?;
    let ct = match kind {
        Kind::Grpc => "application/grpc",
        Kind::Web => "application/grpc-web+proto",
        Kind::WebText => "application/grpc-web-text+proto",
    };
    resp.insert_header(CONTENT_TYPE, ct).ok()?;
    resp.insert_header("grpc-status", code_for(status)).ok()?;
    let msg = percent_encoding::utf8_percent_encode(message, MESSAGE).to_string();
    resp.insert_header("grpc-message", msg).ok()?;
    if kind != Kind::Grpc {
        // HTTP/1.1 clients need the end of the (empty) body said.
        resp.insert_header(http::header::CONTENT_LENGTH, 0).ok()?;
    }
    Some(resp)
}

/// gRPC percent-encodes `grpc-message` outside printable ASCII, and `%` itself.
const MESSAGE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn timeout(req: &RequestHeader) -> Option<Duration> {
    let v = req.headers.get("grpc-timeout")?.as_bytes();
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// What is left of a deadline of `d` from `start` (at least 1 ms: a deadline already
/// passed still gets its answer from the timeout, not a wait).
pub fn left(d: Duration, start: std::time::Instant) -> Duration {
    d.saturating_sub(start.elapsed()).max(Duration::from_millis(1))
}

/// A `grpc-timeout` value for `d`: milliseconds, or seconds past 8 digits of them.
pub fn timeout_value(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 100_000_000 {
        format!("{ms}m")
    } else {
        format!("{}S", d.as_secs().min(99_999_999))
    }
}

/// The `grpc-status` of an upstream header or trailer block, and whether the block must
/// say DEADLINE_EXCEEDED instead: a call the upstream cancelled once the client's deadline
/// had passed (tonic servers answer an expired `grpc-timeout` with CANCELLED) is, for that
/// client, DEADLINE_EXCEEDED.
pub fn settle(h: &http::HeaderMap, deadline: Option<Duration>, start: std::time::Instant) -> (Option<u16>, bool) {
    match status_in(h) {
        Some(1) if deadline.is_some_and(|d| start.elapsed() >= d) => (Some(4), true),
        code => (code, false),
    }
}

/// What a block says instead when [`settle`] rewrites it.
pub const DEADLINE: [(&str, &str); 2] = [("grpc-status", "4"), ("grpc-message", "deadline%20exceeded")];

/// `grpc-status` of a header or trailer block.
pub fn status_in(h: &http::HeaderMap) -> Option<u16> {
    std::str::from_utf8(h.get("grpc-status")?.as_bytes()).ok()?.parse().ok()
}

static CALLS: once_cell::sync::Lazy<prometheus::IntCounterVec> = once_cell::sync::Lazy::new(|| {
    let c = prometheus::IntCounterVec::new(
        prometheus::Opts::new(
            "gatehouse_grpc_requests_total",
            "gRPC calls answered, by route, method and grpc-status.",
        ),
        &["route", "method", "grpc_status"],
    )
    .expect("static counter definition");
    if let Err(e) = crate::metrics::METRICS.registry.register(Box::new(c.clone())) {
        log::error!("metric registration failed: {e}");
    }
    c
});

/// Counts one finished call. `code`: its grpc-status; `None` (the call broke off before
/// a status) is counted as UNKNOWN (2).
pub fn record(route: &str, method: &str, code: Option<u16>) {
    let code = code.unwrap_or(2).to_string();
    CALLS.with_label_values(&[route, method, &code]).inc();
}

/// The method as a metric label: `/pkg.Service/Method`, when it looks like one (a path a
/// client made up must not make a series of its own per request).
pub fn method_label(path: &str, known: bool) -> &str {
    let looks = path.len() <= 128 && path.starts_with('/') && path[1..].split('/').count() == 2;
    if known && looks {
        path
    } else {
        "_other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(ct: &str, timeout: Option<&str>) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/s.S/M", None).unwrap();
        r.insert_header("content-type", ct.to_string()).unwrap();
        if let Some(t) = timeout {
            r.insert_header("grpc-timeout", t.to_string()).unwrap();
        }
        r
    }

    #[test]
    fn kinds_and_timeouts() {
        assert_eq!(kind(&req("application/grpc", None)), Some(Kind::Grpc));
        assert_eq!(kind(&req("application/grpc+proto", None)), Some(Kind::Grpc));
        assert_eq!(kind(&req("Application/gRPC-Web+proto", None)), Some(Kind::Web));
        assert_eq!(kind(&req("application/grpc-web-text", None)), Some(Kind::WebText));
        assert_eq!(kind(&req("application/grpcx", None)), None);
        assert_eq!(kind(&req("application/json", None)), None);
        assert_eq!(timeout(&req("application/grpc", Some("250m"))), Some(Duration::from_millis(250)));
        assert_eq!(timeout(&req("application/grpc", Some("2S"))), Some(Duration::from_secs(2)));
        assert_eq!(timeout(&req("application/grpc", Some("123456789S"))), None);
        assert_eq!(timeout(&req("application/grpc", Some("5x"))), None);
        assert_eq!(timeout(&req("application/grpc", Some("m"))), None);
    }

    #[test]
    fn refusals_map_to_codes() {
        for (http, code) in [(401, 16), (403, 7), (429, 8), (503, 14), (502, 14), (504, 4), (404, 12)] {
            assert_eq!(code_for(http), code);
        }
        let a = answer(Kind::Grpc, 429, "rate limit exceeded: 100%").unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(a.headers["grpc-status"], "8");
        assert_eq!(a.headers["grpc-message"], "rate limit exceeded: 100%25");
    }
}
