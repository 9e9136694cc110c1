//! WebSocket sessions through the real gateway to a real tungstenite server: bytes past the
//! body limit, ping/pong and close codes both ways, the idle clock, auth and the
//! concurrency slot on the upgrade, 200 sessions at once, metrics and the access log, and
//! sessions across a reload and a graceful upgrade.

mod common;
use common::client::{raw_request, read_response};
use common::ws::{close_code, connect, WsUpstream};
use common::{wait_until, Gateway};
use std::io::Write;
use std::time::{Duration, Instant};
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

fn routes(up: &WsUpstream, extra: &str) -> String {
    format!(
        r#"
[upstreams.chat]
targets = ["{}"]
retries = 0
[upstreams.chat.circuit_breaker]
consecutive_failures = 1
max_ejected_percent = 100
[routes.chat]
paths = ["/ws"]
upstream = "chat"
websocket = true
max_body = "64KiB"
{extra}
[routes.plain]
paths = ["/plain"]
upstream = "chat"
"#,
        up.addr
    )
}

fn echo<S: std::io::Read + std::io::Write>(ws: &mut tungstenite::WebSocket<S>, text: &str) {
    ws.send(Message::text(text.to_string())).expect("send");
    let back = ws.read().expect("echo");
    assert_eq!(back.into_text().expect("text").as_str(), text);
}

#[test]
fn fifty_mib_echo_past_a_64k_body_limit_with_ping_and_close_codes() {
    let up = WsUpstream::start();
    let gw = Gateway::start(&routes(&up, ""));
    let mut ws = connect(&gw.addr, "/ws", &[]).expect("upgrade through the gateway");
    let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let mut total = 0usize;
    for i in 0..800u32 {
        let mut m = chunk.clone();
        m[..4].copy_from_slice(&i.to_be_bytes());
        ws.send(Message::binary(m.clone())).unwrap_or_else(|e| panic!("send {i}: {e}"));
        let back = ws.read().unwrap_or_else(|e| panic!("message {i} cut: {e}"));
        assert_eq!(back.into_data().as_ref(), &m[..], "message {i} intact");
        total += m.len();
    }
    assert_eq!(total, 50 * 1024 * 1024);
    // Ping through the gateway: the server's pong comes back with the same payload.
    ws.send(Message::Ping(b"are-you-there".to_vec().into())).unwrap();
    let pong = loop {
        match ws.read().expect("pong") {
            Message::Pong(p) => break p,
            _ => continue,
        }
    };
    assert_eq!(&pong[..], b"are-you-there");
    // The client closes with its own code; the server sees that code.
    ws.close(Some(CloseFrame {
        code: common::ws::code(4001),
        reason: "bye".into(),
    }))
    .unwrap();
    while ws.read().is_ok() {}
    wait_until(Duration::from_secs(5), "the server to see the close", || !up.closes().is_empty());
    assert_eq!(up.closes(), vec![Some(4001)]);

    // The server closes with its code; the client sees it.
    let mut ws = connect(&gw.addr, "/ws", &[]).unwrap();
    ws.send(Message::text("close 4002")).unwrap();
    assert_eq!(close_code(&mut ws), Some(4002));
    // The server hung up: the gateway closes the client's side too.
    let t = Instant::now();
    let end = loop {
        if let Err(e) = ws.read() {
            break e;
        }
    };
    assert!(
        matches!(end, tungstenite::Error::ConnectionClosed),
        "{end:?} after {:?}",
        t.elapsed()
    );

    wait_until(Duration::from_secs(5), "both sessions closed", || {
        gw.metric("gatehouse_websocket_sessions_open{route=\"chat\"}") == 0.0
    });
    assert_eq!(gw.metric("gatehouse_websocket_sessions_total{route=\"chat\"}"), 2.0);
    let bytes_in = gw.metric("gatehouse_websocket_bytes_total{direction=\"in\",route=\"chat\"}");
    let bytes_out = gw.metric("gatehouse_websocket_bytes_total{direction=\"out\",route=\"chat\"}");
    assert!(bytes_in >= total as f64 && bytes_out >= total as f64, "{bytes_in} {bytes_out}");
    // One access-log line per session, written when it ended.
    wait_until(Duration::from_secs(5), "two session lines", || {
        gw.access_log().iter().filter(|l| l["websocket"] == true).count() == 2
    });
    let log = gw.access_log();
    let big = log
        .iter()
        .find(|l| l["websocket"] == true && l["bytes_in"].as_u64() >= Some(total as u64))
        .expect("the big session's line");
    assert_eq!(big["status"], 101);
    assert_eq!(big["route"], "chat");
    assert!(big["bytes_out"].as_u64() >= Some(total as u64), "{big}");
    assert!(big["duration_ms"].as_f64() > Some(0.0), "{big}");
    // Nothing of this counted against the target.
    let status = gw.admin_get("/status").json();
    assert_eq!(status["clusters"]["chat"]["targets"][0]["ejections"], 0, "{status}");
}

#[test]
fn an_upgrade_to_a_route_without_websocket_gets_400_and_no_half_upgrade() {
    let up = WsUpstream::start();
    let gw = Gateway::start(&routes(&up, ""));
    let req = "GET /plain HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
               Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let r = raw_request(&gw.addr, req.as_bytes()).expect("an answer");
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"], "this route does not accept WebSocket upgrades");
    assert!(r.json()["request_id"].is_string(), "{}", r.body);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(connect(&gw.addr, "/plain", &[]).is_err());
    assert_eq!(
        up.seen.sessions.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing reached the upstream"
    );
}

#[test]
fn the_upgrade_runs_auth_and_holds_its_concurrency_slot_until_close() {
    let up = WsUpstream::start();
    let extra = r#"
[routes.chat.plugins.key_auth]
[routes.chat.plugins.concurrency_limit]
max = 1
queue = 0
[consumers.alice]
keys = ["alice-key"]
"#;
    let gw = Gateway::start(&routes(&up, extra));
    match connect(&gw.addr, "/ws", &[]) {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("no key must not upgrade: {:?}", other.map(|_| ())),
    }
    let key = [("x-api-key", "alice-key")];
    let mut first = connect(&gw.addr, "/ws", &key).expect("with a key");
    echo(&mut first, "one");
    // The open session holds the only slot.
    match connect(&gw.addr, "/ws", &key) {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        other => panic!("a second session must wait for the slot: {:?}", other.map(|_| ())),
    }
    first.close(None).unwrap();
    while first.read().is_ok() {}
    wait_until(Duration::from_secs(5), "the slot to come back", || {
        connect(&gw.addr, "/ws", &key).is_ok_and(|mut ws| {
            echo(&mut ws, "two");
            ws.close(None).ok();
            true
        })
    });
    assert_eq!(up.seen.sessions.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[test]
fn one_way_traffic_keeps_a_session_and_silence_closes_it_with_1001() {
    let up = WsUpstream::start();
    let gw = Gateway::start(&routes(&up, "websocket_idle_timeout = \"1s\""));
    let mut ws = connect(&gw.addr, "/ws", &[]).unwrap();
    // 2.4 s of frames from the server only, each 300 ms apart: past the idle timeout in
    // total, never idle. A clock per direction would cut this.
    ws.send(Message::text("push 8 300")).unwrap();
    for i in 0..8 {
        let m = ws.read().unwrap_or_else(|e| panic!("push {i} cut: {e}"));
        assert_eq!(m.into_text().unwrap().as_str(), format!("push-{i}"));
    }
    let quiet = Instant::now();
    assert_eq!(close_code(&mut ws), Some(1001), "the idle session ends with going-away");
    let after = quiet.elapsed();
    assert!(
        after >= Duration::from_millis(900),
        "closed at the idle timeout, not before: {after:?}"
    );
    wait_until(Duration::from_secs(5), "the upstream side to close too", || up.open() == 0);
}

#[test]
fn two_hundred_sessions_at_once() {
    let up = WsUpstream::start();
    let gw = Gateway::start(&routes(&up, ""));
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(201));
    let clients: Vec<_> = (0..200)
        .map(|i| {
            let addr = gw.addr.clone();
            let b = barrier.clone();
            std::thread::spawn(move || {
                let mut ws = connect(&addr, "/ws", &[]).unwrap_or_else(|e| panic!("session {i}: {e}"));
                echo(&mut ws, &format!("hello {i}"));
                b.wait();
                b.wait();
                echo(&mut ws, &format!("bye {i}"));
                ws.close(None).ok();
                while ws.read().is_ok() {}
            })
        })
        .collect();
    barrier.wait();
    assert_eq!(gw.metric("gatehouse_websocket_sessions_open{route=\"chat\"}"), 200.0);
    assert_eq!(up.open(), 200);
    barrier.wait();
    for c in clients {
        c.join().expect("a session failed");
    }
    wait_until(Duration::from_secs(10), "every session closed", || {
        gw.metric("gatehouse_websocket_sessions_open{route=\"chat\"}") == 0.0
    });
}

#[test]
fn sessions_survive_a_reload_and_end_with_1001_when_an_upgrades_grace_runs_out() {
    let up = WsUpstream::start();
    let body = routes(&up, "").replace(
        "[upstreams.chat]",
        "[routes.extra]\npaths = [\"=/v\"]\n[routes.extra.plugins.respond]\nbody = \"VERSION\"\n[upstreams.chat]",
    );
    let mut gw = Gateway::start_raw(
        &format!(
            "{}\n{}",
            common::gateway::HEADER.replace("grace_period = \"1s\"", "grace_period = \"3s\""),
            body.replace("VERSION", "old")
        ),
        &[],
    );
    let mut sessions: Vec<_> = (0..3).map(|_| connect(&gw.addr, "/ws", &[]).unwrap()).collect();
    gw.write_config_raw(&format!(
        "{}\n{}",
        common::gateway::HEADER.replace("grace_period = \"1s\"", "grace_period = \"3s\""),
        body.replace("VERSION", "reloaded")
    ));
    assert_eq!(gw.reload().status, 200);
    assert_eq!(gw.get("/v").body, "reloaded");
    for (i, ws) in sessions.iter_mut().enumerate() {
        echo(ws, &format!("after reload {i}"));
    }

    let old = gw.pid();
    let (ok, out) = gw.upgrade();
    assert!(ok, "upgrade failed: {out}");
    let new = gw.pid_file_pid();
    let _kill = common::gateway::KillOnDrop(new);
    assert_ne!(new, old);
    let handed_over = Instant::now();
    // The old process keeps its sessions during the grace period ...
    for (i, ws) in sessions.iter_mut().enumerate() {
        echo(ws, &format!("during grace {i}"));
    }
    // ... while new sessions go to the new process, with no refused connection.
    for i in 0..5 {
        let mut ws = connect(&gw.addr, "/ws", &[]).unwrap_or_else(|e| panic!("new session {i}: {e}"));
        echo(&mut ws, "new");
        ws.close(None).ok();
    }
    for ws in sessions.iter_mut() {
        assert_eq!(close_code(ws), Some(1001));
    }
    let took = handed_over.elapsed();
    assert!(took >= Duration::from_millis(1500), "sessions ran into the grace period: {took:?}");
    assert!(gw.wait_exit(Duration::from_secs(20)), "the old process exits");
    let mut s = std::net::TcpStream::connect(&gw.addr).unwrap();
    s.write_all(b"GET /v HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s).unwrap().body, "reloaded");
}

#[test]
fn wss_through_a_tls_listener_with_the_same_idle_clock() {
    let up = WsUpstream::start();
    let dir = common::gateway::test_dir();
    let ca = common::tls::Ca::new("ws CA");
    let leaf = ca.leaf(&dir, "chat", &["chat.test"], -1, 30);
    let https = format!("127.0.0.1:{}", common::free_port());
    let header = common::gateway::HEADER.replace(
        "[admin]",
        &format!(
            "[listeners.https]\naddr = \"{https}\"\ntls = true\n[tls.certificates.chat]\ncert = \"file:{}\"\nkey = \"file:{}\"\ndefault = true\n\n[admin]",
            leaf.cert.display(),
            leaf.key.display()
        ),
    );
    let gw = Gateway::start_raw(&format!("{header}\n{}", routes(&up, "websocket_idle_timeout = \"1s\"")), &[]);
    let tls = common::tls::connect(&https, &common::tls::Hello::sni("chat.test")).expect("TLS handshake");
    let (mut ws, resp) = tungstenite::client("wss://chat.test/ws", tls.stream).expect("upgrade over TLS");
    assert_eq!(resp.status(), 101);
    echo(&mut ws, "over tls");
    ws.send(Message::text("push 4 400")).unwrap();
    for i in 0..4 {
        assert_eq!(ws.read().unwrap().into_text().unwrap().as_str(), format!("push-{i}"));
    }
    let code = loop {
        match ws.read() {
            Ok(Message::Close(f)) => break f.map(|f| u16::from(f.code)),
            Ok(_) => continue,
            Err(_) => break None,
        }
    };
    assert_eq!(code, Some(1001), "idle over TLS ends with going-away");
    wait_until(Duration::from_secs(5), "the session's line, with its TLS fields", || {
        gw.access_log()
            .iter()
            .any(|l| l["websocket"] == true && l["tls_version"].is_string())
    });
}

#[test]
fn sigterm_lets_sessions_run_through_the_grace_period_then_ends_them_with_1001() {
    let up = WsUpstream::start();
    let header = common::gateway::HEADER
        .replace("grace_period = \"1s\"", "grace_period = \"2s\"")
        .replace("graceful_shutdown_timeout = \"1s\"", "graceful_shutdown_timeout = \"2s\"");
    let mut gw = Gateway::start_raw(&format!("{header}\n{}", routes(&up, "")), &[]);
    let mut sessions: Vec<_> = (0..2).map(|_| connect(&gw.addr, "/ws", &[]).unwrap()).collect();
    gw.signal(libc::SIGTERM);
    let t = Instant::now();
    for (i, ws) in sessions.iter_mut().enumerate() {
        echo(ws, &format!("draining {i}"));
    }
    for ws in sessions.iter_mut() {
        assert_eq!(close_code(ws), Some(1001));
    }
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "the sessions ran into the grace period: {took:?}"
    );
    assert!(gw.wait_exit(Duration::from_secs(20)), "the process exits after its grace period");
    wait_until(Duration::from_secs(5), "the upstream sides to close", || up.open() == 0);
}
