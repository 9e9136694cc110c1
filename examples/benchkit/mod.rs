//! What the benchmark programs share: ports, pinned processes, and the CPU time and memory
//! of a process tree read from /proc.

#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the shipped build's binaries are (the `dist` profile: fat LTO, one codegen unit).
/// `scripts/bench` sets it; `--smoke` points it at the `release` build to keep CI short.
pub fn shipped_dir() -> PathBuf {
    std::env::var_os("GATEHOUSE_SHIPPED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/dist"))
}

/// The gateway binary the rows run: `GATEHOUSE_BIN`, else the shipped build's.
pub fn gatehouse_bin() -> PathBuf {
    std::env::var_os("GATEHOUSE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| shipped_dir().join("gatehouse"))
}

/// What the measuring passes after the timed rounds need of a ladder row.
pub struct Target<'a> {
    pub name: &'a str,
    pub port: u16,
    pub path: &'a str,
    /// The wrk script and its environment (auth rows).
    pub script: Option<&'a str>,
    pub env: &'a [(String, String)],
    /// What k6 is given for the same row (KEY, TOKEN).
    pub k6_env: &'a [(String, String)],
}

/// One wrk run: requests completed and errors (non-2xx/3xx answers and socket errors).
pub struct Wrk<'a> {
    pub cpus: &'a str,
    pub connections: usize,
    pub secs: u64,
    pub script: Option<&'a str>,
    pub env: &'a [(String, String)],
}

impl Wrk<'_> {
    pub fn run(&self, url: &str) -> (u64, u64) {
        let mut cmd = pinned(self.cpus, "wrk");
        cmd.args(["-t1", &format!("-c{}", self.connections), &format!("-d{}s", self.secs)]);
        if let Some(s) = self.script {
            cmd.args(["-s", s]);
        }
        cmd.arg(url).envs(self.env.iter().map(|(k, v)| (k, v)));
        let out = cmd
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let (mut requests, mut errors) = (0, 0);
        for l in out.lines().map(str::trim) {
            if l.contains(" requests in ") {
                requests = l.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
            } else if let Some(v) = l.strip_prefix("Non-2xx or 3xx responses:") {
                errors += v.trim().parse::<u64>().unwrap_or(0);
            } else if let Some(v) = l.strip_prefix("Socket errors:") {
                errors += v
                    .split(',')
                    .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                    .sum::<u64>();
            }
        }
        (requests, errors)
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

pub fn wait_port(port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

pub fn pinned(cpus: &str, program: &str) -> Command {
    let mut c = Command::new("taskset");
    c.arg("-c").arg(cpus).arg(program);
    c
}

pub fn spawn(mut cmd: Command, log: &Path) -> Child {
    let f = std::fs::File::create(log).expect("log file");
    let f2 = f.try_clone().expect("log file");
    cmd.stdout(Stdio::from(f))
        .stderr(Stdio::from(f2))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"))
}

/// This pid and every descendant (nginx forks its worker).
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                if let Ok(children) = std::fs::read_to_string(t.path().join("children")) {
                    out.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
                }
            }
        }
        i += 1;
    }
    out.sort();
    out.dedup();
    out
}

/// utime+stime in clock ticks, summed over the process tree.
pub fn cpu_ticks(pid: u32) -> u64 {
    process_tree(pid)
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| {
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

pub fn rss_bytes(pid: u32) -> u64 {
    process_tree(pid)
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum::<u64>()
        * 1024
}

pub fn clk_tck() -> f64 {
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

pub fn parse_latency(v: &str) -> f64 {
    let v = v.trim();
    let (num, mult) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        (v, 1.0)
    };
    num.parse::<f64>().unwrap_or(f64::NAN) * mult
}

pub fn stop(c: &mut Child) {
    unsafe {
        libc::kill(c.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
}

pub fn raise_fd_limit() {
    unsafe {
        let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("{cores} cores, {cpu}")
}

pub fn commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Flags with a value that some part of `scripts/bench` takes (it passes the same arguments
/// to every part): a part skips the ones it does not use.
const VALUE_FLAGS: [&str; 13] = [
    "--rounds",
    "--duration",
    "--proxy-cpus",
    "--load-cpus",
    "--rows",
    "--connections",
    "--out",
    "--results-md",
    "--k6-rate",
    "--memory-conns",
    "--tls-out",
    "--stream-out",
    "--scale-out",
];

/// Walks the arguments: `take(flag, value)` says whether it used a flag with its value;
/// other value flags are skipped with theirs. Returns whether `--smoke` was given.
pub fn walk_args(args: &[String], mut take: impl FnMut(&str, String) -> bool) -> bool {
    let mut smoke = false;
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        if take(&args[i], value) || VALUE_FLAGS.contains(&args[i].as_str()) {
            i += 2;
        } else {
            smoke |= args[i] == "--smoke";
            i += 1;
        }
    }
    smoke
}

pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    (!v.is_empty()).then(|| v[v.len() / 2])
}

pub fn nginx_bin() -> &'static str {
    if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

/// A config from `loadtest/` with its placeholders filled: `__DIR__`, `__BODY__` (the 1 KiB
/// JSON body every upstream answers) and `ports`.
pub fn fill(dir: &Path, template: &str, ports: &[(&str, String)]) -> String {
    let mut t = std::fs::read_to_string(template).unwrap_or_else(|e| panic!("{template}: {e}"));
    for (k, v) in ports {
        t = t.replace(k, v);
    }
    t.replace("__DIR__", &dir.display().to_string())
        .replace("__BODY__", &format!("{{\"data\":\"{}\"}}", "x".repeat(1024 - 11)))
}

/// nginx as the upstream every row proxies to (`loadtest/nginx-upstream.conf`), pinned to
/// `cpus`; its port.
pub fn start_upstream(dir: &Path, cpus: &str) -> (Child, u16) {
    let up = free_port();
    std::fs::write(
        dir.join("upstream.conf"),
        fill(dir, "loadtest/nginx-upstream.conf", &[("__PORT__", up.to_string())]),
    )
    .expect("write");
    let mut c = pinned(cpus, nginx_bin());
    c.arg("-c").arg(dir.join("upstream.conf")).arg("-p").arg(dir);
    let child = spawn(c, &dir.join("upstream.log"));
    assert!(wait_port(up), "upstream nginx did not start");
    (child, up)
}
