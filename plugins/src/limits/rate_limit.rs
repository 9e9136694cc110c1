//! `rate_limit`: GCRA per key, local (exact, per process) or in Redis (exact, per fleet).
//! Answers 429 with `Retry-After`; every answer of a limited route carries
//! `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers).

use super::gcra::{Decision, Gcra};
use super::keys::{self, Part, Scope};
use super::plans::{Limit, Rate, RateSpec};
use crate::store;
use crate::util::err;
use crate::{Answer, Flow, Plugin, PluginCtx, PluginError, Priority};
use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use once_cell::sync::Lazy;
use pingora_http::RequestHeader;
use serde::Deserialize;

pub const NAME: &str = "rate_limit";

/// One local limiter for the process: instances rebuilt on reload keep their counts.
static LOCAL: Lazy<Gcra> = Lazy::new(Gcra::default);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Omitted: the consumer's plan decides (no plan: no limit).
    #[serde(default)]
    pub requests: Option<u64>,
    #[serde(default)]
    pub per: Option<String>,
    #[serde(default)]
    pub burst: u64,
    #[serde(default = "d_key")]
    pub key: String,
    /// local | redis; default redis when [store] has one.
    #[serde(default)]
    pub store: Option<String>,
    #[serde(default = "d_true")]
    pub headers: bool,
}

fn d_key() -> String {
    "consumer".into()
}
fn d_true() -> bool {
    true
}

pub struct RateLimit {
    /// The route's own rate; `None`: the consumer's plan decides.
    limit: Option<Limit>,
    parts: Vec<Part>,
    redis: Option<bool>,
    headers: bool,
}

impl RateLimit {
    pub fn from_config(c: Config) -> Result<Self, PluginError> {
        let rate = match (c.requests, &c.per) {
            (Some(requests), Some(per)) => Some(Rate::from_spec(
                "",
                &RateSpec {
                    requests,
                    per: per.clone(),
                    burst: c.burst,
                },
            )?),
            (None, None) => None,
            _ => return Err(err("", "set both `requests` and `per`, or neither (to use the consumer's plan)")),
        };
        let redis = store::parse_choice(c.store.as_deref())?;
        Ok(RateLimit {
            limit: rate.map(Limit::new),
            parts: keys::parse("key", &c.key)?,
            redis,
            headers: c.headers,
        })
    }

    /// The rate that applies, its policy header (if headers are on) and the key scope.
    fn rate_for(&self, ctx: &PluginCtx) -> Option<(Rate, Option<HeaderValue>, Scope)> {
        let (limit, scope) = match &self.limit {
            Some(l) => (l, Scope::Route),
            None => (ctx.plans.rate(ctx.consumer.as_ref()?.plan.as_deref()?)?, Scope::Plan),
        };
        Some((limit.rate, self.headers.then(|| limit.policy.clone()), scope))
    }
}

static POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Appends `RateLimit-Policy` and `RateLimit`. Runs on every request of a limited route, so
/// the numbers are written into a stack buffer rather than through `format!`.
fn headers(policy: HeaderValue, d: &Decision, out: &mut Vec<(HeaderName, HeaderValue)>) {
    out.push((POLICY.clone(), policy));
    let mut buf = [0u8; 64];
    let mut w = Cursor { buf: &mut buf, len: 0 };
    w.put(b"\"default\";r=");
    w.num(d.remaining);
    w.put(b";t=");
    w.num(d.reset.as_secs_f64().ceil() as u64);
    let len = w.len;
    if let Ok(v) = HeaderValue::from_bytes(&buf[..len]) {
        out.push((RATELIMIT.clone(), v));
    }
}

/// A fixed buffer that silently stops at its end (the value then fails to parse or is cut;
/// two u64s and a label always fit in 64 bytes).
struct Cursor<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Cursor<'_> {
    fn put(&mut self, b: &[u8]) {
        let n = b.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&b[..n]);
        self.len += n;
    }

    fn num(&mut self, v: u64) {
        self.put(itoa::Buffer::new().format(v).as_bytes());
    }
}

#[async_trait]
impl Plugin for RateLimit {
    fn name(&self) -> &'static str {
        NAME
    }

    fn priority(&self) -> Priority {
        Priority::LIMITS
    }

    fn is_async(&self) -> bool {
        store::uses_redis(self.redis)
    }

    fn request(&self, req: &mut RequestHeader, ctx: &mut PluginCtx) -> Flow {
        let Some((rate, policy, scope)) = self.rate_for(ctx) else {
            return Flow::Continue;
        };
        let (interval, tau) = rate.gcra();
        let key = keys::hash(&self.parts, req, ctx, scope);
        let d = LOCAL.check(key, interval, tau);
        self.finish(policy, d, ctx)
    }

    async fn request_async(&self, req: &mut RequestHeader, ctx: &mut PluginCtx) -> Flow {
        let Some((rate, policy, scope)) = self.rate_for(ctx) else {
            return Flow::Continue;
        };
        let (interval, tau) = rate.gcra();
        let key = keys::hash(&self.parts, req, ctx, scope);
        let stores = store::get();
        let Some(redis) = stores.redis.as_ref() else {
            return self.finish(policy, LOCAL.check(key, interval, tau), ctx);
        };
        // The key hash already holds the scope (and the route for a route's own limit).
        let rkey = format!("gh:rl:{key:016x}");
        match redis.gcra(&rkey, interval, tau).await {
            Ok((allowed, retry, full)) => {
                let d = Decision::from_tat(allowed, retry, full, interval, tau);
                self.finish(policy, if allowed { d } else { Decision { remaining: 0, ..d } }, ctx)
            }
            Err(e) => store::unavailable(ctx, "rate_limit", &e, "rate limit store unavailable"),
        }
    }
}

impl RateLimit {
    fn finish(&self, policy: Option<HeaderValue>, d: Decision, ctx: &mut PluginCtx) -> Flow {
        if d.allowed {
            if let Some(policy) = policy {
                headers(policy, &d, &mut ctx.response_headers);
            }
            return Flow::Continue;
        }
        let mut h = Vec::new();
        if let Some(policy) = policy {
            headers(policy, &d, &mut h);
        }
        ctx.rejection = Some("rate_limit");
        let mut a = Answer::error(429, "rate limit exceeded");
        let secs = d.retry_after.as_secs_f64().ceil().max(1.0) as u64;
        a.headers.push((http::header::RETRY_AFTER, HeaderValue::from(secs)));
        a.headers.extend(h);
        Flow::Respond(a)
    }
}
