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
    /// Read by the core's usage preview only; a decimal kept as written (never a float).
    #[serde(default)]
    pub price: Option<Price>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub per_request: String,
    pub currency: String,
}

/// A rate in the form the limiter uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub requests: u64,
    pub per: Duration,
    pub burst: u64,
}

/// Requests (with burst) per window are counted in 32 bits wherever a limit is enforced.
pub const MAX_REQUESTS: u64 = u32::MAX as u64;

/// Quota counts travel through Redis as Lua numbers (doubles): exact up to 2^53.
pub const MAX_QUOTA: u64 = 1 << 53;

impl Rate {
    pub fn from_spec(key: &str, s: &RateSpec) -> Result<Rate, PluginError> {
        let per = duration(&format!("{key}.per"), &s.per)?;
        let sub = |k: &str| if key.is_empty() { k.to_string() } else { format!("{key}.{k}") };
        if s.requests == 0 || per.is_zero() {
            return Err(crate::util::err(key, "requests and per must be greater than zero"));
        }
        if s.requests > MAX_REQUESTS {
            return Err(crate::util::err(&sub("requests"), format!("must be at most {MAX_REQUESTS}")));
        }
        if s.burst > MAX_REQUESTS || s.requests + s.burst > MAX_REQUESTS {
            return Err(crate::util::err(
                &sub("burst"),
                format!("requests + burst must be at most {MAX_REQUESTS}"),
            ));
        }
        Ok(Rate {
            requests: s.requests,
            per,
            burst: s.burst,
        })
    }

    /// GCRA parameters: one request every `interval`; a full bucket holds
    /// `requests + burst`, so `tau` lets that many through back to back. In 128-bit
    /// nanoseconds, so no value the config accepts can overflow.
    pub fn gcra(&self) -> (Duration, Duration) {
        let interval = (self.per.as_nanos() / u128::from(self.requests.max(1))).max(1);
        let tau = interval * u128::from((self.requests + self.burst).saturating_sub(1));
        let ns = |v: u128| Duration::from_nanos(u64::try_from(v).unwrap_or(u64::MAX));
        (ns(interval), ns(tau))
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
        if let Some(q) = &p.quota {
            if q.requests == 0 || q.requests > MAX_QUOTA {
                return Err(crate::util::err("quota.requests", format!("must be between 1 and {MAX_QUOTA}")));
            }
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
