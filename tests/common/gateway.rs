//! Runs the real `gatehouse` binary with a config written for the test.

use super::{free_port, wait_until, Response};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub struct Gateway {
    pub addr: String,
    pub admin: String,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub child: Option<Child>,
    /// Extra environment for the process (secrets).
    pub env: Vec<(String, String)>,
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

pub fn test_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "gatehouse-test-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test dir");
    dir
}

/// The admin token of the usual config: state-changing admin calls always need one.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// The usual `[server]`, listener, admin and log sections; tests append routes and
/// upstreams.
pub const HEADER: &str = r#"
[server]
threads = 1
pid_file = "{dir}/gatehouse.pid"
upgrade_sock = "{dir}/upgrade.sock"
grace_period = "1s"
graceful_shutdown_timeout = "1s"

[listeners.public]
addr = "{listen}"

[admin]
addr = "{admin}"
token = "test-admin-token"

[log]
access = "{dir}/access.log"
level = "warn"
"#;

impl Gateway {
    pub fn bin() -> &'static str {
        env!("CARGO_BIN_EXE_gatehouse")
    }

    /// HEADER plus `body`.
    pub fn start(body: &str) -> Gateway {
        Self::start_raw(&format!("{HEADER}\n{body}"), &[])
    }

    pub fn start_with_env(body: &str, env: &[(&str, &str)]) -> Gateway {
        Self::start_raw(&format!("{HEADER}\n{body}"), env)
    }

    /// A whole config with `{listen}`, `{admin}` and `{dir}` placeholders.
    pub fn start_raw(template: &str, env: &[(&str, &str)]) -> Gateway {
        let dir = test_dir();
        let addr = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        let mut gw = Gateway {
            config_path: dir.join("gatehouse.toml"),
            addr,
            admin,
            dir,
            child: None,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        gw.write_config_raw(template);
        gw.spawn(&[]);
        gw
    }

    pub fn fill(&self, template: &str) -> String {
        template
            .replace("{listen}", &self.addr)
            .replace("{admin}", &self.admin)
            .replace("{dir}", &self.dir.display().to_string())
    }

    pub fn write_config_raw(&self, template: &str) {
        // Write then rename, so a reload never reads a half-written file.
        let tmp = self.dir.join("gatehouse.toml.tmp");
        std::fs::write(&tmp, self.fill(template)).expect("write config");
        std::fs::rename(&tmp, &self.config_path).expect("rename config");
    }

    pub fn write_config(&self, body: &str) {
        self.write_config_raw(&format!("{HEADER}\n{body}"));
    }

    pub fn spawn(&mut self, extra_args: &[&str]) {
        let stdout = std::fs::File::create(self.dir.join("stdout.log")).expect("stdout file");
        let stderr = std::fs::File::create(self.dir.join("stderr.log")).expect("stderr file");
        let mut cmd = Command::new(Self::bin());
        cmd.arg("-c")
            .arg(&self.config_path)
            .args(extra_args)
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr));
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn gatehouse");
        self.child = Some(child);
        self.wait_ready();
    }

    pub fn wait_ready(&mut self) {
        let admin = self.admin.clone();
        let addr = self.addr.clone();
        let dir = self.dir.clone();
        let child = self.child.as_mut().expect("started");
        wait_until(Duration::from_secs(20), "gateway readiness", || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "gatehouse exited with {status}: {}",
                    std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
                );
            }
            std::net::TcpStream::connect(&addr).is_ok()
                && super::client::raw_request(&admin, b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                    .is_ok_and(|r| r.status == 200 || r.status == 401)
        });
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).expect("started")
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    pub fn get(&self, path: &str) -> Response {
        super::get(&self.addr, path)
    }

    /// GET on the admin API with the usual token (ignored when the config has none).
    pub fn admin_get(&self, path: &str) -> Response {
        super::request(
            &self.admin,
            "GET",
            path,
            // As curl sends it: without a token the admin API answers only a loopback Host.
            &[("Authorization", &format!("Bearer {ADMIN_TOKEN}")), ("Host", &self.admin)],
            None,
        )
    }

    /// A state-changing admin call, as the admin API requires it: the token and JSON.
    pub fn admin_post(&self, path: &str, body: &str) -> Response {
        super::request(
            &self.admin,
            "POST",
            path,
            &[
                ("Authorization", &format!("Bearer {ADMIN_TOKEN}")),
                ("Content-Type", "application/json"),
                ("Host", &self.admin),
            ],
            Some(body),
        )
    }

    pub fn reload(&self) -> Response {
        self.admin_post("/reload", "{}")
    }

    /// Current value of one metric series, e.g. `gatehouse_requests_total{method="GET",route="a",status="200"}`
    /// (labels in the order Prometheus prints them: sorted). 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        let body = self.admin_get("/metrics").body;
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }

    pub fn access_log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("access log line is not JSON ({e}): {l}")))
            .collect()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// Waits for the process to exit, up to `timeout`; returns whether it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let child = self.child.as_mut().expect("started");
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Kills a process the test started indirectly (the new daemon after an upgrade).
pub struct KillOnDrop(pub i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
        }
    }
}

impl Gateway {
    /// Runs scripts/upgrade; returns (success, its output). Output goes through a file: the
    /// new daemon inherits the script's stdout, so a pipe would stay open as long as it runs.
    pub fn upgrade(&self) -> (bool, String) {
        let log = self.dir.join("upgrade.log");
        let f = std::fs::File::create(&log).expect("upgrade log");
        let status = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/upgrade"))
            .arg("-c")
            .arg(&self.config_path)
            .arg("-b")
            .arg(Self::bin())
            .env("GATEHOUSE_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdout(f.try_clone().expect("log"))
            .stderr(f)
            .status()
            .expect("run scripts/upgrade");
        (status.success(), std::fs::read_to_string(&log).unwrap_or_default())
    }

    /// The pid the pid file names now (the new process after an upgrade).
    pub fn pid_file_pid(&self) -> i32 {
        std::fs::read_to_string(self.dir.join("gatehouse.pid"))
            .unwrap_or_default()
            .trim()
            .parse()
            .unwrap_or(0)
    }
}

/// Runs `gatehouse -t` on `text`; returns (exit code, stderr).
pub fn check(text: &str) -> (i32, String, String) {
    let dir = test_dir();
    let path = dir.join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(Gateway::bin())
        .arg("-t")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path.display().to_string(),
    )
}

/// `gatehouse -t` refuses `text`, naming `key` (as `FILE: key: `) and `reason`.
pub fn refused(text: &str, key: &str, reason: &str) {
    let (code, err, file) = check(text);
    assert_eq!(code, 1, "expected refusal, got {code}: {err}");
    let expected = format!("{file}: {key}: ");
    assert!(err.contains(&expected), "missing `{expected}` in:\n{err}");
    assert!(err.contains(reason), "missing reason `{reason}` in:\n{err}");
}
