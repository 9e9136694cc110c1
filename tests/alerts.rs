//! Alerts through real sockets: the gateway evaluates its rules over real traffic and
//! delivers to receivers that are real HTTP servers (the scripted upstream, which records
//! every request). Windows and buckets are set short so that a test sees a whole life
//! (pending, firing, resolved) in seconds; the evaluation code is the same at any length.

mod common;
use common::{wait_until, Gateway, Upstream};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

fn notices(hook: &Upstream, path: &str) -> Vec<serde_json::Value> {
    hook.recorded()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == path)
        .map(|r| serde_json::from_slice(&r.body).expect("a notice is JSON"))
        .collect()
}

fn alerts_section(hook: &Upstream, rules: &str) -> String {
    format!(
        r#"
[alerts]
evaluation_interval = "100ms"
bucket = "100ms"
repeat_interval = "1h"
[alerts.receivers.ops]
type = "webhook"
url = "http://{hook}/hook"
timeout = "1s"
[alerts.receivers.slack]
type = "slack"
url = "http://{hook}/slack"
{rules}
"#,
        hook = hook.addr
    )
}

#[test]
fn a_5xx_burst_fires_the_burn_rate_alert_once_and_recovery_resolves_it() {
    let app = Upstream::start("app");
    let hook = Upstream::start("hook");
    app.set(|b| b.status = 500);
    let rules = r#"
[alerts.rules.availability]
kind = "slo_burn_rate"
objective = 0.99
routes = ["app"]
min_requests = 10
windows = [{ long = "2s", short = "500ms", burn = 2 }]
receivers = ["ops", "slack"]
"#;
    let gw = Gateway::start(&format!(
        "[upstreams.app]\ntargets = [\"{}\"]\n[routes.app]\npaths = [\"/\"]\nupstream = \"app\"\n{}",
        app.addr,
        alerts_section(&hook, rules)
    ));
    // Below min_requests nothing fires, whatever the share of errors.
    for _ in 0..5 {
        assert_eq!(gw.get("/x").status, 500);
    }
    for _ in 0..20 {
        assert_eq!(gw.get("/x").status, 500);
    }
    wait_until(WAIT, "the firing notice", || !notices(&hook, "/hook").is_empty());
    let n = &notices(&hook, "/hook")[0];
    assert_eq!(n["version"], "4");
    assert_eq!(n["status"], "firing");
    assert_eq!(n["receiver"], "ops");
    let a = &n["alerts"][0];
    assert_eq!(a["labels"]["alertname"], "availability");
    assert_eq!(a["labels"]["route"], "app");
    assert_eq!(a["labels"]["severity"], "page");
    assert_eq!(a["endsAt"], "0001-01-01T00:00:00Z");
    assert!(a["startsAt"].as_str().unwrap().ends_with('Z'));
    let fp = a["fingerprint"].as_str().unwrap().to_string();
    assert_eq!(fp.len(), 16);
    assert!(a["annotations"]["summary"].as_str().unwrap().contains("burning"), "{a}");
    wait_until(WAIT, "the slack notice", || !notices(&hook, "/slack").is_empty());
    let text = notices(&hook, "/slack")[0]["text"].as_str().unwrap().to_string();
    assert!(text.starts_with("[FIRING] availability"), "{text}");
    let listed = gw.admin_get("/alerts").json();
    assert_eq!(listed["alerts"][0]["state"], "firing", "{listed}");
    assert_eq!(listed["alerts"][0]["fingerprint"], fp.as_str());

    // Recovery: good answers push the errors out of the windows.
    app.set(|b| b.status = 200);
    wait_until(WAIT, "the resolved notice", || {
        for _ in 0..5 {
            gw.get("/x");
        }
        notices(&hook, "/hook").iter().any(|n| n["status"] == "resolved")
    });
    let all = notices(&hook, "/hook");
    let firing = all.iter().filter(|n| n["status"] == "firing").count();
    assert_eq!(firing, 1, "one notice per fingerprint per repeat interval: {all:#?}");
    let resolved = all.iter().find(|n| n["status"] == "resolved").unwrap();
    assert_eq!(resolved["alerts"][0]["fingerprint"], fp.as_str());
    assert_ne!(resolved["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    assert_eq!(gw.admin_get("/alerts").json()["alerts"].as_array().unwrap().len(), 0);
}

#[test]
fn upstream_down_fires_when_health_checks_take_every_target_out() {
    let users = Upstream::start("users");
    let hook = Upstream::start("hook");
    let rules = "[alerts.rules.users_down]\nkind = \"upstream_down\"\nupstream = \"users\"\nfor = \"300ms\"\nreceivers = [\"ops\"]\n";
    let _gw = Gateway::start(&format!(
        r#"
[upstreams.users]
targets = ["{}"]
[upstreams.users.health_check]
type = "http"
path = "/healthz"
interval = "100ms"
timeout = "100ms"
unhealthy_after = 1
[routes.users]
paths = ["/"]
upstream = "users"
{}"#,
        users.addr,
        alerts_section(&hook, rules)
    ));
    wait_until(WAIT, "health checks", || users.health_checks() >= 2);
    assert!(notices(&hook, "/hook").is_empty());
    users.kill();
    wait_until(WAIT, "the upstream_down notice", || !notices(&hook, "/hook").is_empty());
    let a = &notices(&hook, "/hook")[0]["alerts"][0];
    assert_eq!(a["labels"]["alertname"], "users_down");
    assert_eq!(a["labels"]["upstream"], "users");
    users.revive();
    wait_until(WAIT, "resolved once the target is back", || {
        notices(&hook, "/hook").iter().any(|n| n["status"] == "resolved")
    });
}

#[test]
fn a_receiver_that_was_down_gets_the_alert_when_it_comes_back() {
    let app = Upstream::start("app");
    let hook = Upstream::start("hook");
    let rules = "[alerts.rules.reload]\nkind = \"reload_failed\"\nreceivers = [\"ops\"]\n";
    let body = format!(
        "[upstreams.app]\ntargets = [\"{}\"]\n[routes.app]\npaths = [\"/\"]\nupstream = \"app\"\n{}",
        app.addr,
        alerts_section(&hook, rules)
    );
    let gw = Gateway::start(&body);
    hook.kill();
    // A refused reload: the old config keeps serving, and the alert fires.
    gw.write_config(&format!("{body}\n[routes.broken]\nupstream = \"nowhere\"\n"));
    assert_ne!(gw.reload().status, 200);
    wait_until(WAIT, "the alert to be active", || {
        gw.admin_get("/alerts").json()["alerts"].as_array().is_some_and(|a| !a.is_empty())
    });
    wait_until(WAIT, "delivery attempts counted", || {
        gw.metric(r#"gatehouse_alert_notifications_total{receiver="ops",result="retried"}"#) >= 1.0
    });
    assert_eq!(gw.get("/x").status, 200);
    hook.revive();
    wait_until(WAIT, "the notice after the receiver came back", || {
        !notices(&hook, "/hook").is_empty()
    });
    let a = &notices(&hook, "/hook")[0]["alerts"][0];
    assert_eq!(a["labels"]["alertname"], "reload");
    assert!(a["annotations"]["description"].as_str().unwrap().contains("nowhere"), "{a}");
}

/// The rule under test after a listener, an upstream and a route it may name.
fn refused(text: &str, key: &str, reason: &str) {
    let head = "[listeners.public]\naddr = \"127.0.0.1:18080\"\n[upstreams.u]\ntargets = [\"127.0.0.1:9\"]\n[routes.r]\nupstream = \"u\"\n";
    common::gateway::refused(&format!("{head}{text}"), key, reason);
}

#[test]
fn bad_rules_are_refused_with_their_key_path() {
    refused("[alerts.rules.x]\nkind = \"sometimes\"\n", "alerts.rules.x.kind", "unknown variant");
    refused(
        "[alerts.rules.x]\nkind = \"slo_burn_rate\"\nobjective = 0.999\nreceivers = [\"pager\"]\n",
        "alerts.rules.x.receivers[0]",
        "receiver `pager` is not defined",
    );
    refused(
        "[alerts.rules.x]\nkind = \"slo_burn_rate\"\nobjective = 1.5\n",
        "alerts.rules.x.objective",
        "between 0 and 1",
    );
    refused(
        "[alerts.rules.x]\nkind = \"latency_slo\"\nobjective = 0.99\n",
        "alerts.rules.x.threshold",
        "required",
    );
    refused(
        "[alerts.rules.x]\nkind = \"upstream_down\"\nupstream = \"v\"\n",
        "alerts.rules.x.upstream",
        "`v` is not defined",
    );
    refused(
        "[alerts.rules.x]\nkind = \"cert_expiry\"\nwarn_before = \"14d\"\nobjective = 0.9\n",
        "alerts.rules.x.objective",
        "not a setting",
    );
    // With 90% the worst burn rate is 10: the default 14.4 pair could never fire.
    refused(
        "[alerts.rules.x]\nkind = \"slo_burn_rate\"\nobjective = 0.9\n",
        "alerts.rules.x.windows[0].burn",
        "can never be reached",
    );
    refused(
        "[alerts.rules.x]\nkind = \"reload_failed\"\nlabels = { alertname = \"other\" }\n",
        "alerts.rules.x.labels.alertname",
        "set by the gateway",
    );
}

#[test]
fn a_receiver_that_refuses_a_notice_does_not_hold_the_next_one() {
    let app = Upstream::start("app");
    let hook = Upstream::start("hook");
    hook.set(|b| b.status = 410);
    let rules = "[alerts.rules.reload]\nkind = \"reload_failed\"\nreceivers = [\"ops\"]\n";
    let body = format!(
        "[upstreams.app]\ntargets = [\"{}\"]\n[routes.app]\npaths = [\"/\"]\nupstream = \"app\"\n{}",
        app.addr,
        alerts_section(&hook, rules)
    );
    let gw = Gateway::start(&body);
    gw.write_config(&format!("{body}\n[routes.broken]\nupstream = \"nowhere\"\n"));
    assert_ne!(gw.reload().status, 200);
    wait_until(WAIT, "the refused notice counted", || {
        gw.metric(r#"gatehouse_alert_notifications_total{receiver="ops",result="rejected"}"#) >= 1.0
    });
    // The receiver works again, and a good reload resolves the alert: that notice arrives.
    hook.set(|b| b.status = 200);
    gw.write_config(&body);
    assert_eq!(gw.reload().status, 200);
    wait_until(WAIT, "the resolved notice", || {
        notices(&hook, "/hook").iter().any(|n| n["status"] == "resolved")
    });
}

#[test]
fn export_rules_prints_a_rules_file_promtool_accepts() {
    let root = env!("CARGO_MANIFEST_DIR");
    let example = format!("{root}/conf/examples/observability.toml");
    let out = std::process::Command::new(Gateway::bin())
        .args(["-c", &example, "alerts", "export-rules"])
        .env("OTLP_TOKEN", "x")
        .env("SLACK_WEBHOOK_URL", "http://127.0.0.1:9/slack")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    for name in [
        "AvailabilityBurnRate1h5m",
        "AvailabilityBurnRate3d6h",
        "LatencyBurnRate6h30m",
        "UsersDown",
        "Certs",
    ] {
        assert!(text.contains(name), "{name} missing in:\n{text}");
    }
    let dir = common::gateway::test_dir();
    let file = dir.join("rules.yml");
    std::fs::write(&file, &text).unwrap();
    let check = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool");
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn certificates_near_expiry_and_consumers_near_their_quota_fire() {
    let app = Upstream::start("app");
    let hook = Upstream::start("hook");
    let dir = common::gateway::test_dir();
    let ca = common::tls::Ca::new("alerts-ca");
    let soon = ca.leaf(&dir, "soon", &["soon.test"], -1, 5);
    let later = ca.leaf(&dir, "later", &["later.test"], -1, 90);
    let rules = "[alerts.rules.certs]\nkind = \"cert_expiry\"\nwarn_before = \"14d\"\nreceivers = [\"ops\"]\n\
                 [alerts.rules.quota]\nkind = \"quota_near_exhaustion\"\nthreshold = 0.5\nreceivers = [\"ops\"]\n";
    let gw = Gateway::start(&format!(
        r#"
[tls.certificates.soon]
cert = "file:{}"
key = "file:{}"
[tls.certificates.later]
cert = "file:{}"
key = "file:{}"
[plans.gold]
quota = {{ requests = 10, per = "day" }}
[consumers.acme]
keys = ["acme-key"]
plan = "gold"
[upstreams.app]
targets = ["{}"]
[routes.q]
paths = ["/"]
upstream = "app"
[routes.q.plugins.key_auth]
[routes.q.plugins.quota]
{}"#,
        soon.cert.display(),
        soon.key.display(),
        later.cert.display(),
        later.key.display(),
        app.addr,
        alerts_section(&hook, rules)
    ));
    let fired = |label: &str, value: &str| {
        notices(&hook, "/hook")
            .iter()
            .any(|n| n["status"] == "firing" && n["alerts"][0]["labels"][label] == value)
    };
    wait_until(WAIT, "the certificate alert", || fired("cert", "soon"));
    assert!(!fired("cert", "later"), "a certificate 90 days out fired");
    // Four of ten: below the threshold. Then the fifth.
    for _ in 0..4 {
        assert_eq!(
            common::request(&gw.addr, "GET", "/", &[("x-api-key", "acme-key")], None).status,
            200
        );
    }
    // Two evaluations after the requests (and their delivery tick): nothing may fire.
    let evaluated = gw.metric("gatehouse_alert_evaluations_total");
    wait_until(WAIT, "two evaluations after the requests", || {
        gw.metric("gatehouse_alert_evaluations_total") >= evaluated + 2.0
    });
    assert!(!fired("consumer", "acme"), "fired below the threshold");
    assert_eq!(
        common::request(&gw.addr, "GET", "/", &[("x-api-key", "acme-key")], None).status,
        200
    );
    wait_until(WAIT, "the quota alert", || fired("consumer", "acme"));
    let n = notices(&hook, "/hook")
        .into_iter()
        .find(|n| n["alerts"][0]["labels"]["consumer"] == "acme")
        .unwrap();
    assert_eq!(n["alerts"][0]["labels"]["plan"], "gold");
    assert!(
        n["alerts"][0]["annotations"]["summary"].as_str().unwrap().contains("used 5 of 10"),
        "{n}"
    );
}

#[test]
fn a_reload_that_removes_alerts_resolves_what_was_firing() {
    let users = Upstream::start("users");
    let hook = Upstream::start("hook");
    let rules = "[alerts.rules.users_down]\nkind = \"upstream_down\"\nupstream = \"users\"\nfor = \"0s\"\nreceivers = [\"ops\"]\n";
    let base = format!(
        "[upstreams.users]\ntargets = [\"{}\"]\n[upstreams.users.health_check]\ntype = \"http\"\npath = \"/healthz\"\n\
         interval = \"100ms\"\ntimeout = \"100ms\"\nunhealthy_after = 1\n[routes.users]\npaths = [\"/\"]\nupstream = \"users\"\n",
        users.addr
    );
    let gw = Gateway::start(&format!("{base}{}", alerts_section(&hook, rules)));
    users.kill();
    wait_until(WAIT, "the firing notice", || {
        notices(&hook, "/hook").iter().any(|n| n["status"] == "firing")
    });
    // The upstream stays down; only the rules go away.
    gw.write_config(&base);
    assert_eq!(gw.reload().status, 200);
    wait_until(WAIT, "the resolved notice", || {
        notices(&hook, "/hook").iter().any(|n| n["status"] == "resolved")
    });
    assert_eq!(gw.admin_get("/alerts").json()["alerts"].as_array().unwrap().len(), 0);
}
