//! ACME against a real CA: Debian's `pebble` on 127.0.0.1, with `pebble-challtestsrv` as its
//! DNS server only (every name resolves to 127.0.0.1), so pebble's validation authority
//! fetches the HTTP-01 token from the gateway's own plaintext listener. Issue, serve,
//! renew a short-lived certificate under load, and restart from storage with the CA gone.

mod common;
use common::tls::{connect, Ca, Hello};
use common::{wait_until, Gateway, Upstream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Pebble {
    children: Vec<Child>,
    directory: String,
    ca_file: PathBuf,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Pebble validating HTTP-01 on `http_port`, issuing certificates valid `validity` seconds.
fn pebble(dir: &Path, http_port: u16, validity: u64) -> Pebble {
    let ca = Ca::new("pebble directory CA");
    let leaf = ca.leaf(dir, "pebble-directory", &["localhost"], -1, 30);
    let ca_file = ca.write(dir, "pebble-directory-ca.pem");
    let (listen, management, dns, tls) = (common::free_port(), common::free_port(), common::free_port(), common::free_port());
    let config = serde_json::json!({ "pebble": {
        "listenAddress": format!("127.0.0.1:{listen}"),
        "managementListenAddress": format!("127.0.0.1:{management}"),
        "certificate": leaf.cert,
        "privateKey": leaf.key,
        "httpPort": http_port,
        "tlsPort": tls,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
        "certificateValidityPeriod": validity,
    }});
    let config_file = dir.join("pebble.json");
    std::fs::write(&config_file, config.to_string()).unwrap();
    let log = |name: &str| Stdio::from(std::fs::File::create(dir.join(name)).unwrap());
    let dns_server = Command::new("pebble-challtestsrv")
        .args([
            "-dns01",
            &format!("127.0.0.1:{dns}"),
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
        ])
        .args(["-management", &format!("127.0.0.1:{}", common::free_port()), "-defaultIPv6", ""])
        .stdout(log("challtestsrv.log"))
        .stderr(log("challtestsrv.err"))
        .spawn()
        .expect("pebble-challtestsrv (scripts/setup installs pebble)");
    let ca_server = Command::new("pebble")
        .args(["-config", &config_file.to_string_lossy(), "-dnsserver", &format!("127.0.0.1:{dns}")])
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .env("PEBBLE_AUTHZREUSE", "0")
        .stdout(log("pebble.log"))
        .stderr(log("pebble.err"))
        .spawn()
        .expect("pebble (scripts/setup installs it)");
    let p = Pebble {
        children: vec![dns_server, ca_server],
        directory: format!("https://localhost:{listen}/dir"),
        ca_file,
    };
    wait_until(Duration::from_secs(20), "pebble listening", || {
        std::net::TcpStream::connect(("127.0.0.1", listen)).is_ok() && std::net::UdpSocket::bind(("127.0.0.1", dns)).is_err()
    });
    p
}

struct Setup {
    gw: Gateway,
    https: String,
    storage: PathBuf,
}

fn gateway(up: &Upstream, web: u16, p: &Pebble, storage: &Path, renew_before: &str) -> Setup {
    let https = format!("127.0.0.1:{}", common::free_port());
    let body = format!(
        r#"
[server]
threads = 2
pid_file = "{{dir}}/gatehouse.pid"
upgrade_sock = "{{dir}}/upgrade.sock"
grace_period = "1s"
graceful_shutdown_timeout = "1s"
[listeners.public]
addr = "{{listen}}"
[listeners.web]
addr = "127.0.0.1:{web}"
redirect_https = "https://{{host}}{{uri}}"
[listeners.https]
addr = "{https}"
tls = true
[admin]
addr = "{{admin}}"
token = "test-admin-token"
[log]
access = "{{dir}}/access.log"
level = "info"
[tls.acme]
directory = "{directory}"
email = "ops@acme.test"
hosts = ["acme.test", "www.acme.test"]
challenge = "http-01"
storage = "{storage}"
renew_before = "{renew_before}"
directory_ca = "file:{ca}"
[upstreams.u]
targets = ["{up}"]
[routes.r]
paths = ["/"]
upstream = "u"
"#,
        directory = p.directory,
        storage = storage.display(),
        ca = p.ca_file.display(),
        up = up.addr,
    );
    Setup {
        gw: Gateway::start_raw(&body, &[]),
        https,
        storage: storage.to_path_buf(),
    }
}

/// The serial of the certificate served for `sni` (verification off: pebble's root is
/// made fresh each run), or why the handshake failed.
fn served(s: &Setup, sni: &str) -> Result<String, String> {
    connect(&s.https, &Hello::sni(sni)).map(|t| t.serial)
}

fn stored_serial(s: &Setup) -> String {
    let pem = std::fs::read(s.storage.join("cert.pem")).unwrap();
    let c = openssl::x509::X509::from_pem(&pem).unwrap();
    c.serial_number().to_bn().unwrap().to_hex_str().unwrap().to_string()
}

fn acme_orders(s: &Setup, result: &str) -> f64 {
    s.gw.metric(&format!(r#"gatehouse_acme_orders_total{{result="{result}"}}"#))
}

#[test]
fn issued_by_pebble_served_and_loaded_from_storage_after_a_restart() {
    let up = Upstream::start("u");
    let dir = common::gateway::test_dir();
    let web = common::free_port();
    let ca = pebble(&dir, web, 90 * 86_400);
    let storage = dir.join("acme");
    let s = gateway(&up, web, &ca, &storage, "30d");
    wait_until(Duration::from_secs(60), "the ACME certificate", || served(&s, "acme.test").is_ok());
    let serial = served(&s, "acme.test").unwrap();
    assert_eq!(serial, stored_serial(&s), "the served certificate is the stored one");
    assert_eq!(served(&s, "www.acme.test").unwrap(), serial);
    assert!(served(&s, "other.test").is_err(), "no default: an unknown name fails the handshake");
    assert_eq!(acme_orders(&s, "ok"), 1.0);
    let status = s.gw.admin_get("/status").json();
    let cert = &status["certificates"][0];
    assert_eq!(
        (cert["source"].as_str(), cert["serial"].as_str()),
        (Some("acme"), Some(serial.as_str()))
    );
    assert!(s.gw.metric(r#"gatehouse_tls_cert_expiry_seconds{cert="acme"}"#) > 0.0);
    let log = std::fs::read_to_string(s.gw.dir.join("stderr.log")).unwrap();
    assert!(log.contains("acme: certificate for acme.test,www.acme.test issued"), "{log}");
    // The key is the gateway's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(storage.join("key.pem")).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "key.pem is private: {mode:o}");
    drop(s);

    // A restart with the CA gone: the stored certificate is served, no order is tried.
    drop(ca);
    let s = gateway(&up, web, &pebble_gone(&dir), &storage, "30d");
    assert_eq!(served(&s, "acme.test").unwrap(), serial);
    assert_eq!((acme_orders(&s, "ok"), acme_orders(&s, "error")), (0.0, 0.0));
}

/// The same directory settings, nothing listening: proves the restart did not need the CA.
fn pebble_gone(dir: &Path) -> Pebble {
    Pebble {
        children: Vec::new(),
        directory: "https://localhost:1/dir".into(),
        ca_file: dir.join("pebble-directory-ca.pem"),
    }
}

#[test]
fn a_short_lived_certificate_is_renewed_under_load_without_a_failed_handshake() {
    let up = Upstream::start("u");
    let dir = common::gateway::test_dir();
    let web = common::free_port();
    // Valid 30 s, renewed 24 s before the end: a renewal about 6 s after each issue.
    let ca = pebble(&dir, web, 30);
    let s = gateway(&up, web, &ca, &dir.join("acme"), "24s");
    wait_until(Duration::from_secs(60), "the first certificate", || served(&s, "acme.test").is_ok());
    let first = served(&s, "acme.test").unwrap();
    let mut handshakes = 0;
    wait_until(Duration::from_secs(60), "a renewed certificate", || {
        handshakes += 1;
        let now = served(&s, "acme.test").expect("every handshake during the renewal succeeds");
        now != first
    });
    assert!(handshakes > 1, "the load ran across the renewal");
    assert!(acme_orders(&s, "ok") >= 2.0);
    assert_eq!(acme_orders(&s, "error"), 0.0);
    // HTTPS requests on the renewed certificate reach the upstream.
    let (_, r) = common::tls::get(&s.https, &Hello::sni("acme.test"), "/renewed", &[]).unwrap();
    assert_eq!(r.status, 200);
    drop(ca);
}

#[test]
fn acme_settings_are_checked_at_load() {
    let dir = common::gateway::test_dir();
    let base = "[listeners.web]\naddr = \"127.0.0.1:1\"\n[listeners.s]\naddr = \"127.0.0.1:2\"\ntls = true\n";
    let acme = "[tls.acme]\ndirectory = \"https://ca.test/dir\"\nstorage = \"/var/lib/gh\"\n";
    for (key, cfg) in [
        ("tls.acme.hosts", format!("{base}{acme}hosts = []\n")),
        ("tls.acme.hosts", format!("{base}{acme}hosts = [\"*.example.org\"]\n")),
        (
            "tls.acme.challenge",
            format!("{base}{acme}hosts = [\"a.test\"]\nchallenge = \"dns-01\"\n"),
        ),
        (
            "tls.acme.directory_ca",
            format!("{base}{acme}hosts = [\"a.test\"]\ndirectory_ca = \"file:/nonexistent.pem\"\n"),
        ),
        (
            "tls.acme.renew_before",
            format!("{base}{acme}hosts = [\"a.test\"]\nrenew_before = \"soon\"\n"),
        ),
        (
            "tls.acme.challenge",
            format!("[listeners.s]\naddr = \"127.0.0.1:2\"\ntls = true\n{acme}hosts = [\"a.test\"]\n"),
        ),
    ] {
        let path = dir.join("a.toml");
        std::fs::write(&path, format!("{cfg}[routes.r]\n[routes.r.plugins.respond]\nbody = \"x\"\n")).unwrap();
        let out = Command::new(Gateway::bin()).arg("-t").arg("-c").arg(&path).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{key}: {err}");
        assert!(err.contains(&format!("a.toml: {key}")), "{key}: {err}");
    }
}
