//! Allocations per request for the Gatehouse rows: the same config run once more with the
//! allocation counter on (`GATEHOUSE_COUNT_ALLOCS=1`, see src/alloc_count.rs), outside the
//! timed rounds so the counter's atomics never touch the CPU figures.

use super::benchkit::*;
use super::variants::gatehouse_config;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;

/// G0, G1 and G4 (those present) into `summary[row]["allocations"]`.
pub fn measure(s: &Setup, targets: &[Target], summary: &mut BTreeMap<String, Value>) {
    for t in targets.iter().filter(|t| matches!(t.name, "G0" | "G1" | "G4")) {
        let a = per_request(s, t.name, t.script, t.env);
        eprintln!("allocations {}: {a}", t.name);
        if let Some(Value::Object(m)) = summary.get_mut(t.name) {
            m.insert("allocations".into(), a);
        }
    }
}

/// The counter's two series from the admin listener's `/metrics`.
fn counted(admin: u16) -> Option<(f64, f64)> {
    let mut s = TcpStream::connect(("127.0.0.1", admin)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
    };
    Some((value("gatehouse_allocations_total")?, value("gatehouse_allocated_bytes_total")?))
}

/// `{"allocs_per_req", "bytes_per_req", "requests"}` for one variant, or why not.
pub struct Setup<'a> {
    pub gatehouse: &'a Path,
    pub dir: &'a Path,
    pub upstream: u16,
    pub proxy_cpus: &'a str,
    pub load_cpus: &'a str,
    pub connections: usize,
    pub secs: u64,
}

pub fn per_request(s: &Setup, variant: &str, script: Option<&str>, env: &[(String, String)]) -> Value {
    let dir = s.dir.join(format!("allocs-{variant}"));
    let _ = std::fs::create_dir_all(&dir);
    let (port, admin) = (free_port(), free_port());
    let conf = gatehouse_config(&dir, port, admin, s.upstream, variant, None);
    let mut cmd: Command = pinned(s.proxy_cpus, &s.gatehouse.display().to_string());
    cmd.arg("-c").arg(&conf).env("GATEHOUSE_COUNT_ALLOCS", "1");
    let mut child = spawn(cmd, &dir.join("gatehouse.log"));
    let result = (|| {
        if !wait_port(port) || !wait_port(admin) {
            return json!({ "error": "did not start" });
        }
        let url = format!("http://127.0.0.1:{port}/");
        let wrk = |secs| {
            Wrk {
                cpus: s.load_cpus,
                connections: s.connections,
                secs,
                script,
                env,
            }
            .run(&url)
            .0
        };
        // Warm-up: connection pools, lazily built label children, the allocator's caches.
        wrk(1);
        let Some((n0, b0)) = counted(admin) else {
            return json!({ "error": "no allocation counter in /metrics" });
        };
        let requests = wrk(s.secs);
        let Some((n1, b1)) = counted(admin) else {
            return json!({ "error": "no allocation counter in /metrics" });
        };
        if requests == 0 {
            return json!({ "error": "wrk completed no request" });
        }
        // The scrape in between allocates too; against tens of thousands of requests it is
        // a rounding error, and it is left in rather than guessed at.
        let r = requests as f64;
        json!({ "allocs_per_req": (n1 - n0) / r, "bytes_per_req": (b1 - b0) / r, "requests": requests })
    })();
    stop(&mut child);
    result
}
