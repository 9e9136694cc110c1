//! `headers`: set and remove request and response headers.

use crate::{Flow, Plugin, PluginCtx, PluginError, Priority};
use http::{HeaderName, HeaderValue};
use pingora_http::{RequestHeader, ResponseHeader};
use serde::Deserialize;
use std::collections::BTreeMap;

pub const NAME: &str = "headers";

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub request_set: BTreeMap<String, String>,
    #[serde(default)]
    pub request_remove: Vec<String>,
    #[serde(default)]
    pub response_set: BTreeMap<String, String>,
    #[serde(default)]
    pub response_remove: Vec<String>,
}

/// Header names and values are parsed once here so a bad name is a load error, not a
/// per-request surprise.
pub struct Headers {
    request_set: Vec<(HeaderName, HeaderValue)>,
    request_remove: Vec<HeaderName>,
    response_set: Vec<(HeaderName, HeaderValue)>,
    response_remove: Vec<HeaderName>,
}

fn pairs(key: &str, map: &BTreeMap<String, String>) -> Result<Vec<(HeaderName, HeaderValue)>, PluginError> {
    map.iter()
        .map(|(k, v)| {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| PluginError {
                key: format!("{key}.{k}"),
                reason: "not a valid header name".into(),
            })?;
            let value = HeaderValue::from_str(v).map_err(|_| PluginError {
                key: format!("{key}.{k}"),
                reason: "not a valid header value".into(),
            })?;
            Ok((name, value))
        })
        .collect()
}

fn names(key: &str, list: &[String]) -> Result<Vec<HeaderName>, PluginError> {
    list.iter()
        .enumerate()
        .map(|(i, k)| {
            HeaderName::from_bytes(k.as_bytes()).map_err(|_| PluginError {
                key: format!("{key}[{i}]"),
                reason: format!("`{k}` is not a valid header name"),
            })
        })
        .collect()
}

impl Headers {
    pub fn from_config(c: Config) -> Result<Self, PluginError> {
        Ok(Headers {
            request_set: pairs("request_set", &c.request_set)?,
            request_remove: names("request_remove", &c.request_remove)?,
            response_set: pairs("response_set", &c.response_set)?,
            response_remove: names("response_remove", &c.response_remove)?,
        })
    }
}

impl Plugin for Headers {
    fn name(&self) -> &'static str {
        NAME
    }

    fn priority(&self) -> Priority {
        Priority::TRANSFORM
    }

    fn request(&self, req: &mut RequestHeader, _ctx: &mut PluginCtx) -> Flow {
        for name in &self.request_remove {
            req.remove_header(name);
        }
        for (name, value) in &self.request_set {
            // insert_header only fails on invalid input, which from_config already refused.
            let _ = req.insert_header(name.clone(), value.clone());
        }
        Flow::Continue
    }

    fn response(&self, resp: &mut ResponseHeader, _ctx: &PluginCtx) {
        for name in &self.response_remove {
            resp.remove_header(name);
        }
        for (name, value) in &self.response_set {
            let _ = resp.insert_header(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(toml_src: &str) -> Result<Headers, PluginError> {
        let v: toml::Value = toml::from_str(toml_src).expect("test toml");
        Headers::from_config(crate::parse(&v)?)
    }

    #[test]
    fn sets_and_removes_request_headers() {
        let p = plugin("request_set = { x-gw = \"g\" }\nrequest_remove = [\"x-internal\"]").unwrap();
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-internal", "secret").unwrap();
        let mut ctx = PluginCtx::new([127, 0, 0, 1].into(), "r".into(), "id".into());
        assert!(matches!(p.request(&mut req, &mut ctx), Flow::Continue));
        assert!(req.headers.get("x-internal").is_none());
        assert_eq!(req.headers.get("x-gw").unwrap(), "g");
    }

    #[test]
    fn refuses_bad_header_name_with_key() {
        let err = plugin("response_set = { \"bad name\" = \"v\" }").err().unwrap();
        assert_eq!(err.key, "response_set.bad name");
    }

    #[test]
    fn refuses_unknown_key() {
        let err = plugin("request_sett = {}").err().unwrap();
        assert!(err.reason.contains("unknown field"), "{err}");
    }
}
