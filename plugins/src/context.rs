use std::net::IpAddr;
use std::sync::Arc;

/// What a plugin may know about the request beyond its headers.
///
/// The core fills it before the chain runs. Later plugins see what earlier ones set
/// (an auth plugin sets `consumer`; a rate limiter keys on it).
#[derive(Debug, Clone)]
pub struct PluginCtx {
    /// The client address after `trusted_proxies` has been applied: safe to key limits on.
    pub client_ip: IpAddr,
    pub route: Arc<str>,
    pub request_id: String,
    pub consumer: Option<Arc<str>>,
    /// Why the chain stopped, for the access log and `gatehouse_rejections_total`.
    pub rejection: Option<&'static str>,
}

impl PluginCtx {
    pub fn new(client_ip: IpAddr, route: Arc<str>, request_id: String) -> Self {
        PluginCtx {
            client_ip,
            route,
            request_id,
            consumer: None,
            rejection: None,
        }
    }
}
