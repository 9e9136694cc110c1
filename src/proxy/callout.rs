//! The core's side of a plugin's upstream call (`gatehouse_plugins::callout`): the upstream
//! looked up in the live config, the request sent over its cluster like an aggregate
//! backend's (balancing, health, breaker, TLS and h2 apply), the answer read whole.

use super::aggregate::call::{exchange, Outgoing};
use crate::live::Live;
use gatehouse_plugins::callout::{CallRequest, CallResponse, Upstreams};
use std::sync::Arc;

pub struct Calls {
    pub live: Arc<Live>,
}

/// Hop-by-hop and framing headers are the host's to set.
fn hop(n: &http::HeaderName) -> bool {
    use http::header::*;
    [CONNECTION, TRANSFER_ENCODING, CONTENT_LENGTH, UPGRADE, TE, HOST].contains(n) || n.as_str() == "keep-alive"
}

#[async_trait::async_trait]
impl Upstreams for Calls {
    async fn call(&self, req: CallRequest) -> Result<CallResponse, String> {
        let snap = self.live.load();
        let cluster = snap
            .clusters
            .get(&req.upstream)
            .ok_or_else(|| format!("upstream `{}` is not defined (or is a function)", req.upstream))?;
        let mut headers: Vec<_> = req.headers.into_iter().filter(|(n, _)| !hop(n)).collect();
        let has_id = headers.iter().any(|(n, _)| n == "x-request-id");
        if let (false, Ok(id)) = (has_id, http::HeaderValue::from_str(&req.request_id)) {
            headers.push((http::HeaderName::from_static("x-request-id"), id));
        }
        let out = Outgoing {
            method: &req.method,
            target: &req.path,
            timeout: req.timeout,
            headers: &headers,
            host: req.authority.and_then(|a| http::HeaderValue::from_str(&a).ok()),
            body: req.body,
            blame_timeout: false,
        };
        let deadline = tokio::time::Instant::now() + req.timeout;
        let reply = exchange(cluster, &out, req.max_body, deadline)
            .await
            .map_err(|f| format!("upstream `{}`: {}", req.upstream, f.detail()))?;
        let headers = reply
            .headers
            .iter()
            .filter(|(n, _)| !hop(n))
            .map(|(n, v)| (n.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        Ok(CallResponse {
            status: reply.status,
            headers,
            body: reply.body,
        })
    }
}
