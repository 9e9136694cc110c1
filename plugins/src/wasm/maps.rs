//! The header maps a filter sees (pseudo-headers first, names lower-case) built from
//! Pingora's headers, and what a filter changed applied back.

use super::vm;
use crate::Answer;
use pingora_http::{RequestHeader, ResponseHeader};

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
        .filter(|k| !k.starts_with(b":"))
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
            if n != http::header::CONTENT_LENGTH && n != http::header::TRANSFER_ENCODING {
                a.headers.push((n, v));
            }
        }
    }
    a.body = bytes::Bytes::from(l.body);
    a
}

/// A filter's request map written back: a changed `:path` (when it is a valid origin-form
/// target) and every header whose values changed.
pub fn apply_request(req: &mut RequestHeader, after: &[(Vec<u8>, Vec<u8>)], filter: &str) {
    let before = request_pairs(req);
    if let Some(p) = pseudo(after, b":path").filter(|p| Some(*p) != pseudo(&before, b":path")) {
        match std::str::from_utf8(p).ok().and_then(|p| p.parse::<http::Uri>().ok()) {
            Some(uri) if p.starts_with(b"/") => req.set_uri(uri),
            _ => log::warn!("wasm filter {filter}: ignored an invalid :path"),
        }
    }
    for (name, values) in changes(&before, after) {
        req.remove_header(&name);
        for v in values {
            let _ = req.append_header(name.clone(), v);
        }
    }
}

/// A filter's response map written back: `:status` and the changed headers.
pub fn apply_response(resp: &mut ResponseHeader, after: &[(Vec<u8>, Vec<u8>)]) {
    let before = response_pairs(resp);
    if let Some(code) = pseudo(after, b":status")
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|c| c.parse::<u16>().ok())
    {
        let _ = resp.set_status(code);
    }
    for (name, values) in changes(&before, after) {
        resp.remove_header(&name);
        for v in values {
            let _ = resp.append_header(name.clone(), v);
        }
    }
}
