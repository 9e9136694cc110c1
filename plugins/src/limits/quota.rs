//! `quota`: requests per consumer per calendar period (UTC day or month).
//!
//! Local mode counts in memory and keeps the counts on disk (see `counters`), so they
//! survive restarts and upgrades; Redis mode counts in a hash per consumer and period,
//! shared by the fleet. Without a consumer, the client IP is the identity.

use super::calendar::{now_secs, Period};
use super::counters;
use super::plans::QuotaSpec;
use crate::store;
use crate::util::err;
use crate::{Answer, Flow, Plugin, PluginCtx, PluginError, Priority};
use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora_http::RequestHeader;
use serde::Deserialize;
use std::collections::HashMap;

pub const NAME: &str = "quota";

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Omitted: the consumer's plan decides (no plan: no quota).
    #[serde(default)]
    pub requests: Option<u64>,
    #[serde(default)]
    pub per: Option<Period>,
    #[serde(default)]
    pub store: Option<String>,
}

pub struct Quota {
    own: Option<QuotaSpec>,
    redis: Option<bool>,
}

impl Quota {
    pub fn from_config(c: Config) -> Result<Self, PluginError> {
        let own = match (c.requests, c.per) {
            (Some(requests), Some(per)) if requests > 0 && requests <= super::plans::MAX_QUOTA => Some(QuotaSpec { requests, per }),
            (Some(_), Some(_)) => return Err(err("requests", format!("must be between 1 and {}", super::plans::MAX_QUOTA))),
            (None, None) => None,
            _ => return Err(err("", "set both `requests` and `per`, or neither (to use the consumer's plan)")),
        };
        let redis = store::parse_choice(c.store.as_deref())?;
        Ok(Quota { own, redis })
    }
}

fn identity(ctx: &PluginCtx) -> String {
    match ctx.consumer_name() {
        Some(c) => c.to_string(),
        None => format!("ip:{}", ctx.client_ip),
    }
}

/// A consumer's usage in the current periods: (scope, period, used).
pub async fn usage(consumer: &str) -> Result<Vec<(String, String, u64)>, String> {
    let stores = store::get();
    let mut out: HashMap<(String, String), u64> = HashMap::new();
    if let Some(d) = stores.disk() {
        for (scope, period, used) in d.usage(consumer)? {
            out.insert((scope, period), used);
        }
    }
    counters::usage_of(consumer, &mut out);
    if let Some(r) = stores.redis.as_ref() {
        for p in [Period::Day, Period::Month] {
            let (period, _) = p.at(now_secs());
            for (scope, used) in r.hgetall(&format!("gh:q:{consumer}:{period}")).await? {
                out.insert((scope, period.clone()), used);
            }
        }
    }
    let mut v: Vec<_> = out.into_iter().map(|((s, p), u)| (s, p, u)).collect();
    v.sort();
    Ok(v)
}

/// Resets a consumer's counters for the current periods, everywhere they are kept.
pub async fn reset(consumer: &str) -> Result<(), String> {
    let stores = store::get();
    let now = now_secs();
    let periods: Vec<String> = [Period::Day, Period::Month].iter().map(|p| p.at(now).0).collect();
    let (who, local_periods) = (consumer.to_string(), periods.clone());
    tokio::task::spawn_blocking(move || counters::reset(&who, &local_periods))
        .await
        .map_err(|e| format!("reset task: {e}"))??;
    if let Some(r) = stores.redis.as_ref() {
        for p in &periods {
            r.del(&format!("gh:q:{consumer}:{p}")).await?;
        }
    }
    Ok(())
}

pub use counters::{evict, flush, load_pending, unflushed};

/// Completes when counters wait for their stored totals (the store worker then loads them).
pub async fn wait_for_loads() {
    counters::WORK.notified().await
}

static QUOTA_LIMIT: HeaderName = HeaderName::from_static("x-quota-limit");
static QUOTA_REMAINING: HeaderName = HeaderName::from_static("x-quota-remaining");
static QUOTA_RESET: HeaderName = HeaderName::from_static("x-quota-reset");

impl Quota {
    fn spec<'a>(&'a self, ctx: &'a PluginCtx) -> Option<(QuotaSpec, &'static str)> {
        if let Some(q) = &self.own {
            return Some((q.clone(), "route"));
        }
        let plan = ctx.consumer.as_ref()?.plan.as_deref()?;
        ctx.plans.quota(plan).map(|q| (q.clone(), "plan"))
    }

    fn finish(&self, spec: &QuotaSpec, allowed: bool, used: u64, ends: u64, ctx: &mut PluginCtx) -> Flow {
        let reset = ends.saturating_sub(now_secs());
        let h = vec![
            (QUOTA_LIMIT.clone(), HeaderValue::from(spec.requests)),
            (QUOTA_REMAINING.clone(), HeaderValue::from(spec.requests.saturating_sub(used))),
            (QUOTA_RESET.clone(), HeaderValue::from(reset)),
        ];
        if allowed {
            ctx.response_headers.extend(h);
            return Flow::Continue;
        }
        ctx.rejection = Some("quota");
        let mut a = Answer::error(429, "quota exhausted");
        a.headers.push((http::header::RETRY_AFTER, HeaderValue::from(reset.max(1))));
        a.headers.extend(h);
        Flow::Respond(a)
    }
}

#[async_trait]
impl Plugin for Quota {
    fn name(&self) -> &'static str {
        NAME
    }

    fn priority(&self) -> Priority {
        Priority(Priority::LIMITS.0 - 10)
    }

    fn is_async(&self) -> bool {
        store::uses_redis(self.redis)
    }

    fn request(&self, _req: &mut RequestHeader, ctx: &mut PluginCtx) -> Flow {
        let Some((spec, scope)) = self.spec(ctx) else {
            return Flow::Continue;
        };
        let (period, ends) = spec.per.at(now_secs());
        let scope = if scope == "route" {
            ctx.route.to_string()
        } else {
            "plan".to_string()
        };
        let key = (scope, identity(ctx), period);
        let (allowed, used) = counters::take(key, spec.requests);
        self.finish(&spec, allowed, used, ends, ctx)
    }

    async fn request_async(&self, req: &mut RequestHeader, ctx: &mut PluginCtx) -> Flow {
        let Some((spec, scope)) = self.spec(ctx) else {
            return Flow::Continue;
        };
        let stores = store::get();
        let Some(redis) = stores.redis.as_ref() else {
            return self.request(req, ctx);
        };
        let (period, ends) = spec.per.at(now_secs());
        let field = if scope == "route" {
            ctx.route.to_string()
        } else {
            "plan".to_string()
        };
        let key = format!("gh:q:{}:{period}", identity(ctx));
        match redis.quota(&key, &field, spec.requests, ends + 86_400).await {
            Ok((allowed, used)) => self.finish(&spec, allowed, used, ends, ctx),
            Err(e) => store::unavailable(ctx, "quota", &e, "quota store unavailable"),
        }
    }
}
