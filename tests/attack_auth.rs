//! Attacks on authentication plugins: a query string that panicked the connection, a CORS
//! policy that let any page read credentialed answers, and forward auth decisions reused
//! for another host or query.

mod common;
use common::client::raw_request;
use common::{request, Gateway, Upstream};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[test]
fn a_multibyte_character_after_a_percent_gets_an_answer_not_a_dead_connection() {
    let up = Upstream::start("u");
    let gw = Gateway::start(&format!(
        r#"
[consumers.acme]
keys = ["k/€"]
[upstreams.u]
targets = ["{}"]
[routes.k]
paths = ["/k"]
upstream = "u"
[routes.k.plugins.key_auth]
query = "apikey"
"#,
        up.addr
    ));
    for query in ["apikey=%€", "apikey=%€€", "apikey=%e2%82", "apikey=%", "apikey=%%%", "apikey=a%f"] {
        let req = format!("GET /k?{query} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let r = raw_request(&gw.addr, req.as_bytes()).unwrap_or_else(|e| panic!("{query}: no answer: {e}"));
        assert!(r.status == 401 || r.status == 400, "{query}: {} {}", r.status, r.body);
        assert!(r.json()["request_id"].is_string(), "{query}");
    }
    // A key that really is percent-encoded UTF-8 still works.
    let r = raw_request(
        &gw.addr,
        b"GET /k?apikey=k%2F%E2%82%AC HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.count(), 1);
    assert_eq!(gw.metric("gatehouse_panics_total"), 0.0, "no connection task panicked");
}

#[test]
fn a_cors_wildcard_with_credentials_is_refused_at_load() {
    let dir = common::gateway::test_dir();
    let path = dir.join("cors.toml");
    std::fs::write(
        &path,
        r#"
[listeners.public]
addr = "127.0.0.1:1"
[routes.r]
[routes.r.plugins.respond]
[routes.r.plugins.cors]
origins = ["https://app.example.com", "*"]
credentials = true
"#,
    )
    .unwrap();
    let out = std::process::Command::new(Gateway::bin())
        .arg("-t")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("routes.r.plugins.cors.origins[1]"), "names the key: {err}");
    assert!(err.contains("credentials"), "says why: {err}");
}

/// An auth service that decides on what it is told: `b.*` hosts and `deny=1` queries are
/// refused. Counts the questions.
fn decider() -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let asked = Arc::new(AtomicUsize::new(0));
    let count = asked.clone();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let (mut host, mut uri, mut client) = (String::new(), String::new(), String::new());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("x-forwarded-host:") {
                    host = v.trim().to_string();
                } else if let Some(v) = lower.strip_prefix("x-forwarded-uri:") {
                    uri = v.trim().to_string();
                } else if let Some(v) = lower.strip_prefix("x-forwarded-for:") {
                    client = v.trim().to_string();
                }
            }
            let deny = host.starts_with("b.") || uri.contains("deny=1") || client.is_empty();
            let status = if deny { "403 Forbidden" } else { "200 OK" };
            let mut conn = conn;
            let _ = write!(conn, "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (addr, asked)
}

#[test]
fn forward_auth_decisions_are_not_reused_for_another_host_or_query() {
    let up = Upstream::start("u");
    let (authz, asked) = decider();
    let gw = Gateway::start(&format!(
        r#"
[upstreams.u]
targets = ["{}"]
[routes.r]
paths = ["/"]
upstream = "u"
[routes.r.plugins.forward_auth]
url = "http://{authz}/check"
timeout = "2s"
cache_ttl = "1m"
"#,
        up.addr
    ));
    let get = |host: &str, path: &str| request(&gw.addr, "GET", path, &[("Host", host)], None).status;
    assert_eq!(get("a.example", "/x?deny=0"), 200);
    assert_eq!(get("a.example", "/x?deny=0"), 200);
    assert_eq!(asked.load(Ordering::SeqCst), 1, "the same question is answered from the cache");
    assert_eq!(get("b.example", "/x?deny=0"), 403, "another host is another question");
    assert_eq!(get("a.example", "/x?deny=1"), 403, "another query is another question");
    assert_eq!(get("a.example", "/x?deny=0&y=1"), 200);
    assert_eq!(asked.load(Ordering::SeqCst), 4);
}
