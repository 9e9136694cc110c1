//! What crosses the proxy: request ids, X-Forwarded-*, hop-by-hop headers, the headers
//! plugin, trusted proxies.

mod common;
use common::{request, Gateway, Upstream};

fn config(up: &Upstream, trusted: &str) -> String {
    format!(
        r#"
[server]
threads = 1
pid_file = "{{dir}}/gatehouse.pid"
upgrade_sock = "{{dir}}/upgrade.sock"
trusted_proxies = [{trusted}]
[listeners.public]
addr = "{{listen}}"
[admin]
addr = "{{admin}}"
[log]
access = "{{dir}}/access.log"
level = "warn"
[upstreams.u]
targets = ["{up}"]
[routes.r]
paths = ["/"]
upstream = "u"
[routes.r.plugins.headers]
request_set = {{ "x-gateway" = "gatehouse" }}
request_remove = ["x-internal"]
response_set = {{ "x-frame-options" = "DENY" }}
response_remove = ["x-powered-by"]
[plugins.headers]
response_set = {{ "x-global" = "ignored-because-route-has-its-own" }}
"#,
        up = up.addr
    )
}

#[test]
fn request_id_is_kept_when_valid_and_made_otherwise() {
    let up = Upstream::start("u");
    let gw = Gateway::start_raw(&config(&up, ""), &[]);
    let r = request(&gw.addr, "GET", "/", &[("x-request-id", "abc-123")], None);
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
    assert_eq!(up.last().header("x-request-id"), Some("abc-123"));

    let r = request(&gw.addr, "GET", "/", &[("x-request-id", "bad id with spaces")], None);
    let made = r.header("x-request-id").unwrap().to_string();
    assert_ne!(made, "bad id with spaces");
    assert_eq!(up.last().header("x-request-id"), Some(made.as_str()));
    let long = "a".repeat(200);
    let r = request(&gw.addr, "GET", "/", &[("x-request-id", &long)], None);
    assert_ne!(r.header("x-request-id"), Some(long.as_str()));
}

#[test]
fn forwarded_headers_and_hop_by_hop_from_untrusted_peer() {
    let up = Upstream::start("u");
    up.set(|b| {
        b.headers = vec![
            ("Keep-Alive".into(), "timeout=5".into()),
            ("X-Powered-By".into(), "php".into()),
            ("Connection".into(), "x-secret-hop".into()),
            ("X-Secret-Hop".into(), "1".into()),
        ]
    });
    let gw = Gateway::start_raw(&config(&up, ""), &[]);
    let r = request(
        &gw.addr,
        "GET",
        "/",
        &[
            ("Host", "shop.example.com"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-Proto", "https"),
            ("X-Internal", "leak"),
            ("Connection", "x-hop-nominated"),
            ("X-Hop-Nominated", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
            ("TE", "trailers"),
        ],
        None,
    );
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("127.0.0.1"),
        "a spoofed XFF from an untrusted peer is replaced"
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("shop.example.com"));
    assert_eq!(seen.header("x-gateway"), Some("gatehouse"));
    for h in ["x-internal", "x-hop-nominated", "keep-alive", "proxy-authorization", "te"] {
        assert_eq!(seen.header(h), None, "{h} must not reach the upstream");
    }
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(
        r.header("x-global"),
        None,
        "the route's own headers plugin wins over the global one"
    );
    for h in ["x-powered-by", "keep-alive", "x-secret-hop"] {
        assert_eq!(r.header(h), None, "{h} must not reach the client");
    }

    let log = gw.access_log();
    common::wait_until(std::time::Duration::from_secs(5), "access log line", || !gw.access_log().is_empty());
    let _ = log;
    let line = gw.access_log().pop().unwrap();
    assert_eq!(line["client_ip"], "127.0.0.1", "client ip ignores XFF from an untrusted peer");
}

#[test]
fn trusted_proxy_xff_is_believed() {
    let up = Upstream::start("u");
    let gw = Gateway::start_raw(&config(&up, "\"127.0.0.0/8\", \"10.0.0.0/8\""), &[]);
    request(
        &gw.addr,
        "GET",
        "/",
        &[
            ("X-Forwarded-For", "9.9.9.9, 203.0.113.7, 10.1.1.1"),
            ("X-Forwarded-Proto", "https"),
        ],
        None,
    );
    let seen = up.last();
    assert_eq!(seen.header("x-forwarded-for"), Some("9.9.9.9, 203.0.113.7, 10.1.1.1, 127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    common::wait_until(std::time::Duration::from_secs(5), "access log line", || !gw.access_log().is_empty());
    let line = gw.access_log().pop().unwrap();
    assert_eq!(line["client_ip"], "203.0.113.7", "rightmost untrusted address is the client");
}

/// Names are normalised on the way through unless `preserve_header_case` is set; either way
/// every header arrives with its value.
#[test]
fn header_case_is_normalised_unless_preserved() {
    for preserve in [false, true] {
        let up = Upstream::start("u");
        up.set(|b| b.headers = vec![("X-Upstream-Mixed".into(), "1".into())]);
        let conf = config(&up, "").replace(
            "[listeners.public]",
            &format!("preserve_header_case = {preserve}\n[listeners.public]"),
        );
        let gw = Gateway::start_raw(&conf, &[]);
        let r = request(&gw.addr, "GET", "/", &[("X-Client-Mixed", "2")], None);
        assert_eq!(r.status, 200);
        let seen = up.last();
        assert_eq!(
            (seen.header("x-client-mixed"), r.header("x-upstream-mixed")),
            (Some("2"), Some("1"))
        );
        let sent = seen.raw_names.iter().find(|k| k.eq_ignore_ascii_case("x-client-mixed"));
        let back = r.raw_names.iter().find(|k| k.eq_ignore_ascii_case("x-upstream-mixed"));
        let names = (sent.map(String::as_str), back.map(String::as_str));
        if preserve {
            assert_eq!(names, (Some("X-Client-Mixed"), Some("X-Upstream-Mixed")));
        } else {
            assert_eq!(names, (Some("x-client-mixed"), Some("x-upstream-mixed")));
        }
    }
}
