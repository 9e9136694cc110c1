//! `mtls_auth`: the verified client certificate of the TLS connection names the consumer
//! (by `client_cert_fingerprint`, then `client_cert_subject`), so ACLs, plans, limits and
//! quotas apply to certificate clients as to key clients. A connection without a verified
//! certificate (on an `optional` listener) gets the 401 like any failed authentication;
//! `required` listeners fail the handshake before any of this.

use crate::{Flow, Plugin, PluginCtx, PluginError, Priority};
use pingora_http::RequestHeader;
use serde::Deserialize;

pub const NAME: &str = "mtls_auth";

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub anonymous: Option<String>,
}

pub struct MtlsAuth {
    anonymous: Option<String>,
}

impl MtlsAuth {
    pub fn from_config(c: Config) -> Result<Self, PluginError> {
        Ok(MtlsAuth { anonymous: c.anonymous })
    }
}

impl Plugin for MtlsAuth {
    fn name(&self) -> &'static str {
        NAME
    }

    fn priority(&self) -> Priority {
        Priority(Priority::AUTH.0 + 5)
    }

    fn is_auth(&self) -> bool {
        true
    }

    fn anonymous(&self) -> Option<&str> {
        self.anonymous.as_deref()
    }

    fn request(&self, _req: &mut RequestHeader, ctx: &mut PluginCtx) -> Flow {
        if ctx.consumer.is_some() {
            return Flow::Continue;
        }
        match ctx.client_cert.clone() {
            Some(cert) if cert.verified => match ctx.consumers.by_client_cert(&cert).cloned() {
                Some(c) => {
                    ctx.consumer = Some(c);
                    ctx.credential = Some(("cert", 0));
                }
                None => ctx.auth_error = Some("client certificate belongs to no consumer"),
            },
            Some(_) => ctx.auth_error = Some("client certificate not verified"),
            None => ctx.auth_error = Some("client certificate required"),
        }
        Flow::Continue
    }
}
