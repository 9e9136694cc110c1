//! What the request is for, settled before routing: the request target's form (the header
//! guard already refused targets RFC 9112 does not allow) and the normalised path, written
//! back so every later phase, and the upstream, sees the same path.

use crate::config::EscapedSlash;
use gatehouse_plugins::Answer;
use pingora_http::RequestHeader;

/// What request_filter does next.
pub enum Settled {
    /// Route it.
    Route,
    /// Answer here, with this reason for the logs.
    Answer(Answer, &'static str),
}

/// Settles the target of `req`, rewriting its URI to the normalised origin form when that
/// differs from what the client sent (absolute-form, or a path that normalises).
pub fn settle(req: &mut RequestHeader, slash: EscapedSlash) -> Settled {
    if req.method == http::Method::CONNECT {
        return Settled::Answer(
            Answer::error(405, "CONNECT is not supported: the gateway does not open tunnels"),
            "method_not_allowed",
        );
    }
    if req.uri.path() == "*" && req.uri.authority().is_none() {
        // The guard admits `*` only with OPTIONS: a question about the server itself.
        let a = Answer::empty(204).with_header(
            http::header::ALLOW,
            http::HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
        );
        return Settled::Answer(a, "options_asterisk");
    }
    let normal = match crate::path::normalize(req.uri.path(), slash) {
        Ok(n) => n,
        Err(e) => return Settled::Answer(Answer::error(400, e.message()), "bad_path"),
    };
    if normal.is_none() && req.uri.authority().is_none() {
        return Settled::Route;
    }
    // HTTP/2 names the host in `:authority` only; it becomes the Host header, which routing,
    // logs and HTTP/1 upstreams read. (On HTTP/1 the guard has checked that an
    // absolute-form target and Host agree.)
    if !req.headers.contains_key(http::header::HOST) {
        if let Some(a) = req.uri.authority().and_then(|a| http::HeaderValue::from_str(a.as_str()).ok()) {
            let _ = req.insert_header(http::header::HOST, a);
        }
    }
    let path = normal.as_deref().unwrap_or(req.uri.path());
    let target = match req.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    match target.parse::<http::Uri>() {
        Ok(uri) => {
            req.set_uri(uri);
            Settled::Route
        }
        Err(_) => Settled::Answer(Answer::error(400, "invalid request target"), "bad_path"),
    }
}

/// HTTP/2 requests never pass the header guard's HTTP/1 parser: the h2 settings bound the
/// header list's bytes, and this applies the guard's other limits (field count, URI length)
/// with the same answers, so a client cannot pick the protocol that skips a rule.
pub fn h2_limits(req: &RequestHeader, s: &crate::config::Server) -> Option<(Answer, &'static str)> {
    if req.headers.len() > s.max_headers {
        return Some((Answer::error(431, "too many request header fields"), "too_many_headers"));
    }
    let target = req.uri.path_and_query().map_or(0, |p| p.as_str().len());
    if target > s.max_uri.0 as usize {
        return Some((Answer::error(414, "request URI is too long"), "uri_too_long"));
    }
    // The HTTP/1 guard refuses this too: the h2 layer lets identical duplicates through,
    // and an HTTP/1 upstream would get both lines (RFC 9112 6.3 says that is a 400).
    let mut lengths = req.headers.get_all(http::header::CONTENT_LENGTH).iter();
    if lengths.next().is_some() && lengths.next().is_some() {
        return Some((Answer::error(400, "more than one Content-Length"), "bad_framing"));
    }
    // RFC 9113 8.3.1: a Host that names another authority than `:authority` is malformed;
    // letting either one win would split routing from what the upstream sees.
    if let (Some(a), Some(h)) = (req.uri.authority(), req.headers.get(http::header::HOST)) {
        if !a.as_str().as_bytes().eq_ignore_ascii_case(h.as_bytes()) {
            return Some((Answer::error(400, "Host does not match :authority"), "host_mismatch"));
        }
    }
    None
}
