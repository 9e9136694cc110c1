//! The shipped Grafana dashboard and Prometheus rules: promtool accepts the rules, the
//! dashboard is a Grafana dashboard model, and every metric either file names is one the
//! gateway really exports (checked against `/metrics` of a gateway that served traffic).

mod common;
use common::otlp::Collector;
use common::{request, wait_until, Gateway, Upstream};
use std::collections::BTreeSet;
use std::time::Duration;

fn root() -> &'static str {
    env!("CARGO_MANIFEST_DIR")
}

/// PromQL identifiers starting with `gatehouse_` (recording rules' names have colons, so
/// `route:gatehouse_errors:ratio_rate5m` is one identifier, not a metric).
fn metric_names(promql: &str, out: &mut BTreeSet<String>) {
    let mut token = String::new();
    for ch in promql.chars().chain(std::iter::once(' ')) {
        if ch.is_ascii_alphanumeric() || ch == '_' || ch == ':' {
            token.push(ch);
        } else {
            if token.starts_with("gatehouse_") && !token.contains(':') {
                out.insert(std::mem::take(&mut token));
            }
            token.clear();
        }
    }
}

fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(format!("{}/conf/grafana/gatehouse.json", root())).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(v["uid"], "gatehouse");
    assert!(v["schemaVersion"].as_u64().unwrap() >= 36);
    let panels = v["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().expect("panel id")), "duplicate panel id in {p}");
        for k in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][k].is_u64(), "panel {} has no gridPos.{k}", p["title"]);
        }
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("panel {} has no targets", p["title"]));
        assert!(!targets.is_empty());
        for t in targets {
            exprs.push(t["expr"].as_str().expect("expr").to_string());
        }
    }
    assert!(exprs.len() >= 20, "{} queries", exprs.len());
    exprs
}

#[test]
fn promtool_accepts_the_rules() {
    let rules = format!("{}/conf/prometheus/gatehouse-rules.yml", root());
    let out = std::process::Command::new("promtool")
        .args(["check", "rules", &rules])
        .output()
        .expect("promtool (Debian's prometheus package; scripts/setup installs it)");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{said}");
    assert!(said.contains("SUCCESS"), "{said}");
}

#[test]
fn every_metric_the_dashboard_and_the_rules_name_is_exported() {
    let mut names = BTreeSet::new();
    for e in dashboard_exprs() {
        metric_names(&e, &mut names);
    }
    let rules = std::fs::read_to_string(format!("{}/conf/prometheus/gatehouse-rules.yml", root())).unwrap();
    for line in rules.lines() {
        metric_names(line.split('#').next().unwrap_or(""), &mut names);
    }
    assert!(names.len() >= 20, "{names:?}");

    // A gateway whose config touches every family: TLS certificate, cache, key auth with a
    // consumer, a refused request, tracing, a reload.
    let c = Collector::start();
    let up = Upstream::start("u");
    let dir = common::gateway::test_dir();
    let ca = common::tls::Ca::new("dash-ca");
    let leaf = ca.leaf(&dir, "site", &["site.test"], -1, 30);
    let gw = Gateway::start(&format!(
        r#"
[tls.certificates.site]
cert = "file:{cert}"
key = "file:{key}"
[tracing]
endpoint = "{otlp}"
flush_interval = "50ms"
[metering]
spool_dir = "{dir}/metering"
[metering.sinks.archive]
type = "file"
path = "{dir}/usage.jsonl"
[consumers.acme]
keys = ["acme-key-1"]
[upstreams.u]
targets = ["{up}"]
[routes.api]
paths = ["/api"]
upstream = "u"
[routes.api.plugins.key_auth]
[routes.cached]
paths = ["/cached"]
upstream = "u"
[routes.cached.plugins.cache]
default_ttl = "1m"
"#,
        cert = leaf.cert.display(),
        key = leaf.key.display(),
        otlp = c.endpoint(),
        up = up.addr,
        dir = dir.display()
    ));
    assert_eq!(request(&gw.addr, "GET", "/api/x", &[("x-api-key", "acme-key-1")], None).status, 200);
    assert_eq!(gw.get("/api/x").status, 401);
    assert_eq!(gw.get("/cached/a").status, 200);
    assert_eq!(gw.reload().status, 200);
    wait_until(Duration::from_secs(10), "spans exported", || {
        gw.metric("gatehouse_tracing_spans_exported_total") > 0.0
    });

    let exposition = gw.admin_get("/metrics").body;
    let families: BTreeSet<&str> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| {
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .filter(|b| families.contains(b));
            !families.contains(n.as_str()) && base.is_none()
        })
        .collect();
    assert!(missing.is_empty(), "named in the dashboard or rules but not exported: {missing:?}");
}
