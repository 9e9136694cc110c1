//! Test harness: real upstream servers and the real gateway binary on 127.0.0.1, on
//! ephemeral ports, with readiness checks instead of sleeps.
#![allow(dead_code, unused_imports)]

pub mod auth;
pub mod client;
pub mod dns;
pub mod etcd;
pub mod gateway;
pub mod grpc;
pub mod load;
pub mod meter;
pub mod moto;
pub mod otlp;
pub mod redis;
pub mod tls;
pub mod upstream;
pub mod wasm;
pub mod ws;

pub use client::{get, request, Response};
pub use gateway::Gateway;
pub use upstream::{Behavior, Upstream};

use std::time::{Duration, Instant};

/// Polls `cond` until it holds or `timeout` passes; the readiness check tests use instead
/// of sleeping.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// A free port on 127.0.0.1: bound, then released. The gateway binds it right after;
/// the window is small and each test uses its own ports.
/// A port is never handed out twice in one test process: the kernel may give the same
/// ephemeral port to two binds in a row once the first is released, and a gateway whose
/// listener and admin got the same port refuses its config.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = l.local_addr().expect("local addr").port();
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}
