//! A real etcd for the fleet config tests: Debian's etcd-server as a one-member cluster on
//! 127.0.0.1 ports, with its data in the test's directory so a restart keeps the keys.
//! Writes behind the gateway's back go through the real `etcdctl`.

use super::{free_port, wait_until};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Etcd {
    pub url: String,
    args: Vec<String>,
    /// etcdctl's TLS flags, for a TLS etcd.
    ctl_tls: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Etcd {
    pub fn start(dir: &std::path::Path) -> Etcd {
        Self::start_with(dir, None)
    }

    /// Clients over TLS with etcd's `--client-cert-auth`: `server` is etcd's certificate
    /// (for 127.0.0.1), `client` one etcdctl presents, both signed by `ca`.
    pub fn start_tls(dir: &std::path::Path, ca: &std::path::Path, server: &super::tls::Leaf, client: &super::tls::Leaf) -> Etcd {
        Self::start_with(dir, Some((ca, server, client)))
    }

    fn start_with(dir: &std::path::Path, tls: Option<(&std::path::Path, &super::tls::Leaf, &super::tls::Leaf)>) -> Etcd {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", free_port());
        let peer = format!("http://127.0.0.1:{}", free_port());
        let mut args = vec![
            "--name=gw-test".to_string(),
            format!("--data-dir={}", dir.join("etcd-data").display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=gw-test={peer}"),
            "--log-level=error".into(),
        ];
        let mut ctl_tls = Vec::new();
        if let Some((ca, server, client)) = tls {
            args.extend([
                format!("--cert-file={}", server.cert.display()),
                format!("--key-file={}", server.key.display()),
                format!("--trusted-ca-file={}", ca.display()),
                "--client-cert-auth".into(),
            ]);
            ctl_tls = vec![
                format!("--cacert={}", ca.display()),
                format!("--cert={}", client.cert.display()),
                format!("--key={}", client.key.display()),
            ];
        }
        let mut e = Etcd {
            url: client,
            args,
            ctl_tls,
            log: dir.join("etcd.log"),
            child: None,
        };
        e.spawn();
        e
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("etcd log file");
        let child = Command::new("etcd")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start etcd (scripts/setup installs etcd-server)");
        self.child = Some(child);
        wait_until(Duration::from_secs(20), "etcd healthy", || {
            // It reports on stderr; the exit status says healthy.
            self.ctl(&["endpoint", "health"], None).is_ok()
        });
    }

    /// SIGKILL, as a crash or a lost machine would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn etcdctl(&self, args: &[&str], stdin: Option<&str>) -> String {
        self.ctl(args, stdin).unwrap_or_else(|e| panic!("etcdctl {args:?}: {e}"))
    }

    fn ctl(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.url))
            .args(&self.ctl_tls)
            .args(["--dial-timeout=1s", "--command-timeout=2s"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run etcdctl (scripts/setup installs etcd-client)");
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())
                .expect("write etcdctl stdin");
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().expect("etcdctl output");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `etcdctl put` straight to the key: what a push that skipped validation would do.
    /// Returns the new revision.
    pub fn put(&self, key: &str, value: &str) -> i64 {
        self.etcdctl(&["put", key], Some(value));
        self.revision(key)
    }

    pub fn delete(&self, key: &str) {
        self.etcdctl(&["del", key], None);
    }

    /// The key's mod_revision (0 when it does not exist).
    pub fn revision(&self, key: &str) -> i64 {
        let out = self.etcdctl(&["get", key, "-w", "json"], None);
        let v: serde_json::Value = serde_json::from_str(&out).expect("etcdctl json");
        v["kvs"][0]["mod_revision"].as_i64().unwrap_or(0)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
