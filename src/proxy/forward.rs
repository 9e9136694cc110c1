//! Headers between client and upstream: identity in, forwarding headers out, hop-by-hop
//! headers removed both ways.

use super::ctx::Ctx;
use super::identity;
use crate::snapshot::Snapshot;
use crate::upstream::{Cluster, HashKey};
use http::header;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use std::net::IpAddr;

/// Sets the request id and the client address. X-Forwarded-For is believed only from a
/// peer in `trusted_proxies`; from anyone else it is ignored (and replaced upstream).
pub fn identify(session: &Session, ctx: &mut Ctx, snap: &Snapshot) {
    let req = session.req_header();
    let (id, header) = match req.headers.get("x-request-id") {
        Some(v) if identity::valid_request_id(v.as_bytes()) => (String::from_utf8_lossy(v.as_bytes()).into_owned(), v.clone()),
        _ => {
            let id = identity::new_request_id();
            let h = http::HeaderValue::from_maybe_shared(bytes::Bytes::from(id.clone().into_bytes())).ok();
            match h {
                Some(h) => (id, h),
                None => (id, http::HeaderValue::from_static("invalid")),
            }
        }
    };
    ctx.plugin.request_id = id;
    ctx.request_id = Some(header);
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
        .unwrap_or(ctx.peer_ip);
    ctx.peer_ip = peer;
    ctx.peer_trusted = !snap.trusted_proxies.is_empty() && snap.is_trusted(peer);
    ctx.plugin.client_ip = if ctx.peer_trusted {
        req.headers
            .get("x-forwarded-for")
            .and_then(|x| identity::client_from_xff(x.as_bytes(), |ip| snap.is_trusted(ip)))
            .unwrap_or(peer)
    } else {
        peer
    };
}

/// The bytes `consistent_hash` hashes for this request, if the request has them.
pub fn hash_key<'a>(session: &'a Session, ctx: &Ctx, cluster: &Cluster, buf: &'a mut [u8; 16]) -> Option<&'a [u8]> {
    let req = session.req_header();
    match cluster.hash_key.as_ref()? {
        HashKey::Ip => {
            let n = match ctx.plugin.client_ip {
                IpAddr::V4(v4) => {
                    buf[..4].copy_from_slice(&v4.octets());
                    4
                }
                IpAddr::V6(v6) => {
                    buf.copy_from_slice(&v6.octets());
                    16
                }
            };
            Some(&buf[..n])
        }
        HashKey::Path => Some(req.uri.path().as_bytes()),
        HashKey::Header(name) => req.headers.get(name).map(|v| v.as_bytes()),
        HashKey::Cookie(name) => req
            .headers
            .get_all(header::COOKIE)
            .iter()
            .find_map(|v| cookie(v.as_bytes(), name.as_bytes())),
    }
}

fn cookie<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    header.split(|b| *b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|b| *b == b'=')?;
        (&pair[..eq] == name).then_some(&pair[eq + 1..])
    })
}

/// Headers that describe one connection and must not cross the proxy (RFC 9110 7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

pub fn upstream_headers(session: &Session, up: &mut RequestHeader, ctx: &mut Ctx) -> Result<()> {
    let route = ctx
        .route
        .as_ref()
        .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route"))?;
    if ctx.strip > 0 {
        let path = up.uri.path();
        let rest = &path[ctx.strip.min(path.len())..];
        let rest = if rest.is_empty() { "/" } else { rest };
        let new = match up.uri.query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest.to_string(),
        };
        let uri = new
            .parse::<http::Uri>()
            .map_err(|e| Error::because(ErrorType::InternalError, "stripping prefix", e))?;
        up.set_uri(uri);
    }

    let original_host = session.req_header().headers.get(header::HOST).cloned();
    if !route.preserve_host {
        if let Some(t) = ctx.upstream.in_flight.as_ref().map(|f| f.target()) {
            up.insert_header(header::HOST, t.host_header.clone())?;
        }
    }

    // X-Forwarded-*: extended when the peer is a trusted proxy, replaced otherwise, so a
    // client cannot make the upstream believe a forged chain.
    let mut xff = String::with_capacity(64);
    if ctx.peer_trusted {
        if let Some(prev) = up.headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            xff.push_str(prev);
            xff.push_str(", ");
        }
    }
    use std::fmt::Write;
    let _ = write!(xff, "{}", ctx.peer_ip);
    up.insert_header(X_FORWARDED_FOR.clone(), xff)?;
    if !(ctx.peer_trusted && up.headers.contains_key(&X_FORWARDED_PROTO)) {
        up.insert_header(X_FORWARDED_PROTO.clone(), http::HeaderValue::from_static("http"))?;
    }
    if !(ctx.peer_trusted && up.headers.contains_key(&X_FORWARDED_HOST)) {
        match original_host {
            Some(h) => {
                up.insert_header(X_FORWARDED_HOST.clone(), h)?;
            }
            None => {
                up.remove_header(&X_FORWARDED_HOST);
            }
        }
    }
    if let Some(id) = &ctx.request_id {
        up.insert_header(X_REQUEST_ID.clone(), id.clone())?;
    }
    // Who the consumer is comes from the gateway only; a client's own copy never passes.
    if let Some(snap) = ctx.snapshot.as_ref() {
        if up.headers.contains_key(&snap.consumer_header) {
            up.remove_header(&snap.consumer_header);
        }
        if let Some(name) = ctx.plugin.consumer_name() {
            up.insert_header(snap.consumer_header.clone(), name)?;
        }
    }
    // Hop-by-hop request headers (and those Connection nominates) are stripped by Pingora's
    // default HttpUpstreamRequestPolicy.
    Ok(())
}

static X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: http::HeaderName = http::HeaderName::from_static("x-forwarded-host");
static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

pub fn response_headers(resp: &mut ResponseHeader, ctx: &Ctx) {
    let upgrade = resp.status == http::StatusCode::SWITCHING_PROTOCOLS;
    if !upgrade {
        if resp.headers.contains_key(header::CONNECTION) {
            let nominated: Vec<String> = resp
                .headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(|t| t.trim().to_ascii_lowercase())
                .filter(|t| !t.is_empty() && t != "close" && t != "keep-alive")
                .collect();
            for n in nominated {
                resp.remove_header(n.as_str());
            }
        }
        // One pass over the (few) response headers instead of a lookup per hop-by-hop name.
        // Connection is Pingora's to set for the downstream; upstream's value is dropped.
        if resp.headers.keys().any(|k| HOP_BY_HOP.contains(&k.as_str())) {
            for h in HOP_BY_HOP {
                resp.remove_header(*h);
            }
        }
    }
    if let Some(id) = &ctx.request_id {
        let _ = resp.insert_header(X_REQUEST_ID.clone(), id.clone());
    }
    for (n, v) in &ctx.plugin.response_headers {
        let _ = resp.insert_header(n.clone(), v.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::cookie;

    #[test]
    fn cookies() {
        assert_eq!(cookie(b"a=1; sid=xyz; b=2", b"sid"), Some(&b"xyz"[..]));
        assert_eq!(cookie(b"a=1", b"sid"), None);
    }
}
