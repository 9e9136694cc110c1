//! TLS session resumption through real sockets: a second connection that offers the first
//! one's session (a TLS 1.3 ticket, a TLS 1.2 ticket) resumes it, on a plain TLS listener
//! and on one that asks for client certificates, where the resumed connection still names
//! its consumer.

mod common;
use common::client::read_response;
use common::tls::{Ca, Leaf};
use common::{Gateway, Upstream};
use openssl::ssl::{SslConnector, SslMethod, SslSession, SslSessionCacheMode, SslVerifyMode, SslVersion};
use std::io::Write;
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A client (one OpenSSL context, as a real client keeps) that remembers the sessions the
/// server hands it (TLS 1.3 tickets come after the handshake).
struct Client {
    conn: SslConnector,
    sessions: Arc<Mutex<Vec<SslSession>>>,
}

fn client(version: SslVersion, cert: Option<&Leaf>) -> Client {
    let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    b.set_min_proto_version(Some(version)).unwrap();
    b.set_max_proto_version(Some(version)).unwrap();
    if let Some(c) = cert {
        b.set_certificate_chain_file(&c.cert).unwrap();
        b.set_private_key_file(&c.key, openssl::ssl::SslFiletype::PEM).unwrap();
    }
    let sessions: Arc<Mutex<Vec<SslSession>>> = Default::default();
    let sink = sessions.clone();
    b.set_session_cache_mode(SslSessionCacheMode::CLIENT);
    b.set_new_session_callback(move |_, s| sink.lock().unwrap().push(s));
    Client { conn: b.build(), sessions }
}

impl Client {
    /// One request on a new connection, offering the last session the server gave (if
    /// `resume`): (resumed?, status).
    fn request(&self, addr: &str, resume: bool) -> (bool, u16) {
        let mut cfg = self.conn.configure().unwrap();
        cfg.set_verify_hostname(false);
        if resume {
            let s = self.sessions.lock().unwrap().last().cloned().expect("a session to offer");
            // Safety: the session came from this connector's own context.
            unsafe { cfg.set_session(&s).unwrap() };
        }
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut tls = cfg.connect("a.test", tcp).unwrap();
        tls.write_all(b"GET /resume HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
            .unwrap();
        let status = read_response(&mut tls).unwrap().status;
        let resumed = tls.ssl().session_reused();
        // A connection dropped without close_notify makes OpenSSL retire its session.
        let _ = tls.shutdown();
        (resumed, status)
    }
}

#[test]
fn sessions_resume_with_tickets_on_tls13_and_tls12_and_with_client_certificates() {
    let up = Upstream::start("u");
    let dir = common::gateway::test_dir();
    let ca = Ca::new("ca");
    let leaf = ca.leaf(&dir, "a", &["a.test"], -1, 30);
    let clients = Ca::new("clients");
    let partner = clients.client(&dir, "partner", "partner-gw", "Partner");
    let clients_file = clients.write(&dir, "clients.pem");
    let (https, mtls) = (
        format!("127.0.0.1:{}", common::free_port()),
        format!("127.0.0.1:{}", common::free_port()),
    );
    let gw = Gateway::start_raw(
        &format!(
            r#"
[server]
threads = 2
pid_file = "{{dir}}/gatehouse.pid"
upgrade_sock = "{{dir}}/upgrade.sock"
[listeners.public]
addr = "{{listen}}"
[listeners.https]
addr = "{https}"
tls = true
[listeners.mtls]
addr = "{mtls}"
tls = true
client_ca = "file:{clients}"
[admin]
addr = "{{admin}}"
token = "test-admin-token"
[log]
level = "warn"
[tls.certificates.a]
cert = "file:{cert}"
key = "file:{key}"
default = true
[upstreams.u]
targets = ["{up}"]
[consumers.partner]
client_cert_subject = "CN=partner-gw,O=Partner"
[routes.r]
paths = ["/"]
upstream = "u"
[routes.r.plugins.mtls_auth]
"#,
            clients = clients_file.display(),
            cert = leaf.cert.display(),
            key = leaf.key.display(),
            up = up.addr,
        ),
        &[],
    );
    for version in [SslVersion::TLS1_3, SslVersion::TLS1_2] {
        let c = client(version, None);
        let (resumed, status) = c.request(&https, false);
        assert!(!resumed);
        assert_eq!(status, 401, "no certificate on an mtls_auth route");
        let (resumed, _) = c.request(&https, true);
        assert!(resumed, "{version:?}: the second connection resumed the first one's session");

        let c = client(version, Some(&partner));
        let (_, status) = c.request(&mtls, false);
        assert_eq!(status, 200);
        let (resumed, status) = c.request(&mtls, true);
        assert!(resumed, "{version:?}: a session with a verified client certificate resumes");
        assert_eq!(status, 200);
        assert_eq!(
            up.last().header("x-consumer"),
            Some("partner"),
            "the resumed connection names its consumer"
        );
    }
    drop(gw);
}
