//! The analytics API and the usage preview through real sockets, held against the requests
//! the test sent (counts exactly, percentiles within a latency bucket), with a real
//! redis-server for the fleet's daily totals; and the metering config refusals at `-t`.
//! Events and sinks are in tests/metering.rs, delivery in tests/metering_delivery.rs.

mod common;
use common::gateway::{check, refused, test_dir, ADMIN_TOKEN};
use common::meter;
use common::redis::Redis;
use common::{request, wait_until, Gateway, Upstream};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(15);

/// `[requests, errors, bytes_in, bytes_out]` of one analytics aggregate.
fn agg(v: &Value) -> [u64; 4] {
    ["requests", "errors", "bytes_in", "bytes_out"].map(|k| v[k].as_u64().unwrap_or_else(|| panic!("`{k}` in {v}")))
}

fn percentile(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or_else(|| panic!("`{k}` in {v}"))
}

fn bytes(runs: &[(f64, u64)]) -> u64 {
    runs.iter().map(|r| r.1).sum()
}

fn slowest(runs: &[(f64, u64)]) -> f64 {
    runs.iter().map(|r| r.0).fold(0.0, f64::max)
}

fn timed(gw: &Gateway, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>, status: u16) -> (f64, u64) {
    let t = Instant::now();
    let r = request(&gw.addr, method, path, headers, body);
    assert_eq!(r.status, status, "{method} {path}: {}", r.body);
    (t.elapsed().as_secs_f64() * 1000.0, r.raw_body.len() as u64)
}

fn analytics_config(users: &Upstream, broken: &Upstream, extra: &str) -> String {
    format!(
        r#"
{extra}
[metering]
spool_dir = "{{dir}}/spool"
[metering.sinks.archive]
type = "file"
path = "{{dir}}/usage-%Y%m%d.jsonl"
[consumers.acme]
keys = ["acme-key-a"]
plan = "gold"
[consumers.bob]
keys = ["bob-key-b"]
[plans.gold]
price = {{ per_request = "0.0004", currency = "USD" }}
[upstreams.users]
targets = ["{users}"]
[upstreams.broken]
targets = ["{broken}"]
retries = 0
[routes.users]
paths = ["/users"]
upstream = "users"
[routes.users.plugins.key_auth]
[routes.broken]
paths = ["/broken"]
upstream = "broken"
[routes.failing]
paths = ["/failing"]
upstream = "broken"
[routes.failing.plugins.key_auth]
[routes.limited]
paths = ["/limited"]
upstream = "users"
[routes.limited.plugins.key_auth]
[routes.limited.plugins.rate_limit]
requests = 1
per = "1m"
"#,
        users = users.addr,
        broken = broken.addr
    )
}

#[test]
fn analytics_counts_match_the_requests_sent_and_percentiles_stay_within_a_bucket() {
    let users = Upstream::start("users");
    users.set(|b| {
        b.body = Some("0123456789".into());
        b.slow = Duration::from_millis(100);
    });
    let broken = Upstream::start("broken");
    broken.set(|b| b.status = 500);
    let redis = Redis::start();
    let store = format!("[store]\npath = \"{{dir}}/store\"\nredis = \"{}\"", redis.url());
    let gw = Gateway::start(&analytics_config(&users, &broken, &store));
    let other_node = Gateway::start(&analytics_config(&users, &broken, &store));
    let (acme, bob) = ([("x-api-key", "acme-key-a")], [("x-api-key", "bob-key-b")]);
    let upload = "u".repeat(100);
    let acme_runs: Vec<(f64, u64)> = (0..30).map(|_| timed(&gw, "GET", "/users/a", &acme, None, 200)).collect();
    let bob_runs: Vec<(f64, u64)> = (0..10)
        .map(|_| timed(&gw, "POST", "/users/slow", &bob, Some(upload.as_str()), 200))
        .collect();
    let broken_runs: Vec<(f64, u64)> = (0..5).map(|_| timed(&gw, "GET", "/broken", &[], None, 500)).collect();
    let refused_runs: Vec<(f64, u64)> = (0..3).map(|_| timed(&gw, "GET", "/users/a", &[], None, 401)).collect();
    let bob_elsewhere: Vec<(f64, u64)> = (0..5).map(|_| timed(&other_node, "GET", "/users/a", &bob, None, 200)).collect();
    let (a_out, b_out, x_out, r_out) = (bytes(&acme_runs), bytes(&bob_runs), bytes(&broken_runs), bytes(&refused_runs));

    wait_until(WAIT, "48 requests in the analytics", || {
        gw.admin_get("/analytics?window=1h").json()["total"]["requests"] == 48
    });
    let a = gw.admin_get("/analytics?window=1h").json();
    assert_eq!(a["window_seconds"], 3600);
    assert_eq!(agg(&a["total"]), [48, 8, 1000, a_out + b_out + x_out + r_out], "{a}");
    assert_eq!(agg(&a["by_route"]["users"]), [43, 3, 1000, a_out + b_out + r_out], "{a}");
    assert_eq!(agg(&a["by_route"]["broken"]), [5, 5, 0, x_out], "{a}");
    assert_eq!(agg(&a["by_consumer"]["acme"]), [30, 0, 0, a_out], "{a}");
    assert_eq!(agg(&a["by_consumer"]["bob"]), [10, 0, 1000, b_out], "{a}");
    assert_eq!(agg(&a["by_consumer"]["anonymous"]), [8, 8, 0, x_out + r_out], "{a}");
    assert_eq!(agg(&a["by_status"]["2xx"]), [40, 0, 1000, a_out + b_out], "{a}");
    assert_eq!(agg(&a["by_status"]["4xx"]), [3, 3, 0, r_out], "{a}");
    assert_eq!(agg(&a["by_status"]["5xx"]), [5, 5, 0, x_out], "{a}");
    let keys = |v: &Value| v.as_object().map(|m| m.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
    assert_eq!(keys(&a["by_route"]), ["broken", "users"], "{a}");
    assert_eq!(keys(&a["by_consumer"]), ["acme", "anonymous", "bob"], "{a}");
    let ranked = |v: &Value, field: &str| -> Vec<(String, u64)> {
        let list = v.as_array().unwrap_or_else(|| panic!("a list: {v}"));
        list.iter()
            .map(|e| {
                (
                    e["consumer"].as_str().unwrap_or_default().to_string(),
                    e[field].as_u64().unwrap_or(u64::MAX),
                )
            })
            .collect()
    };
    let by_requests = ranked(&a["top_consumers"]["by_requests"], "requests");
    assert_eq!(
        by_requests,
        [("acme".to_string(), 30), ("bob".to_string(), 10), ("anonymous".to_string(), 8)]
    );
    let by_errors = ranked(&a["top_consumers"]["by_errors"], "errors");
    assert_eq!(by_errors.first(), Some(&("anonymous".to_string(), 8)), "{a}");
    assert!(
        by_errors.iter().skip(1).all(|(_, n)| *n == 0),
        "acme and bob had no errors: {by_errors:?}"
    );
    let top1 = gw.admin_get("/analytics?window=1h&top=1").json();
    assert_eq!(
        ranked(&top1["top_consumers"]["by_requests"], "requests"),
        [("acme".to_string(), 30)]
    );

    // A percentile is the upper bound of its bucket: at least the latency of a request in it,
    // at most 25% above the slowest (the client's time bounds the gateway's from above).
    let within = |p: f64, low: f64, high: f64| assert!((low..=high * 1.25 + 1.0).contains(&p), "{p} not in [{low}, {high} x 1.25]");
    let fast = slowest(&acme_runs).max(slowest(&broken_runs)).max(slowest(&refused_runs));
    let slow = slowest(&bob_runs);
    for k in ["p50_ms", "p95_ms", "p99_ms"] {
        within(percentile(&a["by_consumer"]["bob"], k), 100.0, slow);
        within(percentile(&a["by_consumer"]["acme"], k), 0.0, slowest(&acme_runs));
    }
    within(percentile(&a["total"], "p50_ms"), 0.0, fast);
    within(percentile(&a["total"], "p95_ms"), 100.0, slow);
    within(percentile(&a["total"], "p99_ms"), 100.0, slow);
    within(percentile(&a["by_route"]["users"], "p99_ms"), 100.0, slow);

    for bad in [
        "/analytics?window=abc",
        "/analytics?window=25h",
        "/analytics/consumers/bob?window=48h",
    ] {
        let r = gw.admin_get(bad);
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert_eq!(r.json()["status"], 400, "{bad}");
        assert!(r.json()["error"].is_string(), "{bad}: {}", r.body);
    }

    // One consumer; with [store] redis, the fleet's day as well (this node and the other).
    let c = gw.admin_get("/analytics/consumers/bob?window=24h").json();
    assert_eq!((&c["consumer"], &c["window_seconds"]), (&json!("bob"), &json!(86400)), "{c}");
    assert_eq!(agg(&c["total"]), [10, 0, 1000, b_out], "this node only: {c}");
    assert_eq!(agg(&c["by_route"]["users"]), [10, 0, 1000, b_out], "{c}");
    assert_eq!(agg(&c["by_status"]["2xx"]), [10, 0, 1000, b_out], "{c}");
    let elsewhere = bytes(&bob_elsewhere);
    wait_until(WAIT, "bob's fleet total from both nodes", || {
        gw.admin_get("/analytics/consumers/bob?window=24h").json()["fleet_today"]["requests"] == 15
    });
    let c = gw.admin_get("/analytics/consumers/bob?window=24h").json();
    assert_eq!(agg(&c["fleet_today"]), [15, 0, 1000, b_out + elsewhere], "{c}");
    let today = time::OffsetDateTime::now_utc().date();
    let day = format!("{:04}-{:02}-{:02}", today.year(), u8::from(today.month()), today.day());
    let h = meter::hash(redis.port, &format!("gatehouse:analytics:{day}:bob"));
    assert_eq!(h.get("requests").map(String::as_str), Some("15"), "{h:?}");
    assert_eq!(h.get("errors").map(String::as_str), Some("0"), "{h:?}");
    assert_eq!(h.get("bytes_in").map(String::as_str), Some("1000"), "{h:?}");
}

#[test]
fn usage_preview_prices_billable_requests_in_decimal_and_as_csv() {
    let users = Upstream::start("users");
    let broken = Upstream::start("broken");
    broken.set(|b| b.status = 500);
    let gw = Gateway::start(&analytics_config(&users, &broken, ""));
    let (acme, bob) = ([("x-api-key", "acme-key-a")], [("x-api-key", "bob-key-b")]);
    for _ in 0..10 {
        timed(&gw, "GET", "/users/a", &acme, None, 200);
    }
    for _ in 0..2 {
        timed(&gw, "GET", "/failing", &acme, None, 500);
    }
    timed(&gw, "GET", "/limited", &acme, None, 200);
    timed(&gw, "GET", "/limited", &acme, None, 429);
    for _ in 0..3 {
        timed(&gw, "GET", "/users/b", &bob, None, 200);
    }
    wait_until(WAIT, "the ledger has acme's 14 requests", || {
        gw.admin_get("/usage/acme?period=month").json()["requests"] == 14
    });
    let now = time::OffsetDateTime::now_utc();
    let month = format!("{:04}-{:02}", now.year(), u8::from(now.month()));
    let u = gw.admin_get("/usage/acme?period=month").json();
    assert_eq!(
        (&u["consumer"], &u["period"], &u["plan"]),
        (&json!("acme"), &json!(month), &json!("gold")),
        "{u}"
    );
    // A 5xx and the gateway's own refusal (the 429) are not billable.
    assert_eq!((&u["requests"], &u["billable"]), (&json!(14), &json!(11)), "{u}");
    let per_route: BTreeMap<String, (Value, Value)> = u["routes"]
        .as_object()
        .unwrap_or_else(|| panic!("routes: {u}"))
        .iter()
        .map(|(k, v)| (k.clone(), (v["requests"].clone(), v["billable"].clone())))
        .collect();
    let expected: BTreeMap<String, (Value, Value)> = [("failing", 2, 0), ("limited", 2, 1), ("users", 10, 10)]
        .into_iter()
        .map(|(r, n, b)| (r.to_string(), (json!(n), json!(b))))
        .collect();
    assert_eq!(per_route, expected, "{u}");
    assert_eq!(u["price"], json!({"per_request": "0.0004", "currency": "USD"}), "{u}");
    assert_eq!(u["amount"], "0.0044", "11 x 0.0004, in decimal at the price's scale: {u}");

    wait_until(WAIT, "bob's 3 requests", || {
        gw.admin_get("/usage/bob?period=month").json()["requests"] == 3
    });
    let b = gw.admin_get("/usage/bob?period=month").json();
    assert_eq!(b["billable"], 3, "{b}");
    assert!(
        b["plan"].is_null() && b["price"].is_null() && b["amount"].is_null(),
        "no plan, no price: {b}"
    );

    let auth = format!("Bearer {ADMIN_TOKEN}");
    let csv = request(
        &gw.admin,
        "GET",
        "/usage/acme?period=month",
        &[("Authorization", auth.as_str()), ("Accept", "text/csv")],
        None,
    );
    assert_eq!(csv.status, 200, "{}", csv.body);
    assert!(
        csv.header("content-type").is_some_and(|c| c.starts_with("text/csv")),
        "{:?}",
        csv.header("content-type")
    );
    let mut lines: Vec<&str> = csv.body.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(
        lines.remove(0),
        "route,requests,billable,unit_price,amount,currency",
        "{}",
        csv.body
    );
    lines.sort_unstable();
    assert_eq!(
        lines,
        [
            "failing,2,0,0.0004,0.0000,USD",
            "limited,2,1,0.0004,0.0004,USD",
            "users,10,10,0.0004,0.0040,USD"
        ],
        "{}",
        csv.body
    );
}

#[test]
fn bad_metering_config_is_refused_at_check_with_its_key() {
    let dir = test_dir();
    let base = format!(
        r#"
[server]
pid_file = "/tmp/gh-test/gatehouse.pid"
upgrade_sock = "/tmp/gh-test/upgrade.sock"
[listeners.public]
addr = "127.0.0.1:18080"
[upstreams.users]
targets = ["127.0.0.1:9001"]
[routes.users]
paths = ["/users"]
upstream = "users"
metering = {{ dimensions = {{ tier = "header:x-tier" }} }}
[plans.gold]
price = {{ per_request = "0.0004", currency = "USD" }}
[metering]
spool_dir = "{spool}"
[metering.sinks.meter]
type = "http"
url = "http://127.0.0.1:9/events"
"#,
        spool = dir.join("spool").display()
    );
    let (code, err, _) = check(&base);
    assert_eq!(code, 0, "the valid config passes: {err}");
    assert!(dir.join("spool").is_dir(), "spool_dir is created by -t");

    refused(
        &base.replace("type = \"http\"", "type = \"kafka\""),
        "metering.sinks.meter.type",
        "kafka",
    );
    refused(
        &base.replace("url = \"http://127.0.0.1:9/events\"\n", ""),
        "metering.sinks.meter.url",
        "required",
    );
    let file = dir.join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let under_file = file.join("spool").display().to_string();
    let spool = dir.join("spool").display().to_string();
    refused(&base.replace(&spool, &under_file), "metering.spool_dir", "writable");
    refused(&base.replace(&spool, "relative/spool"), "metering.spool_dir", "absolute");
    refused(&base.replace("\"0.0004\"", "\"abc\""), "plans.gold.price.per_request", "decimal");
    refused(
        &base.replace(
            "url = \"http://127.0.0.1:9/events\"",
            "url = \"http://127.0.0.1:9/events\"\nheaders = { authorization = \"env:GH_SURELY_UNSET_METER\" }",
        ),
        "metering.sinks.meter.headers.authorization",
        "GH_SURELY_UNSET_METER",
    );
    let other = |sink: &str| format!("{base}[metering.sinks.other]\n{sink}\n");
    refused(
        &other("type = \"lago\"\nurl = \"http://127.0.0.1:9/lago\"\nmetric_code = \"api_calls\""),
        "metering.sinks.other.api_key",
        "required",
    );
    refused(
        &other("type = \"lago\"\nurl = \"http://127.0.0.1:9/lago\"\napi_key = \"k\"\nmetric_code = \"api_calls\"\nbatch_max = 500"),
        "metering.sinks.other.batch_max",
        "100",
    );
    refused(
        &other("type = \"redis_stream\"\nurl = \"redis://127.0.0.1:9/0\""),
        "metering.sinks.other.key",
        "required",
    );
    refused(&other("type = \"file\""), "metering.sinks.other.path", "required");
    // What the clients could not use at run time is refused at load.
    refused(
        &other("type = \"redis_stream\"\nurl = \"rediss://127.0.0.1:9/0\"\nkey = \"k\""),
        "metering.sinks.other.url",
        "TLS",
    );
    refused(
        &other("type = \"redis_stream\"\nurl = \"redis://127.0.0.1:9/abc\"\nkey = \"k\""),
        "metering.sinks.other.url",
        "redis://",
    );
    refused(
        &base.replace("header:x-tier", "headr:x-tier"),
        "routes.users.metering.dimensions.tier",
        "unknown source",
    );
    refused(
        &base.replace("\"0.0004\"", "\"99999999999\""),
        "plans.gold.price.per_request",
        "at most",
    );
}
