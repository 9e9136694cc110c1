//! A real WebSocket upstream (tungstenite) and client helpers for the gateway's tests.
//!
//! The server echoes every data message. A text message `push N MS` makes it send N
//! messages `push-i`, one every MS milliseconds, while reading nothing: traffic in one
//! direction only. It records each session's close code as it saw it (`None`: the TCP
//! connection ended without a close frame).

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

#[derive(Default)]
pub struct Seen {
    pub sessions: AtomicUsize,
    pub open: AtomicUsize,
    /// One entry per ended session.
    pub closes: Mutex<Vec<Option<u16>>>,
}

pub struct WsUpstream {
    pub addr: String,
    pub seen: Arc<Seen>,
}

impl WsUpstream {
    pub fn start() -> WsUpstream {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || serve(conn, &s));
            }
        });
        WsUpstream { addr, seen }
    }

    pub fn open(&self) -> usize {
        self.seen.open.load(Ordering::SeqCst)
    }

    pub fn closes(&self) -> Vec<Option<u16>> {
        self.seen.closes.lock().unwrap().clone()
    }
}

fn serve(conn: TcpStream, seen: &Seen) {
    let Ok(mut ws) = tungstenite::accept(conn) else { return };
    seen.sessions.fetch_add(1, Ordering::SeqCst);
    seen.open.fetch_add(1, Ordering::SeqCst);
    let code = loop {
        match ws.read() {
            Ok(Message::Text(t)) if t.starts_with("push ") => {
                let mut it = t.split(' ').skip(1).map(|v| v.parse::<u64>().unwrap_or(0));
                let (n, ms) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
                for i in 0..n {
                    std::thread::sleep(Duration::from_millis(ms));
                    if ws.send(Message::text(format!("push-{i}"))).is_err() {
                        break;
                    }
                }
            }
            Ok(Message::Text(t)) if t.starts_with("close ") => {
                let c: u16 = t[6..].parse().unwrap_or(1000);
                let frame = tungstenite::protocol::CloseFrame {
                    code: CloseCode::from(c),
                    reason: "".into(),
                };
                ws.close(Some(frame)).ok();
            }
            Ok(Message::Close(frame)) => break frame.map(|f| u16::from(f.code)),
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                if ws.send(m).is_err() {
                    break None;
                }
            }
            Ok(_) => {}
            Err(_) => break None,
        }
    };
    // Finish the closing handshake if one began.
    while ws.read().is_ok() {}
    seen.closes.lock().unwrap().push(code);
    seen.open.fetch_sub(1, Ordering::SeqCst);
}

/// Opens a session through the gateway at `addr`; `headers` go on the upgrade request.
pub fn connect(addr: &str, path: &str, headers: &[(&str, &str)]) -> Result<WebSocket<TcpStream>, tungstenite::Error> {
    let s = TcpStream::connect(addr).expect("connect to the gateway");
    s.set_read_timeout(Some(Duration::from_secs(20))).ok();
    let mut req = tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{addr}{path}"))?;
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            http::HeaderValue::from_str(v).expect("header value"),
        );
    }
    tungstenite::client(req, s).map(|(ws, _)| ws).map_err(|e| match e {
        tungstenite::HandshakeError::Failure(e) => e,
        tungstenite::HandshakeError::Interrupted(_) => tungstenite::Error::ConnectionClosed,
    })
}

/// Reads until the peer's close frame; its code (`None`: closed without one).
pub fn close_code(ws: &mut WebSocket<TcpStream>) -> Option<u16> {
    loop {
        match ws.read() {
            Ok(Message::Close(f)) => return f.map(|f| u16::from(f.code)),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

pub fn code(c: u16) -> CloseCode {
    CloseCode::from(c)
}
