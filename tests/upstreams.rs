//! Upstream failure handling: health checks, retries, and the 502/503/504 answers.

mod common;
use common::{request, wait_until, Gateway, Upstream};
use std::time::{Duration, Instant};

fn health_config(a: &Upstream, b: &Upstream) -> String {
    format!(
        r#"
[upstreams.u]
targets = ["{a}", "{b}"]
retries = 0
[upstreams.u.health_check]
type = "http"
path = "/healthz"
interval = "100ms"
timeout = "100ms"
healthy_after = 2
unhealthy_after = 2
[routes.r]
paths = ["/"]
upstream = "u"
"#,
        a = a.addr,
        b = b.addr
    )
}

fn healthy(gw: &Gateway, target: &str) -> bool {
    gw.metric(&format!("gatehouse_upstream_target_healthy{{target=\"{target}\",upstream=\"u\"}}")) == 1.0
}

#[test]
fn killed_target_is_taken_out_and_comes_back() {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let gw = Gateway::start(&health_config(&a, &b));
    wait_until(Duration::from_secs(5), "health checks to run", || {
        a.health_checks() >= 2 && b.health_checks() >= 2
    });

    b.kill();
    wait_until(Duration::from_secs(5), "b marked unhealthy", || !healthy(&gw, &b.addr));
    a.reset();
    for _ in 0..20 {
        let r = gw.get("/");
        assert_eq!(r.status, 200, "no 5xx after detection: {}", r.body);
    }
    assert_eq!(a.count(), 20);
    let status = gw.admin_get("/status").json();
    assert_eq!(status["clusters"]["u"]["healthy"], 1);

    b.revive();
    wait_until(Duration::from_secs(5), "b healthy again", || healthy(&gw, &b.addr));
    b.reset();
    for _ in 0..20 {
        assert_eq!(gw.get("/").status, 200);
    }
    assert_eq!(b.count(), 10, "b takes its share again");
}

#[test]
fn failing_health_endpoint_takes_target_out() {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let gw = Gateway::start(&health_config(&a, &b));
    b.set(|x| x.health = 503);
    wait_until(Duration::from_secs(5), "b unhealthy on 503 health", || !healthy(&gw, &b.addr));
    b.reset();
    for _ in 0..10 {
        assert_eq!(gw.get("/").status, 200);
    }
    assert_eq!(b.count(), 0);
}

#[test]
fn every_target_down_is_503_at_once() {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let gw = Gateway::start(&health_config(&a, &b));
    a.set(|x| x.health = 500);
    b.set(|x| x.health = 500);
    wait_until(Duration::from_secs(5), "both unhealthy", || {
        !healthy(&gw, &a.addr) && !healthy(&gw, &b.addr)
    });
    let started = Instant::now();
    let r = gw.get("/");
    assert_eq!(r.status, 503);
    assert!(started.elapsed() < Duration::from_secs(1), "503 must not wait");
    let v = r.json();
    assert_eq!(v["status"], 503);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(v["request_id"].as_str(), r.header("x-request-id"));
    assert_eq!(a.count() + b.count(), 0);
}

fn retry_config(dead: &str, live: &Upstream, retries: u32) -> String {
    format!(
        r#"
[upstreams.u]
targets = ["{dead}", "{live}"]
retries = {retries}
connect_timeout = "500ms"
[routes.r]
paths = ["/"]
upstream = "u"
"#,
        live = live.addr
    )
}

#[test]
fn connect_failure_is_retried_for_get_but_not_post() {
    let live = Upstream::start("live");
    let dead = format!("127.0.0.1:{}", common::free_port());
    let gw = Gateway::start(&retry_config(&dead, &live, 1));
    for _ in 0..10 {
        let r = gw.get("/");
        assert_eq!(r.status, 200, "GET is retried on the live target: {}", r.body);
    }
    assert_eq!(live.count(), 10);
    assert!(gw.metric("gatehouse_upstream_retries_total{upstream=\"u\"}") >= 5.0);

    live.reset();
    let statuses: Vec<u16> = (0..4).map(|_| request(&gw.addr, "POST", "/", &[], Some("{}")).status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 502).count(),
        2,
        "POST is never retried: {statuses:?}"
    );
    assert_eq!(live.count(), 2);
}

#[test]
fn no_retry_when_retries_is_zero() {
    let live = Upstream::start("live");
    let dead = format!("127.0.0.1:{}", common::free_port());
    let gw = Gateway::start(&retry_config(&dead, &live, 0));
    let statuses: Vec<u16> = (0..4).map(|_| gw.get("/").status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 502).count(), 2, "{statuses:?}");
}

#[test]
fn upstream_errors_map_to_502_and_504() {
    let up = Upstream::start("u");
    let gw = Gateway::start(&format!(
        r#"
[upstreams.u]
targets = ["{a}"]
read_timeout = "300ms"
retries = 0
[routes.r]
paths = ["/"]
upstream = "u"
[routes.slow]
paths = ["/slow"]
upstream = "u"
timeout = "2s"
"#,
        a = up.addr
    ));
    up.set(|b| b.drop = true);
    let r = gw.get("/");
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.json()["error"], "upstream failed");

    up.set(|b| {
        b.drop = false;
        b.delay = Duration::from_millis(800);
    });
    let r = gw.get("/");
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.json()["status"], 504);
    assert!(r.json()["request_id"].is_string());
    // The route's own timeout overrides the upstream's.
    assert_eq!(gw.get("/slow").status, 200);

    up.set(|b| {
        b.delay = Duration::ZERO;
        b.status = 500;
    });
    assert_eq!(gw.get("/").status, 500, "an upstream's own 5xx passes through");
}
