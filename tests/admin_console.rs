//! The web console in a real headless browser: Debian's chromium driven by Playwright
//! (tests/ui/console.py) against the real gateway. Screenshots are kept under
//! `target/ui-artifacts/`.

mod common;
use common::{free_port, Gateway, Upstream};
use std::process::Command;

const WRITE: &str = "ops-write-token-0123456789";
const READ: &str = "viewer-read-token-0123456789";

#[test]
fn the_console_shows_health_and_traffic_and_edits_routes_in_a_browser() {
    let main = Upstream::start("main");
    let flaky_port = free_port();
    let gw = Gateway::start_raw(
        &format!(
            r#"
[server]
threads = 1
pid_file = "{{dir}}/gatehouse.pid"
upgrade_sock = "{{dir}}/upgrade.sock"
[listeners.public]
addr = "{{listen}}"
[admin]
addr = "{{admin}}"
tokens = [
  {{ name = "ops", token = "{WRITE}", role = "write" }},
  {{ name = "viewer", token = "{READ}", role = "read" }},
]
ui = true
managed = "managed.toml"
audit_log = "audit.jsonl"
[log]
access = "off"
level = "warn"
[upstreams.main]
targets = ["{main}"]
[upstreams.flaky]
targets = ["127.0.0.1:{flaky_port}"]
[upstreams.flaky.health_check]
type = "http"
path = "/"
interval = "200ms"
timeout = "200ms"
unhealthy_after = 1
healthy_after = 1
[plans.gold]
quota = {{ requests = 1000, per = "month" }}
[consumers.alice]
keys = ["alice-console-key-0123"]
plan = "gold"
[routes.root]
paths = ["/"]
upstream = "main"
[routes.flaky]
paths = ["/flaky/"]
upstream = "flaky"
"#,
            main = main.addr
        ),
        &[],
    );
    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-artifacts");
    let _ = std::fs::remove_file(artifacts.join("console-1280x800.png"));
    let _ = std::fs::remove_file(artifacts.join("console-390x844.png"));
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ui/console.py"))
        .env("GATEHOUSE_ADMIN", &gw.admin)
        .env("GATEHOUSE_PROXY", &gw.addr)
        .env("GATEHOUSE_WRITE_TOKEN", WRITE)
        .env("GATEHOUSE_READ_TOKEN", READ)
        .env("GATEHOUSE_FLAKY_PORT", flaky_port.to_string())
        .env("GATEHOUSE_ARTIFACTS", &artifacts)
        .output()
        .expect("run python3 tests/ui/console.py (scripts/setup installs playwright and chromium)");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "console test failed\nstdout:\n{stdout}\nstderr:\n{stderr}\ngateway:\n{}",
        gw.stderr()
    );
    assert!(stdout.contains("console: ok"), "{stdout}");
    for shot in ["console-1280x800.png", "console-390x844.png"] {
        let len = std::fs::metadata(artifacts.join(shot)).map(|m| m.len()).unwrap_or(0);
        assert!(len > 10_000, "screenshot {shot} missing or empty ({len} bytes)");
    }
    let audit = std::fs::read_to_string(gw.dir.join("audit.jsonl")).expect("the console's write is audited");
    assert!(audit.contains("/config/routes/from-console"), "{audit}");
}
