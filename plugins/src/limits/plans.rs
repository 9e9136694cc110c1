//! Plans: tiers of access that give consumers a rate limit and a quota. A route's own
//! settings override its consumer's plan.

use super::calendar::Period;
use crate::util::duration;
use crate::PluginError;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateSpec {
    pub requests: u64,
    pub per: String,
    #[serde(default)]
    pub burst: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QuotaSpec {
    pub requests: u64,
    pub per: Period,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct PlanCfg {
    #[serde(default)]
    pub rate_limit: Option<RateSpec>,
    #[serde(default)]
    pub quota: Option<QuotaSpec>,
}

/// A rate in the form the limiter uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub requests: u64,
    pub per: Duration,
    pub burst: u64,
}

impl Rate {
    pub fn from_spec(key: &str, s: &RateSpec) -> Result<Rate, PluginError> {
        let per = duration(&format!("{key}.per"), &s.per)?;
        if s.requests == 0 || per.is_zero() {
            return Err(crate::util::err(key, "requests and per must be greater than zero"));
        }
        Ok(Rate {
            requests: s.requests,
            per,
            burst: s.burst,
        })
    }

    /// GCRA parameters: one request every `interval`; a full bucket holds
    /// `requests + burst`, so `tau` lets that many through back to back.
    pub fn gcra(&self) -> (Duration, Duration) {
        let interval = self.per / self.requests.max(1) as u32;
        let interval = if interval.is_zero() { Duration::from_nanos(1) } else { interval };
        let tau = interval * (self.requests + self.burst).saturating_sub(1) as u32;
        (interval, tau)
    }
}

/// A rate with its `RateLimit-Policy` value, which depends only on the rate: built once at
/// load, for a route's own rate and for each plan's, never per request.
#[derive(Debug, Clone)]
pub struct Limit {
    pub rate: Rate,
    pub policy: http::HeaderValue,
}

impl Limit {
    pub fn new(rate: Rate) -> Limit {
        let v = format!("\"default\";q={};w={}", rate.requests + rate.burst, rate.per.as_secs().max(1));
        let policy = http::HeaderValue::from_str(&v).unwrap_or_else(|_| http::HeaderValue::from_static("\"default\""));
        Limit { rate, policy }
    }
}

#[derive(Debug, Default)]
pub struct Plans {
    plans: HashMap<String, (Option<Limit>, Option<QuotaSpec>)>,
}

impl Plans {
    pub fn add(&mut self, name: &str, p: &PlanCfg) -> Result<(), PluginError> {
        let rate = match &p.rate_limit {
            Some(r) => Some(Limit::new(Rate::from_spec("rate_limit", r)?)),
            None => None,
        };
        if p.quota.as_ref().is_some_and(|q| q.requests == 0) {
            return Err(crate::util::err("quota.requests", "must be greater than zero"));
        }
        self.plans.insert(name.to_string(), (rate, p.quota.clone()));
        Ok(())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.plans.contains_key(name)
    }

    pub fn rate(&self, plan: &str) -> Option<&Limit> {
        self.plans.get(plan).and_then(|p| p.0.as_ref())
    }

    pub fn quota(&self, plan: &str) -> Option<&QuotaSpec> {
        self.plans.get(plan).and_then(|p| p.1.as_ref())
    }
}
