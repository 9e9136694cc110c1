//! Attacks on operations: state-changing admin calls without a token or from a cross-site
//! form, slow and numerous admin connections, revoked secrets that a reload did not see,
//! health state forgotten by a reload, values that overflow at run time, and store files
//! the run user cannot own.

mod common;
use common::client::read_response;
use common::{request, wait_until, Gateway, Upstream};
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

fn full(token: Option<&str>, server_extra: &str, body: &str) -> String {
    let token = token.map(|t| format!("token = \"{t}\"")).unwrap_or_default();
    format!(
        r#"
[server]
threads = 1
pid_file = "{{dir}}/gatehouse.pid"
upgrade_sock = "{{dir}}/upgrade.sock"
{server_extra}
[listeners.public]
addr = "{{listen}}"
[admin]
addr = "{{admin}}"
{token}
[log]
access = "off"
level = "warn"
{body}
"#
    )
}

const RESPOND: &str = "[routes.r]\n[routes.r.plugins.respond]\nbody = \"hi\"\n";

/// As curl sends it: the admin address as Host (a tokenless admin API answers only a
/// loopback Host).
fn admin(gw: &Gateway, method: &str, path: &str, headers: &[(&str, &str)]) -> common::Response {
    let mut h = headers.to_vec();
    if !h.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        h.push(("Host", &gw.admin));
    }
    request(&gw.admin, method, path, &h, if method == "POST" { Some("{}") } else { None })
}

#[test]
fn state_changing_admin_calls_need_the_token_and_json() {
    // No token configured: reads work on loopback, writes are refused.
    let gw = Gateway::start_raw(&full(None, "", RESPOND), &[]);
    assert_eq!(admin(&gw, "GET", "/status", &[]).status, 200);
    // A page whose DNS name was rebound to 127.0.0.1 sends its own name as Host.
    let rebound = admin(&gw, "GET", "/status", &[("Host", "attacker.example:9901")]);
    assert_eq!(rebound.status, 403, "{}", rebound.body);
    for path in ["/reload", "/cache/purge", "/usage/acme/reset"] {
        let r = admin(&gw, "POST", path, &[("Content-Type", "application/json")]);
        assert_eq!(r.status, 403, "{path} without a configured token: {}", r.body);
        assert!(r.json()["error"].as_str().unwrap().contains("admin.token"), "{}", r.body);
    }
    drop(gw);

    let gw = Gateway::start_raw(&full(Some("s3cret-admin"), "", RESPOND), &[]);
    let json = ("Content-Type", "application/json");
    assert_eq!(admin(&gw, "POST", "/reload", &[json]).status, 401);
    assert_eq!(
        admin(&gw, "POST", "/reload", &[json, ("Authorization", "Bearer s3cret-admi")]).status,
        401
    );
    assert_eq!(
        admin(&gw, "POST", "/reload", &[json, ("Authorization", "Bearer s3cret-admin-")]).status,
        401
    );
    let auth = ("Authorization", "Bearer s3cret-admin");
    // What a cross-site form can send.
    for ct in ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x"] {
        let r = admin(&gw, "POST", "/reload", &[auth, ("Content-Type", ct)]);
        assert_eq!(r.status, 415, "{ct}: {}", r.body);
    }
    assert_eq!(admin(&gw, "POST", "/reload", &[auth]).status, 415, "no content type");
    let r = admin(&gw, "POST", "/reload", &[auth, json]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(admin(&gw, "GET", "/healthz", &[]).status, 200, "liveness needs no token");
    assert_eq!(admin(&gw, "GET", "/status", &[]).status, 401);
}

#[test]
fn check_warns_when_the_admin_api_has_no_token() {
    let dir = common::gateway::test_dir();
    let path = dir.join("g.toml");
    std::fs::write(
        &path,
        format!("[listeners.p]\naddr = \"127.0.0.1:1\"\n[admin]\naddr = \"127.0.0.1:2\"\n{RESPOND}"),
    )
    .unwrap();
    let out = std::process::Command::new(Gateway::bin())
        .arg("-t")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning") && err.contains("admin.token"), "{err}");
}

#[test]
fn the_admin_listener_has_the_header_deadline_and_connection_cap() {
    let gw = Gateway::start_raw(&full(Some("t"), "header_timeout = \"1s\"\nmax_connections = 4", RESPOND), &[]);
    let held: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(&gw.admin).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
            assert_eq!(read_response(&mut s).unwrap().status, 200);
            s
        })
        .collect();
    let r = common::get(&gw.admin, "/healthz");
    assert_eq!(r.status, 503, "{}", r.body);
    drop(held);
    wait_until(Duration::from_secs(5), "admin slots to free up", || {
        common::get(&gw.admin, "/healthz").status == 200
    });
    let mut slow = TcpStream::connect(&gw.admin).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    slow.write_all(b"GET /status HTTP/1.1\r\nHost: a\r\n").unwrap();
    let r = read_response(&mut slow).expect("a trickling admin client is answered");
    assert_eq!(r.status, 408);
}

#[test]
fn a_reload_sees_rotated_key_files() {
    let up = Upstream::start("u");
    let dir = common::gateway::test_dir();
    let key_file = dir.join("acme.key");
    let pem_file = dir.join("jwt.pem");
    std::fs::write(&key_file, "old-key\n").unwrap();
    let fix = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    std::fs::copy(format!("{fix}/rsa-public.pem"), &pem_file).unwrap();
    let body = format!(
        r#"
[consumers.acme]
keys = ["file:{key}"]
jwt_subject = "acme"
[upstreams.u]
targets = ["{up}"]
[routes.k]
paths = ["/k"]
upstream = "u"
[routes.k.plugins.key_auth]
[routes.j]
paths = ["/j"]
upstream = "u"
[routes.j.plugins.jwt_auth]
keys = [{{ kid = "r", alg = "RS256", pem = "file:{pem}" }}]
"#,
        key = key_file.display(),
        pem = pem_file.display(),
        up = up.addr
    );
    let gw = Gateway::start(&body);
    let key = |k: &str| request(&gw.addr, "GET", "/k", &[("x-api-key", k)], None).status;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let sign = |pem: &str| {
        let k = jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(format!("{fix}/{pem}")).unwrap()).unwrap();
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        h.kid = Some("r".into());
        jsonwebtoken::encode(&h, &serde_json::json!({"sub": "acme", "exp": exp}), &k).unwrap()
    };
    let jwt = |t: &str| request(&gw.addr, "GET", "/j", &[("Authorization", &format!("Bearer {t}"))], None).status;
    let old_token = sign("rsa-private.pem");
    assert_eq!(key("old-key"), 200);
    assert_eq!(jwt(&old_token), 200);
    assert_eq!(jwt(&old_token), 200, "now in the verified-token cache");

    // Revoke by editing the files only; the config text is unchanged.
    std::fs::write(&key_file, "new-key\n").unwrap();
    std::fs::copy(format!("{fix}/rsa2-public.pem"), &pem_file).unwrap();
    let r = gw.reload();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["changed"], true, "{}", r.body);
    assert_eq!(key("old-key"), 401, "the revoked key is refused at once");
    assert_eq!(key("new-key"), 200);
    assert_eq!(jwt(&old_token), 401, "tokens of the removed key are forgotten");
    assert_eq!(jwt(&sign("rsa2-private.pem")), 200);
}

/// `u`: health-checked; `v`: a circuit breaker only (a passing health check would end an
/// ejection early).
fn health_body(checked: &[&Upstream], broken: &[&Upstream], interval: &str) -> String {
    let list = |t: &[&Upstream]| t.iter().map(|t| format!("\"{}\"", t.addr)).collect::<Vec<_>>().join(", ");
    format!(
        r#"
[upstreams.u]
targets = [{}]
retries = 0
[upstreams.u.health_check]
path = "/healthz"
interval = "{interval}"
timeout = "200ms"
healthy_after = 2
unhealthy_after = 2
[upstreams.v]
targets = [{}]
retries = 0
[upstreams.v.circuit_breaker]
consecutive_failures = 2
base_ejection = "1m"
max_ejected_percent = 100
[routes.r]
paths = ["/"]
upstream = "u"
[routes.b]
paths = ["/b"]
upstream = "v"
"#,
        list(checked),
        list(broken)
    )
}

#[test]
fn a_reload_keeps_the_health_of_targets_that_stay() {
    let (a, b, d) = (Upstream::start("a"), Upstream::start("b"), Upstream::start("d"));
    let (c, e, f) = (Upstream::start("c"), Upstream::start("e"), Upstream::start("f"));
    b.set(|x| x.health = 500);
    c.set(|x| x.status = 502);
    let gw = Gateway::start(&health_body(&[&a, &b], &[&c, &e], "100ms"));
    let gauge = |name: &str, up: &str, t: &Upstream| {
        gw.metric(&format!(
            r#"gatehouse_upstream_target_{name}{{target="{}",upstream="{up}"}}"#,
            t.addr
        ))
    };
    wait_until(Duration::from_secs(5), "b marked unhealthy", || gauge("healthy", "u", &b) == 0.0);
    wait_until(Duration::from_secs(5), "c ejected by the breaker", || {
        gw.get("/b");
        gauge("ejected", "v", &c) == 1.0
    });
    // Change both clusters (a target more each, slow checks) and reload.
    gw.write_config(&health_body(&[&a, &b, &d], &[&c, &e, &f], "1h"));
    assert_eq!(gw.reload().status, 200);
    b.reset();
    c.reset();
    for _ in 0..12 {
        assert_eq!(gw.get("/").status, 200);
        assert_eq!(gw.get("/b").status, 200);
    }
    assert_eq!(b.count(), 0, "b is still unhealthy after the reload");
    assert_eq!(c.count(), 0, "c is still ejected after the reload");
    assert!(a.count() > 0 && d.count() > 0 && e.count() > 0 && f.count() > 0);
}

#[test]
fn values_that_would_overflow_at_run_time_are_refused_at_load() {
    let dir = common::gateway::test_dir();
    let cases = [
        ("server.keepalive_timeout", "[server]\nkeepalive_timeout = \"100y\"\n"),
        ("server.header_timeout", "[server]\nheader_timeout = \"20000000000000s\"\n"),
        (
            "routes.r.plugins.rate_limit.requests",
            "[routes.r.plugins.rate_limit]\nrequests = 5000000000\nper = \"1s\"\n",
        ),
        (
            "routes.r.plugins.rate_limit.burst",
            "[routes.r.plugins.rate_limit]\nrequests = 10\nper = \"1s\"\nburst = 4294967296\n",
        ),
        (
            "routes.r.plugins.quota.requests",
            "[routes.r.plugins.quota]\nrequests = 9007199254740993\nper = \"day\"\n",
        ),
        (
            "upstreams.u.read_timeout",
            "[upstreams.u]\ntargets = [\"127.0.0.1:2\"]\nread_timeout = \"100y\"\n",
        ),
        (
            "routes.r.plugins.forward_auth.cache_ttl",
            "[routes.r.plugins.forward_auth]\nurl = \"http://127.0.0.1:3/\"\ncache_ttl = \"100y\"\n",
        ),
    ];
    for (key, extra) in cases {
        let path = dir.join("o.toml");
        let head = if extra.starts_with("[server]") {
            ""
        } else {
            "[routes.r]\n[routes.r.plugins.respond]\n"
        };
        let (server, rest) = if extra.starts_with("[server]") {
            (extra, "[routes.r]\n[routes.r.plugins.respond]\n")
        } else {
            ("", extra)
        };
        std::fs::write(&path, format!("{server}[listeners.p]\naddr = \"127.0.0.1:1\"\n{head}{rest}")).unwrap();
        let out = std::process::Command::new(Gateway::bin())
            .arg("-t")
            .arg("-c")
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{key}: {err}");
        assert!(err.contains(key), "{key}: {err}");
    }
}

#[test]
fn store_files_belong_to_the_run_user() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to drop privileges (CI runs as root)");
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let up = Upstream::start("u");
    let gw = Gateway::start_raw(
        &full(
            Some("t"),
            "user = \"nobody\"\ngroup = \"nogroup\"",
            &format!(
                "[store]\npath = \"{{dir}}/store\"\n[consumers.acme]\nkeys = [\"k\"]\n[upstreams.u]\ntargets = [\"{}\"]\n[routes.q]\npaths = [\"/\"]\nupstream = \"u\"\n[routes.q.plugins.key_auth]\n[routes.q.plugins.quota]\nrequests = 2\nper = \"day\"\n",
                up.addr
            ),
        ),
        &[],
    );
    let q = |_: usize| request(&gw.addr, "GET", "/", &[("x-api-key", "k")], None).status;
    assert_eq!((0..3).map(q).collect::<Vec<_>>(), vec![200, 200, 429]);
    let db = gw.dir.join("store/gatehouse.db");
    wait_until(Duration::from_secs(10), "the store file", || db.exists());
    let meta = std::fs::metadata(&db).unwrap();
    assert_eq!(meta.uid(), 65534, "the store file belongs to nobody, not root");
    assert_eq!(std::fs::metadata(gw.dir.join("store")).unwrap().uid(), 65534);
}
