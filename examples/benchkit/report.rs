//! The ladder's results as the Markdown table of the README and loadtest/RESULTS.md.

use super::Row;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

pub fn render_table(rows: &[Row], summary: &BTreeMap<String, Value>, memory: Option<&Value>) -> String {
    let mut t = String::new();
    t.push_str(
        "| row | what | req/s | CPU µs/req | x N | x P_lto | x PM | p50 ms | p99 ms | k6 p99 ms | k6 p99.9 ms | errors | RSS MiB |\n",
    );
    t.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let f = |v: &Value, k: &str, prec: usize| v[k].as_f64().map(|x| format!("{x:.prec$}")).unwrap_or("-".into());
    for row in rows {
        let Some(v) = summary.get(&row.name) else { continue };
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} |\n",
            row.name,
            row.what,
            f(v, "rps", 0),
            match (v["cpu_us_per_req"].as_f64(), v["cpu_q1"].as_f64(), v["cpu_q3"].as_f64()) {
                (Some(c), Some(q1), Some(q3)) if v["rounds"].as_u64().unwrap_or(0) >= 4 => format!("{c:.1} ({q1:.0}-{q3:.0})"),
                _ => f(v, "cpu_us_per_req", 1),
            },
            f(v, "x_nginx", 2),
            match (v["x_pingora"].as_f64(), v["x_pingora_q1"].as_f64(), v["x_pingora_q3"].as_f64()) {
                (Some(r), Some(q1), Some(q3)) if v["rounds"].as_u64().unwrap_or(0) >= 4 && q1 != q3 => {
                    format!("{r:.2} ({q1:.2}-{q3:.2})")
                }
                _ => f(v, "x_pingora", 2),
            },
            f(v, "x_pingora_mimalloc", 2),
            f(v, "p50_ms", 2),
            f(v, "p99_ms", 2),
            f(v, "k6_p99_ms", 2),
            f(v, "k6_p999_ms", 2),
            v["errors"].as_u64().unwrap_or(0) + v["k6_failed"].as_u64().unwrap_or(0),
            v["rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
        ));
    }
    let ol: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            let v = &summary.get(&r.name)?["openloop"];
            Some(format!(
                "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} |",
                r.name,
                v["rate"].as_f64()?,
                v["p50_ms"].as_f64()?,
                v["p99_ms"].as_f64()?,
                v["p999_ms"].as_f64()?,
                v["max_ms"].as_f64()?,
                v["late"],
                v["errors"]
            ))
        })
        .collect();
    if !ol.is_empty() {
        t.push_str(
            "\nOpen loop (examples/openloop.rs, 64 connections, at half of N's maximum or half of the slowest row's, the lower; late: requests whose connection was busy at their time):\n\n\
             | row | req/s | p50 ms | p99 ms | p99.9 ms | max ms | late | errors |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        t.push_str(&ol.join("\n"));
        t.push('\n');
    }
    let counted: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            let a = &summary.get(&r.name)?["allocations"];
            Some(format!(
                "{} {:.1} ({:.0} bytes)",
                r.name,
                a["allocs_per_req"].as_f64()?,
                a["bytes_per_req"].as_f64()?
            ))
        })
        .collect();
    if !counted.is_empty() {
        t.push_str(&format!(
            "\nAllocations per request (the same binary and config rerun with GATEHOUSE_COUNT_ALLOCS=1, outside the timed rounds): {}.\n",
            counted.join(", ")
        ));
    }
    if let Some(m) = memory {
        t.push_str(&format!(
            "\nMemory (G0): idle RSS {:.1} MiB; with {} idle keep-alive connections {:.1} MiB: {:.0} bytes per connection.\n",
            m["idle_rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
            m["connections"],
            m["rss_with_connections_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
            m["bytes_per_connection"].as_f64().unwrap_or(0.0)
        ));
    }
    t
}

pub fn write_results_md(path: &Path, report: &Value, table: &str) {
    let text = format!(
        "# Benchmark results\n\nMachine: {}. Commit: {}. Date: {}.\n\nSettings: {} rounds of {} s per row, interleaved; wrk -t1 -c{}; proxy pinned to CPU {}, \
         wrk/k6/upstream pinned to CPU {}; k6 open-loop rate {} req/s (half of N's maximum, stepped down until one k6 process keeps up against D, then one step more).\nCPU µs/req is utime+stime of the proxy's processes over the run \
         divided by requests: the median of rounds, with the quartiles in brackets. \
         The x columns pair rows within a round (row / reference, both measured in the same round) and take the median over rounds; x P_lto (the bare Pingora proxy built with the shipped profile) shows \
         the quartiles of those per-round ratios.\n\nReproduce: `scripts/bench` (or `scripts/bench --rounds 15` for tighter medians).\n\n{}\n",
        report["machine"].as_str().unwrap_or(""),
        report["commit"].as_str().unwrap_or(""),
        report["date"].as_str().unwrap_or(""),
        report["settings"]["rounds"],
        report["settings"]["duration_s"],
        report["settings"]["connections"],
        report["settings"]["proxy_cpus"].as_str().unwrap_or(""),
        report["settings"]["load_cpus"].as_str().unwrap_or(""),
        report["settings"]["k6_rate"],
        table
    );
    // The page's other sections (each round's notes, "What was tried") are kept: only the
    // latest run above the first section heading is replaced.
    let rest = std::fs::read_to_string(path)
        .ok()
        .and_then(|old| old.find("\n## ").map(|i| old[i..].to_string()))
        .unwrap_or_default();
    let _ = std::fs::write(path, format!("{}\n{rest}", text.trim_end()));
}
