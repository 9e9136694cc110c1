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
    try_request(addr, method, path, headers, body).unwrap_or_else(|e| panic!("{method} {path} to {addr}: {e}"))
}

/// [`request`], with an error instead of a panic when the gateway is not there (it is
/// being killed or upgraded).
pub fn try_request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> std::io::Result<Response> {
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
    raw_request(addr, raw.as_bytes())
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
/// does not rely on the server closing, so keep-alive answers do not hang the test, and it
/// never reads a byte past the response: a pipelined client's next answer, which may share
/// a segment with this one, stays in the socket for the next call.
pub fn read_response(s: &mut impl Read) -> std::io::Result<Response> {
    let mut buf = Vec::with_capacity(512);
    while !buf.ends_with(b"\r\n\r\n") {
        if read_byte(s, &mut buf)? == 0 || buf.len() > 1 << 20 {
            return unframed_end(&buf);
        }
    }
    let (head, _) = parse_head(&buf).ok_or_else(|| unparseable(&buf))?;
    if head.status == 204 || head.status == 304 || (100..200).contains(&head.status) {
        return Ok(head);
    }
    if let Some(n) = head.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        read_up_to(s, &mut buf, n)?;
    } else if head.header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        read_chunks(s, &mut buf)?;
    } else {
        s.read_to_end(&mut buf)?;
    }
    unframed_end(&buf)
}

fn unparseable(buf: &[u8]) -> std::io::Error {
    std::io::Error::other(format!("unparseable response: {:?}", String::from_utf8_lossy(buf)))
}

fn unframed_end(buf: &[u8]) -> std::io::Result<Response> {
    parse(buf).ok_or_else(|| unparseable(buf))
}

/// One byte onto `buf`: slow, but the only way a plain `Read` cannot overshoot a line.
fn read_byte(s: &mut impl Read, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut b = [0u8; 1];
    let n = s.read(&mut b)?;
    buf.extend_from_slice(&b[..n]);
    Ok(n)
}

/// Appends up to `n` bytes, fewer if the peer closes first (a cut body is still a result).
fn read_up_to(s: &mut impl Read, buf: &mut Vec<u8>, n: usize) -> std::io::Result<()> {
    let want = buf.len() + n;
    let mut chunk = [0u8; 8192];
    while buf.len() < want {
        let k = s.read(&mut chunk[..(want - buf.len()).min(8192)])?;
        if k == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..k]);
    }
    Ok(())
}

/// Appends the chunked body's bytes through the last chunk and the trailer block.
fn read_chunks(s: &mut impl Read, buf: &mut Vec<u8>) -> std::io::Result<()> {
    loop {
        let line_start = buf.len();
        while !buf[line_start..].ends_with(b"\r\n") {
            if read_byte(s, buf)? == 0 {
                return Ok(());
            }
        }
        let line = String::from_utf8_lossy(&buf[line_start..buf.len() - 2]).into_owned();
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| std::io::Error::other(format!("bad chunk size {line:?}: {e}")))?;
        if size == 0 {
            // Trailer lines, then the empty line that ends the message.
            loop {
                let start = buf.len();
                while !buf[start..].ends_with(b"\r\n") {
                    if read_byte(s, buf)? == 0 {
                        return Ok(());
                    }
                }
                if buf.len() - start == 2 {
                    return Ok(());
                }
            }
        }
        read_up_to(s, buf, size + 2)?;
    }
}

pub fn parse(buf: &[u8]) -> Option<Response> {
    let (head, rest) = parse_head(buf)?;
    let chunked = head.header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let body = if chunked { dechunk(rest)? } else { rest.to_vec() };
    Some(Response {
        body: String::from_utf8_lossy(&body).into_owned(),
        raw_body: body,
        ..head
    })
}

/// The status line and headers (an empty body), and the bytes after the header block.
fn parse_head(buf: &[u8]) -> Option<(Response, &[u8])> {
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
    let r = Response {
        status,
        headers,
        raw_names,
        body: String::new(),
        raw_body: Vec::new(),
    };
    Some((r, &buf[end + 4..]))
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
