//! The Gatehouse variants of the benchmark ladder: their config files, what each row
//! measures, and the Redis and JWT material some of them need.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::benchkit::*;

pub fn gatehouse_config(dir: &Path, port: u16, admin: u16, upstream: u16, variant: &str, redis: Option<u16>) -> PathBuf {
    // GT2 and GT2N are G0 on two worker threads (still pinned to the proxy's one core),
    // with Pingora's work stealing on and off.
    let g0_like = matches!(variant, "G0" | "GT2" | "GT2N");
    let threads = if g0_like && variant != "G0" { 2 } else { 1 };
    let work_stealing = variant != "GT2N";
    let access = if g0_like {
        "off".to_string()
    } else {
        dir.join(format!("access-{variant}.log")).display().to_string()
    };
    let metrics = !g0_like;
    let mut plugins = String::new();
    let mut extra = String::new();
    match variant {
        "G4" | "GR" => {
            plugins.push_str("[routes.bench.plugins.key_auth]\n");
            let store = if variant == "GR" { "redis" } else { "local" };
            plugins.push_str(&format!(
                "[routes.bench.plugins.rate_limit]\nrequests = 100000000\nper = \"1s\"\nkey = \"consumer\"\nstore = \"{store}\"\n"
            ));
            extra.push_str("[consumers.bench]\nkeys = [\"bench-key-0001\"]\n");
        }
        "GK" => {
            plugins.push_str("[routes.bench.plugins.key_auth]\n");
            extra.push_str("[consumers.bench]\nkeys = [\"bench-key-0001\"]\n");
        }
        "GJ" => {
            plugins.push_str(&format!(
                "[routes.bench.plugins.jwt_auth]\nkeys = [{{ kid = \"bench\", alg = \"ES256\", pem = \"file:{}\" }}]\nalgorithms = [\"ES256\"]\n",
                dir.join("jwt-ec.pub.pem").display()
            ));
        }
        "GJR" => {
            plugins.push_str(&format!(
                "[routes.bench.plugins.jwt_auth]\nkeys = [{{ kid = \"bench\", alg = \"RS256\", pem = \"file:{}\" }}]\nalgorithms = [\"RS256\"]\n",
                dir.join("jwt-rsa.pub.pem").display()
            ));
        }
        "G1T" | "G1T01" => {
            let ratio = if variant == "G1T" { "1.0" } else { "0.01" };
            extra.push_str(&format!(
                "[tracing]\nendpoint = \"http://127.0.0.1:{}/v1/traces\"\nsample_ratio = {ratio}\n",
                super::otlp_sink::port()
            ));
        }
        // Metering to a file sink and an HTTP sink (the live receiver that answers 200 to
        // every POST, the tracing rows' too).
        "GM" => {
            extra.push_str(&format!(
                "[metering]\nspool_dir = \"{dir}/metering-GM\"\n[metering.sinks.archive]\ntype = \"file\"\npath = \"{dir}/usage-GM-%Y%m%d.jsonl\"\n[metering.sinks.http]\ntype = \"http\"\nurl = \"http://127.0.0.1:{port}/api/v1/events\"\n",
                dir = dir.display(),
                port = super::otlp_sink::port()
            ));
        }
        // G1 plus a proxy-wasm filter that adds one request header.
        "GW" => {
            let wat = dir.join("add_header.wat");
            std::fs::write(&wat, include_str!("../../loadtest/add_header.wat")).expect("write the GW filter");
            plugins.push_str(&format!("[routes.bench.plugins.wasm.add_header]\nfile = \"{}\"\n", wat.display()));
        }
        "GC" => {
            plugins.push_str("[routes.bench.plugins.cache]\ndefault_ttl = \"1h\"\n");
            extra.push_str("[cache]\nmemory = \"64MiB\"\n");
        }
        _ => {}
    }
    if let Some(r) = redis {
        extra.push_str(&format!(
            "[store]\npath = \"{}\"\nredis = \"redis://127.0.0.1:{r}/0\"\ntimeout = \"50ms\"\n",
            dir.join(format!("store-{variant}")).display()
        ));
    } else if variant == "G4" {
        extra.push_str(&format!("[store]\npath = \"{}\"\n", dir.join(format!("store-{variant}")).display()));
    }
    let text = format!(
        r#"[server]
threads = {threads}
work_stealing = {work_stealing}
pid_file = "{dir}/gh-{variant}.pid"
upgrade_sock = "{dir}/gh-{variant}.sock"
# Like the nginx rows (keepalive_requests 1000000) and bare Pingora (no limit).
keepalive_requests = 1000000

[listeners.public]
addr = "127.0.0.1:{port}"

[admin]
addr = "127.0.0.1:{admin}"

[metrics]
enabled = {metrics}

[log]
access = "{access}"
level = "warn"

[upstreams.bench]
targets = ["127.0.0.1:{upstream}"]

[routes.bench]
paths = ["/"]
upstream = "bench"
{plugins}
{extra}
"#,
        dir = dir.display()
    );
    let path = dir.join(format!("gatehouse-{variant}.toml"));
    std::fs::write(&path, text).expect("write gatehouse config");
    path
}

pub fn describe(name: &str) -> &'static str {
    match name {
        "D" => "wrk straight to the upstream",
        "N" => "nginx reverse proxy (1 worker, upstream keepalive)",
        "P" => "bare Pingora 0.9 proxy, release profile",
        "P_lto" => "P built like the shipped gateway (fat LTO, 1 codegen unit): the floor",
        "PM" => "P with Gatehouse's allocator (mimalloc)",
        "G0" => "Gatehouse, one route, no plugins, metrics and access log off",
        "G1" => "G0 + metrics + access log to a file",
        "GT2" => "G0 with threads = 2 (same one core)",
        "GT2N" => "GT2 with Pingora's work stealing off",
        "G4" => "G1 + key auth + local rate limit (never rejects)",
        "GK" => "G1 + key auth",
        "GJ" => "G1 + JWT ES256",
        "GJR" => "G1 + JWT RS256",
        "GR" => "G4 with the rate limit in Redis",
        "GC" => "G1 + cache, every request a hit",
        "G1T" => "G1 + tracing, every request sampled, to a live OTLP receiver",
        "G1T01" => "G1T at sample_ratio 0.01",
        "GM" => "G1 + usage metering to a file sink and a live HTTP sink",
        "GW" => "G1 + a proxy-wasm filter (wasmtime) that adds one request header",
        _ => "",
    }
}

pub fn start_redis(dir: &Path) -> Option<(Child, u16)> {
    let port = free_port();
    let mut c = Command::new("redis-server");
    c.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
    ])
    .arg(dir);
    let child = c.stdout(Stdio::null()).stderr(Stdio::null()).spawn().ok()?;
    wait_port(port).then_some((child, port))
}

/// An EC P-256 key pair made with openssl and an ES256 token signed with it. The bench
/// avoids a JWT dependency of its own; the gateway verifies with its real library.
pub fn jwt_material(dir: &Path, rsa: bool) -> Option<String> {
    let (key, public) = if rsa {
        (dir.join("jwt-rsa.pem"), dir.join("jwt-rsa.pub.pem"))
    } else {
        (dir.join("jwt-ec.pem"), dir.join("jwt-ec.pub.pem"))
    };
    let made = if rsa {
        Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&key)
            .arg("2048")
            .stderr(Stdio::null())
            .status()
            .ok()?
            .success()
    } else {
        Command::new("openssl")
            .args(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out"])
            .arg(&key)
            .status()
            .ok()?
            .success()
    };
    let ok = made
        && Command::new("openssl")
            .args([if rsa { "rsa" } else { "ec" }, "-in"])
            .arg(&key)
            .args(["-pubout", "-out"])
            .arg(&public)
            .stderr(Stdio::null())
            .status()
            .ok()?
            .success();
    if !ok {
        return None;
    }
    let b64 = |b: &[u8]| -> String {
        const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut s = String::new();
        for c in b.chunks(3) {
            let n = (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..=c.len() {
                s.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        s
    };
    let header = if rsa {
        b64(br#"{"alg":"RS256","typ":"JWT","kid":"bench"}"#)
    } else {
        b64(br#"{"alg":"ES256","typ":"JWT","kid":"bench"}"#)
    };
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() + 86400;
    let claims = b64(format!(r#"{{"sub":"bench","exp":{exp}}}"#).as_bytes());
    let input = format!("{header}.{claims}");
    std::fs::write(dir.join("jwt-input"), &input).ok()?;
    let der = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(&key)
        .arg(dir.join("jwt-input"))
        .output()
        .ok()?
        .stdout;
    if rsa {
        // RS256's JWS signature is the raw PKCS#1 v1.5 signature.
        return Some(format!("{input}.{}", b64(&der)));
    }
    // DER ECDSA signature -> raw r||s (32 bytes each) as JWS wants.
    let (r, s) = parse_der_sig(&der)?;
    let mut raw = vec![0u8; 64];
    raw[32 - r.len()..32].copy_from_slice(r);
    raw[64 - s.len()..].copy_from_slice(s);
    Some(format!("{input}.{}", b64(&raw)))
}

pub fn parse_der_sig(d: &[u8]) -> Option<(&[u8], &[u8])> {
    if d.first()? != &0x30 {
        return None;
    }
    let mut i = 2;
    let int = |i: &mut usize| -> Option<&[u8]> {
        if d.get(*i)? != &0x02 {
            return None;
        }
        let len = *d.get(*i + 1)? as usize;
        let v = d.get(*i + 2..*i + 2 + len)?;
        *i += 2 + len;
        let v = if v.len() > 32 { &v[v.len() - 32..] } else { v };
        Some(v)
    };
    let r = int(&mut i)?;
    let s = int(&mut i)?;
    Some((r, s))
}
