//! DNS service discovery against a real DNS server (dnsmasq on 127.0.0.1): targets follow
//! record changes within the TTL, SRV priorities and weights decide where traffic goes,
//! a dead server keeps the last good set, NXDOMAIN empties the cluster and recovery
//! refills it, and targets that stay keep their health state.

mod common;
use common::dns::Dns;
use common::{request, wait_until, Gateway, Upstream};
use std::collections::HashMap;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

fn counts(gw: &Gateway, n: usize) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for _ in 0..n {
        let r = gw.get("/");
        *m.entry(format!("{} {}", r.status, r.body)).or_insert(0) += 1;
    }
    m
}

fn discovered(gw: &Gateway, upstream: &str) -> serde_json::Value {
    gw.admin_get("/status").json()["discovery"][upstream].clone()
}

/// Two upstream servers on one port of two loopback addresses, as the A records of one
/// name would be.
fn pair() -> (Upstream, Upstream, u16) {
    let a = Upstream::start_on("a", "127.0.0.21:0");
    let port: u16 = a.addr.rsplit_once(':').unwrap().1.parse().unwrap();
    let b = Upstream::start_on("b", &format!("127.0.0.22:{port}"));
    (a, b, port)
}

fn a_record(dns: &Dns, port: u16, extra: &str) -> String {
    format!(
        r#"
[upstreams.api]
discovery = {{ type = "dns", name = "api.svc.test", port = {port}, record = "a", resolvers = ["{}"], min_ttl = "200ms", max_ttl = "2s" }}
{extra}
[routes.api]
paths = ["/"]
upstream = "api"
"#,
        dns.addr
    )
}

#[test]
fn targets_follow_a_record_change_within_the_ttl_with_no_failed_request() {
    let dir = common::gateway::test_dir();
    let (_a, b, port) = pair();
    let dns = Dns::start(&dir, "127.0.0.21 api.svc.test\n", &[]);
    let gw = Gateway::start(&a_record(&dns, port, ""));
    assert_eq!(counts(&gw, 20), HashMap::from([("200 a".to_string(), 20)]));
    assert_eq!(gw.metric("gatehouse_discovery_targets{upstream=\"api\"}"), 1.0);

    dns.set_hosts("127.0.0.21 api.svc.test\n127.0.0.22 api.svc.test\n");
    wait_until(WAIT, "both A records in use", || counts(&gw, 10).len() == 2);
    dns.set_hosts("127.0.0.22 api.svc.test\n");
    // a is still up: requests in flight to it finish, new ones go to b. None fails.
    let mut seen = HashMap::new();
    wait_until(WAIT, "only b", || {
        let c = counts(&gw, 10);
        for k in c.keys() {
            *seen.entry(k.clone()).or_insert(0) += 1;
        }
        c == HashMap::from([("200 b".to_string(), 10)])
    });
    assert!(
        seen.keys().all(|k| k.starts_with("200 ")),
        "a request failed during the change: {seen:?}"
    );
    assert_eq!(discovered(&gw, "api")["targets"], serde_json::json!([format!("127.0.0.22:{port}")]));
    drop(b);
}

#[test]
fn srv_priorities_and_weights_decide_where_traffic_goes() {
    let dir = common::gateway::test_dir();
    let light = Upstream::start("light");
    let heavy = Upstream::start("heavy");
    let backup = Upstream::start("backup");
    let port = |u: &Upstream| u.addr.rsplit_once(':').unwrap().1.to_string();
    let srv = [
        format!("_http._tcp.api.svc.test,light.svc.test,{},10,1", port(&light)),
        format!("_http._tcp.api.svc.test,heavy.svc.test,{},10,3", port(&heavy)),
        format!("_http._tcp.api.svc.test,backup.svc.test,{},20,1", port(&backup)),
    ];
    let dns = Dns::start(&dir, "127.0.0.1 light.svc.test heavy.svc.test backup.svc.test\n", &srv);
    let gw = Gateway::start(&format!(
        r#"
[upstreams.api]
discovery = {{ type = "dns", name = "_http._tcp.api.svc.test", record = "srv", resolvers = ["{}"], min_ttl = "200ms" }}
balance = "random"
retries = 2
[routes.api]
paths = ["/"]
upstream = "api"
"#,
        dns.addr
    ));
    let c = counts(&gw, 400);
    let (l, h) = (c.get("200 light").copied().unwrap_or(0), c.get("200 heavy").copied().unwrap_or(0));
    assert_eq!(l + h, 400, "priority 20 serves only when 10 cannot: {c:?}");
    // Weight 3 of 4: 300 expected; 400 draws put 255-345 at about 4.5 sigma.
    assert!((255..=345).contains(&h), "heavy got {h} of 400: {c:?}");
    // The priority-10 targets gone: the backup takes over.
    light.kill();
    heavy.kill();
    wait_until(WAIT, "the backup serving", || gw.get("/").body == "backup");
    drop(dns);
}

#[test]
fn a_dead_dns_server_keeps_the_last_good_targets() {
    let dir = common::gateway::test_dir();
    let (a, _b, port) = pair();
    let mut dns = Dns::start(&dir, "127.0.0.21 api.svc.test\n", &[]);
    let gw = Gateway::start(&a_record(&dns, port, ""));
    assert_eq!(gw.get("/").body, "a");
    dns.stop();
    let failures = "gatehouse_discovery_failures_total{upstream=\"api\"}";
    wait_until(WAIT, "a failed DNS round", || gw.metric(failures) >= 1.0);
    assert_eq!(counts(&gw, 20), HashMap::from([("200 a".to_string(), 20)]), "the last set serves");
    assert!(discovered(&gw, "api")["last_error"].is_string());
    // Up but failing (REFUSED for everything): still a failure, not "no such name".
    dns.refuse_all();
    let before = gw.metric(failures);
    wait_until(WAIT, "a refused DNS round", || gw.metric(failures) > before);
    assert_eq!(
        counts(&gw, 20),
        HashMap::from([("200 a".to_string(), 20)]),
        "REFUSED keeps the last set"
    );
    // Back, with a new record: picked up again.
    dns.restart();
    dns.set_hosts("127.0.0.22 api.svc.test\n");
    wait_until(WAIT, "the new record after the server is back", || gw.get("/").body == "b");
    assert!(discovered(&gw, "api")["last_error"].is_null());
    drop(a);
}

#[test]
fn nxdomain_empties_the_cluster_and_recovery_refills_it() {
    let dir = common::gateway::test_dir();
    let (a, _b, port) = pair();
    let dns = Dns::start(&dir, "127.0.0.21 api.svc.test\n", &[]);
    let gw = Gateway::start(&a_record(&dns, port, ""));
    assert_eq!(gw.get("/").status, 200);
    dns.set_hosts("127.0.0.99 other.svc.test\n");
    wait_until(WAIT, "503 once the name is gone", || gw.get("/").status == 503);
    assert_eq!(discovered(&gw, "api")["targets"], serde_json::json!([]));
    assert_eq!(gw.metric("gatehouse_discovery_targets{upstream=\"api\"}"), 0.0);
    let started = std::time::Instant::now();
    assert_eq!(gw.get("/").status, 503);
    assert!(started.elapsed() < Duration::from_secs(1), "an empty cluster answers at once");
    dns.set_hosts("127.0.0.21 api.svc.test\n");
    wait_until(WAIT, "the name back", || gw.get("/").status == 200);
    assert_eq!(gw.get("/").body, "a");
    drop(a);
}

#[test]
fn targets_that_stay_keep_their_health_state() {
    let dir = common::gateway::test_dir();
    let (a, b, port) = pair();
    let c = Upstream::start_on("c", &format!("127.0.0.23:{port}"));
    // Checks rarely, and needs 3 good ones to readmit: a forgotten state would show b
    // healthy again at the first check of the rebuilt cluster.
    let hc = "[upstreams.api.health_check]\ntype = \"http\"\npath = \"/healthz\"\ninterval = \"1h\"\ntimeout = \"500ms\"\nunhealthy_after = 1\nhealthy_after = 3\n";
    b.set(|x| x.health = 503);
    let dns = Dns::start(&dir, "127.0.0.21 api.svc.test\n127.0.0.22 api.svc.test\n", &[]);
    let gw = Gateway::start(&a_record(&dns, port, hc));
    let healthy = |gw: &Gateway, ip: &str| -> Option<bool> {
        let s = gw.admin_get("/status").json();
        s["clusters"]["api"]["targets"]
            .as_array()?
            .iter()
            .find(|t| t["addr"] == format!("{ip}:{port}"))
            .map(|t| t["healthy"].as_bool().unwrap_or(true))
    };
    wait_until(WAIT, "b checked and out", || healthy(&gw, "127.0.0.22") == Some(false));
    b.set(|x| x.health = 200);
    dns.set_hosts("127.0.0.21 api.svc.test\n127.0.0.22 api.svc.test\n127.0.0.23 api.svc.test\n");
    wait_until(WAIT, "c discovered", || healthy(&gw, "127.0.0.23").is_some());
    wait_until(WAIT, "c checked", || c.health_checks() >= 1);
    assert_eq!(healthy(&gw, "127.0.0.22"), Some(false), "b's state went with the old target set");
    assert_eq!(healthy(&gw, "127.0.0.21"), Some(true));
    assert!(counts(&gw, 20).keys().all(|k| k != "200 b"), "b got traffic while out");
    drop(a);
}

#[test]
fn a_hostname_target_is_resolved_and_a_bad_table_is_refused() {
    let up = Upstream::start("named");
    let port = up.addr.rsplit_once(':').unwrap().1;
    // localhost comes from the system's hosts file; only its IPv4 address is listening.
    let gw = Gateway::start(&format!(
        "[upstreams.u]\ntargets = [\"localhost:{port}\"]\nretries = 1\n[routes.r]\npaths = [\"/\"]\nupstream = \"u\"\n"
    ));
    let targets = discovered(&gw, "u")["targets"].to_string();
    assert!(targets.contains(&format!("127.0.0.1:{port}")), "{targets}");
    assert_eq!(request(&gw.addr, "GET", "/", &[], None).body, "named");

    let dir = common::gateway::test_dir();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[upstreams.u]\ndiscovery = { type = \"dns\", name = \"_x._tcp.a.test\", record = \"srv\", port = 80, resolvers = [\"nope\"] }\n",
    )
    .unwrap();
    let out = std::process::Command::new(Gateway::bin())
        .arg("-t")
        .arg("-c")
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for key in ["upstreams.u.discovery.port", "upstreams.u.discovery.resolvers"] {
        assert!(err.contains(key), "{key} not named in: {err}");
    }
}

#[test]
fn a_table_beside_a_hostname_target_and_a_reload_that_changes_the_table() {
    let dir = common::gateway::test_dir();
    let (_a, _b, port) = pair();
    let named = Upstream::start("named");
    let nport = named.addr.rsplit_once(':').unwrap().1.to_string();
    let mut dns = Dns::start(&dir, "127.0.0.21 api.svc.test\n", &[]);
    let resolver = dns.addr.clone();
    // The table's 200ms-2s and the host target's 5s-300s do not overlap: the gateway must
    // still start and resolve both (it once panicked clamping to an empty range).
    let body = |max: &str| {
        format!(
            r#"
[upstreams.api]
targets = ["localhost:{nport}"]
discovery = {{ type = "dns", name = "api.svc.test", port = {port}, resolvers = ["{}"], min_ttl = "200ms", max_ttl = "{max}" }}
retries = 1
[routes.api]
paths = ["/"]
upstream = "api"
"#,
            resolver
        )
    };
    let gw = Gateway::start(&body("2s"));
    let c = counts(&gw, 30);
    assert!(c.contains_key("200 a") && c.contains_key("200 named"), "{c:?}");
    // DNS down, and a reload that changes the table: the last answer keeps serving.
    dns.stop();
    gw.write_config(&body("3s"));
    assert_eq!(gw.reload().status, 200);
    let c = counts(&gw, 30);
    assert!(c.contains_key("200 a"), "the reload emptied the discovered targets: {c:?}");
}
