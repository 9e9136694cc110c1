//! Metrics after known traffic, access log lines, the admin API and its token.

mod common;
use common::{request, wait_until, Gateway, Upstream};
use std::time::Duration;

fn config(up: &Upstream) -> String {
    format!(
        r#"
[upstreams.users]
targets = ["{up}"]
[routes.users]
paths = ["/users"]
upstream = "users"
[routes.hello]
paths = ["=/hello"]
[routes.hello.plugins.respond]
body = "hi"
"#,
        up = up.addr
    )
}

#[test]
fn metrics_count_known_traffic() {
    let up = Upstream::start("u");
    up.set(|b| b.body = Some("x".repeat(100)));
    let gw = Gateway::start(&config(&up));
    for _ in 0..7 {
        assert_eq!(gw.get("/users/1").status, 200);
    }
    for _ in 0..3 {
        assert_eq!(request(&gw.addr, "POST", "/users", &[], Some("0123456789")).status, 200);
    }
    gw.get("/nope");
    gw.get("/hello");
    assert_eq!(
        gw.metric(r#"gatehouse_requests_total{method="GET",route="users",status="200"}"#),
        7.0
    );
    assert_eq!(
        gw.metric(r#"gatehouse_requests_total{method="POST",route="users",status="200"}"#),
        3.0
    );
    assert_eq!(
        gw.metric(r#"gatehouse_requests_total{method="GET",route="_none",status="404"}"#),
        1.0
    );
    assert_eq!(
        gw.metric(r#"gatehouse_requests_total{method="GET",route="hello",status="200"}"#),
        1.0
    );
    assert_eq!(gw.metric(r#"gatehouse_request_duration_seconds_count{route="users"}"#), 10.0);
    assert_eq!(gw.metric(r#"gatehouse_upstream_duration_seconds_count{upstream="users"}"#), 10.0);
    assert_eq!(gw.metric(r#"gatehouse_bytes_received_total{route="users"}"#), 30.0);
    assert_eq!(gw.metric(r#"gatehouse_bytes_sent_total{route="users"}"#), 1000.0);
    assert_eq!(
        gw.metric(&format!(
            r#"gatehouse_upstream_target_healthy{{target="{}",upstream="users"}}"#,
            up.addr
        )),
        1.0
    );
    let body = gw.admin_get("/metrics").body;
    assert!(!body.contains("/users/1"), "raw paths never become labels");
}

#[test]
fn access_log_has_one_json_line_per_request() {
    let up = Upstream::start("u");
    let gw = Gateway::start(&config(&up));
    let r = request(
        &gw.addr,
        "GET",
        "/users/5?q=1",
        &[("Host", "api.example.com"), ("x-request-id", "log-test-1")],
        None,
    );
    assert_eq!(r.status, 200);
    gw.get("/nope");
    wait_until(Duration::from_secs(5), "two access log lines", || gw.access_log().len() >= 2);
    let lines = gw.access_log();
    let l = lines
        .iter()
        .find(|l| l["request_id"] == "log-test-1")
        .expect("line for the request");
    assert_eq!(l["method"], "GET");
    assert_eq!(l["host"], "api.example.com");
    assert_eq!(l["path"], "/users/5");
    assert_eq!(l["status"], 200);
    assert_eq!(l["route"], "users");
    assert_eq!(l["upstream"], "users");
    assert_eq!(l["target"], up.addr.as_str());
    assert_eq!(l["client_ip"], "127.0.0.1");
    assert_eq!(l["bytes_out"], 1);
    assert!(l["duration_ms"].as_f64().unwrap() >= l["upstream_ms"].as_f64().unwrap());
    assert!(l["time"].as_str().unwrap().ends_with('Z'));
    let miss = lines.iter().find(|l| l["path"] == "/nope").unwrap();
    assert_eq!(miss["status"], 404);
    assert_eq!(miss["route"], "");
}

#[test]
fn admin_status_and_token() {
    let up = Upstream::start("u");
    let body = config(&up);
    let gw = Gateway::start_raw(
        &format!(
            "{}\n{}",
            common::gateway::HEADER.replace("token = \"test-admin-token\"", "token = \"env:GH_TEST_ADMIN_TOKEN\""),
            body
        ),
        &[("GH_TEST_ADMIN_TOKEN", "t0ken-xyz")],
    );
    assert_eq!(gw.admin_get("/healthz").status, 200, "liveness needs no token");
    for path in ["/metrics", "/status"] {
        let r = gw.admin_get(path);
        assert_eq!(r.status, 401, "{path} without token");
        assert_eq!(r.json()["status"], 401);
        let r = request(&gw.admin, "GET", path, &[("Authorization", "Bearer wrong")], None);
        assert_eq!(r.status, 401, "{path} with a wrong token");
    }
    assert_eq!(request(&gw.admin, "POST", "/reload", &[], None).status, 401);
    let r = request(&gw.admin, "GET", "/status", &[("Authorization", "Bearer t0ken-xyz")], None);
    assert_eq!(r.status, 200);
    let s = r.json();
    assert_eq!(s["clusters"]["users"]["targets"][0]["addr"], up.addr.as_str());
    assert_eq!(s["clusters"]["users"]["targets"][0]["healthy"], true);
    assert!(s["config"]["hash"].as_str().is_some_and(|h| h.len() == 16));
    assert!(s["routes"].as_array().unwrap().iter().any(|r| r["name"] == "hello"));
}

#[test]
fn admin_without_token_is_open_on_loopback() {
    let up = Upstream::start("u");
    let gw = Gateway::start_raw(
        &format!(
            "{}\n{}",
            common::gateway::HEADER.replace("token = \"test-admin-token\"\n", ""),
            config(&up)
        ),
        &[],
    );
    assert_eq!(common::get(&gw.admin, "/healthz").status, 200);
    let host = [("Host", gw.admin.as_str())];
    assert_eq!(request(&gw.admin, "GET", "/status", &host, None).status, 200);
    assert_eq!(request(&gw.admin, "GET", "/nothing", &host, None).status, 404);
    assert_eq!(
        common::get(&gw.admin, "/status").status,
        403,
        "a Host that is not loopback, and no token"
    );
}

/// The benchmark's allocations per request: counted only when asked for at start, and the
/// count moves with the traffic.
#[test]
fn allocations_are_counted_only_when_asked() {
    let up = Upstream::start("u");
    let plain = Gateway::start(&config(&up));
    assert_eq!(plain.get("/users/1").status, 200);
    assert!(
        !plain.admin_get("/metrics").body.contains("gatehouse_allocations_total"),
        "counting is off by default"
    );
    drop(plain);

    let gw = Gateway::start_with_env(&config(&up), &[("GATEHOUSE_COUNT_ALLOCS", "1")]);
    let before = gw.metric("gatehouse_allocations_total");
    let bytes_before = gw.metric("gatehouse_allocated_bytes_total");
    assert!(before > 0.0, "start-up allocates");
    for _ in 0..50 {
        assert_eq!(gw.get("/users/1").status, 200);
    }
    let after = gw.metric("gatehouse_allocations_total");
    // Each proxied request allocates (header maps, the request id); 50 requests at least 50.
    assert!(after - before >= 50.0, "{before} -> {after}");
    assert!(gw.metric("gatehouse_allocated_bytes_total") > bytes_before);
}

#[test]
fn per_target_outcomes_pool_reuse_and_open_connections_are_series() {
    let up = Upstream::start("live");
    let dead = format!("127.0.0.1:{}", common::free_port());
    let gw = Gateway::start(&format!(
        "[upstreams.pair]\ntargets = [\"{dead}\", \"{}\"]\nretries = 1\n[routes.pair]\npaths = [\"/\"]\nupstream = \"pair\"\n",
        up.addr
    ));
    for i in 0..4 {
        assert_eq!(gw.get(&format!("/r{i}")).status, 200, "the retry reaches the live target");
    }
    let series = |target: &str, outcome: &str| {
        gw.metric(&format!(
            r#"gatehouse_upstream_target_requests_total{{outcome="{outcome}",target="{target}",upstream="pair"}}"#
        ))
    };
    assert_eq!(series(&up.addr, "2xx"), 4.0);
    assert_eq!(series(&up.addr, "error"), 0.0);
    assert!(
        series(&dead, "error") >= 1.0,
        "the refused connects were not counted against the dead target"
    );
    assert_eq!(series(&dead, "2xx"), 0.0);
    assert_eq!(
        gw.metric(&format!(
            r#"gatehouse_upstream_target_duration_seconds_count{{target="{}",upstream="pair"}}"#,
            up.addr
        )),
        4.0
    );
    // Four answers from the live target over kept-alive upstream connections.
    let reused = gw.metric(r#"gatehouse_upstream_connections_total{reused="true",upstream="pair"}"#);
    let fresh = gw.metric(r#"gatehouse_upstream_connections_total{reused="false",upstream="pair"}"#);
    assert_eq!(reused + fresh, 4.0);
    assert!(fresh >= 1.0 && reused >= 1.0, "reused {reused}, new {fresh}");

    // A client connection held open counts until it closes.
    let open = || gw.metric("gatehouse_downstream_connections_open");
    let before = open();
    let mut held = std::net::TcpStream::connect(&gw.addr).unwrap();
    std::io::Write::write_all(&mut held, b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let r = common::client::read_response(&mut held).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(open(), before + 1.0);
    drop(held);
    wait_until(Duration::from_secs(5), "the closed connection to leave the gauge", || {
        open() == before
    });
}
