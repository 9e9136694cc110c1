//! What happens per request: the token found, its key chosen, its signature and claims
//! checked, and the result remembered for the token's life (at most 5 minutes).

use super::keys::Key;
use super::token;
use super::JwtAuth;
use http::{HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, Validation};
use pingora_http::RequestHeader;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a verified token yields; cached so a repeated token skips the signature check.
#[derive(Clone)]
pub(super) struct Verified {
    token: Arc<str>,
    /// The key that verified it: the entry is used only while that key is still held, so
    /// rotating a key out (a reload, a new JWKS) ends its tokens at once.
    fingerprint: [u8; 32],
    pub subject: Option<String>,
    pub forward: Vec<(HeaderName, HeaderValue)>,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl JwtAuth {
    pub(super) fn token<'a>(&self, req: &'a RequestHeader) -> Option<&'a str> {
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

    fn all_keys(&self) -> (Option<Arc<Vec<Key>>>, &[Key]) {
        (self.jwks.as_ref().map(|j| j.keys()), &self.static_keys)
    }

    fn find_key(&self, kid: Option<&str>, alg: Algorithm) -> Option<Key> {
        let (jwks, fixed) = self.all_keys();
        let all = fixed.iter().chain(jwks.iter().flat_map(|k| k.iter()));
        match kid {
            Some(kid) => all.filter(|k| k.kid.as_deref() == Some(kid)).find(|k| k.alg == alg).cloned(),
            None => {
                let candidates: Vec<&Key> = all.filter(|k| k.alg == alg).collect();
                (candidates.len() == 1).then(|| candidates[0].clone())
            }
        }
    }

    fn has_kid(&self, kid: &str) -> bool {
        let (jwks, fixed) = self.all_keys();
        fixed
            .iter()
            .chain(jwks.iter().flat_map(|k| k.iter()))
            .any(|k| k.kid.as_deref() == Some(kid))
    }

    fn holds(&self, fingerprint: &[u8; 32]) -> bool {
        let (jwks, fixed) = self.all_keys();
        fixed
            .iter()
            .chain(jwks.iter().flat_map(|k| k.iter()))
            .any(|k| k.fingerprint == *fingerprint)
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
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &v)
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
            })?;
        token::check_claim_types(&claims)?;
        Ok(claims)
    }

    async fn verify(&self, token: &str) -> Result<(Verified, u64), &'static str> {
        let header = token::read_header(token, &self.algorithms)?;
        if let Some(j) = &self.jwks {
            j.ensure().await;
        }
        let mut key = self.find_key(header.kid.as_deref(), header.alg);
        if key.is_none() {
            if let (Some(j), Some(k)) = (&self.jwks, header.kid.as_deref()) {
                if !self.has_kid(k) && j.refetch_for_unknown_kid().await {
                    key = self.find_key(Some(k), header.alg);
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
                fingerprint: key.fingerprint,
                subject: claims.get(&self.claim).and_then(text),
                forward,
            },
            exp,
        ))
    }

    /// The verified token, from the cache when it was seen before with a key still held.
    pub(super) async fn verified(&self, token: &str) -> Result<Verified, &'static str> {
        let cached = self
            .cache
            .as_ref()
            .and_then(|c| c.get(token).0)
            .filter(|v| *v.token == *token && self.holds(&v.fingerprint));
        if let Some(v) = cached {
            return Ok(v);
        }
        let (v, exp) = self.verify(token).await?;
        if let Some(cache) = &self.cache {
            let ttl = exp.saturating_sub(now_secs()).min(300);
            if ttl > 0 {
                cache.put(token, v.clone(), Some(Duration::from_secs(ttl)));
            }
        }
        Ok(v)
    }
}
