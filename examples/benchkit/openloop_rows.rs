//! The ladder's tail-latency rows: each proxy row under the open-loop generator
//! (examples/openloop.rs) at one fixed rate, pinned to the load core.

use super::benchkit::{pinned, Target};
use serde_json::Value;
use std::collections::BTreeMap;

/// Every proxy row at one rate, one after the other, into `summary[row]["openloop"]`.
/// Half of nginx's maximum (`n_rps / 2`) is above what any Pingora-based row serves on one
/// core (they would all queue without bound), so the rate is that or half of the slowest
/// row's maximum, the lower.
pub fn measure(load_cpus: &str, n_rps: f64, secs: u64, targets: &[Target], summary: &mut BTreeMap<String, Value>) {
    let slowest = summary
        .iter()
        .filter(|(name, _)| name.as_str() != "D")
        .filter_map(|(_, v)| v["rps"].as_f64())
        .fold(f64::INFINITY, f64::min);
    let rate = ((n_rps / 2.0).min(slowest / 2.0) as u64).max(100);
    for t in targets.iter().filter(|t| t.name != "D") {
        if let Some(v) = run(load_cpus, t.port, t.path, rate, secs, &headers(t.k6_env)) {
            eprintln!("open loop {}: {v}", t.name);
            if let Some(Value::Object(m)) = summary.get_mut(t.name) {
                m.insert("openloop".into(), v);
            }
        }
    }
}

/// One row at `rate` requests/s for `secs`: the generator's JSON (p50/p99/p99.9 and
/// whether it kept the rate), or `None` if it could not run.
pub fn run(load_cpus: &str, port: u16, path: &str, rate: u64, secs: u64, headers: &[String]) -> Option<Value> {
    let mut c = pinned(load_cpus, "target/release/examples/openloop");
    c.arg(format!("http://127.0.0.1:{port}{path}"))
        .arg(rate.to_string())
        .arg(secs.to_string())
        .arg("64")
        .args(headers);
    let out = c.output().ok()?;
    if !out.status.success() {
        eprintln!("openloop failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// The request headers a row's auth needs, from the k6 environment it is given.
pub fn headers(k6_env: &[(String, String)]) -> Vec<String> {
    k6_env
        .iter()
        .filter_map(|(k, v)| match k.as_str() {
            "KEY" => Some(format!("x-api-key:{v}")),
            "TOKEN" => Some(format!("authorization:Bearer {v}")),
            _ => None,
        })
        .collect()
}
