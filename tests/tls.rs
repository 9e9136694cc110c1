//! TLS termination through real sockets: certificates chosen by SNI (exact, wildcard,
//! default, none), protocol versions, certificate rotation under load, broken certificates
//! refused, stalled handshakes cut, the header guard over TLS, HTTPS facts upstream and in
//! the log, HSTS and the HTTPS redirect. Clients: OpenSSL (the test's own), curl and
//! `openssl s_client`.

mod common;
use common::client::read_response;
use common::tls::{connect, get, Ca, Hello};
use common::{wait_until, Gateway, Upstream};
use openssl::ssl::SslVersion;
use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

struct Setup {
    gw: Gateway,
    https: String,
    ca: Ca,
}

/// A gateway with a plaintext listener (the harness's) and a TLS one; `certs` is the
/// `[tls.certificates]` part, `https_extra` more keys for the TLS listener.
fn start(up: &Upstream, ca: Ca, certs: &str, https_extra: &str, server_extra: &str) -> Setup {
    let https = format!("127.0.0.1:{}", common::free_port());
    let body = format!(
        r#"
[server]
threads = 2
pid_file = "{{dir}}/gatehouse.pid"
upgrade_sock = "{{dir}}/upgrade.sock"
tls_handshake_timeout = "1s"
header_timeout = "2s"
max_header_size = "4KiB"
{server_extra}
[listeners.public]
addr = "{{listen}}"
[listeners.https]
addr = "{https}"
tls = true
{https_extra}
[admin]
addr = "{{admin}}"
token = "test-admin-token"
[log]
access = "{{dir}}/access.log"
level = "warn"
{certs}
[upstreams.u]
targets = ["{up}"]
[routes.r]
paths = ["/"]
upstream = "u"
[routes.secure]
paths = ["/only-https"]
scheme = "https"
sni = ["b.test", "*.wild.test"]
[routes.secure.plugins.respond]
body = "secure"
"#,
        up = up.addr
    );
    let gw = Gateway::start_raw(&body, &[]);
    Setup { gw, https, ca }
}

fn certs_toml(dir: &std::path::Path, ca: &Ca, with_default: bool) -> String {
    let a = ca.leaf(dir, "a", &["a.test", "*.wild.test"], -1, 30);
    let b = ca.leaf(dir, "b", &["b.test"], -1, 30);
    format!(
        "[tls.certificates.a]\ncert = \"file:{}\"\nkey = \"file:{}\"\n[tls.certificates.b]\ncert = \"file:{}\"\nkey = \"file:{}\"\ndefault = {with_default}\n",
        a.cert.display(),
        a.key.display(),
        b.cert.display(),
        b.key.display()
    )
}

fn with_sni(s: &Setup, sni: &str) -> Result<String, String> {
    connect(
        &s.https,
        &Hello {
            sni: Some(sni),
            ca: Some(&s.ca.pem),
            ..Default::default()
        },
    )
    .map(|t| t.cn)
}

#[test]
fn certificates_by_sni_exact_wildcard_default_and_none() {
    let up = Upstream::start("u");
    let dir = common::gateway::test_dir();
    let ca = Ca::new("gatehouse test CA");
    let certs = certs_toml(&dir, &ca, true);
    let s = start(&up, ca, &certs, "", "");
    assert_eq!(with_sni(&s, "a.test").unwrap(), "a.test");
    assert_eq!(with_sni(&s, "A.Test").unwrap(), "a.test", "SNI is compared without case");
    assert_eq!(with_sni(&s, "x.wild.test").unwrap(), "a.test", "the wildcard");
    assert_eq!(with_sni(&s, "b.test").unwrap(), "b.test");
    // Unknown names get the default, which does not verify for them.
    let none = connect(&s.https, &Hello::sni("unknown.test")).unwrap();
    assert_eq!(none.cn, "b.test");
    assert!(
        with_sni(&s, "unknown.test").is_err(),
        "the default's name does not verify as unknown.test"
    );
    assert!(with_sni(&s, "deep.x.wild.test").is_err(), "a wildcard covers one label");
    // ALPN: a client offering only protocols the listener does not speak is refused.
    let alpn = |protos: &'static [u8]| {
        connect(
            &s.https,
            &Hello {
                sni: Some("a.test"),
                alpn: Some(protos),
                ..Default::default()
            },
        )
    };
    assert!(
        alpn(b"\x06spdy/3\x03h2c").is_err(),
        "no protocol in common: no_application_protocol"
    );
    assert!(alpn(b"\x06spdy/3\x08http/1.1").is_ok(), "http/1.1 among them");
    // curl, verifying against the test CA.
    let ca_file = s.ca.write(&dir, "ca.pem");
    let port = s.https.rsplit(':').next().unwrap();
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code} %{http_version}", "--cacert"])
        .arg(&ca_file)
        .args([
            "--resolve",
            &format!("a.test:{port}:127.0.0.1"),
            &format!("https://a.test:{port}/x"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200 2", "curl over HTTP/2 by ALPN");
    drop(s);

    // Without a default, an unknown name fails the handshake.
    let ca = Ca::new("gatehouse test CA 2");
    let certs = certs_toml(&dir, &ca, false);
    let s = start(&up, ca, &certs, "", "");
    assert!(connect(&s.https, &Hello::sni("unknown.test")).is_err());
    assert!(connect(&s.https, &Hello::default()).is_err(), "no SNI, no default");
    assert_eq!(with_sni(&s, "b.test").unwrap(), "b.test");
}

#[test]
fn old_protocol_versions_are_refused_and_the_minimum_is_honoured() {
    let up = Upstream::start("u");
    let dir = common::gateway::test_dir();
    let ca = Ca::new("ca");
    let certs = certs_toml(&dir, &ca, true);
    let s = start(&up, ca, &certs, "", "");
    for v in [SslVersion::TLS1, SslVersion::TLS1_1] {
        let r = connect(
            &s.https,
            &Hello {
                sni: Some("a.test"),
                max_version: Some(v),
                ..Default::default()
            },
        );
        assert!(r.is_err(), "{v:?} must be refused");
    }
    let t = connect(
        &s.https,
        &Hello {
            sni: Some("a.test"),
            max_version: Some(SslVersion::TLS1_2),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(t.version, "TLSv1.2");
    drop(s);
    let ca = Ca::new("ca");
    let certs = certs_toml(&dir, &ca, true);
    let s = start(&up, ca, &certs, "tls_min_version = \"1.3\"", "");
    let r = connect(
        &s.https,
        &Hello {
            sni: Some("a.test"),
            max_version: Some(SslVersion::TLS1_2),
            ..Default::default()
        },
    );
    assert!(r.is_err(), "TLS 1.2 under tls_min_version = 1.3");
    let t = connect(&s.https, &Hello::sni("a.test")).unwrap();
    assert_eq!(t.version, "TLSv1.3");
    // openssl s_client agrees.
    let port = s.https.rsplit(':').next().unwrap();
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            "a.test",
            "-tls1_2",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success() || !String::from_utf8_lossy(&out.stdout).contains("BEGIN CERTIFICATE"));
}

#[test]
fn a_certificate_rotates_under_load_and_a_broken_one_changes_nothing() {
    let up = Upstream::start("u");
    let dir = common::gateway::test_dir();
    let ca = Ca::new("ca");
    let leaf = ca.leaf(&dir, "site", &["site.test"], -1, 30);
    let certs = format!(
        "[tls.certificates.site]\ncert = \"file:{}\"\nkey = \"file:{}\"\ndefault = true\n",
        leaf.cert.display(),
        leaf.key.display()
    );
    let s = start(&up, ca, &certs, "", "");
    let hello = Hello {
        sni: Some("site.test"),
        ca: Some(&s.ca.pem),
        ..Default::default()
    };
    let first = connect(&s.https, &hello).unwrap().serial;

    // Steady HTTPS load, a new connection each time.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (addr, ca_pem, stop2) = (s.https.clone(), s.ca.pem.clone(), stop.clone());
    let load = std::thread::spawn(move || {
        let (mut ok, mut failed, mut serials) = (0, Vec::new(), std::collections::BTreeSet::new());
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            let h = Hello {
                sni: Some("site.test"),
                ca: Some(&ca_pem),
                ..Default::default()
            };
            match get(&addr, &h, "/", &[]) {
                Ok((t, r)) if r.status == 200 => {
                    ok += 1;
                    serials.insert(t.serial);
                }
                Ok((_, r)) => failed.push(format!("status {}", r.status)),
                Err(e) => failed.push(e),
            }
        }
        (ok, failed, serials)
    });
    wait_until(Duration::from_secs(5), "HTTPS load running", || up.count() > 20);
    // A new certificate for the same name, written over the files, then a reload.
    let renewed = s.ca.leaf(&dir, "site", &["site.test"], -1, 60);
    let r = s.gw.reload();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["changed"], true, "same config text, new files: {}", r.body);
    let renewed_serial = {
        let mut found = String::new();
        wait_until(Duration::from_secs(5), "the new certificate served", || {
            found = connect(&s.https, &hello).map(|t| t.serial).unwrap_or_default();
            found != first
        });
        found
    };
    let served = up.count();
    wait_until(Duration::from_secs(5), "load on the new certificate", || up.count() > served + 20);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed, serials) = load.join().unwrap();
    eprintln!("rotation under load: {ok} requests, {} failed, serials {serials:?}", failed.len());
    assert!(failed.is_empty(), "{failed:?}");
    assert!(serials.contains(&first) && serials.contains(&renewed_serial));
    drop(renewed);

    // A key that does not match its certificate: the reload is refused, naming why.
    let other = s.ca.leaf(&dir, "other", &["site.test"], -1, 30);
    std::fs::copy(&other.key, dir.join("site.key")).unwrap();
    let r = s.gw.reload();
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("tls.certificates.site.key") && r.body.contains("does not match"),
        "{}",
        r.body
    );
    assert_eq!(
        connect(&s.https, &hello).unwrap().serial,
        renewed_serial,
        "the old certificate keeps serving"
    );
}

#[test]
fn broken_certificates_are_refused_at_load_with_file_key_and_reason() {
    let dir = common::gateway::test_dir();
    let ca = Ca::new("ca");
    let good = ca.leaf(&dir, "good", &["g.test"], -1, 30);
    let expired = ca.leaf(&dir, "expired", &["e.test"], -30, -1);
    let future = ca.leaf(&dir, "future", &["f.test"], 2, 30);
    let cases = [
        (
            "cert",
            format!("file:{}", expired.cert.display()),
            format!("file:{}", expired.key.display()),
            "expired",
        ),
        (
            "cert",
            format!("file:{}", future.cert.display()),
            format!("file:{}", future.key.display()),
            "not valid before",
        ),
        (
            "key",
            format!("file:{}", good.cert.display()),
            format!("file:{}", expired.key.display()),
            "does not match",
        ),
        (
            "cert",
            "file:/nonexistent/x.crt".to_string(),
            format!("file:{}", good.key.display()),
            "cannot read",
        ),
        (
            "cert",
            format!("file:{}", good.key.display()),
            format!("file:{}", good.key.display()),
            "not a PEM certificate",
        ),
    ];
    for (field, cert, key, why) in cases {
        let path = dir.join("t.toml");
        std::fs::write(
            &path,
            format!(
                "[listeners.s]\naddr = \"127.0.0.1:1\"\ntls = true\n[tls.certificates.c]\ncert = \"{cert}\"\nkey = \"{key}\"\n[routes.r]\n[routes.r.plugins.respond]\n"
            ),
        )
        .unwrap();
        let out = Command::new(Gateway::bin()).arg("-t").arg("-c").arg(&path).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{why}: {err}");
        assert!(
            err.contains(&format!("t.toml: tls.certificates.c.{field}")) && err.contains(why),
            "{why}: {err}"
        );
    }
}

#[test]
fn a_stalled_handshake_is_cut_and_costs_others_nothing() {
    let up = Upstream::start("u");
    let dir = common::gateway::test_dir();
    let ca = Ca::new("ca");
    let certs = certs_toml(&dir, &ca, true);
    let s = start(&up, ca, &certs, "", "");
    // 200 connections that never finish a handshake: half send nothing, half half a ClientHello.
    let mut stalled: Vec<TcpStream> = (0..200)
        .map(|i| {
            let mut t = TcpStream::connect(&s.https).unwrap();
            t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            if i % 2 == 1 {
                t.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03])
                    .unwrap();
            }
            t
        })
        .collect();
    let started = Instant::now();
    for _ in 0..5 {
        let t = Instant::now();
        let (_, r) = get(&s.https, &Hello::sni("a.test"), "/", &[]).unwrap();
        assert_eq!(r.status, 200);
        assert!(t.elapsed() < Duration::from_secs(1), "a normal client waited {:?}", t.elapsed());
    }
    for t in stalled.iter_mut() {
        let mut buf = [0u8; 16];
        use std::io::Read;
        match t.read(&mut buf) {
            Ok(_) => {}
            Err(e) => panic!("a stalled handshake was not cut (tls_handshake_timeout is 1s): {e}"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(8));
    let metrics = s.gw.admin_get("/metrics").body;
    let timeouts =
        s.gw.metric(r#"gatehouse_rejections_total{reason="tls_handshake_timeout",route="_none"}"#);
    assert!(
        timeouts >= 200.0,
        "{timeouts} handshake timeouts counted: {}",
        metrics.lines().filter(|l| l.contains("rejections")).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn the_header_guard_holds_over_tls() {
    let up = Upstream::start("u");
    let dir = common::gateway::test_dir();
    let ca = Ca::new("ca");
    let certs = certs_toml(&dir, &ca, true);
    let s = start(&up, ca, &certs, "", "");
    let h = Hello::sni("a.test");
    let send = |raw: &[u8]| {
        let mut t = connect(&s.https, &h).unwrap();
        t.stream.write_all(raw).unwrap();
        read_response(&mut t.stream).map(|r| r.status).unwrap_or(0)
    };
    assert_eq!(
        send(format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "x".repeat(5000)).as_bytes()),
        431
    );
    assert_eq!(
        send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        400
    );
    assert_eq!(
        send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n8\r\nhello\r\n0\r\n\r\n"),
        400
    );
    assert_eq!(send(b"GET /a/../../x HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    // Slow header: 408 after header_timeout (2s).
    let mut t = connect(&s.https, &h).unwrap();
    t.stream.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap();
    assert_eq!(read_response(&mut t.stream).unwrap().status, 408);
    // Pipelined requests over TLS are answered in order.
    let mut t = connect(&s.https, &h).unwrap();
    t.stream
        .write_all(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut t.stream).unwrap().status, 200);
    assert_eq!(read_response(&mut t.stream).unwrap().status, 200);
    assert_eq!(up.count(), 2);
}

#[test]
fn https_facts_reach_the_upstream_the_log_and_the_router() {
    let up = Upstream::start("u");
    let dir = common::gateway::test_dir();
    let ca = Ca::new("ca");
    let certs = certs_toml(&dir, &ca, true);
    let s = start(
        &up,
        ca,
        &certs,
        "hsts = \"max-age=31536000; includeSubDomains\"",
        "client_ip_header = \"forwarded\"",
    );
    let h = Hello::sni("a.test");
    let (_, r) = get(&s.https, &h, "/x", &[]).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("strict-transport-security"), Some("max-age=31536000; includeSubDomains"));
    assert_eq!(up.last().header("x-forwarded-proto"), Some("https"));
    let fwd = up.last().header("forwarded").map(str::to_string);
    assert!(
        fwd.as_deref().is_some_and(|f| f.ends_with(";proto=https")),
        "Forwarded over TLS: {fwd:?}"
    );
    // Plaintext: no HSTS, proto http.
    let r = s.gw.get("/x");
    assert_eq!(r.header("strict-transport-security"), None);
    assert_eq!(up.last().header("x-forwarded-proto"), Some("http"));
    let fwd = up.last().header("forwarded").map(str::to_string);
    assert!(
        fwd.as_deref().is_some_and(|f| f.ends_with(";proto=http")),
        "Forwarded in plaintext: {fwd:?}"
    );
    // A route for one SNI over HTTPS only.
    let b = Hello::sni("b.test");
    assert_eq!(get(&s.https, &b, "/only-https", &[]).unwrap().1.body, "secure");
    let (_, r) = get(&s.https, &h, "/only-https", &[]).unwrap();
    assert_ne!(r.body, "secure", "another SNI");
    assert_ne!(s.gw.get("/only-https").body, "secure", "plaintext");
    // Routes see the server name as certificates do: absolute names and case folded, a
    // wildcard one label deep, a literal `*` no name.
    for (sni, routed) in [
        ("B.Test.", true),
        ("x.wild.test", true),
        ("x.y.wild.test", false),
        ("*.wild.test", false),
    ] {
        let body = get(&s.https, &Hello::sni(sni), "/only-https", &[]).unwrap().1.body;
        assert_eq!(body == "secure", routed, "SNI {sni}: {body}");
    }
    // The access log has the TLS facts.
    let id = r.header("x-request-id").unwrap().to_string();
    let mut line = serde_json::Value::Null;
    wait_until(Duration::from_secs(5), "the access log line", || {
        line =
            s.gw.access_log()
                .into_iter()
                .find(|l| l["request_id"] == id.as_str())
                .unwrap_or_default();
        !line.is_null()
    });
    assert_eq!(line["tls_version"], "TLSv1.3", "{line}");
    assert_eq!(line["alpn"], "http/1.1");
    assert_eq!(line["sni"], "a.test");
    // /status lists the certificates.
    let status = s.gw.admin_get("/status").json();
    let names: Vec<&str> = status["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["a", "b"]);
    assert!(s.gw.metric(r#"gatehouse_tls_cert_expiry_seconds{cert="a"}"#) > 1.7e9);
}

#[test]
fn plaintext_requests_are_redirected_to_https() {
    let up = Upstream::start("u");
    let dir = common::gateway::test_dir();
    let ca = Ca::new("ca");
    let certs = certs_toml(&dir, &ca, true);
    let s = start(&up, ca, &certs, "", "");
    drop(s.gw);
    // The harness's plaintext listener, with a redirect.
    let https = format!("127.0.0.1:{}", common::free_port());
    let body = format!(
        r#"
[server]
pid_file = "{{dir}}/gatehouse.pid"
upgrade_sock = "{{dir}}/upgrade.sock"
[listeners.public]
addr = "{{listen}}"
redirect_https = "https://{{host}}:8443{{uri}}"
[listeners.https]
addr = "{https}"
tls = true
[admin]
addr = "{{admin}}"
[log]
access = "off"
{certs}
[routes.r]
[routes.r.plugins.respond]
body = "ok"
"#
    );
    let gw = Gateway::start_raw(&body, &[]);
    let r = common::request(&gw.addr, "GET", "/a/./b?x=1", &[("Host", "shop.test:8080")], None);
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some("https://shop.test:8443/a/b?x=1"));
    let r = common::request(&gw.addr, "GET", "/v6", &[("Host", "[::1]:8080")], None);
    assert_eq!(
        r.header("location"),
        Some("https://[::1]:8443/v6"),
        "an IPv6 literal keeps its brackets"
    );
    let r = common::client::raw_request(&gw.addr, b"GET /a HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!((r.status, r.header("location")), (400, None), "no Host, no redirect: {}", r.body);
    let (_, r) = get(&https, &Hello::sni("a.test"), "/", &[]).unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "ok"), "the TLS listener serves");
    assert_eq!(up.count(), 0);
}
