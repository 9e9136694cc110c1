use crate::consumers::{Consumer, Consumers};
use crate::limits::plans::Plans;
use once_cell::sync::Lazy;
use std::net::IpAddr;
use std::sync::Arc;

/// Shared by every context that has not been given a registry yet: no allocation per request.
static NO_CONSUMERS: Lazy<Arc<Consumers>> = Lazy::new(|| Arc::new(Consumers::default()));
static NO_PLANS: Lazy<Arc<Plans>> = Lazy::new(|| Arc::new(Plans::default()));

/// What a plugin may know about the request beyond its headers.
///
/// The core fills it before the chain runs. Later plugins see what earlier ones set
/// (an auth plugin sets `consumer`; ACLs and rate limiters use it).
pub struct PluginCtx {
    /// The client address after `trusted_proxies` has been applied: safe to key limits on.
    pub client_ip: IpAddr,
    pub route: Arc<str>,
    pub request_id: String,
    pub consumer: Option<Arc<Consumer>>,
    /// How the consumer proved who it is: the credential's kind and, for API keys, the
    /// key's index in the consumer's list. An id for usage events, never the secret.
    pub credential: Option<(&'static str, u32)>,
    pub consumers: Arc<Consumers>,
    /// Why the chain stopped, for the access log and `gatehouse_rejections_total`.
    pub rejection: Option<&'static str>,
    /// Why credentials that were presented were not accepted (shown in the 401).
    pub auth_error: Option<&'static str>,
    /// The request's Origin when CORS allowed it, for the response side.
    pub cors_origin: Option<http::HeaderValue>,
    /// Response headers plugins want on the answer (rate-limit headers and the like).
    pub response_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub plans: Arc<Plans>,
    /// Held until the request is completely finished (concurrency slots): dropping the
    /// context, on any path, releases them.
    pub guards: Vec<Box<dyn std::any::Any + Send + Sync>>,
    /// The certificate the client presented in the TLS handshake, if any.
    pub client_cert: Option<Arc<ClientCert>>,
    /// Which body phases a plugin asked for on this request ([`Self::BODY_REQUEST`],
    /// [`Self::BODY_RESPONSE`]): the core calls the body hooks only then.
    pub body_hooks: u8,
    /// The request has a body to come, as the protocol says (an HTTP/2 request may carry
    /// one without Content-Length).
    pub has_body: bool,
}

/// A client certificate as the TLS handshake saw it.
#[derive(Debug, Clone)]
pub struct ClientCert {
    /// RFC 4514 in the canonical spelling of `dn::canonical_subject` (`CN=partner-gw,O=Partner`),
    /// so it compares with configured subjects as a string.
    pub subject: String,
    /// Lower-case hex SHA-256 of the leaf's DER.
    pub fingerprint: String,
    /// It verified against the listener's `client_ca`.
    pub verified: bool,
}

impl PluginCtx {
    pub fn new(client_ip: IpAddr, route: Arc<str>, request_id: String) -> Self {
        PluginCtx {
            client_ip,
            route,
            request_id,
            consumer: None,
            credential: None,
            consumers: NO_CONSUMERS.clone(),
            rejection: None,
            auth_error: None,
            cors_origin: None,
            response_headers: Vec::new(),
            plans: NO_PLANS.clone(),
            guards: Vec::new(),
            client_cert: None,
            body_hooks: 0,
            has_body: false,
        }
    }

    pub const BODY_REQUEST: u8 = 1;
    pub const BODY_RESPONSE: u8 = 2;

    pub fn consumer_name(&self) -> Option<&str> {
        self.consumer.as_ref().map(|c| &*c.name)
    }
}
