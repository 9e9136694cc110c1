//! The streaming rows of `scripts/bench`: gRPC unary calls and WebSocket echo messages,
//! through Gatehouse and (for WebSocket) through nginx proxying the same server; the proxy
//! is pinned to one CPU, the servers and load clients to the other.
//!
//! Rows: `G-h1` plain HTTP/1.1 keep-alive through Gatehouse (wrk; the G0 shape: one route,
//! no plugins, metrics and log off), `D-grpc` tonic client straight to the tonic server,
//! `G-grpc` the same through Gatehouse (h2c in, HTTP/2 to the server), `N-ws`, `P-ws` and
//! `G-ws` WebSocket echo round trips through nginx, bare Pingora (`bare_proxy`, the floor
//! any Pingora proxy pays for an upgraded session) and Gatehouse. CPU is the proxy's utime+stime
//! per request, call or message. Rounds are interleaved; ratios pair rows of one round and
//! the medians are reported. The load clients are this program re-run in a client mode
//! (`bench_stream load-grpc|load-ws ...`), and so are the servers (`serve-grpc|serve-ws`),
//! which are the tests' tonic and tungstenite servers.

#[path = "benchkit/mod.rs"]
mod benchkit;
#[allow(dead_code)]
#[path = "../tests/common/grpc.rs"]
mod grpc;
#[allow(dead_code)]
#[path = "../tests/common/ws.rs"]
mod ws;

use benchkit::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Opts {
    smoke: bool,
    rounds: usize,
    duration: u64,
    proxy_cpus: String,
    load_cpus: String,
    out: PathBuf,
}

/// The ladder's flags are accepted too (scripts/bench passes the same arguments to every
/// part): the ones that take a value have it skipped.
fn opts(args: &[String]) -> Opts {
    let mut o = Opts {
        smoke: false,
        rounds: 5,
        duration: 3,
        proxy_cpus: "0".into(),
        load_cpus: "1".into(),
        out: PathBuf::from("loadtest/results/stream-latest.json"),
    };
    o.smoke = walk_args(args, |flag, value| {
        match flag {
            "--rounds" => o.rounds = value.parse().unwrap_or(5),
            "--duration" => o.duration = value.parse().unwrap_or(3),
            "--proxy-cpus" => o.proxy_cpus = value,
            "--load-cpus" => o.load_cpus = value,
            "--stream-out" => o.out = PathBuf::from(value),
            _ => return false,
        }
        true
    });
    if o.smoke {
        o.rounds = 1;
        o.duration = 1;
        o.out = PathBuf::from("target/bench-stream-smoke.json");
    }
    o
}

/// What one load run reports: operations done, errors, the 99th percentile in µs.
#[derive(Default, Clone, Copy)]
struct Done {
    count: u64,
    errors: u64,
    p99_us: f64,
}

fn p99(mut v: Vec<u32>) -> f64 {
    v.sort_unstable();
    v.get(v.len().saturating_sub(1) * 99 / 100).copied().unwrap_or(0) as f64
}

/// Client mode: `load-grpc ADDR SECS CONCURRENCY` (unary Health/Check calls on one h2
/// connection) prints `count errors p99_us`.
fn load_grpc(addr: &str, secs: u64, conc: usize) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (count, errors, lat) = rt.block_on(async move {
        let ch = grpc::channel(addr).await;
        let end = Instant::now() + Duration::from_secs(secs);
        let tasks: Vec<_> = (0..conc)
            .map(|_| {
                let ch = ch.clone();
                tokio::spawn(async move {
                    let (mut n, mut e, mut lat) = (0u64, 0u64, Vec::new());
                    while Instant::now() < end {
                        let t = Instant::now();
                        match grpc::check(ch.clone(), "").await {
                            Ok(1) => n += 1,
                            _ => e += 1,
                        }
                        lat.push(t.elapsed().as_micros() as u32);
                    }
                    (n, e, lat)
                })
            })
            .collect();
        let (mut n, mut e, mut all) = (0, 0, Vec::new());
        for t in tasks {
            if let Ok((a, b, l)) = t.await {
                n += a;
                e += b;
                all.extend(l);
            }
        }
        (n, e, all)
    });
    println!("{count} {errors} {}", p99(lat));
}

/// Client mode: `load-ws ADDR SECS CONNECTIONS` (64-byte echo round trips, one thread per
/// connection) prints `count errors p99_us`.
fn load_ws(addr: &str, secs: u64, conns: usize) {
    let end = Instant::now() + Duration::from_secs(secs);
    let threads: Vec<_> = (0..conns)
        .map(|_| {
            let addr = addr.to_string();
            std::thread::spawn(move || {
                let (mut n, mut e, mut lat) = (0u64, 0u64, Vec::new());
                let Ok(mut s) = ws::connect(&addr, "/ws", &[]) else {
                    return (0, 1, lat);
                };
                let msg = "m".repeat(64);
                while Instant::now() < end {
                    let t = Instant::now();
                    let ok = s.send(tungstenite::Message::text(msg.clone())).is_ok() && s.read().is_ok();
                    if ok {
                        n += 1;
                    } else {
                        e += 1;
                        break;
                    }
                    lat.push(t.elapsed().as_micros() as u32);
                }
                s.close(None).ok();
                (n, e, lat)
            })
        })
        .collect();
    let (mut n, mut e, mut all) = (0, 0, Vec::new());
    for t in threads {
        if let Ok((a, b, l)) = t.join() {
            n += a;
            e += b;
            all.extend(l);
        }
    }
    println!("{n} {e} {}", p99(all));
}

/// Server mode: prints the address, then serves until killed.
fn serve(kind: &str) {
    let addr = match kind {
        "serve-grpc" => grpc::GrpcUpstream::start(None).addr,
        _ => ws::WsUpstream::start().addr,
    };
    println!("{addr}");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn this_program(o: &Opts, args: &[&str]) -> Command {
    let me = std::env::current_exe().expect("own path");
    let mut c = pinned(&o.load_cpus, &me.display().to_string());
    c.args(args);
    c
}

/// Starts a server mode and reads its address.
fn server(o: &Opts, kind: &str) -> (std::process::Child, String) {
    let mut child = this_program(o, &[kind]).stdout(Stdio::piped()).spawn().expect("server");
    let mut line = String::new();
    let out = child.stdout.take().expect("stdout");
    std::io::BufReader::new(out).read_line(&mut line).expect("server address");
    (child, line.trim().to_string())
}

enum Load {
    Wrk(String),
    Grpc(String),
    Ws(String),
}

struct Row {
    name: &'static str,
    /// The proxy whose CPU is counted (none for the direct row).
    pid: Option<u32>,
    load: Load,
}

fn measure(o: &Opts, row: &Row) -> (Done, Option<f64>) {
    let before = row.pid.map(cpu_ticks);
    let secs = o.duration.to_string();
    let d = match &row.load {
        Load::Wrk(url) => {
            let out = pinned(&o.load_cpus, "wrk")
                .args(["-t1", "-c32", &format!("-d{secs}s"), "--latency", url])
                .output()
                .expect("wrk (scripts/setup bench)");
            let mut d = Done::default();
            for l in String::from_utf8_lossy(&out.stdout).lines().map(str::trim) {
                if l.contains(" requests in ") {
                    d.count = l.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
                } else if let Some(v) = l.strip_prefix("99%") {
                    d.p99_us = parse_latency(v) * 1000.0;
                } else if l.starts_with("Non-2xx") || l.starts_with("Socket errors") {
                    d.errors += 1;
                }
            }
            d
        }
        Load::Grpc(addr) => client(o, &["load-grpc", addr, &secs, "32"]),
        Load::Ws(addr) => client(o, &["load-ws", addr, &secs, "16"]),
    };
    let cpu = match (before, row.pid) {
        (Some(b), Some(pid)) if d.count > 0 => Some(cpu_ticks(pid).saturating_sub(b) as f64 / clk_tck() * 1e6 / d.count as f64),
        _ => None,
    };
    (d, cpu)
}

fn client(o: &Opts, args: &[&str]) -> Done {
    let out = this_program(o, args).output().expect("load client");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<f64> = text.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    Done {
        count: v.first().copied().unwrap_or(0.0) as u64,
        errors: v.get(1).copied().unwrap_or(1.0) as u64,
        p99_us: v.get(2).copied().unwrap_or(f64::NAN),
    }
}

fn gatehouse(o: &Opts, dir: &Path, port: u16, grpc: &str, ws: &str, upstream: u16) -> std::process::Child {
    let text = format!(
        "[server]\nthreads = 1\npid_file = \"{d}/g.pid\"\nupgrade_sock = \"{d}/g.sock\"\nkeepalive_requests = 1000000\n\
         [listeners.public]\naddr = \"127.0.0.1:{port}\"\nh2c = true\n[admin]\naddr = \"127.0.0.1:{admin}\"\n\
         [metrics]\nenabled = false\n[log]\naccess = \"off\"\nlevel = \"warn\"\n\
         [upstreams.grpc]\ntargets = [\"{grpc}\"]\nhttp2 = true\n[upstreams.ws]\ntargets = [\"{ws}\"]\n\
         [upstreams.h1]\ntargets = [\"127.0.0.1:{upstream}\"]\n\
         [routes.grpc]\npaths = [\"/grpc.health.v1.Health/\"]\nupstream = \"grpc\"\ngrpc = true\n\
         [routes.ws]\npaths = [\"/ws\"]\nupstream = \"ws\"\nwebsocket = true\n\
         [routes.h1]\npaths = [\"/\"]\nupstream = \"h1\"\n",
        d = dir.display(),
        admin = free_port(),
    );
    let conf = dir.join("gatehouse.toml");
    std::fs::write(&conf, text).expect("write gatehouse config");
    let gh = gatehouse_bin();
    let mut c = pinned(&o.proxy_cpus, &gh.display().to_string());
    c.arg("-c").arg(&conf);
    let child = spawn(c, &dir.join("gatehouse.log"));
    assert!(wait_port(port), "gatehouse did not start");
    child
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("load-grpc") => return load_grpc(&args[1], args[2].parse().unwrap_or(1), args[3].parse().unwrap_or(1)),
        Some("load-ws") => return load_ws(&args[1], args[2].parse().unwrap_or(1), args[3].parse().unwrap_or(1)),
        Some(k @ ("serve-grpc" | "serve-ws")) => return serve(k),
        _ => {}
    }
    let o = opts(&args);
    let dir = std::env::temp_dir().join(format!("gatehouse-bench-stream-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    raise_fd_limit();
    let (mut grpc_server, grpc_addr) = server(&o, "serve-grpc");
    let (mut ws_server, ws_addr) = server(&o, "serve-ws");
    let (mut upstream, up) = start_upstream(&dir, &o.load_cpus);

    let np = free_port();
    let conf = fill(
        &dir,
        "loadtest/nginx-ws.conf",
        &[("__PORT__", np.to_string()), ("__UPSTREAM__", ws_addr.clone())],
    );
    std::fs::write(dir.join("nginx-ws.conf"), conf).expect("write");
    let mut c = pinned(&o.proxy_cpus, nginx_bin());
    c.arg("-c").arg(dir.join("nginx-ws.conf")).arg("-p").arg(&dir);
    let mut n = spawn(c, &dir.join("nginx-ws.log"));
    assert!(wait_port(np), "nginx did not start");
    let gp = free_port();
    let mut g = gatehouse(&o, &dir, gp, &grpc_addr, &ws_addr, up);
    let pp = free_port();
    let mut c = pinned(&o.proxy_cpus, &shipped_dir().join("examples/bare_proxy").display().to_string());
    c.arg(format!("127.0.0.1:{pp}")).arg(&ws_addr).arg("1");
    let mut p = spawn(c, &dir.join("bare.log"));
    assert!(wait_port(pp), "bare_proxy did not start");

    let rows = [
        Row {
            name: "G-h1",
            pid: Some(g.id()),
            load: Load::Wrk(format!("http://127.0.0.1:{gp}/")),
        },
        Row {
            name: "G-grpc",
            pid: Some(g.id()),
            load: Load::Grpc(format!("127.0.0.1:{gp}")),
        },
        Row {
            name: "D-grpc",
            pid: None,
            load: Load::Grpc(grpc_addr.clone()),
        },
        Row {
            name: "N-ws",
            pid: Some(n.id()),
            load: Load::Ws(format!("127.0.0.1:{np}")),
        },
        Row {
            name: "P-ws",
            pid: Some(p.id()),
            load: Load::Ws(format!("127.0.0.1:{pp}")),
        },
        Row {
            name: "G-ws",
            pid: Some(g.id()),
            load: Load::Ws(format!("127.0.0.1:{gp}")),
        },
    ];
    let mut samples: BTreeMap<&str, Vec<(Done, Option<f64>)>> = BTreeMap::new();
    let (mut grpc_ratio, mut ws_ratio, mut floor_ratio) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..o.rounds {
        let mut this: BTreeMap<&str, (Done, Option<f64>)> = BTreeMap::new();
        for r in &rows {
            let s = measure(&o, r);
            eprintln!(
                "round {round} {}: {} ops, {} errors, p99 {:.0} us, cpu {:.1} us/op",
                r.name,
                s.0.count,
                s.0.errors,
                s.0.p99_us,
                s.1.unwrap_or(f64::NAN)
            );
            this.insert(r.name, s);
            samples.entry(r.name).or_default().push(s);
        }
        let cpu = |k: &str| this.get(k).and_then(|s| s.1).unwrap_or(f64::NAN);
        grpc_ratio.push(cpu("G-grpc") / cpu("G-h1"));
        // Messages per CPU-second: Gatehouse's over nginx's (higher is better for G).
        ws_ratio.push(cpu("N-ws") / cpu("G-ws"));
        floor_ratio.push(cpu("G-ws") / cpu("P-ws"));
    }
    for c in [&mut g, &mut n, &mut p, &mut upstream, &mut grpc_server, &mut ws_server] {
        stop(c);
    }
    let mut table = String::from("| row | ops/round | errors | CPU us/op | ops per CPU-s | p99 us |\n|---|---:|---:|---:|---:|---:|\n");
    let mut json_rows = serde_json::Map::new();
    for r in &rows {
        let v = &samples[r.name];
        let cpu = median(v.iter().filter_map(|s| s.1).collect());
        let p = median(v.iter().map(|s| s.0.p99_us).collect());
        let ops = median(v.iter().map(|s| s.0.count as f64).collect()).unwrap_or(0.0);
        let errors: u64 = v.iter().map(|s| s.0.errors).sum();
        let per_s = cpu.map(|c| 1e6 / c);
        table.push_str(&format!(
            "| {} | {ops:.0} | {errors} | {} | {} | {} |\n",
            r.name,
            cpu.map_or("-".into(), |c| format!("{c:.1}")),
            per_s.map_or("-".into(), |c| format!("{c:.0}")),
            p.map_or("-".into(), |c| format!("{c:.0}")),
        ));
        json_rows.insert(r.name.into(), json!({ "cpu_us": cpu, "p99_us": p, "ops": ops, "errors": errors }));
    }
    let (gr, wr, fr) = (median(grpc_ratio), median(ws_ratio), median(floor_ratio));
    let f2 = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
    table.push_str(&format!(
        "\ngRPC CPU per call / HTTP/1.1 CPU per request (target <= 1.2): {}\n\
         WebSocket messages per CPU-second, Gatehouse / nginx (target >= 1.0): {}\n\
         WebSocket CPU per message, Gatehouse / bare Pingora: {}\n",
        f2(gr),
        f2(wr),
        f2(fr),
    ));
    println!("{table}");
    let report = json!({
        "machine": machine(), "commit": commit(), "rounds": o.rounds, "duration_s": o.duration,
        "rows": json_rows, "grpc_over_h1": gr, "ws_g_over_n": wr, "ws_g_over_p": fr,
    });
    if let Some(p) = o.out.parent() {
        let _ = std::fs::create_dir_all(p);
    }
    std::fs::write(&o.out, serde_json::to_string_pretty(&report).unwrap_or_default()).expect("write results");
    let failed: u64 = samples.values().flatten().map(|s| s.0.errors).sum();
    if failed > 0 {
        eprintln!("{failed} load runs had errors");
        std::process::exit(1);
    }
}
