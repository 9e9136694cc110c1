//! `respond`: the route answers by itself (health pages, maintenance, redirects).

use crate::{Answer, Flow, Plugin, PluginCtx, PluginError, Priority};
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora_http::RequestHeader;
use serde::Deserialize;
use std::collections::BTreeMap;

pub const NAME: &str = "respond";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_status")]
    pub status: u16,
    #[serde(default = "default_content_type")]
    pub content_type: String,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn default_status() -> u16 {
    200
}

fn default_content_type() -> String {
    "text/plain".into()
}

pub struct Respond {
    status: u16,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// `Bytes` so every request shares one copy of the body.
    body: Bytes,
}

impl Respond {
    pub fn from_config(c: Config) -> Result<Self, PluginError> {
        if !(100..=999).contains(&c.status) || (100..200).contains(&c.status) {
            return Err(PluginError {
                key: "status".into(),
                reason: format!("{} is not a final HTTP status", c.status),
            });
        }
        let ct = HeaderValue::from_str(&c.content_type).map_err(|_| PluginError {
            key: "content_type".into(),
            reason: "not a valid header value".into(),
        })?;
        let mut headers = vec![(http::header::CONTENT_TYPE, ct)];
        for (k, v) in &c.headers {
            let bad = |what: &str| PluginError {
                key: format!("headers.{k}"),
                reason: format!("not a valid header {what}"),
            };
            headers.push((
                HeaderName::from_bytes(k.as_bytes()).map_err(|_| bad("name"))?,
                HeaderValue::from_str(v).map_err(|_| bad("value"))?,
            ));
        }
        Ok(Respond {
            status: c.status,
            headers,
            body: Bytes::from(c.body),
        })
    }
}

impl Plugin for Respond {
    fn name(&self) -> &'static str {
        NAME
    }

    fn priority(&self) -> Priority {
        Priority::RESPOND
    }

    fn request(&self, _req: &mut RequestHeader, _ctx: &mut PluginCtx) -> Flow {
        Flow::Respond(Answer {
            status: self.status,
            headers: self.headers.clone(),
            body: self.body.clone(),
            error: None,
        })
    }
}
