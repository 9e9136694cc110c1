//! The TLS rows of `scripts/bench`: nginx and Gatehouse terminating TLS with the same
//! certificates and the same system OpenSSL, one worker each, pinned to the proxy CPU,
//! proxying to the same upstream.
//!
//! Rows (for N = nginx and G = Gatehouse): `h1` plaintext keep-alive (wrk), `tls` HTTPS
//! keep-alive (wrk), `h2` HTTP/2 over TLS (h2load -c 10 -m 10), `hs-ec` and `hs-rsa` a full
//! handshake per request (`openssl s_time -new`, ECDSA P-256 and RSA-2048), `resume` a
//! resumed handshake per request (`openssl s_time -reuse`, session tickets). CPU is the
//! proxy's utime+stime per request (per connection for the handshake rows). Rounds are
//! interleaved and each ratio pairs rows of the same round; the medians are reported.
//! Then memory per idle connection, TLS beside plaintext, for both.

#[path = "benchkit/mod.rs"]
mod benchkit;
use benchkit::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

struct Opts {
    smoke: bool,
    rounds: usize,
    duration: u64,
    proxy_cpus: String,
    load_cpus: String,
    memory_conns: usize,
    out: PathBuf,
}

/// The ladder's flags are accepted too (scripts/bench passes the same arguments to both):
/// the ones that take a value have it skipped.
fn opts() -> Opts {
    let mut o = Opts {
        smoke: false,
        rounds: 5,
        duration: 3,
        proxy_cpus: "0".into(),
        load_cpus: "1".into(),
        memory_conns: 2000,
        out: PathBuf::from("loadtest/results/tls-latest.json"),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    o.smoke = walk_args(&args, |flag, value| {
        match flag {
            "--rounds" => o.rounds = value.parse().unwrap_or(5),
            "--duration" => o.duration = value.parse().unwrap_or(3),
            "--proxy-cpus" => o.proxy_cpus = value,
            "--load-cpus" => o.load_cpus = value,
            "--memory-conns" => o.memory_conns = value.parse().unwrap_or(2000).min(5000),
            "--tls-out" => o.out = PathBuf::from(value),
            _ => return false,
        }
        true
    });
    if o.smoke {
        o.rounds = 1;
        o.duration = 1;
        o.memory_conns = 200;
        o.out = PathBuf::from("target/bench-tls-smoke.json");
    }
    o
}

/// What drives one row.
#[derive(Clone)]
enum Load {
    Wrk(String),
    H2load(String),
    STime { addr: String, reuse: bool },
}

struct Row {
    name: String,
    pid: u32,
    load: Load,
}

#[derive(Default, Clone)]
struct Sample {
    count: u64,
    rate: f64,
    errors: u64,
    cpu_us: Option<f64>,
    /// s_time -reuse: the share of connections that resumed.
    reused: Option<f64>,
}

fn measure(o: &Opts, row: &Row, secs: u64) -> Sample {
    let before = cpu_ticks(row.pid);
    let mut s = Sample::default();
    match &row.load {
        Load::Wrk(url) => {
            let out = pinned(&o.load_cpus, "wrk")
                .args(["-t1", "-c50", &format!("-d{secs}s"), url])
                .output()
                .expect("wrk (scripts/setup bench)");
            for l in String::from_utf8_lossy(&out.stdout).lines().map(str::trim) {
                if l.contains(" requests in ") {
                    s.count = l.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
                } else if let Some(v) = l.strip_prefix("Requests/sec:") {
                    s.rate = v.trim().parse().unwrap_or(0.0);
                } else if let Some(v) = l.strip_prefix("Non-2xx or 3xx responses:") {
                    s.errors += v.trim().parse::<u64>().unwrap_or(0);
                } else if let Some(v) = l.strip_prefix("Socket errors:") {
                    s.errors += v
                        .split(',')
                        .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                        .sum::<u64>();
                }
            }
        }
        Load::H2load(url) => {
            let out = pinned(&o.load_cpus, "h2load")
                .args(["-c", "10", "-m", "10", "-D", &secs.to_string(), url])
                .output()
                .expect("h2load (nghttp2-client)");
            for l in String::from_utf8_lossy(&out.stdout).lines().map(str::trim) {
                if let Some(rest) = l.strip_prefix("requests:") {
                    let n: Vec<u64> = rest.split(',').filter_map(|p| p.split_whitespace().next()?.parse().ok()).collect();
                    // total, started, done, succeeded, failed, errored, timeout
                    s.count = n.get(3).copied().unwrap_or(0);
                    s.errors = n.get(4).copied().unwrap_or(0) + n.get(5).copied().unwrap_or(0);
                } else if let Some(rest) = l.strip_prefix("finished in") {
                    s.rate = rest
                        .split(',')
                        .nth(1)
                        .and_then(|r| r.split_whitespace().next()?.parse().ok())
                        .unwrap_or(0.0);
                }
            }
        }
        Load::STime { addr, reuse } => {
            let out = pinned(&o.load_cpus, "openssl")
                .args(["s_time", "-connect", addr, if *reuse { "-reuse" } else { "-new" }])
                .args(["-time", &secs.to_string(), "-www", "/"])
                .output()
                .expect("openssl s_time");
            let text = String::from_utf8_lossy(&out.stdout);
            for l in text.lines() {
                if l.contains(" real seconds") {
                    s.count = l.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
                    s.rate = s.count as f64 / secs as f64;
                }
            }
            if *reuse {
                // One mark per connection: `r` resumed, `*` a full handshake.
                let marks = text.lines().filter(|l| !l.is_empty() && l.chars().all(|c| c == 'r' || c == '*'));
                let (r, fresh) = marks.fold((0, 0), |(r, f), l| (r + l.matches('r').count(), f + l.matches('*').count()));
                s.reused = Some(r as f64 / (r + fresh).max(1) as f64);
            }
        }
    }
    let after = cpu_ticks(row.pid);
    if s.count == 0 {
        eprintln!("{}: no requests measured", row.name);
        s.errors += 1;
    } else {
        s.cpu_us = Some(after.saturating_sub(before) as f64 / clk_tck() * 1e6 / s.count as f64);
    }
    s
}

fn openssl(args: &[&str]) {
    let ok = Command::new("openssl")
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(ok, "openssl {args:?} failed");
}

/// A self-signed certificate for bench.test, ECDSA P-256 or RSA-2048.
fn certificate(dir: &Path, name: &str, key_args: &[&str]) -> (PathBuf, PathBuf) {
    let (crt, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    let (c, k) = (crt.display().to_string(), key.display().to_string());
    let mut args = vec!["req", "-x509", "-nodes", "-days", "2", "-subj", "/CN=bench.test"];
    args.extend_from_slice(&["-addext", "subjectAltName=DNS:bench.test", "-keyout", &k, "-out", &c]);
    args.extend_from_slice(key_args);
    openssl(&args);
    (crt, key)
}

/// A Gatehouse like the ladder's G0 (metrics and access log off, one thread), with a
/// plaintext listener when `plain` is given, and one TLS listener whose default
/// certificate is `cert`.
fn gatehouse(
    o: &Opts,
    dir: &Path,
    name: &str,
    plain: Option<u16>,
    tls: u16,
    cert: &(PathBuf, PathBuf),
    upstream: u16,
) -> std::process::Child {
    let plain = plain
        .map(|p| format!("[listeners.plain]\naddr = \"127.0.0.1:{p}\"\n"))
        .unwrap_or_default();
    let text = format!(
        "[server]\nthreads = 1\npid_file = \"{d}/{name}.pid\"\nupgrade_sock = \"{d}/{name}.sock\"\nkeepalive_requests = 1000000\n\
         {plain}[listeners.tls]\naddr = \"127.0.0.1:{tls}\"\ntls = true\n[admin]\naddr = \"127.0.0.1:{admin}\"\n\
         [metrics]\nenabled = false\n[log]\naccess = \"off\"\nlevel = \"warn\"\n\
         [tls.certificates.bench]\ncert = \"file:{c}\"\nkey = \"file:{k}\"\ndefault = true\n\
         [upstreams.bench]\ntargets = [\"127.0.0.1:{upstream}\"]\n[routes.bench]\npaths = [\"/\"]\nupstream = \"bench\"\n",
        d = dir.display(),
        admin = free_port(),
        c = cert.0.display(),
        k = cert.1.display(),
    );
    let conf = dir.join(format!("{name}.toml"));
    std::fs::write(&conf, text).expect("write gatehouse config");
    let gh = gatehouse_bin();
    let mut c = pinned(&o.proxy_cpus, &gh.display().to_string());
    c.arg("-c").arg(&conf);
    let child = spawn(c, &dir.join(format!("{name}.log")));
    assert!(wait_port(tls), "{name} did not start");
    child
}

/// RSS added per idle connection that made one request: (TLS bytes, plaintext bytes).
/// Plaintext is measured first, each in the process given: memory freed by the first
/// measurement would otherwise be reused by the second and hide its cost.
fn memory(tls_pid: u32, tls: u16, plain_pid: u32, plain: u16, n: usize) -> (f64, f64) {
    let mut b = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls()).expect("openssl");
    b.set_verify(openssl::ssl::SslVerifyMode::NONE);
    let conn = b.build();
    let once = |s: &mut dyn ReadWrite| -> bool {
        if s.write_all(b"GET / HTTP/1.1\r\nHost: bench.test\r\n\r\n").is_err() {
            return false;
        }
        let (mut got, mut buf) = (0, [0u8; 4096]);
        while got < 1024 + 100 {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return false,
                Ok(k) => got += k,
            }
        }
        true
    };
    let per = |pid: u32, open: &mut dyn FnMut() -> Option<Box<dyn ReadWrite>>| -> f64 {
        let before = rss_bytes(pid);
        let mut held = Vec::with_capacity(n);
        for _ in 0..n {
            if let Some(mut s) = open() {
                if once(&mut *s) {
                    held.push(s);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
        let after = rss_bytes(pid);
        after.saturating_sub(before) as f64 / held.len().max(1) as f64
    };
    let plain_bytes = per(plain_pid, &mut || {
        let tcp = TcpStream::connect(("127.0.0.1", plain)).ok()?;
        tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        Some(Box::new(tcp) as Box<dyn ReadWrite>)
    });
    let tls_bytes = per(tls_pid, &mut || {
        let tcp = TcpStream::connect(("127.0.0.1", tls)).ok()?;
        tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut cfg = conn.configure().ok()?;
        cfg.set_verify_hostname(false);
        cfg.connect("bench.test", tcp).ok().map(|s| Box::new(s) as Box<dyn ReadWrite>)
    });
    (tls_bytes, plain_bytes)
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn main() {
    let o = opts();
    let dir = std::env::temp_dir().join(format!("gatehouse-bench-tls-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    raise_fd_limit();
    let ec = certificate(&dir, "ecdsa", &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    let rsa = certificate(&dir, "rsa", &["-newkey", "rsa:2048"]);

    let nginx = nginx_bin();
    let (mut upstream, up) = start_upstream(&dir, &o.load_cpus);
    let fill = |template: &str, ports: &[(&str, u16)]| {
        let ports: Vec<(&str, String)> = ports.iter().map(|(k, v)| (*k, v.to_string())).collect();
        fill(&dir, template, &ports)
    };

    let (np, ne, nr) = (free_port(), free_port(), free_port());
    let conf = fill(
        "loadtest/nginx-tls.conf",
        &[("__PLAIN__", np), ("__ECDSA__", ne), ("__RSA__", nr), ("__UPSTREAM__", up)],
    );
    std::fs::write(dir.join("nginx-tls.conf"), conf).expect("write");
    let mut c = pinned(&o.proxy_cpus, nginx);
    c.arg("-c").arg(dir.join("nginx-tls.conf")).arg("-p").arg(&dir);
    let mut n = spawn(c, &dir.join("nginx-tls.log"));
    assert!(wait_port(ne) && wait_port(nr), "nginx TLS did not start");

    let (gp, ge, gr) = (free_port(), free_port(), free_port());
    let mut ga = gatehouse(&o, &dir, "gatehouse-ecdsa", Some(gp), ge, &ec, up);
    let mut gb = gatehouse(&o, &dir, "gatehouse-rsa", None, gr, &rsa, up);
    assert!(wait_port(gp));

    let mut rows = Vec::new();
    for (who, pid, rsa_pid, (p, e, r)) in [("N", n.id(), n.id(), (np, ne, nr)), ("G", ga.id(), gb.id(), (gp, ge, gr))] {
        let row = |name: &str, pid: u32, load: Load| Row {
            name: format!("{who}.{name}"),
            pid,
            load,
        };
        rows.push(row("h1", pid, Load::Wrk(format!("http://127.0.0.1:{p}/"))));
        rows.push(row("tls", pid, Load::Wrk(format!("https://127.0.0.1:{e}/"))));
        rows.push(row("h2", pid, Load::H2load(format!("https://127.0.0.1:{e}/"))));
        let st = |port: u16, reuse: bool| Load::STime {
            addr: format!("127.0.0.1:{port}"),
            reuse,
        };
        rows.push(row("hs-ec", pid, st(e, false)));
        rows.push(row("hs-rsa", rsa_pid, st(r, false)));
        rows.push(row("resume", pid, st(e, true)));
    }
    for r in &rows {
        let _ = measure(&o, r, 1);
    }
    let mut samples: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    for round in 0..o.rounds {
        for r in &rows {
            let s = measure(&o, r, o.duration);
            eprintln!(
                "round {} {:>9}: {:>8.0}/s  cpu {:>7}  errors {}",
                round + 1,
                r.name,
                s.rate,
                s.cpu_us.map(|c| format!("{c:.1}us")).unwrap_or("-".into()),
                s.errors
            );
            samples.entry(r.name.clone()).or_default().push(s);
        }
    }
    let cpu = |name: &str, i: usize| samples.get(name).and_then(|v| v.get(i)).and_then(|s| s.cpu_us);
    let paired = |f: &dyn Fn(usize) -> Option<f64>| median((0..o.rounds).filter_map(f).collect());
    let ratio = |g: &str, n: &str| paired(&|i| Some(cpu(g, i)? / cpu(n, i)?));
    let overhead = |what: &str| {
        paired(&|i| Some((cpu(&format!("G.{what}"), i)? / cpu("G.h1", i)?) / (cpu(&format!("N.{what}"), i)? / cpu("N.h1", i)?)))
    };
    let ratios = json!({
        "handshake_ecdsa_g_over_n": ratio("G.hs-ec", "N.hs-ec"),
        "handshake_rsa_g_over_n": ratio("G.hs-rsa", "N.hs-rsa"),
        "resumed_g_over_n": ratio("G.resume", "N.resume"),
        "tls_keepalive_overhead_g_over_n": overhead("tls"),
        "h2_overhead_g_over_n": overhead("h2"),
        "g_resumed_over_full": ratio("G.resume", "G.hs-ec"),
        "n_resumed_over_full": ratio("N.resume", "N.hs-ec"),
    });
    // Gatehouse's TLS connections go to the process that has held no plaintext ones.
    let (nt, npl) = memory(n.id(), ne, n.id(), np, o.memory_conns);
    let (gt, gpl) = memory(gb.id(), gr, ga.id(), gp, o.memory_conns);
    let memory = json!({
        "connections": o.memory_conns,
        "nginx": {"tls_bytes": nt, "plain_bytes": npl},
        "gatehouse": {"tls_bytes": gt, "plain_bytes": gpl},
    });

    let mut table = String::from("| row | per s | CPU µs/req | errors | resumed |\n|---|---:|---:|---:|---:|\n");
    let mut rows_json = BTreeMap::new();
    let mut errors = 0;
    for r in &rows {
        let s = &samples[&r.name];
        let c = median(s.iter().filter_map(|x| x.cpu_us).collect());
        let rate = median(s.iter().map(|x| x.rate).collect());
        let e: u64 = s.iter().map(|x| x.errors).sum();
        let reused = median(s.iter().filter_map(|x| x.reused).collect());
        errors += e;
        let f = |v: Option<f64>, p: usize| v.map(|x| format!("{x:.p$}")).unwrap_or("-".into());
        table.push_str(&format!("| {} | {} | {} | {e} | {} |\n", r.name, f(rate, 0), f(c, 1), f(reused, 2)));
        rows_json.insert(r.name.clone(), json!({"rate": rate, "cpu_us": c, "errors": e, "reused": reused}));
    }
    let f = |k: &str| ratios[k].as_f64().map(|x| format!("{x:.2}")).unwrap_or("-".into());
    table.push_str(&format!(
        "\nCPU ratios, paired per round (median): full handshake G/N ECDSA {} (target <= 1.2), RSA {} (target <= 1.2); \
         resumed handshake G/N {}; HTTPS keep-alive overhead (G.tls/G.h1)/(N.tls/N.h1) {} (target <= 1.1); \
         h2 overhead (G.h2/G.h1)/(N.h2/N.h1) {} (target <= 1.1); resumed/full: G {}, N {}.\n",
        f("handshake_ecdsa_g_over_n"),
        f("handshake_rsa_g_over_n"),
        f("resumed_g_over_n"),
        f("tls_keepalive_overhead_g_over_n"),
        f("h2_overhead_g_over_n"),
        f("g_resumed_over_full"),
        f("n_resumed_over_full"),
    ));
    let m = |w: &str, k: &str| memory[w][k].as_f64().unwrap_or(0.0);
    table.push_str(&format!(
        "Memory per idle connection ({} connections, one request each): Gatehouse TLS {:.0} B, plaintext {:.0} B; nginx TLS {:.0} B, plaintext {:.0} B.\n",
        o.memory_conns,
        m("gatehouse", "tls_bytes"),
        m("gatehouse", "plain_bytes"),
        m("nginx", "tls_bytes"),
        m("nginx", "plain_bytes"),
    ));
    println!("{table}");
    let report = json!({
        "machine": machine(), "commit": commit(), "date": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "settings": {"rounds": o.rounds, "duration_s": o.duration, "proxy_cpus": o.proxy_cpus, "load_cpus": o.load_cpus, "smoke": o.smoke},
        "rows": rows_json, "ratios": ratios, "memory": memory,
    });
    if let Some(parent) = o.out.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let _ = std::fs::write(&o.out, serde_json::to_string_pretty(&report).unwrap_or_default());
    eprintln!("wrote {}", o.out.display());
    for c in [&mut ga, &mut gb, &mut n, &mut upstream] {
        stop(c);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let resumed = ["N.resume", "G.resume"]
        .iter()
        .all(|r| rows_json[*r]["reused"].as_f64().unwrap_or(0.0) > 0.9);
    if errors > 0 || !resumed {
        eprintln!("FAIL: {errors} errors in the TLS rows; sessions resumed: {resumed}");
        std::process::exit(1);
    }
}
