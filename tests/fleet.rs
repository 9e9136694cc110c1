//! Fleet config through a real etcd (Debian's etcd-server on 127.0.0.1 ports): nodes
//! converge on a pushed config, an invalid one is refused by `config push` and, written
//! straight to the key, by every node; etcd killed and restarted leaves the nodes serving
//! and they pick up the next revision; a node started while etcd is down serves from its
//! cache, and without a cache refuses to start.

mod common;
use common::etcd::Etcd;
use common::{wait_until, Gateway, Upstream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(15);

fn shared(upstream: &Upstream) -> String {
    format!(
        "[upstreams.app]\ntargets = [\"{}\"]\n\n[routes.app]\npaths = [\"/\"]\nupstream = \"app\"\n",
        upstream.addr
    )
}

fn node(etcd: &Etcd, key: &str) -> String {
    format!(
        r#"
[config_source]
type = "etcd"
endpoints = ["{}"]
key = "{key}"
cache = "{{dir}}/etcd-cache.toml"
timeout = "1s"
max_backoff = "400ms"
"#,
        etcd.url
    )
}

/// `gatehouse config push`: (exit code, stdout, stderr).
fn push(dir: &Path, etcd: &Etcd, key: &str, text: &str, extra: &[&str]) -> (i32, String, String) {
    let file = dir.join(format!("shared-{}.toml", std::process::id()));
    std::fs::write(&file, text).expect("write shared config");
    let out = Command::new(Gateway::bin())
        .args(["config", "push", "-c"])
        .arg(&file)
        .args(["--etcd", &etcd.url, "--key", key])
        .args(extra)
        .output()
        .expect("run gatehouse config push");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Pushes a valid document and returns the revision the command printed.
fn push_ok(dir: &Path, etcd: &Etcd, key: &str, text: &str) -> i64 {
    let (code, out, err) = push(dir, etcd, key, text, &[]);
    assert_eq!(code, 0, "push failed: {err}");
    out.trim()
        .rsplit_once("revision ")
        .and_then(|(_, r)| r.parse().ok())
        .unwrap_or_else(|| panic!("no revision in `{out}`"))
}

/// Starts a node on the usual header plus `body` in a fresh directory, expecting it to
/// refuse to start: returns the config's path and what it printed.
fn start_refused(body: &str) -> (std::path::PathBuf, String) {
    let dir = common::gateway::test_dir();
    let text = format!("{}\n{body}", common::gateway::HEADER)
        .replace("{dir}", &dir.display().to_string())
        .replace("{listen}", &format!("127.0.0.1:{}", common::free_port()))
        .replace("{admin}", &format!("127.0.0.1:{}", common::free_port()));
    let path = dir.join("gatehouse.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(Gateway::bin()).arg("-c").arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    (path, err)
}

fn source(gw: &Gateway) -> serde_json::Value {
    gw.admin_get("/status").json()["config_source"].clone()
}

fn serves(gw: &Gateway, body: &str) -> bool {
    let r = gw.get("/");
    r.status == 200 && r.body == body
}

#[test]
fn three_nodes_converge_on_a_pushed_config() {
    let dir = common::gateway::test_dir();
    let etcd = Etcd::start(&dir);
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    let key = "/gatehouse/converge";
    let r1 = push_ok(&dir, &etcd, key, &shared(&a));
    assert_eq!(etcd.revision(key), r1, "the printed revision is the key's");
    let nodes: Vec<Gateway> = (0..3).map(|_| Gateway::start(&node(&etcd, key))).collect();
    for gw in &nodes {
        assert!(serves(gw, "a"));
        let s = source(gw);
        assert_eq!(s["applied_revision"], r1);
        assert_eq!(s["applied_from"], "etcd");
        assert_eq!(s["connected"], true);
        assert_eq!(gw.metric("gatehouse_config_source_revision"), r1 as f64);
    }

    let (code, out, err) = push(&dir, &etcd, key, &shared(&b), &["--expect-revision", &r1.to_string()]);
    assert_eq!(code, 0, "{err}");
    let pushed = Instant::now();
    let r2: i64 = out.trim().rsplit_once("revision ").unwrap().1.parse().unwrap();
    assert!(r2 > r1);
    wait_until(WAIT, "every node serving the new revision", || {
        nodes.iter().all(|gw| serves(gw, "b"))
    });
    // A figure for the closing note, not a pass/fail line: timings vary on shared machines.
    eprintln!("fleet: 3 nodes served revision {r2} {:?} after the push returned", pushed.elapsed());
    for gw in &nodes {
        assert_eq!(source(gw)["applied_revision"], r2);
    }
    // A reload re-reads the node file and keeps the shared revision serving.
    let r = nodes[1].reload();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(serves(&nodes[1], "b"));
    assert_eq!(source(&nodes[1])["applied_revision"], r2);

    // A push on a revision that is no longer current writes nothing.
    let (code, _, err) = push(&dir, &etcd, key, &shared(&a), &["--expect-revision", &r1.to_string()]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("is at revision {r2}, not {r1}")), "{err}");
    assert_eq!(etcd.revision(key), r2);

    // The API cannot fork one node from the fleet.
    let etag = nodes[0].admin_get("/config");
    let r = common::request(
        &nodes[0].admin,
        "PUT",
        "/config/routes/app",
        &[
            ("Authorization", &format!("Bearer {}", common::gateway::ADMIN_TOKEN)),
            ("Content-Type", "application/json"),
            ("Host", &nodes[0].admin),
            ("If-Match", etag.header("etag").unwrap_or("")),
        ],
        Some(r#"{"paths":["/x"],"upstream":"app"}"#),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("config push"), "{}", r.body);
    assert!(serves(&nodes[0], "b"));
}

#[test]
fn an_invalid_config_is_refused_by_push_and_by_every_node() {
    let dir = common::gateway::test_dir();
    let etcd = Etcd::start(&dir);
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    let key = "/gatehouse/invalid";
    let r1 = push_ok(&dir, &etcd, key, &shared(&a));

    let broken = "[routes.app]\npaths = [\"/\"]\nupstream = \"missing\"\n";
    let (code, _, err) = push(&dir, &etcd, key, broken, &[]);
    assert_eq!(code, 1);
    assert!(err.contains("routes.app.upstream"), "{err}");
    assert!(err.contains("nothing written"), "{err}");
    let (code, _, err) = push(&dir, &etcd, key, &format!("{}[server]\nthreads = 4\n", shared(&a)), &[]);
    assert_eq!(code, 1);
    assert!(err.contains(": server: belongs to one node"), "{err}");
    assert_eq!(etcd.revision(key), r1, "a refused push writes nothing");

    let nodes: Vec<Gateway> = (0..2).map(|_| Gateway::start(&node(&etcd, key))).collect();
    let bad = etcd.put(key, broken);
    let wanted = format!("etcd:{key}@{bad}: routes.app.upstream");
    for gw in &nodes {
        wait_until(WAIT, "the node refusing the revision", || source(gw)["refused_revision"] == bad);
        let s = source(gw);
        assert_eq!(s["applied_revision"], r1);
        assert!(s["refused_errors"][0].as_str().unwrap_or("").contains(&wanted), "{s}");
        assert_eq!(gw.metric("gatehouse_config_source_refused_total"), 1.0);
        assert_eq!(gw.metric("gatehouse_config_source_refused_revision"), bad as f64);
        assert!(serves(gw, "a"), "the old config keeps serving");
    }

    // Deleting the key is not "no routes": the fleet keeps serving.
    etcd.delete(key);
    for gw in &nodes {
        wait_until(WAIT, "the deletion refused", || source(gw)["refused_revision"].as_i64() > Some(bad));
        assert!(serves(gw, "a"));
    }

    // The cache keeps the last good revision, not the refused ones.
    let cache = std::fs::read_to_string(nodes[0].dir.join("etcd-cache.toml")).unwrap();
    assert!(cache.contains(&format!("\"revision\":{r1}")) && cache.contains(&a.addr), "{cache}");
    for gw in &nodes {
        assert_eq!(gw.metric("gatehouse_config_source_refused_total"), 2.0, "the deletion counted once");
    }

    let r3 = push_ok(&dir, &etcd, key, &shared(&b));
    for gw in &nodes {
        wait_until(WAIT, "the next good revision applied", || serves(gw, "b"));
        let s = source(gw);
        assert_eq!(s["applied_revision"], r3);
        assert!(s["refused_revision"].is_null(), "{s}");
        assert_eq!(gw.metric("gatehouse_config_source_refused_revision"), 0.0);
    }
}

#[test]
fn etcd_killed_and_restarted_leaves_nodes_serving_and_they_pick_up_the_next_revision() {
    let dir = common::gateway::test_dir();
    let mut etcd = Etcd::start(&dir);
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    let key = "/gatehouse/outage";
    push_ok(&dir, &etcd, key, &shared(&a));
    let gw = Gateway::start(&node(&etcd, key));
    assert!(serves(&gw, "a"));
    let bad = etcd.put(key, "[routes.app]\npaths = [\"/\"]\nupstream = \"missing\"\n");
    wait_until(WAIT, "the broken revision refused", || source(&gw)["refused_revision"] == bad);

    etcd.kill();
    wait_until(WAIT, "the node noticing etcd is gone", || source(&gw)["connected"] == false);
    assert!(source(&gw)["last_error"].as_str().is_some());
    assert_eq!(gw.metric("gatehouse_config_source_connected"), 0.0);
    for _ in 0..20 {
        assert!(serves(&gw, "a"), "serving through the outage");
    }

    etcd.restart();
    wait_until(WAIT, "the node back on etcd", || source(&gw)["connected"] == true);
    // Read again after the reconnect, the refused revision is not counted twice.
    assert_eq!(gw.metric("gatehouse_config_source_refused_total"), 1.0);
    assert!(serves(&gw, "a"));
    let r2 = push_ok(&dir, &etcd, key, &shared(&b));
    wait_until(WAIT, "the revision pushed after the restart", || serves(&gw, "b"));
    let s = source(&gw);
    assert_eq!(s["applied_revision"], r2);
    assert_eq!(s["connected"], true);
    assert!(s["reconnects"].as_u64() >= Some(1), "{s}");
}

#[test]
fn a_node_started_while_etcd_is_down_serves_from_its_cache_or_refuses_to_start() {
    let dir = common::gateway::test_dir();
    let mut etcd = Etcd::start(&dir);
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    let key = "/gatehouse/cache";
    let r1 = push_ok(&dir, &etcd, key, &shared(&a));
    let mut gw = Gateway::start(&node(&etcd, key));
    assert!(serves(&gw, "a"));
    let cache = std::fs::read_to_string(gw.dir.join("etcd-cache.toml")).expect("the cache written");
    assert!(cache.contains(&a.addr));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(gw.dir.join("etcd-cache.toml")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the cache can hold consumers' keys: owner only");
    }

    gw.signal(libc::SIGKILL);
    assert!(gw.wait_exit(WAIT));
    etcd.kill();
    gw.spawn(&[]);
    assert!(serves(&gw, "a"), "served from the cache");
    let s = source(&gw);
    assert_eq!(s["applied_from"], "cache");
    assert_eq!(s["applied_revision"], r1);
    assert_eq!(s["connected"], false);

    // Without a cache there is nothing good to start from.
    let (_, err) = start_refused(&node(&etcd, key));
    assert!(err.contains("cannot reach etcd at http://127.0.0.1:"), "{err}");
    assert!(err.contains("no last good config is cached"), "{err}");

    // etcd back: the node leaves its cache for the live key.
    etcd.restart();
    wait_until(WAIT, "etcd confirming the cached revision", || {
        let s = source(&gw);
        s["connected"] == true && s["applied_from"] == "etcd" && s["applied_revision"] == r1
    });
    let r2 = push_ok(&dir, &etcd, key, &shared(&b));
    wait_until(WAIT, "the node following etcd again", || serves(&gw, "b"));
    assert_eq!(source(&gw)["applied_revision"], r2);
    assert_eq!(source(&gw)["applied_from"], "etcd");
}

#[test]
fn the_shipped_fleet_examples_push_and_check_against_a_real_etcd() {
    let dir = common::gateway::test_dir();
    let etcd = Etcd::start(&dir);
    let root = env!("CARGO_MANIFEST_DIR");
    // The node example with this etcd and a cache in the test's directory.
    let node_text = std::fs::read_to_string(format!("{root}/conf/examples/fleet-etcd.toml"))
        .unwrap()
        .replace("http://127.0.0.1:2379", &etcd.url)
        .replace("/var/lib/gatehouse/", &format!("{}/", dir.display()));
    let node_path = dir.join("fleet-etcd.toml");
    std::fs::write(&node_path, node_text).unwrap();
    let shared_text = std::fs::read_to_string(format!("{root}/conf/examples/fleet-shared.toml")).unwrap();
    let node_arg = node_path.display().to_string();
    let env = [("GATEHOUSE_ADMIN_TOKEN", "x"), ("ACME_KEY", "x")];
    let run = |args: &[&str]| {
        let out = Command::new(Gateway::bin()).args(args).envs(env).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let shared_path = dir.join("fleet-shared.toml");
    std::fs::write(&shared_path, &shared_text).unwrap();
    let shared_arg = shared_path.display().to_string();
    let (code, err) = run(&["config", "push", "-c", &shared_arg, "--etcd", &etcd.url, "--node", &node_arg]);
    assert_eq!(code, Some(0), "{err}");
    assert!(etcd.revision("/gatehouse/config") > 0);
    let (code, err) = run(&["-t", "-c", &node_arg]);
    assert_eq!(code, Some(0), "{err}");
    // The node example declares [admin]: a shared document holding one is refused.
    std::fs::write(&shared_path, format!("{shared_text}\n[admin]\naddr = \"127.0.0.1:1\"\n")).unwrap();
    let (code, err) = run(&["config", "push", "-c", &shared_arg, "--etcd", &etcd.url, "--node", &node_arg]);
    assert_eq!(code, Some(1));
    assert!(err.contains(": admin: belongs to one node"), "{err}");
}

#[test]
fn nodes_reach_a_tls_etcd_with_client_certificates_and_refuse_one_they_cannot_verify() {
    use common::tls::Ca;
    let dir = common::gateway::test_dir();
    let ca = Ca::new("etcd test CA");
    let ca_path = ca.write(&dir, "etcd-ca.pem");
    let server = ca.leaf(&dir, "etcd-server", &["127.0.0.1"], -1, 30);
    let node_cert = ca.client(&dir, "node", "gatehouse-node", "fleet");
    let etcd = Etcd::start_tls(&dir, &ca_path, &server, &node_cert);
    assert!(etcd.url.starts_with("https://"));
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    let key = "/gatehouse/tls";
    let (ca_arg, cert_arg, key_arg) = (
        ca_path.display().to_string(),
        node_cert.cert.display().to_string(),
        node_cert.key.display().to_string(),
    );
    let tls_flags = ["--cacert", &ca_arg, "--cert", &cert_arg, "--key-file", &key_arg];

    // etcd asks for a client certificate: a push without one is refused by etcd.
    let (code, _, err) = push(&dir, &etcd, key, &shared(&a), &["--cacert", &ca_arg]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(etcd.revision(key), 0);
    let (code, out, err) = push(&dir, &etcd, key, &shared(&a), &tls_flags);
    assert_eq!(code, 0, "{err}");
    let r1: i64 = out.trim().rsplit_once("revision ").unwrap().1.parse().unwrap();

    let tls_node = format!(
        "{}tls_ca = \"{ca_arg}\"\ntls_cert = \"{cert_arg}\"\ntls_key = \"{key_arg}\"\n",
        node(&etcd, key)
    );
    let gw = Gateway::start(&tls_node);
    assert!(serves(&gw, "a"));
    assert_eq!(source(&gw)["applied_revision"], r1);
    let (code, _, err) = push(&dir, &etcd, key, &shared(&b), &tls_flags);
    assert_eq!(code, 0, "{err}");
    wait_until(WAIT, "the node following the TLS etcd", || serves(&gw, "b"));

    // A CA that did not sign etcd's certificate: the node cannot verify it and, with no
    // cache, does not start.
    let other = Ca::new("someone else");
    let other_path = other.write(&dir, "other-ca.pem");
    let (path, err) = start_refused(&format!(
        "{}tls_ca = \"{}\"\ntls_cert = \"{cert_arg}\"\ntls_key = \"{key_arg}\"\n",
        node(&etcd, key),
        other_path.display()
    ));
    assert!(err.contains("cannot reach etcd at https://127.0.0.1:"), "{err}");
    assert!(err.contains("invalid peer certificate"), "{err}");

    // TLS files that are not what their keys say are refused at load, naming the key.
    std::fs::write(
        &path,
        std::fs::read_to_string(&path)
            .unwrap()
            .replace(&cert_arg, &ca_arg)
            .replace(&key_arg, &cert_arg),
    )
    .unwrap();
    let out = Command::new(Gateway::bin()).arg("-t").arg("-c").arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("config_source.tls_key: ") && err.contains("is not a PEM private key"),
        "{err}"
    );
}

#[test]
fn the_shared_config_reads_only_the_node_secrets_the_node_allows() {
    let dir = common::gateway::test_dir();
    let etcd = Etcd::start(&dir);
    let a = Upstream::start("a");
    let key = "/gatehouse/secrets";
    let keyed = |secret: &str| {
        format!(
            "{}[routes.app.plugins.key_auth]\n[consumers.c]\nkeys = [\"{secret}\"]\n",
            shared(&a)
        )
    };
    let r1 = etcd.put(key, &keyed("env:FLEET_KEY"));
    let allow = format!("{}shared_secrets = [\"env:FLEET_*\"]\n", node(&etcd, key));
    let gw = Gateway::start_with_env(&allow, &[("FLEET_KEY", "fleet-key-1")]);
    assert_eq!(source(&gw)["applied_revision"], r1);
    assert_eq!(
        common::request(&gw.addr, "GET", "/", &[("x-api-key", "fleet-key-1")], None).status,
        200
    );
    assert_eq!(gw.get("/").status, 401);

    // Whoever writes the key cannot make a node use its admin token as a consumer key (or
    // send it to a tracing endpoint): only the allowed names resolve.
    let bad = etcd.put(key, &keyed("env:GATEHOUSE_ADMIN_TOKEN"));
    wait_until(WAIT, "the reference refused", || source(&gw)["refused_revision"] == bad);
    let err = source(&gw)["refused_errors"][0].as_str().unwrap_or("").to_string();
    assert!(
        err.contains("consumers.c.keys[0]: `env:GATEHOUSE_ADMIN_TOKEN` reads this node's environment"),
        "{err}"
    );
    let r = common::request(&gw.addr, "GET", "/", &[("x-api-key", common::gateway::ADMIN_TOKEN)], None);
    assert_eq!(r.status, 401);
    let bad = etcd.put(key, &keyed("file:/etc/gatehouse/../../etc/hostname"));
    wait_until(WAIT, "the climbing path refused", || source(&gw)["refused_revision"] == bad);
}

#[test]
fn a_revision_refused_because_of_the_node_file_applies_after_the_node_file_is_fixed() {
    let dir = common::gateway::test_dir();
    let etcd = Etcd::start(&dir);
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    let key = "/gatehouse/nodefix";
    let r1 = push_ok(&dir, &etcd, key, &shared(&a));
    let local = "[plans.local]\n";
    let mut gw = Gateway::start(&format!("{}{local}", node(&etcd, key)));
    assert!(serves(&gw, "a"));
    // The shared document now has [plans] too: this node refuses it (a table in both).
    let r2 = etcd.put(key, &format!("{}[plans.gold]\n", shared(&b)));
    wait_until(WAIT, "the overlap refused", || source(&gw)["refused_revision"] == r2);
    assert!(source(&gw)["refused_errors"][0]
        .as_str()
        .unwrap_or("")
        .contains(": plans: is also in the shared config"));
    assert_eq!(source(&gw)["applied_revision"], r1);

    // The operator drops the node's own [plans] and reloads: the refused revision applies.
    gw.write_config(&node(&etcd, key));
    let r = gw.reload();
    assert_eq!(r.status, 200, "{}", r.body);
    wait_until(WAIT, "the refused revision applied", || serves(&gw, "b"));
    let s = source(&gw);
    assert_eq!(s["applied_revision"], r2);
    assert!(s["refused_revision"].is_null(), "{s}");
    gw.signal(libc::SIGTERM);
    assert!(gw.wait_exit(WAIT));
}
