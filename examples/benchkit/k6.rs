//! One k6 run of the ladder at a constant arrival rate (`loadtest/constant_rate.js`).

use super::benchkit::{pinned, Target};
use serde_json::Value;
use std::path::Path;
use std::process::Stdio;

/// (p99 ms, p99.9 ms, failed requests) at a fixed open-loop rate.
pub fn run(load_cpus: &str, row: &Target, rate: u64, secs: u64, dir: &Path) -> Option<(f64, f64, u64)> {
    let summary = dir.join(format!("k6-{}.json", row.name));
    let mut cmd = pinned(load_cpus, "k6");
    cmd.args(["run", "--quiet", "--no-color", "--summary-export"])
        .arg(&summary)
        .arg("loadtest/constant_rate.js")
        .env("TARGET", format!("http://127.0.0.1:{}{}", row.port, row.path))
        .env("RATE", rate.to_string())
        .env("DURATION", format!("{secs}s"))
        .envs(row.k6_env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let out = cmd.output().ok()?;
    let Ok(text) = std::fs::read_to_string(&summary) else {
        eprintln!("k6 failed for {}: {}", row.name, String::from_utf8_lossy(&out.stderr));
        return None;
    };
    let v: Value = serde_json::from_str(&text).ok()?;
    let d = &v["metrics"]["http_req_duration"];
    let failed = v["metrics"]["http_req_failed"]["passes"].as_u64().unwrap_or(0);
    Some((d["p(99)"].as_f64()?, d["p(99.9)"].as_f64()?, failed))
}
