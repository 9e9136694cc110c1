//! Attacks on what a request is for: paths that mean one thing to the router and another to
//! the upstream, request targets and Host values RFC 9112 refuses. Every case goes through a
//! real socket to the real binary, with an upstream that records what reached it.

mod common;
use common::client::raw_request;
use common::{request, Gateway, Upstream};

const KEYED: &str = r#"
[consumers.acme]
keys = ["acme-key"]
"#;

/// `/private` needs a key; `/` is open; both go to the same upstream, which (like most
/// servers) would resolve `..`, `//` and `%70` itself.
fn gateway(up: &Upstream, server_extra: &str) -> Gateway {
    Gateway::start_raw(
        &format!(
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
token = "test-admin-token"
[log]
access = "{{dir}}/access.log"
level = "warn"
{KEYED}
[upstreams.u]
targets = ["{up}"]
[routes.private]
paths = ["/private"]
upstream = "u"
[routes.private.plugins.key_auth]
[routes.public]
paths = ["/"]
upstream = "u"
"#,
            up = up.addr
        ),
        &[],
    )
}

fn raw(gw: &Gateway, target: &str, extra: &str) -> common::Response {
    let req = format!("GET {target} HTTP/1.1\r\nHost: test.local\r\n{extra}Connection: close\r\n\r\n");
    raw_request(&gw.addr, req.as_bytes()).unwrap_or_else(|e| panic!("GET {target}: {e}"))
}

#[test]
fn confused_paths_cannot_walk_around_route_auth() {
    let up = Upstream::start("u");
    let gw = gateway(&up, "");
    // Each of these reached the upstream unauthenticated, which resolved it to /private/...
    for target in [
        "/public/../private/x",
        "/%70rivate/x",
        "//private/x",
        "/public/%2e%2e/private/x",
        "/./private/x",
        "/public/.%2E/private/x",
    ] {
        let r = raw(&gw, target, "");
        assert_eq!(r.status, 401, "{target} must be routed as /private/x: {}", r.body);
        assert!(r.json()["request_id"].is_string());
    }
    assert_eq!(
        up.count(),
        0,
        "nothing reached the upstream: {:?}",
        up.recorded().iter().map(|r| r.path.clone()).collect::<Vec<_>>()
    );
    // With the key, the upstream gets the normalised path, so it and the gateway agree.
    let r = raw(&gw, "/public/../private//x/%7Efoo", "x-api-key: acme-key\r\n");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.last().path, "/private/x/~foo");
    // Escapes that are not unreserved characters stay encoded (upper-case hex).
    let r = raw(&gw, "/a%3fb%2a", "");
    assert_eq!(r.status, 200);
    assert_eq!(up.last().path, "/a%3Fb%2A");
}

#[test]
fn encoded_slashes_follow_path_escaped_slash() {
    let up = Upstream::start("u");
    let gw = gateway(&up, "");
    for target in ["/private%2fx", "/private%2Fx", "/private%5cx", "/x%5C..%5Cprivate"] {
        let r = raw(&gw, target, "");
        assert_eq!(r.status, 400, "{target} (default `reject`): {}", r.body);
        assert_eq!(r.json()["status"], 400);
    }
    assert_eq!(up.count(), 0);
    drop(gw);

    let gw = gateway(&up, "path_escaped_slash = \"decode\"");
    let r = raw(&gw, "/private%2Fx", "");
    assert_eq!(r.status, 401, "decoded, %2F is a separator: {}", r.body);
    assert_eq!(up.count(), 0);
    drop(gw);

    let gw = gateway(&up, "path_escaped_slash = \"keep\"");
    let r = raw(&gw, "/private%2fx", "");
    assert_eq!(r.status, 200, "kept, `private%2Fx` is one segment that /private does not match");
    assert_eq!(up.last().path, "/private%2Fx");
}

#[test]
fn bad_escapes_nul_and_climbing_paths_get_400() {
    let up = Upstream::start("u");
    let gw = gateway(&up, "");
    for target in [
        "/%zz",
        "/a%",
        "/a%4",
        "/a%00b",
        "/..",
        "/../etc/passwd",
        "/a/../../b",
        "/public/..;/private/x",
        "/a\\b",
        "/a\"b",
    ] {
        let r = raw(&gw, target, "");
        assert_eq!(r.status, 400, "{target}: {}", r.body);
        assert!(r.json()["request_id"].is_string(), "{target}");
    }
    assert_eq!(
        up.count(),
        0,
        "{:?}",
        up.recorded().iter().map(|r| r.path.clone()).collect::<Vec<_>>()
    );
}

#[test]
fn request_targets_and_hosts_rfc_9112_refuses() {
    let up = Upstream::start("u");
    let gw = gateway(&up, "");
    let bad = [
        "GET ! HTTP/1.1\r\nHost: test.local\r\n\r\n",
        "GET * HTTP/1.1\r\nHost: test.local\r\n\r\n",
        "GET x/y HTTP/1.1\r\nHost: test.local\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h.test/\\:552\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h.test:99999\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h.test:80x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: user@h.test\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: \r\n\r\n",
        "GET http://other.test/ HTTP/1.1\r\nHost: test.local\r\n\r\n",
        "GET http:/x HTTP/1.1\r\nHost: test.local\r\n\r\n",
        "CONNECT /x HTTP/1.1\r\nHost: test.local\r\n\r\n",
        // Bytes a URI may not hold (Pingora's parser would refuse them with a bare 400).
        "GET /a?y=<> HTTP/1.1\r\nHost: test.local\r\n\r\n",
        "GET /a<b HTTP/1.1\r\nHost: test.local\r\n\r\n",
        "GET /q?x=\"y\" HTTP/1.1\r\nHost: test.local\r\n\r\n",
    ];
    for req in bad {
        let r = raw_request(&gw.addr, req.as_bytes()).unwrap_or_else(|e| panic!("{req:?}: {e}"));
        assert_eq!(r.status, 400, "{req:?}: {}", r.body);
        assert!(
            r.json()["request_id"].is_string(),
            "{req:?}: the gateway's own JSON answer: {}",
            r.body
        );
    }
    assert_eq!(
        up.count(),
        0,
        "{:?}",
        up.recorded().iter().map(|r| r.path.clone()).collect::<Vec<_>>()
    );

    // What RFC 9112 does allow still works.
    let r = raw_request(&gw.addr, b"GET http://test.local/a/../b HTTP/1.1\r\nHost: test.local\r\n\r\n").unwrap();
    assert_eq!(r.status, 200, "absolute-form matching Host: {}", r.body);
    assert_eq!(up.last().path, "/b");
    // Characters clients send unencoded in a query (JSON) that the http crate takes too.
    let r = raw_request(&gw.addr, b"GET /j?q={x}|b^c HTTP/1.1\r\nHost: test.local\r\n\r\n").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let r = raw_request(&gw.addr, b"OPTIONS * HTTP/1.1\r\nHost: test.local\r\n\r\n").unwrap();
    assert_eq!(r.status, 204, "OPTIONS *: {}", r.body);
    let r = raw_request(&gw.addr, b"CONNECT test.local:443 HTTP/1.1\r\nHost: test.local:443\r\n\r\n").unwrap();
    assert_eq!(r.status, 405, "a gateway does not tunnel: {}", r.body);
    assert!(r.json()["request_id"].is_string(), "the gateway's own JSON answer: {}", r.body);
    assert_eq!(r.header("connection"), Some("close"), "tunnel bytes may follow");
    for host in ["[::1]:8080", "127.0.0.1", "xn--bcher-kva.example", "a-b.c_d.test:1"] {
        let r = request(&gw.addr, "GET", "/ok", &[("Host", host)], None);
        assert_eq!(r.status, 200, "Host {host}: {}", r.body);
    }
}

/// The shipped example protected `/internal` by IP and forward auth, and let `/users` in
/// with an API key: `/users/../internal` went to the upstream as the user route.
#[test]
fn the_auth_example_no_longer_exposes_internal() {
    let up = Upstream::start("users");
    let dir = common::gateway::test_dir();
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/examples/auth.toml")).unwrap();
    let body = example
        .replace("0.0.0.0:8080", "{listen}")
        .replace("127.0.0.1:9901", "{admin}")
        .replace("127.0.0.1:9001", &up.addr);
    let template = format!(
        "[server]\npid_file = \"{{dir}}/gatehouse.pid\"\nupgrade_sock = \"{{dir}}/upgrade.sock\"\n{}",
        body.replace(
            "[listeners.public]",
            "[log]\naccess = \"off\"\nlevel = \"warn\"\n[listeners.public]"
        )
    );
    std::fs::remove_dir_all(&dir).ok();
    let gw = Gateway::start_raw(&template, &[("ACME_KEY", "acme-test-key"), ("GATEHOUSE_ADMIN_TOKEN", "t")]);
    let r = request(&gw.addr, "GET", "/users/../internal", &[("x-api-key", "acme-test-key")], None);
    assert_eq!(r.status, 403, "routed as /internal, refused by its IP rule: {}", r.body);
    let r = request(&gw.addr, "GET", "/users/%2e%2e/internal", &[("x-api-key", "acme-test-key")], None);
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(up.count(), 0);
    let r = request(&gw.addr, "GET", "/users/7", &[("x-api-key", "acme-test-key")], None);
    assert_eq!(r.status, 200, "{}", r.body);
}
