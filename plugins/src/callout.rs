//! Calls from a plugin to one of the gateway's upstreams (a proxy-wasm `proxy_http_call`).
//!
//! The plugins never import the core, so the core installs the caller once at start:
//! it looks the upstream up in the live config at call time (a reload between a
//! request's start and its call uses the new clusters) and sends the request through the
//! cluster's balancing, health, breaker and TLS like any other upstream request.

use async_trait::async_trait;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// One request to an upstream: `path` is the path and query, headers without the
/// pseudo-headers.
pub struct CallRequest {
    pub upstream: String,
    pub method: http::Method,
    pub path: String,
    pub authority: Option<String>,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub body: bytes::Bytes,
    pub timeout: Duration,
    /// Largest response body read; a longer one fails the call.
    pub max_body: usize,
    pub request_id: String,
}

pub struct CallResponse {
    pub status: u16,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: bytes::Bytes,
}

#[async_trait]
pub trait Upstreams: Send + Sync {
    /// Err names what failed (no such upstream, no healthy target, timeout, a broken answer).
    async fn call(&self, req: CallRequest) -> Result<CallResponse, String>;
}

static CALLER: OnceLock<Arc<dyn Upstreams>> = OnceLock::new();

/// Set by the core when its proxy starts; later calls are ignored.
pub fn install(caller: Arc<dyn Upstreams>) {
    let _ = CALLER.set(caller);
}

pub fn caller() -> Option<&'static Arc<dyn Upstreams>> {
    CALLER.get()
}
