//! `jwt_auth`: bearer tokens verified against static keys or a JWKS URL.
//!
//! What is refused, and why: `alg: none` and any algorithm outside `algorithms`; an `alg`
//! that is not the key's own (HS256 "signed" with an RSA public key); any `crit` header,
//! since no extension is understood; a missing or past `exp`, a future `nbf`, a wrong `iss`
//! or `aud` (with `leeway`), registered claims of the wrong type. `jku`, `x5u`, `x5c` and
//! embedded `jwk` headers are ignored: keys come only from the config or the configured
//! JWKS, never from the token, and each key only verifies what it declares (see `keys`).
//!
//! A verified subject that is no consumer's `jwt_subject` is named `jwt:<sub>`, so a token
//! can never take the name (and the plan, groups and limits) of a configured consumer.

mod jwks;
mod keys;
pub mod token;
mod verify;

use crate::util::{duration, err, header_name};
use crate::{secret, Flow, Plugin, PluginCtx, PluginError, Priority};
use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::Algorithm;
use jwks::Jwks;
use keys::Key;
use pingora_http::RequestHeader;
use pingora_memory_cache::MemoryCache;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use verify::Verified;

pub use jwks::keys_from_json;

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
    /// Accept RSA keys under 2048 bits (legacy identity providers only).
    #[serde(default)]
    pub allow_weak_rsa: bool,
    /// Fetch `jwks_url` over plain http from a host that is not loopback. Anyone on the
    /// path could then swap the keys: only for test rigs.
    #[serde(default)]
    pub allow_insecure_jwks: bool,
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

fn static_key(i: usize, k: &KeyConfig, allow_weak_rsa: bool) -> Result<Vec<Key>, PluginError> {
    let base = format!("keys[{i}]");
    let alg = parse_alg(&format!("{base}.alg"), &k.alg)?;
    let bad = |what: &str, e: String| err(&format!("{base}.{what}"), e);
    let mut keys = match (&k.pem, &k.secret, &k.jwk) {
        (Some(pem), None, None) => {
            let pem = secret::resolve(pem).map_err(|e| bad("pem", e))?;
            vec![keys::pem_key(&pem, alg, allow_weak_rsa).map_err(|e| bad("pem", e))?]
        }
        (None, Some(s), None) => {
            let s = secret::resolve(s).map_err(|e| bad("secret", e))?;
            vec![keys::from_secret(s.as_bytes(), alg).map_err(|e| bad("secret", e))?]
        }
        (None, None, Some(j)) => {
            let jwk: Jwk = serde_json::to_value(j)
                .map_err(|e| bad("jwk", e.to_string()))
                .and_then(|v| serde_json::from_value(v).map_err(|e| bad("jwk", format!("not a JWK: {e}"))))?;
            let keys = keys::from_jwk(&jwk, Some(alg), &[alg], allow_weak_rsa).map_err(|e| bad("jwk", e.to_string()))?;
            if keys.is_empty() {
                return Err(bad("jwk", format!("key cannot verify {alg:?}")));
            }
            keys
        }
        _ => return Err(err(&base, "exactly one of pem, secret or jwk is required")),
    };
    for key in &mut keys {
        key.kid = k.kid.clone().or(key.kid.take());
    }
    Ok(keys)
}

/// A JWKS URL anyone on the path could answer is a way to hand the gateway keys.
fn check_jwks_url(url: &str, allow_insecure: bool) -> Result<(), PluginError> {
    let uri: http::Uri = url.parse().map_err(|_| err("jwks_url", format!("`{url}` is not a URL")))?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") => {
            let host = uri.host().unwrap_or("").trim_start_matches('[').trim_end_matches(']');
            let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if loopback || allow_insecure {
                Ok(())
            } else {
                Err(err(
                    "jwks_url",
                    format!("`{url}` is plain http to a host that is not loopback: use https (or allow_insecure_jwks = true)"),
                ))
            }
        }
        _ => Err(err("jwks_url", "must be an https URL")),
    }
}

impl JwtAuth {
    pub fn from_config(c: Config) -> Result<Self, PluginError> {
        let mut entries = Vec::with_capacity(c.keys.len());
        for (i, k) in c.keys.iter().enumerate() {
            entries.push((k.kid.clone(), static_key(i, k, c.allow_weak_rsa)?));
        }
        keys::check_set(entries.iter().map(|(kid, k)| (kid.as_deref(), k.as_slice()))).map_err(|e| err("keys", e))?;
        let static_keys: Vec<Key> = entries.into_iter().flat_map(|(_, k)| k).collect();
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
                check_jwks_url(url, c.allow_insecure_jwks)?;
                Some(Arc::new(Jwks::new(
                    url.clone(),
                    duration("jwks_refresh", &c.jwks_refresh)?,
                    duration("jwks_min_refetch", &c.jwks_min_refetch)?,
                    duration("jwks_timeout", &c.jwks_timeout)?,
                    algorithms.clone(),
                    c.allow_weak_rsa,
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
        let verified = match self.verified(&token).await {
            Ok(v) => v,
            Err(e) => {
                ctx.auth_error = Some(e);
                return Flow::Continue;
            }
        };
        let consumer = verified.subject.as_deref().and_then(|s| ctx.consumers.by_subject(s)).cloned();
        match (consumer, &verified.subject) {
            (Some(c), _) => {
                ctx.consumer = Some(c);
                ctx.credential = Some(("jwt", 0));
            }
            (None, Some(sub)) if !self.require_consumer => {
                ctx.consumer = Some(Arc::new(crate::consumers::Consumer::named(&format!("jwt:{sub}"))));
                ctx.credential = Some(("jwt", 0));
            }
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

#[cfg(test)]
mod tests {
    use super::check_jwks_url;

    #[test]
    fn jwks_urls() {
        assert!(check_jwks_url("https://idp.example.com/jwks", false).is_ok());
        assert!(check_jwks_url("http://127.0.0.1:9/jwks", false).is_ok());
        assert!(check_jwks_url("http://[::1]:9/jwks", false).is_ok());
        assert!(check_jwks_url("http://localhost/jwks", false).is_ok());
        assert!(check_jwks_url("http://idp.example.com/jwks", false).is_err());
        assert!(check_jwks_url("http://127.0.0.1.evil.com/jwks", false).is_err());
        assert!(check_jwks_url("http://idp.example.com/jwks", true).is_ok());
        assert!(check_jwks_url("ftp://idp.example.com/jwks", true).is_err());
    }
}
