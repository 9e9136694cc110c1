//! Usage metering through real sockets: the gateway meters real requests and its sinks
//! deliver to real receivers (the scripted upstream as the HTTP and Lago endpoints, a real
//! redis-server, a file), and every event is checked against the CloudEvents SDK's model.
//! Delivery across outages, kills and upgrades is in tests/metering_delivery.rs; analytics,
//! the usage preview and the config refusals in tests/metering_analytics.rs.

mod common;
use common::meter::{self, Scrape};
use common::redis::Redis;
use common::{request, wait_until, Gateway, Upstream};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(15);
/// acme's keys: the first literal in the config, the second from the environment.
const FIRST_KEY: &str = "acme-first-key-0001";
const SECOND_KEY: &str = "acme-second-key-0002";
const DELIVERED: &str = "gatehouse_metering_delivered_total";

/// A request the test sent, to hold its event against.
struct Sent {
    method: &'static str,
    status: u16,
    request_id: String,
    body_len: usize,
    from_ms: u64,
    to_ms: u64,
    took_ms: f64,
}

fn send(gw: &Gateway, method: &'static str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Sent {
    let (from_ms, t) = (meter::now_ms(), Instant::now());
    let r = request(&gw.addr, method, path, headers, body);
    let took_ms = t.elapsed().as_secs_f64() * 1000.0;
    Sent {
        method,
        status: r.status,
        request_id: r
            .header("x-request-id")
            .unwrap_or_else(|| panic!("{method} {path}: no x-request-id"))
            .to_string(),
        body_len: r.raw_body.len(),
        from_ms,
        to_ms: meter::now_ms(),
        took_ms,
    }
}

/// What one event must say about its request.
struct Expect<'a> {
    ty: &'a str,
    consumer: Option<&'a str>,
    credential: Option<&'a str>,
    route: Option<&'a str>,
    rejection: Option<&'a str>,
    request_bytes: usize,
}

fn acme_on_users(credential: &'static str, request_bytes: usize) -> Expect<'static> {
    Expect {
        ty: "api.users.call",
        consumer: Some("acme"),
        credential: Some(credential),
        route: Some("users"),
        rejection: None,
        request_bytes,
    }
}

fn anonymous(ty: &'static str, route: Option<&'static str>, rejection: Option<&'static str>) -> Expect<'static> {
    Expect {
        ty,
        consumer: None,
        credential: None,
        route,
        rejection,
        request_bytes: 0,
    }
}

fn event_of<'a>(events: &'a BTreeMap<String, Value>, s: &Sent) -> &'a Value {
    let matching: Vec<&Value> = events.values().filter(|e| meter::request_id(e) == s.request_id).collect();
    assert_eq!(matching.len(), 1, "one event for request {}: {matching:#?}", s.request_id);
    matching[0]
}

fn check_event(e: &Value, s: &Sent, x: &Expect) {
    let d = &e["data"];
    let text = |v: Option<&str>| v.map_or(Value::Null, Value::from);
    assert_eq!(e["specversion"], "1.0", "{e}");
    assert_eq!(e["source"], "gatehouse://edge-1", "{e}");
    assert_eq!(e["datacontenttype"], "application/json", "{e}");
    assert_eq!(e["type"], x.ty, "{e}");
    assert_eq!(e["subject"], x.consumer.unwrap_or("anonymous"), "{e}");
    assert_eq!(d["consumer"], text(x.consumer), "{e}");
    assert_eq!(d["plan"], text(x.consumer.map(|_| "gold")), "{e}");
    assert_eq!(d["credential"], text(x.credential), "{e}");
    assert_eq!(d["route"], text(x.route), "{e}");
    assert_eq!(d["rejection"], text(x.rejection), "{e}");
    assert_eq!(d["method"], s.method, "{e}");
    assert_eq!(d["status"], s.status, "{e}");
    assert_eq!(d["request_bytes"], x.request_bytes, "{e}");
    assert_eq!(d["response_bytes"], s.body_len, "the body the client got: {e}");
    assert_eq!(d["request_id"], s.request_id.as_str(), "the x-request-id the client got: {e}");
    assert!(d["trace_id"].is_null(), "no tracing configured: {e}");
    assert!(d["cache"].is_null(), "no cache on these routes: {e}");
    let arrival = meter::uuid_v7_ms(e["id"].as_str().expect("an id"));
    assert!(
        (s.from_ms..=s.to_ms).contains(&arrival),
        "the id's time {arrival} is the arrival, within [{}, {}]: {e}",
        s.from_ms,
        s.to_ms
    );
    let time = meter::time_ms(e);
    assert!((s.from_ms..=s.to_ms + 50).contains(&time), "time {time} within the request: {e}");
    let latency = d["latency_ms"].as_f64().unwrap_or_else(|| panic!("latency_ms: {e}"));
    // The gateway's clock stops after the answer is written (its log phase), which on a
    // loaded 2-core machine can be a few ms after the client has it.
    assert!(
        (0.0..=s.took_ms + 25.0).contains(&latency),
        "latency within the client's {} ms: {e}",
        s.took_ms
    );
    if x.rejection.is_some() {
        assert!(
            d["upstream_latency_ms"].is_null(),
            "a refused request never reached the upstream: {e}"
        );
    } else {
        let u = d["upstream_latency_ms"]
            .as_f64()
            .unwrap_or_else(|| panic!("upstream_latency_ms: {e}"));
        assert!((0.0..=latency).contains(&u), "the upstream's share of the latency: {e}");
    }
}

#[test]
fn every_request_makes_one_cloudevent_with_its_fields_and_never_the_key() {
    let up = Upstream::start("users");
    let recv = Upstream::start("meter");
    let body = format!(
        r#"
[metering]
spool_dir = "{{dir}}/spool"
segment_size = "4KiB"
source = "gatehouse://edge-1"
{sink}
[plans.gold]
price = {{ per_request = "0.0004", currency = "USD" }}
[consumers.acme]
keys = ["{FIRST_KEY}", "env:GH_TEST_METER_KEY"]
plan = "gold"
[upstreams.users]
targets = ["{up}"]
[routes.users]
paths = ["/users"]
upstream = "users"
metering = {{ event_type = "api.users.call", dimensions = {{ tier = "header:x-tier", region = "query:region", product = "catalog" }} }}
[routes.users.plugins.key_auth]
[routes.open]
paths = ["/open"]
upstream = "users"
"#,
        sink = meter::http_sink("meter", &recv, "headers = { authorization = \"env:METER_TOKEN\" }"),
        up = up.addr
    );
    let env = [("GH_TEST_METER_KEY", SECOND_KEY), ("METER_TOKEN", "Bearer meter-token-1")];
    let gw = Gateway::start_with_env(&body, &env);
    let by_env: Vec<Sent> = (0..3)
        .map(|_| {
            send(
                &gw,
                "GET",
                "/users/1?region=eu",
                &[("x-api-key", SECOND_KEY), ("x-tier", "gold")],
                None,
            )
        })
        .collect();
    let literal = send(
        &gw,
        "POST",
        "/users/2",
        &[("x-api-key", FIRST_KEY), ("x-tier", "silver")],
        Some("hello"),
    );
    let no_key = send(&gw, "GET", "/users/3", &[], None);
    let open = send(&gw, "GET", "/open/x", &[], None);
    let no_route = send(&gw, "GET", "/nothing", &[], None);
    let all: Vec<&Sent> = by_env.iter().chain([&literal, &no_key, &open, &no_route]).collect();
    assert_eq!(
        all.iter().map(|s| s.status).collect::<Vec<_>>(),
        vec![200, 200, 200, 200, 401, 200, 404]
    );

    wait_until(WAIT, "7 events delivered", || {
        meter::metric(&gw, DELIVERED, &[("sink", "meter")]) >= 7.0
    });
    let events = meter::by_id(&meter::events(&recv, "/events"));
    assert_eq!(events.len(), 7, "exactly one event per request: {events:#?}");
    let upstream_saw: BTreeSet<String> = up
        .recorded()
        .iter()
        .filter_map(|r| r.header("x-request-id").map(str::to_string))
        .collect();
    for s in &by_env {
        let e = event_of(&events, s);
        check_event(e, s, &acme_on_users("key:acme#1", 0));
        assert_eq!(e["data"]["upstream"], "users");
        assert_eq!(
            e["data"]["dimensions"],
            json!({"tier": "gold", "region": "eu", "product": "catalog"})
        );
        assert!(
            upstream_saw.contains(&s.request_id),
            "data.request_id is the id the upstream got: {e}"
        );
    }
    let e = event_of(&events, &literal);
    check_event(e, &literal, &acme_on_users("key:acme#0", 5));
    let dims = &e["data"]["dimensions"];
    assert_eq!((&dims["tier"], &dims["product"]), (&json!("silver"), &json!("catalog")), "{e}");
    assert!(dims.get("region").is_none_or(Value::is_null), "no region in the query: {e}");
    assert!(upstream_saw.contains(&literal.request_id));

    check_event(
        event_of(&events, &no_key),
        &no_key,
        &anonymous("api.users.call", Some("users"), Some("unauthenticated")),
    );
    let e = event_of(&events, &open);
    check_event(e, &open, &anonymous("io.gatehouse.request.v1", Some("open"), None));
    assert_eq!(e["data"]["upstream"], "users");
    assert!(
        e["data"]["dimensions"].as_object().is_none_or(|m| m.is_empty()),
        "no dimensions: {e}"
    );
    let e = event_of(&events, &no_route);
    check_event(e, &no_route, &anonymous("io.gatehouse.request.v1", None, Some("no_route")));
    assert!(e["data"]["upstream"].is_null(), "{e}");

    // The sink's own header, on every batch.
    for p in recv.recorded() {
        assert_eq!((p.method.as_str(), p.path.as_str()), ("POST", "/events"));
        assert_eq!(p.header("authorization"), Some("Bearer meter-token-1"));
    }
    let m = Scrape::of(&gw);
    assert_eq!(m.get("gatehouse_metering_events_total", &[("result", "produced")]), 7.0);
    assert_eq!(m.get("gatehouse_metering_events_total", &[("result", "dropped")]), 0.0);
    assert_eq!(m.get("gatehouse_metering_spooled_total", &[]), 7.0);
    assert_eq!(m.get(DELIVERED, &[("sink", "meter")]), 7.0);
    assert_eq!(m.get("gatehouse_metering_dead_lettered_total", &[("sink", "meter")]), 0.0);

    wait_until(WAIT, "no lag", || meter::sink_status(&gw, "meter")["lag_bytes"] == 0);
    let status = gw.admin_get("/status").json();
    let sink = &status["metering"]["sinks"]["meter"];
    assert_eq!((&sink["delivered"], &sink["dead_lettered"]), (&json!(7), &json!(0)), "{status}");
    assert!(sink["last_error"].is_null(), "{status}");
    assert!(sink["oldest_undelivered_seconds"].is_number(), "{status}");
    assert!(status["metering"]["spool_bytes"].is_u64(), "{status}");
    let cursor = sink["cursor"].as_str().expect("a cursor").to_string();
    let (stem, offset) = cursor
        .split_once(' ')
        .unwrap_or_else(|| panic!("cursor `{cursor}` is `<stem> <offset>`"));
    assert!(!stem.is_empty() && offset.parse::<u64>().is_ok(), "cursor `{cursor}`");
    let spool = gw.dir.join("spool");
    wait_until(WAIT, "the cursor file", || {
        std::fs::read_to_string(spool.join("cursors/meter")).is_ok_and(|c| c.trim() == cursor)
    });
    // What the spool still holds is the very events the sink got.
    for name in meter::segments(&spool) {
        assert!(name.ends_with(".open") || name.ends_with(".jsonl"), "segment `{name}`");
        for line in meter::json_lines(&spool.join("segments").join(&name)) {
            assert_eq!(Some(&line), events.get(line["id"].as_str().unwrap_or_default()), "{name}");
        }
    }
    for key in [FIRST_KEY, SECOND_KEY] {
        let leaks = meter::files_containing(&spool, key);
        assert!(leaks.is_empty(), "the key {key} is in {leaks:?}");
        assert!(
            recv.recorded().iter().all(|r| !meter::contains(&r.body, key)),
            "the key {key} went to the sink"
        );
    }
}

fn lago_events(lago: &Upstream) -> Vec<Value> {
    let mut out = Vec::new();
    for r in lago.recorded().iter().filter(|r| r.method == "POST") {
        let v: Value = serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("a Lago batch is JSON ({e})"));
        out.extend(v["events"].as_array().unwrap_or_else(|| panic!("`events` in {v}")).iter().cloned());
    }
    out
}

#[test]
fn lago_batches_hold_at_most_100_events_whose_transaction_ids_are_the_event_ids() {
    let (up, recv, lago) = (Upstream::start("users"), Upstream::start("meter"), Upstream::start("lago"));
    let body = format!(
        r#"
[metering]
spool_dir = "{{dir}}/spool"
{sink}
[metering.sinks.lago]
type = "lago"
url = "http://{lago}/api/v1/events/batch"
api_key = "env:LAGO_API_KEY"
metric_code = "api_calls"
flush_interval = "100ms"
retry = {{ initial = "50ms", max = "200ms" }}
[consumers.acme]
keys = ["{FIRST_KEY}"]
[upstreams.users]
targets = ["{up}"]
[routes.users]
paths = ["/users"]
upstream = "users"
metering = {{ dimensions = {{ tier = "header:x-tier" }} }}
[routes.users.plugins.key_auth]
"#,
        sink = meter::http_sink("meter", &recv, ""),
        lago = lago.addr,
        up = up.addr
    );
    // Refused until all 150 are spooled: then more are waiting than one batch may hold.
    lago.set(|b| b.status = 503);
    let gw = Gateway::start_with_env(&body, &[("LAGO_API_KEY", "lago-secret-1")]);
    let from = meter::now_ms() / 1000;
    for i in 0..150 {
        let tier = if i % 3 == 0 { "gold" } else { "free" };
        let r = request(&gw.addr, "GET", "/users/x", &[("x-api-key", FIRST_KEY), ("x-tier", tier)], None);
        assert_eq!(r.status, 200);
    }
    let to = meter::now_ms() / 1000 + 1;
    wait_until(WAIT, "150 spooled", || {
        meter::metric(&gw, "gatehouse_metering_spooled_total", &[]) == 150.0
    });
    lago.set(|b| b.status = 200);
    wait_until(WAIT, "150 Lago events", || {
        let ids: BTreeSet<String> = lago_events(&lago).iter().map(|e| e["transaction_id"].to_string()).collect();
        ids.len() >= 150
    });
    wait_until(WAIT, "150 CloudEvents", || {
        meter::by_id(&meter::events(&recv, "/events")).len() >= 150
    });

    let posts: Vec<_> = lago.recorded().into_iter().filter(|r| r.method == "POST").collect();
    assert!(posts.len() >= 2, "150 events take at least two batches");
    for p in &posts {
        assert_eq!(p.path, "/api/v1/events/batch");
        assert_eq!(p.header("authorization"), Some("Bearer lago-secret-1"));
        assert!(
            p.header("content-type").is_some_and(|c| c.starts_with("application/json")),
            "{:?}",
            p.header("content-type")
        );
        let v: Value = serde_json::from_slice(&p.body).expect("JSON");
        let n = v["events"].as_array().map_or(0, Vec::len);
        assert!((1..=100).contains(&n), "{n} events in one Lago batch");
        assert!(!meter::contains(&p.body, FIRST_KEY), "the consumer's key went to Lago");
    }
    let cloud = meter::by_id(&meter::events(&recv, "/events"));
    let mut by_transaction: BTreeMap<String, Value> = BTreeMap::new();
    for e in lago_events(&lago) {
        let id = e["transaction_id"]
            .as_str()
            .unwrap_or_else(|| panic!("transaction_id: {e}"))
            .to_string();
        match by_transaction.get(&id) {
            Some(first) => assert_eq!(first, &e, "a resent Lago event is the same"),
            None => {
                by_transaction.insert(id, e);
            }
        }
    }
    assert_eq!(cloud.len(), 150);
    assert_eq!(
        by_transaction.keys().collect::<Vec<_>>(),
        cloud.keys().collect::<Vec<_>>(),
        "the transaction ids are the event ids, each once"
    );
    for (id, l) in &by_transaction {
        let d = &cloud[id]["data"];
        assert_eq!(l["external_subscription_id"], "acme", "{l}");
        assert_eq!(l["external_customer_id"], "acme", "{l}");
        assert_eq!(l["code"], "api_calls", "{l}");
        let ts = l["timestamp"]
            .as_u64()
            .unwrap_or_else(|| panic!("timestamp in integer Unix seconds: {l}"));
        assert!((from..=to).contains(&ts), "timestamp {ts} within the test's [{from}, {to}]");
        let p = &l["properties"];
        for k in ["route", "method", "status", "request_bytes", "response_bytes", "latency_ms"] {
            assert!(!p[k].is_null(), "properties.{k}: {l}");
            assert_eq!(p[k], d[k], "properties.{k} is the event's: {l}");
        }
        assert_eq!(p["tier"], d["dimensions"]["tier"], "{l}");
    }
    let gold = by_transaction.values().filter(|l| l["properties"]["tier"] == "gold").count();
    assert_eq!(gold, 50, "each request's own dimension");
}

#[test]
fn redis_stream_gets_one_entry_per_event_and_catches_up_when_redis_is_back() {
    const KEY: &str = "gatehouse:usage";
    let up = Upstream::start("users");
    let mut redis = Redis::start();
    let gw = Gateway::start(&format!(
        r#"
[metering]
spool_dir = "{{dir}}/spool"
[metering.sinks.stream]
type = "redis_stream"
url = "{url}"
key = "{KEY}"
maxlen = 1000
flush_interval = "100ms"
timeout = "1s"
retry = {{ initial = "50ms", max = "200ms" }}
[upstreams.users]
targets = ["{up}"]
[routes.open]
paths = ["/open"]
upstream = "users"
"#,
        url = redis.url(),
        up = up.addr
    ));
    let send = |prefix: &str, n: usize| -> BTreeSet<String> {
        (0..n)
            .map(|i| {
                let id = format!("{prefix}-{i}");
                assert_eq!(
                    request(&gw.addr, "GET", "/open/x", &[("x-request-id", id.as_str())], None).status,
                    200
                );
                id
            })
            .collect()
    };
    let stream = |port: u16| -> (usize, BTreeMap<String, Value>) {
        let entries = meter::stream_entries(port, KEY);
        for (entry, field, _) in &entries {
            assert_eq!(field, "event", "entry {entry}");
        }
        let events: Vec<Value> = entries.iter().map(|(_, _, v)| v.clone()).collect();
        (entries.len(), meter::by_id(&events))
    };
    let request_ids =
        |events: &BTreeMap<String, Value>| -> BTreeSet<String> { events.values().map(|e| meter::request_id(e).to_string()).collect() };

    let first = send("r1", 20);
    wait_until(WAIT, "20 acknowledged XADDs", || {
        meter::metric(&gw, DELIVERED, &[("sink", "stream")]) == 20.0
    });
    assert_eq!(meter::redis(redis.port, &["XLEN", KEY]).expect("XLEN").int(), 20);
    let (n, events) = stream(redis.port);
    assert_eq!((n, events.len()), (20, 20), "one entry per event");
    assert_eq!(request_ids(&events), first);

    // Redis goes away (and comes back empty: the test server keeps nothing on disk).
    redis.stop();
    let failures = |gw: &Gateway| meter::metric(gw, "gatehouse_metering_delivery_failures_total", &[("sink", "stream")]);
    let before = failures(&gw);
    let second = send("r2", 15);
    wait_until(WAIT, "failed attempts while Redis is down", || {
        failures(&gw) > before && meter::sink_status(&gw, "stream")["last_error"].is_string()
    });
    redis.restart();
    wait_until(Duration::from_secs(20), "the 15 sent while Redis was down", || {
        second.is_subset(&request_ids(&stream(redis.port).1))
    });
    let (_, events) = stream(redis.port);
    assert_eq!(request_ids(&events), second, "nothing acknowledged before is sent again");
    assert_eq!(events.len(), 15, "one event id per request");
    wait_until(WAIT, "35 acknowledged", || {
        meter::metric(&gw, DELIVERED, &[("sink", "stream")]) == 35.0
    });
}

#[test]
fn file_sink_appends_each_event_to_the_file_named_by_its_utc_date() {
    let up = Upstream::start("users");
    let gw = Gateway::start(&format!(
        r#"
[metering]
spool_dir = "{{dir}}/spool"
[metering.sinks.archive]
type = "file"
path = "{{dir}}/usage-%Y%m%d.jsonl"
flush_interval = "100ms"
[upstreams.users]
targets = ["{}"]
[routes.open]
paths = ["/open"]
upstream = "users"
"#,
        up.addr
    ));
    let sent: BTreeSet<String> = (0..5)
        .map(|i| {
            let id = format!("file-{i}");
            assert_eq!(
                request(&gw.addr, "GET", "/open/x", &[("x-request-id", id.as_str())], None).status,
                200
            );
            id
        })
        .collect();
    let archives = || -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&gw.dir)
            .expect("test dir")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("usage-")))
            .collect();
        files.sort();
        files
    };
    let whole_lines = |p: &PathBuf| std::fs::read_to_string(p).map_or(0, |s| s.matches('\n').count());
    wait_until(WAIT, "5 lines archived", || archives().iter().map(whole_lines).sum::<usize>() >= 5);
    let files = archives();
    assert_eq!(files.len(), 1, "{files:?}");
    let lines = meter::json_lines(&files[0]);
    let events = meter::by_id(&lines);
    assert_eq!((lines.len(), events.len()), (5, 5), "each event once");
    let got: BTreeSet<String> = events.values().map(|e| meter::request_id(e).to_string()).collect();
    assert_eq!(got, sent);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    let name = files[0].file_name().expect("a name").to_string_lossy().into_owned();
    for e in events.values() {
        let time = e["time"].as_str().expect("time");
        assert!(time.ends_with('Z'), "UTC: {time}");
        assert_eq!(
            name,
            format!("usage-{}.jsonl", time[..10].replace('-', "")),
            "named by the event's UTC date"
        );
        assert_eq!(e["source"], format!("gatehouse://{}", host.trim()), "the default source");
        assert_eq!(e["type"], "io.gatehouse.request.v1");
    }
    wait_until(WAIT, "5 acknowledged", || {
        meter::metric(&gw, DELIVERED, &[("sink", "archive")]) == 5.0
    });
}
