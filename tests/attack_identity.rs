//! Attacks on who the client is: forged X-Forwarded-For lines, hops written with ports,
//! unparseable hops, and the same through RFC 7239 `Forwarded`. The gateway's peer is a
//! trusted proxy here (127.0.0.1), as a load balancer in front of it would be.

mod common;
use common::client::raw_request;
use common::{Gateway, Upstream};

fn gateway(up: &Upstream, server_extra: &str) -> Gateway {
    Gateway::start_raw(
        &format!(
            r#"
[server]
threads = 1
pid_file = "{{dir}}/gatehouse.pid"
upgrade_sock = "{{dir}}/upgrade.sock"
trusted_proxies = ["127.0.0.1", "10.0.0.0/8"]
{server_extra}
[listeners.public]
addr = "{{listen}}"
[admin]
addr = "{{admin}}"
token = "test-admin-token"
[log]
access = "{{dir}}/access.log"
level = "warn"
[upstreams.u]
targets = ["{up}"]
[routes.r]
paths = ["/"]
upstream = "u"
[routes.r.plugins.ip_restriction]
deny = ["203.0.113.0/24", "2001:db8::/32"]
[routes.limited]
paths = ["/limited"]
upstream = "u"
[routes.limited.plugins.rate_limit]
requests = 2
per = "1m"
key = "ip"
"#,
            up = up.addr
        ),
        &[],
    )
}

/// GET `path` with these header lines (each a whole line, CRLF added).
fn get(gw: &Gateway, path: &str, lines: &[&str]) -> common::Response {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n");
    for l in lines {
        req.push_str(l);
        req.push_str("\r\n");
    }
    req.push_str("Connection: close\r\n\r\n");
    raw_request(&gw.addr, req.as_bytes()).unwrap_or_else(|e| panic!("{lines:?}: {e}"))
}

/// The client address the access log recorded for the request with this id.
fn logged_client(gw: &Gateway, id: &str) -> String {
    let mut found = None;
    common::wait_until(std::time::Duration::from_secs(5), "the access log line", || {
        found = gw
            .access_log()
            .into_iter()
            .find(|l| l["request_id"] == id)
            .map(|l| l["client_ip"].as_str().unwrap_or("").to_string());
        found.is_some()
    });
    found.unwrap_or_default()
}

#[test]
fn a_forged_first_line_does_not_hide_the_hop_the_proxy_appended() {
    let up = Upstream::start("u");
    let gw = gateway(&up, "");
    // The client wrote the first line; the trusted proxy (10.0.0.9) appended a second line
    // naming the client's real address, which the deny rule covers.
    let r = get(&gw, "/", &["X-Forwarded-For: 10.0.0.1", "X-Forwarded-For: 203.0.113.7"]);
    assert_eq!(r.status, 403, "the proxy's line names the client: {}", r.body);
    let r = get(
        &gw,
        "/",
        &["X-Forwarded-For: 1.2.3.4, 10.0.0.9", "X-Forwarded-For: 203.0.113.7, 10.0.0.9"],
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(up.count(), 0);

    // Allowed, and the upstream sees the whole chain, every line in order, then this hop.
    let r = get(&gw, "/", &["X-Forwarded-For: 192.0.2.1", "X-Forwarded-For: 198.51.100.2"]);
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header("x-forwarded-for"), Some("192.0.2.1, 198.51.100.2, 127.0.0.1"));
    assert_eq!(logged_client(&gw, r.header("x-request-id").unwrap()), "198.51.100.2");
}

#[test]
fn hops_with_ports_and_brackets_name_the_client() {
    let up = Upstream::start("u");
    let gw = gateway(&up, "");
    for hop in ["203.0.113.7:5555", "[2001:db8::7]:443", "[2001:db8::7]", "\"203.0.113.7\""] {
        let r = get(&gw, "/", &[&format!("X-Forwarded-For: {hop}")]);
        assert_eq!(r.status, 403, "{hop} is the client, not the proxy: {}", r.body);
    }
    assert_eq!(up.count(), 0);
}

#[test]
fn an_unparseable_hop_is_an_unknown_client_never_the_proxy() {
    let up = Upstream::start("u");
    let gw = gateway(&up, "");
    let r = get(&gw, "/", &["X-Forwarded-For: 192.0.2.1, not-an-address"]);
    assert_eq!(r.status, 200);
    let client = logged_client(&gw, r.header("x-request-id").unwrap());
    assert_ne!(client, "127.0.0.1", "the proxy's own address must not stand in for the client");
    assert_ne!(client, "192.0.2.1", "a hop left of an unknown one is not believed");

    // Per-IP limits: forging lines does not buy a fresh bucket.
    let statuses: Vec<u16> = (0..4)
        .map(|i| {
            get(
                &gw,
                "/limited",
                &[&format!("X-Forwarded-For: 10.{i}.0.1"), "X-Forwarded-For: 198.51.100.9"],
            )
            .status
        })
        .collect();
    assert_eq!(statuses, vec![200, 200, 429, 429], "one client, one bucket");
}

#[test]
fn forwarded_header_when_configured() {
    let up = Upstream::start("u");
    let gw = gateway(&up, "client_ip_header = \"forwarded\"");
    for line in [
        "Forwarded: for=203.0.113.7",
        "Forwarded: for=192.0.2.1, for=\"203.0.113.7:4711\";proto=https",
        "Forwarded: for=\"[2001:db8:cafe::17]:4711\"",
        "Forwarded: For=203.0.113.7;by=10.0.0.9",
    ] {
        let r = get(&gw, "/", &[line]);
        assert_eq!(r.status, 403, "{line}: {}", r.body);
    }
    let r = get(&gw, "/", &["Forwarded: for=203.0.113.7", "Forwarded: for=192.0.2.1"]);
    assert_eq!(r.status, 200, "the last line is the proxy's: {}", r.body);
    // In this mode X-Forwarded-For names no one: a client cannot pick its address with it.
    let r = get(&gw, "/", &["X-Forwarded-For: 203.0.113.7"]);
    assert_eq!(r.status, 200);
    let r = get(&gw, "/", &["Forwarded: for=unknown"]);
    assert_eq!(r.status, 200);
    let client = logged_client(&gw, r.header("x-request-id").unwrap());
    assert_ne!(client, "127.0.0.1");
}
