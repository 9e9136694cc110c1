//! The admin config API through real sockets: writes validated like `-t`, applied by the
//! same swap as a reload, persisted to the managed file, guarded by ETags and roles, and
//! recorded in the audit log without secrets.

mod common;
use common::{request, wait_until, Gateway, Response, Upstream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const WRITE: &str = "ops-write-token-0123456789";
const READ: &str = "viewer-read-token-0123456789";
const ALICE_KEY: &str = "alice-literal-key-s3cr3t";

/// A config with a write and a read token, a managed file and an audit log.
fn config(main: &str, extra: &str) -> String {
    format!(
        r#"
[server]
threads = 1
pid_file = "{{dir}}/gatehouse.pid"
upgrade_sock = "{{dir}}/upgrade.sock"
grace_period = "1s"
graceful_shutdown_timeout = "1s"
[listeners.public]
addr = "{{listen}}"
[admin]
addr = "{{admin}}"
tokens = [
  {{ name = "ops", token = "{WRITE}", role = "write" }},
  {{ name = "viewer", token = "env:VIEWER_TOKEN", role = "read" }},
]
managed = "managed.toml"
audit_log = "audit.jsonl"
[log]
access = "off"
level = "warn"
[upstreams.main]
targets = ["{main}"]
[routes.root]
paths = ["/"]
upstream = "main"
[consumers.alice]
keys = ["{ALICE_KEY}"]
[routes.private]
paths = ["/private"]
upstream = "main"
[routes.private.plugins.key_auth]
{extra}
"#
    )
}

fn start(main: &Upstream, extra: &str) -> Gateway {
    Gateway::start_raw(&config(&main.addr, extra), &[("VIEWER_TOKEN", READ)])
}

fn call(gw: &Gateway, method: &str, path: &str, token: Option<&str>, etag: Option<&str>, body: Option<&str>) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut h: Vec<(&str, &str)> = Vec::new();
    if let Some(a) = &auth {
        h.push(("Authorization", a));
    }
    if let Some(e) = etag {
        h.push(("If-Match", e));
    }
    if method != "GET" {
        h.push(("Content-Type", "application/json"));
    }
    request(&gw.admin, method, path, &h, body)
}

fn etag(gw: &Gateway) -> String {
    let r = call(gw, "GET", "/config", Some(READ), None, None);
    assert_eq!(r.status, 200, "{}", r.body.clone());
    r.header("etag").expect("GET /config has an ETag").to_string()
}

fn managed(gw: &Gateway) -> String {
    std::fs::read_to_string(gw.dir.join("managed.toml")).unwrap_or_default()
}

#[test]
fn a_route_created_with_put_serves_and_no_request_fails_during_the_swap() {
    let main = Upstream::start("main");
    let other = Upstream::start("other");
    let gw = start(&main, "");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (addr, stop, ok, failed) = (gw.addr.clone(), stop.clone(), ok.clone(), failed.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match common::client::try_request(&addr, "GET", "/", &[], None) {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::SeqCst),
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
            }
        })
    };
    wait_until(Duration::from_secs(5), "load running", || ok.load(Ordering::SeqCst) > 20);

    let put = call(
        &gw,
        "PUT",
        "/config/upstreams/other",
        Some(WRITE),
        Some(&etag(&gw)),
        Some(&format!(r#"{{"targets": ["{}"]}}"#, other.addr)),
    );
    assert_eq!(put.status, 201, "{}", put.body.clone());
    let body = r#"{"paths": ["/api/"], "upstream": "other", "strip_prefix": true}"#;
    let put = call(&gw, "PUT", "/config/routes/api", Some(WRITE), Some(&etag(&gw)), Some(body));
    assert_eq!(put.status, 201, "{}", put.body.clone());
    assert_eq!(
        put.header("etag"),
        Some(format!("\"{}\"", put.json()["hash"].as_str().unwrap()).as_str())
    );
    let r = gw.get("/api/x");
    assert_eq!((r.status, r.body.clone()), (200, "other".to_string()));
    assert_eq!(other.last().path, "/x", "strip_prefix from the API applies");
    // A second change of the same route: replaced, not created.
    let put = call(
        &gw,
        "PUT",
        "/config/routes/api",
        Some(WRITE),
        Some(&etag(&gw)),
        Some(r#"{"paths": ["/v2/"], "upstream": "other"}"#),
    );
    assert_eq!(put.status, 200, "{}", put.body.clone());
    assert_eq!(gw.get("/v2/y").body.clone(), "other");
    assert_eq!(gw.get("/api/x").body.clone(), "main", "the old paths went with the replaced entry");

    let before = ok.load(Ordering::SeqCst);
    wait_until(Duration::from_secs(5), "load after the swaps", || {
        ok.load(Ordering::SeqCst) > before + 20
    });
    stop.store(true, Ordering::SeqCst);
    load.join().unwrap();
    assert_eq!(failed.load(Ordering::SeqCst), 0, "requests failed during the swaps");
    let text = managed(&gw);
    assert!(text.contains("[routes.api]") && text.contains("[upstreams.other]"), "{text}");
    toml::from_str::<toml::Table>(&text).expect("the managed file is TOML");
}

#[test]
fn an_invalid_write_gets_422_with_the_key_and_changes_nothing() {
    let main = Upstream::start("main");
    let gw = start(&main, "");
    let tag = etag(&gw);
    let r = call(
        &gw,
        "PUT",
        "/config/routes/bad",
        Some(WRITE),
        Some(&tag),
        Some(r#"{"paths": ["/bad/"], "upstream": "nope"}"#),
    );
    assert_eq!(r.status, 422, "{}", r.body.clone());
    let errors = r.json()["errors"].clone();
    assert_eq!(errors[0]["key"], "routes.bad.upstream", "{errors}");
    assert!(errors[0]["reason"].as_str().unwrap().contains("`nope` is not defined"));
    // An unknown key is refused as the file would refuse it.
    let r = call(
        &gw,
        "PUT",
        "/config/routes/bad",
        Some(WRITE),
        Some(&tag),
        Some(r#"{"paths": ["/bad/"], "upstream": "main", "colour": 1}"#),
    );
    assert_eq!(r.status, 422, "{}", r.body.clone());
    assert!(r.body.clone().contains("colour"), "{}", r.body.clone());
    assert_eq!(etag(&gw), tag, "the serving config is unchanged");
    assert_eq!(managed(&gw), "", "nothing was written");
    assert_eq!(gw.get("/bad/x").body.clone(), "main", "the refused route does not serve");

    // Deleting an upstream a route still uses names the route.
    let r = call(&gw, "DELETE", "/config/upstreams/main", Some(WRITE), Some(&tag), None);
    assert_eq!(r.status, 422, "{}", r.body.clone());
    let keys: Vec<String> = r.json()["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_string())
        .collect();
    assert!(keys.contains(&"routes.root.upstream".to_string()), "{keys:?}");
    assert_eq!(gw.get("/").status, 200);

    // The dry run gives the same errors, and for a valid entry the diff, changing nothing.
    let v = call(
        &gw,
        "POST",
        "/config/validate",
        Some(WRITE),
        None,
        Some(r#"{"section": "routes", "name": "x", "value": {"upstream": "nope"}}"#),
    );
    assert_eq!(v.status, 422);
    assert_eq!(v.json()["errors"][0]["key"], "routes.x.upstream");
    let v = call(
        &gw,
        "POST",
        "/config/validate",
        Some(WRITE),
        None,
        Some(r#"{"section": "routes", "name": "x", "value": {"paths": ["/x/"], "upstream": "main"}}"#),
    );
    assert_eq!(v.status, 200, "{}", v.body.clone());
    assert!(v.json()["diff"].as_str().unwrap().contains("+[routes.x]"), "{}", v.body.clone());
    assert_eq!(etag(&gw), tag);
    assert_eq!(managed(&gw), "");
}

#[test]
fn a_stale_or_missing_if_match_changes_nothing() {
    let main = Upstream::start("main");
    let gw = start(&main, "");
    let old = etag(&gw);
    let body = r#"{"paths": ["/a/"], "upstream": "main"}"#;
    assert_eq!(
        call(&gw, "PUT", "/config/routes/a", Some(WRITE), Some(&old), Some(body)).status,
        201
    );
    let text = managed(&gw);
    let r = call(&gw, "PUT", "/config/routes/b", Some(WRITE), Some(&old), Some(body));
    assert_eq!(r.status, 412, "{}", r.body.clone());
    assert_eq!(r.header("etag"), Some(etag(&gw).as_str()), "the 412 names the current ETag");
    let r = call(&gw, "PUT", "/config/routes/b", Some(WRITE), None, Some(body));
    assert_eq!(r.status, 428, "{}", r.body.clone());
    assert_eq!(managed(&gw), text);
    assert_eq!(call(&gw, "GET", "/config/routes/b", Some(READ), None, None).status, 404);
}

#[test]
fn roles_tokens_and_origins_decide_who_may_write() {
    let main = Upstream::start("main");
    let gw = start(&main, "");
    let tag = etag(&gw);
    let body = Some(r#"{"paths": ["/a/"], "upstream": "main"}"#);
    let r = call(&gw, "PUT", "/config/routes/a", Some(READ), Some(&tag), body);
    assert_eq!(r.status, 403, "{}", r.body.clone());
    assert_eq!(call(&gw, "PUT", "/config/routes/a", None, Some(&tag), body).status, 401);
    assert_eq!(call(&gw, "GET", "/config", None, None, None).status, 401);
    assert_eq!(call(&gw, "POST", "/reload", Some(READ), None, Some("{}")).status, 403);
    let s = call(&gw, "GET", "/session", Some(READ), None, None);
    assert_eq!(
        (s.json()["token"].as_str(), s.json()["role"].as_str()),
        (Some("viewer"), Some("read"))
    );

    let reloads = || gw.metric("gatehouse_config_reloads_total{result=\"ok\"}");
    let before = reloads();
    // What a cross-site form can send: a form content type, and no Authorization header.
    let form = request(
        &gw.admin,
        "POST",
        "/reload",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Origin", "http://evil.example"),
        ],
        Some("a=b"),
    );
    assert_eq!(form.status, 401);
    // Even with a token (a page that stole one), another origin's write is refused.
    let auth = format!("Bearer {WRITE}");
    let h = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
        ("Origin", "http://evil.example"),
    ];
    assert_eq!(request(&gw.admin, "POST", "/reload", &h, Some("{}")).status, 403);
    let h = [("Authorization", auth.as_str()), ("Content-Type", "text/plain")];
    assert_eq!(request(&gw.admin, "POST", "/reload", &h, Some("{}")).status, 415);
    assert_eq!(reloads(), before, "no refused call reloaded");
    assert_eq!(managed(&gw), "");
}

#[test]
fn secrets_are_never_echoed_and_the_audit_log_records_every_write() {
    let main = Upstream::start("main");
    let gw = start(&main, "");
    let all = call(&gw, "GET", "/config", Some(READ), None, None).body.clone();
    assert!(!all.contains(ALICE_KEY) && !all.contains(WRITE), "{all}");
    assert!(all.contains("env:VIEWER_TOKEN"), "a reference is shown: {all}");
    let alice = call(&gw, "GET", "/config/consumers/alice", Some(READ), None, None);
    let shown = alice.json()["keys"][0].as_str().unwrap().to_string();
    assert!(shown.starts_with("<redacted:"), "{shown}");

    // Written back with the marker it was shown and a second key: the stored key keeps working.
    let body = format!(r#"{{"keys": ["{shown}", "bob-new-literal-key-77"], "groups": ["beta"]}}"#);
    let body = body.as_str();
    let r = call(&gw, "PUT", "/config/consumers/alice", Some(WRITE), Some(&etag(&gw)), Some(body));
    assert_eq!(r.status, 200, "{}", r.body.clone());
    for key in [ALICE_KEY, "bob-new-literal-key-77"] {
        let r = request(&gw.addr, "GET", "/private", &[("X-Api-Key", key)], None);
        assert_eq!(r.status, 200, "key {key}: {}", r.body.clone());
    }
    assert!(
        !r.body.clone().contains(ALICE_KEY) && !r.body.clone().contains("bob-new"),
        "{}",
        r.body.clone()
    );
    let r = call(&gw, "DELETE", "/config/routes/private", Some(WRITE), Some(&etag(&gw)), None);
    assert_eq!(r.status, 200, "{}", r.body.clone());
    assert_eq!(
        request(&gw.addr, "GET", "/private", &[], None).body.clone(),
        "main",
        "the deleted route's key_auth is gone"
    );
    assert!(managed(&gw).contains("[deleted]"), "{}", managed(&gw));
    let again = call(&gw, "DELETE", "/config/routes/private", Some(WRITE), Some(&etag(&gw)), None);
    assert_eq!(again.status, 404, "deleted twice: {}", again.body);
    // Dropping the first of two keys keeps the second: markers are matched by fingerprint.
    let keys = call(&gw, "GET", "/config/consumers/alice", Some(READ), None, None).json()["keys"].clone();
    let body = format!(r#"{{"keys": [{}]}}"#, keys[1]);
    assert_eq!(
        call(&gw, "PUT", "/config/consumers/alice", Some(WRITE), Some(&etag(&gw)), Some(&body)).status,
        200
    );

    let audit = std::fs::read_to_string(gw.dir.join("audit.jsonl")).expect("audit log");
    let lines: Vec<serde_json::Value> = audit.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "{audit}");
    assert_eq!(
        (lines[0]["method"].as_str(), lines[0]["path"].as_str()),
        (Some("PUT"), Some("/config/consumers/alice"))
    );
    assert_eq!(lines[1]["method"], "DELETE");
    assert_eq!(lines[0]["token"], "ops");
    assert_eq!(lines[0]["etag_after"], lines[1]["etag_before"], "the ETags chain");
    assert!(lines[0]["diff"].as_str().unwrap().contains("+groups = [\"beta\"]"), "{audit}");
    for secret in [ALICE_KEY, "bob-new-literal-key-77", WRITE, READ] {
        assert!(!audit.contains(secret), "the audit log holds {secret}");
    }
    let diff = call(&gw, "GET", "/config/diff", Some(READ), None, None);
    let changes = diff.json()["changes"].to_string();
    assert!(changes.contains("\"replaced\"") && changes.contains("\"deleted\""), "{changes}");
    assert!(!diff.body.clone().contains("bob-new"), "{}", diff.body.clone());
}

#[test]
fn a_restart_loads_the_managed_file() {
    let main = Upstream::start("main");
    let other = Upstream::start("other");
    let mut gw = start(&main, "");
    let u = format!(r#"{{"targets": ["{}"]}}"#, other.addr);
    assert_eq!(
        call(&gw, "PUT", "/config/upstreams/other", Some(WRITE), Some(&etag(&gw)), Some(&u)).status,
        201
    );
    let r = r#"{"paths": ["/kept/"], "upstream": "other"}"#;
    assert_eq!(
        call(&gw, "PUT", "/config/routes/kept", Some(WRITE), Some(&etag(&gw)), Some(r)).status,
        201
    );
    let served = etag(&gw);
    gw.signal(libc::SIGTERM);
    assert!(gw.wait_exit(Duration::from_secs(10)), "gateway stops");
    gw.spawn(&[]);
    assert_eq!(gw.get("/kept/x").body.clone(), "other");
    assert_eq!(etag(&gw), served, "the same effective config, so the same ETag");
    // `-t` checks the same merged config: a managed file that breaks it is refused.
    std::fs::write(gw.dir.join("managed.toml"), "[routes.kept]\nupstream = \"gone\"\n").unwrap();
    let out = std::process::Command::new(Gateway::bin())
        .args(["-t", "-c"])
        .arg(&gw.config_path)
        .env("VIEWER_TOKEN", READ)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("routes.kept.upstream"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_write_that_cannot_be_recorded_or_would_carry_unseen_edits_is_refused() {
    let main = Upstream::start("main");
    let gw = start(&main, "");
    let body = Some(r#"{"paths": ["/a/"], "upstream": "main"}"#);
    // The main file edited but not reloaded: the write would apply that edit unseen.
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    std::fs::write(
        &gw.config_path,
        format!("{text}\n[routes.pending]\npaths = [\"/p/\"]\nupstream = \"main\"\n"),
    )
    .unwrap();
    let r = call(&gw, "PUT", "/config/routes/a", Some(WRITE), Some(&etag(&gw)), body);
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(managed(&gw), "");
    assert_eq!(call(&gw, "POST", "/reload", Some(WRITE), None, Some("{}")).status, 200);
    assert_eq!(
        call(&gw, "PUT", "/config/routes/a", Some(WRITE), Some(&etag(&gw)), body).status,
        201
    );

    // An audit log that cannot be written: the write is not made.
    let audit = gw.dir.join("audit.jsonl");
    std::fs::remove_file(&audit).unwrap();
    std::fs::create_dir(&audit).unwrap();
    let tag = etag(&gw);
    let before = managed(&gw);
    let r = call(
        &gw,
        "PUT",
        "/config/routes/b",
        Some(WRITE),
        Some(&tag),
        Some(r#"{"paths": ["/b/"], "upstream": "main"}"#),
    );
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(r.body.contains("audit log"), "{}", r.body);
    assert_eq!((etag(&gw), managed(&gw)), (tag, before));

    // A secret named as a FIFO is refused at once instead of blocking the admin API.
    let fifo = gw.dir.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let v = format!(
        r#"{{"section": "consumers", "name": "f", "value": {{"keys": ["file:{}"]}}}}"#,
        fifo.display()
    );
    let r = call(&gw, "POST", "/config/validate", Some(WRITE), None, Some(&v));
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("not a regular file"), "{}", r.body);
    assert_eq!(call(&gw, "GET", "/status", Some(READ), None, None).status, 200);
    // Names are what the console allows, whatever the client.
    let r = call(&gw, "GET", "/config/routes/bad%0Aname", Some(READ), None, None);
    assert_eq!(r.status, 404);
}
