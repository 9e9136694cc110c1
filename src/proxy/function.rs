//! Routes whose upstream is a function (`type = "aws_lambda"`): once the request-side
//! plugins pass, the request (body read whole, up to the route's `max_body`) becomes one
//! invocation, and the function's answer is written as the response. Nothing is proxied.

use super::answer;
use super::chain;
use super::ctx::Ctx;
use crate::config::Payload;
use crate::upstream::function::{apigw, Function, InvokeError};
use bytes::BytesMut;
use gatehouse_plugins::Answer;
use pingora_proxy::Session;
use std::time::Instant;

/// Lambda's own cap on a synchronous response is 6 MB.
const MAX_RESPONSE: usize = 6 << 20;

/// Request headers a function never sees: they describe the client's connection.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

pub async fn respond(session: &mut Session, ctx: &mut Ctx, f: &Function) {
    let mut body = BytesMut::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if (body.len() + chunk.len()) as u64 > ctx.max_body {
                    ctx.plugin.rejection = Some("body_too_large");
                    answer::error(session, ctx, 413, "request body is too large").await;
                    return;
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                // A client that hangs up mid-body gets no answer; a malformed one gets 400.
                ctx.error = Some("bad_request");
                if crate::listen::is_framing_error(e.root_cause()) {
                    answer::error(session, ctx, 400, "malformed request body").await;
                }
                return;
            }
        }
    }
    ctx.body_bytes = body.len() as u64;
    let payload = match f.payload {
        Payload::Raw => body.to_vec(),
        Payload::ApigwV2 => event(session, ctx, &body),
    };
    ctx.upstream.target = Some(f.target.clone());
    let started = Instant::now();
    ctx.upstream.started = Some(started);
    let result = f.invoke(payload, MAX_RESPONSE).await;
    ctx.upstream.elapsed = Some(started.elapsed());
    let invoked = match result {
        Ok(i) => i,
        Err(e) => {
            log::warn!(
                "route {}: function upstream {}: {e} (request {})",
                ctx.route_name(),
                f.name,
                ctx.plugin.request_id
            );
            let (status, reason, message) = match e {
                InvokeError::Timeout => (504, "upstream_timeout", "function timed out"),
                _ => (502, "function_invoke_failed", "function could not be invoked"),
            };
            ctx.error = Some(reason);
            answer::error(session, ctx, status, message).await;
            return;
        }
    };
    if let Some(kind) = &invoked.function_error {
        let t = apigw::error_type(&invoked.payload).unwrap_or_else(|| kind.clone());
        log::warn!(
            "route {}: function upstream {} failed ({kind}): {t} (request {})",
            ctx.route_name(),
            f.name,
            ctx.plugin.request_id
        );
        ctx.error = Some("function_error");
        answer::error(session, ctx, 502, "function failed").await;
        return;
    }
    let a = match f.payload {
        Payload::Raw => Answer::new(200, "application/json", invoked.payload),
        Payload::ApigwV2 => match apigw::response(&invoked.payload) {
            Ok(r) => Answer {
                status: r.status,
                headers: r.headers,
                body: r.body,
                error: None,
            },
            Err(e) => {
                log::warn!(
                    "route {}: function upstream {}: {e} (request {})",
                    ctx.route_name(),
                    f.name,
                    ctx.plugin.request_id
                );
                ctx.error = Some("function_bad_response");
                answer::error(session, ctx, 502, "function answered with an invalid response").await;
                return;
            }
        },
    };
    ctx.upstream.status = Some(a.status);
    answer::write(session, ctx, a, true).await;
}

/// The API Gateway event: the request's headers as the route's plugins leave them for an
/// upstream (credentials hidden, headers set), with the gateway's forwarding headers and
/// consumer instead of any the client sent.
fn event(session: &Session, ctx: &Ctx, body: &[u8]) -> Vec<u8> {
    let mut up = session.req_header().clone();
    if let Some(route) = ctx.route.as_ref() {
        for p in route.plugins.iter() {
            let _ = chain::upstream_request(p, &mut up, &ctx.plugin);
        }
    }
    let mut headers = up.headers.clone();
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
    let mut ip = Vec::with_capacity(40);
    gatehouse_plugins::ascii::push_ip(&mut ip, ctx.plugin.client_ip);
    let ip = String::from_utf8_lossy(&ip).into_owned();
    if let Ok(v) = http::HeaderValue::from_str(&ip) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert(
        "x-forwarded-proto",
        http::HeaderValue::from_static(if ctx.tls.is_some() { "https" } else { "http" }),
    );
    if let Some(id) = &ctx.request_id {
        headers.insert("x-request-id", id.clone());
    }
    if let Some(snap) = ctx.snapshot.as_ref() {
        headers.remove(&snap.consumer_header);
        if let Some(v) = ctx.plugin.consumer.as_ref().and_then(|c| c.header_value.clone()) {
            headers.insert(snap.consumer_header.clone(), v);
        }
    }
    let req = session.req_header();
    let host = crate::router::request_host(&req.headers, &req.uri);
    apigw::event(&apigw::Request {
        method: req.method.as_str(),
        path: req.uri.path(),
        query: req.uri.query().unwrap_or(""),
        headers: &headers,
        body,
        source_ip: &ip,
        request_id: &ctx.plugin.request_id,
        consumer: ctx.plugin.consumer_name(),
        route: ctx.route_name(),
        host,
        time_epoch_ms: super::aggregate::now_ms(),
    })
}
