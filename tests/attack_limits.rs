//! Attacks on limits and counters: one route spending another's rate limit, made-up methods
//! growing the metric series, clients ejecting a healthy target, fleet limits left open
//! after Redis comes back, and quota counts lost on a graceful stop.

mod common;
use common::redis::Redis;
use common::{request, wait_until, Gateway, Upstream};
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

#[test]
fn two_routes_never_share_a_local_bucket() {
    let up = Upstream::start("u");
    let gw = Gateway::start(&format!(
        r#"
[upstreams.u]
targets = ["{}"]
[routes.a]
paths = ["/a"]
upstream = "u"
[routes.a.plugins.rate_limit]
requests = 3
per = "1m"
key = "ip"
store = "local"
[routes.b]
paths = ["/b"]
upstream = "u"
[routes.b.plugins.rate_limit]
requests = 3
per = "1m"
key = "ip"
store = "local"
"#,
        up.addr
    ));
    let a: Vec<u16> = (0..4).map(|_| gw.get("/a").status).collect();
    assert_eq!(a, vec![200, 200, 200, 429]);
    let b: Vec<u16> = (0..4).map(|_| gw.get("/b").status).collect();
    assert_eq!(b, vec![200, 200, 200, 429], "/b has its own bucket");
}

#[test]
fn made_up_methods_do_not_grow_the_metric_series() {
    let up = Upstream::start("u");
    let gw = Gateway::start(&format!(
        "[upstreams.u]\ntargets = [\"{}\"]\n[routes.r]\npaths = [\"/\"]\nupstream = \"u\"\n",
        up.addr
    ));
    for i in 0..50 {
        let r = request(&gw.addr, &format!("FOO{i}"), "/", &[], None);
        assert!(r.status < 500, "{}", r.status);
    }
    assert_eq!(gw.get("/").status, 200);
    let metrics = gw.admin_get("/metrics").body;
    let series: Vec<&str> = metrics.lines().filter(|l| l.starts_with("gatehouse_requests_total{")).collect();
    assert!(!metrics.contains("method=\"FOO"), "a client chose a label value: {series:?}");
    assert!(
        gw.metric(r#"gatehouse_requests_total{method="other",route="r",status="200"}"#) >= 50.0,
        "{series:?}"
    );
    assert!(gw.metric(r#"gatehouse_requests_total{method="GET",route="r",status="200"}"#) >= 1.0);
}

#[test]
fn clients_cannot_eject_a_healthy_target() {
    let up = Upstream::start("u");
    let gw = Gateway::start(&format!(
        r#"
[upstreams.u]
targets = ["{}"]
retries = 0
[upstreams.u.circuit_breaker]
consecutive_failures = 3
max_ejected_percent = 100
[routes.r]
paths = ["/"]
upstream = "u"
max_body = "1KiB"
"#,
        up.addr
    ));
    // POSTs whose client hangs up mid-body.
    for _ in 0..10 {
        let mut s = TcpStream::connect(&gw.addr).unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789")
            .unwrap();
        drop(s);
    }
    // The gateway's own 413 for a body past max_body, mid-stream.
    for _ in 0..5 {
        let mut s = TcpStream::connect(&gw.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap();
        let chunk = format!("800\r\n{}\r\n", "z".repeat(0x800));
        let _ = s.write_all(chunk.as_bytes());
        let _ = common::client::read_response(&mut s);
    }
    wait_until(Duration::from_secs(5), "the aborted requests to be logged", || {
        gw.access_log().len() >= 15
    });
    for _ in 0..3 {
        assert_eq!(gw.get("/").status, 200, "the target was ejected by clients");
    }
    let ejected = gw.metric(&format!(
        r#"gatehouse_upstream_target_ejected{{target="{}",upstream="u"}}"#,
        up.addr
    ));
    assert_eq!(ejected, 0.0);
    assert_eq!(
        gw.metric(&format!(
            r#"gatehouse_upstream_ejections_total{{target="{}",upstream="u"}}"#,
            up.addr
        )),
        0.0
    );
}

#[test]
fn fleet_limits_resume_as_soon_as_redis_is_back() {
    let up = Upstream::start("u");
    let mut redis = Redis::start();
    let gw = Gateway::start(&format!(
        r#"
[store]
redis = "{}"
timeout = "50ms"
on_error = "allow"
[upstreams.u]
targets = ["{}"]
[routes.r]
paths = ["/"]
upstream = "u"
[routes.r.plugins.rate_limit]
requests = 30
per = "10s"
key = "route"
store = "redis"
[consumers.acme]
keys = ["acme-key"]
[routes.q]
paths = ["/q"]
upstream = "u"
[routes.q.plugins.key_auth]
[routes.q.plugins.quota]
requests = 3
per = "day"
store = "redis"
"#,
        redis.url(),
        up.addr
    ));
    assert!(gw.get("/").header("ratelimit").is_some(), "decided by Redis");
    redis.stop();
    let r = gw.get("/");
    assert_eq!(r.status, 200, "on_error = allow while Redis is down");
    assert!(r.header("ratelimit").is_none());
    redis.restart();
    // Within a second the limit is enforced again, with no gateway restart.
    wait_until(Duration::from_secs(1), "the rate limit to be decided by Redis again", || {
        gw.get("/").header("ratelimit").is_some()
    });
    let admitted = (0..35).filter(|_| gw.get("/").status == 200).count();
    assert!(admitted <= 30, "{admitted} of 35 admitted over a 30-per-10s limit");
    let q: Vec<u16> = (0..5)
        .map(|_| request(&gw.addr, "GET", "/q", &[("x-api-key", "acme-key")], None).status)
        .collect();
    assert_eq!(q, vec![200, 200, 200, 429, 429], "quotas in Redis resume too");
}

fn quota_gateway(up: &Upstream) -> Gateway {
    Gateway::start(&format!(
        r#"
[store]
path = "{{dir}}/store"
[consumers.acme]
keys = ["acme-key"]
[upstreams.u]
targets = ["{}"]
[routes.q]
paths = ["/"]
upstream = "u"
[routes.q.plugins.key_auth]
[routes.q.plugins.quota]
requests = 5
per = "day"
"#,
        up.addr
    ))
}

fn spend(gw: &Gateway, n: usize) -> Vec<u16> {
    (0..n)
        .map(|_| request(&gw.addr, "GET", "/", &[("x-api-key", "acme-key")], None).status)
        .collect()
}

#[test]
fn quota_counts_survive_every_kind_of_stop() {
    let up = Upstream::start("u");
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let mut gw = quota_gateway(&up);
        assert_eq!(spend(&gw, 3), vec![200, 200, 200]);
        // Straight away: no waiting for the once-a-second flusher.
        gw.signal(signal);
        assert!(gw.wait_exit(Duration::from_secs(10)), "signal {signal}: process exits");
        gw.spawn(&[]);
        assert_eq!(
            spend(&gw, 4),
            vec![200, 200, 429, 429],
            "signal {signal}: 5 per day across the stop"
        );
    }
}
