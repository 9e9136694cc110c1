//! What the header guard accepts, decided on the raw bytes of one request header: size and
//! count limits (414, 431), message framing (the smuggling rules), the request target's
//! form and the Host value (RFC 9112 3.2 and 3.2.3: anything else is a 400).

use super::chunked::Chunked;
use super::framed::{After, Body};

/// Pingora's own cap on header lines; ours may only be lower.
pub const MAX_HEADERS_CEILING: usize = 256;

#[derive(Debug, Clone)]
pub struct Limits {
    /// From a connection's accept (first request) or a request's first byte to the end of
    /// its header.
    pub header_timeout: std::time::Duration,
    /// How long an idle keep-alive connection may wait for its next request.
    pub keepalive_timeout: std::time::Duration,
    pub max_header_size: usize,
    pub max_headers: usize,
    pub max_uri: usize,
}

pub enum Verdict {
    /// Header complete and acceptable: its length, and how its body is framed.
    Pass {
        header_len: usize,
        body: Body,
        after: After,
    },
    NeedMore,
    Refuse(Refusal),
}

/// A status, its reason phrase, the message for the client, the reason label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal(pub u16, pub &'static str, pub &'static str, pub &'static str);

const fn bad(message: &'static str, reason: &'static str) -> Refusal {
    Refusal(400, "Bad Request", message, reason)
}

const TOO_LARGE: Refusal = Refusal(
    431,
    "Request Header Fields Too Large",
    "request header is too large",
    "header_too_large",
);
const URI_TOO_LONG: Refusal = Refusal(414, "URI Too Long", "request URI is too long", "uri_too_long");

pub fn check(limits: &Limits, buf: &[u8]) -> Verdict {
    // Uninitialised: filling 256 empty headers first costs ~1k instructions per request.
    let mut storage = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_CEILING];
    let mut req = httparse::Request::new(&mut []);
    let status = req.parse_with_uninit_headers(buf, &mut storage[..limits.max_headers]);
    if let Some(path) = req.path {
        if path.len() > limits.max_uri {
            return Verdict::Refuse(URI_TOO_LONG);
        }
    } else if buf.len() > limits.max_uri + 64 && !buf.contains(&b'\n') {
        // The request line alone is already longer than any URI we accept.
        return Verdict::Refuse(URI_TOO_LONG);
    }
    match status {
        Ok(httparse::Status::Partial) if buf.len() > limits.max_header_size => Verdict::Refuse(TOO_LARGE),
        Ok(httparse::Status::Partial) => Verdict::NeedMore,
        Err(httparse::Error::TooManyHeaders) => Verdict::Refuse(Refusal(
            431,
            "Request Header Fields Too Large",
            "too many request header fields",
            "too_many_headers",
        )),
        Err(_) => Verdict::Refuse(bad("malformed request", "malformed")),
        Ok(httparse::Status::Complete(len)) if len > limits.max_header_size => Verdict::Refuse(TOO_LARGE),
        Ok(httparse::Status::Complete(len)) => match framing(&req).and_then(|f| target(&req).map(|_| f)) {
            Ok((body, after)) => Verdict::Pass {
                header_len: len,
                body,
                after,
            },
            Err(r) => Verdict::Refuse(r),
        },
    }
}

/// Message framing rules, stricter than RFC 9112 allows a server to be, because a proxy
/// that reads framing differently from its upstream is how requests get smuggled:
/// one Transfer-Encoding, and only `chunked`; never with Content-Length; one
/// Content-Length of digits; Host required on HTTP/1.1.
fn framing(req: &httparse::Request<'_, '_>) -> Result<(Body, After), Refusal> {
    let mut te = 0;
    let mut cl: Option<u64> = None;
    let mut cls = 0;
    let mut host = 0;
    let mut upgrade = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te += 1;
            if !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(bad(
                    "unsupported transfer-encoding (only a single `chunked` is accepted)",
                    "bad_transfer_encoding",
                ));
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            cls += 1;
            let v = h.value.trim_ascii();
            if v.is_empty() || !v.iter().all(u8::is_ascii_digit) || v.len() > 18 {
                return Err(bad("invalid content-length", "bad_content_length"));
            }
            cl = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok());
        } else if h.name.eq_ignore_ascii_case("host") {
            host += 1;
            if !valid_authority(h.value, false) {
                return Err(bad("invalid Host header", "bad_host"));
            }
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    if te > 1 {
        return Err(bad("repeated transfer-encoding", "bad_transfer_encoding"));
    }
    if cls > 1 {
        return Err(bad("repeated content-length", "bad_content_length"));
    }
    if te > 0 && cls > 0 {
        return Err(bad("both content-length and transfer-encoding", "ambiguous_framing"));
    }
    if te > 0 && req.version == Some(0) {
        return Err(bad("transfer-encoding on HTTP/1.0", "bad_transfer_encoding"));
    }
    if host != 1 && req.version == Some(1) {
        return Err(bad("HTTP/1.1 requires exactly one Host header", "bad_host"));
    }
    let body = if te > 0 {
        Body::Chunked(Chunked::default())
    } else {
        match cl {
            Some(n) if n > 0 => Body::Length(n),
            _ => Body::Done,
        }
    };
    // After an upgrade request (a 101 may follow), the bytes are the new protocol's.
    let after = if upgrade && req.version == Some(1) {
        After::Pass
    } else {
        After::Stash
    };
    Ok((body, after))
}

/// The request target must have one of RFC 9112's four forms: origin-form (`/path?q`),
/// absolute-form (`http://host/path`, naming the same host as the Host header),
/// authority-form (`host:port`) for CONNECT, and `*` for OPTIONS. The path itself is
/// checked (and normalised) later, by `crate::path`.
fn target(req: &httparse::Request<'_, '_>) -> Result<(), Refusal> {
    let path = req.path.unwrap_or("").as_bytes();
    let method = req.method.unwrap_or("");
    let refuse = Err(bad("invalid request target", "bad_target"));
    // Bytes outside RFC 3986's path and query characters: the target must also be one
    // Pingora's parser (the http crate) takes, or Pingora answers a bare 400 of its own
    // after this check. Rare, so the parse (and its copy) is paid only then.
    // Path bytes and `?`: every target made of these alone is one the http crate parses.
    if !path.iter().all(|b| *b == b'?' || crate::path::is_path_byte(*b)) && http::Uri::try_from(path).is_err() {
        return refuse;
    }
    if method == "CONNECT" {
        return if valid_authority(path, true) { Ok(()) } else { refuse };
    }
    match path.first() {
        Some(b'/') => Ok(()),
        Some(b'*') if path.len() == 1 && method == "OPTIONS" => Ok(()),
        _ => {
            let Some(rest) = strip_scheme(path) else { return refuse };
            let end = rest.iter().position(|b| matches!(b, b'/' | b'?')).unwrap_or(rest.len());
            let (authority, tail) = rest.split_at(end);
            if !valid_authority(authority, false) || tail.first().is_some_and(|b| *b != b'/') {
                return refuse;
            }
            // `http:` has its colon where `https` has its `s`.
            let http = path[4] == b':';
            let host = req.headers.iter().find(|h| h.name.eq_ignore_ascii_case("host"));
            match host {
                Some(h) if same_authority(h.value, authority, http) => Ok(()),
                None if req.version == Some(0) => Ok(()),
                _ => Err(bad("absolute-form target names another host than the Host header", "bad_target")),
            }
        }
    }
}

fn strip_scheme(t: &[u8]) -> Option<&[u8]> {
    for scheme in [&b"http://"[..], b"https://"] {
        if t.len() > scheme.len() && t[..scheme.len()].eq_ignore_ascii_case(scheme) {
            return Some(&t[scheme.len()..]);
        }
    }
    None
}

/// `host[:port]` in both, compared without case; a missing port is the scheme's default.
fn same_authority(a: &[u8], b: &[u8], http: bool) -> bool {
    let default = if http { &b"80"[..] } else { b"443" };
    let (ha, pa) = split_port(a);
    let (hb, pb) = split_port(b);
    ha.eq_ignore_ascii_case(hb) && pa.unwrap_or(default) == pb.unwrap_or(default)
}

fn split_port(a: &[u8]) -> (&[u8], Option<&[u8]>) {
    let colon = if a.first() == Some(&b'[') {
        a.iter()
            .position(|b| *b == b']')
            .and_then(|e| (a.get(e + 1) == Some(&b':')).then_some(e + 1))
    } else {
        a.iter().rposition(|b| *b == b':')
    };
    match colon {
        Some(i) => (&a[..i], Some(&a[i + 1..])),
        None => (a, None),
    }
}

/// RFC 3986 reg-name characters: unreserved and sub-delims (no `%`: percent-encoded
/// hosts are refused).
static REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.' | b'_' | b'~' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
            );
        b += 1;
    }
    t
};

/// `host [ ":" port ]` (RFC 9110 7.2, RFC 3986 3.2.2): an IPv6 literal in brackets, or a
/// reg-name of unreserved characters and sub-delims (no percent-encoding, no userinfo);
/// a port of one to five digits up to 65535, required for CONNECT.
pub fn valid_authority(a: &[u8], port_required: bool) -> bool {
    let (host, port) = split_port(a);
    let host_ok = match host.strip_prefix(b"[") {
        Some(v6) => v6
            .strip_suffix(b"]")
            .and_then(|v| std::str::from_utf8(v).ok())
            .is_some_and(|v| v.parse::<std::net::Ipv6Addr>().is_ok()),
        None => !host.is_empty() && host.iter().all(|c| REG_NAME[*c as usize]),
    };
    let port_ok = match port {
        None => !port_required,
        Some(p) => {
            !p.is_empty()
                && p.len() <= 5
                && p.iter().all(u8::is_ascii_digit)
                && std::str::from_utf8(p)
                    .ok()
                    .and_then(|s| s.parse::<u32>().ok())
                    .is_some_and(|n| n <= 65535)
        }
    };
    host_ok && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits() -> Limits {
        Limits {
            header_timeout: std::time::Duration::from_secs(1),
            keepalive_timeout: std::time::Duration::from_secs(1),
            max_header_size: 256,
            max_headers: 4,
            max_uri: 32,
        }
    }

    fn status(raw: &str) -> Option<u16> {
        match check(&limits(), raw.as_bytes()) {
            Verdict::Pass { .. } => None,
            Verdict::NeedMore => Some(0),
            Verdict::Refuse(r) => Some(r.0),
        }
    }

    #[test]
    fn framing_rules() {
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), None);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a\r\n"), Some(0));
        for bad in [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(status(bad), Some(400), "{bad:?}");
        }
    }

    #[test]
    fn limits_are_kept() {
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

    #[test]
    fn targets_and_hosts() {
        for ok in [
            "GET /a?b HTTP/1.1\r\nHost: a\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET http://a/x HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET http://a HTTP/1.1\r\nHost: A:80\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: [::1]:8\r\n\r\n",
        ] {
            assert_eq!(status(ok), None, "{ok:?}");
        }
        for bad in [
            "GET ! HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET * HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET http://b/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET http://a:81/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "CONNECT a HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a:\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a%20b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: [v1.x]\r\n\r\n",
        ] {
            assert_eq!(status(bad), Some(400), "{bad:?}");
        }
    }

    proptest! {
        /// Any bytes at all get a verdict, never a panic.
        #[test]
        fn any_header_bytes_get_a_verdict(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = check(&limits(), &bytes);
        }

        #[test]
        fn any_request_line_gets_a_verdict(method in "[A-Z]{1,8}", target in "\\PC{0,40}", host in "\\PC{0,20}") {
            let raw = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n");
            let _ = check(&limits(), raw.as_bytes());
        }
    }
}
