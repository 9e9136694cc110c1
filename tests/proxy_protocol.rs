//! The PROXY protocol through real sockets: v1 and v2 headers (v2 built with the `ppp`
//! crate's builder) from a trusted load balancer (127.0.0.2) make the carried address the
//! client IP, for ip_restriction, X-Forwarded-For and the log, on plaintext and before TLS.
//! From an untrusted peer (127.0.0.1), without a header, or with a broken one, the
//! connection is closed before any HTTP.

mod common;
use common::client::read_response;
use common::tls::{connect_over, Ca, Hello};
use common::{wait_until, Gateway, Upstream};
use ppp::v2::{Builder, Command, Protocol, Version};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

struct Setup {
    gw: Gateway,
    lb: String,
    lb_tls: String,
}

fn start(up: &Upstream) -> Setup {
    let dir = common::gateway::test_dir();
    let ca = Ca::new("ca");
    let leaf = ca.leaf(&dir, "a", &["a.test"], -1, 30);
    let lb = format!("127.0.0.1:{}", common::free_port());
    let lb_tls = format!("127.0.0.1:{}", common::free_port());
    let body = format!(
        r#"
[server]
threads = 2
pid_file = "{{dir}}/gatehouse.pid"
upgrade_sock = "{{dir}}/upgrade.sock"
header_timeout = "1s"
trusted_proxies = ["127.0.0.2"]
[listeners.public]
addr = "{{listen}}"
[listeners.lb]
addr = "{lb}"
proxy_protocol = true
[listeners.lb_tls]
addr = "{lb_tls}"
tls = true
proxy_protocol = true
[admin]
addr = "{{admin}}"
token = "test-admin-token"
[log]
access = "{{dir}}/access.log"
level = "warn"
[tls.certificates.a]
cert = "file:{cert}"
key = "file:{key}"
default = true
[upstreams.u]
targets = ["{up}"]
[routes.r]
paths = ["/"]
upstream = "u"
[routes.r.plugins.ip_restriction]
allow = ["203.0.113.0/24", "2001:db8::/32"]
"#,
        up = up.addr,
        cert = leaf.cert.display(),
        key = leaf.key.display(),
    );
    Setup {
        gw: Gateway::start_raw(&body, &[]),
        lb,
        lb_tls,
    }
}

/// A connection from `source` (any 127/8 address is this machine's).
fn from(source: &str, to: &str) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&format!("{source}:0").parse::<SocketAddr>().unwrap().into()).unwrap();
    s.connect(&to.parse::<SocketAddr>().unwrap().into()).unwrap();
    let t: TcpStream = s.into();
    t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    t
}

fn v1(client: &str, port: &str) -> Vec<u8> {
    let family = if client.contains(':') { "TCP6" } else { "TCP4" };
    let dst = if client.contains(':') { "::1" } else { "127.0.0.1" };
    format!("PROXY {family} {client} {dst} 40001 {port}\r\n").into_bytes()
}

fn v2(client: &str, command: Command) -> Vec<u8> {
    let src: SocketAddr = client.parse().unwrap();
    let dst: SocketAddr = if src.is_ipv6() { "[::1]:443" } else { "127.0.0.1:443" }.parse().unwrap();
    Builder::with_addresses(Version::Two | command, Protocol::Stream, (src, dst))
        .build()
        .unwrap()
}

#[derive(Debug, PartialEq)]
enum Got {
    Status(u16),
    /// Closed (or reset) without an answer.
    Closed,
    /// Neither an answer nor a close within the read timeout.
    Hung,
}

/// The header and the request in one write: the bytes after the header are the client's.
fn send(source: &str, to: &str, header: &[u8]) -> Got {
    let mut t = from(source, to);
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(b"GET /x HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n");
    if t.write_all(&bytes).is_err() {
        return Got::Closed;
    }
    outcome(t)
}

fn outcome(mut t: TcpStream) -> Got {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match t.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return Got::Hung,
            Err(_) => break,
        }
    }
    match read_response(&mut buf.as_slice()) {
        Ok(r) => Got::Status(r.status),
        Err(_) if buf.is_empty() => Got::Closed,
        Err(e) => panic!("half an answer ({e}): {}", String::from_utf8_lossy(&buf)),
    }
}

#[test]
fn a_trusted_balancers_header_sets_the_client_ip_for_every_decision() {
    let up = Upstream::start("u");
    let s = start(&up);
    let port = s.lb.rsplit(':').next().unwrap().to_string();
    assert_eq!(send("127.0.0.2", &s.lb, &v1("203.0.113.7", &port)), Got::Status(200));
    assert_eq!(up.last().header("x-forwarded-for"), Some("203.0.113.7"));
    assert_eq!(
        send("127.0.0.2", &s.lb, &v2("[2001:db8::9]:5000", Command::Proxy)),
        Got::Status(200)
    );
    assert_eq!(up.last().header("x-forwarded-for"), Some("2001:db8::9"));
    // ip_restriction sees the carried address, not the balancer's.
    assert_eq!(send("127.0.0.2", &s.lb, &v1("198.51.100.1", &port)), Got::Status(403));
    assert_eq!(send("127.0.0.2", &s.lb, &v2("198.51.100.1:5000", Command::Proxy)), Got::Status(403));
    // LOCAL (the balancer's own health check) keeps the peer address: 127.0.0.2 is not allowed.
    assert_eq!(send("127.0.0.2", &s.lb, &v2("203.0.113.7:5000", Command::Local)), Got::Status(403));
    assert_eq!(up.count(), 2);
    wait_until(Duration::from_secs(5), "the client IP in the access log", || {
        s.gw.access_log().iter().any(|l| l["client_ip"] == "203.0.113.7")
    });

    // Before TLS: the header, then the handshake, on the same connection.
    let mut t = from("127.0.0.2", &s.lb_tls);
    t.write_all(&v2("203.0.113.8:5000", Command::Proxy)).unwrap();
    let mut tls = connect_over(t, &Hello::sni("a.test")).unwrap();
    tls.stream
        .write_all(b"GET /tls HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut tls.stream).unwrap().status, 200);
    assert_eq!(up.last().header("x-forwarded-for"), Some("203.0.113.8"));
    assert_eq!(up.last().header("x-forwarded-proto"), Some("https"));
}

#[test]
fn untrusted_peers_missing_or_broken_headers_are_closed_before_http() {
    let up = Upstream::start("u");
    let s = start(&up);
    let port = s.lb.rsplit(':').next().unwrap().to_string();
    // A valid header from a peer that is not a trusted balancer: it could name anyone.
    assert_eq!(send("127.0.0.1", &s.lb, &v1("203.0.113.7", &port)), Got::Closed);
    assert_eq!(send("127.0.0.1", &s.lb, &v2("203.0.113.7:5000", Command::Proxy)), Got::Closed);
    // From the balancer: no header, a broken one, one too long, and silence.
    assert_eq!(send("127.0.0.2", &s.lb, b""), Got::Closed);
    assert_eq!(send("127.0.0.2", &s.lb, b"PROXY TCP4 203.0.113.7 nonsense\r\n"), Got::Closed);
    assert_eq!(
        send("127.0.0.2", &s.lb, format!("PROXY TCP4 {}\r\n", "1".repeat(200)).as_bytes()),
        Got::Closed
    );
    let mut big = v2("203.0.113.7:5000", Command::Proxy);
    big[14..16].copy_from_slice(&4000u16.to_be_bytes());
    assert_eq!(send("127.0.0.2", &s.lb, &big), Got::Closed);
    assert_eq!(
        outcome(from("127.0.0.2", &s.lb)),
        Got::Closed,
        "a silent balancer is cut at header_timeout"
    );
    assert_eq!(up.count(), 0, "nothing reached the upstream");
    assert!(s.gw.metric(r#"gatehouse_rejections_total{reason="proxy_protocol_untrusted",route="_none"}"#) >= 2.0);
    // The plaintext listener without proxy_protocol still serves ordinary clients.
    assert_eq!(
        common::request(&s.gw.addr, "GET", "/x", &[("x-forwarded-for", "203.0.113.7")], None).status,
        403
    );
}

#[test]
fn proxy_protocol_without_trusted_proxies_is_refused_at_load() {
    let dir = common::gateway::test_dir();
    let path = dir.join("p.toml");
    std::fs::write(
        &path,
        "[listeners.lb]\naddr = \"127.0.0.1:1\"\nproxy_protocol = true\n[routes.r]\n[routes.r.plugins.respond]\nbody = \"x\"\n",
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
    assert!(
        err.contains("p.toml: listeners.lb.proxy_protocol") && err.contains("trusted_proxies"),
        "{err}"
    );
}
