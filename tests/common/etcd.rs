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
    log: PathBuf,
    child: Option<Child>,
}

impl Etcd {
    pub fn start(dir: &std::path::Path) -> Etcd {
        let client = format!("http://127.0.0.1:{}", free_port());
        let peer = format!("http://127.0.0.1:{}", free_port());
        let args = vec![
            "--name=gw-test".to_string(),
            format!("--data-dir={}", dir.join("etcd-data").display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=gw-test={peer}"),
            "--log-level=error".into(),
        ];
        let mut e = Etcd {
            url: client,
            args,
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
        let health = self.url.trim_start_matches("http://").to_string();
        wait_until(Duration::from_secs(20), "etcd healthy", || {
            super::client::raw_request(&health, b"GET /health HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\n\r\n")
                .is_ok_and(|r| r.status == 200 && r.body.contains("\"health\":\"true\""))
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
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.url))
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
        assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
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
