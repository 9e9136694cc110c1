//! The request phases' side of tracing (`crate::trace`): nothing here runs unless the
//! snapshot has a `[tracing]` table.

use super::ctx::Ctx;
use crate::trace::request::{Arrival, ReqTrace};
use pingora_http::RequestHeader;
use pingora_proxy::Session;

/// The SERVER span, once the route (its ratio and its name) is known.
pub fn start(session: &Session, ctx: &mut Ctx) {
    let Some(tracer) = ctx.route.as_ref().and_then(|r| r.tracer.as_ref()) else {
        return;
    };
    let t = ReqTrace::start(tracer, arrival(session.req_header(), ctx));
    ctx.trace = Some(Box::new(t));
}

fn arrival<'a>(req: &'a RequestHeader, ctx: &'a Ctx) -> Arrival<'a> {
    Arrival {
        req,
        started: ctx.start,
        route: ctx.route.as_ref().map(|r| &*r.name),
        client_ip: ctx.plugin.client_ip,
        request_id: &ctx.plugin.request_id,
    }
}

pub fn attempt(session: &Session, ctx: &mut Ctx, upstream: &str) {
    if let (Some(t), Some(target)) = (ctx.trace.as_mut(), ctx.upstream.target.as_deref()) {
        t.attempt(&session.req_header().method, upstream, target);
    }
}

pub fn attempt_failed(ctx: &mut Ctx, e: &pingora_error::Error) {
    if let Some(t) = ctx.trace.as_mut() {
        t.attempt_failed(e.etype().as_str());
    }
}

pub fn inject(ctx: &Ctx, upstream: &mut RequestHeader) {
    if let Some(t) = ctx.trace.as_ref() {
        t.inject(upstream);
    }
}

/// The request's trace at its end: the one started at routing, or, for a request answered
/// before any route took it, one made now and dated from its arrival.
pub fn take(session: &Session, ctx: &mut Ctx) -> Option<Box<ReqTrace>> {
    if let Some(t) = ctx.trace.take() {
        return Some(t);
    }
    let tracer = ctx.snapshot.as_ref()?.tracer.as_ref()?;
    Some(Box::new(ReqTrace::start(tracer, arrival(session.req_header(), ctx))))
}
