//! Aggregate routes: the client request, once past the route's request-side plugins (auth,
//! limits and quota run once for it), is answered by calling every backend at the same time
//! and merging their JSON. Nothing is proxied; the access log, the route's metrics and its
//! usage event count the client request once, and each backend has its own latency
//! histogram and failure counter.
//!
//! The answer comes within the route's `timeout`: each backend is cut at its own timeout
//! (never later than the route's), and a failed required backend (or any failure with
//! `on_partial = "502"`) answers 502 at once, cancelling the calls still running.

pub mod call;
mod fill;
mod merge;
pub mod plan;

pub use call::now_ms;
pub use plan::Plan;

use super::answer;
use super::ctx::Ctx;
use crate::config::{Merge, OnPartial};
use call::Failure;
use futures_util::stream::{FuturesUnordered, StreamExt};
use gatehouse_plugins::Answer;
use pingora_proxy::Session;
use serde_json::Value;

static COMPLETED: http::HeaderName = http::HeaderName::from_static("x-gatehouse-completed");

pub async fn respond(session: &mut Session, ctx: &mut Ctx, plan: &Plan) {
    let consumer = ctx.plugin.consumer_name();
    let mut targets = Vec::with_capacity(plan.backends.len());
    for b in &plan.backends {
        match fill::fill(&b.template, session.req_header(), consumer) {
            Ok(t) => targets.push(t),
            Err(m) => {
                ctx.error = Some("aggregate_bad_request");
                let status = if m == fill::Missing::Consumer { 401 } else { 400 };
                answer::error(session, ctx, status, &m.message()).await;
                return;
            }
        }
    }
    let fwd = forward(ctx);
    let now = tokio::time::Instant::now();
    let route_deadline = now + plan.timeout;
    let mut pending: FuturesUnordered<_> = plan
        .backends
        .iter()
        .zip(&targets)
        .enumerate()
        .map(|(i, (b, target))| {
            let fwd = &fwd;
            async move {
                let started = std::time::Instant::now();
                let deadline = route_deadline.min(now + b.timeout);
                let r = match &b.call {
                    plan::Call::Cluster(c) => call::fetch(b, c, target, fwd, plan.max_body, deadline).await,
                    plan::Call::Function(f) => call::invoke(b, f, target, fwd, plan.max_body, deadline).await,
                };
                b.duration.observe(started.elapsed().as_secs_f64());
                (i, r)
            }
        })
        .collect();
    let mut results: Vec<Option<Result<Value, Failure>>> = plan.backends.iter().map(|_| None).collect();
    let mut fatal = None;
    while let Some((i, r)) = pending.next().await {
        let b = &plan.backends[i];
        let r = r.and_then(|v| match plan.merge {
            Merge::Shallow if !v.is_object() => Err(Failure::NotObject),
            _ => Ok(v),
        });
        if let Err(f) = &r {
            b.failed(f.reason());
            log::warn!(
                "route {}: aggregate backend {} (upstream {}) failed: {} (request {})",
                ctx.route_name(),
                b.name,
                b.upstream(),
                f.detail(),
                ctx.plugin.request_id
            );
            if b.required || plan.on_partial == OnPartial::Fail {
                fatal = Some(i);
            }
        }
        results[i] = Some(r);
        if fatal.is_some() {
            break;
        }
    }
    // Calls still running when a required backend failed are cancelled here.
    drop(pending);

    let answered = results.iter().filter(|r| matches!(r, Some(Ok(_)))).count();
    let failed = fatal.or_else(|| (answered == 0).then_some(0));
    if let Some(i) = failed {
        let name = &plan.backends[i].name;
        let why = match &results[i] {
            Some(Err(f)) => f.public(),
            _ => "no answer".into(),
        };
        ctx.error = Some("aggregate_failed");
        let a = Answer::error(502, &format!("backend `{name}` failed: {why}"))
            .with_header(COMPLETED.clone(), http::HeaderValue::from_static("false"));
        answer::write(session, ctx, a, true).await;
        return;
    }

    let complete = answered == plan.backends.len();
    let mut errors = serde_json::Map::new();
    let mut parts = Vec::with_capacity(answered);
    for (b, r) in plan.backends.iter().zip(results) {
        match r {
            Some(Ok(v)) => parts.push((&*b.name, merge::filter(v, &b.allow))),
            Some(Err(f)) => {
                errors.insert(b.name.to_string(), Value::String(f.public()));
            }
            None => {
                errors.insert(b.name.to_string(), Value::String("no answer".into()));
            }
        }
    }
    let mut body = merge::merge(plan.merge, parts);
    if plan.include_errors && !errors.is_empty() {
        body.insert("_errors".into(), Value::Object(errors));
    }
    if !complete {
        ctx.error = Some("aggregate_partial");
    }
    let text = Value::Object(body).to_string();
    let flag = http::HeaderValue::from_static(if complete { "true" } else { "false" });
    let a = Answer::new(200, "application/json", text).with_header(COMPLETED.clone(), flag);
    answer::write(session, ctx, a, true).await;
}

/// Who asks, as every backend request says it: the request id, the client address, the
/// scheme and the consumer (the gateway's consumer header; a client's copy is never sent,
/// since no client header is).
fn forward(ctx: &Ctx) -> call::Forward {
    let mut ip = Vec::with_capacity(40);
    gatehouse_plugins::ascii::push_ip(&mut ip, ctx.plugin.client_ip);
    let consumer = ctx.snapshot.as_ref().and_then(|s| {
        let c = ctx.plugin.consumer.as_ref()?;
        Some((s.consumer_header.clone(), c.header_value.clone()?))
    });
    call::Forward {
        request_id: ctx.request_id.clone(),
        client_ip: http::HeaderValue::from_bytes(&ip).unwrap_or_else(|_| http::HeaderValue::from_static("unknown")),
        proto: if ctx.tls.is_some() { "https" } else { "http" },
        consumer,
    }
}
