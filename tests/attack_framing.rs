//! Attacks on message framing and connection handling over raw sockets: chunk-size lines
//! that end a body early, pipelined requests, answers lost to a reset, silent connections,
//! one address holding every connection, and upgraded (WebSocket) bytes.

mod common;
use common::client::read_response;
use common::{wait_until, Gateway, Upstream};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

fn gateway(up: &str, server_extra: &str, upstream_extra: &str) -> Gateway {
    Gateway::start_raw(
        &format!(
            r#"
[server]
threads = 2
pid_file = "{{dir}}/gatehouse.pid"
upgrade_sock = "{{dir}}/upgrade.sock"
header_timeout = "1s"
max_body = "1KiB"
{server_extra}
[listeners.public]
addr = "{{listen}}"
[admin]
addr = "{{admin}}"
token = "test-admin-token"
[log]
access = "{{dir}}/access.log"
level = "warn"
[upstreams.u]
targets = ["{up}"]
retries = 0
{upstream_extra}
[routes.r]
paths = ["/"]
upstream = "u"
websocket = true
"#
        ),
        &[],
    )
}

fn connect(gw: &Gateway, read_secs: u64) -> TcpStream {
    let s = TcpStream::connect(&gw.addr).expect("connect to the gateway");
    s.set_read_timeout(Some(Duration::from_secs(read_secs))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

#[test]
fn an_empty_chunk_size_line_is_a_400_and_swallows_nothing() {
    let up = Upstream::start("u");
    let gw = gateway(&up.addr, "", "");
    // One 8-byte chunk ("hello\r\n0"), its CRLF, then an empty line where the next chunk size
    // belongs, then the client's next request: that request used to vanish as "trailers".
    let attack =
        "POST /first HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n8\r\nhello\r\n0\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut s = connect(&gw, 5);
    s.write_all(attack.as_bytes()).unwrap();
    let r = read_response(&mut s).expect("an answer, not silence");
    assert_eq!(r.status, 400, "{}", r.body);

    let cases = [
        (
            "empty size line first",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\r\n\r\n",
        ),
        (
            "size with junk",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5x\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "bare LF in extension",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a\nb\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "data longer than size",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "trailer without colon",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nnot a field\r\n\r\n",
        ),
        (
            "size overflow",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\nx\r\n0\r\n\r\n",
        ),
    ];
    for (name, raw) in cases {
        let mut s = connect(&gw, 5);
        s.write_all(raw.as_bytes()).unwrap();
        let r = read_response(&mut s).unwrap_or_else(|e| panic!("{name}: no answer: {e}"));
        assert_eq!(r.status, 400, "{name}: {}", r.body);
    }
    assert!(
        up.recorded().iter().all(|r| r.path != "/next"),
        "the swallowed request never reached the upstream"
    );
    assert_eq!(up.count(), 0, "no malformed body reached the upstream");

    // Well-formed chunks with extensions and a trailer field still pass.
    let mut s = connect(&gw, 5);
    s.write_all(b"POST /ok HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nx-check: 1\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.last().body, b"hello");
}

#[test]
fn pipelined_requests_are_answered_in_order_whatever_the_packets() {
    let up = Upstream::start("u");
    up.set(|b| b.echo = Some("x-n".into()));
    let gw = gateway(&up.addr, "", "");
    let mut s = connect(&gw, 5);
    let three: String = (1..=3)
        .map(|i| format!("GET /p{i} HTTP/1.1\r\nHost: a\r\nx-n: {i}\r\n\r\n"))
        .collect();
    s.write_all(three.as_bytes()).unwrap();
    // All three answers are sent before the client reads one, so they share its socket
    // buffer (as they do on a loaded machine): each read must still find its own.
    wait_until(Duration::from_secs(5), "all three answers to be logged", || {
        gw.access_log().len() >= 3
    });
    for i in 1..=3 {
        let r = read_response(&mut s).unwrap_or_else(|e| panic!("pipelined request {i} unanswered: {e}"));
        assert_eq!(r.status, 200);
        assert_eq!(r.body, format!("{i}|/p{i}"), "answers come in request order");
    }

    // A body that arrives in a later packet together with the next request: the same
    // outcome as when every byte comes at once.
    for split in [false, true] {
        up.reset();
        let mut s = connect(&gw, 5);
        let head = "POST /post HTTP/1.1\r\nHost: a\r\nx-n: body\r\nContent-Length: 5\r\n\r\n";
        let rest = "helloGET /after HTTP/1.1\r\nHost: a\r\nx-n: after\r\n\r\n";
        if split {
            s.write_all(head.as_bytes()).unwrap();
            // Not synchronisation: this pause only makes the kernel send two segments.
            std::thread::sleep(Duration::from_millis(150));
            s.write_all(rest.as_bytes()).unwrap();
        } else {
            s.write_all(format!("{head}{rest}").as_bytes()).unwrap();
        }
        let a = read_response(&mut s).unwrap_or_else(|e| panic!("split={split}: first: {e}"));
        let b = read_response(&mut s).unwrap_or_else(|e| panic!("split={split}: second: {e}"));
        assert_eq!((a.status, a.body.as_str()), (200, "body|/post"), "split={split}");
        assert_eq!((b.status, b.body.as_str()), (200, "after|/after"), "split={split}");
        assert_eq!(up.recorded()[0].body, b"hello", "split={split}");
    }
}

/// Sends the whole body, as a simple uploader does, and only then reads the answer: the
/// sends must not fail with a reset (the answer would be lost with them).
fn upload_then_read(gw: &Gateway, head: &str, unit: &[u8], total: usize) -> std::io::Result<common::Response> {
    let mut s = connect(gw, 10);
    s.write_all(head.as_bytes())?;
    let mut sent = 0;
    while sent < total {
        s.write_all(unit)?;
        sent += unit.len();
    }
    read_response(&mut s)
}

#[test]
fn an_early_answer_reaches_a_client_that_is_still_sending() {
    let up = Upstream::start("u");
    let gw = gateway(&up.addr, "", "");
    // 8 MiB: far more than the socket buffers hold, so the gateway answers (and, without a
    // lingering close, resets) while the client is still sending.
    let total = 8 << 20;
    let chunk = format!("4000\r\n{}\r\n", "x".repeat(0x4000)).into_bytes();
    let chunked = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    let r = upload_then_read(&gw, chunked, &chunk, total).expect("chunked past max_body: the 413 was lost to a reset");
    assert_eq!(r.status, 413, "{}", r.body);
    let declared = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {total}\r\n\r\n");
    let r = upload_then_read(&gw, &declared, &[b'y'; 16384], total).expect("declared too large: the 413 was lost");
    assert_eq!(r.status, 413);
    // The header guard's own answers too (431: header too large, with more bytes behind).
    let big = "GET / HTTP/1.1\r\nHost: a\r\nX-Big: ";
    let r = upload_then_read(&gw, big, &[b'h'; 16384], total).expect("the 431 was lost");
    assert_eq!(r.status, 431);
    assert_eq!(up.count(), 0);
}

#[test]
fn a_silent_connection_is_closed_at_the_header_deadline() {
    let up = Upstream::start("u");
    // keepalive_timeout is long: a connection that never speaks must not get that long.
    let gw = gateway(&up.addr, "keepalive_timeout = \"60s\"", "");
    let mut s = connect(&gw, 10);
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("unexpected bytes: {:?}", String::from_utf8_lossy(&buf[..n])),
        Err(e) => panic!("still open after 10 s (header_timeout is 1 s): {e}"),
    }
    wait_until(Duration::from_secs(5), "the rejection to be counted", || {
        gw.metric(r#"gatehouse_rejections_total{reason="first_byte_timeout",route="_none"}"#) >= 1.0
    });
}

#[test]
fn one_address_cannot_hold_every_connection() {
    let up = Upstream::start("u");
    let gw = gateway(&up.addr, "max_connections_per_ip = 3", "");
    let held: Vec<TcpStream> = (0..3).map(|_| connect(&gw, 5)).collect();
    // The three are accepted and counted before the fourth arrives.
    for s in &held {
        let mut s = s.try_clone().unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut s).unwrap().status, 200);
    }
    let mut s = connect(&gw, 5);
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").ok();
    let r = read_response(&mut s).expect("a clear refusal");
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.json()["error"], "too many connections from this address");
    drop(held);
    wait_until(Duration::from_secs(5), "the address's slots to free up", || {
        gw.get("/").status == 200
    });
}

/// A WebSocket echo server (tungstenite) on an OS-chosen port.
fn websocket_echo() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            std::thread::spawn(move || {
                let Ok(mut ws) = tungstenite::accept(conn) else { return };
                while let Ok(m) = ws.read() {
                    if m.is_close() || ws.send(m).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn upgraded_bytes_skip_the_body_limit_and_the_breaker() {
    let echo = websocket_echo();
    let gw = gateway(
        &echo,
        "",
        "[upstreams.u.circuit_breaker]\nconsecutive_failures = 1\nmax_ejected_percent = 100",
    );
    for round in 0..2 {
        let s = connect(&gw, 5);
        let (mut ws, resp) = tungstenite::client(format!("ws://{}/chat", gw.addr), s).expect("upgrade through the gateway");
        assert_eq!(resp.status(), 101);
        // 20 KiB each way through a route whose max_body is 1 KiB.
        for i in 0..20 {
            let msg = format!("{round}-{i}-{}", "m".repeat(1000));
            ws.send(tungstenite::Message::text(msg.clone()))
                .unwrap_or_else(|e| panic!("send {i}: {e}"));
            let back = ws.read().unwrap_or_else(|e| panic!("round {round}: message {i} cut: {e}"));
            assert_eq!(back.into_text().unwrap().as_str(), msg);
        }
        ws.close(None).ok();
        while ws.read().is_ok() {}
    }
    let status = common::request(&gw.admin, "GET", "/status", &[("Authorization", "Bearer test-admin-token")], None).json();
    assert_eq!(status["clusters"]["u"]["targets"][0]["ejected"], false, "{status}");
    assert_eq!(status["clusters"]["u"]["targets"][0]["ejections"], 0, "{status}");
}

#[test]
fn an_http10_connection_closes_after_its_answer_unless_it_asks_to_stay() {
    let up = Upstream::start("u");
    let gw = gateway(&up.addr, "keepalive_timeout = \"30s\"", "");
    // Without keep-alive: the answer, then the close (not the 30 s keep-alive wait its
    // client would hang on; tools such as `openssl s_time` read until the close).
    let mut t = connect(&gw, 5);
    t.write_all(b"GET /a HTTP/1.0\r\nHost: a\r\n\r\n").unwrap();
    let mut all = Vec::new();
    t.read_to_end(&mut all).expect("closed before the 5 s read timeout");
    assert!(all.starts_with(b"HTTP/1."), "{}", String::from_utf8_lossy(&all));
    // With keep-alive: a second request on the same connection.
    let mut t = connect(&gw, 5);
    t.write_all(b"GET /b HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut t).unwrap().status, 200);
    t.write_all(b"GET /c HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut t).unwrap().status, 200);
    assert_eq!(up.count(), 3);
}
