//! Attacks and limits over raw sockets, with an upstream that counts what reached it:
//! slowloris, oversize headers and URIs, bodies past the limit, smuggling patterns,
//! connection caps, keep-alive limits.

mod common;
use common::client::{raw_request, read_response};
use common::{wait_until, Gateway, Upstream};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A raw client connection that gives up reading after `secs` (a hung server fails the test).
fn client(gw: &Gateway, secs: u64) -> TcpStream {
    let s = TcpStream::connect(&gw.addr).expect("connect to the gateway");
    s.set_read_timeout(Some(Duration::from_secs(secs))).expect("set read timeout");
    s
}

fn gateway(up: &Upstream, server_extra: &str) -> Gateway {
    Gateway::start_raw(
        &format!(
            r#"
[server]
threads = 2
pid_file = "{{dir}}/gatehouse.pid"
upgrade_sock = "{{dir}}/upgrade.sock"
header_timeout = "1s"
max_header_size = "4KiB"
max_headers = 20
max_uri = "256"
max_body = "1KiB"
{server_extra}
[listeners.public]
addr = "{{listen}}"
[admin]
addr = "{{admin}}"
[log]
access = "{{dir}}/access.log"
level = "warn"
[upstreams.u]
targets = ["{up}"]
retries = 0
[routes.r]
paths = ["/"]
upstream = "u"
[routes.big]
paths = ["/big"]
upstream = "u"
max_body = "8KiB"
"#,
            up = up.addr
        ),
        &[],
    )
}

fn send(gw: &Gateway, raw: &str) -> common::Response {
    raw_request(&gw.addr, raw.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn slowloris_gets_408_and_normal_clients_are_served() {
    let up = Upstream::start("u");
    let gw = gateway(&up, "");
    let started = Instant::now();
    let mut slow: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = TcpStream::connect(&gw.addr).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        })
        .collect();
    // Keep trickling one header byte at a time, and serve normal clients meanwhile.
    let mut normal_ok = 0;
    for i in 0..8 {
        for s in slow.iter_mut() {
            let _ = s.write_all(if i % 2 == 0 { b"X" } else { b"y" });
        }
        let t = Instant::now();
        let r = gw.get("/");
        assert_eq!(r.status, 200);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "a normal request waited behind trickling clients: {:?}",
            t.elapsed()
        );
        normal_ok += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(normal_ok, 8);
    let mut got_408 = 0;
    for s in slow.iter_mut() {
        if let Ok(r) = read_response(s) {
            if r.status == 408 {
                got_408 += 1;
            }
        }
    }
    assert_eq!(got_408, 200, "every trickling connection gets 408");
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(up.count(), 8, "no trickled request reached the upstream");
    assert_eq!(
        gw.metric(r#"gatehouse_rejections_total{reason="header_timeout",route="_none"}"#),
        200.0
    );
}

#[test]
fn header_uri_and_body_limits() {
    let up = Upstream::start("u");
    let gw = gateway(&up, "");
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "x".repeat(5000)
    );
    let r = send(&gw, &big_header);
    assert_eq!(r.status, 431);
    assert_eq!(r.json()["status"], 431);
    assert!(r.json()["request_id"].is_string());

    let many: String = (0..25).map(|i| format!("X-H{i}: v\r\n")).collect();
    assert_eq!(
        send(&gw, &format!("GET / HTTP/1.1\r\nHost: a\r\n{many}Connection: close\r\n\r\n")).status,
        431
    );

    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", "u".repeat(300));
    assert_eq!(send(&gw, &long_uri).status, 414);

    let body = "b".repeat(2000);
    let r = send(
        &gw,
        &format!(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(r.status, 413, "global max_body");
    // The route's own limit is larger.
    let r = send(
        &gw,
        &format!(
            "POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(r.status, 200);
    assert_eq!(up.count(), 1, "only the request within limits reached the upstream");

    // A chunked body that grows past the limit mid-stream.
    let mut s = client(&gw, 5);
    s.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let chunk = format!("200\r\n{}\r\n", "c".repeat(0x200));
    let mut status = None;
    for _ in 0..6 {
        if s.write_all(chunk.as_bytes()).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Ok(r) = read_response(&mut s) {
        status = Some(r.status);
    }
    assert_eq!(status, Some(413), "chunked body past max_body");
    assert!(
        up.recorded().iter().filter(|r| r.path == "/").all(|r| r.body.len() <= 1024),
        "no body past the limit was delivered whole"
    );
}

#[test]
fn smuggling_patterns_are_rejected_and_never_reach_upstream_twice() {
    let up = Upstream::start("u");
    let gw = gateway(&up, "");
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let cases = [
        (
            "CL+TE",
            format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "TE+CL",
            format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 41\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "two CL",
            format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 40\r\n\r\n{smuggled}"),
        ),
        (
            "CL list",
            format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0, 40\r\n\r\n{smuggled}"),
        ),
        (
            "TE gzip,chunked",
            format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "TE twice",
            format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "TE unknown",
            format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "TE obs-fold",
            format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        ("obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n".to_string()),
        ("no host", format!("GET / HTTP/1.1\r\n\r\n{smuggled}")),
        (
            "space before colon",
            format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
    ];
    for (name, raw) in &cases {
        let r = send(&gw, raw);
        assert_eq!(r.status, 400, "{name}: {}", r.body);
        assert_eq!(r.json()["status"], 400, "{name}");
    }
    assert_eq!(
        up.count(),
        0,
        "no ambiguous request reached the upstream: {:?}",
        up.recorded().iter().map(|r| &r.path).collect::<Vec<_>>()
    );

    // Bad chunk size: the header is fine, the body is not. Never two requests upstream.
    let r = send(
        &gw,
        &format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n{smuggled}"),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    // A later request as a barrier: once it reached the upstream, anything the bad
    // connection had forwarded would have too.
    assert_eq!(gw.get("/barrier").status, 200);
    wait_until(Duration::from_secs(5), "the barrier request", || {
        up.recorded().iter().any(|r| r.path == "/barrier")
    });
    assert!(
        up.recorded().iter().all(|r| r.path != "/smuggled"),
        "smuggled request reached the upstream"
    );
    assert!(up.count() <= 2);
}

#[test]
fn connection_cap_refuses_clearly() {
    let up = Upstream::start("u");
    let gw = gateway(&up, "max_connections = 5");
    let held: Vec<TcpStream> = (0..5)
        .map(|_| {
            let mut s = client(&gw, 5);
            s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
            let r = read_response(&mut s).unwrap();
            assert_eq!(r.status, 200);
            s
        })
        .collect();
    let r = gw.get("/");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "too many connections");
    drop(held);
    wait_until(Duration::from_secs(5), "slots to free up", || gw.get("/").status == 200);
}

/// The idle timer is armed once and kept across requests: when it fires on a connection that
/// has been busy since, the connection must stay open, and an idle one still closes on time.
#[test]
fn busy_keepalive_connection_outlives_an_earlier_idle_deadline() {
    let up = Upstream::start("u");
    let gw = gateway(&up, "keepalive_timeout = \"1s\"");
    let mut s = client(&gw, 10);
    let start = Instant::now();
    let mut served = 0;
    let mut last = Instant::now();
    // Gaps of 400 ms, each well inside the 1 s limit, for more than twice that limit.
    while start.elapsed() < Duration::from_millis(2600) {
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let r = read_response(&mut s).unwrap_or_else(|e| panic!("request {served} on a busy connection: {e}"));
        assert_eq!(r.status, 200);
        assert!(!r.header("connection").is_some_and(|c| c.eq_ignore_ascii_case("close")));
        served += 1;
        last = Instant::now();
        std::thread::sleep(Duration::from_millis(400));
    }
    assert!(served >= 6, "served {served}");
    // Now idle: closed, and not before the limit (counted from the last response).
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).expect("the server closes, not the read timeout");
    assert_eq!(n, 0);
    assert!(
        last.elapsed() >= Duration::from_millis(900),
        "closed {:?} after the last response",
        last.elapsed()
    );
}

#[test]
fn idle_keepalive_is_closed_and_requests_per_connection_are_capped() {
    let up = Upstream::start("u");
    let gw = gateway(&up, "keepalive_timeout = \"1s\"\nkeepalive_requests = 3");
    let mut s = client(&gw, 10);
    let mut served = 0;
    let mut closed_by_server = false;
    for _ in 0..10 {
        if s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").is_err() {
            break;
        }
        match read_response(&mut s) {
            Ok(r) => {
                assert_eq!(r.status, 200);
                served += 1;
                if r.header("connection").is_some_and(|c| c.eq_ignore_ascii_case("close")) {
                    closed_by_server = true;
                    break;
                }
            }
            Err(_) => break,
        }
    }
    assert!(closed_by_server, "server announced the close");
    assert!((3..=4).contains(&served), "served {served} requests on one connection");

    // Idle keep-alive connection: closed by the server after about keepalive_timeout, also
    // after a first request (Pingora alone would wait forever there).
    let mut s = client(&gw, 10);
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s).unwrap().status, 200);
    let t = Instant::now();
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).expect("the server closes, not the read timeout");
    assert_eq!(n, 0);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "idle connection closed after {:?}",
        t.elapsed()
    );
}
