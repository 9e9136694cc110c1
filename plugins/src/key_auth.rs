//! `key_auth`: an API key from a header and/or a query parameter, mapped to a consumer.

use crate::util::{err, header_name, query_param, remove_query_param, set_query};
use crate::{Flow, Plugin, PluginCtx, PluginError, Priority};
use http::{HeaderName, HeaderValue};
use pingora_http::RequestHeader;
use serde::Deserialize;

pub const NAME: &str = "key_auth";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "d_header")]
    pub header: String,
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default = "d_true")]
    pub hide_credentials: bool,
    #[serde(default)]
    pub anonymous: Option<String>,
}

fn d_header() -> String {
    "x-api-key".into()
}
fn d_true() -> bool {
    true
}

pub struct KeyAuth {
    header: HeaderName,
    query: Option<String>,
    hide: bool,
    anonymous: Option<String>,
    challenge: HeaderValue,
}

impl KeyAuth {
    pub fn from_config(c: Config) -> Result<Self, PluginError> {
        if c.query.as_deref() == Some("") {
            return Err(err("query", "must not be empty"));
        }
        let challenge = HeaderValue::from_str(&format!("ApiKey header=\"{}\"", c.header)).map_err(|_| err("header", "invalid"))?;
        Ok(KeyAuth {
            header: header_name("header", &c.header)?,
            query: c.query,
            hide: c.hide_credentials,
            anonymous: c.anonymous,
            challenge,
        })
    }
}

impl Plugin for KeyAuth {
    fn name(&self) -> &'static str {
        NAME
    }

    fn priority(&self) -> Priority {
        Priority::AUTH
    }

    fn is_auth(&self) -> bool {
        true
    }

    fn challenge(&self) -> Option<HeaderValue> {
        Some(self.challenge.clone())
    }

    fn anonymous(&self) -> Option<&str> {
        self.anonymous.as_deref()
    }

    fn request(&self, req: &mut RequestHeader, ctx: &mut PluginCtx) -> Flow {
        if ctx.consumer.is_some() {
            return Flow::Continue;
        }
        // Looked up straight from the header's bytes: no copy of the key per request.
        let (found, in_query) = match req.headers.get(&self.header) {
            Some(v) => (ctx.consumers.by_key(v.as_bytes()).cloned(), false),
            None => match self.query.as_deref().and_then(|q| req.uri.query().and_then(|s| query_param(s, q))) {
                Some(k) => (ctx.consumers.by_key(k.as_bytes()).cloned(), true),
                None => return Flow::Continue,
            },
        };
        match found {
            Some((c, index)) => {
                ctx.consumer = Some(c);
                ctx.credential = Some(("key", index));
                if self.hide {
                    req.remove_header(&self.header);
                    if let (true, Some(q), Some(name)) = (in_query, req.uri.query().map(str::to_string), self.query.as_deref()) {
                        set_query(req, Some(&remove_query_param(&q, name)));
                    }
                }
            }
            None => ctx.auth_error = Some("invalid API key"),
        }
        Flow::Continue
    }
}
