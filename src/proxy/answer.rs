//! Responses the gateway writes itself: JSON errors and plugin answers.
//! Each carries Content-Length (so keep-alive clients never hang) and the request id.

use super::ctx::Ctx;
use bytes::Bytes;
use gatehouse_plugins::Answer;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// `{"error":"...","status":N,"request_id":"..."}`
pub fn error_body(status: u16, message: &str, request_id: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "error": message, "status": status, "request_id": request_id }).to_string())
}

pub async fn error(session: &mut Session, ctx: &mut Ctx, status: u16, message: &str) {
    write(session, ctx, Answer::error(status, message), false).await;
}

/// Writes an answer. `run_plugins`: whether the route's response-side plugins see it
/// (they do for plugin answers, so e.g. CORS and security headers apply to a 401 too).
pub async fn write(session: &mut Session, ctx: &mut Ctx, mut answer: Answer, run_plugins: bool) {
    ctx.own_status = Some(answer.status);
    // A gRPC client reads a refusal as a status code in a trailers-only answer.
    let grpc = ctx.grpc.filter(|_| answer.status >= 400);
    let built = match grpc {
        Some(kind) => {
            let message = match answer.error.take() {
                Some(m) => m,
                None => String::from_utf8_lossy(&answer.body).into_owned(),
            };
            answer.body = Bytes::new();
            ctx.grpc_status = Some(super::grpc::code_for(answer.status));
            super::grpc::answer(kind, answer.status, &message)
        }
        None => {
            if let Some(message) = answer.error.take() {
                answer.body = error_body(answer.status, &message, &ctx.plugin.request_id);
            }
            ResponseHeader::build(answer.status, Some(answer.headers.len() + 3)).ok()
        }
    };
    let Some(mut resp) = built else {
        log::error!("cannot build a {} response", answer.status);
        return;
    };
    for (n, v) in answer.headers {
        let _ = resp.append_header(n, v);
    }
    if grpc.is_none() {
        let _ = resp.insert_header(http::header::CONTENT_LENGTH, answer.body.len());
    }
    if let Ok(v) = http::HeaderValue::from_str(&ctx.plugin.request_id) {
        let _ = resp.insert_header("x-request-id", v);
    }
    for (n, v) in &ctx.plugin.response_headers {
        if !resp.headers.contains_key(n) {
            let _ = resp.insert_header(n.clone(), v.clone());
        }
    }
    if run_plugins {
        if let Some(route) = ctx.route.clone() {
            for p in route.plugins.iter() {
                // A panic here is counted; the answer goes out as it was.
                let _ = super::chain::response(p, &mut resp, &ctx.plugin);
            }
        }
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    let body = (!head_only && !answer.body.is_empty()).then_some(answer.body);
    let end = body.is_none();
    if let Err(e) = session.write_response_header(Box::new(resp), end).await {
        log::debug!("writing response header failed: {e}");
        return;
    }
    if let Some(b) = body {
        if let Err(e) = session.write_response_body(Some(b), true).await {
            log::debug!("writing response body failed: {e}");
        }
    }
}
