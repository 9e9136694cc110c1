//! One request's spans. The SERVER span is made once the route is known (its ratio and its
//! name depend on it) but dated from the request's arrival; requests answered before routing
//! get theirs at the end, dated the same way. Every upstream attempt is its own CLIENT span,
//! so a retry shows as two.

use once_cell::sync::Lazy;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracer;
use pingora_http::RequestHeader;
use std::time::{Instant, SystemTime};

static PROPAGATOR: Lazy<TraceContextPropagator> = Lazy::new(TraceContextPropagator::new);

pub struct ReqTrace {
    tracer: SdkTracer,
    /// The incoming context with the SERVER span in it: the parent of every attempt.
    server: Context,
    /// The attempt in progress, with its CLIENT span.
    client: Option<Context>,
    attempts: u32,
}

/// What a request says about itself when its SERVER span starts.
pub struct Arrival<'a> {
    pub req: &'a RequestHeader,
    pub started: Instant,
    pub route: Option<&'a str>,
    pub client_ip: std::net::IpAddr,
    pub request_id: &'a str,
}

impl ReqTrace {
    pub fn start(tracer: &SdkTracer, a: Arrival<'_>) -> ReqTrace {
        // An invalid or absent `traceparent` gives an empty context: a new trace.
        let parent = PROPAGATOR.extract(&opentelemetry_http::HeaderExtractor(&a.req.headers));
        // The sampler sees only the name and kind (the ratio sampler reads neither); the
        // name and attributes that cost allocations are added only to a span that records.
        let method = crate::metrics::method_label(&a.req.method);
        let builder = tracer
            .span_builder(method)
            .with_kind(SpanKind::Server)
            .with_start_time(arrival(a.started));
        let mut span = tracer.build_with_context(builder, &parent);
        if span.is_recording() {
            if let Some(r) = a.route {
                span.update_name(format!("{method} {r}"));
                span.set_attribute(KeyValue::new("http.route", r.to_string()));
            }
            span.set_attributes([
                KeyValue::new("http.request.method", method),
                KeyValue::new("url.path", a.req.uri.path().to_string()),
                KeyValue::new("client.address", a.client_ip.to_string()),
                KeyValue::new("gatehouse.request_id", a.request_id.to_string()),
            ]);
        }
        ReqTrace {
            tracer: tracer.clone(),
            server: parent.with_span(span),
            client: None,
            attempts: 0,
        }
    }

    /// A new upstream attempt: ends the one before it (a retry), starts its CLIENT span.
    pub fn attempt(&mut self, method: &http::Method, upstream: &str, target: &str) {
        self.attempt_failed("retried");
        let method = crate::metrics::method_label(method);
        let builder = self.tracer.span_builder(method).with_kind(SpanKind::Client);
        let mut span = self.tracer.build_with_context(builder, &self.server);
        if span.is_recording() {
            span.set_attributes(self.attempt_attributes(method, upstream, target));
        }
        self.attempts += 1;
        self.client = Some(self.server.with_span(span));
    }

    fn attempt_attributes(&self, method: &'static str, upstream: &str, target: &str) -> Vec<KeyValue> {
        let mut attributes = vec![
            KeyValue::new("http.request.method", method),
            KeyValue::new("gatehouse.upstream", upstream.to_string()),
        ];
        match target.rsplit_once(':') {
            Some((host, port)) => {
                attributes.push(KeyValue::new("server.address", host.trim_matches(['[', ']']).to_string()));
                if let Ok(p) = port.parse::<i64>() {
                    attributes.push(KeyValue::new("server.port", p));
                }
            }
            None => attributes.push(KeyValue::new("server.address", target.to_string())),
        }
        if self.attempts > 0 {
            attributes.push(KeyValue::new("http.request.resend_count", i64::from(self.attempts)));
        }
        attributes
    }

    /// The attempt in progress failed before an answer (connect refused, reset, timeout).
    pub fn attempt_failed(&mut self, error_type: &str) {
        if let Some(cx) = self.client.take() {
            let span = cx.span();
            if span.is_recording() {
                span.set_attribute(KeyValue::new("error.type", error_type.to_string()));
                span.set_status(Status::error(error_type.to_string()));
            }
            span.end();
        }
    }

    /// The upstream answered: the attempt ends with its status.
    pub fn attempt_answered(&mut self, status: u16) {
        if let Some(cx) = self.client.take() {
            let span = cx.span();
            if span.is_recording() {
                span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status)));
                if status >= 500 {
                    span.set_attribute(KeyValue::new("error.type", status.to_string()));
                    span.set_status(Status::error(""));
                }
            }
            span.end();
        }
    }

    /// `traceparent` (and `tracestate`, or none) for the upstream: its parent is the attempt's
    /// CLIENT span. The SDK's propagator writes the same header through `core::fmt` (about
    /// 4,000 instructions a request, the largest cost of an unsampled trace); this writes
    /// its fixed 55 bytes directly. `tests` check the two agree.
    pub fn inject(&self, upstream: &mut RequestHeader) {
        let cx = self.client.as_ref().unwrap_or(&self.server);
        let span = cx.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return;
        }
        let tp = traceparent(sc);
        if let Ok(v) = http::HeaderValue::from_bytes(&tp) {
            let _ = upstream.insert_header("traceparent", v);
        }
        let state = sc.trace_state().header();
        if state.is_empty() {
            upstream.remove_header("tracestate");
        } else if let Err(e) = upstream.insert_header("tracestate", state) {
            log::debug!("tracing: cannot set tracestate: {e}");
        }
    }

    /// 32 hex digits, for the access log line, written into `buf`.
    pub fn trace_id<'b>(&self, buf: &'b mut [u8; 32]) -> &'b str {
        hex_into(&self.server.span().span_context().trace_id().to_bytes(), buf);
        std::str::from_utf8(buf).unwrap_or("")
    }

    pub fn finish(mut self, end: End<'_>) {
        match end.upstream_status {
            Some(s) => self.attempt_answered(s),
            None => self.attempt_failed(end.error.unwrap_or("unfinished")),
        }
        let span = self.server.span();
        if span.is_recording() {
            span.set_attribute(KeyValue::new("http.response.status_code", i64::from(end.status)));
            if let Some(c) = end.consumer {
                span.set_attribute(KeyValue::new("gatehouse.consumer", c.to_string()));
            }
            if !end.upstream.is_empty() {
                span.set_attribute(KeyValue::new("gatehouse.upstream", end.upstream.to_string()));
            }
            if let Some(r) = end.rejection {
                span.set_attribute(KeyValue::new("gatehouse.rejection", r));
            }
            // Semantic conventions: a server span is an error on 5xx (and on a failure
            // with no answer at all), not on the client's own 4xx.
            let error = end
                .error
                .map(str::to_string)
                .or_else(|| (end.status >= 500).then(|| end.status.to_string()));
            if let Some(e) = error {
                span.set_attribute(KeyValue::new("error.type", e.clone()));
                span.set_status(Status::error(e));
            }
        }
        span.end();
    }
}

pub struct End<'a> {
    pub status: u16,
    pub upstream_status: Option<u16>,
    pub upstream: &'a str,
    pub consumer: Option<&'a str>,
    pub rejection: Option<&'static str>,
    pub error: Option<&'a str>,
}

/// The wall-clock time the request arrived: now, less what the monotonic clock says passed.
fn arrival(started: Instant) -> SystemTime {
    SystemTime::now().checked_sub(started.elapsed()).unwrap_or_else(SystemTime::now)
}

fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
}

/// `00-<trace id>-<span id>-<flags>`: version 00, lower-case hex, only the sampled flag (what
/// the SDK's propagator sends). An empty `tracestate` is removed rather than sent empty (by
/// `inject`), so a client's `tracestate` never rides along with a trace it does not belong to.
fn traceparent(sc: &opentelemetry::trace::SpanContext) -> [u8; 55] {
    let mut out = [b'-'; 55];
    out[0] = b'0';
    out[1] = b'0';
    hex_into(&sc.trace_id().to_bytes(), &mut out[3..35]);
    hex_into(&sc.span_id().to_bytes(), &mut out[36..52]);
    hex_into(
        &[(sc.trace_flags() & opentelemetry::trace::TraceFlags::SAMPLED).to_u8()],
        &mut out[53..55],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    use std::collections::HashMap;

    /// The SDK's propagator's output for the same context.
    fn sdk(sc: SpanContext) -> HashMap<String, String> {
        let mut out = HashMap::new();
        PROPAGATOR.inject_context(&Context::new().with_remote_span_context(sc), &mut out);
        out
    }

    #[test]
    fn traceparent_is_what_the_sdk_propagator_writes() {
        for (t, s, f) in [
            (
                0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736u128,
                0x00f0_67aa_0ba9_02b7u64,
                TraceFlags::SAMPLED,
            ),
            (1, 1, TraceFlags::default()),
            (u128::MAX, u64::MAX, TraceFlags::new(0xff)),
        ] {
            let sc = SpanContext::new(TraceId::from(t), SpanId::from(s), f, true, TraceState::default());
            let ours = String::from_utf8(traceparent(&sc).to_vec()).unwrap();
            assert_eq!(Some(&ours), sdk(sc.clone()).get("traceparent"), "{t:x} {s:x} {f:?}");
            let mut buf = [0u8; 32];
            hex_into(&sc.trace_id().to_bytes(), &mut buf);
            assert_eq!(std::str::from_utf8(&buf).unwrap(), sc.trace_id().to_string());
        }
    }
}
