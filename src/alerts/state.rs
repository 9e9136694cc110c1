//! An alert's life: inactive → pending (its rule's `for`) → firing → resolved. One alert per
//! fingerprint (the rule and its labels); a firing alert is sent when it starts, again every
//! `repeat_interval`, and once more when it resolves.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

pub type Labels = BTreeMap<String, String>;

/// A condition that holds at this evaluation.
pub struct Condition {
    pub rule: String,
    pub labels: Labels,
    pub annotations: Labels,
    pub hold: Duration,
    pub repeat: Duration,
    pub receivers: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Firing,
}

#[derive(Debug, Clone)]
pub struct Alert {
    pub rule: String,
    pub labels: Labels,
    pub annotations: Labels,
    pub fingerprint: String,
    pub phase: Phase,
    pub receivers: Vec<String>,
    /// When the condition began (pending) and when the alert fired.
    pub active_since: SystemTime,
    pub fired_at: Option<SystemTime>,
    /// Set on the resolved notice.
    pub ended_at: Option<SystemTime>,
    seen: Instant,
    sent: Option<Instant>,
    hold: Duration,
    repeat: Duration,
}

/// Alertmanager's form: 16 hex digits of a hash of the sorted label pairs (FNV-1a here).
pub fn fingerprint(labels: &Labels) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in labels {
        for b in k.bytes().chain([0xff]).chain(v.bytes()).chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

#[derive(Default)]
pub struct Alerts {
    active: HashMap<String, Alert>,
}

impl Alerts {
    /// Applies one evaluation: the conditions that hold now. Returns the notices to send
    /// (firing, repeated, resolved), each an alert as it should be described.
    pub fn step(&mut self, now: Instant, wall: SystemTime, holding: Vec<Condition>) -> Vec<Alert> {
        let mut out = Vec::new();
        let mut still = std::collections::HashSet::new();
        for c in holding {
            let fp = fingerprint(&c.labels);
            still.insert(fp.clone());
            let a = self.active.entry(fp.clone()).or_insert_with(|| Alert {
                rule: c.rule.clone(),
                labels: c.labels.clone(),
                annotations: c.annotations.clone(),
                fingerprint: fp,
                phase: Phase::Pending,
                receivers: c.receivers.clone(),
                active_since: wall,
                fired_at: None,
                ended_at: None,
                seen: now,
                sent: None,
                hold: c.hold,
                repeat: c.repeat,
            });
            // The latest numbers in the text; the identity (labels) stays.
            a.annotations = c.annotations;
            a.receivers = c.receivers;
            a.hold = c.hold;
            a.repeat = c.repeat;
            if a.phase == Phase::Pending && now.duration_since(a.seen) >= a.hold {
                a.phase = Phase::Firing;
                a.fired_at = Some(wall);
            }
            if a.phase == Phase::Firing && a.sent.is_none_or(|s| now.duration_since(s) >= a.repeat) {
                a.sent = Some(now);
                out.push(a.clone());
            }
        }
        let gone: Vec<String> = self.active.keys().filter(|k| !still.contains(*k)).cloned().collect();
        for fp in gone {
            if let Some(mut a) = self.active.remove(&fp) {
                if a.phase == Phase::Firing {
                    a.ended_at = Some(wall);
                    out.push(a);
                }
            }
        }
        out
    }

    pub fn list(&self) -> Vec<Alert> {
        let mut v: Vec<Alert> = self.active.values().cloned().collect();
        v.sort_by(|a, b| (&a.rule, &a.fingerprint).cmp(&(&b.rule, &b.fingerprint)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(hold: u64) -> Condition {
        Condition {
            rule: "r".into(),
            labels: [("alertname".to_string(), "r".to_string())].into(),
            annotations: Labels::new(),
            hold: Duration::from_secs(hold),
            repeat: Duration::from_secs(60),
            receivers: vec![],
        }
    }

    #[test]
    fn pending_then_firing_then_repeated_then_resolved() {
        let mut a = Alerts::default();
        let t0 = Instant::now();
        let w = SystemTime::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(a.step(at(0), w, vec![cond(10)]).is_empty(), "pending for 10s");
        assert_eq!(a.list()[0].phase, Phase::Pending);
        let fired = a.step(at(10), w, vec![cond(10)]);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].phase, Phase::Firing);
        assert!(a.step(at(30), w, vec![cond(10)]).is_empty(), "once per repeat interval");
        assert_eq!(a.step(at(70), w, vec![cond(10)]).len(), 1, "repeated after 60s");
        let resolved = a.step(at(80), w, vec![]);
        assert_eq!(resolved.len(), 1);
        assert!(resolved[0].ended_at.is_some());
        assert!(a.list().is_empty());
    }

    #[test]
    fn a_pending_alert_that_clears_sends_nothing() {
        let mut a = Alerts::default();
        let t0 = Instant::now();
        assert!(a.step(t0, SystemTime::now(), vec![cond(10)]).is_empty());
        assert!(a.step(t0 + Duration::from_secs(5), SystemTime::now(), vec![]).is_empty());
        assert!(a.list().is_empty());
    }
}
