//! TLS to upstreams through real sockets: a TLS origin (OpenSSL, in the test) that records
//! the SNI, the client certificate and each handshake. Verification on by default, a
//! private CA, the wrong CA and the wrong name refused with 502, mTLS to the origin, and
//! pooled connections reused.

mod common;
use common::tls::{Ca, Leaf};
use common::{request, wait_until, Gateway};
use openssl::ssl::{SslAcceptor, SslMethod, SslVerifyMode};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A TLS origin answering every request with `sni|client subject`.
struct Origin {
    addr: String,
    handshakes: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<String>>>,
}

fn origin(leaf: &Leaf, client_ca: Option<&Ca>) -> Origin {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
    b.set_certificate_chain_file(&leaf.cert).unwrap();
    b.set_private_key_file(&leaf.key, openssl::ssl::SslFiletype::PEM).unwrap();
    if let Some(ca) = client_ca {
        let store = b.cert_store_mut();
        for c in openssl::x509::X509::stack_from_pem(ca.pem.as_bytes()).unwrap() {
            store.add_cert(c).unwrap();
        }
        b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    }
    let acceptor = Arc::new(b.build());
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (handshakes, seen) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(Vec::new())));
    let (h, sn) = (handshakes.clone(), seen.clone());
    std::thread::spawn(move || {
        for tcp in l.incoming().flatten() {
            let (acceptor, h, sn) = (acceptor.clone(), h.clone(), sn.clone());
            std::thread::spawn(move || {
                let Ok(tls) = acceptor.accept(tcp) else { return };
                h.fetch_add(1, Ordering::SeqCst);
                let sni = tls.ssl().servername(openssl::ssl::NameType::HOST_NAME).unwrap_or("").to_string();
                let client = tls
                    .ssl()
                    .peer_certificate()
                    .and_then(|c| c.subject_name().entries().last().and_then(|e| e.data().to_string().ok()))
                    .unwrap_or_default();
                let mut r = BufReader::new(tls);
                loop {
                    let mut host = String::new();
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        if h.trim().is_empty() {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("host:") {
                            host = v.trim().to_string();
                        }
                    }
                    let body = format!("{sni}|{client}|{host}");
                    sn.lock().unwrap().push(body.clone());
                    let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                    if r.get_mut().write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    Origin { addr, handshakes, seen }
}

fn gateway(upstream: &str) -> Gateway {
    Gateway::start(&format!("{upstream}\n[routes.r]\npaths = [\"/\"]\nupstream = \"o\"\n"))
}

#[test]
fn verified_upstream_tls_with_a_private_ca_and_pooled_connections() {
    let dir = common::gateway::test_dir();
    let ca = Ca::new("internal CA");
    let site = ca.leaf(&dir, "billing", &["billing.internal"], -1, 30);
    let o = origin(&site, None);
    let ca_file = ca.write(&dir, "internal-ca.pem");
    let gw = gateway(&format!(
        "[upstreams.o]\ntargets = [\"{}\"]\ntls = true\nsni = \"billing.internal\"\nca = \"file:{}\"\n",
        o.addr,
        ca_file.display()
    ));
    for _ in 0..5 {
        let r = gw.get("/x");
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body, "billing.internal||billing.internal", "SNI and Host are the configured name");
    }
    assert_eq!(o.handshakes.load(Ordering::SeqCst), 1, "one handshake, the connection reused");
}

#[test]
fn the_wrong_ca_or_name_is_a_502_never_a_silent_fallback() {
    let dir = common::gateway::test_dir();
    let (ca, other) = (Ca::new("internal CA"), Ca::new("other CA"));
    let site = ca.leaf(&dir, "billing", &["billing.internal"], -1, 30);
    let o = origin(&site, None);
    let other_file = other.write(&dir, "other.pem");
    let ca_file = ca.write(&dir, "ca.pem");
    for (what, cfg) in [
        (
            "wrong CA",
            format!("sni = \"billing.internal\"\nca = \"file:{}\"", other_file.display()),
        ),
        ("system roots", "sni = \"billing.internal\"".to_string()),
        (
            "wrong name",
            format!("sni = \"payroll.internal\"\nca = \"file:{}\"", ca_file.display()),
        ),
    ] {
        let gw = gateway(&format!(
            "[upstreams.o]\ntargets = [\"{}\"]\ntls = true\nretries = 0\n{cfg}\n",
            o.addr
        ));
        let r = gw.get("/x");
        assert_eq!(r.status, 502, "{what}: {}", r.body);
        let id = r.header("x-request-id").unwrap().to_string();
        let mut line = serde_json::Value::Null;
        wait_until(Duration::from_secs(5), "the access log line", || {
            line = gw
                .access_log()
                .into_iter()
                .find(|l| l["request_id"] == id.as_str())
                .unwrap_or_default();
            !line.is_null()
        });
        assert_eq!(line["error"], "upstream certificate", "{what}: {line}");
    }
    assert!(o.seen.lock().unwrap().is_empty(), "no request went over an unverified connection");
    // Verification off must be written out, and then works.
    let gw = gateway(&format!("[upstreams.o]\ntargets = [\"{}\"]\ntls = true\nverify = false\n", o.addr));
    assert_eq!(gw.get("/x").status, 200);
}

#[test]
fn a_client_certificate_is_presented_to_the_upstream() {
    let dir = common::gateway::test_dir();
    let ca = Ca::new("internal CA");
    let site = ca.leaf(&dir, "billing", &["billing.internal"], -1, 30);
    let gw_cert = ca.client(&dir, "gw", "gatehouse-gw", "Edge");
    let o = origin(&site, Some(&ca));
    let ca_file = ca.write(&dir, "ca.pem");
    let base = format!(
        "[upstreams.o]\ntargets = [\"{}\"]\ntls = true\nsni = \"billing.internal\"\nca = \"file:{}\"\nretries = 0\n",
        o.addr,
        ca_file.display()
    );
    let gw = gateway(&base);
    assert_eq!(gw.get("/x").status, 502, "the origin requires a client certificate");
    drop(gw);
    let gw = gateway(&format!(
        "{base}client_cert = \"file:{}\"\nclient_key = \"file:{}\"\n",
        gw_cert.cert.display(),
        gw_cert.key.display()
    ));
    let r = request(&gw.addr, "GET", "/x", &[], None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, "billing.internal|gatehouse-gw|billing.internal");
}

#[test]
fn upstream_tls_settings_are_checked_at_load() {
    let dir = common::gateway::test_dir();
    for (key, cfg) in [
        ("upstreams.o.sni", "tls = true"),
        ("upstreams.o.ca", "ca = \"file:/x\""),
        ("upstreams.o.client_key", "tls = true\nsni = \"a\"\nclient_cert = \"file:/x\""),
        ("upstreams.o", "tls = true\nsni = \"a\"\nca = \"file:/nonexistent.pem\""),
    ] {
        let path = dir.join("u.toml");
        std::fs::write(
            &path,
            format!(
                "[listeners.p]\naddr = \"127.0.0.1:1\"\n[upstreams.o]\ntargets = [\"127.0.0.1:2\"]\n{cfg}\n[routes.r]\nupstream = \"o\"\n"
            ),
        )
        .unwrap();
        let out = std::process::Command::new(Gateway::bin())
            .arg("-t")
            .arg("-c")
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{key}: {err}");
        assert!(err.contains(&format!("u.toml: {key}")), "{key}: {err}");
    }
}

/// nghttpd (nghttp2's server) on 127.0.0.1: it speaks HTTP/2 only, so a 200 through the
/// gateway means the gateway spoke h2 to it.
struct Nghttpd(std::process::Child, String);

impl Drop for Nghttpd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nghttpd(dir: &std::path::Path, tls: Option<&Leaf>) -> Nghttpd {
    let docs = dir.join("htdocs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(docs.join("hello.txt"), "over h2").unwrap();
    let port = common::free_port().to_string();
    let mut cmd = std::process::Command::new("nghttpd");
    cmd.args(["-a", "127.0.0.1", "-d"]).arg(&docs);
    match tls {
        None => cmd.args(["--no-tls", &port]),
        Some(leaf) => cmd.arg(&port).arg(&leaf.key).arg(&leaf.cert),
    };
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nghttpd (scripts/setup installs nghttp2-server)");
    let addr = format!("127.0.0.1:{port}");
    wait_until(Duration::from_secs(10), "nghttpd listening", || {
        std::net::TcpStream::connect(&addr).is_ok()
    });
    Nghttpd(child, addr)
}

#[test]
fn http2_upstreams_speak_h2_by_alpn_with_tls_and_by_prior_knowledge_without() {
    let dir = common::gateway::test_dir();
    let ca = Ca::new("internal CA");
    let site = ca.leaf(&dir, "grpc", &["grpc.internal"], -1, 30);
    let ca_file = ca.write(&dir, "ca.pem");
    let tls_server = nghttpd(&dir, Some(&site));
    let plain_server = nghttpd(&dir, None);
    let tls = format!(
        "tls = true\nsni = \"grpc.internal\"\nca = \"file:{}\"\nretries = 0\n",
        ca_file.display()
    );
    for (what, server, settings) in [("ALPN h2", &tls_server, tls.as_str()), ("h2c", &plain_server, "retries = 0\n")] {
        // HTTP/1.1 to an h2-only server fails: the control that shows the 200 below is h2.
        let gw = gateway(&format!("[upstreams.o]\ntargets = [\"{}\"]\n{settings}", server.1));
        assert_eq!(gw.get("/hello.txt").status, 502, "{what}: HTTP/1.1 to nghttpd");
        drop(gw);
        let gw = gateway(&format!("[upstreams.o]\ntargets = [\"{}\"]\n{settings}http2 = true\n", server.1));
        for _ in 0..3 {
            let r = gw.get("/hello.txt");
            assert_eq!((r.status, r.body.as_str()), (200, "over h2"), "{what}");
        }
    }
}
