//! The benchmark ladder behind `scripts/bench`: the same load against an upstream directly
//! (D), nginx as a reverse proxy (N), the bare Pingora floor (P) and Gatehouse rows (G*),
//! interleaved over several rounds so drift on a shared machine hits every row alike.
//!
//! For each row: requests/s, proxy CPU microseconds per request (utime+stime of the proxy
//! processes from /proc over the run, divided by requests), p50/p99 from wrk, p99 and p99.9
//! at a fixed open-loop rate from k6 (half of N's maximum), errors and RSS. Then memory:
//! Gatehouse's RSS idle and holding many idle keep-alive connections.
//!
//! Run through `scripts/bench` (it builds the release binaries first); `--help` for flags.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

#[path = "benchkit/mod.rs"]
mod benchkit;
use benchkit::*;
#[path = "benchkit/variants.rs"]
mod variants;
use variants::*;
#[path = "benchkit/allocs.rs"]
mod allocs;
#[path = "benchkit/k6.rs"]
mod k6;
#[path = "benchkit/openloop_rows.rs"]
mod openloop_rows;
#[path = "benchkit/otlp_sink.rs"]
mod otlp_sink;
#[path = "benchkit/report.rs"]
mod report;
use report::{render_table, write_results_md};

struct Opts {
    smoke: bool,
    rounds: usize,
    duration: u64,
    connections: usize,
    proxy_cpus: String,
    load_cpus: String,
    rows: Vec<String>,
    k6: bool,
    memory_conns: usize,
    out: PathBuf,
    results_md: Option<PathBuf>,
    k6_rate: Option<u64>,
}

const HELP: &str = "scripts/bench [--smoke] [--rounds N] [--duration SECS] [--connections N]
  [--proxy-cpus 0] [--load-cpus 1] [--rows D,N,P,P_lto,PM,G0,G1,G1T,G1T01,GM,GW,GK,G4,GJ,GJR,GR,GC,GT2,GT2N] [--no-k6]
  [--memory-conns N] [--out FILE.json] [--results-md FILE] [--k6-rate REQ_PER_S]
  The k6 open-loop rate defaults to half of N's maximum (the issue's definition), stepped
  down until one k6 process keeps up against D (its p99 within 3x wrk's, or 5 ms); --k6-rate fixes it.";

fn opts() -> Opts {
    let mut o = Opts {
        smoke: false,
        // Many short interleaved rounds: on a shared VM the noise moves within minutes, and
        // a row measured in 9 slices spread over the run sees the same noise as the others.
        rounds: 9,
        duration: 3,
        connections: 50,
        proxy_cpus: "0".into(),
        load_cpus: "1".into(),
        rows: vec![],
        k6: true,
        memory_conns: 10_000,
        out: PathBuf::from("loadtest/results/latest.json"),
        results_md: None,
        k6_rate: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    let val = |i: &mut usize| -> String {
        *i += 1;
        args.get(*i).cloned().unwrap_or_else(|| {
            eprintln!("{HELP}");
            std::process::exit(2)
        })
    };
    while i < args.len() {
        match args[i].as_str() {
            "--smoke" => o.smoke = true,
            "--rounds" => o.rounds = val(&mut i).parse().unwrap_or(9),
            "--duration" => o.duration = val(&mut i).parse().unwrap_or(3),
            "--connections" => o.connections = val(&mut i).parse().unwrap_or(50),
            "--proxy-cpus" => o.proxy_cpus = val(&mut i),
            "--load-cpus" => o.load_cpus = val(&mut i),
            "--rows" => o.rows = val(&mut i).split(',').map(|s| s.trim().to_string()).collect(),
            "--no-k6" => o.k6 = false,
            "--memory-conns" => o.memory_conns = val(&mut i).parse().unwrap_or(10_000),
            "--out" => o.out = PathBuf::from(val(&mut i)),
            "--results-md" => o.results_md = Some(PathBuf::from(val(&mut i))),
            "--k6-rate" => o.k6_rate = val(&mut i).parse().ok(),
            "-h" | "--help" => {
                println!("{HELP}");
                std::process::exit(0)
            }
            other => {
                eprintln!("unknown flag {other}\n{HELP}");
                std::process::exit(2)
            }
        }
        i += 1;
    }
    if o.smoke {
        o.rounds = 1;
        o.duration = 2;
        o.memory_conns = o.memory_conns.min(500);
        o.out = PathBuf::from("target/bench-smoke.json");
    }
    if o.rows.is_empty() {
        o.rows = [
            "D", "N", "P", "P_lto", "PM", "G0", "G1", "G1T", "G1T01", "GM", "GW", "GK", "G4", "GJ", "GJR", "GR", "GC", "GT2", "GT2N",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
    }
    o
}

struct Row {
    name: String,
    what: String,
    port: u16,
    path: String,
    pid: Option<u32>,
    child: Option<Child>,
    script: Option<String>,
    env: Vec<(String, String)>,
    k6_env: Vec<(String, String)>,
}

impl Row {
    fn target(&self) -> Target<'_> {
        Target {
            name: &self.name,
            port: self.port,
            path: &self.path,
            script: self.script.as_deref(),
            env: &self.env,
            k6_env: &self.k6_env,
        }
    }
}

#[derive(Default, Clone)]
struct Sample {
    rps: f64,
    requests: u64,
    cpu_us: Option<f64>,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    rss: u64,
}

fn run_wrk(o: &Opts, row: &Row, secs: u64) -> Sample {
    let url = format!("http://127.0.0.1:{}{}", row.port, row.path);
    let mut cmd = pinned(&o.load_cpus, "wrk");
    cmd.args(["-t1", &format!("-c{}", o.connections), &format!("-d{secs}s"), "--latency"]);
    if let Some(s) = &row.script {
        cmd.args(["-s", s]);
    }
    cmd.arg(&url);
    for (k, v) in &row.env {
        cmd.env(k, v);
    }
    let before = row.pid.map(cpu_ticks);
    let out = cmd.output().expect("run wrk (is it installed? scripts/setup bench)");
    let after = row.pid.map(cpu_ticks);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut s = Sample::default();
    for line in text.lines() {
        let l = line.trim();
        if let Some(v) = l.strip_prefix("Requests/sec:") {
            s.rps = v.trim().parse().unwrap_or(0.0);
        } else if l.contains(" requests in ") {
            s.requests = l.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
        } else if let Some(v) = l.strip_prefix("50%") {
            s.p50_ms = parse_latency(v);
        } else if let Some(v) = l.strip_prefix("99%") {
            s.p99_ms = parse_latency(v);
        } else if let Some(v) = l.strip_prefix("Non-2xx or 3xx responses:") {
            s.errors += v.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(v) = l.strip_prefix("Socket errors:") {
            // connect 0, read 0, write 0, timeout 0
            s.errors += v
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    if s.requests == 0 {
        eprintln!(
            "wrk produced no requests for {}:\n{text}\n{}",
            row.name,
            String::from_utf8_lossy(&out.stderr)
        );
        s.errors += 1;
    }
    if let (Some(b), Some(a)) = (before, after) {
        if s.requests > 0 {
            s.cpu_us = Some((a - b) as f64 / clk_tck() * 1e6 / s.requests as f64);
        }
    }
    s.rss = row.pid.map(rss_bytes).unwrap_or(0);
    s
}

/// (p99 ms, p99.9 ms, failed requests) at a fixed open-loop rate.
/// The fixed rate is half of N's maximum, but one k6 process on the load core saturates
/// well below that on a small machine, and then its p99 measures k6's own queue. So the rate
/// is stepped down (x0.6) until k6, aimed at the upstream directly (row D), keeps its p99
/// within 3x of wrk's p99 for D (or 5 ms), and then one step more for margin: the open-loop
/// columns then measure the proxies.
fn k6_capacity(o: &Opts, rows: &[Row], summary: &BTreeMap<String, Value>, mut rate: u64, secs: u64, dir: &Path) -> u64 {
    let Some(d) = rows.iter().find(|r| r.name == "D") else {
        return rate;
    };
    let wrk_p99 = summary.get("D").and_then(|v| v["p99_ms"].as_f64()).unwrap_or(1.0);
    let limit = (3.0 * wrk_p99).max(5.0);
    while rate > 500 {
        // As long as the measured runs: a short probe passes near the knee and then the
        // measured run does not.
        match k6::run(&o.load_cpus, &d.target(), rate, secs, dir) {
            // One step below the first rate that passes: at the knee k6 passes one run and
            // queues in the next.
            Some((p99, _, failed)) if p99 <= limit && failed == 0 => return (rate * 3 / 5).max(500),
            Some((p99, ..)) => eprintln!("k6 at {rate} req/s: p99 {p99:.1} ms against D (limit {limit:.1} ms); stepping down"),
            None => break,
        }
        rate = rate * 3 / 5;
    }
    rate.max(500)
}

fn main() {
    let o = opts();
    let root = std::env::current_dir().expect("cwd");
    let dir = std::env::temp_dir().join(format!("gatehouse-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    raise_fd_limit();

    let body = format!("{{\"data\":\"{}\"}}", "x".repeat(1024 - 11));
    let up_port = free_port();
    let nginx_up = std::fs::read_to_string(root.join("loadtest/nginx-upstream.conf"))
        .expect("loadtest/nginx-upstream.conf")
        .replace("__PORT__", &up_port.to_string())
        .replace("__DIR__", &dir.display().to_string())
        .replace("__BODY__", &body);
    std::fs::write(dir.join("nginx-upstream.conf"), nginx_up).expect("write nginx conf");
    let nginx = if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    };
    let mut cmd = pinned(&o.load_cpus, nginx);
    cmd.arg("-c").arg(dir.join("nginx-upstream.conf")).arg("-p").arg(&dir);
    let mut upstream = spawn(cmd, &dir.join("nginx-upstream.log"));
    assert!(wait_port(up_port), "upstream nginx did not start");

    let gh = root.join(gatehouse_bin());
    let bare = root.join("target/release/examples/bare_proxy");
    // The same bare proxy built like the shipped gateway: the reference of the x P column.
    let bare_lto = root.join(shipped_dir()).join("examples/bare_proxy");
    let bare_mi = root.join("target/release/examples/bare_proxy_mimalloc");
    let mut rows: Vec<Row> = Vec::new();
    let mut redis_child: Option<Child> = None;
    for name in &o.rows {
        let port = free_port();
        let mut row = Row {
            name: name.clone(),
            what: describe(name).to_string(),
            port,
            path: "/".into(),
            pid: None,
            child: None,
            script: None,
            env: vec![],
            k6_env: vec![],
        };
        let child = match name.as_str() {
            "D" => {
                row.port = up_port;
                None
            }
            "N" => {
                let conf = std::fs::read_to_string(root.join("loadtest/nginx-proxy.conf"))
                    .expect("loadtest/nginx-proxy.conf")
                    .replace("__PORT__", &port.to_string())
                    .replace("__UPSTREAM__", &up_port.to_string())
                    .replace("__DIR__", &dir.display().to_string());
                std::fs::write(dir.join("nginx-proxy.conf"), conf).expect("write nginx proxy conf");
                let mut c = pinned(&o.proxy_cpus, nginx);
                c.arg("-c").arg(dir.join("nginx-proxy.conf")).arg("-p").arg(&dir);
                Some(spawn(c, &dir.join("nginx-proxy.log")))
            }
            "P" | "P_lto" | "PM" => {
                let bin = match name.as_str() {
                    "P" => &bare,
                    "P_lto" => &bare_lto,
                    _ => &bare_mi,
                };
                let mut c = pinned(&o.proxy_cpus, &bin.display().to_string());
                c.arg(format!("127.0.0.1:{port}")).arg(format!("127.0.0.1:{up_port}")).arg("1");
                Some(spawn(c, &dir.join(format!("bare-{name}.log"))))
            }
            g if g.starts_with('G') => {
                let redis = if g == "GR" {
                    match start_redis(&dir) {
                        Some((child, p)) => {
                            redis_child = Some(child);
                            Some(p)
                        }
                        None => {
                            eprintln!("skipping GR: redis-server is not available");
                            continue;
                        }
                    }
                } else {
                    None
                };
                if g == "GJ" || g == "GJR" {
                    match jwt_material(&dir, g == "GJR") {
                        Some(token) => {
                            row.script = Some("loadtest/bearer.lua".into());
                            row.env.push(("GATEHOUSE_BENCH_TOKEN".into(), token.clone()));
                            row.k6_env.push(("TOKEN".into(), token));
                        }
                        None => {
                            eprintln!("skipping GJ: could not make a test token (openssl missing?)");
                            continue;
                        }
                    }
                }
                if g == "G4" || g == "GR" || g == "GK" {
                    row.script = Some("loadtest/apikey.lua".into());
                    row.k6_env.push(("KEY".into(), "bench-key-0001".into()));
                }
                let admin = free_port();
                let conf = gatehouse_config(&dir, port, admin, up_port, g, redis);
                let check = Command::new(&gh).arg("-t").arg("-c").arg(&conf).output().expect("run gatehouse -t");
                if !check.status.success() {
                    eprintln!(
                        "skipping {g}: this build does not accept its config:\n{}",
                        String::from_utf8_lossy(&check.stderr)
                    );
                    continue;
                }
                let mut c = pinned(&o.proxy_cpus, &gh.display().to_string());
                c.arg("-c").arg(&conf);
                Some(spawn(c, &dir.join(format!("gatehouse-{g}.log"))))
            }
            other => {
                eprintln!("unknown row {other}");
                continue;
            }
        };
        if let Some(c) = child {
            assert!(wait_port(port), "row {name} did not start listening");
            row.pid = Some(c.id());
            row.child = Some(c);
        }
        rows.push(row);
    }

    // Warm up every row (connection pools, caches, page faults), unmeasured.
    for row in &rows {
        let _ = run_wrk(&o, row, 1);
    }

    let mut samples: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    for round in 0..o.rounds {
        for row in &rows {
            let s = run_wrk(&o, row, o.duration);
            eprintln!(
                "round {} {:>3}: {:>9.0} req/s  cpu {:>6}  p99 {:.2} ms  errors {}",
                round + 1,
                row.name,
                s.rps,
                s.cpu_us.map(|c| format!("{c:.1}us")).unwrap_or("-".into()),
                s.p99_ms,
                s.errors
            );
            samples.entry(row.name.clone()).or_default().push(s);
        }
    }

    let median = |v: &mut Vec<f64>| -> f64 {
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        v[v.len() / 2]
    };
    let mut summary: BTreeMap<String, Value> = BTreeMap::new();
    for row in &rows {
        let s = &samples[&row.name];
        let mut rps: Vec<f64> = s.iter().map(|x| x.rps).collect();
        let mut cpu: Vec<f64> = s.iter().filter_map(|x| x.cpu_us).collect();
        let mut p50: Vec<f64> = s.iter().map(|x| x.p50_ms).collect();
        let mut p99: Vec<f64> = s.iter().map(|x| x.p99_ms).collect();
        let errors: u64 = s.iter().map(|x| x.errors).sum();
        let rss = s.iter().map(|x| x.rss).max().unwrap_or(0);
        // Quartiles of the CPU samples: how far the noise moved this row.
        let quartiles = {
            let mut v = cpu.clone();
            v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
            (!v.is_empty()).then(|| (v[v.len() / 4], v[(v.len() * 3) / 4]))
        };
        summary.insert(
            row.name.clone(),
            json!({
                "what": row.what, "rps": median(&mut rps), "cpu_us_per_req": if cpu.is_empty() { Value::Null } else { json!(median(&mut cpu)) },
                "p50_ms": median(&mut p50), "p99_ms": median(&mut p99), "errors": errors, "rss_bytes": rss,
                "rounds": s.len(), "cpu_q1": quartiles.map(|q| q.0), "cpu_q3": quartiles.map(|q| q.1),
            }),
        );
    }

    // Open-loop latency at half of nginx's maximum (or of the fastest proxy row without N).
    let n_rps = summary
        .get("N")
        .and_then(|v| v["rps"].as_f64())
        .or_else(|| summary.values().filter_map(|v| v["rps"].as_f64()).reduce(f64::min))
        .unwrap_or(1000.0);
    let mut rate = ((n_rps / 2.0) as u64).max(50);
    if o.smoke {
        // Smoke runs only check that the scenario works; keep k6 well inside its capacity.
        rate = rate.min(1000);
    }
    let wanted = rate;
    if let Some(r) = o.k6_rate {
        rate = r;
    } else if o.k6 && !o.smoke {
        rate = k6_capacity(&o, &rows, &summary, rate, o.duration.max(8), &dir);
    }
    if o.k6 {
        // Long enough for a p99.9 with a few dozen samples above it.
        let secs = if o.smoke { 2 } else { o.duration.max(8) };
        for row in &rows {
            if let Some((p99, p999, failed)) = k6::run(&o.load_cpus, &row.target(), rate, secs, &dir) {
                if let Some(Value::Object(m)) = summary.get_mut(&row.name) {
                    m.insert("k6_rate".into(), json!(rate));
                    m.insert("k6_rate_wanted".into(), json!(wanted));
                    m.insert("k6_p99_ms".into(), json!(p99));
                    m.insert("k6_p999_ms".into(), json!(p999));
                    m.insert("k6_failed".into(), json!(failed));
                }
            }
        }
    }

    let targets: Vec<Target> = rows.iter().map(Row::target).collect();
    let ol_secs = if o.smoke { 2 } else { o.duration.max(10) };
    openloop_rows::measure(&o.load_cpus, n_rps, ol_secs, &targets, &mut summary);
    // Allocations per request, from a counting run of the same binary and config.
    let setup = allocs::Setup {
        gatehouse: &gh,
        dir: &dir,
        upstream: up_port,
        proxy_cpus: &o.proxy_cpus,
        load_cpus: &o.load_cpus,
        connections: o.connections,
        secs: o.duration.max(2),
    };
    allocs::measure(&setup, &targets, &mut summary);

    let memory = rows
        .iter()
        .find(|r| r.name == "G0")
        .and_then(|r| r.pid.map(|pid| memory_test(pid, r.port, o.memory_conns)));

    // Ratios: per round, each row against the reference measured in that same round, then
    // the median over rounds. A round runs every row back to back, so a slow spell of this
    // shared machine lands on both sides of a ratio instead of on one row's median.
    let paired = |name: &str, reference: &str| -> Option<(f64, f64, f64)> {
        let (a, b) = (samples.get(name)?, samples.get(reference)?);
        let mut r: Vec<f64> = a.iter().zip(b).filter_map(|(x, y)| Some(x.cpu_us? / y.cpu_us?)).collect();
        if r.is_empty() {
            return None;
        }
        r.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        Some((r[r.len() / 2], r[r.len() / 4], r[(r.len() * 3) / 4]))
    };
    for (name, v) in summary.iter_mut() {
        let Value::Object(m) = v else { continue };
        for (key, reference) in [
            ("x_nginx", "N"),
            ("x_pingora", "P_lto"),
            ("x_pingora_mimalloc", "PM"),
            ("x_g0", "G0"),
        ] {
            if key == "x_g0" && !name.starts_with('G') {
                continue;
            }
            if let Some((median, q1, q3)) = paired(name, reference) {
                m.insert(key.into(), json!(median));
                m.insert(format!("{key}_q1"), json!(q1));
                m.insert(format!("{key}_q3"), json!(q3));
            }
        }
    }

    let table = render_table(&rows, &summary, memory.as_ref());
    println!("{table}");
    let report = json!({
        "machine": machine(), "commit": commit(), "date": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "settings": { "rounds": o.rounds, "duration_s": o.duration, "connections": o.connections, "proxy_cpus": o.proxy_cpus, "load_cpus": o.load_cpus, "k6_rate": rate, "smoke": o.smoke },
        "rows": summary, "memory": memory,
    });
    if let Some(parent) = o.out.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let _ = std::fs::write(&o.out, serde_json::to_string_pretty(&report).unwrap_or_default());
    eprintln!("wrote {}", o.out.display());
    if let Some(md) = &o.results_md {
        write_results_md(md, &report, &table);
    }

    for row in rows.iter_mut() {
        if let Some(mut c) = row.child.take() {
            stop(&mut c);
        }
    }
    if let Some(mut r) = redis_child {
        stop(&mut r);
    }
    stop(&mut upstream);
    let _ = std::fs::remove_dir_all(&dir);

    let total_errors: u64 = summary
        .values()
        .map(|v| v["errors"].as_u64().unwrap_or(0) + v["k6_failed"].as_u64().unwrap_or(0))
        .sum();
    if total_errors > 0 {
        eprintln!("FAIL: {total_errors} errors in the ladder");
        std::process::exit(1);
    }
}

/// RSS idle, then holding `n` idle keep-alive connections that each made one request.
fn memory_test(pid: u32, port: u16, n: usize) -> Value {
    let idle = rss_bytes(pid);
    let mut conns = Vec::with_capacity(n);
    let mut failed = 0;
    for _ in 0..n {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(mut s) => {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                if s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n").is_err() {
                    failed += 1;
                    continue;
                }
                let mut buf = [0u8; 2048];
                let mut got = 0;
                // Read the whole response (headers + 1 KiB body) so the connection is idle.
                while got < 1024 + 100 {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => got += k,
                    }
                }
                conns.push(s);
            }
            Err(_) => failed += 1,
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let held = rss_bytes(pid);
    let per = if conns.is_empty() {
        0.0
    } else {
        (held.saturating_sub(idle)) as f64 / conns.len() as f64
    };
    eprintln!(
        "memory: idle {} KiB, {} connections {} KiB, {:.0} bytes per connection ({} failed)",
        idle / 1024,
        conns.len(),
        held / 1024,
        per,
        failed
    );
    json!({ "idle_rss_bytes": idle, "connections": conns.len(), "failed": failed, "rss_with_connections_bytes": held, "bytes_per_connection": per })
}
