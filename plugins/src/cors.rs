//! `cors`: answers preflights itself (before authentication, which a browser's preflight
//! never carries) and adds CORS headers to responses for allowed origins.

use crate::util::{duration, err};
use crate::{Answer, Flow, Plugin, PluginCtx, PluginError, Priority};
use http::header::*;
use http::HeaderValue;
use pingora_http::{RequestHeader, ResponseHeader};
use serde::Deserialize;

pub const NAME: &str = "cors";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub origins: Vec<String>,
    #[serde(default = "d_methods")]
    pub methods: Vec<String>,
    #[serde(default)]
    pub headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub credentials: bool,
    #[serde(default)]
    pub max_age: Option<String>,
}

fn d_methods() -> Vec<String> {
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

enum OriginRule {
    Any,
    Exact(String),
    /// `https://*.example.com` -> ("https://", ".example.com")
    Wildcard(String, String),
}

pub struct Cors {
    origins: Vec<OriginRule>,
    methods: Vec<String>,
    methods_value: HeaderValue,
    headers: Vec<String>,
    headers_value: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

impl Cors {
    pub fn from_config(c: Config) -> Result<Self, PluginError> {
        let mut origins = Vec::new();
        for (i, o) in c.origins.iter().enumerate() {
            let o = o.to_ascii_lowercase();
            if o == "*" {
                // A browser never sends credentials to `*`, so the plugin would have to
                // reflect the Origin instead: any web page could then read answers made
                // with the user's cookies.
                if c.credentials {
                    return Err(err(
                        &format!("origins[{i}]"),
                        "`*` cannot be combined with credentials = true (it would let any site read credentialed answers); list the origins",
                    ));
                }
                origins.push(OriginRule::Any);
            } else if let Some((scheme, rest)) = o.split_once("://*") {
                if !rest.starts_with('.') {
                    return Err(err(&format!("origins[{i}]"), "wildcards must look like https://*.example.com"));
                }
                origins.push(OriginRule::Wildcard(format!("{scheme}://"), rest.to_string()));
            } else if o.contains("://") && !o.contains('*') {
                origins.push(OriginRule::Exact(o.trim_end_matches('/').to_string()));
            } else {
                return Err(err(
                    &format!("origins[{i}]"),
                    format!("`{o}` is not an origin such as https://app.example.com"),
                ));
            }
        }
        if origins.is_empty() {
            return Err(err("origins", "at least one origin is required"));
        }
        let joined = |v: &[String]| HeaderValue::from_str(&v.join(", "));
        let max_age = match &c.max_age {
            Some(m) => Some(HeaderValue::from(duration("max_age", m)?.as_secs())),
            None => None,
        };
        Ok(Cors {
            origins,
            methods_value: joined(&c.methods).map_err(|_| err("methods", "invalid"))?,
            methods: c.methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
            headers_value: if c.headers.is_empty() {
                None
            } else {
                Some(joined(&c.headers).map_err(|_| err("headers", "invalid"))?)
            },
            headers: c.headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
            expose: if c.expose_headers.is_empty() {
                None
            } else {
                Some(joined(&c.expose_headers).map_err(|_| err("expose_headers", "invalid"))?)
            },
            credentials: c.credentials,
            max_age,
        })
    }

    fn allowed(&self, origin: &str) -> bool {
        let o = origin.to_ascii_lowercase();
        self.origins.iter().any(|r| match r {
            OriginRule::Any => true,
            OriginRule::Exact(e) => *e == o,
            OriginRule::Wildcard(scheme, suffix) => o
                .strip_prefix(scheme.as_str())
                .is_some_and(|host| host.len() > suffix.len() && host.ends_with(suffix.as_str()) && !host.contains('/')),
        })
    }
}

impl Plugin for Cors {
    fn name(&self) -> &'static str {
        NAME
    }

    fn priority(&self) -> Priority {
        Priority::CORS
    }

    fn request(&self, req: &mut RequestHeader, ctx: &mut PluginCtx) -> Flow {
        let Some(origin) = req.headers.get(ORIGIN).cloned() else {
            return Flow::Continue;
        };
        let allowed = origin.to_str().is_ok_and(|o| self.allowed(o));
        let preflight = req.method == http::Method::OPTIONS && req.headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD);
        if !preflight {
            if allowed {
                ctx.cors_origin = Some(origin);
            }
            return Flow::Continue;
        }
        let method_ok = req
            .headers
            .get(ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| m.to_str().ok())
            .is_some_and(|m| self.methods.iter().any(|x| x == m));
        let headers_ok = self.headers.is_empty()
            || req
                .headers
                .get(ACCESS_CONTROL_REQUEST_HEADERS)
                .and_then(|h| h.to_str().ok())
                .is_none_or(|h| {
                    h.split(',')
                        .map(|x| x.trim().to_ascii_lowercase())
                        .filter(|x| !x.is_empty())
                        .all(|x| self.headers.contains(&x))
                });
        if !(allowed && method_ok && headers_ok) {
            ctx.rejection = Some("cors");
            return Flow::Respond(Answer::error(403, "CORS preflight refused"));
        }
        let mut headers = vec![
            (ACCESS_CONTROL_ALLOW_ORIGIN, origin),
            (ACCESS_CONTROL_ALLOW_METHODS, self.methods_value.clone()),
            (VARY, HeaderValue::from_static("Origin")),
        ];
        match (&self.headers_value, req.headers.get(ACCESS_CONTROL_REQUEST_HEADERS)) {
            (Some(v), _) => headers.push((ACCESS_CONTROL_ALLOW_HEADERS, v.clone())),
            (None, Some(asked)) => headers.push((ACCESS_CONTROL_ALLOW_HEADERS, asked.clone())),
            _ => {}
        }
        if self.credentials {
            headers.push((ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true")));
        }
        if let Some(m) = &self.max_age {
            headers.push((ACCESS_CONTROL_MAX_AGE, m.clone()));
        }
        Flow::Respond(Answer {
            headers,
            ..Answer::empty(204)
        })
    }

    fn response(&self, resp: &mut ResponseHeader, ctx: &PluginCtx) {
        let Some(origin) = &ctx.cors_origin else { return };
        let _ = resp.insert_header(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        let _ = resp.append_header(VARY, "Origin");
        if self.credentials {
            let _ = resp.insert_header(ACCESS_CONTROL_ALLOW_CREDENTIALS, "true");
        }
        if let Some(e) = &self.expose {
            let _ = resp.insert_header(ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
        }
    }
}
