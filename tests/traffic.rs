//! Traffic management through real sockets, with a real redis-server where Redis is the
//! feature: local and fleet rate limits, Redis outages, quotas across restarts and nodes,
//! concurrency limits, the circuit breaker.

mod common;
use common::redis::Redis;
use common::{request, wait_until, Gateway, Upstream};
use std::time::{Duration, Instant};

const CONSUMERS: &str = r#"
[plans.gold]
rate_limit = { requests = 4, per = "1m", burst = 0 }
quota = { requests = 6, per = "day" }
[consumers.acme]
keys = ["acme-key"]
plan = "gold"
[consumers.zed]
keys = ["zed-key"]
"#;

fn key(gw: &Gateway, path: &str, k: &str) -> common::Response {
    request(&gw.addr, "GET", path, &[("x-api-key", k)], None)
}

#[test]
fn local_rate_limit_burst_headers_and_isolated_keys() {
    let up = Upstream::start("u");
    let gw = Gateway::start(&format!(
        r#"{CONSUMERS}
[upstreams.u]
targets = ["{}"]
[routes.r]
paths = ["/"]
upstream = "u"
[routes.r.plugins.key_auth]
anonymous = "nobody"
[routes.r.plugins.rate_limit]
requests = 5
per = "10s"
burst = 2
key = "consumer"
[routes.byip]
paths = ["/ip"]
upstream = "u"
[routes.byip.plugins.rate_limit]
requests = 3
per = "1m"
key = "ip"
[routes.planned]
paths = ["/plan"]
upstream = "u"
[routes.planned.plugins.key_auth]
[routes.planned.plugins.rate_limit]
"#,
        up.addr
    ));
    let statuses: Vec<u16> = (0..10).map(|_| key(&gw, "/", "acme-key").status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        7,
        "requests + burst pass: {statuses:?}"
    );
    let r = key(&gw, "/", "acme-key");
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"], "rate limit exceeded");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "one request every 2s: retry after {retry}");
    assert_eq!(r.header("ratelimit-policy"), Some("\"default\";q=7;w=10"));
    assert!(r.header("ratelimit").unwrap().starts_with("\"default\";r=0;"));
    // Another consumer has its own bucket; answers carry the headers too.
    let r = key(&gw, "/", "zed-key");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("ratelimit").map(|v| v.starts_with("\"default\";r=6;")),
        Some(true),
        "{:?}",
        r.header("ratelimit")
    );
    assert_eq!(up.count(), 8);
    assert!(gw.metric(r#"gatehouse_rejections_total{reason="rate_limit",route="r"}"#) >= 4.0);

    let by_ip: Vec<u16> = (0..5).map(|_| gw.get("/ip").status).collect();
    assert_eq!(by_ip, vec![200, 200, 200, 429, 429]);

    // No route limit: the consumer's plan decides (gold: 4 per minute); no plan, no limit.
    let plan: Vec<u16> = (0..6).map(|_| key(&gw, "/plan", "acme-key").status).collect();
    assert_eq!(plan, vec![200, 200, 200, 200, 429, 429]);
    let r = key(&gw, "/plan", "acme-key");
    assert_eq!(r.header("ratelimit-policy"), Some("\"default\";q=4;w=60"), "the plan's policy");
    assert!((0..8).all(|_| {
        let r = key(&gw, "/plan", "zed-key");
        r.status == 200 && r.header("ratelimit-policy").is_none()
    }));
}

fn fleet_config(up: &Upstream, redis: &Redis, on_error: &str, dir_tag: &str) -> String {
    format!(
        r#"{CONSUMERS}
[store]
path = "{{dir}}/store-{dir_tag}"
redis = "{url}"
timeout = "50ms"
on_error = "{on_error}"
[upstreams.u]
targets = ["{up}"]
[routes.r]
paths = ["/"]
upstream = "u"
[routes.r.plugins.rate_limit]
requests = 20
per = "1m"
key = "route"
store = "redis"
[routes.q]
paths = ["/q"]
upstream = "u"
[routes.q.plugins.key_auth]
[routes.q.plugins.quota]
"#,
        url = redis.url(),
        up = up.addr
    )
}

#[test]
fn fleet_of_three_shares_one_limit_through_redis() {
    let up = Upstream::start("u");
    let redis = Redis::start();
    let gws: Vec<Gateway> = (0..3)
        .map(|i| Gateway::start(&fleet_config(&up, &redis, "allow", &i.to_string())))
        .collect();
    let mut admitted = 0;
    for i in 0..60 {
        if gws[i % 3].get("/").status == 200 {
            admitted += 1;
        }
    }
    eprintln!("fleet: 3 nodes, limit 20/min, 60 requests: {admitted} admitted");
    assert_eq!(admitted, 20, "the fleet admits exactly the limit");

    // Quota across two nodes: the gold plan allows 6 a day in total.
    let q: Vec<u16> = (0..8).map(|i| key(&gws[i % 2], "/q", "acme-key").status).collect();
    assert_eq!(q.iter().filter(|s| **s == 200).count(), 6, "{q:?}");
    let r = key(&gws[2], "/q", "acme-key");
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"], "quota exhausted");
    assert_eq!(r.header("x-quota-remaining"), Some("0"));
    let usage = gws[0].admin_get("/usage/acme").json();
    assert_eq!(usage["usage"][0]["used"], 6, "{usage}");
    assert_eq!(gws[1].admin_post("/usage/acme/reset", "{}").status, 200);
    assert_eq!(key(&gws[2], "/q", "acme-key").status, 200, "reset lets the consumer in again");
}

#[test]
fn redis_outage_honours_on_error_and_timeout_then_recovers() {
    let up = Upstream::start("u");
    let mut redis = Redis::start();
    let lenient = Gateway::start(&fleet_config(&up, &redis, "allow", "a"));
    let strict = Gateway::start(&fleet_config(&up, &redis, "deny", "b"));
    assert_eq!(lenient.get("/").status, 200);
    assert_eq!(strict.get("/").status, 200);

    redis.stop();
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let t = Instant::now();
        assert_eq!(lenient.get("/").status, 200, "on_error = allow lets requests through");
        slowest = slowest.max(t.elapsed());
        let r = strict.get("/");
        assert_eq!(r.status, 503, "on_error = deny refuses");
        assert_eq!(r.json()["error"], "rate limit store unavailable");
    }
    eprintln!("redis down: slowest request {slowest:?} (store timeout 50ms)");
    assert!(
        slowest < Duration::from_secs(1),
        "a dead Redis must not stall requests: {slowest:?}"
    );
    assert!(lenient.metric(r#"gatehouse_store_errors_total{op="rate_limit",store="redis"}"#) >= 1.0);

    redis.restart();
    // Limiting resumes without a restart of the gateway (fresh Redis: 20 allowed again).
    wait_until(Duration::from_secs(10), "redis reconnect", || strict.get("/").status == 200);
    let statuses: Vec<u16> = (0..25).map(|_| strict.get("/").status).collect();
    assert!(statuses.iter().filter(|s| **s == 429).count() >= 5, "{statuses:?}");
}

#[test]
fn local_quota_survives_a_restart_and_can_be_reset() {
    let up = Upstream::start("u");
    let body = format!(
        r#"{CONSUMERS}
[store]
path = "{{dir}}/store"
[upstreams.u]
targets = ["{}"]
[routes.q]
paths = ["/"]
upstream = "u"
[routes.q.plugins.key_auth]
[routes.q.plugins.quota]
"#,
        up.addr
    );
    let mut gw = Gateway::start(&body);
    for _ in 0..4 {
        assert_eq!(key(&gw, "/", "acme-key").status, 200);
    }
    wait_until(Duration::from_secs(5), "quota flushed to disk", || {
        gw.admin_get("/usage/acme").json()["unflushed"] == 0
    });
    // Restart: stop the process, start a new one on the same store.
    gw.signal(libc::SIGKILL);
    assert!(gw.wait_exit(Duration::from_secs(5)));
    gw.spawn(&[]);
    assert_eq!(gw.admin_get("/usage/acme").json()["usage"][0]["used"], 4);
    let after: Vec<u16> = (0..4).map(|_| key(&gw, "/", "acme-key").status).collect();
    assert_eq!(after, vec![200, 200, 429, 429], "6 per day in total across the restart");
    let r = key(&gw, "/", "acme-key");
    assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() <= 86_400);
    assert_eq!(gw.admin_post("/usage/acme/reset", "{}").status, 200);
    assert_eq!(key(&gw, "/", "acme-key").status, 200);
}

#[test]
fn concurrency_limit_queues_then_refuses_and_always_releases() {
    let up = Upstream::start("u");
    up.set(|b| b.slow = Duration::from_millis(1000));
    let gw = Gateway::start(&format!(
        r#"
[upstreams.u]
targets = ["{}"]
retries = 0
[routes.r]
paths = ["/"]
upstream = "u"
[routes.r.plugins.concurrency_limit]
max = 2
queue = 1
queue_timeout = "3s"
"#,
        up.addr
    ));
    let clients: Vec<_> = (0..5)
        .map(|_| {
            let a = gw.addr.clone();
            std::thread::spawn(move || common::get(&a, "/slow").status)
        })
        .collect();
    let mut statuses: Vec<u16> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    statuses.sort();
    assert_eq!(statuses, vec![200, 200, 200, 503, 503], "2 in flight + 1 queued; the rest refused");
    assert_eq!(up.max_in_flight(), 2);

    // Client aborts: the slots come back.
    for _ in 0..2 {
        let mut s = std::net::TcpStream::connect(&gw.addr).unwrap();
        use std::io::Write;
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        drop(s);
    }
    wait_until(Duration::from_secs(10), "slots released after client aborts", || {
        up.set_and_get(|b| b.slow = Duration::ZERO) && gw.get("/").status == 200 && gw.get("/").status == 200
    });
    // Upstream errors release them too.
    up.set(|b| b.drop = true);
    for _ in 0..4 {
        let r = gw.get("/");
        assert_eq!(r.status, 502, "{}", r.body);
    }
    up.set(|b| b.drop = false);
    let ok = (0..4).filter(|_| gw.get("/").status == 200).count();
    assert_eq!(ok, 4);
}

fn breaker(a: &Upstream, b: &Upstream, percent: u32) -> String {
    format!(
        r#"
[upstreams.u]
targets = ["{}", "{}"]
retries = 0
[upstreams.u.circuit_breaker]
consecutive_failures = 3
base_ejection = "1s"
max_ejection = "4s"
max_ejected_percent = {percent}
[routes.r]
paths = ["/"]
upstream = "u"
"#,
        a.addr, b.addr
    )
}

fn ejected(gw: &Gateway, t: &Upstream) -> bool {
    gw.metric(&format!(r#"gatehouse_upstream_target_ejected{{target="{}",upstream="u"}}"#, t.addr)) == 1.0
}

#[test]
fn circuit_breaker_ejects_grows_readmits_and_caps() {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    a.set(|x| x.status = 500);
    let gw = Gateway::start(&breaker(&a, &b, 50));
    for _ in 0..6 {
        gw.get("/");
    }
    assert_eq!(a.count(), 3, "a is ejected at its 3rd failure in a row");
    assert!(ejected(&gw, &a));
    for _ in 0..6 {
        assert_eq!(gw.get("/").status, 200, "while a is out, b takes everything");
    }
    assert_eq!(a.count(), 3);
    let s = gw.admin_get("/status").json();
    assert_eq!(s["clusters"]["u"]["targets"][0]["ejected"], true);

    // Readmitted after base_ejection; the next ejection lasts twice as long.
    wait_until(Duration::from_secs(3), "a readmitted", || {
        gw.get("/");
        a.count() > 3
    });
    for _ in 0..8 {
        gw.get("/");
    }
    assert_eq!(a.count(), 6, "ejected again after 3 more failures");
    let second = Instant::now();
    wait_until(Duration::from_secs(5), "a readmitted again", || {
        gw.get("/");
        a.count() > 6
    });
    let took = second.elapsed();
    eprintln!("second ejection lasted {took:?}");
    assert!(took >= Duration::from_millis(1800), "second ejection is longer (2s): {took:?}");
    assert_eq!(gw.admin_get("/status").json()["clusters"]["u"]["targets"][0]["ejections"], 2);

    // Both failing: max_ejected_percent = 50 keeps one of two in.
    b.set(|x| x.status = 500);
    for _ in 0..20 {
        gw.get("/");
    }
    assert!(!(ejected(&gw, &a) && ejected(&gw, &b)), "never more than 50% ejected");
}

#[test]
fn every_target_ejected_is_503_at_once() {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    a.set(|x| x.status = 502);
    b.set(|x| x.status = 502);
    let gw = Gateway::start(&breaker(&a, &b, 100));
    for _ in 0..6 {
        gw.get("/");
    }
    assert!(ejected(&gw, &a) && ejected(&gw, &b));
    let t = Instant::now();
    let r = gw.get("/");
    assert_eq!(r.status, 503);
    assert!(t.elapsed() < Duration::from_millis(500));
    assert_eq!(a.count() + b.count(), 6);
}
