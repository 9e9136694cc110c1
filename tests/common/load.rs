//! Steady load for reload/upgrade/shutdown tests: keep-alive clients and fresh-connection
//! clients hammering one URL until stopped, recording every failure.
//!
//! Like real HTTP clients, a keep-alive client resends an idempotent request once on a new
//! connection when the server closed the idle connection before answering (RFC 9112 9.3.1):
//! that is not a failure of the server.

use super::client::read_response;
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Stats {
    pub ok: AtomicUsize,
    pub failures: Mutex<Vec<String>>,
    pub latencies_us: Mutex<Vec<u64>>,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    pub stats: Arc<Stats>,
    threads: Vec<JoinHandle<()>>,
}

fn once(conn: &mut Option<TcpStream>, addr: &str, path: &str, keepalive: bool) -> Result<u16, String> {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: load\r\n{}\r\n",
        if keepalive { "" } else { "Connection: close\r\n" }
    );
    for attempt in 0..2 {
        let reused = conn.is_some();
        if conn.is_none() {
            let s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(10))).ok();
            *conn = Some(s);
        }
        let s = conn.as_mut().expect("connected");
        let sent = s.write_all(req.as_bytes());
        let resp = sent
            .map_err(|e| e.to_string())
            .and_then(|_| read_response(s).map_err(|e| e.to_string()));
        match resp {
            Ok(r) => {
                if !keepalive || r.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
                    *conn = None;
                }
                return Ok(r.status);
            }
            Err(e) => {
                *conn = None;
                if !(reused && attempt == 0) {
                    return Err(e);
                }
            }
        }
    }
    Err("retry failed".into())
}

impl Load {
    pub fn start(addr: &str, path: &str, keepalive_clients: usize, fresh_clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let mut threads = Vec::new();
        for i in 0..keepalive_clients + fresh_clients {
            let keepalive = i < keepalive_clients;
            let (stop, stats, addr, path) = (stop.clone(), stats.clone(), addr.to_string(), path.to_string());
            threads.push(std::thread::spawn(move || {
                let mut conn = None;
                while !stop.load(Ordering::SeqCst) {
                    let t = Instant::now();
                    match once(&mut conn, &addr, &path, keepalive) {
                        Ok(200) => {
                            stats.ok.fetch_add(1, Ordering::SeqCst);
                            stats.latencies_us.lock().unwrap().push(t.elapsed().as_micros() as u64);
                        }
                        Ok(s) => stats.failures.lock().unwrap().push(format!("status {s}")),
                        Err(e) => stats.failures.lock().unwrap().push(e),
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }));
        }
        Load { stop, stats, threads }
    }

    /// Stops the clients; returns (ok, failures, p99 in ms).
    pub fn finish(self) -> (usize, Vec<String>, f64) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
        let mut l = self.stats.latencies_us.lock().unwrap().clone();
        l.sort();
        let p99 = l.get(l.len().saturating_sub(1) * 99 / 100).copied().unwrap_or(0) as f64 / 1000.0;
        (
            self.stats.ok.load(Ordering::SeqCst),
            self.stats.failures.lock().unwrap().clone(),
            p99,
        )
    }

    pub fn ok(&self) -> usize {
        self.stats.ok.load(Ordering::SeqCst)
    }
}
