//! The ladder's tail-latency rows: each proxy row under the open-loop generator
//! (examples/openloop.rs) at one fixed rate, pinned to the load core.

use super::benchkit::pinned;
use serde_json::Value;

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
