//! The `ProxyHttp` implementation: a thin dispatcher that reads one snapshot per request
//! and hands each phase to the module that owns it.
//!
//! Phase map: `request_filter` (request id, client ip, route, request-side plugins) ->
//! `upstream_peer` (pick a target) -> `upstream_request_filter` (forwarding headers) ->
//! `response_filter` (hop-by-hop, response-side plugins) -> `logging` (metrics, access log).
//! Failures land in `fail_to_connect` (retry elsewhere) and `fail_to_proxy` (JSON error).

pub mod aggregate;
mod answer;
mod auth;
mod bodies;
pub mod callout;
mod chain;
pub mod ctx;
mod forward;
mod function;
mod grpc;
mod grpc_web;
pub mod identity;
mod listener;
mod observe;
mod stream;
mod target;
mod traced;

use crate::live::Live;
use async_trait::async_trait;
use ctx::Ctx;
use gatehouse_plugins::{Flow, PluginCtx};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::Arc;
use std::time::Instant;

pub struct Gateway {
    pub live: Arc<Live>,
    /// What each listener adds to its requests (scheme, HSTS, the HTTPS redirect).
    pub listeners: Arc<crate::listen::Listeners>,
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let snap = self.live.load();
        // Pingora makes reused HTTP/1.1 connections wait forever for their next request;
        // bound that idle time on every request.
        // (Pingora's setter keeps an explicit `Connection: close`, but would turn an HTTP/1.0
        // request without `keep-alive` into a kept connection its client waits on.)
        if http10_keepalive(session.req_header()) {
            session.set_keepalive(Some(snap.file.server.keepalive_timeout.0.as_secs().max(1)));
        }
        session.set_write_timeout(Some(snap.file.server.send_timeout.0));
        forward::identify(session, ctx, &snap);
        let shape = stream::shape(session.req_header());
        ctx.grpc = shape.grpc;
        let on = listener::note(session, ctx, &self.listeners);
        if session.req_header().version == http::Version::HTTP_2 {
            if let Some((a, reason)) = target::h2_limits(session.req_header(), &snap.file.server) {
                ctx.error = Some(reason);
                ctx.snapshot = Some(snap);
                answer::write(session, ctx, a, false).await;
                return Ok(true);
            }
        }
        if let target::Settled::Answer(a, reason) = target::settle(session.req_header_mut(), snap.file.server.path_escaped_slash) {
            if session.req_header().method == http::Method::CONNECT {
                // What follows a CONNECT may be tunnel bytes, never a next request.
                session.set_keepalive(None);
            }
            ctx.error = Some(reason);
            ctx.snapshot = Some(snap);
            answer::write(session, ctx, a, false).await;
            return Ok(true);
        }

        // HTTP-01: the CA asks on port 80, before any redirect to HTTPS (RFC 8555 8.3).
        if self.live.acme.active && ctx.tls.is_none() {
            if let Some(key_authorization) = self.live.acme.answer(session.req_header().uri.path()) {
                ctx.snapshot = Some(snap);
                let a = gatehouse_plugins::Answer::new(200, "application/octet-stream", key_authorization);
                answer::write(session, ctx, a, false).await;
                return Ok(true);
            }
        }
        if let Some(a) = listener::redirect(session, ctx, on) {
            ctx.error = Some("https_redirect");
            ctx.snapshot = Some(snap);
            answer::write(session, ctx, a, false).await;
            return Ok(true);
        }
        let found = {
            let req = session.req_header();
            let host = crate::router::request_host(&req.headers, &req.uri);
            let conn = crate::router::Conn {
                sni: ctx.tls_info().and_then(|i| i.sni.as_deref()),
                https: ctx.tls.is_some(),
            };
            snap.router.find(host, &req.method, req.uri.path(), &req.headers, conn).map(|m| {
                let strip = if m.route.strip_prefix {
                    m.path.strip_len(req.uri.path())
                } else {
                    0
                };
                (m.route.clone(), strip)
            })
        };
        let snap_consumers = snap.consumers.clone();
        ctx.plugin.plans = snap.plans.clone();
        ctx.snapshot = Some(snap);
        let Some((route, strip)) = found else {
            ctx.error = Some("no_route");
            answer::error(session, ctx, 404, "no route matches this request").await;
            return Ok(true);
        };
        ctx.strip = strip;
        ctx.plugin.route = route.name.clone();
        ctx.route = Some(route.clone());
        traced::start(session, ctx);
        ctx.websocket = stream::wants_websocket(session);
        if ctx.websocket {
            // Either the connection becomes the session or it ends: what the client sends
            // after this request may be frames, never a next request.
            session.set_keepalive(None);
            if route.websocket.is_none() {
                ctx.error = Some("websocket_not_allowed");
                answer::error(session, ctx, 400, "this route does not accept WebSocket upgrades").await;
                return Ok(true);
            }
        }
        ctx.unbounded_reads = route.streaming || ctx.websocket || shape.event_stream;
        if let Some(kind) = ctx.grpc {
            if route.grpc {
                ctx.grpc_deadline = grpc::timeout(session.req_header());
            }
            if kind != grpc::Kind::Grpc && route.grpc_web {
                ctx.web = Some(grpc_web::WebBridge::start(session.req_header_mut(), kind == grpc::Kind::WebText)?);
            }
        }

        let limit = route
            .max_body
            .unwrap_or(ctx.snapshot.as_ref().map(|s| s.file.server.max_body.0).unwrap_or(u64::MAX));
        ctx.max_body = limit;
        let declared = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            ctx.plugin.rejection = Some("body_too_large");
            answer::error(session, ctx, 413, "request body is too large").await;
            return Ok(true);
        }

        ctx.plugin.consumers = snap_consumers;
        ctx.plugin.has_body = bodies::has_body(session);
        for (i, p) in route.plugins.iter().enumerate() {
            if route.auth_end == Some(i) {
                if let Some(a) = auth::gate(&route, &mut ctx.plugin) {
                    answer::write(session, ctx, a, true).await;
                    return Ok(true);
                }
            }
            match chain::request(p, session.req_header_mut(), &mut ctx.plugin).await {
                Ok(Flow::Continue) => {}
                Ok(Flow::Respond(a)) => {
                    answer::write(session, ctx, a, true).await;
                    return Ok(true);
                }
                Err(_) => {
                    ctx.error = Some("plugin_panic");
                    answer::error(session, ctx, 500, "internal error").await;
                    return Ok(true);
                }
            }
        }
        if route.auth_end == Some(route.plugins.len()) {
            if let Some(a) = auth::gate(&route, &mut ctx.plugin) {
                answer::write(session, ctx, a, true).await;
                return Ok(true);
            }
        }
        if let Some(f) = route.function.as_deref() {
            function::respond(session, ctx, f).await;
            return Ok(true);
        }
        if let Some(plan) = route.aggregate.as_deref() {
            aggregate::respond(session, ctx, plan).await;
            return Ok(true);
        }
        if let (true, Some(idle)) = (ctx.websocket, route.websocket) {
            // The session's one idle clock (both directions) replaces the per-read deadline.
            session.set_read_timeout(None);
            crate::listen::arm_websocket(idle);
        }
        Ok(false)
    }

    /// Counts body bytes as they stream, so a chunked body that grows past the limit is
    /// cut off with 413 mid-stream rather than forwarded whole.
    ///
    /// After a 101 the bytes are the upgraded protocol's (WebSocket frames), not a body:
    /// no body limit applies to them.
    async fn request_body_filter(&self, session: &mut Session, body: &mut Option<bytes::Bytes>, end: bool, ctx: &mut Ctx) -> Result<()> {
        if session.was_upgraded() {
            return Ok(());
        }
        if let Some(w) = ctx.web.as_mut() {
            w.request_body(body, end)?;
        }
        bodies::request(session, body, end, ctx).await?;
        // An h2 stream may end with an empty DATA frame; passed on, Pingora writes it to a
        // chunked HTTP/1 upstream as a last chunk and then finishes the body with another, and
        // the upstream reads the second as the start of a request (pingora#935).
        if end && body.as_ref().is_some_and(|b| b.is_empty()) {
            *body = None;
        }
        if let Some(b) = body {
            ctx.body_bytes += b.len() as u64;
            if ctx.body_bytes > ctx.max_body {
                ctx.plugin.rejection = Some("body_too_large");
                return Err(Error::explain(ErrorType::HTTPStatus(413), "request body is too large"));
            }
        }
        Ok(())
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        let (Some(policy), Some(cache)) = (
            ctx.route
                .as_ref()
                .filter(|r| !r.streaming && ctx.grpc.is_none())
                .and_then(|r| r.cache.clone()),
            crate::cache::get(),
        ) else {
            return Ok(());
        };
        if !policy.applies(session.req_header(), ctx.plugin.consumer_name()) {
            ctx.cache_status = Some("BYPASS");
            return Ok(());
        }
        let mut o = pingora_cache::CacheOptionOverrides::default();
        o.wait_timeout = Some(policy.lock_timeout);
        session.cache.enable(cache.store, None, None, Some(cache.lock), Some(o));
        session.cache.set_max_file_size_bytes(cache.store.max_object);
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut Ctx) -> Result<pingora_cache::CacheKey> {
        let policy = ctx
            .route
            .as_ref()
            .and_then(|r| r.cache.clone())
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "cache enabled without a policy"))?;
        let req = session.req_header();
        let host = crate::router::request_host(&req.headers, &req.uri);
        Ok(policy.key(ctx.route_name(), host, req, ctx.plugin.consumer_name()))
    }

    fn response_cache_filter(&self, session: &Session, resp: &ResponseHeader, ctx: &mut Ctx) -> Result<pingora_cache::RespCacheable> {
        let Some(policy) = ctx.route.as_ref().and_then(|r| r.cache.clone()) else {
            return Ok(pingora_cache::RespCacheable::Uncacheable(
                pingora_cache::NoCacheReason::NeverEnabled,
            ));
        };
        let auth = session.req_header().headers.contains_key(http::header::AUTHORIZATION);
        Ok(policy.cacheable(resp, auth))
    }

    fn cache_vary_filter(
        &self,
        meta: &pingora_cache::CacheMeta,
        _ctx: &mut Ctx,
        req: &RequestHeader,
    ) -> Option<pingora_cache::key::HashBinary> {
        crate::cache::variance(meta, req)
    }

    /// Stale-while-revalidate (no error) and stale-if-error (upstream failed) are both
    /// allowed; Pingora then checks the entry's own windows.
    fn should_serve_stale(&self, _session: &mut Session, _ctx: &mut Ctx, error: Option<&Error>) -> bool {
        error.is_none_or(|e| matches!(e.esource(), ErrorSource::Upstream) || matches!(e.etype(), ErrorType::HTTPStatus(500..=599)))
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let route = ctx
            .route
            .clone()
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(500), "no route in upstream_peer"))?;
        let Some(cluster) = route.cluster.as_ref() else {
            return Err(Error::explain(ErrorType::HTTPStatus(500), "route has no upstream"));
        };
        let mut key_buf = [0u8; 16];
        let key = forward::hash_key(session, ctx, cluster, &mut key_buf);
        // A stale pooled connection is retried (Pingora's ReusedOnly) on a fresh one, to
        // the same target if no other is left; connect failures always move on.
        let picked =
            cluster
                .select(key, &ctx.upstream.tried)
                .or_else(|| if ctx.upstream.reuse_retry { cluster.select(key, &[]) } else { None });
        let Some(idx) = picked else {
            ctx.error = Some("no_healthy_target");
            return Err(Error::explain(ErrorType::HTTPStatus(503), "no healthy target"));
        };
        ctx.upstream.tried.push(idx);
        ctx.upstream.target = Some(cluster.targets[idx].name.clone());
        ctx.upstream.in_flight = Some(crate::upstream::InFlight::new(cluster.clone(), idx));
        ctx.upstream.started = Some(Instant::now());
        ctx.upstream.failed = false;
        traced::attempt(session, ctx, &cluster.name);
        let mut peer = cluster.peer(idx, route.timeout);
        if ctx.unbounded_reads {
            peer.options.read_timeout = None;
        }
        if let Some(d) = ctx.grpc_deadline {
            let left = grpc::left(d, ctx.start);
            peer.options.read_timeout = Some(peer.options.read_timeout.map_or(left, |t| t.min(left)));
        }
        Ok(peer)
    }

    /// Pool reuse per upstream: a low share of reused connections means the pool is too
    /// small or the targets close idle connections early.
    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(c) = ctx.route.as_ref().and_then(|r| r.cluster.as_ref()) {
            if reused {
                c.pool.reused.inc();
            } else {
                c.pool.new.inc();
            }
        }
        Ok(())
    }

    fn error_while_proxy(&self, peer: &HttpPeer, session: &mut Session, e: Box<Error>, ctx: &mut Ctx, client_reused: bool) -> Box<Error> {
        traced::attempt_failed(ctx, &e);
        let mut e = e.more_context(format!("Peer: {peer}"));
        // A body a plugin has seen (and maybe rewritten) is not sent again.
        let body_seen = ctx.plugin.body_hooks & PluginCtx::BODY_REQUEST != 0;
        if body_seen || !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated() {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
            ctx.upstream.reuse_retry = e.retry();
        }
        // Only what the target caused counts against it: a client that hangs up mid-body,
        // or a body the gateway refused, says nothing about the target.
        if observe::target_caused(&e) {
            observe::attempt_failed(ctx);
            if let Some(f) = ctx.upstream.in_flight.take() {
                f.report(false);
            }
        }
        e
    }

    fn fail_to_connect(&self, session: &mut Session, _peer: &HttpPeer, ctx: &mut Ctx, mut e: Box<Error>) -> Box<Error> {
        traced::attempt_failed(ctx, &e);
        observe::attempt_failed(ctx);
        let retry = ctx.route.as_ref().and_then(|r| r.cluster.as_ref()).is_some_and(|c| {
            session.req_header().method.is_idempotent()
                && ctx.upstream.tried.len() <= c.retries as usize
                && c.select(None, &ctx.upstream.tried).is_some()
        });
        if retry {
            if let Some(c) = ctx.route.as_ref().and_then(|r| r.cluster.as_ref()) {
                crate::metrics::METRICS.retries.with_label_values(&[&c.name]).inc();
            }
        }
        if let Some(f) = ctx.upstream.in_flight.take() {
            f.report(false);
        }
        e.set_retry(retry);
        e
    }

    async fn upstream_request_filter(&self, session: &mut Session, upstream: &mut RequestHeader, ctx: &mut Ctx) -> Result<()> {
        forward::upstream_headers(session, upstream, ctx)?;
        if let Some(w) = ctx.web.as_ref() {
            w.upstream_request(upstream);
        }
        bodies::upstream_framing(upstream, ctx)?;
        if let Some(route) = ctx.route.clone() {
            for p in route.plugins.iter() {
                if chain::upstream_request(p, upstream, &ctx.plugin).is_err() {
                    ctx.error = Some("plugin_panic");
                    return Err(Error::explain(ErrorType::HTTPStatus(500), "plugin panicked"));
                }
            }
        }
        traced::inject(ctx, upstream);
        Ok(())
    }

    async fn response_filter(&self, session: &mut Session, resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
        let cache_header = ctx.route.as_ref().and_then(|r| r.cache.clone()).map(|policy| {
            let status = match ctx.cache_status {
                Some(s) => s,
                None => crate::cache::status(session.cache.phase()),
            };
            ctx.cache_status = Some(status);
            (policy.status_header.clone(), http::HeaderValue::from_static(status))
        });
        if let Some(started) = ctx.upstream.started {
            ctx.upstream.elapsed.get_or_insert_with(|| started.elapsed());
        }
        ctx.upstream.status = Some(resp.status.as_u16());
        if ctx.websocket && resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
            ctx.ws_open = Some(stream::Open::start(ctx.route_name()));
            crate::listen::websocket_upgraded();
        }
        if ctx.grpc.is_some() {
            // Trailers-only answers carry the status in the header block.
            let (code, rewrite) = grpc::settle(&resp.headers, ctx.grpc_deadline, ctx.start);
            ctx.grpc_status = code;
            if rewrite {
                for (n, v) in grpc::DEADLINE {
                    resp.insert_header(n, v)?;
                }
            }
        }
        forward::response_headers(resp, ctx, cache_header);
        if let Some(w) = ctx.web.as_mut() {
            w.response_header(resp)?;
        }
        bodies::settle_response(session, ctx);
        if let Some(route) = ctx.route.clone() {
            for p in route.plugins.iter() {
                if chain::response(p, resp, &ctx.plugin).is_err() {
                    ctx.error = Some("plugin_panic");
                    return Err(Error::explain(ErrorType::HTTPStatus(500), "plugin panicked"));
                }
            }
        }
        bodies::response_framing(session, resp, ctx)
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        if let Some(w) = ctx.web.as_mut() {
            w.response_body(body, end);
        }
        bodies::response(session, body, end, ctx)?;
        Ok(None)
    }

    /// A gRPC stream still sending when its `grpc-timeout` runs out is cut at its next
    /// message (a quiet one by the read timeout, which is what is left of the deadline):
    /// the client's deadline bounds the whole call, not only each wait.
    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<bytes::Bytes>,
        end: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        if let Some(d) = ctx.grpc_deadline {
            if !end && ctx.start.elapsed() >= d {
                ctx.grpc_status = Some(4);
                ctx.error = Some("grpc_deadline");
                return Err(Error::explain(ErrorType::ReadTimedout, "grpc-timeout passed mid-stream"));
            }
        }
        Ok(None)
    }

    fn upstream_response_trailer_filter(&self, _session: &mut Session, trailers: &mut http::HeaderMap, ctx: &mut Ctx) -> Result<()> {
        if ctx.grpc.is_some() {
            let (code, rewrite) = grpc::settle(trailers, ctx.grpc_deadline, ctx.start);
            ctx.grpc_status = code;
            if rewrite {
                for (n, v) in grpc::DEADLINE {
                    trailers.insert(n, http::HeaderValue::from_static(v));
                }
            }
        }
        Ok(())
    }

    /// grpc-web has no trailers: they become the body's last frame.
    async fn response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut Ctx,
    ) -> Result<Option<bytes::Bytes>> {
        match ctx.web.as_mut() {
            Some(w) => w.trailers(trailers),
            None => Ok(None),
        }
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let (code, message) = classify(e);
        if code > 0 && session.response_written().is_none() {
            if ctx.error.is_none() {
                ctx.error = Some(match code {
                    504 => "upstream_timeout",
                    502 => "upstream_error",
                    400 => "bad_request",
                    _ => "error",
                });
            }
            answer::error(session, ctx, code, message).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        observe::finish(session, e, ctx);
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, error: &Error) -> bool {
        // Upstream failures are reported in the access log and metrics; a client hanging up
        // is not worth an error line.
        matches!(error.esource(), ErrorSource::Downstream)
    }
}

/// Whether the connection may stay open after this request as far as HTTP/1.0 goes: an
/// HTTP/1.0 request keeps it only with `Connection: keep-alive` (RFC 9112 9.3).
fn http10_keepalive(req: &RequestHeader) -> bool {
    req.version != http::Version::HTTP_10
        || req.headers.get_all(http::header::CONNECTION).iter().any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"keep-alive"))
        })
}

/// Maps a proxy failure to the status the client gets.
fn classify(e: &Error) -> (u16, &'static str) {
    use ErrorType::*;
    if crate::listen::is_framing_error(e.root_cause()) {
        return (400, "malformed request body");
    }
    match (e.etype(), e.esource()) {
        (HTTPStatus(503), _) => (503, "no healthy upstream target"),
        (HTTPStatus(413), _) => (413, "request body is too large"),
        (HTTPStatus(c), _) => (*c, "request failed"),
        (ConnectTimedout | ReadTimedout | WriteTimedout, ErrorSource::Upstream) => (504, "upstream timed out"),
        (_, ErrorSource::Upstream) => (502, "upstream failed"),
        (ReadError | WriteError | ConnectionClosed, ErrorSource::Downstream) => (0, ""),
        (ReadTimedout, ErrorSource::Downstream) => (408, "request timed out"),
        (_, ErrorSource::Downstream) => (400, "bad request"),
        _ => (500, "internal error"),
    }
}
