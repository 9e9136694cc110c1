//! A small HTTP/1.1 client over a raw socket: tests need to see exactly what was sent and
//! received, including malformed requests a library client would refuse to send.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Names lower-cased, for lookups.
    pub headers: Vec<(String, String)>,
    /// Header names exactly as they arrived, for header-case tests.
    pub raw_names: Vec<String>,
    pub body: String,
    /// The body's bytes, for binary framings.
    pub raw_body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// Sends `method path` with extra headers and an optional body, `Connection: close`.
pub fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Response {
    let mut raw = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        raw.push_str("Host: test.local\r\n");
    }
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        raw.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    raw.push_str("Connection: close\r\n\r\n");
    if let Some(b) = body {
        raw.push_str(b);
    }
    raw_request(addr, raw.as_bytes()).unwrap_or_else(|e| panic!("{method} {path} to {addr}: {e}"))
}

pub fn get(addr: &str, path: &str) -> Response {
    request(addr, "GET", path, &[], None)
}

/// Writes raw bytes and reads one response until the server closes.
pub fn raw_request(addr: &str, raw: &[u8]) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(raw)?;
    read_response(&mut s)
}

/// Reads one response: by Content-Length, to the last chunk, or to EOF when unframed. It
/// does not rely on the server closing, so keep-alive answers do not hang the test.
pub fn read_response(s: &mut impl Read) -> std::io::Result<Response> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(r) = complete(&buf) {
            return Ok(r);
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return parse(&buf).ok_or_else(|| std::io::Error::other(format!("unparseable response: {:?}", String::from_utf8_lossy(&buf))));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The response if `buf` holds all of it (framed by Content-Length or chunked).
fn complete(buf: &[u8]) -> Option<Response> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let r = parse(&buf[..end + 4])?;
    let rest = &buf[end + 4..];
    if r.status == 204 || r.status == 304 || (100..200).contains(&r.status) {
        return Some(r);
    }
    if let Some(n) = r.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        return (rest.len() >= n).then(|| Response {
            body: String::from_utf8_lossy(&rest[..n]).into_owned(),
            raw_body: rest[..n].to_vec(),
            ..r
        });
    }
    if r.header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        return rest.windows(5).any(|w| w == b"0\r\n\r\n").then(|| parse(buf)).flatten();
    }
    None
}

pub fn parse(buf: &[u8]) -> Option<Response> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let pairs: Vec<(&str, &str)> = lines.filter_map(|l| l.split_once(':')).collect();
    let raw_names = pairs.iter().map(|(k, _)| k.trim().to_string()).collect();
    let headers: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &buf[end + 4..];
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(rest)? } else { rest.to_vec() };
    Some(Response {
        status,
        headers,
        raw_names,
        body: String::from_utf8_lossy(&body).into_owned(),
        raw_body: body,
    })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&b[..nl]).ok()?.split(';').next()?.trim(), 16).ok()?;
        b = &b[nl + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}
