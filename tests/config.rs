//! Config refusal (`gatehouse -t`) for each kind of bad input, and hot reload.

mod common;
use common::gateway::{check, refused};
use common::{wait_until, Gateway, Upstream};
use std::process::Command;
use std::time::Duration;

const BASE: &str = r#"
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
"#;

#[test]
fn valid_config_passes_and_shipped_configs_pass() {
    let (code, err, _) = check(BASE);
    assert_eq!(code, 0, "{err}");
    let root = env!("CARGO_MANIFEST_DIR");
    let mut files = vec![format!("{root}/conf/gatehouse.toml")];
    for e in std::fs::read_dir(format!("{root}/conf/examples")).unwrap() {
        files.push(e.unwrap().path().display().to_string());
    }
    // The TLS example names certificate files under /etc/gatehouse: made here instead.
    let tls_example = tls_example_with_certificates(&format!("{root}/conf/examples/tls.toml"));
    for f in files.iter_mut().filter(|f| f.ends_with("/tls.toml")) {
        *f = tls_example.display().to_string();
    }
    // The metering example's spool and archive live under /var: moved to a test directory
    // (`-t` creates the spool directory to prove it writable).
    for f in files.iter_mut().filter(|f| f.ends_with("/metering.toml")) {
        let dir = common::gateway::test_dir();
        let text = std::fs::read_to_string(&*f)
            .unwrap()
            .replace("/var/lib/gatehouse/", &format!("{}/", dir.display()))
            .replace("/var/log/gatehouse/", &format!("{}/", dir.display()));
        let path = dir.join("metering.toml");
        std::fs::write(&path, text).unwrap();
        *f = path.display().to_string();
    }
    // A fleet node's file needs its etcd, and the shared half is no whole config:
    // tests/fleet.rs pushes and checks the pair against a real etcd.
    for f in files.iter().filter(|f| f.ends_with(".toml") && !f.contains("/fleet-")) {
        let out = Command::new(Gateway::bin())
            .arg("-t")
            .arg("-c")
            .arg(f)
            .env("GATEHOUSE_ADMIN_TOKEN", "x")
            .env("ACME_KEY", "x")
            .env("OTLP_TOKEN", "x")
            .env("OPENMETER_TOKEN", "x")
            .env("LAGO_API_KEY", "x")
            .env("AWS_ACCESS_KEY_ID", "x")
            .env("AWS_SECRET_ACCESS_KEY", "x")
            .env("ANN_API_KEY", "ann-example-key-0123")
            .env("SLACK_WEBHOOK_URL", "http://127.0.0.1:9/slack")
            .output()
            .unwrap();
        assert!(out.status.success(), "{f}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// conf/examples/tls.toml with every file it names made (valid certificates and keys) in a
/// test directory.
fn tls_example_with_certificates(example: &str) -> std::path::PathBuf {
    use common::tls::Ca;
    let dir = common::gateway::test_dir();
    let (site_ca, clients, internal) = (Ca::new("site CA"), Ca::new("clients CA"), Ca::new("internal CA"));
    let copy = |from: &std::path::Path, to: &str| std::fs::copy(from, dir.join(to)).map(|_| ()).unwrap();
    let example_org = site_ca.leaf(&dir, "example", &["example.org", "*.example.org"], -1, 90);
    copy(&example_org.cert, "example.org.crt");
    copy(&example_org.key, "example.org.key");
    let legacy = site_ca.leaf(&dir, "legacy", &["legacy.example.net"], -1, 90);
    copy(&legacy.cert, "legacy.example.net.crt");
    copy(&legacy.key, "legacy.example.net.key");
    let gw = internal.client(&dir, "gw-client", "gatehouse", "Edge");
    copy(&gw.cert, "gw.crt");
    copy(&gw.key, "gw.key");
    clients.write(&dir, "clients-ca.pem");
    internal.write(&dir, "internal-ca.pem");
    let text = std::fs::read_to_string(example)
        .unwrap()
        .replace("/etc/gatehouse/", &format!("{}/", dir.display()));
    let path = dir.join("tls.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn each_kind_of_bad_input_is_refused_with_key_and_reason() {
    refused(
        &BASE.replace("[routes.users]", "[routes.users]\ncolour = \"red\""),
        "routes.users.colour",
        "unknown field `colour`",
    );
    refused(&format!("{BASE}\n[server2]\n"), "server2", "unknown field `server2`");
    refused(
        &BASE.replace("upstream = \"users\"", "upstream = \"nope\""),
        "routes.users.upstream",
        "upstream `nope` is not defined",
    );
    refused(
        &format!("{BASE}\n[routes.users.plugins.nosuch]\nx = 1\n"),
        "routes.users.plugins.nosuch",
        "unknown plugin `nosuch`",
    );
    refused(
        &format!("{BASE}\n[routes.users.plugins.headers]\nrequest_sett = {{}}\n"),
        "routes.users.plugins.headers.request_sett",
        "unknown field `request_sett`",
    );
    refused(
        &format!("{BASE}\n[listeners.other]\naddr = \"127.0.0.1:18080\"\n"),
        "listeners.public.addr",
        "duplicate listener",
    );
    refused(
        &BASE.replace("paths = [\"/users\"]", "paths = [\"~^/users/([0-9]+$\"]"),
        "routes.users.paths[0]",
        "invalid regex",
    );
    refused(
        &BASE.replace("[listeners.public]\naddr = \"127.0.0.1:18080\"", ""),
        "listeners",
        "at least one listener",
    );
    refused(
        &BASE.replace(
            "pid_file = \"/tmp/gh-test/gatehouse.pid\"",
            "pid_file = \"/tmp/gh-test/gatehouse.pid\"\ntrusted_proxies = [\"10.0.0.0/33\"]",
        ),
        "server.trusted_proxies[0]",
        "invalid CIDR",
    );
    refused(
        &BASE.replace("/tmp/gh-test/upgrade.sock", "run/upgrade.sock"),
        "server.upgrade_sock",
        "must be an absolute path",
    );
    refused(
        &BASE.replace(
            "[routes.users]",
            "[upstreams.users.health_check]\ninterval = \"soon\"\n[routes.users]",
        ),
        "upstreams.users.health_check.interval",
        "invalid duration",
    );
    refused(
        &BASE.replace("127.0.0.1:9001", "localhost"),
        "upstreams.users.targets[0]",
        "not an IP:port",
    );
    refused(
        &format!("{BASE}\n[admin]\naddr = \"0.0.0.0:9901\"\n"),
        "admin.token",
        "required when admin.addr",
    );
    refused(
        &format!("{BASE}\n[admin]\naddr = \"127.0.0.1:9901\"\ntoken = \"env:GH_SURELY_UNSET\"\n"),
        "admin.token",
        "GH_SURELY_UNSET",
    );
    refused(
        &BASE.replace("upstream = \"users\"", ""),
        "routes.users.upstream",
        "required unless",
    );
    // Streaming protocols: gRPC needs HTTP/2 to its targets; grpc-web bridges to gRPC.
    refused(
        &BASE.replace("upstream = \"users\"", "upstream = \"users\"\ngrpc = true"),
        "routes.users.grpc",
        "set http2 = true",
    );
    refused(
        &BASE.replace("upstream = \"users\"", "upstream = \"users\"\ngrpc_web = true"),
        "routes.users.grpc_web",
        "set grpc = true too",
    );
    refused(
        &format!(
            "{}\n[routes.users.plugins.cache]\n",
            BASE.replace("upstream = \"users\"", "upstream = \"users\"\ngrpc = true")
        ),
        "routes.users.plugins.cache",
        "never cached",
    );
    refused(
        &format!("{BASE}\n[upstreams.users.health_check]\ntype = \"grpc\"\n"),
        "upstreams.users.health_check.type",
        "needs http2 = true",
    );
    refused(
        &BASE.replace("upstream = \"users\"", "upstream = \"users\"\nwebsocket_idle_timeout = \"soon\""),
        "routes.users.websocket_idle_timeout",
        "soon",
    );
}

#[test]
fn several_errors_are_reported_together() {
    let text = BASE
        .replace("upstream = \"users\"", "upstream = \"nope\"")
        .replace("/tmp/gh-test/upgrade.sock", "rel.sock");
    let (code, err, _) = check(&text);
    assert_eq!(code, 1);
    assert!(
        err.contains("routes.users.upstream") && err.contains("server.upgrade_sock"),
        "{err}"
    );
}

fn two_routes(up: &Upstream, second: &str) -> String {
    format!(
        r#"
[upstreams.u]
targets = ["{up}"]
[upstreams.u.health_check]
path = "/healthz"
interval = "100ms"
timeout = "200ms"
unhealthy_after = 1
healthy_after = 100
[routes.main]
paths = ["/"]
upstream = "u"
{second}
"#,
        up = up.addr
    )
}

#[test]
fn reload_applies_changes_refuses_bad_files_and_keeps_health_state() {
    let up = Upstream::start("u");
    let spare = Upstream::start("spare");
    let gw = Gateway::start(&format!(
        "{}\n[upstreams.s]\ntargets = [\"{}\"]\n[upstreams.s.health_check]\npath = \"/healthz\"\ninterval = \"100ms\"\nunhealthy_after = 1\nhealthy_after = 1000\n[routes.spare]\npaths = [\"/spare\"]\nupstream = \"s\"\n",
        two_routes(&up, ""),
        spare.addr
    ));
    assert_eq!(gw.get("/new").body, "u");

    // A route change takes effect.
    gw.write_config(&format!(
        "{}\n[upstreams.s]\ntargets = [\"{}\"]\n[upstreams.s.health_check]\npath = \"/healthz\"\ninterval = \"100ms\"\nunhealthy_after = 1\nhealthy_after = 1000\n[routes.spare]\npaths = [\"/spare\"]\nupstream = \"s\"\n",
        two_routes(&up, "[routes.new]\npaths = [\"/new\"]\n[routes.new.plugins.respond]\nbody = \"new route\""),
        spare.addr
    ));
    let r = gw.reload();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["changed"], true);
    assert_eq!(gw.get("/new").body, "new route");

    // Take the spare target out; with healthy_after = 1000 it cannot come back by itself,
    // so it is still out after a reload only if the cluster's state was kept.
    spare.set(|b| b.health = 500);
    wait_until(Duration::from_secs(5), "spare unhealthy", || gw.get("/spare").status == 503);
    spare.set(|b| b.health = 200);
    let hash_before = gw.admin_get("/status").json()["config"]["hash"].clone();

    // An invalid file changes nothing, and says why.
    let good = std::fs::read_to_string(&gw.config_path).unwrap();
    std::fs::write(
        &gw.config_path,
        good.replace("paths = [\"/new\"]", "paths = [\"/new\"]\nupstream = \"missing\""),
    )
    .unwrap();
    let r = gw.reload();
    assert_eq!(r.status, 400);
    let errors = r.json()["errors"].to_string();
    assert!(errors.contains("routes.new.upstream") && errors.contains("missing"), "{errors}");
    assert_eq!(gw.get("/new").body, "new route", "old config keeps serving");
    let status = gw.admin_get("/status").json();
    assert_eq!(status["config"]["hash"], hash_before);
    assert!(status["reload"]["last_error"].to_string().contains("routes.new.upstream"));

    // SIGHUP reload with an unrelated change keeps the unchanged cluster's health state.
    std::fs::write(&gw.config_path, good.replace("body = \"new route\"", "body = \"newer route\"")).unwrap();
    gw.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(5), "SIGHUP reload", || gw.get("/new").body == "newer route");
    assert_eq!(gw.get("/spare").status, 503, "spare's health state survived the reload");
    assert!(gw.admin_get("/status").json()["reload"]["last_error"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn reload_reports_changes_that_need_an_upgrade() {
    let up = Upstream::start("u");
    let gw = Gateway::start(&two_routes(&up, ""));
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    std::fs::write(&gw.config_path, text.replace("threads = 1", "threads = 2")).unwrap();
    let r = gw.reload();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["needs_upgrade"], serde_json::json!(["server.threads"]));
    assert_eq!(
        gw.admin_get("/status").json()["reload"]["needs_upgrade"],
        serde_json::json!(["server.threads"])
    );
}

/// Costs a config could impose on every node (found by attacking fleet mode, where the
/// config comes from whoever can write one etcd key): each refused at load.
#[test]
fn configs_that_would_exhaust_a_node_are_refused() {
    // A route regex of ~9 MiB compiled (Unicode \w, repeated): a table of them takes gigabytes.
    refused(
        &BASE.replace("paths = [\"/users\"]", "paths = [\"~^/x/\\\\w{150}$\"]"),
        "routes.users.paths[0]",
        "invalid regex",
    );
    let (code, err, _) = check(&BASE.replace("paths = [\"/users\"]", "paths = [\"~^/v[0-9]+/users/[a-z0-9_-]{1,64}$\"]"));
    assert_eq!(code, 0, "an ordinary regex still loads: {err}");
    // An argon2 hash whose cost every failed login pays: 4 GB of memory per check.
    refused(
        &format!("{BASE}\n[consumers.a]\nbasic_auth = {{ username = \"a\", password_hash = \"$argon2id$v=19$m=4000000,t=3,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA\" }}\n"),
        "consumers.a.basic_auth.password_hash",
        "argon2 cost m=4000000 is over 65536",
    );
    // The span queue and batch, allocated up front.
    refused(
        &format!(
            "{BASE}\n[tracing]\nendpoint = \"http://127.0.0.1:4318/v1/traces\"\nmax_queue = 1000000000000\nmax_batch = 1000000000000\n"
        ),
        "tracing.max_queue",
        "must be between 1 and 1000000",
    );
}
