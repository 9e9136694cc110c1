//! `gatehouse alerts export-rules`: the config's rules as a Prometheus rules file, for a
//! fleet-wide Prometheus to evaluate over every node's `/metrics`. The output is JSON, which
//! is YAML, so promtool and Prometheus read it as it is (with a leading comment).

use crate::config::{AlertsCfg, RuleCfg, RuleKind};
use serde_json::{json, Value};
use std::time::Duration;

/// Prometheus's duration syntax, in the largest whole unit.
fn prom(d: Duration) -> String {
    let s = d.as_secs();
    if d.subsec_nanos() != 0 || s == 0 {
        return format!("{}ms", d.as_millis().max(1));
    }
    for (unit, n) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if s.is_multiple_of(n) {
            return format!("{}{unit}", s / n);
        }
    }
    format!("{s}s")
}

fn camel(name: &str) -> String {
    name.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// The `le` of the request-duration histogram nearest at or below `t`, as the gateway
/// prints it (the buckets are 0.5 ms doubling; computed the same way as the exporter's).
fn bucket_at_or_below(t: Duration) -> String {
    let mut b = 0.0005_f64;
    let mut best = b;
    for _ in 0..18 {
        if b <= t.as_secs_f64() {
            best = b;
        }
        b *= 2.0;
    }
    format!("{best}")
}

fn matcher(rule: &RuleCfg) -> String {
    let routes = rule.routes();
    if routes.iter().any(|r| r == "*") {
        String::new()
    } else {
        // Route names are TOML keys: anything may be in them. Escaped for the regex, then
        // for PromQL's double-quoted string.
        let alternatives: Vec<String> = routes
            .iter()
            .map(|r| regex::escape(r).replace('\\', "\\\\").replace('"', "\\\""))
            .collect();
        format!("route=~\"{}\"", alternatives.join("|"))
    }
}

fn with(m: &str, extra: &str) -> String {
    match (m.is_empty(), extra.is_empty()) {
        (true, true) => String::new(),
        (true, false) => format!("{{{extra}}}"),
        (false, true) => format!("{{{m}}}"),
        (false, false) => format!("{{{m},{extra}}}"),
    }
}

fn alert(name: String, expr: String, hold: Duration, rule: &RuleCfg, summary: String) -> Value {
    let mut labels = serde_json::Map::new();
    labels.insert("severity".into(), rule.severity().into());
    for (k, v) in &rule.labels {
        labels.insert(k.clone(), v.clone().into());
    }
    let mut a = json!({"alert": name, "expr": expr, "labels": labels, "annotations": {"summary": summary}});
    if !hold.is_zero() {
        a["for"] = prom(hold).into();
    }
    a
}

pub fn rules(cfg: &AlertsCfg, group: &str) -> Value {
    let mut out = Vec::new();
    for (name, rule) in &cfg.rules {
        let base = camel(name);
        match rule.kind {
            RuleKind::SloBurnRate | RuleKind::LatencySlo => {
                let m = matcher(rule);
                let budget = 1.0 - rule.objective.unwrap_or(0.999);
                let ratio = |window: &str| {
                    match rule.kind {
                    RuleKind::LatencySlo => {
                        let le = bucket_at_or_below(rule.latency_threshold().unwrap_or_default());
                        format!(
                            "(1 - sum by (route) (rate(gatehouse_request_duration_seconds_bucket{}[{window}])) / sum by (route) (rate(gatehouse_request_duration_seconds_count{}[{window}])))",
                            with(&m, &format!("le=\"{le}\"")),
                            with(&m, "")
                        )
                    }
                    _ => format!(
                        "(sum by (route) (rate(gatehouse_requests_total{}[{window}])) / sum by (route) (rate(gatehouse_requests_total{}[{window}])))",
                        with(&m, "status=~\"5..\""),
                        with(&m, "")
                    ),
                }
                };
                for w in rule.windows() {
                    let (long, short) = (prom(w.long.0), prom(w.short.0));
                    let limit = w.burn * budget;
                    let expr = format!(
                        "{} > {limit} and {} > {limit} and sum by (route) (increase(gatehouse_requests_total{}[{long}])) >= {}",
                        ratio(&long),
                        ratio(&short),
                        with(&m, ""),
                        rule.min_requests()
                    );
                    let what = if rule.kind == RuleKind::LatencySlo { "latency" } else { "error" };
                    out.push(alert(
                        format!("{base}BurnRate{long}{short}"),
                        expr,
                        rule.hold(),
                        rule,
                        format!(
                            "route {{{{ $labels.route }}}}: {what} budget burning over {}x in {long} and {short}",
                            w.burn
                        ),
                    ));
                }
            }
            RuleKind::UpstreamDown => {
                let u = rule.upstream.clone().unwrap_or_default();
                out.push(alert(
                    base,
                    format!(
                        "max by (upstream) (gatehouse_upstream_target_healthy{{upstream=\"{u}\"}} - gatehouse_upstream_target_ejected{{upstream=\"{u}\"}}) <= 0"
                    ),
                    rule.hold(),
                    rule,
                    format!("upstream {u} has no target taking traffic"),
                ));
            }
            RuleKind::CertExpiry => {
                let warn = rule.warn_before.map(|d| d.0).unwrap_or_default();
                out.push(alert(
                    base,
                    format!("gatehouse_tls_cert_expiry_seconds - time() < {}", warn.as_secs()),
                    rule.hold(),
                    rule,
                    "certificate {{ $labels.cert }} expires soon".into(),
                ));
            }
            RuleKind::ReloadFailed => out.push(alert(
                base,
                "increase(gatehouse_config_reloads_total{result=\"error\"}[10m]) > 0".into(),
                rule.hold(),
                rule,
                "a config reload was refused on {{ $labels.instance }}".into(),
            )),
            // Quota use is not a Prometheus series (per-consumer counters live in the
            // gateway's store): only the gateway evaluates this kind.
            RuleKind::QuotaNearExhaustion => {}
        }
    }
    json!({"groups": [{"name": group, "rules": out}]})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_buckets_in_prometheus_form() {
        assert_eq!(prom(Duration::from_secs(3600)), "1h");
        assert_eq!(prom(Duration::from_secs(300)), "5m");
        assert_eq!(prom(Duration::from_secs(259_200)), "3d");
        assert_eq!(prom(Duration::from_millis(1500)), "1500ms");
        assert_eq!(bucket_at_or_below(Duration::from_millis(300)), "0.256");
        assert_eq!(camel("users_down"), "UsersDown");
    }
}
