use crate::{Answer, PluginCtx};
use async_trait::async_trait;
use pingora_http::{RequestHeader, ResponseHeader};

/// Fixed run order: the order of sections in the file never changes behaviour.
/// Higher runs first on the request side (IP rules before auth before limits before
/// static answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Priority(pub i32);

impl Priority {
    pub const IP_RULES: Priority = Priority(3000);
    pub const CORS: Priority = Priority(2900);
    pub const AUTH: Priority = Priority(2500);
    pub const ACL: Priority = Priority(2000);
    pub const LIMITS: Priority = Priority(1000);
    pub const TRANSFORM: Priority = Priority(500);
    pub const RESPOND: Priority = Priority(-1000);
}

/// What the request side of a plugin decided.
#[derive(Debug)]
pub enum Flow {
    Continue,
    /// Stop the chain and send this answer instead of proxying.
    Respond(Answer),
}

/// One plugin instance, built once at config load and shared by every request on its routes.
///
/// Phases are synchronous by default because most plugins (headers, keys, local limits) need
/// no I/O, and a boxed future per plugin per request is a cost the hot path should not pay.
/// A plugin that must wait (forward auth, Redis) returns `true` from `is_async` and
/// implements `request_async`.
#[async_trait]
pub trait Plugin: Send + Sync {
    fn name(&self) -> &'static str;

    fn priority(&self) -> Priority;

    fn request(&self, _req: &mut RequestHeader, _ctx: &mut PluginCtx) -> Flow {
        Flow::Continue
    }

    fn is_async(&self) -> bool {
        false
    }

    /// Authentication plugins establish `ctx.consumer`. On a route with several, the first
    /// that succeeds wins; when none does, the core answers 401 with every `challenge`.
    fn is_auth(&self) -> bool {
        false
    }

    /// The `WWW-Authenticate` value this scheme offers in a 401.
    fn challenge(&self) -> Option<http::HeaderValue> {
        None
    }

    /// A consumer to assume when no credentials were accepted (auth plugins only).
    fn anonymous(&self) -> Option<&str> {
        None
    }

    async fn request_async(&self, _req: &mut RequestHeader, _ctx: &mut PluginCtx) -> Flow {
        Flow::Continue
    }

    /// Runs on the copy of the request that goes upstream (after the gateway's own headers).
    fn upstream_request(&self, _req: &mut RequestHeader, _ctx: &PluginCtx) {}

    /// Runs on every response to the client: proxied ones and plugin answers alike.
    fn response(&self, _resp: &mut ResponseHeader, _ctx: &PluginCtx) {}

    /// A request body chunk, for a plugin that asked for the body on this request by setting
    /// [`PluginCtx::BODY_REQUEST`] in `ctx.body_hooks` (routes without such a plugin pay
    /// nothing). A chunk may be held back as `Some(empty)` and released later; `end` is the
    /// last call. An error is the answer the client gets (the body never reaches the
    /// upstream whole, and the upstream request is abandoned).
    fn request_body(&self, _body: &mut Option<bytes::Bytes>, _end: bool, _ctx: &mut PluginCtx) -> Result<(), Answer> {
        Ok(())
    }

    /// A response body chunk, with [`PluginCtx::BODY_RESPONSE`] set. The header block is
    /// already on its way to the client, so an error can only cut the response short.
    fn response_body(&self, _body: &mut Option<bytes::Bytes>, _end: bool, _ctx: &PluginCtx) -> Result<(), &'static str> {
        Ok(())
    }

    /// Runs once the response is finished, also after errors.
    fn log(&self, _status: u16, _ctx: &PluginCtx) {}
}
