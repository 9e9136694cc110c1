//! What the listener a request came in on adds to it: the connection's TLS facts (for the
//! scheme, the access log and routes that match on SNI), `Strict-Transport-Security` on
//! every answer of a TLS listener, and the 308 of a plaintext listener with
//! `redirect_https`.

use super::ctx::Ctx;
use crate::listen::{ListenerRt, Listeners};
use gatehouse_plugins::Answer;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_proxy::Session;

/// Notes the connection's TLS and adds HSTS; returns the listener.
pub fn note<'a>(session: &Session, ctx: &mut Ctx, listeners: &'a Listeners) -> &'a ListenerRt {
    let local = session.server_addr().and_then(|a| match a {
        SocketAddr::Inet(a) => Some(*a),
        _ => None,
    });
    let listener = listeners.of(local);
    ctx.tls = session.digest().and_then(|d| d.ssl_digest.clone());
    ctx.plugin.client_cert = ctx.tls_info().and_then(|i| i.client.clone());
    if let (Some(h), true) = (&listener.hsts, ctx.tls.is_some()) {
        ctx.plugin
            .response_headers
            .push((http::header::STRICT_TRANSPORT_SECURITY, h.clone()));
    }
    listener
}

/// The 308 to HTTPS of a plaintext listener with `redirect_https` (after the target was
/// settled: the normalised path goes into `Location`).
pub fn redirect(session: &Session, ctx: &Ctx, listener: &ListenerRt) -> Option<Answer> {
    if ctx.tls.is_some() {
        return None;
    }
    let template = listener.redirect_https.as_ref()?;
    let req = session.req_header();
    let host = crate::router::request_host(&req.headers, &req.uri);
    if host.is_empty() {
        // HTTP/1.0 may leave Host out; a Location of `https://:8443/` helps nobody.
        return Some(Answer::error(400, "a Host header is needed for the HTTPS redirect"));
    }
    let uri = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    // request_host gives an IPv6 literal without its brackets; a URL needs them back.
    let location = if host.contains(':') {
        template.replace("{host}", &format!("[{host}]"))
    } else {
        template.replace("{host}", host)
    }
    .replace("{uri}", uri);
    let value = http::HeaderValue::from_str(&location).ok()?;
    Some(Answer::empty(308).with_header(http::header::LOCATION, value))
}
