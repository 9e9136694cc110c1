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
    assert_eq!(common::get(&gw.admin, "/status").status, 200);
    assert_eq!(common::get(&gw.admin, "/nothing").status, 404);
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
