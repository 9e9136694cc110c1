//! Operations under steady load: hot reloads, graceful binary upgrade with socket hand-off,
//! SIGTERM drain. The load clients count every failed request.

mod common;
use common::load::Load;
use common::{wait_until, Gateway, Upstream};
use std::time::{Duration, Instant};

fn config(up: &Upstream, body: &str, grace: &str) -> String {
    format!(
        r#"
[server]
threads = 2
pid_file = "{{dir}}/gatehouse.pid"
upgrade_sock = "{{dir}}/upgrade.sock"
grace_period = "{grace}"
graceful_shutdown_timeout = "5s"
[listeners.public]
addr = "{{listen}}"
[admin]
addr = "{{admin}}"
token = "test-admin-token"
[log]
access = "off"
level = "warn"
[upstreams.u]
targets = ["{up}"]
[routes.r]
paths = ["/"]
upstream = "u"
[routes.extra]
paths = ["=/extra"]
[routes.extra.plugins.respond]
body = "{body}"
"#,
        up = up.addr
    )
}

#[test]
fn twenty_reloads_under_load_lose_nothing() {
    let up = Upstream::start("u");
    let gw = Gateway::start_raw(&config(&up, "v0", "1s"), &[]);
    let load = Load::start(&gw.addr, "/", 4, 2);
    wait_until(Duration::from_secs(5), "load running", || load.ok() > 50);
    for i in 1..=20 {
        gw.write_config_raw(&config(&up, &format!("v{i}"), "1s"));
        let r = gw.reload();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(gw.get("/extra").body, format!("v{i}"), "reload {i} took effect");
    }
    let (ok, failures, p99) = load.finish();
    eprintln!("reload under load: {ok} requests, {} failed, p99 {p99:.2} ms", failures.len());
    assert!(failures.is_empty(), "{failures:?}");
    assert!(ok > 100);
}

#[test]
fn graceful_upgrade_under_load_drops_nothing() {
    let up = Upstream::start("u");
    up.set(|b| b.slow = Duration::from_secs(5));
    let mut gw = Gateway::start_raw(&config(&up, "old", "1s"), &[]);
    let old_pid = gw.pid();
    let load = Load::start(&gw.addr, "/", 4, 2);
    wait_until(Duration::from_secs(5), "load running", || load.ok() > 50);
    let addr = gw.addr.clone();
    let slow = std::thread::spawn(move || {
        let t = Instant::now();
        (common::get(&addr, "/slow"), t.elapsed())
    });
    wait_until(Duration::from_secs(5), "slow request at the upstream", || {
        up.recorded().iter().any(|r| r.path == "/slow")
    });

    // A new config comes with the new process.
    gw.write_config_raw(&config(&up, "new", "1s"));
    let (ok, out) = gw.upgrade();
    assert!(ok, "upgrade failed: {out}");
    let new_pid: i32 = std::fs::read_to_string(gw.dir.join("gatehouse.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _guard = common::gateway::KillOnDrop(new_pid);
    assert_ne!(new_pid, old_pid);

    let (resp, took) = slow.join().unwrap();
    assert_eq!(resp.status, 200, "the slow in-flight request completed");
    assert!(took >= Duration::from_secs(5));
    assert!(gw.wait_exit(Duration::from_secs(30)), "old process exits after its grace period");
    let served = load.ok();
    wait_until(Duration::from_secs(10), "load served by the new process alone", || {
        load.ok() > served + 20
    });
    let (ok, failures, p99) = load.finish();
    eprintln!("upgrade under load: {ok} requests, {} failed, p99 {p99:.2} ms", failures.len());
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(gw.admin_get("/status").json()["pid"], new_pid);
    assert_eq!(gw.get("/extra").body, "new");
}

#[test]
fn upgrade_with_a_broken_config_keeps_the_old_process() {
    let up = Upstream::start("u");
    let gw = Gateway::start_raw(&config(&up, "old", "1s"), &[]);
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    std::fs::write(&gw.config_path, text.replace("upstream = \"u\"", "upstream = \"missing\"")).unwrap();
    let (ok, out) = gw.upgrade();
    assert!(!ok);
    assert!(out.contains("keeps serving"), "{out}");
    assert_eq!(gw.get("/extra").body, "old");
    assert_eq!(gw.admin_get("/status").json()["pid"], gw.pid());
}

#[test]
fn sigterm_lets_in_flight_requests_finish() {
    let up = Upstream::start("u");
    up.set(|b| b.slow = Duration::from_millis(1500));
    // Pingora cancels what is still running when the grace period ends: it must be longer
    // than the requests.
    let mut gw = Gateway::start_raw(&config(&up, "x", "3s"), &[]);
    let clients: Vec<_> = (0..5)
        .map(|_| {
            let a = gw.addr.clone();
            std::thread::spawn(move || common::get(&a, "/slow"))
        })
        .collect();
    wait_until(Duration::from_secs(5), "requests in flight", || up.count() == 5);
    gw.signal(libc::SIGTERM);
    for c in clients {
        assert_eq!(c.join().unwrap().status, 200, "in-flight request finished during drain");
    }
    assert!(gw.wait_exit(Duration::from_secs(20)), "process exits after draining");
}

#[test]
fn drops_privileges_after_binding() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to drop privileges (CI runs as root)");
        return;
    }
    let up = Upstream::start("u");
    let gw = Gateway::start_raw(
        &config(&up, "x", "1s").replace("threads = 2", "threads = 2\nuser = \"nobody\"\ngroup = \"nogroup\""),
        &[],
    );
    let status = || std::fs::read_to_string(format!("/proc/{}/status", gw.pid())).unwrap_or_default();
    let uid_line = |s: String| s.lines().find(|l| l.starts_with("Uid:")).unwrap_or("").to_string();
    wait_until(Duration::from_secs(10), "privileges dropped", || {
        uid_line(status()).split_whitespace().nth(1) == Some("65534")
    });
    let line = uid_line(status());
    assert!(
        line.split_whitespace().skip(1).all(|u| u == "65534"),
        "real, effective and saved uid are nobody: {line}"
    );
    assert_eq!(gw.get("/").status, 200, "still serving after the drop");
    assert_eq!(gw.get("/extra").body, "x");
}
