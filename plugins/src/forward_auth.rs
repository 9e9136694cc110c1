//! `forward_auth`: asks an auth service whether the request may pass.
//! 2xx: through, with configured headers of the auth answer copied upstream. Any other
//! status: returned to the client with its body. Timeout or failure: 503, or through when
//! `on_error = "allow"`. Decisions may be cached for `cache_ttl`, keyed by everything the
//! auth service is told: method, host, path and query, client address and the forwarded
//! request headers.

use crate::consumers::key_digest;
use crate::http_client::CLIENT;
use crate::util::{duration, err, header_name};
use crate::{Answer, Flow, Plugin, PluginCtx, PluginError, Priority};
use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora_http::RequestHeader;
use pingora_memory_cache::MemoryCache;
use serde::Deserialize;
use std::time::Duration;

pub const NAME: &str = "forward_auth";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub url: String,
    #[serde(default = "d_timeout")]
    pub timeout: String,
    #[serde(default = "d_req_headers")]
    pub request_headers: Vec<String>,
    #[serde(default)]
    pub upstream_headers: Vec<String>,
    #[serde(default = "d_on_error")]
    pub on_error: String,
    /// 0s: no cache.
    #[serde(default = "d_cache_ttl")]
    pub cache_ttl: String,
}

fn d_timeout() -> String {
    "200ms".into()
}
fn d_req_headers() -> Vec<String> {
    vec!["authorization".into(), "cookie".into()]
}
fn d_on_error() -> String {
    "deny".into()
}
fn d_cache_ttl() -> String {
    "0s".into()
}

#[derive(Clone)]
enum Decision {
    Allow(Vec<(HeaderName, HeaderValue)>),
    Deny(u16, Vec<(HeaderName, HeaderValue)>, Bytes),
}

pub struct ForwardAuth {
    url: String,
    timeout: Duration,
    request_headers: Vec<HeaderName>,
    upstream_headers: Vec<HeaderName>,
    allow_on_error: bool,
    cache_ttl: Duration,
    cache: MemoryCache<[u8; 32], Decision>,
}

/// Headers of a denial worth passing to the client.
const PASS_BACK: &[HeaderName] = &[
    http::header::CONTENT_TYPE,
    http::header::WWW_AUTHENTICATE,
    http::header::LOCATION,
    http::header::SET_COOKIE,
];

impl ForwardAuth {
    pub fn from_config(c: Config) -> Result<Self, PluginError> {
        if !(c.url.starts_with("http://") || c.url.starts_with("https://")) || c.url.parse::<http::Uri>().is_err() {
            return Err(err("url", format!("`{}` is not an http(s) URL", c.url)));
        }
        let allow_on_error = match c.on_error.as_str() {
            "deny" => false,
            "allow" => true,
            other => return Err(err("on_error", format!("`{other}` is not deny or allow"))),
        };
        Ok(ForwardAuth {
            url: c.url,
            timeout: duration("timeout", &c.timeout)?,
            request_headers: c
                .request_headers
                .iter()
                .enumerate()
                .map(|(i, h)| header_name(&format!("request_headers[{i}]"), h))
                .collect::<Result<_, _>>()?,
            upstream_headers: c
                .upstream_headers
                .iter()
                .enumerate()
                .map(|(i, h)| header_name(&format!("upstream_headers[{i}]"), h))
                .collect::<Result<_, _>>()?,
            allow_on_error,
            cache_ttl: duration("cache_ttl", &c.cache_ttl)?,
            cache: MemoryCache::new(10_000),
        })
    }

    /// Everything the auth service is told (see `ask`): a decision is reused only for the
    /// same question, never for another host, query or client.
    fn cache_key(&self, req: &RequestHeader, ctx: &PluginCtx) -> [u8; 32] {
        let mut material = Vec::with_capacity(256);
        let host = req.headers.get(http::header::HOST).map(|h| h.as_bytes()).unwrap_or(b"");
        let uri = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        for part in [req.method.as_str().as_bytes(), host, uri.as_bytes()] {
            material.extend_from_slice(&(part.len() as u32).to_le_bytes());
            material.extend_from_slice(part);
        }
        crate::ascii::push_ip(&mut material, ctx.client_ip);
        for h in &self.request_headers {
            material.push(0);
            for v in req.headers.get_all(h) {
                material.extend_from_slice(&(v.len() as u32).to_le_bytes());
                material.extend_from_slice(v.as_bytes());
            }
        }
        key_digest(&material)
    }

    async fn ask(&self, req: &RequestHeader, ctx: &PluginCtx) -> Result<Decision, String> {
        let mut call = CLIENT.get(&self.url).timeout(self.timeout);
        for h in &self.request_headers {
            for v in req.headers.get_all(h) {
                call = call.header(h.as_str(), v.as_bytes());
            }
        }
        let host = req.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        let uri = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        call = call
            .header("x-forwarded-method", req.method.as_str())
            .header("x-forwarded-uri", uri)
            .header("x-forwarded-host", host)
            .header("x-forwarded-for", ctx.client_ip.to_string())
            .header("x-request-id", ctx.request_id.as_str());
        let resp = call.send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let pick = |names: &[HeaderName]| -> Vec<(HeaderName, HeaderValue)> {
            names
                .iter()
                .flat_map(|n| {
                    resp.headers()
                        .get_all(n.as_str())
                        .iter()
                        .filter_map(|v| HeaderValue::from_bytes(v.as_bytes()).ok().map(|v| (n.clone(), v)))
                })
                .collect()
        };
        if (200..300).contains(&status) {
            Ok(Decision::Allow(pick(&self.upstream_headers)))
        } else {
            let headers = pick(PASS_BACK);
            let body = resp.bytes().await.map_err(|e| e.to_string())?;
            Ok(Decision::Deny(status, headers, Bytes::from(body.to_vec())))
        }
    }
}

#[async_trait]
impl Plugin for ForwardAuth {
    fn name(&self) -> &'static str {
        NAME
    }

    fn priority(&self) -> Priority {
        Priority(Priority::AUTH.0 - 10)
    }

    fn is_async(&self) -> bool {
        true
    }

    async fn request_async(&self, req: &mut RequestHeader, ctx: &mut PluginCtx) -> Flow {
        // Headers the auth service vouches for are never taken from the client.
        for h in &self.upstream_headers {
            req.remove_header(h);
        }
        let key = (!self.cache_ttl.is_zero()).then(|| self.cache_key(req, ctx));
        let cached = key.as_ref().and_then(|k| self.cache.get(k).0);
        let decision = match cached {
            Some(d) => d,
            None => match self.ask(req, ctx).await {
                Ok(d) => {
                    if let Some(k) = &key {
                        self.cache.put(k, d.clone(), Some(self.cache_ttl));
                    }
                    d
                }
                Err(e) => {
                    log::warn!("forward_auth: {} failed: {e}", self.url);
                    if self.allow_on_error {
                        return Flow::Continue;
                    }
                    ctx.rejection = Some("forward_auth_unavailable");
                    return Flow::Respond(Answer::error(503, "authentication service unavailable"));
                }
            },
        };
        match decision {
            Decision::Allow(headers) => {
                for (n, v) in headers {
                    let _ = req.append_header(n, v);
                }
                Flow::Continue
            }
            Decision::Deny(status, headers, body) => {
                ctx.rejection = Some("forward_auth");
                let status = if (100..=599).contains(&status) && status >= 300 {
                    status
                } else {
                    403
                };
                Flow::Respond(Answer {
                    status,
                    headers,
                    body,
                    error: None,
                })
            }
        }
    }
}
