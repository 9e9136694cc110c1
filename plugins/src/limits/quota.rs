//! `quota`: requests per consumer per calendar period (UTC day or month).
//!
//! Local mode counts in memory and flushes to the on-disk store every second (see
//! `store::disk`), so counts survive restarts and upgrades; Redis mode counts in a hash
//! per consumer and period, shared by the fleet. Without a consumer, the client IP is
//! the identity.

use super::calendar::{now_secs, Period};
use super::plans::QuotaSpec;
use crate::store::{self, disk::QuotaKey};
use crate::util::err;
use crate::{Answer, Flow, Plugin, PluginCtx, PluginError, Priority};
use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use once_cell::sync::Lazy;
use pingora_http::RequestHeader;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Mutex;

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

#[derive(Default)]
struct Counter {
    /// Total in the store as of the last flush (all processes).
    base: u64,
    /// Counted here since then.
    delta: u64,
}

const SHARDS: usize = 32;

/// Local counters, keyed by (scope, consumer, period), in shards so that requests of
/// different consumers do not wait on one lock.
static LOCAL: Lazy<Vec<Mutex<HashMap<QuotaKey, Counter>>>> = Lazy::new(|| (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect());

fn shard(key: &QuotaKey) -> &'static Mutex<HashMap<QuotaKey, Counter>> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.1.hash(&mut h);
    &LOCAL[(h.finish() as usize) % SHARDS]
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
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

/// Counts one request locally unless the quota is spent: (allowed, used).
fn local_take(key: QuotaKey, limit: u64) -> (bool, u64) {
    let mut map = lock(shard(&key));
    if !map.contains_key(&key) {
        // First use of this counter in this process: start from what the store holds.
        let base = store::get().disk.as_ref().map(|d| d.get(&key).unwrap_or(0)).unwrap_or(0);
        map.insert(key.clone(), Counter { base, delta: 0 });
    }
    let Some(c) = map.get_mut(&key) else { return (true, 0) };
    let used = c.base + c.delta;
    if used >= limit {
        return (false, used);
    }
    c.delta += 1;
    (true, used + 1)
}

/// Flushes local deltas to the on-disk store and refreshes totals. Called every second by
/// the core; returns how many counters were written.
pub fn flush() -> usize {
    let stores = store::get();
    let Some(disk) = stores.disk.as_ref() else { return 0 };
    let deltas: HashMap<QuotaKey, u64> = LOCAL
        .iter()
        .flat_map(|m| {
            lock(m)
                .iter()
                .filter(|(_, c)| c.delta > 0)
                .map(|(k, c)| (k.clone(), c.delta))
                .collect::<Vec<_>>()
        })
        .collect();
    if deltas.is_empty() {
        return 0;
    }
    match disk.flush(&deltas) {
        Ok(totals) => {
            for (k, flushed) in &deltas {
                if let Some(c) = lock(shard(k)).get_mut(k) {
                    c.delta -= (*flushed).min(c.delta);
                    c.base = totals.get(k).copied().unwrap_or(c.base + flushed);
                }
            }
            deltas.len()
        }
        Err(e) => {
            log::error!("quota: flushing to the store failed (will retry): {e}");
            crate::metrics::STORE_ERRORS.with_label_values(&["disk", "quota_flush"]).inc();
            0
        }
    }
}

/// Local counters not yet on disk (admin usage shows it; tests wait for 0).
pub fn unflushed() -> u64 {
    LOCAL.iter().map(|m| lock(m).values().map(|c| c.delta).sum::<u64>()).sum()
}

/// A consumer's usage in the current periods: (scope, period, used).
pub async fn usage(consumer: &str) -> Result<Vec<(String, String, u64)>, String> {
    let stores = store::get();
    let mut out: HashMap<(String, String), u64> = HashMap::new();
    if let Some(d) = stores.disk.as_ref() {
        for (scope, period, used) in d.usage(consumer)? {
            out.insert((scope, period), used);
        }
    }
    for m in LOCAL.iter() {
        for ((scope, c, period), counter) in lock(m).iter() {
            if c == consumer {
                let e = out.entry((scope.clone(), period.clone())).or_default();
                *e = (*e).max(counter.base) + counter.delta;
            }
        }
    }
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
    for m in LOCAL.iter() {
        for ((_, c, period), counter) in lock(m).iter_mut() {
            if c == consumer && periods.contains(period) {
                counter.base = 0;
                counter.delta = 0;
            }
        }
    }
    if let Some(d) = stores.disk.as_ref() {
        for p in &periods {
            d.reset(consumer, p)?;
        }
    }
    if let Some(r) = stores.redis.as_ref() {
        for p in &periods {
            r.del(&format!("gh:q:{consumer}:{p}")).await?;
        }
    }
    Ok(())
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
        let (allowed, used) = local_take(key, spec.requests);
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
