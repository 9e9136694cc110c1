//! `jwt_auth`: bearer tokens verified against static keys or a JWKS URL.
//!
//! What is refused, and why: `alg: none` and any algorithm outside `algorithms`; an `alg`
//! that is not the key's own (HS256 "signed" with an RSA public key); any `crit` header,
//! since no extension is understood; a missing or past `exp`, a future `nbf`, a wrong `iss`
//! or `aud` (with `leeway`). `jku`, `x5u`, `x5c` and embedded `jwk` headers are ignored:
//! keys come only from the config or the configured JWKS, never from the token.

use crate::jwks::{keys_from_set, Jwks, Key};
use crate::util::{duration, err, header_name};
use crate::{secret, Flow, Plugin, PluginCtx, PluginError, Priority};
use async_trait::async_trait;
use base64::Engine;
use http::{HeaderName, HeaderValue};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use pingora_http::RequestHeader;
use pingora_memory_cache::MemoryCache;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const NAME: &str = "jwt_auth";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    #[serde(default)]
    pub kid: Option<String>,
    pub alg: String,
    /// PEM public key (RSA or EC): literal, env: or file:.
    #[serde(default)]
    pub pem: Option<String>,
    /// HMAC secret: literal, env: or file:.
    #[serde(default)]
    pub secret: Option<String>,
    /// A JWK as an inline table.
    #[serde(default)]
    pub jwk: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    #[serde(default)]
    pub algorithms: Vec<String>,
    #[serde(default = "d_leeway")]
    pub leeway: String,
    #[serde(default = "d_claim")]
    pub consumer_claim: String,
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    #[serde(default = "d_refresh")]
    pub jwks_refresh: String,
    #[serde(default = "d_min_refetch")]
    pub jwks_min_refetch: String,
    #[serde(default = "d_jwks_timeout")]
    pub jwks_timeout: String,
    /// Where the token is: `authorization` (Bearer), another header, or a cookie.
    #[serde(default = "d_header")]
    pub header: String,
    #[serde(default)]
    pub cookie: Option<String>,
    #[serde(default)]
    pub anonymous: Option<String>,
    /// true: a valid token whose claim matches no consumer is refused.
    #[serde(default)]
    pub require_consumer: bool,
    /// Verified tokens remembered (bounded; each entry also expires with its token).
    #[serde(default = "d_cache")]
    pub cache_size: usize,
    #[serde(default = "d_true")]
    pub hide_credentials: bool,
}

fn d_leeway() -> String {
    "30s".into()
}
fn d_claim() -> String {
    "sub".into()
}
fn d_refresh() -> String {
    "10m".into()
}
fn d_min_refetch() -> String {
    "30s".into()
}
fn d_jwks_timeout() -> String {
    "2s".into()
}
fn d_header() -> String {
    "authorization".into()
}
fn d_cache() -> usize {
    10_000
}
fn d_true() -> bool {
    true
}

/// What a verified token yields; cached so a repeated token skips the signature check.
#[derive(Clone)]
struct Verified {
    token: Arc<str>,
    subject: Option<String>,
    forward: Vec<(HeaderName, HeaderValue)>,
}

pub struct JwtAuth {
    issuer: Option<String>,
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    leeway: u64,
    claim: String,
    forward: Vec<(HeaderName, String)>,
    static_keys: Vec<Key>,
    jwks: Option<Arc<Jwks>>,
    header: HeaderName,
    cookie: Option<String>,
    anonymous: Option<String>,
    require_consumer: bool,
    hide: bool,
    cache: Option<MemoryCache<String, Verified>>,
}

fn parse_alg(key: &str, s: &str) -> Result<Algorithm, PluginError> {
    if s.eq_ignore_ascii_case("none") {
        return Err(err(key, "`none` is never allowed"));
    }
    s.parse::<Algorithm>().map_err(|_| err(key, format!("unknown algorithm `{s}`")))
}

fn static_key(i: usize, k: &KeyConfig) -> Result<Key, PluginError> {
    let base = format!("keys[{i}]");
    let alg = parse_alg(&format!("{base}.alg"), &k.alg)?;
    let bad = |what: &str, e: String| err(&format!("{base}.{what}"), e);
    let key = match (&k.pem, &k.secret, &k.jwk) {
        (Some(pem), None, None) => {
            let pem = secret::resolve(pem).map_err(|e| bad("pem", e))?;
            match alg {
                Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512 => {
                    DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| bad("pem", format!("not an RSA public key: {e}")))?
                }
                Algorithm::ES256 | Algorithm::ES384 => {
                    DecodingKey::from_ec_pem(pem.as_bytes()).map_err(|e| bad("pem", format!("not an EC public key: {e}")))?
                }
                Algorithm::EdDSA => DecodingKey::from_ed_pem(pem.as_bytes()).map_err(|e| bad("pem", format!("not an Ed25519 key: {e}")))?,
                _ => return Err(bad("pem", format!("{:?} takes a secret, not a PEM key", alg))),
            }
        }
        (None, Some(s), None) => {
            if !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                return Err(bad("secret", format!("{alg:?} takes a public key, not a secret")));
            }
            let s = secret::resolve(s).map_err(|e| bad("secret", e))?;
            if s.len() < 32 {
                return Err(bad("secret", "HMAC secrets must be at least 32 bytes".into()));
            }
            DecodingKey::from_secret(s.as_bytes())
        }
        (None, None, Some(j)) => {
            let jwk: Jwk = serde_json::to_value(j)
                .ok()
                .and_then(|v| serde_json::from_value(v).ok())
                .ok_or_else(|| bad("jwk", "not a JWK".into()))?;
            let set = JwkSet { keys: vec![jwk] };
            let keys = keys_from_set(&set, &[alg]);
            return keys
                .into_iter()
                .find(|x| x.alg == alg)
                .map(|mut x| {
                    x.kid = k.kid.clone().or(x.kid);
                    x
                })
                .ok_or_else(|| bad("jwk", format!("key cannot verify {alg:?}")));
        }
        _ => return Err(err(&base, "exactly one of pem, secret or jwk is required")),
    };
    Ok(Key {
        kid: k.kid.clone(),
        alg,
        key,
    })
}

impl JwtAuth {
    pub fn from_config(c: Config) -> Result<Self, PluginError> {
        let static_keys = c
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| static_key(i, k))
            .collect::<Result<Vec<_>, _>>()?;
        let algorithms = if c.algorithms.is_empty() {
            let mut a: Vec<Algorithm> = static_keys.iter().map(|k| k.alg).collect();
            if c.jwks_url.is_some() {
                a.extend([Algorithm::RS256, Algorithm::ES256]);
            }
            a
        } else {
            c.algorithms
                .iter()
                .enumerate()
                .map(|(i, a)| parse_alg(&format!("algorithms[{i}]"), a))
                .collect::<Result<Vec<_>, _>>()?
        };
        for (i, k) in static_keys.iter().enumerate() {
            if !algorithms.contains(&k.alg) {
                return Err(err(&format!("keys[{i}].alg"), format!("{:?} is not in `algorithms`", k.alg)));
            }
        }
        if static_keys.is_empty() && c.jwks_url.is_none() {
            return Err(err("", "needs `keys` or `jwks_url`"));
        }
        let jwks = match &c.jwks_url {
            Some(url) => {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return Err(err("jwks_url", "must be an http(s) URL"));
                }
                Some(Arc::new(Jwks::new(
                    url.clone(),
                    duration("jwks_refresh", &c.jwks_refresh)?,
                    duration("jwks_min_refetch", &c.jwks_min_refetch)?,
                    duration("jwks_timeout", &c.jwks_timeout)?,
                    algorithms.clone(),
                )))
            }
            None => None,
        };
        let forward = c
            .forward_claims
            .iter()
            .map(|(h, claim)| Ok((header_name(&format!("forward_claims.{h}"), h)?, claim.clone())))
            .collect::<Result<Vec<_>, PluginError>>()?;
        Ok(JwtAuth {
            issuer: c.issuer,
            audiences: c.audiences,
            algorithms,
            leeway: duration("leeway", &c.leeway)?.as_secs(),
            claim: c.consumer_claim,
            forward,
            static_keys,
            jwks,
            header: header_name("header", &c.header)?,
            cookie: c.cookie,
            anonymous: c.anonymous,
            require_consumer: c.require_consumer,
            hide: c.hide_credentials,
            cache: (c.cache_size > 0).then(|| MemoryCache::new(c.cache_size)),
        })
    }

    fn token<'a>(&self, req: &'a RequestHeader) -> Option<&'a str> {
        if let Some(name) = &self.cookie {
            let found = req
                .headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(|v| {
                    v.split(';').find_map(|p| {
                        let (k, val) = p.trim().split_once('=')?;
                        (k == name).then_some(val)
                    })
                });
            if found.is_some() {
                return found;
            }
        }
        let v = req.headers.get(&self.header)?.to_str().ok()?;
        if self.header == http::header::AUTHORIZATION {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        } else {
            Some(v.trim())
        }
    }

    fn find_key(&self, kid: Option<&str>, alg: Algorithm) -> Option<Key> {
        let jwks = self.jwks.as_ref().map(|j| j.keys());
        let all = self.static_keys.iter().chain(jwks.iter().flat_map(|k| k.iter()));
        match kid {
            Some(kid) => all.filter(|k| k.kid.as_deref() == Some(kid)).find(|k| k.alg == alg).cloned(),
            None => {
                let candidates: Vec<&Key> = all.filter(|k| k.alg == alg).collect();
                (candidates.len() == 1).then(|| candidates[0].clone())
            }
        }
    }

    fn has_kid(&self, kid: &str) -> bool {
        let jwks = self.jwks.as_ref().map(|j| j.keys());
        self.static_keys
            .iter()
            .chain(jwks.iter().flat_map(|k| k.iter()))
            .any(|k| k.kid.as_deref() == Some(kid))
    }

    /// Header checks that come before any key is touched.
    fn header(&self, token: &str) -> Result<(Algorithm, Option<String>), &'static str> {
        let head = token.split('.').next().ok_or("malformed token")?;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(head.trim_end_matches('='))
            .map_err(|_| "malformed token")?;
        let h: Map<String, Value> = serde_json::from_slice(&raw).map_err(|_| "malformed token")?;
        let alg = h.get("alg").and_then(Value::as_str).ok_or("token has no alg")?;
        if alg.eq_ignore_ascii_case("none") {
            return Err("unsigned tokens are not accepted");
        }
        let alg: Algorithm = alg.parse().map_err(|_| "unknown algorithm")?;
        if !self.algorithms.contains(&alg) {
            return Err("algorithm not allowed");
        }
        if h.contains_key("crit") {
            return Err("unsupported critical header");
        }
        Ok((alg, h.get("kid").and_then(Value::as_str).map(str::to_string)))
    }

    fn verify_with(&self, token: &str, key: &Key) -> Result<Map<String, Value>, &'static str> {
        let mut v = Validation::new(key.alg);
        v.leeway = self.leeway;
        v.validate_nbf = true;
        v.required_spec_claims = ["exp".to_string()].into_iter().collect();
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            v.required_spec_claims.insert("iss".into());
        }
        if self.audiences.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&self.audiences);
            v.required_spec_claims.insert("aud".into());
        }
        jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &v)
            .map(|d| d.claims)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind::*;
                match e.kind() {
                    ExpiredSignature => "token expired",
                    ImmatureSignature => "token not yet valid",
                    InvalidIssuer => "wrong issuer",
                    InvalidAudience => "wrong audience",
                    InvalidSignature => "invalid signature",
                    MissingRequiredClaim(_) => "token lacks a required claim",
                    _ => "invalid token",
                }
            })
    }

    async fn verify(&self, token: &str) -> Result<(Verified, u64), &'static str> {
        let (alg, kid) = self.header(token)?;
        if let Some(j) = &self.jwks {
            j.ensure().await;
        }
        let mut key = self.find_key(kid.as_deref(), alg);
        if key.is_none() {
            if let (Some(j), Some(k)) = (&self.jwks, kid.as_deref()) {
                if !self.has_kid(k) && j.refetch_for_unknown_kid().await {
                    key = self.find_key(Some(k), alg);
                }
            }
        }
        let key = key.ok_or("no key for this token")?;
        let claims = self.verify_with(token, &key)?;
        let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        let text = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        };
        let forward = self
            .forward
            .iter()
            .filter_map(|(h, c)| {
                claims
                    .get(c)
                    .and_then(text)
                    .and_then(|s| HeaderValue::from_str(&s).ok())
                    .map(|v| (h.clone(), v))
            })
            .collect();
        Ok((
            Verified {
                token: Arc::from(token),
                subject: claims.get(&self.claim).and_then(text),
                forward,
            },
            exp,
        ))
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[async_trait]
impl Plugin for JwtAuth {
    fn name(&self) -> &'static str {
        NAME
    }

    fn priority(&self) -> Priority {
        Priority(Priority::AUTH.0 - 2)
    }

    fn is_auth(&self) -> bool {
        true
    }

    fn challenge(&self) -> Option<HeaderValue> {
        Some(HeaderValue::from_static("Bearer"))
    }

    fn anonymous(&self) -> Option<&str> {
        self.anonymous.as_deref()
    }

    fn is_async(&self) -> bool {
        true
    }

    async fn request_async(&self, req: &mut RequestHeader, ctx: &mut PluginCtx) -> Flow {
        // Claim headers are the gateway's to set: a client's copy never passes.
        for (h, _) in &self.forward {
            req.remove_header(h);
        }
        if ctx.consumer.is_some() {
            return Flow::Continue;
        }
        let Some(token) = self.token(req).map(str::to_string) else {
            return Flow::Continue;
        };
        let cached = self.cache.as_ref().and_then(|c| c.get(&token).0).filter(|v| *v.token == *token);
        let verified = match cached {
            Some(v) => v,
            None => match self.verify(&token).await {
                Ok((v, exp)) => {
                    if let Some(cache) = &self.cache {
                        let ttl = exp.saturating_sub(now_secs()).min(300);
                        if ttl > 0 {
                            cache.put(&token, v.clone(), Some(Duration::from_secs(ttl)));
                        }
                    }
                    v
                }
                Err(e) => {
                    ctx.auth_error = Some(e);
                    return Flow::Continue;
                }
            },
        };
        let consumer = verified.subject.as_deref().and_then(|s| ctx.consumers.by_subject(s)).cloned();
        match (consumer, &verified.subject) {
            (Some(c), _) => ctx.consumer = Some(c),
            (None, Some(sub)) if !self.require_consumer => ctx.consumer = Some(Arc::new(crate::consumers::Consumer::named(sub))),
            _ => {
                ctx.auth_error = Some("token does not map to a consumer");
                return Flow::Continue;
            }
        }
        for (h, v) in verified.forward {
            let _ = req.insert_header(h, v);
        }
        if self.hide && self.header == http::header::AUTHORIZATION {
            req.remove_header(&http::header::AUTHORIZATION);
        }
        Flow::Continue
    }
}
