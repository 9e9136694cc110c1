//! Response caching on pingora-cache: the per-route policy (`[routes.X.plugins.cache]`),
//! keys, HTTP freshness rules, and the process-wide store (`[cache]`).
//!
//! The store is static, as pingora-cache requires, and sized from the config the process
//! started with; a change of `[cache]` is reported as needing an upgrade.

pub mod storage;

use crate::config::values::{Dur, Size};
use crate::metrics::METRICS;
use once_cell::sync::OnceCell;
use pingora_cache::cache_control::CacheControl;
use pingora_cache::filters::{calculate_fresh_until, calculate_serve_stale_durations};
use pingora_cache::key::HashBinary;
use pingora_cache::lock::CacheLock;
use pingora_cache::{CacheKey, CacheMeta, CacheMetaDefaults, CachePhase, NoCacheReason, RespCacheable, VarianceBuilder};
use pingora_http::{RequestHeader, ResponseHeader};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};
use storage::{EntryInfo, MemStore, Metrics};

pub const PLUGIN: &str = "cache";

/// `[cache]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheCfg {
    #[serde(default = "d_memory")]
    pub memory: Size,
    #[serde(default = "d_max_object")]
    pub max_object: Size,
}

fn d_memory() -> Size {
    Size(256 << 20)
}
fn d_max_object() -> Size {
    Size(8 << 20)
}

impl Default for CacheCfg {
    fn default() -> Self {
        CacheCfg {
            memory: d_memory(),
            max_object: d_max_object(),
        }
    }
}

/// `[routes.X.plugins.cache]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyCfg {
    #[serde(default = "d_ttl")]
    pub default_ttl: Dur,
    #[serde(default)]
    pub override_ttl: Option<Dur>,
    #[serde(default = "d_key")]
    pub key: Vec<String>,
    #[serde(default)]
    pub stale_while_revalidate: Option<Dur>,
    #[serde(default)]
    pub stale_if_error: Option<Dur>,
    #[serde(default)]
    pub cache_authenticated: bool,
    #[serde(default = "d_lock")]
    pub lock_timeout: Dur,
    #[serde(default = "d_status_header")]
    pub status_header: String,
    #[serde(default)]
    pub tag_header: Option<String>,
}

fn d_ttl() -> Dur {
    Dur(Duration::from_secs(60))
}
fn d_key() -> Vec<String> {
    vec!["host".into(), "path".into(), "query".into()]
}
fn d_lock() -> Dur {
    Dur(Duration::from_secs(2))
}
fn d_status_header() -> String {
    "x-cache-status".into()
}

#[derive(Debug, Clone, PartialEq)]
enum KeyPart {
    Host,
    Path,
    Query,
    QueryParam(String),
    Header(http::HeaderName),
}

/// A route's compiled cache policy.
#[derive(Debug)]
pub struct Policy {
    default_ttl: Duration,
    override_ttl: Option<Duration>,
    key: Vec<KeyPart>,
    swr: u32,
    sie: u32,
    pub cache_authenticated: bool,
    pub lock_timeout: Duration,
    pub status_header: http::HeaderName,
    tag_header: Option<http::HeaderName>,
}

impl Policy {
    /// Parses and checks a route's cache table; errors are (key inside the table, reason).
    pub fn from_toml(v: &toml::Value) -> Result<Policy, (String, String)> {
        let c: PolicyCfg = serde_path_to_error::deserialize(v.clone()).map_err(|e| (e.path().to_string(), e.into_inner().to_string()))?;
        let header = |k: &str, s: &str| {
            http::HeaderName::from_bytes(s.as_bytes()).map_err(|_| (k.to_string(), format!("`{s}` is not a header name")))
        };
        let mut key = Vec::new();
        for (i, part) in c.key.iter().enumerate() {
            key.push(match part.as_str() {
                "host" => KeyPart::Host,
                "path" => KeyPart::Path,
                "query" => KeyPart::Query,
                p => match (p.strip_prefix("query:"), p.strip_prefix("header:")) {
                    (Some(q), _) if !q.is_empty() => KeyPart::QueryParam(q.to_string()),
                    (_, Some(h)) => KeyPart::Header(header(&format!("key[{i}]"), h)?),
                    _ => {
                        return Err((
                            format!("key[{i}]"),
                            format!("`{p}` is not host, path, query, query:NAME or header:NAME"),
                        ))
                    }
                },
            });
        }
        if !key.contains(&KeyPart::Path) {
            return Err(("key".into(), "must contain \"path\"".into()));
        }
        Ok(Policy {
            default_ttl: c.default_ttl.0,
            override_ttl: c.override_ttl.map(|d| d.0),
            key,
            swr: c.stale_while_revalidate.map(|d| d.0.as_secs() as u32).unwrap_or(0),
            sie: c.stale_if_error.map(|d| d.0.as_secs() as u32).unwrap_or(0),
            cache_authenticated: c.cache_authenticated,
            lock_timeout: c.lock_timeout.0,
            status_header: header("status_header", &c.status_header)?,
            tag_header: c.tag_header.as_deref().map(|h| header("tag_header", h)).transpose()?,
        })
    }

    /// Whether this request may use the cache at all: GET/HEAD only, and requests with
    /// credentials only when the route caches per consumer.
    pub fn applies(&self, req: &RequestHeader, consumer: Option<&str>) -> bool {
        let method_ok = req.method == http::Method::GET || req.method == http::Method::HEAD;
        let credentials =
            consumer.is_some() || req.headers.contains_key(http::header::AUTHORIZATION) || req.headers.contains_key(http::header::COOKIE);
        method_ok && (!credentials || self.cache_authenticated)
    }

    /// The key: each configured part, length-prefixed so parts cannot run into each other,
    /// plus the route and (for authenticated caching) the consumer.
    pub fn key(&self, route: &str, host: &str, req: &RequestHeader, consumer: Option<&str>) -> CacheKey {
        let mut primary = Vec::with_capacity(128);
        let mut push = |b: &[u8]| {
            primary.extend_from_slice(&(b.len() as u32).to_be_bytes());
            primary.extend_from_slice(b);
        };
        push(route.as_bytes());
        for part in &self.key {
            match part {
                KeyPart::Host => push(host.to_ascii_lowercase().as_bytes()),
                KeyPart::Path => push(req.uri.path().as_bytes()),
                KeyPart::Query => push(req.uri.query().unwrap_or("").as_bytes()),
                KeyPart::QueryParam(q) => {
                    let v = req
                        .uri
                        .query()
                        .and_then(|qs| {
                            qs.split('&')
                                .find_map(|kv| kv.split_once('=').filter(|(k, _)| k == q).map(|(_, v)| v))
                        })
                        .unwrap_or("");
                    push(v.as_bytes())
                }
                KeyPart::Header(h) => {
                    for v in req.headers.get_all(h) {
                        push(v.as_bytes());
                    }
                    push(b"");
                }
            }
        }
        if self.cache_authenticated {
            push(consumer.unwrap_or("").as_bytes());
        }
        let mut key = CacheKey::new(primary, route);
        key.extensions.insert(EntryInfo {
            host: host.to_ascii_lowercase(),
            path: req.uri.path().to_string(),
            tag_header: self.tag_header.clone(),
        });
        key
    }

    /// HTTP caching rules: what may be stored and for how long.
    pub fn cacheable(&self, resp: &ResponseHeader, authorization: bool) -> RespCacheable {
        let status = resp.status.as_u16();
        let vary_star = resp
            .headers
            .get_all(http::header::VARY)
            .iter()
            .any(|v| v.as_bytes().split(|b| *b == b',').any(|p| p.trim_ascii() == b"*"));
        if !matches!(status, 200 | 203 | 204 | 300 | 301 | 308 | 404 | 410)
            || resp.headers.contains_key(http::header::SET_COOKIE)
            || vary_star
        {
            return RespCacheable::Uncacheable(NoCacheReason::OriginNotCache);
        }
        let cc = CacheControl::from_resp_headers(resp);
        if let Some(cc) = &cc {
            if cc.no_store() || cc.private() {
                return RespCacheable::Uncacheable(NoCacheReason::OriginNotCache);
            }
        }
        // A response to a request with credentials is shared only when the origin says so
        // (RFC 9111 3.5), unless the route caches per consumer.
        let auth = authorization && !self.cache_authenticated;
        if auth
            && !cc
                .as_ref()
                .is_some_and(|c| c.public() || c.s_maxage().ok().flatten().is_some() || c.must_revalidate())
        {
            return RespCacheable::Uncacheable(NoCacheReason::OriginNotCache);
        }
        let now = SystemTime::now();
        let defaults = CacheMetaDefaults::new(|_| None, self.swr, self.sie);
        let fresh_until = match (self.override_ttl, &cc) {
            (Some(ttl), _) => now + ttl,
            (None, Some(c)) if c.no_cache() => now,
            (None, c) => calculate_fresh_until(now, c.as_ref(), resp, auth, &defaults).unwrap_or(now + self.default_ttl),
        };
        let (swr, sie) = calculate_serve_stale_durations(cc.as_ref(), &defaults);
        RespCacheable::Cacheable(CacheMeta::new(fresh_until, now, swr, sie, resp.clone()))
    }
}

/// The variance of a request for a cached response with `Vary`.
pub fn variance(meta: &CacheMeta, req: &RequestHeader) -> Option<HashBinary> {
    let mut vb = VarianceBuilder::new();
    for v in meta.headers().get_all(http::header::VARY) {
        for name in v
            .to_str()
            .unwrap_or("")
            .split(',')
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
        {
            let val = req.headers.get(name.as_str()).map(|v| v.as_bytes().to_vec()).unwrap_or_default();
            vb.add_owned_name_value(name, val);
        }
    }
    vb.finalize()
}

/// The `x-cache-status` value for a phase.
pub fn status(phase: CachePhase) -> &'static str {
    match phase {
        CachePhase::Hit => "HIT",
        CachePhase::Miss => "MISS",
        CachePhase::Stale | CachePhase::StaleUpdating => "STALE",
        CachePhase::Expired => "EXPIRED",
        CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => "REVALIDATED",
        _ => "BYPASS",
    }
}

pub struct Cache {
    pub store: &'static MemStore,
    pub lock: &'static CacheLock,
}

static CACHE: OnceCell<Cache> = OnceCell::new();

/// Sets the process-wide store up from `[cache]`; later calls return the first one.
pub fn init(cfg: &CacheCfg) -> &'static Cache {
    CACHE.get_or_init(|| {
        let metrics = Metrics {
            bytes: METRICS.cache_bytes.clone(),
            objects: METRICS.cache_objects.clone(),
            evictions: METRICS.cache_evictions.clone(),
        };
        let store: &'static MemStore = Box::leak(Box::new(MemStore::new(cfg.memory.0 as usize, cfg.max_object.0 as usize, metrics)));
        let lock: &'static CacheLock = Box::leak(Box::new(CacheLock::new(Duration::from_secs(10))));
        Cache { store, lock }
    })
}

pub fn get() -> Option<&'static Cache> {
    CACHE.get()
}

/// A purge request to the admin API.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Purge {
    pub host: Option<String>,
    pub path: Option<String>,
    pub prefix: Option<String>,
    pub tag: Option<String>,
    #[serde(default)]
    pub all: bool,
}

impl Purge {
    /// Normalises `path` and `prefix` as request paths are (`crate::path`), so a purge of
    /// `/a//b` removes what `/a/b` cached.
    pub fn normalize(&mut self, slash: crate::config::EscapedSlash) -> Result<(), &'static str> {
        for p in [&mut self.path, &mut self.prefix].into_iter().flatten() {
            if let Some(n) = crate::path::normalize(p, slash).map_err(|e| e.message())? {
                *p = n;
            }
        }
        Ok(())
    }

    /// Removes what the request names; returns how many objects went.
    pub fn run(&self) -> Result<usize, &'static str> {
        let Some(cache) = get() else { return Ok(0) };
        let host = self.host.as_deref().map(str::to_ascii_lowercase);
        let host_ok = |h: &str| host.as_deref().is_none_or(|x| x == h);
        match (self.all, &self.path, &self.prefix, &self.tag) {
            (true, None, None, None) => Ok(cache.store.purge_where(|_, _, _| true)),
            (false, Some(p), None, None) if host.is_some() => Ok(cache.store.purge_where(|h, path, _| host_ok(h) && path == p)),
            (false, None, Some(p), None) if host.is_some() => {
                Ok(cache.store.purge_where(|h, path, _| host_ok(h) && path.starts_with(p.as_str())))
            }
            (false, None, None, Some(t)) => Ok(cache.store.purge_where(|h, _, tags| host_ok(h) && tags.iter().any(|x| x == t))),
            _ => Err("give {\"host\",\"path\"}, {\"host\",\"prefix\"}, {\"tag\"} or {\"all\":true}"),
        }
    }
}
