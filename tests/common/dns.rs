//! A real DNS server for discovery tests: Debian's dnsmasq on a 127.0.0.1 port, answering
//! only from a hosts file the test edits (and SRV records given at start), with a short
//! TTL; names it does not know in `.test` get NXDOMAIN.

use super::{free_port, wait_until};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Dns {
    pub addr: String,
    hosts: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Dns {
    /// `srv`: `--srv-host` values (`_http._tcp.NAME,TARGET,PORT,PRIORITY,WEIGHT`).
    pub fn start(dir: &std::path::Path, hosts: &str, srv: &[String]) -> Dns {
        let port = free_port();
        let hosts_file = dir.join("dns-hosts");
        std::fs::write(&hosts_file, hosts).expect("write hosts file");
        let mut args = vec![
            "--keep-in-foreground".to_string(),
            "--conf-file=/dev/null".into(),
            format!("--port={port}"),
            "--listen-address=127.0.0.1".into(),
            "--bind-interfaces".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--local=/test/".into(),
            // Longer than the tests' max_ttl: rounds follow max_ttl, not the TTL.
            "--local-ttl=60".into(),
            "--user=root".into(),
            format!("--addn-hosts={}", hosts_file.display()),
            format!("--pid-file={}", dir.join("dnsmasq.pid").display()),
        ];
        args.extend(srv.iter().map(|s| format!("--srv-host={s}")));
        let mut d = Dns {
            addr: format!("127.0.0.1:{port}"),
            hosts: hosts_file,
            args,
            child: None,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let bin = if std::path::Path::new("/usr/sbin/dnsmasq").exists() {
            "/usr/sbin/dnsmasq"
        } else {
            "dnsmasq"
        };
        let child = Command::new(bin)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq (scripts/setup installs dnsmasq-base)");
        self.child = Some(child);
        let addr = self.addr.clone();
        // It answers over TCP on the same port once it is up.
        wait_until(Duration::from_secs(5), "dnsmasq listening", || {
            std::net::TcpStream::connect(&addr).is_ok()
        });
    }

    /// New records: the hosts file rewritten and dnsmasq told to read it again.
    pub fn set_hosts(&self, hosts: &str) {
        std::fs::write(&self.hosts, hosts).expect("write hosts file");
        if let Some(c) = &self.child {
            unsafe { libc::kill(c.id() as i32, libc::SIGHUP) };
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// The same port answering every question with REFUSED (no records of its own, no
    /// upstream servers): a server that is up but failing.
    pub fn refuse_all(&mut self) {
        self.stop();
        let keep = |a: &String| !a.starts_with("--addn-hosts") && !a.starts_with("--local=") && !a.starts_with("--srv-host");
        let saved = std::mem::take(&mut self.args);
        self.args = saved.iter().filter(|a| keep(a)).cloned().collect();
        self.spawn();
        self.args = saved;
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop();
    }
}
