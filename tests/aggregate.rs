//! Aggregate routes against real upstream servers: one client request fanned out to several
//! backends over the gateway's upstream clusters, merged, cut at timeouts, and failed as
//! the route says.

mod common;

use common::gateway::refused;
use common::{request, Gateway, Upstream};
use std::time::{Duration, Instant};

const KEY: &str = "ann-key-0123456789";

fn config(users: &Upstream, orders: &Upstream, extra: &str) -> String {
    format!(
        r#"
[upstreams.users]
targets = ["{users}"]
[upstreams.orders]
targets = ["{orders}"]

[consumers.ann]
keys = ["{KEY}"]

[routes.dashboard]
paths = ["/dashboard"]
methods = ["GET"]
[routes.dashboard.plugins.key_auth]
[routes.dashboard.aggregate]
timeout = "3s"
merge = "group"
on_partial = "200"
include_errors = true
[[routes.dashboard.aggregate.backends]]
name = "user"
upstream = "users"
path = "/users/{{consumer}}"
timeout = "2s"
required = true
[[routes.dashboard.aggregate.backends]]
name = "orders"
upstream = "orders"
path = "/orders?user={{consumer}}&page={{query.page}}"
timeout = "1s"
allow = ["id", "total"]
{extra}
"#,
        users = users.addr,
        orders = orders.addr,
    )
}

fn get(gw: &Gateway, path: &str) -> common::Response {
    request(&gw.addr, "GET", path, &[("x-api-key", KEY)], None)
}

fn start() -> (Upstream, Upstream, Gateway) {
    let users = Upstream::start("users");
    let orders = Upstream::start("orders");
    users.set(|b| b.body = Some(r#"{"name":"Ann","id":7}"#.into()));
    orders.set(|b| b.body = Some(r#"[{"id":1,"total":5,"card":"4111"},{"id":2,"total":9,"card":"5500"}]"#.into()));
    let gw = Gateway::start(&config(&users, &orders, ""));
    (users, orders, gw)
}

#[test]
fn backends_are_called_with_the_authenticated_consumer_and_grouped() {
    let (users, orders, gw) = start();
    let r = get(&gw, "/dashboard?page=2");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-gatehouse-completed"), Some("true"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        serde_json::json!({"user": {"name": "Ann", "id": 7}, "orders": [{"id": 1, "total": 5}, {"id": 2, "total": 9}]})
    );
    assert_eq!(users.last().path, "/users/ann");
    assert_eq!(orders.last().path, "/orders?user=ann&page=2");
    // Each backend hears who asks from the gateway, never the client's credentials.
    let seen = users.last();
    assert_eq!(seen.header("x-consumer"), Some("ann"));
    assert_eq!(seen.header("x-request-id"), r.header("x-request-id"));
    assert_eq!(seen.header("x-api-key"), None);
    // One access-log line for the client request.
    common::wait_until(Duration::from_secs(5), "the access log line", || {
        gw.access_log().iter().any(|l| l["path"] == "/dashboard")
    });
    let lines: Vec<_> = gw.access_log().into_iter().filter(|l| l["path"] == "/dashboard").collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(
        gw.metric(r#"gatehouse_requests_total{method="GET",route="dashboard",status="200"}"#),
        1.0
    );
    assert_eq!(
        gw.metric(r#"gatehouse_aggregate_backend_duration_seconds_count{backend="orders",route="dashboard"}"#),
        1.0
    );
}

#[test]
fn a_refused_client_reaches_no_backend() {
    let (users, orders, gw) = start();
    let r = gw.get("/dashboard?page=1");
    assert_eq!(r.status, 401, "{}", r.body);
    let r = request(&gw.addr, "GET", "/dashboard?page=1", &[("x-api-key", "forged-key-000000")], None);
    assert_eq!(r.status, 401, "{}", r.body);
    // A template value the request lacks is the client's error, found before any call.
    let r = get(&gw, "/dashboard");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.json()["error"].as_str().unwrap().contains("page"), "{}", r.body);
    assert!(r.json()["request_id"].is_string());
    assert_eq!(users.count() + orders.count(), 0);
}

#[test]
fn a_slow_optional_backend_is_cut_at_its_timeout() {
    let (users, orders, gw) = start();
    orders.set(|b| b.delay = Duration::from_secs(3));
    let t = Instant::now();
    let r = get(&gw, "/dashboard?page=1");
    let took = t.elapsed();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-gatehouse-completed"), Some("false"));
    let body = r.json();
    assert_eq!(body["user"]["name"], "Ann");
    assert!(body.get("orders").is_none(), "{body}");
    assert_eq!(body["_errors"]["orders"], "timed out");
    // The backend's 1 s, well inside the route's 3 s and the backend's 3 s delay (generous
    // bounds: shared machine; the timeouts leave a loaded machine room for the backends
    // that do answer).
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    assert!(took >= Duration::from_secs(1), "took {took:?}");
    assert_eq!(users.count(), 1);
    assert_eq!(
        gw.metric(r#"gatehouse_aggregate_backend_failures_total{backend="orders",reason="timeout",route="dashboard"}"#),
        1.0
    );
    common::wait_until(Duration::from_secs(5), "the access log line", || {
        gw.access_log().iter().any(|l| l["path"] == "/dashboard")
    });
    let line = gw.access_log().into_iter().find(|l| l["path"] == "/dashboard").unwrap();
    assert_eq!(line["rejection"], "aggregate_partial", "{line}");
}

#[test]
fn a_failed_required_backend_fails_the_request() {
    let (users, orders, gw) = start();
    users.set(|b| b.status = 500);
    // Whatever the optional backend does.
    orders.set(|b| b.delay = Duration::from_secs(3));
    let t = Instant::now();
    let r = get(&gw, "/dashboard?page=1");
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(t.elapsed() < Duration::from_millis(2500), "took {:?}", t.elapsed());
    assert_eq!(r.header("x-gatehouse-completed"), Some("false"));
    let body = r.json();
    assert_eq!(body["error"], "backend `user` failed: status 500");
    assert_eq!(body["request_id"].as_str(), r.header("x-request-id"));
    assert_eq!(
        gw.metric(r#"gatehouse_aggregate_backend_failures_total{backend="user",reason="status",route="dashboard"}"#),
        1.0
    );
    // A required backend that is down altogether fails the same way.
    users.kill();
    let r = get(&gw, "/dashboard?page=1");
    assert_eq!(r.status, 502, "{}", r.body);
    drop(orders);
}

#[test]
fn bad_json_and_oversized_bodies_count_as_failures() {
    let users = Upstream::start("users");
    let orders = Upstream::start("orders");
    let big = Upstream::start("big");
    users.set(|b| b.body = Some(r#"{"name":"Ann"}"#.into()));
    orders.set(|b| b.body = Some("<html>oops</html>".into()));
    big.set(|b| b.body = Some(format!(r#"{{"blob":"{}"}}"#, "x".repeat(5000))));
    let extra = format!(
        r#"
[upstreams.big]
targets = ["{}"]
[routes.small]
paths = ["/small"]
[routes.small.aggregate]
max_body = "4KiB"
[[routes.small.aggregate.backends]]
name = "big"
upstream = "big"
path = "/blob"
[[routes.small.aggregate.backends]]
name = "fine"
upstream = "users"
path = "/users/x"
"#,
        big.addr
    );
    let gw = Gateway::start(&config(&users, &orders, &extra));
    let r = get(&gw, "/dashboard?page=1");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-gatehouse-completed"), Some("false"));
    assert_eq!(r.json()["_errors"]["orders"], "response is not JSON");
    assert_eq!(
        gw.metric(r#"gatehouse_aggregate_backend_failures_total{backend="orders",reason="bad_json",route="dashboard"}"#),
        1.0
    );
    let r = gw.get("/small");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        serde_json::json!({"fine": {"name": "Ann"}}),
        "no _errors unless asked for"
    );
    assert_eq!(r.header("x-gatehouse-completed"), Some("false"));
    assert_eq!(
        gw.metric(r#"gatehouse_aggregate_backend_failures_total{backend="big",reason="too_large",route="small"}"#),
        1.0
    );
    // Every backend failed: nothing to answer with.
    users.set(|b| b.status = 503);
    let r = gw.get("/small");
    assert_eq!(r.status, 502, "{}", r.body);
}

#[test]
fn shallow_merge_and_strict_partial_answers() {
    let users = Upstream::start("users");
    let orders = Upstream::start("orders");
    users.set(|b| b.body = Some(r#"{"name":"Ann","plan":"free"}"#.into()));
    orders.set(|b| b.body = Some(r#"{"plan":"gold","orders":3}"#.into()));
    let extra = r#"
[routes.merged]
paths = ["/merged"]
[routes.merged.aggregate]
merge = "shallow"
[[routes.merged.aggregate.backends]]
name = "a"
upstream = "users"
path = "/a/{path.1}"
[[routes.merged.aggregate.backends]]
name = "b"
upstream = "orders"
path = "/b/{query.q}?q={query.q}"

[routes.strict]
paths = ["/strict"]
[routes.strict.aggregate]
on_partial = "502"
[[routes.strict.aggregate.backends]]
name = "a"
upstream = "users"
path = "/a"
[[routes.strict.aggregate.backends]]
name = "b"
upstream = "orders"
path = "/b"
"#;
    let gw = Gateway::start(&config(&users, &orders, extra));
    let r = gw.get("/merged/x%20y?q=a%26admin%3D1..");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), serde_json::json!({"name": "Ann", "plan": "gold", "orders": 3}));
    // Client values stay one segment or one query value: no new segment, no new parameter.
    assert_eq!(users.last().path, "/a/x%20y");
    assert_eq!(orders.last().path, "/b/a%26admin%3D1..?q=a%26admin%3D1..");
    // A value that would climb out of the template's path is refused, before any call.
    let before = users.count() + orders.count();
    for q in ["..", "%2E%2E", ".", "..%2F..%2Fadmin", "a%5Cb"] {
        let r = gw.get(&format!("/merged/x?q={q}"));
        assert_eq!(r.status, 400, "{q}: {}", r.body);
        assert!(
            r.json()["error"].as_str().unwrap().contains("cannot be used as a path segment"),
            "{}",
            r.body
        );
    }
    assert_eq!(users.count() + orders.count(), before);
    // shallow needs objects: an array is that backend failing.
    orders.set(|b| b.body = Some("[1,2]".into()));
    let r = gw.get("/merged/x?q=1");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-gatehouse-completed"), Some("false"));
    assert_eq!(r.json(), serde_json::json!({"name": "Ann", "plan": "free"}));
    // With on_partial = "502", any failed backend fails the request; the default answers
    // with what arrived.
    let r = gw.get("/strict");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-gatehouse-completed"), Some("true"));
    orders.set(|b| b.status = 404);
    let r = gw.get("/strict");
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.json()["error"], "backend `b` failed: status 404");
}

#[test]
fn bad_aggregate_tables_are_refused_at_load() {
    let users = Upstream::start("users");
    let orders = Upstream::start("orders");
    let base = format!("{}\n{}", common::gateway::HEADER, config(&users, &orders, ""))
        .replace("{dir}", "/tmp/gh-aggregate")
        .replace("{listen}", "127.0.0.1:18080")
        .replace("{admin}", "127.0.0.1:18081");
    let swap = |from: &str, to: &str| {
        assert!(base.contains(from), "{from}");
        base.replacen(from, to, 1)
    };
    refused(
        &swap(r#"upstream = "orders""#, r#"upstream = "nope""#),
        "routes.dashboard.aggregate.backends[1].upstream",
        "upstream `nope` is not defined",
    );
    refused(
        &swap(r#"name = "orders""#, r#"name = "user""#),
        "routes.dashboard.aggregate.backends[1].name",
        "`user` names two backends",
    );
    refused(
        &swap("{query.page}", "{cookie.sid}"),
        "routes.dashboard.aggregate.backends[1].path",
        "unknown placeholder `{cookie.sid}`",
    );
    refused(
        &swap("[routes.dashboard.plugins.key_auth]\n", ""),
        "routes.dashboard.aggregate.backends[0].path",
        "{consumer} needs an auth plugin",
    );
    refused(
        &swap(r#"timeout = "2s""#, r#"timeout = "5s""#),
        "routes.dashboard.aggregate.backends[0].timeout",
        "at most the aggregate's 3s",
    );
    refused(
        &swap("methods = [\"GET\"]\n", "methods = [\"GET\"]\nupstream = \"users\"\n"),
        "routes.dashboard.upstream",
        "an aggregate route answers from its backends",
    );
    refused(
        &swap(r#"merge = "group""#, r#"merge = "deep""#),
        "routes.dashboard.aggregate.merge",
        "unknown variant",
    );
}

#[test]
fn backend_calls_are_balanced_and_feed_the_circuit_breaker() {
    let bad = Upstream::start("bad");
    let good = Upstream::start("good");
    bad.set(|b| b.status = 500);
    good.set(|b| b.body = Some(r#"{"ok":true}"#.into()));
    let gw = Gateway::start(&format!(
        r#"
[upstreams.pair]
targets = ["{}", "{}"]
retries = 0
[upstreams.pair.circuit_breaker]
consecutive_failures = 2
base_ejection = "30s"
max_ejection = "60s"
max_ejected_percent = 50
[routes.agg]
paths = ["/agg"]
[routes.agg.aggregate]
[[routes.agg.aggregate.backends]]
name = "p"
upstream = "pair"
path = "/p"
"#,
        bad.addr, good.addr
    ));
    // Round-robin reaches both targets; the one answering 500 is ejected after two.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(gw.get("/agg").status);
    }
    assert!(statuses.contains(&502) && statuses.contains(&200), "{statuses:?}");
    assert_eq!(bad.count(), 2, "{statuses:?}");
    assert_eq!(
        gw.metric(&format!(
            r#"gatehouse_upstream_target_ejected{{target="{}",upstream="pair"}}"#,
            bad.addr
        )),
        1.0
    );
    // Ejected: every call goes to the healthy target.
    for _ in 0..4 {
        assert_eq!(gw.get("/agg").status, 200);
    }
    assert_eq!(bad.count(), 2);
}

/// A raw backend: answers each request on a connection with `answer`, keeping the
/// connection open; `once` closes the listener after the first connection ends its first
/// answer (a backend restarting behind pooled connections).
fn raw_backend(answer: &'static str, once: bool) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = seen.clone();
    std::thread::spawn(move || {
        if once {
            let Ok((mut c, _)) = l.accept() else { return };
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = c.write_all(answer.as_bytes());
            // Stop listening, then close the pooled connection when its next request comes.
            drop(l);
            let _ = c.read(&mut buf);
            return;
        }
        for conn in l.incoming() {
            let Ok(mut c) = conn else { return };
            let mut buf = [0u8; 4096];
            let Ok(n) = c.read(&mut buf) else { continue };
            if n == 0 {
                continue;
            }
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = c.write_all(answer.as_bytes());
            let count = count.clone();
            std::thread::spawn(move || loop {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let _ = c.write_all(answer.as_bytes());
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[test]
fn informational_answers_and_backends_that_go_away_are_handled() {
    const JSON: &str = "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"ok\":true}";
    let (early, _) = raw_backend(
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"ok\":true}",
        false,
    );
    let (gone, gone_count) = raw_backend(JSON, true);
    let gw = Gateway::start(&format!(
        r#"
[upstreams.early]
targets = ["{early}"]
[upstreams.gone]
targets = ["{gone}"]
[routes.early]
paths = ["/early"]
[routes.early.aggregate]
[[routes.early.aggregate.backends]]
name = "e"
upstream = "early"
path = "/e"
[routes.gone]
paths = ["/gone"]
[routes.gone.aggregate]
timeout = "2s"
[[routes.gone.aggregate.backends]]
name = "g"
upstream = "gone"
path = "/g"
"#
    ));
    // 100 and 103 come before the answer that counts.
    for _ in 0..2 {
        let r = gw.get("/early");
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json(), serde_json::json!({"e": {"ok": true}}));
    }
    assert_eq!(gw.metric("gatehouse_panics_total"), 0.0);
    // The first call pools its connection; the backend then closes it and stops listening.
    assert_eq!(gw.get("/gone").status, 200);
    let r = gw.get("/gone");
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.json()["error"], "backend `g` failed: connection failed");
    // One stale retry, one connect: attempts are bounded, not repeated until the deadline.
    let attempts = gw.metric(r#"gatehouse_upstream_duration_seconds_count{upstream="gone"}"#);
    assert!(attempts <= 4.0, "{attempts} attempts for two client requests");
    assert!(gone_count.load(std::sync::atomic::Ordering::SeqCst) <= 2);
}
