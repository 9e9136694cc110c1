//! A scripted upstream: answers with a status and body, can delay, drop the connection,
//! fail its health check, or go away entirely. It counts and records what it received.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Behavior {
    pub status: u16,
    pub body: Option<String>,
    pub delay: Duration,
    /// Close the connection without answering.
    pub drop: bool,
    /// Status `/healthz` answers with.
    pub health: u16,
    pub headers: Vec<(String, String)>,
    /// Extra delay for requests whose path contains "slow".
    pub slow: Duration,
    /// Sent as ETag; a request whose If-None-Match matches gets 304.
    pub etag: Option<String>,
    /// Body = this request header's value + the path (for Vary and key tests).
    pub echo: Option<String>,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            status: 200,
            body: None,
            delay: Duration::ZERO,
            drop: false,
            health: 200,
            headers: Vec::new(),
            slow: Duration::ZERO,
            etag: None,
            echo: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Names lower-cased, for lookups.
    pub headers: Vec<(String, String)>,
    /// Header names exactly as they arrived, for header-case tests.
    pub raw_names: Vec<String>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Shared {
    name: String,
    behavior: Mutex<Behavior>,
    count: AtomicUsize,
    health_checks: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    recorded: Mutex<Vec<Recorded>>,
    stopped: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
}

pub struct Upstream {
    pub addr: String,
    shared: Arc<Shared>,
}

impl Upstream {
    pub fn start(name: &str) -> Upstream {
        Self::start_on(name, "127.0.0.1:0")
    }

    /// On a given address (`127.0.0.22:0`: another loopback address, as DNS tests need).
    pub fn start_on(name: &str, bind: &str) -> Upstream {
        let shared = Arc::new(Shared {
            name: name.to_string(),
            behavior: Mutex::new(Behavior::default()),
            count: AtomicUsize::new(0),
            health_checks: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            recorded: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
        });
        let addr = Self::listen(bind, shared.clone());
        Upstream { addr, shared }
    }

    fn listen(bind: &str, shared: Arc<Shared>) -> String {
        let listener = TcpListener::bind(bind).unwrap_or_else(|e| panic!("upstream bind {bind}: {e}"));
        let addr = listener.local_addr().expect("local addr").to_string();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if shared.stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                if let Ok(c) = conn.try_clone() {
                    shared.conns.lock().unwrap().push(c);
                }
                let s = shared.clone();
                std::thread::spawn(move || serve(conn, s));
            }
        });
        addr
    }

    pub fn set(&self, f: impl FnOnce(&mut Behavior)) {
        f(&mut self.shared.behavior.lock().unwrap());
    }

    /// `set`, usable inside a condition.
    pub fn set_and_get(&self, f: impl FnOnce(&mut Behavior)) -> bool {
        self.set(f);
        true
    }

    /// Requests received, not counting health checks.
    pub fn count(&self) -> usize {
        self.shared.count.load(Ordering::SeqCst)
    }

    pub fn health_checks(&self) -> usize {
        self.shared.health_checks.load(Ordering::SeqCst)
    }

    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    pub fn recorded(&self) -> Vec<Recorded> {
        self.shared.recorded.lock().unwrap().clone()
    }

    pub fn last(&self) -> Recorded {
        self.recorded().last().cloned().expect("upstream received no request")
    }

    pub fn reset(&self) {
        self.shared.count.store(0, Ordering::SeqCst);
        self.shared.recorded.lock().unwrap().clear();
    }

    /// Stops listening and closes every open connection: the process is "killed".
    pub fn kill(&self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
        for c in self.shared.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        // Wait until the port refuses connections.
        super::wait_until(Duration::from_secs(5), "upstream to stop listening", || {
            TcpStream::connect(&self.addr).is_err()
        });
    }

    /// Listens again on the same address, keeping counts and behaviour.
    pub fn revive(&self) {
        self.shared.stopped.store(false, Ordering::SeqCst);
        Self::listen(&self.addr, self.shared.clone());
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if !self.shared.stopped.load(Ordering::SeqCst) {
            self.shared.stopped.store(true, Ordering::SeqCst);
            let _ = TcpStream::connect(&self.addr);
        }
    }
}

fn serve(conn: TcpStream, s: Arc<Shared>) {
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut conn = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut headers = Vec::new();
        let mut raw_names = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                raw_names.push(k.trim().to_string());
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let find = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let mut body = Vec::new();
        if let Some(n) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
            body.resize(n, 0);
            if reader.read_exact(&mut body).is_err() {
                return;
            }
        } else if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let mut size = String::new();
                if reader.read_line(&mut size).unwrap_or(0) == 0 {
                    return;
                }
                let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
                let mut chunk = vec![0; n + 2];
                if reader.read_exact(&mut chunk).is_err() {
                    return;
                }
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        }
        let b = s.behavior.lock().unwrap().clone();
        if path.starts_with("/healthz") {
            s.health_checks.fetch_add(1, Ordering::SeqCst);
            let _ = write!(conn, "HTTP/1.1 {} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", b.health);
            return;
        }
        s.count.fetch_add(1, Ordering::SeqCst);
        let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        s.max_in_flight.fetch_max(now, Ordering::SeqCst);
        s.recorded.lock().unwrap().push(Recorded {
            method: method.clone(),
            path: path.clone(),
            headers: headers.clone(),
            raw_names,
            body,
        });
        if !b.delay.is_zero() {
            std::thread::sleep(b.delay);
        }
        if path.contains("slow") && !b.slow.is_zero() {
            std::thread::sleep(b.slow);
        }
        s.in_flight.fetch_sub(1, Ordering::SeqCst);
        if b.drop {
            let _ = conn.shutdown(Shutdown::Both);
            return;
        }
        let mut extra = String::new();
        if let Some(tag) = &b.etag {
            extra.push_str(&format!("ETag: {tag}\r\n"));
            if find("if-none-match").as_deref() == Some(tag.as_str()) {
                for (k, v) in &b.headers {
                    extra.push_str(&format!("{k}: {v}\r\n"));
                }
                let resp = format!("HTTP/1.1 304 Not Modified\r\nX-Upstream: {}\r\n{extra}\r\n", s.name);
                if conn.write_all(resp.as_bytes()).is_err() {
                    return;
                }
                continue;
            }
        }
        let body = match &b.echo {
            Some(h) => format!("{}|{}", find(h).unwrap_or_default(), path),
            None => b.body.clone().unwrap_or_else(|| s.name.clone()),
        };
        for (k, v) in &b.headers {
            extra.push_str(&format!("{k}: {v}\r\n"));
        }
        // The standard reason phrase, as real servers send: a custom one makes the gateway
        // keep the response header as Pingora built it (see `preserve_header_case`).
        let reason = http::StatusCode::from_u16(b.status)
            .ok()
            .and_then(|c| c.canonical_reason())
            .unwrap_or("X");
        let resp = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nX-Upstream: {}\r\n{extra}\r\n{body}",
            b.status,
            body.len(),
            s.name
        );
        if conn.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}
