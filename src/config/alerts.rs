//! `[alerts]`: receivers and rules the gateway evaluates itself. One flat rule table with a
//! `kind`, checked here for the keys each kind needs and refuses, so a rule that could never
//! fire is an error at `-t` rather than silence on the night it mattered.

use super::values::{Dur, Secret};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AlertsCfg {
    #[serde(default = "d_eval")]
    pub evaluation_interval: Dur,
    /// Aggregation step of the per-route counters; the bucket in progress counts.
    #[serde(default = "d_bucket")]
    pub bucket: Dur,
    /// A firing alert is sent again after this long (Alertmanager's default).
    #[serde(default = "d_repeat")]
    pub repeat_interval: Dur,
    #[serde(default)]
    pub receivers: BTreeMap<String, ReceiverCfg>,
    #[serde(default)]
    pub rules: BTreeMap<String, RuleCfg>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReceiverCfg {
    #[serde(rename = "type")]
    pub kind: ReceiverKind,
    pub url: Secret,
    /// One delivery attempt; failed ones are retried with backoff.
    #[serde(default = "d_timeout")]
    pub timeout: Dur,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReceiverKind {
    /// Slack's incoming webhooks: `{"text": ...}`.
    Slack,
    /// Alertmanager's webhook body (version 4).
    Webhook,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    SloBurnRate,
    LatencySlo,
    UpstreamDown,
    CertExpiry,
    QuotaNearExhaustion,
    ReloadFailed,
}

impl RuleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::SloBurnRate => "slo_burn_rate",
            RuleKind::LatencySlo => "latency_slo",
            RuleKind::UpstreamDown => "upstream_down",
            RuleKind::CertExpiry => "cert_expiry",
            RuleKind::QuotaNearExhaustion => "quota_near_exhaustion",
            RuleKind::ReloadFailed => "reload_failed",
        }
    }
}

/// `latency_slo` takes a duration, `quota_near_exhaustion` a share.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Threshold {
    Ratio(f64),
    Time(Dur),
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WindowCfg {
    pub long: Dur,
    pub short: Dur,
    pub burn: f64,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleCfg {
    pub kind: RuleKind,
    #[serde(default)]
    pub objective: Option<f64>,
    #[serde(default)]
    pub routes: Option<Vec<String>>,
    #[serde(default)]
    pub min_requests: Option<u64>,
    #[serde(default)]
    pub windows: Option<Vec<WindowCfg>>,
    #[serde(default)]
    pub threshold: Option<Threshold>,
    #[serde(default)]
    pub upstream: Option<String>,
    /// How long the condition must hold before the alert fires (pending until then).
    #[serde(default, rename = "for")]
    pub for_: Option<Dur>,
    #[serde(default)]
    pub warn_before: Option<Dur>,
    /// Default: every receiver.
    #[serde(default)]
    pub receivers: Option<Vec<String>>,
    #[serde(default)]
    pub severity: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub repeat_interval: Option<Dur>,
}

/// The SRE workbook's pairs for a 30-day budget: 2%, 5% and 10% of it spent.
pub fn default_windows() -> Vec<WindowCfg> {
    let h = |n: u64| Dur(Duration::from_secs(n * 3600));
    let m = |n: u64| Dur(Duration::from_secs(n * 60));
    vec![
        WindowCfg {
            long: h(1),
            short: m(5),
            burn: 14.4,
        },
        WindowCfg {
            long: h(6),
            short: m(30),
            burn: 6.0,
        },
        WindowCfg {
            long: h(72),
            short: h(6),
            burn: 1.0,
        },
    ]
}

impl RuleCfg {
    pub fn windows(&self) -> Vec<WindowCfg> {
        self.windows.clone().unwrap_or_else(default_windows)
    }
    pub fn routes(&self) -> Vec<String> {
        self.routes.clone().unwrap_or_else(|| vec!["*".into()])
    }
    pub fn min_requests(&self) -> u64 {
        self.min_requests.unwrap_or(100)
    }
    pub fn hold(&self) -> Duration {
        self.for_.map(|d| d.0).unwrap_or(match self.kind {
            RuleKind::UpstreamDown => Duration::from_secs(30),
            _ => Duration::ZERO,
        })
    }
    pub fn severity(&self) -> String {
        self.severity.clone().unwrap_or_else(|| {
            match self.kind {
                RuleKind::SloBurnRate | RuleKind::LatencySlo | RuleKind::UpstreamDown => "page",
                _ => "ticket",
            }
            .into()
        })
    }
    pub fn latency_threshold(&self) -> Option<Duration> {
        match self.threshold {
            Some(Threshold::Time(d)) => Some(d.0),
            _ => None,
        }
    }
}

fn d_eval() -> Dur {
    Dur(Duration::from_secs(15))
}
fn d_bucket() -> Dur {
    Dur(Duration::from_secs(60))
}
fn d_repeat() -> Dur {
    Dur(Duration::from_secs(4 * 3600))
}
fn d_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}

pub(super) fn validate(f: &super::File, out: &mut Vec<(String, String)>) {
    let Some(a) = &f.alerts else { return };
    for (key, d) in [
        ("alerts.evaluation_interval", a.evaluation_interval),
        ("alerts.bucket", a.bucket),
        ("alerts.repeat_interval", a.repeat_interval),
    ] {
        if d.0.is_zero() {
            out.push((key.into(), "must be more than 0s".into()));
        }
    }
    for (name, r) in &a.receivers {
        match r.url.value.parse::<http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
            _ => out.push((format!("alerts.receivers.{name}.url"), "not an http:// or https:// URL".into())),
        }
        // Deliveries are awaited by the evaluator: a long one delays the next evaluation.
        if r.timeout.0.is_zero() || r.timeout.0 > Duration::from_secs(60) {
            out.push((
                format!("alerts.receivers.{name}.timeout"),
                "must be more than 0s and at most 60s".into(),
            ));
        }
    }
    for (name, r) in &a.rules {
        rule(f, a, name, r, out);
    }
}

fn rule(f: &super::File, a: &AlertsCfg, name: &str, r: &RuleCfg, out: &mut Vec<(String, String)>) {
    let base = format!("alerts.rules.{name}");
    let kind = r.kind.as_str();
    let mut refuse = |key: &str, why: String| out.push((format!("{base}.{key}"), why));
    let slo = matches!(r.kind, RuleKind::SloBurnRate | RuleKind::LatencySlo);
    // Keys that mean nothing for this kind are refused: a typo'd rule must not look set.
    let given: [(&str, bool, bool); 7] = [
        ("objective", r.objective.is_some(), slo),
        ("routes", r.routes.is_some(), slo),
        ("min_requests", r.min_requests.is_some(), slo),
        ("windows", r.windows.is_some(), slo),
        (
            "threshold",
            r.threshold.is_some(),
            matches!(r.kind, RuleKind::LatencySlo | RuleKind::QuotaNearExhaustion),
        ),
        ("upstream", r.upstream.is_some(), r.kind == RuleKind::UpstreamDown),
        ("warn_before", r.warn_before.is_some(), r.kind == RuleKind::CertExpiry),
    ];
    for (key, set, allowed) in given {
        if set && !allowed {
            refuse(key, format!("not a setting of kind {kind}"));
        }
    }
    if slo {
        match r.objective {
            Some(o) if o > 0.0 && o < 1.0 => {}
            Some(o) => refuse("objective", format!("{o} is not between 0 and 1 (exclusive)")),
            None => refuse("objective", format!("required for kind {kind}")),
        }
        for (i, w) in r.windows().iter().enumerate() {
            if w.short.0.is_zero() || w.short.0 >= w.long.0 {
                refuse(&format!("windows[{i}]"), "short must be more than 0s and shorter than long".into());
            }
            if w.short.0 < a.bucket.0 {
                refuse(
                    &format!("windows[{i}].short"),
                    format!("shorter than alerts.bucket ({})", humantime::format_duration(a.bucket.0)),
                );
            }
            if w.burn.is_nan() || w.burn <= 0.0 {
                refuse(&format!("windows[{i}].burn"), "must be more than 0".into());
            }
            // Every request failing burns at 1 / (1 - objective): a higher factor never fires.
            if let Some(o) = r.objective.filter(|o| *o > 0.0 && *o < 1.0) {
                let most = 1.0 / (1.0 - o);
                if w.burn >= most {
                    refuse(
                        &format!("windows[{i}].burn"),
                        format!(
                            "{} can never be reached: with objective {o} the highest burn rate is {most:.1}",
                            w.burn
                        ),
                    );
                }
            }
        }
        if r.routes.as_ref().is_some_and(|v| v.is_empty()) {
            refuse("routes", "an empty list covers no route (\"*\" covers every one)".into());
        }
        if r.windows.as_ref().is_some_and(|w| w.is_empty()) {
            refuse("windows", "at least one pair of windows".into());
        }
        for route in r.routes() {
            if route != "*" && !f.routes.contains_key(&route) {
                refuse("routes", format!("route `{route}` is not defined"));
            }
        }
    }
    match r.kind {
        RuleKind::LatencySlo => match r.threshold {
            Some(Threshold::Time(d)) if !d.0.is_zero() => {}
            _ => refuse("threshold", "required: a duration such as \"300ms\"".into()),
        },
        RuleKind::QuotaNearExhaustion => match r.threshold {
            Some(Threshold::Ratio(t)) if t > 0.0 && t <= 1.0 => {}
            _ => refuse("threshold", "required: a share of the quota, more than 0 and at most 1".into()),
        },
        RuleKind::UpstreamDown => match &r.upstream {
            Some(u) if f.upstreams.contains_key(u) => {}
            Some(u) => refuse("upstream", format!("upstream `{u}` is not defined")),
            None => refuse("upstream", "required for kind upstream_down".into()),
        },
        RuleKind::CertExpiry if r.warn_before.is_none_or(|d| d.0.is_zero()) => {
            refuse("warn_before", "required: a duration such as \"14d\"".into());
        }
        _ => {}
    }
    for k in r.labels.keys() {
        if matches!(
            k.as_str(),
            "alertname" | "severity" | "route" | "upstream" | "cert" | "consumer" | "plan"
        ) {
            refuse(&format!("labels.{k}"), "set by the gateway (it identifies the alert)".into());
        }
    }
    for (i, name) in r.receivers.iter().flatten().enumerate() {
        if !a.receivers.contains_key(name) {
            refuse(&format!("receivers[{i}]"), format!("receiver `{name}` is not defined"));
        }
    }
}
