//! The plugins' body hooks, driven from the proxy's body filters only for requests where a
//! plugin asked for them (`PluginCtx::body_hooks`), and the framing they need: a plugin may
//! change a body's length after its header block has left, so that body goes chunked.

use super::{answer, chain, ctx::Ctx};
use gatehouse_plugins::PluginCtx;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

/// Whether a request has a body to come: on HTTP/2 the stream says (a body needs no
/// Content-Length there); on HTTP/1 its framing headers do (asking Pingora's reader
/// early would set it up before an upgrade is decided).
pub fn has_body(session: &mut Session) -> bool {
    let req = session.req_header();
    if req.version == http::Version::HTTP_2 {
        return !session.as_mut().is_body_empty();
    }
    req.headers.contains_key(http::header::TRANSFER_ENCODING)
        || req.headers.get(http::header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0")
}

/// A request body chunk through the plugins that asked. A plugin's refusal is the client's
/// answer (unless the upstream's is already on its way; then the response is cut).
pub async fn request(session: &mut Session, body: &mut Option<bytes::Bytes>, end: bool, ctx: &mut Ctx) -> Result<()> {
    if ctx.plugin.body_hooks & PluginCtx::BODY_REQUEST == 0 {
        return Ok(());
    }
    let Some(route) = ctx.route.clone() else { return Ok(()) };
    for p in route.plugins.iter() {
        if let Err(a) = chain::request_body(p, body, end, &mut ctx.plugin) {
            ctx.plugin.rejection.get_or_insert("plugin_body");
            let status = a.status;
            if session.response_written().is_none() {
                answer::write(session, ctx, a, true).await;
            }
            return Err(Error::explain(ErrorType::HTTPStatus(status), "answered by a plugin"));
        }
    }
    Ok(())
}

/// The upstream request of a body a plugin may rewrite: chunked (h2 drops the header).
pub fn upstream_framing(upstream: &mut RequestHeader, ctx: &Ctx) -> Result<()> {
    if ctx.plugin.body_hooks & PluginCtx::BODY_REQUEST != 0 {
        upstream.remove_header(&http::header::CONTENT_LENGTH);
        upstream.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(())
}

/// Response body hooks need a body that ends with a last chunk they see: not gRPC
/// (trailers end it), not a cached answer (a revalidated body ends with no last chunk),
/// and a client that can take chunked framing. Called before the response plugins run.
pub fn settle_response(session: &Session, ctx: &mut Ctx) {
    let streamed = ctx.grpc.is_some()
        || ctx.web.is_some()
        || ctx.route.as_ref().is_some_and(|r| r.cache.is_some())
        || session.req_header().version == http::Version::HTTP_10;
    if streamed {
        ctx.plugin.body_hooks &= !PluginCtx::BODY_RESPONSE;
    }
}

/// After the response plugins: a body the hooks may rewrite goes chunked, as HTTP/1.1
/// (h2 drops the header). Not HEAD, 1xx, 204 or 304: they have no body.
pub fn response_framing(session: &Session, resp: &mut ResponseHeader, ctx: &Ctx) -> Result<()> {
    let body_follows =
        session.req_header().method != http::Method::HEAD && !resp.status.is_informational() && !matches!(resp.status.as_u16(), 204 | 304);
    if ctx.plugin.body_hooks & PluginCtx::BODY_RESPONSE != 0 && body_follows {
        resp.remove_header(&http::header::CONTENT_LENGTH);
        resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
        resp.set_version(http::Version::HTTP_11);
    }
    Ok(())
}

/// A response body chunk through the plugins that asked (never WebSocket frames).
pub fn response(session: &Session, body: &mut Option<bytes::Bytes>, end: bool, ctx: &mut Ctx) -> Result<()> {
    if ctx.plugin.body_hooks & PluginCtx::BODY_RESPONSE == 0 || session.was_upgraded() {
        return Ok(());
    }
    let Some(route) = ctx.route.clone() else { return Ok(()) };
    for p in route.plugins.iter() {
        if let Err(reason) = chain::response_body(p, body, end, &ctx.plugin) {
            ctx.error = Some("plugin_body");
            return Err(Error::explain(ErrorType::InternalError, reason));
        }
    }
    Ok(())
}
