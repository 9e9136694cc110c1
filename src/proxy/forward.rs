//! Headers between client and upstream: identity in, forwarding headers out, hop-by-hop
//! headers removed both ways.

use super::ctx::Ctx;
use super::identity;
use crate::config::ClientIpHeader;
use crate::snapshot::Snapshot;
use crate::upstream::{Cluster, HashKey};
use http::header;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use std::net::IpAddr;

/// Sets the request id and the client address. X-Forwarded-For (or Forwarded, as
/// `server.client_ip_header` says) is believed only from a peer in `trusted_proxies`; from
/// anyone else it is ignored (and replaced upstream).
pub fn identify(session: &Session, ctx: &mut Ctx, snap: &Snapshot) {
    let req = session.req_header();
    let (id, header) = match req.headers.get("x-request-id") {
        Some(v) if identity::valid_request_id(v.as_bytes()) => (String::from_utf8_lossy(v.as_bytes()).into_owned(), v.clone()),
        _ => {
            let b = identity::request_id_bytes();
            let id = String::from_utf8_lossy(&b).into_owned();
            match http::HeaderValue::from_bytes(&b) {
                Ok(h) => (id, h),
                Err(_) => (id, http::HeaderValue::from_static("invalid")),
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
        identity::client_ip(&req.headers, snap.file.server.client_ip_header, |ip| snap.is_trusted(ip)).unwrap_or(peer)
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

/// Where header edits go. Pingora's header types keep every name's original case in a
/// second map and re-parse the name on each insert: about 1.4k instructions per insert by
/// callgrind, the largest cost Gatehouse added to a proxied request. So unless the operator
/// asks for `preserve_header_case`, the header is taken apart into a plain `http::HeaderMap`
/// once, edited there, and put back; names then go out lower-case (well-known ones
/// title-cased), which HTTP allows since names are case-insensitive.
trait Headers {
    fn map(&self) -> &http::HeaderMap;
    fn set(&mut self, name: &http::HeaderName, value: http::HeaderValue) -> Result<()>;
    fn remove(&mut self, name: &http::HeaderName);
}

impl Headers for http::HeaderMap {
    fn map(&self) -> &http::HeaderMap {
        self
    }
    fn set(&mut self, name: &http::HeaderName, value: http::HeaderValue) -> Result<()> {
        self.insert(name.clone(), value);
        Ok(())
    }
    fn remove(&mut self, name: &http::HeaderName) {
        http::HeaderMap::remove(self, name);
    }
}

/// Pingora's two header types share the case-preserving API but no trait.
macro_rules! pingora_headers {
    ($($t:ty),*) => {$(
        impl Headers for $t {
            fn map(&self) -> &http::HeaderMap {
                &self.headers
            }
            fn set(&mut self, name: &http::HeaderName, value: http::HeaderValue) -> Result<()> {
                self.insert_header(name.clone(), value)
            }
            fn remove(&mut self, name: &http::HeaderName) {
                self.remove_header(name);
            }
        }
    )*};
}

pingora_headers!(RequestHeader, ResponseHeader);

fn preserve_case(ctx: &Ctx) -> bool {
    ctx.snapshot.as_ref().is_some_and(|s| s.file.server.preserve_header_case)
}

/// Runs `edit` on the request's headers as plain `http` parts when nothing would be lost by
/// it: the target must be the URI's own origin form (not absolute-form, not lossy UTF-8).
/// HTTP/2 requests (to an h2 upstream) go the same way, keeping whether their HEADERS may
/// end the stream (grpc-web's bridge says they may not), the one thing the parts lack.
fn edit_request(up: &mut RequestHeader, cased: bool, edit: impl FnOnce(&mut dyn Headers) -> Result<()>) -> Result<()> {
    let plain = !cased && up.uri.path_and_query().is_some_and(|p| p.as_str().as_bytes() == up.raw_path());
    if !plain {
        return edit(up);
    }
    let end_stream = up.send_end_stream();
    let empty = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts: http::request::Parts = std::mem::replace(up, empty).into();
    parts.headers.reserve(8);
    let result = edit(&mut parts.headers);
    *up = RequestHeader::from(parts);
    if let Some(end) = end_stream {
        up.set_send_end_stream(end);
    }
    result
}

/// As [`edit_request`], for a response whose reason phrase is the standard one.
fn edit_response(resp: &mut ResponseHeader, cased: bool, edit: impl FnOnce(&mut dyn Headers)) {
    let plain = !cased && resp.get_reason_phrase() == resp.status.canonical_reason();
    if !plain {
        return edit(resp);
    }
    let empty = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts: http::response::Parts = std::mem::replace(resp, empty).into();
    parts.headers.reserve(4);
    edit(&mut parts.headers);
    *resp = ResponseHeader::from(parts);
}

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

    let original_host = session.req_header().headers.get(header::HOST);
    let target_host = if route.preserve_host {
        None
    } else {
        ctx.upstream.in_flight.as_ref().map(|f| f.target().host_header.clone())
    };
    let ctx = &*ctx;
    edit_request(up, preserve_case(ctx), |h| {
        if let Some(host) = target_host {
            h.set(&header::HOST, host)?;
        }
        // X-Forwarded-*: extended when the peer is a trusted proxy (every line, in order),
        // replaced otherwise, so a client cannot make the upstream believe a forged chain.
        let xff = chain_then(h.map(), &X_FORWARDED_FOR, ctx.peer_trusted, |out| {
            gatehouse_plugins::ascii::push_ip(out, ctx.peer_ip)
        })?;
        h.set(&X_FORWARDED_FOR, xff)?;
        let forwarded_mode = ctx
            .snapshot
            .as_ref()
            .is_some_and(|s| s.file.server.client_ip_header == ClientIpHeader::Forwarded);
        if forwarded_mode {
            let https = ctx.tls.is_some();
            let fwd = chain_then(h.map(), &header::FORWARDED, ctx.peer_trusted, |out| {
                push_forwarded(out, ctx.peer_ip);
                out.extend_from_slice(if https { b";proto=https" } else { b";proto=http" });
            })?;
            h.set(&header::FORWARDED, fwd)?;
        } else if !ctx.peer_trusted && h.map().contains_key(header::FORWARDED) {
            h.remove(&header::FORWARDED);
        }
        // Upstreams behind Envoy-style meshes believe this header names the verified client
        // certificate; a client's own copy is a forged identity (Envoy sanitises it too).
        if !ctx.peer_trusted && h.map().contains_key(&X_FORWARDED_CLIENT_CERT) {
            h.remove(&X_FORWARDED_CLIENT_CERT);
        }
        if !(ctx.peer_trusted && h.map().contains_key(&X_FORWARDED_PROTO)) {
            let proto = if ctx.tls.is_some() { "https" } else { "http" };
            h.set(&X_FORWARDED_PROTO, http::HeaderValue::from_static(proto))?;
        }
        if !(ctx.peer_trusted && h.map().contains_key(&X_FORWARDED_HOST)) {
            match original_host {
                Some(v) => h.set(&X_FORWARDED_HOST, v.clone())?,
                None => h.remove(&X_FORWARDED_HOST),
            }
        }
        if let Some(id) = &ctx.request_id {
            h.set(&X_REQUEST_ID, id.clone())?;
        }
        if ctx.grpc.is_some() {
            // gRPC servers want `te: trailers`, which Pingora strips from a request that
            // came over HTTP/1.1 (grpc-web) as hop-by-hop.
            if !h.map().contains_key(header::TE) {
                h.set(&header::TE, http::HeaderValue::from_static("trailers"))?;
            }
            if let Some(d) = ctx.grpc_deadline {
                // The upstream gets what is left of the client's deadline, not all of it.
                let left = super::grpc::timeout_value(super::grpc::left(d, ctx.start));
                let v = http::HeaderValue::from_str(&left).map_err(|e| Error::because(ErrorType::InternalError, "grpc-timeout", e))?;
                h.set(&GRPC_TIMEOUT, v)?;
            }
        }
        // Who the consumer is comes from the gateway only; a client's own copy never passes.
        if let Some(snap) = ctx.snapshot.as_ref() {
            if h.map().contains_key(&snap.consumer_header) {
                h.remove(&snap.consumer_header);
            }
            if let Some(c) = ctx.plugin.consumer.as_ref() {
                let v = c.header_value.clone().ok_or_else(|| {
                    Error::explain(
                        ErrorType::InternalError,
                        format!("consumer `{}` is not a valid header value", c.name),
                    )
                })?;
                h.set(&snap.consumer_header, v)?;
            }
        }
        Ok(())
    })
    // Hop-by-hop request headers (and those Connection nominates) are stripped by Pingora's
    // default HttpUpstreamRequestPolicy.
}

/// A forwarding chain's value: every line the trusted peer sent (joined in order), then
/// this hop (`push`). From an untrusted peer, this hop alone.
fn chain_then(map: &http::HeaderMap, name: &http::HeaderName, trusted: bool, push: impl FnOnce(&mut Vec<u8>)) -> Result<http::HeaderValue> {
    let mut out = Vec::with_capacity(48);
    if trusted {
        for line in map.get_all(name) {
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b", ");
        }
    }
    push(&mut out);
    http::HeaderValue::from_maybe_shared(bytes::Bytes::from(out))
        .map_err(|e| Error::because(ErrorType::InternalError, "forwarding chain", e))
}

/// `for=192.0.2.1`, or `for="[2001:db8::1]"` (RFC 7239 quotes IPv6).
fn push_forwarded(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(_) => {
            out.extend_from_slice(b"for=");
            gatehouse_plugins::ascii::push_ip(out, ip);
        }
        IpAddr::V6(_) => {
            out.extend_from_slice(b"for=\"[");
            gatehouse_plugins::ascii::push_ip(out, ip);
            out.extend_from_slice(b"]\"");
        }
    }
}

static X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: http::HeaderName = http::HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_CLIENT_CERT: http::HeaderName = http::HeaderName::from_static("x-forwarded-client-cert");
static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
static GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// Headers that describe one connection and must not cross the proxy (RFC 9110 7.6.1).
static HOP_BY_HOP: [http::HeaderName; 8] = [
    header::CONNECTION,
    http::HeaderName::from_static("keep-alive"),
    http::HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// `cache_status`: the cache's status header (`x-cache-status: HIT`) on a cached route.
pub fn response_headers(resp: &mut ResponseHeader, ctx: &Ctx, cache_status: Option<(http::HeaderName, http::HeaderValue)>) {
    let upgrade = resp.status == http::StatusCode::SWITCHING_PROTOCOLS;
    edit_response(resp, preserve_case(ctx), |h| {
        if !upgrade {
            strip_hop_by_hop(h);
        }
        if let Some((name, value)) = cache_status {
            let _ = h.set(&name, value);
        }
        if let Some(id) = &ctx.request_id {
            let _ = h.set(&X_REQUEST_ID, id.clone());
        }
        for (n, v) in &ctx.plugin.response_headers {
            let _ = h.set(n, v.clone());
        }
    });
}

/// Connection is Pingora's to set for the downstream, so the upstream's value goes, with
/// every header it nominates.
fn strip_hop_by_hop(h: &mut dyn Headers) {
    let nominated = h
        .map()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| !t.is_empty() && !t.eq_ignore_ascii_case("close") && !t.eq_ignore_ascii_case("keep-alive"));
    if nominated {
        let names: Vec<http::HeaderName> = h
            .map()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| http::HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for n in &names {
            h.remove(n);
        }
    }
    // One pass over the (few) response headers, then only the names that are present.
    let mut present = [false; HOP_BY_HOP.len()];
    for k in h.map().keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|n| n == k) {
            present[i] = true;
        }
    }
    for (i, n) in HOP_BY_HOP.iter().enumerate() {
        if present[i] {
            h.remove(n);
        }
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
