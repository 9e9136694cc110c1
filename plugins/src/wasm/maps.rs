//! The header maps a filter sees (pseudo-headers first, names lower-case) built from
//! Pingora's headers, and what a filter changed applied back.

use super::hmap::{Op, Outcome};
use super::vm;
use crate::Answer;
use pingora_http::{RequestHeader, ResponseHeader};

/// The request's map as borrowed slices, for serializing once.
pub fn request_slices(req: &RequestHeader) -> Vec<(&[u8], &[u8])> {
    let mut v: Vec<(&[u8], &[u8])> = Vec::with_capacity(req.headers.len() + 3);
    v.push((b":method", req.method.as_str().as_bytes()));
    v.push((b":path", req.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes()));
    let host = req.headers.get(http::header::HOST).map_or(&b""[..], |h| h.as_bytes());
    v.push((b":authority", host));
    v.extend(req.headers.iter().map(|(k, val)| (k.as_str().as_bytes(), val.as_bytes())));
    v
}

pub fn response_slices(resp: &ResponseHeader) -> Vec<(&[u8], &[u8])> {
    let mut v: Vec<(&[u8], &[u8])> = Vec::with_capacity(resp.headers.len() + 1);
    v.push((b":status", resp.status.as_str().as_bytes()));
    v.extend(resp.headers.iter().map(|(k, val)| (k.as_str().as_bytes(), val.as_bytes())));
    v
}

/// Framing and hop-by-hop headers are the gateway's: a filter that set `Content-Length` on
/// a body-less request would hang the upstream, and one that added `Transfer-Encoding` to a
/// response would frame it twice.
fn framing(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 8] = [
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"keep-alive",
        b"upgrade",
        b"te",
        b"trailer",
        b"proxy-connection",
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

fn header(k: &[u8], v: &[u8]) -> Option<(http::HeaderName, http::HeaderValue)> {
    if framing(k) {
        return None;
    }
    Some((http::HeaderName::from_bytes(k).ok()?, http::HeaderValue::from_bytes(v).ok()?))
}

/// A status a filter may set on a response: a final one (1xx would leave the client
/// waiting for another).
fn status(v: &[u8]) -> Option<u16> {
    std::str::from_utf8(v).ok()?.parse::<u16>().ok().filter(|c| (200..=599).contains(c))
}

/// Pingora's header blocks, edited through their own methods (they keep the names' case
/// map in step).
trait Edit {
    fn append(&mut self, n: http::HeaderName, v: http::HeaderValue);
    fn insert(&mut self, n: http::HeaderName, v: http::HeaderValue);
    fn remove(&mut self, n: &http::HeaderName);
}

macro_rules! edit {
    ($t:ty) => {
        impl Edit for $t {
            fn append(&mut self, n: http::HeaderName, v: http::HeaderValue) {
                let _ = self.append_header(n, v);
            }
            fn insert(&mut self, n: http::HeaderName, v: http::HeaderValue) {
                let _ = self.insert_header(n, v);
            }
            fn remove(&mut self, n: &http::HeaderName) {
                self.remove_header(n);
            }
        }
    };
}
edit!(RequestHeader);
edit!(ResponseHeader);

/// A filter's writes replayed on real headers; a name or value the HTTP rules refuse
/// (CR, LF, NUL, spaces in names) is dropped. Returns the last pseudo-header `name` set.
fn replay(ops: Vec<Op>, h: &mut impl Edit, name: &[u8]) -> Option<Vec<u8>> {
    let mut pseudo = None;
    for op in ops {
        match op {
            Op::Add(k, v) | Op::Replace(k, v) if k.starts_with(b":") => {
                if k == name {
                    pseudo = Some(v);
                }
            }
            Op::Add(k, v) => {
                if let Some((n, v)) = header(&k, &v) {
                    h.append(n, v);
                }
            }
            Op::Replace(k, v) => {
                if let Some((n, v)) = header(&k, &v) {
                    h.insert(n, v);
                }
            }
            Op::Remove(k) => match http::HeaderName::from_bytes(&k) {
                Ok(n) if !framing(&k) => h.remove(&n),
                _ => {}
            },
        }
    }
    pseudo
}

/// A path that climbs (`.` or `..` segments, also percent-encoded) or starts with `//`
/// (read as an authority by some servers): the gateway refuses these from clients, and a
/// filter may not produce them either.
fn climbs(p: &[u8]) -> bool {
    let path = p.split(|b| *b == b'?').next().unwrap_or_default();
    path.starts_with(b"//")
        || path.split(|b| *b == b'/').any(|seg| {
            let s = String::from_utf8_lossy(seg).to_ascii_lowercase().replace("%2e", ".");
            s == "." || s == ".."
        })
}

fn set_path(req: &mut RequestHeader, p: &[u8], filter: &str) {
    match std::str::from_utf8(p).ok().and_then(|p| p.parse::<http::Uri>().ok()) {
        Some(uri) if p.starts_with(b"/") && !climbs(p) => req.set_uri(uri),
        _ => log::warn!("wasm filter {filter}: ignored an invalid :path"),
    }
}

pub fn request_pairs(req: &RequestHeader) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut v = Vec::with_capacity(req.headers.len() + 3);
    v.push((b":method".to_vec(), req.method.as_str().as_bytes().to_vec()));
    v.push((
        b":path".to_vec(),
        req.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes().to_vec(),
    ));
    let host = req
        .headers
        .get(http::header::HOST)
        .map(|h| h.as_bytes().to_vec())
        .unwrap_or_default();
    v.push((b":authority".to_vec(), host));
    for (k, val) in &req.headers {
        v.push((k.as_str().as_bytes().to_vec(), val.as_bytes().to_vec()));
    }
    v
}

pub fn response_pairs(resp: &ResponseHeader) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut v = Vec::with_capacity(resp.headers.len() + 1);
    v.push((b":status".to_vec(), resp.status.as_str().as_bytes().to_vec()));
    for (k, val) in &resp.headers {
        v.push((k.as_str().as_bytes().to_vec(), val.as_bytes().to_vec()));
    }
    v
}

/// The names whose values differ between `before` and `after` (pseudo-headers aside), with
/// their new values.
pub fn changes(before: &[(Vec<u8>, Vec<u8>)], after: &[(Vec<u8>, Vec<u8>)]) -> Vec<(http::HeaderName, Vec<http::HeaderValue>)> {
    let values =
        |m: &[(Vec<u8>, Vec<u8>)], k: &[u8]| -> Vec<Vec<u8>> { m.iter().filter(|(n, _)| n == k).map(|(_, v)| v.clone()).collect() };
    let mut names: Vec<&[u8]> = before
        .iter()
        .chain(after)
        .map(|(k, _)| k.as_slice())
        .filter(|k| !k.starts_with(b":") && !framing(k))
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut out = Vec::new();
    for n in names {
        let new = values(after, n);
        if new == values(before, n) {
            continue;
        }
        let Ok(name) = http::HeaderName::from_bytes(n) else { continue };
        let vals = new.iter().filter_map(|v| http::HeaderValue::from_bytes(v).ok()).collect();
        out.push((name, vals));
    }
    out
}

pub fn pseudo<'a>(m: &'a [(Vec<u8>, Vec<u8>)], name: &[u8]) -> Option<&'a [u8]> {
    m.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
}

pub fn local_answer(l: vm::Local) -> Answer {
    let mut a = Answer::empty(l.status);
    for (k, v) in l.headers {
        if let (Ok(n), Ok(v)) = (http::HeaderName::from_bytes(&k), http::HeaderValue::from_bytes(&v)) {
            if !framing(n.as_str().as_bytes()) {
                a.headers.push((n, v));
            }
        }
    }
    a.body = bytes::Bytes::from(l.body);
    a
}

/// A filter's request map written back: a changed `:path` (when it is a valid origin-form
/// target) and every header whose values changed.
pub fn apply_request(req: &mut RequestHeader, outcome: Outcome, filter: &str) {
    let after = match outcome {
        Outcome::Untouched => return,
        Outcome::Ops(ops) => {
            if let Some(p) = replay(ops, req, b":path") {
                set_path(req, &p, filter);
            }
            return;
        }
        Outcome::Whole(after) => after,
    };
    let before = request_pairs(req);
    if let Some(p) = pseudo(&after, b":path").filter(|p| Some(*p) != pseudo(&before, b":path")) {
        set_path(req, p, filter);
    }
    for (name, values) in changes(&before, &after) {
        req.remove_header(&name);
        for v in values {
            let _ = req.append_header(name.clone(), v);
        }
    }
}

/// A filter's response map written back: `:status` and the changed headers.
pub fn apply_response(resp: &mut ResponseHeader, outcome: Outcome) {
    let after = match outcome {
        Outcome::Untouched => return,
        Outcome::Ops(ops) => {
            let set = replay(ops, resp, b":status");
            if let Some(code) = set.as_deref().and_then(status) {
                let _ = resp.set_status(code);
            }
            return;
        }
        Outcome::Whole(after) => after,
    };
    let before = response_pairs(resp);
    if let Some(code) = pseudo(&after, b":status").and_then(status) {
        let _ = resp.set_status(code);
    }
    for (name, values) in changes(&before, &after) {
        resp.remove_header(&name);
        for v in values {
            let _ = resp.append_header(name.clone(), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_climb_are_not_taken_from_a_filter() {
        for p in ["/../etc/passwd", "/a/./b", "/a/%2E%2e/b", "//evil.example/x", "/a/..?q=1"] {
            assert!(climbs(p.as_bytes()), "{p}");
        }
        for p in ["/a/b", "/a..b/c", "/.well-known/x", "/a?x=/../"] {
            assert!(!climbs(p.as_bytes()), "{p}");
        }
    }

    #[test]
    fn framing_and_interim_statuses_stay_the_gateways() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("content-length", "5").unwrap();
        let ops = vec![
            Op::Replace(b"transfer-encoding".to_vec(), b"chunked".to_vec()),
            Op::Add(b"content-length".to_vec(), b"9".to_vec()),
            Op::Replace(b":status".to_vec(), b"100".to_vec()),
            Op::Add(b"x-ok".to_vec(), b"1".to_vec()),
        ];
        apply_response(&mut resp, Outcome::Ops(ops));
        assert_eq!(resp.status.as_u16(), 200);
        assert_eq!(resp.headers.get_all("content-length").iter().count(), 1);
        assert!(resp.headers.get("transfer-encoding").is_none());
        assert_eq!(resp.headers["x-ok"], "1");
        apply_response(&mut resp, Outcome::Ops(vec![Op::Replace(b":status".to_vec(), b"418".to_vec())]));
        assert_eq!(resp.status.as_u16(), 418);
    }
}
