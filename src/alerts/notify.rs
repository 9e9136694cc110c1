//! Notices to receivers: Alertmanager's webhook body (version 4) or Slack's `{"text"}`,
//! queued per receiver and retried with backoff until delivered (or a day old). Only the
//! head of a receiver's queue is tried, so a receiver that comes back gets its notices in
//! the order they happened: a firing notice before its resolved one.

use super::state::Alert;
use crate::config::{ReceiverCfg, ReceiverKind};
use once_cell::sync::Lazy;
use prometheus::{IntCounterVec, Opts};
use serde_json::json;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

pub static NOTICES: Lazy<IntCounterVec> = Lazy::new(|| {
    let c = IntCounterVec::new(
        Opts::new(
            "gatehouse_alert_notifications_total",
            "Alert notices by receiver and result: sent, retried (a failed attempt), rejected (a 4xx, dropped), expired (given up after a day, or the receiver left the config).",
        ),
        &["receiver", "result"],
    )
    .expect("static counter definition");
    if let Err(e) = crate::metrics::METRICS.registry.register(Box::new(c.clone())) {
        log::error!("metric registration failed: {e}");
    }
    c
});

const GIVE_UP: Duration = Duration::from_secs(24 * 3600);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

struct Notice {
    body: Vec<u8>,
    queued: Instant,
    attempts: u32,
    next: Instant,
}

#[derive(Default)]
pub struct Outbox {
    queues: BTreeMap<String, VecDeque<Notice>>,
}

fn time(t: Option<SystemTime>) -> String {
    match t {
        Some(t) => humantime::format_rfc3339_millis(t).to_string(),
        // Alertmanager's "no end" value.
        None => "0001-01-01T00:00:00Z".into(),
    }
}

/// Alertmanager's webhook payload (`version: "4"`) for one alert.
pub fn webhook_body(receiver: &str, a: &Alert, external_url: &str) -> serde_json::Value {
    let status = if a.ended_at.is_some() { "resolved" } else { "firing" };
    json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname=\"{}\"}}", a.rule),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": {"alertname": a.rule},
        "commonLabels": a.labels,
        "commonAnnotations": a.annotations,
        "externalURL": external_url,
        "alerts": [{
            "status": status,
            "labels": a.labels,
            "annotations": a.annotations,
            "startsAt": time(a.fired_at.or(Some(a.active_since))),
            "endsAt": time(a.ended_at),
            "generatorURL": format!("{external_url}/alerts"),
            "fingerprint": a.fingerprint,
        }],
    })
}

pub fn slack_body(a: &Alert) -> serde_json::Value {
    let status = if a.ended_at.is_some() { "RESOLVED" } else { "FIRING" };
    let labels: Vec<String> = a
        .labels
        .iter()
        .filter(|(k, _)| *k != "alertname")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let summary = a.annotations.get("summary").map(String::as_str).unwrap_or("");
    json!({"text": format!("[{status}] {} ({}): {summary}", a.rule, labels.join(", "))})
}

impl Outbox {
    pub fn queue(&mut self, receivers: &BTreeMap<String, ReceiverCfg>, a: &Alert, external_url: &str) {
        let names: Vec<&String> = if a.receivers.is_empty() {
            receivers.keys().collect()
        } else {
            a.receivers.iter().collect()
        };
        for name in names {
            let Some(r) = receivers.get(name) else { continue };
            let body = match r.kind {
                ReceiverKind::Webhook => webhook_body(name, a, external_url),
                ReceiverKind::Slack => slack_body(a),
            };
            let now = Instant::now();
            self.queues.entry(name.clone()).or_default().push_back(Notice {
                body: body.to_string().into_bytes(),
                queued: now,
                attempts: 0,
                next: now,
            });
        }
    }

    pub fn pending(&self) -> usize {
        self.queues.values().map(VecDeque::len).sum()
    }

    /// Tries the head of every receiver's queue that is due, all at once; returns when each
    /// has been answered or timed out.
    pub async fn deliver(&mut self, client: &reqwest::Client, receivers: &BTreeMap<String, ReceiverCfg>) {
        // A receiver the config no longer has: its notices have nowhere to go.
        self.queues.retain(|name, q| {
            let keep = receivers.contains_key(name);
            if !keep {
                NOTICES.with_label_values(&[name, "expired"]).inc_by(q.len() as u64);
            }
            keep
        });
        let now = Instant::now();
        let mut tries = Vec::new();
        for (name, q) in self.queues.iter() {
            let (Some(head), Some(r)) = (q.front(), receivers.get(name)) else {
                continue;
            };
            if head.next > now {
                continue;
            }
            let send = client
                .post(&r.url.value)
                .header("content-type", "application/json")
                .timeout(r.timeout.0)
                .body(head.body.clone())
                .send();
            tries.push(async move { (name.clone(), send.await.map(|a| a.status())) });
        }
        let results = futures_util::future::join_all(tries).await;
        for (name, result) in results {
            let Some(q) = self.queues.get_mut(&name) else { continue };
            let ok = matches!(&result, Ok(s) if s.is_success());
            if ok {
                q.pop_front();
                NOTICES.with_label_values(&[&name, "sent"]).inc();
                continue;
            }
            // A 4xx other than timeout and throttling will not change by asking again (an
            // archived Slack channel answers 404 forever): drop it rather than hold every
            // later notice behind it.
            if let Ok(s) = &result {
                if s.is_client_error() && *s != reqwest::StatusCode::REQUEST_TIMEOUT && *s != reqwest::StatusCode::TOO_MANY_REQUESTS {
                    q.pop_front();
                    NOTICES.with_label_values(&[&name, "rejected"]).inc();
                    log::error!("alerts: receiver {name} refused a notice with {s}; dropped");
                    continue;
                }
            }
            let why = match result {
                Ok(s) => format!("answered {s}"),
                Err(e) => e.to_string(),
            };
            NOTICES.with_label_values(&[&name, "retried"]).inc();
            if let Some(head) = q.front_mut() {
                head.attempts += 1;
                let backoff = Duration::from_millis(250 << head.attempts.min(11)).min(MAX_BACKOFF);
                head.next = Instant::now() + backoff;
                log::warn!("alerts: receiver {name}: {why}; retrying in {backoff:?}");
                if head.queued.elapsed() > GIVE_UP {
                    q.pop_front();
                    NOTICES.with_label_values(&[&name, "expired"]).inc();
                    log::error!("alerts: receiver {name}: a notice a day old was dropped");
                }
            }
        }
    }
}
