//! The end of a request: metrics, access log line, plugin log hooks.

use super::ctx::Ctx;
use crate::access_log::Line;
use crate::metrics::METRICS;
use pingora_error::Error;
use pingora_proxy::Session;

pub fn finish(session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
    let status = session
        .response_written()
        .map(|r| r.status.as_u16())
        .or(ctx.own_status)
        .unwrap_or(0);
    let elapsed = ctx.start.elapsed();
    if let (Some(started), None) = (ctx.upstream.started, ctx.upstream.elapsed) {
        ctx.upstream.elapsed = Some(started.elapsed());
    }
    let bytes_in = session.body_bytes_read();
    let bytes_out = session.body_bytes_sent();
    let target = ctx.upstream.target.clone();
    let websocket = ctx
        .ws_open
        .take()
        .map(|open| open.finish(ctx.route_name(), bytes_in, bytes_out))
        .is_some();

    let trace = super::traced::take(session, ctx);
    let mut trace_buf = [0u8; 32];
    let trace_id = trace.as_ref().map(|t| t.trace_id(&mut trace_buf));
    let req = session.req_header();
    let metrics_on = ctx.snapshot.as_ref().is_none_or(|s| s.file.metrics.enabled);
    if metrics_on {
        record_metrics(crate::metrics::method_label(&req.method), status, elapsed, bytes_in, bytes_out, ctx);
        if ctx.grpc.is_some() {
            // A method the upstream knows is a bounded set; anything else is `_other`.
            let known = ctx.upstream.status.is_some() && ctx.grpc_status != Some(12);
            super::grpc::record(ctx.route_name(), super::grpc::method_label(req.uri.path(), known), ctx.grpc_status);
        }
    }
    if let Some(route) = ctx.route.as_ref() {
        if let Some(s) = route.alerts.as_ref() {
            s.record(status, elapsed);
        }
        for p in route.plugins.iter() {
            super::chain::log(p, status, &ctx.plugin);
        }
    }
    if let Some(snap) = ctx.snapshot.as_ref() {
        if snap.access_log.enabled() {
            let host = crate::router::request_host(&req.headers, &req.uri);
            let err_text = e.map(error_text);
            snap.access_log.write(&Line {
                time: std::time::SystemTime::now(),
                request_id: &ctx.plugin.request_id,
                client_ip: ctx.plugin.client_ip,
                method: req.method.as_str(),
                host,
                path: req.uri.path(),
                status,
                route: ctx.route_name(),
                upstream: ctx.route.as_ref().and_then(|r| r.cluster.as_ref()).map(|c| &*c.name).unwrap_or(""),
                target: target.as_deref().unwrap_or(""),
                bytes_in,
                bytes_out,
                duration_ms: elapsed.as_secs_f64() * 1000.0,
                upstream_ms: ctx.upstream.elapsed.map(|d| d.as_secs_f64() * 1000.0),
                consumer: ctx.plugin.consumer_name(),
                rejection: ctx.plugin.rejection.or(ctx.error),
                error: err_text,
                trace_id,
                websocket,
                grpc_status: ctx.grpc.and(ctx.grpc_status),
                grpc_method: ctx.grpc.map(|_| req.uri.path()),
                tls: ctx.tls.as_ref().map(|t| {
                    let info = ctx.tls_info();
                    crate::access_log::TlsFields {
                        version: &t.version,
                        alpn: if req.version == http::Version::HTTP_2 { "h2" } else { "http/1.1" },
                        sni: info.and_then(|i| i.sni.as_deref()),
                        client_subject: info.and_then(|i| i.client.as_ref()).map(|c| c.subject.as_str()),
                        client_verified: info.and_then(|i| i.client.as_ref()).is_some_and(|c| c.verified),
                    }
                }),
            });
        }
    }
    if crate::metering::enabled() {
        meter(session, ctx, status, elapsed, (bytes_in as u64, bytes_out as u64), trace_id);
    }
    if let Some(t) = trace {
        t.finish(crate::trace::request::End {
            status,
            upstream_status: ctx.upstream.status,
            upstream: ctx.route.as_ref().and_then(|r| r.cluster.as_ref()).map(|c| &*c.name).unwrap_or(""),
            consumer: ctx.plugin.consumer_name(),
            rejection: ctx.plugin.rejection.or(ctx.error),
            error: e.map(error_text),
        });
    }
    // Tells the circuit breaker how the target did, and releases its in-flight slot. An
    // error of the client's or the gateway's own says nothing about the target.
    if let Some(f) = ctx.upstream.in_flight.take() {
        let outcome = match e {
            Some(e) if target_caused(e) => Some(false),
            Some(_) => None,
            // A gRPC call fails with HTTP 200: its status says whether the target did.
            None if ctx.grpc_status.is_some_and(super::grpc::target_fault) => Some(false),
            None => ctx.upstream.status.map(|s| s < 500),
        };
        if let Some(ok) = outcome {
            f.report(ok);
        }
    }
}

/// The request's usage event (`[metering]`), refusals included: meters decide what bills.
fn meter(session: &Session, ctx: &Ctx, status: u16, elapsed: std::time::Duration, bytes: (u64, u64), trace_id: Option<&str>) {
    let req = session.req_header();
    let route = ctx.route.as_ref();
    let meter = route.and_then(|r| r.meter.as_deref());
    let consumer = ctx.plugin.consumer.as_ref();
    let now = std::time::SystemTime::now();
    let usage = crate::metering::Usage {
        arrived: now - elapsed,
        source: crate::metering::source(),
        event_type: meter.map_or(crate::metering::event::DEFAULT_TYPE, |m| m.event_type.as_str()),
        consumer: consumer.map(|c| &*c.name),
        plan: consumer.and_then(|c| c.plan.as_deref()),
        credential: ctx.plugin.credential,
        route: route.map(|r| &*r.name),
        upstream: route.and_then(|r| r.cluster.as_ref()).map(|c| &*c.name),
        method: req.method.as_str(),
        status,
        request_bytes: bytes.0,
        response_bytes: bytes.1,
        latency: elapsed,
        upstream_latency: ctx.upstream.elapsed,
        cache: ctx.cache_status,
        rejection: ctx.plugin.rejection.or(ctx.error),
        trace_id,
        request_id: &ctx.plugin.request_id,
        dimensions: meter.map(|m| (m, req)),
    };
    let sample = crate::metering::sample_of(route.map(|r| &r.name), consumer.map(|c| &c.name), status, elapsed, bytes, now);
    crate::metering::record(&usage, sample);
}

/// The current attempt's target failed without an answer: counted against that target.
pub fn attempt_failed(ctx: &mut Ctx) {
    ctx.upstream.failed = true;
    if let (Some(c), Some(&i)) = (ctx.route.as_ref().and_then(|r| r.cluster.as_ref()), ctx.upstream.tried.last()) {
        if let Some(t) = c.targets.get(i) {
            t.stats.failed();
        }
    }
}

/// Errors the target caused: it refused or timed out a connection, reset or timed out the
/// exchange, or answered with something unreadable. Not: the client going away, a body
/// the gateway refused (413, malformed framing), the gateway's own errors.
/// A certificate that does not verify is named on its own: it is a configuration mistake or
/// an attack, not an outage, and operators alert on it differently.
fn error_text(e: &Error) -> &'static str {
    use pingora_error::{ErrorSource, ErrorType};
    match (e.etype(), e.esource()) {
        (ErrorType::InvalidCert, ErrorSource::Upstream) => "upstream certificate",
        (ErrorType::TLSHandshakeFailure, ErrorSource::Upstream) => "upstream tls handshake",
        (t, _) => t.as_str(),
    }
}

pub fn target_caused(e: &pingora_error::Error) -> bool {
    matches!(e.esource(), pingora_error::ErrorSource::Upstream) && !crate::listen::is_framing_error(e.root_cause())
}

fn record_metrics(method: &'static str, status: u16, elapsed: std::time::Duration, bytes_in: usize, bytes_out: usize, ctx: &Ctx) {
    // StatusCode::as_str is a static table: no formatting per request.
    let status_code = http::StatusCode::from_u16(status).ok();
    let status_text = status_code.as_ref().map_or("0", |s| s.as_str());
    match ctx.route.as_ref() {
        Some(route) => route.metrics.requests.inc(method, status, status_text),
        None => METRICS.requests.with_label_values(&["_none", method, status_text]).inc(),
    }
    if let Some(route) = ctx.route.as_ref() {
        route.metrics.duration.observe(elapsed.as_secs_f64());
        route.metrics.bytes_in.inc_by(bytes_in as u64);
        route.metrics.bytes_out.inc_by(bytes_out as u64);
        if let (Some(c), Some(up)) = (route.cluster.as_ref(), ctx.upstream.elapsed) {
            c.duration.observe(up.as_secs_f64());
            let target = ctx.upstream.tried.last().and_then(|&i| c.targets.get(i));
            // An attempt that failed after its status line (a reset mid-body) was counted as
            // an error already.
            if let (Some(t), Some(status), false) = (target, ctx.upstream.status, ctx.upstream.failed) {
                t.stats.answered(status);
                t.stats.duration.observe(up.as_secs_f64());
            }
        }
        if let Some(s) = ctx.cache_status {
            METRICS.cache_requests.with_label_values(&[&route.name, s]).inc();
        }
        if let Some(c) = ctx.plugin.consumer.as_ref().and_then(|c| c.requests.as_ref()) {
            c.inc();
        }
        if let Some(reason) = ctx.plugin.rejection {
            METRICS.rejections.with_label_values(&[&route.name, reason]).inc();
        }
    }
}
