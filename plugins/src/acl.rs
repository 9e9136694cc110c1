//! `acl`: allow or deny consumer groups on a route. Runs after authentication.

use crate::util::err;
use crate::{Answer, Flow, Plugin, PluginCtx, PluginError, Priority};
use pingora_http::RequestHeader;
use serde::Deserialize;

pub const NAME: &str = "acl";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
}

pub struct Acl {
    allow: Vec<String>,
    deny: Vec<String>,
}

impl Acl {
    pub fn from_config(c: Config) -> Result<Self, PluginError> {
        match (c.allow.is_empty(), c.deny.is_empty()) {
            (true, true) => Err(err("", "set `allow` or `deny`")),
            (false, false) => Err(err("", "set `allow` or `deny`, not both")),
            _ => Ok(Acl {
                allow: c.allow,
                deny: c.deny,
            }),
        }
    }
}

impl Plugin for Acl {
    fn name(&self) -> &'static str {
        NAME
    }

    fn priority(&self) -> Priority {
        Priority::ACL
    }

    fn request(&self, _req: &mut RequestHeader, ctx: &mut PluginCtx) -> Flow {
        let permitted = match &ctx.consumer {
            None => false,
            Some(c) if !self.allow.is_empty() => self.allow.iter().any(|g| c.in_group(g)),
            Some(c) => !self.deny.iter().any(|g| c.in_group(g)),
        };
        if permitted {
            Flow::Continue
        } else {
            ctx.rejection = Some("acl");
            Flow::Respond(Answer::error(403, "forbidden by ACL"))
        }
    }
}
