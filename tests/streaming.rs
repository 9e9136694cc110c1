//! Streamed responses (server-sent events) through the real gateway: each event reaches
//! the client as the upstream writes it, gaps longer than the upstream's read timeout do
//! not cut the stream, and a client that goes away cancels the upstream request.

mod common;
use common::Gateway;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An SSE origin: `GET /events?n=N` answers N events 200 ms apart (chunked), noting when it
/// wrote each; a write that fails (the gateway hung up) is noted as a cancel.
struct Feed {
    addr: String,
    written: Arc<Mutex<Vec<Instant>>>,
    cancelled: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
}

impl Feed {
    fn start() -> Feed {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let written = Arc::new(Mutex::new(Vec::new()));
        let cancelled = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let (w, c, r) = (written.clone(), cancelled.clone(), requests.clone());
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let (w, c, r) = (w.clone(), c.clone(), r.clone());
                std::thread::spawn(move || serve(conn, &w, &c, &r));
            }
        });
        Feed {
            addr,
            written,
            cancelled,
            requests,
        }
    }
}

fn serve(mut conn: TcpStream, written: &Mutex<Vec<Instant>>, cancelled: &AtomicBool, requests: &AtomicUsize) {
    let mut line = String::new();
    let mut rd = BufReader::new(conn.try_clone().unwrap());
    if rd.read_line(&mut line).is_err() {
        return;
    }
    loop {
        let mut h = String::new();
        if rd.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
            break;
        }
    }
    requests.fetch_add(1, Ordering::SeqCst);
    let n: usize = line
        .split("n=")
        .nth(1)
        .and_then(|v| v.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n";
    if conn.write_all(head.as_bytes()).is_err() {
        return;
    }
    for i in 0..n {
        std::thread::sleep(Duration::from_millis(200));
        let event = format!("id: {i}\ndata: event-{i}\n\n");
        let chunk = format!("{:x}\r\n{event}\r\n", event.len());
        written.lock().unwrap().push(Instant::now());
        if conn.write_all(chunk.as_bytes()).is_err() {
            cancelled.store(true, Ordering::SeqCst);
            return;
        }
    }
    conn.write_all(b"0\r\n\r\n").ok();
}

/// Reads `n` events from `addr`; when each arrived.
fn read_events(addr: &str, path: &str, accept: Option<&str>, n: usize) -> Result<Vec<Instant>, String> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: feed\r\n{accept}\r\n").unwrap();
    let mut got = Vec::new();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while seen.len() < n {
        let k = s.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if k == 0 {
            return Err(format!("closed after {} events: {}", seen.len(), String::from_utf8_lossy(&got)));
        }
        got.extend_from_slice(&buf[..k]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if text.starts_with("HTTP/1.1 5") {
            return Err(text);
        }
        while text.contains(&format!("data: event-{}\n", seen.len())) {
            seen.push(Instant::now());
        }
    }
    Ok(seen)
}

fn gateway(feed: &Feed) -> Gateway {
    Gateway::start(&format!(
        r#"
[upstreams.feed]
targets = ["{}"]
read_timeout = "100ms"
retries = 0
[routes.feed]
paths = ["/events"]
upstream = "feed"
streaming = true
[routes.other]
paths = ["/other"]
upstream = "feed"
"#,
        feed.addr
    ))
}

/// Each event's delay from the origin's write to the client's read.
fn lags(feed: &Feed, arrived: &[Instant]) -> Vec<Duration> {
    let written = feed.written.lock().unwrap().clone();
    let start = written.len() - arrived.len();
    written[start..]
        .iter()
        .zip(arrived)
        .map(|(w, a)| a.saturating_duration_since(*w))
        .collect()
}

#[test]
fn each_event_arrives_as_written_across_gaps_longer_than_the_read_timeout() {
    let feed = Feed::start();
    let gw = gateway(&feed);
    // The origin alone, for the comparison: the same client, no gateway.
    let direct = read_events(&feed.addr, "/events?n=10", None, 10).unwrap();
    let direct_lag = lags(&feed, &direct).into_iter().max().unwrap();
    feed.written.lock().unwrap().clear();

    let through = read_events(&gw.addr, "/events?n=10", None, 10).expect("a streaming route has no read deadline between events");
    let lag = lags(&feed, &through);
    let worst = lag.iter().max().copied().unwrap();
    eprintln!("event lag through the gateway: worst {worst:?} (origin alone {direct_lag:?})");
    // Buffered, an event would wait for the next (200 ms) or for the end.
    assert!(worst < direct_lag + Duration::from_millis(50), "{lag:?}");

    // An EventSource request on an ordinary route streams the same way ...
    feed.written.lock().unwrap().clear();
    read_events(&gw.addr, "/other?n=4", Some("text/event-stream"), 4).expect("Accept: text/event-stream lifts the read deadline");
    // ... and without it the route's deadline holds: the 100 ms read timeout cuts the
    // stream in its first gap, after the header.
    let cut = read_events(&gw.addr, "/other?n=4", None, 4).expect_err("an ordinary request keeps its read timeout");
    assert!(cut.starts_with("closed after 0 events: HTTP/1.1 200"), "{cut}");
}

#[test]
fn a_client_that_goes_away_cancels_the_upstream_request() {
    let feed = Feed::start();
    let gw = gateway(&feed);
    let mut s = TcpStream::connect(&gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /events?n=1000 HTTP/1.1\r\nHost: feed\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("data: event-2\n") {
        let k = s.read(&mut buf).unwrap();
        assert!(k > 0, "stream ended early");
        got.extend_from_slice(&buf[..k]);
    }
    drop(s);
    common::wait_until(Duration::from_secs(5), "the origin to see the request cancelled", || {
        feed.cancelled.load(Ordering::SeqCst)
    });
    assert!(
        feed.written.lock().unwrap().len() < 30,
        "the origin stopped soon after the client left"
    );
    assert_eq!(feed.requests.load(Ordering::SeqCst), 1);
}
