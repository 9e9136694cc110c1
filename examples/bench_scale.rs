//! `scripts/bench --scale`: whether Gatehouse's costs stay flat as the config grows. CPU per
//! request with 10, 1,000 and 10,000 routes; key auth with 10 and 1,000,000 API keys (and
//! memory per key); a local rate limit over 1,000,000 distinct keys against one hot key;
//! and a reload of a 10,000-route config under load (its time, peak memory and failed
//! requests). Proxy pinned to one core, wrk and the nginx upstream to the other, rounds
//! interleaved so the machine's drift lands on every side of a ratio.
//!
//! Writes `loadtest/results/scale.json` (`--scale-out`) and a plot next to it (`.svg`).

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

#[path = "benchkit/mod.rs"]
mod benchkit;
use benchkit::*;
#[path = "benchkit/scale_plot.rs"]
mod scale_plot;

struct Opts {
    smoke: bool,
    rounds: usize,
    duration: u64,
    connections: usize,
    proxy_cpus: String,
    load_cpus: String,
    out: PathBuf,
}

fn opts(args: &[String]) -> Opts {
    let mut o = Opts {
        smoke: false,
        rounds: 7,
        duration: 3,
        connections: 50,
        proxy_cpus: "0".into(),
        load_cpus: "1".into(),
        out: PathBuf::from("loadtest/results/scale.json"),
    };
    o.smoke = walk_args(args, |flag, v| {
        match flag {
            "--rounds" => o.rounds = v.parse().unwrap_or(7),
            "--duration" => o.duration = v.parse().unwrap_or(3),
            "--connections" => o.connections = v.parse().unwrap_or(50),
            "--proxy-cpus" => o.proxy_cpus = v,
            "--load-cpus" => o.load_cpus = v,
            "--scale-out" => o.out = PathBuf::from(v),
            _ => return false,
        }
        true
    });
    if o.smoke {
        o.rounds = 1;
        o.duration = 1;
        o.out = PathBuf::from("target/bench-scale-smoke.json");
    }
    o
}

const ADMIN_TOKEN: &str = "bench-admin-token";

/// One running gateway of a scale row.
struct Gw {
    child: Child,
    port: u16,
    admin: u16,
    conf: PathBuf,
    /// From spawn to the listener accepting: the config's load time, mostly.
    started_in: Duration,
}

fn config_text(dir: &Path, name: &str, port: u16, admin: u16, up: u16, body: &str) -> String {
    let d = dir.display();
    format!(
        "[server]\nthreads = 1\npid_file = \"{d}/{name}.pid\"\nupgrade_sock = \"{d}/{name}.sock\"\nkeepalive_requests = 1000000\n\
         [listeners.public]\naddr = \"127.0.0.1:{port}\"\n[admin]\naddr = \"127.0.0.1:{admin}\"\ntoken = \"{ADMIN_TOKEN}\"\n\
         [log]\naccess = \"off\"\nlevel = \"warn\"\n[store]\npath = \"{d}/{name}-store\"\n\
         [upstreams.bench]\ntargets = [\"127.0.0.1:{up}\"]\n{body}"
    )
}

fn start(o: &Opts, dir: &Path, name: &str, up: u16, body: &str) -> Option<Gw> {
    let (port, admin) = (free_port(), free_port());
    let conf = dir.join(format!("{name}.toml"));
    std::fs::write(&conf, config_text(dir, name, port, admin, up, body)).ok()?;
    let mut c = pinned(&o.proxy_cpus, &gatehouse_bin().display().to_string());
    c.arg("-c").arg(&conf);
    let t0 = Instant::now();
    let mut child = spawn(c, &dir.join(format!("{name}.log")));
    // A million keys take a while to load: wait longer than `wait_port` does.
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t0.elapsed() > Duration::from_secs(180) || matches!(child.try_wait(), Ok(Some(_))) {
            eprintln!("{name} did not start: see {}", dir.join(format!("{name}.log")).display());
            stop(&mut child);
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(Gw {
        child,
        port,
        admin,
        conf,
        started_in: t0.elapsed(),
    })
}

/// Proxy CPU microseconds per request of one wrk run, and its errors.
fn cpu_per_request(o: &Opts, gw: &Gw, url: &str, script: Option<&str>, env: &[(String, String)]) -> (f64, u64) {
    let pid = gw.child.id();
    let before = cpu_ticks(pid);
    let (requests, errors) = Wrk {
        cpus: &o.load_cpus,
        connections: o.connections,
        secs: o.duration,
        script,
        env,
    }
    .run(url);
    let after = cpu_ticks(pid);
    if requests == 0 {
        return (f64::NAN, errors + 1);
    }
    ((after - before) as f64 / clk_tck() * 1e6 / requests as f64, errors)
}

/// Peak resident memory of the process so far (VmHWM).
fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Routes: a mix of prefix routes for any host (60%), host routes (30%) and regex routes
/// (10%), in config order. The load alternates the last prefix and the last host route.
fn routes(n: usize) -> (String, Vec<(String, String)>) {
    let mut t = String::new();
    let (mut last_prefix, mut last_host) = (0, 0);
    for i in 0..n {
        match i % 10 {
            0..=5 => {
                t.push_str(&format!("[routes.r{i}]\npaths = [\"/svc{i}\"]\nupstream = \"bench\"\n"));
                last_prefix = i;
            }
            6..=8 => {
                t.push_str(&format!(
                    "[routes.r{i}]\nhosts = [\"h{i}.test\"]\npaths = [\"/api\"]\nupstream = \"bench\"\n"
                ));
                last_host = i;
            }
            _ => t.push_str(&format!("[routes.r{i}]\npaths = [\"~^/re{i}/[0-9]+$\"]\nupstream = \"bench\"\n")),
        }
    }
    let env = vec![
        ("ROUTE_PREFIX_PATH".to_string(), format!("/svc{last_prefix}/item")),
        ("ROUTE_HOST".to_string(), format!("h{last_host}.test")),
    ];
    (t, env)
}

/// `n` API keys, ten per consumer; the key the load sends is the middle one.
fn keys(n: usize) -> (String, String) {
    let mut t = String::from("[routes.k]\npaths = [\"/\"]\nupstream = \"bench\"\n[routes.k.plugins.key_auth]\n");
    let per = 10.min(n);
    for c in 0..n.div_ceil(per) {
        t.push_str(&format!("[consumers.c{c}]\nkeys = ["));
        for k in 0..per {
            t.push_str(&format!("\"key-{c}-{k}\","));
        }
        t.push_str("]\n");
    }
    (t, format!("key-{}-0", n.div_ceil(per) / 2))
}

fn median_of(v: &[f64]) -> f64 {
    median(v.to_vec()).unwrap_or(f64::NAN)
}

/// Per-round ratios of `a` against `b` (same round), their median.
fn paired(a: &[f64], b: &[f64]) -> f64 {
    median_of(&a.iter().zip(b).map(|(x, y)| x / y).collect::<Vec<_>>())
}

type Made = (String, Vec<(String, String)>, String);

/// One gateway per size (config, wrk environment, path), measured in interleaved rounds.
fn scale_rows(o: &Opts, dir: &Path, up: u16, label: &str, sizes: &[usize], make: impl Fn(usize) -> Made) -> Value {
    let mut gws = Vec::new();
    for &n in sizes {
        let (body, env, path) = make(n);
        let Some(gw) = start(o, dir, &format!("{label}-{n}"), up, &body) else {
            continue;
        };
        gws.push((n, gw, env, path));
    }
    let script = Some(if label == "routes" {
        "loadtest/route_mix.lua"
    } else {
        "loadtest/apikey.lua"
    });
    // Warm-up, unmeasured.
    for (_, gw, env, path) in &gws {
        let _ = cpu_per_request(o, gw, &format!("http://127.0.0.1:{}{path}", gw.port), script, env);
    }
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); gws.len()];
    let mut errors = 0;
    for round in 0..o.rounds {
        for (i, (n, gw, env, path)) in gws.iter().enumerate() {
            let (c, e) = cpu_per_request(o, gw, &format!("http://127.0.0.1:{}{path}", gw.port), script, env);
            eprintln!("{label} round {} n={n}: cpu {c:.1} us/req errors {e}", round + 1);
            cpu[i].push(c);
            errors += e;
        }
    }
    let rows: Vec<Value> = gws
        .iter()
        .enumerate()
        .map(|(i, (n, gw, ..))| {
            json!({
                "n": n, "cpu_us_per_req": median_of(&cpu[i]), "x_smallest": paired(&cpu[i], &cpu[0]),
                "rss_bytes": rss_bytes(gw.child.id()), "start_s": gw.started_in.as_secs_f64(),
            })
        })
        .collect();
    for (_, mut gw, ..) in gws {
        stop(&mut gw.child);
    }
    json!({ "rows": rows, "errors": errors })
}

/// The local limiter over distinct keys against one hot key, after enough distinct keys
/// to fill its table.
fn rate_limit(o: &Opts, dir: &Path, up: u16) -> Value {
    let body = "[routes.l]\npaths = [\"/\"]\nupstream = \"bench\"\n[routes.l.plugins.rate_limit]\nrequests = 1000000000\nper = \"1s\"\nkey = \"header:x-client\"\nstore = \"local\"\n";
    let Some(gw) = start(o, dir, "ratelimit", up, body) else {
        return json!({ "error": "did not start" });
    };
    let url = format!("http://127.0.0.1:{}/", gw.port);
    let script = Some("loadtest/distinct_keys.lua");
    let hot_env = vec![("GATEHOUSE_BENCH_HOT".to_string(), "1".to_string())];
    let idle_rss = rss_bytes(gw.child.id());
    let mut sent: u64 = 0;
    let distinct = |sent: &mut u64, secs: u64| {
        let env = vec![("GATEHOUSE_BENCH_START".to_string(), sent.to_string())];
        let w = Wrk {
            cpus: &o.load_cpus,
            connections: o.connections,
            secs,
            script,
            env: &env,
        };
        let pid = gw.child.id();
        let before = cpu_ticks(pid);
        let (r, e) = w.run(&url);
        let after = cpu_ticks(pid);
        *sent += r;
        ((after - before) as f64 / clk_tck() * 1e6 / r.max(1) as f64, e)
    };
    // Fill: past the limiter's capacity (64 shards of 16,384 keys), unmeasured.
    let target: u64 = if o.smoke { 20_000 } else { 1_200_000 };
    let t0 = Instant::now();
    while sent < target && t0.elapsed() < Duration::from_secs(300) {
        distinct(&mut sent, if o.smoke { 1 } else { 10 });
    }
    let (mut hot, mut spread, mut errors) = (Vec::new(), Vec::new(), 0);
    for round in 0..o.rounds {
        let (h, e1) = cpu_per_request(o, &gw, &url, script, &hot_env);
        let (d, e2) = distinct(&mut sent, o.duration);
        eprintln!(
            "rate limit round {}: hot {h:.1} us/req, distinct {d:.1} us/req ({sent} keys sent)",
            round + 1
        );
        hot.push(h);
        spread.push(d);
        errors += e1 + e2;
    }
    let v = json!({
        "distinct_keys_sent": sent, "hot_cpu_us_per_req": median_of(&hot), "distinct_cpu_us_per_req": median_of(&spread),
        "x_hot": paired(&spread, &hot), "idle_rss_bytes": idle_rss, "rss_bytes": rss_bytes(gw.child.id()), "errors": errors,
    });
    let mut gw = gw;
    stop(&mut gw.child);
    v
}

fn admin_post(admin: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", admin)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(120))).ok()?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// A reload of a large config while wrk keeps the gateway busy: how long it takes, what it
/// costs in peak memory, and whether any request failed.
fn reload(o: &Opts, dir: &Path, up: u16, n: usize) -> Value {
    let (body, _) = routes(n);
    let Some(gw) = start(o, dir, &format!("reload-{n}"), up, &body) else {
        return json!({ "error": "did not start" });
    };
    let pid = gw.child.id();
    let url = format!("http://127.0.0.1:{}/svc0/item", gw.port);
    let _ = cpu_per_request(o, &gw, &url, None, &[]);
    let (rss_before, peak_before) = (rss_bytes(pid), peak_rss(pid));
    let secs = o.duration.max(2) * 3;
    let (load_cpus, connections) = (o.load_cpus.clone(), o.connections);
    let load = std::thread::spawn(move || {
        Wrk {
            cpus: &load_cpus,
            connections,
            secs,
            script: None,
            env: &[],
        }
        .run(&url)
    });
    // Let the load get going, then change the file (one more route) and reload.
    std::thread::sleep(Duration::from_secs(1));
    let mut text = std::fs::read_to_string(&gw.conf).unwrap_or_default();
    text.push_str("[routes.added]\npaths = [\"/added\"]\nupstream = \"bench\"\n");
    let _ = std::fs::write(&gw.conf, text);
    let t0 = Instant::now();
    let answer = admin_post(gw.admin, "/reload").unwrap_or_default();
    let took = t0.elapsed();
    let (requests, errors) = load.join().unwrap_or((0, 1));
    let reloaded = answer.contains("\"reloaded\"");
    let v = json!({
        "routes": n, "reloaded": reloaded, "reload_s": took.as_secs_f64(), "requests_during": requests, "failed_requests": errors,
        "rss_before_bytes": rss_before, "peak_rss_before_bytes": peak_before, "peak_rss_after_bytes": peak_rss(pid), "rss_after_bytes": rss_bytes(pid),
    });
    if !reloaded {
        eprintln!("reload failed: {answer}");
    }
    let mut gw = gw;
    stop(&mut gw.child);
    v
}

fn mib(v: &Value) -> String {
    v.as_f64().map(|b| format!("{:.1}", b / 1048576.0)).unwrap_or("-".into())
}

fn num(v: &Value, prec: usize) -> String {
    v.as_f64().map(|x| format!("{x:.prec$}")).unwrap_or("-".into())
}

fn tables(r: &Value) -> String {
    let mut t = String::from("| routes | CPU µs/req | x 10 routes | RSS MiB | start s |\n|---:|---:|---:|---:|---:|\n");
    for row in r["routes"]["rows"].as_array().into_iter().flatten() {
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            row["n"],
            num(&row["cpu_us_per_req"], 1),
            num(&row["x_smallest"], 3),
            mib(&row["rss_bytes"]),
            num(&row["start_s"], 2)
        ));
    }
    t.push_str("\n| API keys | CPU µs/req | x 10 keys | RSS MiB | bytes per key | start s |\n|---:|---:|---:|---:|---:|---:|\n");
    let key_rows: Vec<&Value> = r["keys"]["rows"].as_array().into_iter().flatten().collect();
    let base = key_rows
        .first()
        .map(|b| (b["rss_bytes"].as_f64().unwrap_or(0.0), b["n"].as_f64().unwrap_or(0.0)));
    for row in &key_rows {
        let per_key = base.and_then(|(rss0, n0)| {
            let n = row["n"].as_f64()?;
            let rss = row["rss_bytes"].as_f64()?;
            (n > n0).then(|| (rss - rss0) / (n - n0))
        });
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            row["n"],
            num(&row["cpu_us_per_req"], 1),
            num(&row["x_smallest"], 3),
            mib(&row["rss_bytes"]),
            per_key.map(|b| format!("{b:.0}")).unwrap_or("-".into()),
            num(&row["start_s"], 2)
        ));
    }
    let l = &r["rate_limit"];
    t.push_str(&format!(
        "\nLocal rate limit: one hot key {} µs/req, distinct keys {} µs/req (x {}), after {} distinct keys; RSS {} MiB idle, {} MiB after.\n",
        num(&l["hot_cpu_us_per_req"], 1),
        num(&l["distinct_cpu_us_per_req"], 1),
        num(&l["x_hot"], 3),
        l["distinct_keys_sent"],
        mib(&l["idle_rss_bytes"]),
        mib(&l["rss_bytes"])
    ));
    let re = &r["reload"];
    t.push_str(&format!(
        "\nReload of {} routes under load: {} s, {} of {} requests failed; peak RSS {} MiB before, {} MiB after (RSS {} -> {} MiB).\n",
        re["routes"],
        num(&re["reload_s"], 2),
        re["failed_requests"],
        re["requests_during"],
        mib(&re["peak_rss_before_bytes"]),
        mib(&re["peak_rss_after_bytes"]),
        mib(&re["rss_before_bytes"]),
        mib(&re["rss_after_bytes"])
    ));
    t
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = opts(&args);
    let dir = std::env::temp_dir().join(format!("gatehouse-bench-scale-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    raise_fd_limit();
    let (mut upstream, up) = start_upstream(&dir, &o.load_cpus);

    let route_sizes: &[usize] = if o.smoke { &[10, 1000] } else { &[10, 1000, 10_000] };
    let routes_v = scale_rows(&o, &dir, up, "routes", route_sizes, |n| {
        let (body, env) = routes(n);
        (body, env, "/".into())
    });
    let key_sizes: &[usize] = if o.smoke { &[10, 10_000] } else { &[10, 1_000_000] };
    let keys_v = scale_rows(&o, &dir, up, "keys", key_sizes, |n| {
        let (body, key) = keys(n);
        (body, vec![("GATEHOUSE_BENCH_KEY".into(), key)], "/".into())
    });
    let rate_v = rate_limit(&o, &dir, up);
    let reload_v = reload(&o, &dir, up, if o.smoke { 1000 } else { 10_000 });
    stop(&mut upstream);

    let report = json!({
        "machine": machine(), "commit": commit(), "date": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "settings": { "rounds": o.rounds, "duration_s": o.duration, "connections": o.connections, "smoke": o.smoke },
        "routes": routes_v, "keys": keys_v, "rate_limit": rate_v, "reload": reload_v,
    });
    let text = tables(&report);
    println!("{text}");
    if let Some(parent) = o.out.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let _ = std::fs::write(&o.out, serde_json::to_string_pretty(&report).unwrap_or_default());
    let plot = o.out.with_extension("svg");
    if let Err(e) = scale_plot::draw(&report, &plot) {
        eprintln!("plot {}: {e}", plot.display());
    }
    eprintln!("wrote {} and {}", o.out.display(), plot.display());
    let _ = std::fs::remove_dir_all(&dir);
    let failed = report["routes"]["errors"].as_u64().unwrap_or(1)
        + report["keys"]["errors"].as_u64().unwrap_or(1)
        + report["rate_limit"]["errors"].as_u64().unwrap_or(1)
        + report["reload"]["failed_requests"].as_u64().unwrap_or(1);
    if failed > 0 || report["reload"]["reloaded"] != json!(true) {
        eprintln!("scale bench: {failed} failed requests, or the reload failed");
        std::process::exit(1);
    }
}
