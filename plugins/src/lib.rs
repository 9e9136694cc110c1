//! Gatehouse's plugin surface.
//!
//! This crate never imports the gateway core: the core builds plugins from config with
//! [`build`] and drives them through the phases of a request. Keeping the dependency one-way
//! means a plugin can be read, tested and reviewed on its own.

pub mod acl;
mod answer;
pub mod ascii;
pub mod basic_auth;
pub mod callout;
pub mod consumers;
mod context;
pub mod cors;
pub mod dn;
pub mod forward_auth;
pub mod headers;
mod http_client;
pub mod ip_restriction;
pub mod jwt_auth;
pub mod key_auth;
pub mod limits;
pub mod metrics;
pub mod mtls_auth;
mod plugin;
pub mod respond;
pub mod secret;
pub mod store;
pub mod util;
pub mod wasm;

pub use answer::Answer;
pub use context::{ClientCert, PluginCtx};
pub use plugin::{Flow, Plugin, Priority};

use std::sync::Arc;

/// Why a plugin's config section was refused: `key` is the path inside the plugin's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    pub key: String,
    pub reason: String,
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.key, self.reason)
        }
    }
}

impl std::error::Error for PluginError {}

/// Names of the plugins this build knows, so the core can refuse a typo at load time.
pub const KNOWN: &[&str] = &[
    headers::NAME,
    respond::NAME,
    key_auth::NAME,
    basic_auth::NAME,
    jwt_auth::NAME,
    mtls_auth::NAME,
    acl::NAME,
    ip_restriction::NAME,
    forward_auth::NAME,
    cors::NAME,
    limits::rate_limit::NAME,
    limits::quota::NAME,
    limits::concurrency::NAME,
    wasm::NAME,
];

/// Builds one plugin instance from its TOML table. Called at config load, never per request.
pub fn build(name: &str, value: &toml::Value) -> Result<Arc<dyn Plugin>, PluginError> {
    match name {
        headers::NAME => Ok(Arc::new(headers::Headers::from_config(parse(value)?)?)),
        respond::NAME => Ok(Arc::new(respond::Respond::from_config(parse(value)?)?)),
        key_auth::NAME => Ok(Arc::new(key_auth::KeyAuth::from_config(parse(value)?)?)),
        basic_auth::NAME => Ok(Arc::new(basic_auth::BasicAuth::from_config(parse(value)?)?)),
        jwt_auth::NAME => Ok(Arc::new(jwt_auth::JwtAuth::from_config(parse(value)?)?)),
        mtls_auth::NAME => Ok(Arc::new(mtls_auth::MtlsAuth::from_config(parse(value)?)?)),
        acl::NAME => Ok(Arc::new(acl::Acl::from_config(parse(value)?)?)),
        ip_restriction::NAME => Ok(Arc::new(ip_restriction::IpRestriction::from_config(parse(value)?)?)),
        forward_auth::NAME => Ok(Arc::new(forward_auth::ForwardAuth::from_config(parse(value)?)?)),
        cors::NAME => Ok(Arc::new(cors::Cors::from_config(parse(value)?)?)),
        limits::rate_limit::NAME => Ok(Arc::new(limits::rate_limit::RateLimit::from_config(parse(value)?)?)),
        limits::quota::NAME => Ok(Arc::new(limits::quota::Quota::from_config(parse(value)?)?)),
        limits::concurrency::NAME => Ok(Arc::new(limits::concurrency::ConcurrencyLimit::from_config(parse(value)?)?)),
        wasm::NAME => Ok(Arc::new(wasm::Wasm::from_config(parse(value)?)?)),
        other => Err(PluginError {
            key: String::new(),
            reason: format!("unknown plugin `{other}` (known: {})", KNOWN.join(", ")),
        }),
    }
}

/// Deserializes a plugin table, keeping the key path of the first error.
pub(crate) fn parse<T: serde::de::DeserializeOwned>(value: &toml::Value) -> Result<T, PluginError> {
    serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        let path = e.path().to_string();
        PluginError {
            key: if path == "." { String::new() } else { path },
            reason: e.into_inner().to_string(),
        }
    })
}
