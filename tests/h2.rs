//! HTTP/2 through real sockets and real clients: curl (`--http2`, `--http2-prior-knowledge`),
//! nghttp (many concurrent streams on one connection), python `h2` (the rapid-reset flood) and
//! a raw-frame CONTINUATION flood. The header guard's limits hold on h2 as on HTTP/1.

mod common;
use common::client::read_response;
use common::tls::{connect, Ca, Hello};
use common::{wait_until, Gateway, Upstream};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

struct Setup {
    gw: Gateway,
    https: String,
    h2c: String,
    ca_file: std::path::PathBuf,
    _ca: Ca,
}

/// The harness's plaintext listener (no h2c), a TLS listener (h2 by ALPN, the default) and a
/// plaintext one with h2c; small header limits so the limit tests stay small.
fn start(up: &Upstream) -> Setup {
    let dir = common::gateway::test_dir();
    let ca = Ca::new("ca");
    let leaf = ca.leaf(&dir, "a", &["a.test"], -1, 30);
    let ca_file = ca.write(&dir, "ca.pem");
    let https = format!("127.0.0.1:{}", common::free_port());
    let h2c = format!("127.0.0.1:{}", common::free_port());
    let body = format!(
        r#"
[server]
threads = 2
pid_file = "{{dir}}/gatehouse.pid"
upgrade_sock = "{{dir}}/upgrade.sock"
header_timeout = "2s"
send_timeout = "1s"
max_header_size = "4KiB"
max_headers = 40
max_uri = "1KiB"
[listeners.public]
addr = "{{listen}}"
[listeners.https]
addr = "{https}"
tls = true
[listeners.grpc]
addr = "{h2c}"
h2c = true
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
"#,
        up = up.addr,
        cert = leaf.cert.display(),
        key = leaf.key.display(),
    );
    let gw = Gateway::start_raw(&body, &[]);
    Setup {
        gw,
        https,
        h2c,
        ca_file,
        _ca: ca,
    }
}

fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl runs")
}

/// `code version` as curl reports them, for one request over TLS to a.test.
fn curl_h2(s: &Setup, path: &str, extra: &[&str]) -> String {
    let port = s.https.rsplit(':').next().unwrap();
    let resolve = format!("a.test:{port}:127.0.0.1");
    let url = format!("https://a.test:{port}{path}");
    let ca = s.ca_file.to_string_lossy().to_string();
    let mut args = vec![
        "--http2",
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        "-w",
        "%{http_code} %{http_version}",
    ];
    args.extend_from_slice(extra);
    args.push(&url);
    String::from_utf8_lossy(&curl(&args).stdout).to_string()
}

fn flood(mode: &str, addr: &str, tls: bool) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/h2_flood.py");
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(script).args([mode, addr, "--seconds", "3"]);
    if tls {
        cmd.args(["--tls", "a.test"]);
    }
    let out = cmd.output().expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("flood output ({e}): {text} {}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn h2_by_alpn_with_many_streams_on_one_connection_and_bodies() {
    let up = Upstream::start("u");
    up.set(|b| b.delay = Duration::from_millis(200));
    let s = start(&up);
    assert_eq!(curl_h2(&s, "/hello", &[]), "200 2");
    assert_eq!(up.last().header("x-forwarded-proto"), Some("https"));

    // 64 KiB of request body on one stream reaches the upstream whole.
    let body = "b".repeat(64 * 1024);
    assert_eq!(curl_h2(&s, "/upload", &["--data-binary", &body]), "200 2");
    let got = up.last();
    assert_eq!((got.method.as_str(), got.body.len()), ("POST", body.len()));

    // 50 requests at once on one connection (nghttp multiplexes every -m repeat onto it).
    up.reset();
    let out = Command::new("nghttp")
        .args(["-n", "--stat", "-m", "50", &format!("https://{}/many", s.https)])
        .output()
        .expect("nghttp runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let ok = text
        .lines()
        .filter(|l| l.contains(" 200 ") && l.trim_end().ends_with("/many"))
        .count();
    assert_eq!(ok, 50, "{text}");
    assert_eq!(up.count(), 50);
    assert!(up.max_in_flight() > 10, "streams were concurrent: {} at once", up.max_in_flight());
    wait_until(Duration::from_secs(5), "50 h2 lines in the access log", || {
        s.gw.access_log()
            .iter()
            .filter(|l| l["path"] == "/many" && l["alpn"] == "h2")
            .count()
            == 50
    });
}

#[test]
fn the_guard_limits_hold_over_h2() {
    let up = Upstream::start("u");
    let s = start(&up);
    // Header bytes over max_header_size: h2's own 431 (SETTINGS_MAX_HEADER_LIST_SIZE).
    let big = format!("x-big: {}", "x".repeat(5000));
    assert_eq!(curl_h2(&s, "/", &["-H", &big]), "431 2");
    // More fields than max_headers: the guard's 431.
    let many: Vec<String> = (0..50).map(|i| format!("x-h{i}: v")).collect();
    let mut args: Vec<&str> = Vec::new();
    for h in &many {
        args.extend_from_slice(&["-H", h]);
    }
    assert_eq!(curl_h2(&s, "/", &args), "431 2");
    // A target over max_uri: 414.
    assert_eq!(curl_h2(&s, &format!("/{}", "u".repeat(2000)), &[]), "414 2");
    // A path that climbs, and a Host that contradicts :authority: 400.
    assert_eq!(curl_h2(&s, "/a/%2e%2e/%2e%2e/etc", &["--path-as-is"]), "400 2");
    // curl turns a Host header into :authority, so the disagreeing pair comes from python h2.
    assert_eq!(flood("host-mismatch", &s.https, true)["status"], "400");
    assert_eq!(
        flood("dup-content-length", &s.https, true)["status"],
        "400",
        "two Content-Length fields"
    );
    assert!(!up.recorded().iter().any(|r| r.path == "/dup"), "nothing forwarded");
    assert_eq!(up.count(), 0, "nothing refused reached the upstream");
    assert_eq!(curl_h2(&s, "/fine", &[]), "200 2");
}

#[test]
fn h2c_prior_knowledge_only_where_enabled_and_http1_still_served_there() {
    let up = Upstream::start("u");
    let s = start(&up);
    let h2c = |addr: &str| {
        let out = curl(&[
            "--http2-prior-knowledge",
            "-w",
            "%{http_code} %{http_version}",
            &format!("http://{addr}/g"),
        ]);
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(h2c(&s.h2c), "200 2");
    assert_ne!(h2c(&s.gw.addr), "200 2", "the listener without h2c speaks HTTP/1 only");
    // HTTP/1 on the h2c listener, including a request shorter than the 24-byte preface.
    let mut t = TcpStream::connect(&s.h2c).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    t.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut t).unwrap().status, 200);
}

#[test]
fn a_silent_h2_connection_is_closed_after_the_header_deadline() {
    let up = Upstream::start("u");
    let s = start(&up);
    // TLS done, ALPN h2 agreed, then no preface: cut after header_timeout (2s), not held.
    let mut t = connect(
        &s.https,
        &Hello {
            sni: Some("a.test"),
            alpn: Some(b"\x02h2"),
            ..Default::default()
        },
    )
    .unwrap();
    t.stream.get_ref().set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(closed(&mut t.stream), "a silent h2 connection over TLS was held open");
    // The same on h2c: half a preface and silence.
    let mut c = TcpStream::connect(&s.h2c).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
    assert!(closed(&mut c), "half an h2c preface was held open");
}

/// Whether the peer closed the stream before its read timeout (bytes before the end are fine).
fn closed(s: &mut impl Read) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => return !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
        }
    }
}

#[test]
fn h2_bodies_ending_in_an_empty_data_frame_reach_an_http1_upstream_intact() {
    let up = Upstream::start("u");
    let s = start(&up);
    for (addr, tls) in [(s.https.clone(), true), (s.h2c.clone(), false)] {
        up.reset();
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/h2_flood.py"));
        cmd.args(["empty-final-data", &addr]);
        if tls {
            cmd.args(["--tls", "a.test"]);
        }
        let out = cmd.output().expect("python3 runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let r: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(r["statuses"], serde_json::json!(["200", "200", "200"]), "{addr}");
        // Each body whole, and no stray terminator read by the upstream as a request.
        let got: Vec<(String, Vec<u8>)> = up.recorded().into_iter().map(|r| (r.path, r.body)).collect();
        let want: Vec<(String, Vec<u8>)> = (0..3).map(|i| (format!("/upload/{i}"), b"hello".to_vec())).collect();
        assert_eq!(got, want, "{addr}");
    }
    // The pooled upstream connection still carries ordinary requests.
    for _ in 0..3 {
        assert_eq!(curl_h2(&s, "/after", &[]), "200 2");
    }
}

#[test]
fn a_client_that_stops_reading_is_cut_off_after_send_timeout() {
    let up = Upstream::start("u");
    // More than the socket buffers of both sides hold.
    up.set(|b| b.body = Some("x".repeat(32 * 1024 * 1024)));
    let s = start(&up);
    // HTTP/1.1: the request, then never a read.
    let mut c = std::net::TcpStream::connect(&s.gw.addr).unwrap();
    c.write_all(b"GET /big-h1 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    // h2: a stream whose window never opens (python h2; the fixture waits up to 20 s).
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/h2_flood.py"));
    cmd.args(["zero-window", &s.https, "--tls", "a.test", "--seconds", "20"]);
    let out = cmd.output().expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let r: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(r["status"], "200", "{r}");
    assert!(
        r["ended"] == "StreamReset" || r["ended"] == "closed",
        "the stalled h2 stream was ended: {r}"
    );
    // Both requests end, logged as send timeouts.
    common::wait_until(Duration::from_secs(20), "both stalled requests logged", || {
        s.gw.access_log()
            .iter()
            .filter(|l| l["path"] == "/big-h1" || l["path"] == "/big")
            .count()
            == 2
    });
    drop(c);
}

#[test]
fn rapid_reset_and_continuation_floods_end_the_attackers_connection_and_spare_others() {
    let up = Upstream::start("u");
    let s = start(&up);
    for (mode, addr, tls) in [
        ("rapid-reset", s.https.clone(), true),
        ("continuation", s.https.clone(), true),
        ("rapid-reset", s.h2c.clone(), false),
    ] {
        let attack = {
            let addr = addr.clone();
            std::thread::spawn(move || flood(mode, &addr, tls))
        };
        // Normal clients during the flood: every request served.
        for _ in 0..10 {
            assert_eq!(curl_h2(&s, "/normal", &[]), "200 2", "{mode}");
        }
        let r = attack.join().unwrap();
        // Undefended, the flood runs until the client's own 3 s timer stops it. How many frames
        // get out first is not a measure: tiny CONTINUATION frames fill the kernel's socket
        // buffers by the ten thousand before the server reads any. The GOAWAY itself can be
        // lost: the server closes while frames are still arriving, and the reset that follows
        // discards what the attacker had not read yet.
        assert_eq!(r["closed"], true, "{mode} on {addr}: the flooding connection was ended: {r}");
        assert_eq!(
            r["during"], true,
            "{mode} on {addr}: ended by the server, not the flood's timer: {r}"
        );
        assert!(r["goaway"].is_null() || r["goaway"] == 11, "{mode}: GOAWAY ENHANCE_YOUR_CALM: {r}");
    }
    assert_eq!(curl_h2(&s, "/after", &[]), "200 2");
}
