//! Each rule kind's condition at one evaluation: which label sets hold, with the numbers
//! that made them hold in the annotations.

use super::series::{Counts, History};
use super::state::{Condition, Labels};
use crate::config::{AlertsCfg, File, RuleCfg, RuleKind};
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub struct Inputs<'a> {
    pub file: &'a File,
    pub snap: &'a crate::snapshot::Snapshot,
    pub cfg: &'a AlertsCfg,
    pub bucket: u64,
    pub bucket_len: Duration,
    /// Keyed like the counters (route and its thresholds): a reload that changes a route's
    /// thresholds gives it new counters, and their history starts with them.
    pub history: &'a mut HashMap<(String, Vec<Duration>), History>,
    pub reload_failure: Option<String>,
}

fn buckets(d: Duration, len: Duration) -> u64 {
    d.as_nanos().div_ceil(len.as_nanos()) as u64
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

pub async fn conditions(i: &mut Inputs<'_>) -> Vec<Condition> {
    // One snapshot per route series per bucket, kept as long as the longest window needs.
    let keep = i
        .cfg
        .rules
        .values()
        .filter(|r| matches!(r.kind, RuleKind::SloBurnRate | RuleKind::LatencySlo))
        .flat_map(|r| r.windows())
        .map(|w| buckets(w.long.0, i.bucket_len))
        .max()
        .unwrap_or(0)
        + 1;
    let mut now_counts: HashMap<String, Counts> = HashMap::new();
    let mut live = std::collections::HashSet::new();
    for route in i.file.routes.keys() {
        if let Some(s) = super::series_for(i.file, route) {
            let c = s.read();
            let key = (route.clone(), super::thresholds(i.cfg, route));
            i.history.entry(key.clone()).or_default().note(i.bucket, &c, keep);
            live.insert(key);
            now_counts.insert(route.clone(), c);
        }
    }
    i.history.retain(|k, _| live.contains(k));

    let mut out = Vec::new();
    for (name, rule) in &i.cfg.rules {
        let mut base = Labels::new();
        base.insert("alertname".into(), name.clone());
        base.insert("severity".into(), rule.severity());
        base.extend(rule.labels.clone());
        let mut hold = |extra: &[(&str, String)], summary: String, description: String| {
            let mut labels = base.clone();
            for (k, v) in extra {
                labels.insert(k.to_string(), v.clone());
            }
            out.push(Condition {
                rule: name.clone(),
                labels,
                annotations: [("summary".to_string(), summary), ("description".to_string(), description)].into(),
                hold: rule.hold(),
                repeat: rule.repeat_interval.map(|d| d.0).unwrap_or(i.cfg.repeat_interval.0),
                receivers: rule.receivers.clone().unwrap_or_default(),
            });
        };
        match rule.kind {
            RuleKind::SloBurnRate | RuleKind::LatencySlo => {
                for (route, counts) in &now_counts {
                    if !super::covers(&rule.routes(), route) {
                        continue;
                    }
                    let th = super::thresholds(i.cfg, route);
                    let Some(h) = i.history.get(&(route.clone(), th.clone())) else {
                        continue;
                    };
                    if let Some((summary, description)) = burn(rule, route, &th, counts, h, i.bucket, i.bucket_len) {
                        hold(&[("route", route.clone())], summary, description);
                    }
                }
            }
            RuleKind::UpstreamDown => {
                let Some(u) = rule.upstream.as_deref() else { continue };
                let Some(c) = i.snap.clusters.get(u) else { continue };
                if !c.targets.is_empty() && c.targets.iter().all(|t| !t.is_healthy() || t.is_ejected()) {
                    hold(
                        &[("upstream", u.to_string())],
                        format!("upstream {u} has no target taking traffic"),
                        format!(
                            "all {} targets are failing health checks or ejected by the circuit breaker",
                            c.targets.len()
                        ),
                    );
                }
            }
            RuleKind::CertExpiry => {
                let warn = rule.warn_before.map(|d| d.0).unwrap_or_default();
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                for cert in &i.snap.certs.certs {
                    let left = cert.not_after - now;
                    if left < warn.as_secs() as i64 {
                        hold(
                            &[("cert", cert.name.clone())],
                            format!(
                                "certificate {} expires in {}",
                                cert.name,
                                human(Duration::from_secs(left.max(0) as u64))
                            ),
                            format!("serial {}, issued by {}", cert.serial, cert.issuer),
                        );
                    }
                }
            }
            RuleKind::QuotaNearExhaustion => {
                let Some(crate::config::Threshold::Ratio(share)) = rule.threshold else {
                    continue;
                };
                for (consumer, c) in &i.file.consumers {
                    let Some(plan) = c.plan.as_deref() else { continue };
                    let Some(spec) = i.snap.plans.quota(plan) else { continue };
                    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                    let (period, _) = spec.per.at(now);
                    let Ok(rows) = gatehouse_plugins::limits::quota::usage(consumer).await else {
                        continue;
                    };
                    let used = rows.iter().find(|(s, p, _)| s == "plan" && *p == period).map_or(0, |r| r.2);
                    if spec.requests > 0 && used as f64 >= share * spec.requests as f64 {
                        hold(
                            &[("consumer", consumer.clone()), ("plan", plan.to_string())],
                            format!("consumer {consumer} used {used} of {} requests this period", spec.requests),
                            format!("plan {plan}, period {period}: past {:.0}% of the quota", share * 100.0),
                        );
                    }
                }
            }
            RuleKind::ReloadFailed => {
                if let Some(e) = &i.reload_failure {
                    hold(
                        &[],
                        "a config reload was refused; the previous config keeps serving".into(),
                        e.clone(),
                    );
                }
            }
        }
    }
    out
}

/// The first window pair (the most urgent, in the rule's order) whose long and short
/// windows both burn faster than its factor, with enough requests to judge.
fn burn(
    rule: &RuleCfg,
    route: &str,
    thresholds: &[Duration],
    now: &Counts,
    h: &History,
    bucket: u64,
    len: Duration,
) -> Option<(String, String)> {
    let objective = rule.objective?;
    let budget = 1.0 - objective;
    let slow = match rule.kind {
        RuleKind::LatencySlo => {
            let t = rule.latency_threshold()?;
            Some(thresholds.iter().position(|x| *x == t)?)
        }
        _ => None,
    };
    let bad = |c: &Counts| match slow {
        Some(i) => c.slow.get(i).copied().unwrap_or(0),
        None => c.errors,
    };
    for w in rule.windows() {
        let long = h.window(bucket, now, buckets(w.long.0, len));
        let short = h.window(bucket, now, buckets(w.short.0, len));
        if long.total < rule.min_requests() || short.total == 0 {
            continue;
        }
        let rate = |c: &Counts| bad(c) as f64 / c.total as f64 / budget;
        let (bl, bs) = (rate(&long), rate(&short));
        if bl > w.burn && bs > w.burn {
            let what = if slow.is_some() { "latency" } else { "error" };
            return Some((
                format!(
                    "route {route}: {what} budget burning {bl:.1}x over {} and {bs:.1}x over {} (limit {}x)",
                    human(w.long.0),
                    human(w.short.0),
                    w.burn
                ),
                format!(
                    "{} of {} requests in the last {} missed the objective {objective}",
                    bad(&long),
                    long.total,
                    human(w.long.0)
                ),
            ));
        }
    }
    None
}
