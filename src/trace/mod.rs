//! OpenTelemetry tracing: a SERVER span per request and a CLIENT span per upstream attempt,
//! W3C trace context in and out, spans exported over OTLP/HTTP off the request path.
//!
//! The SDK does the parts with rules in them (ids, the parent-based ratio sampler, the
//! `traceparent`/`tracestate` grammar, OTLP encoding); this module wires them to the
//! request phases. Per-route ratios are separate tracer providers that share one queue: the
//! SDK's sampler is per provider, and a provider per distinct ratio is built at config load.

mod export;
pub mod request;

pub use export::{close_all, TRACE_METRICS};

use crate::config::TracingCfg;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanProcessor};
use std::sync::Arc;

/// What a snapshot traces with: the collector's queue, and one tracer per sampling ratio.
pub struct Tracing {
    pipeline: Arc<export::Pipeline>,
    providers: Vec<(u64, SdkTracerProvider)>,
}

impl Tracing {
    /// `prev` donates its queue when the `[tracing]` table did not change, so a reload loses
    /// no queued span.
    pub fn new(cfg: &TracingCfg, prev: Option<&Tracing>) -> Tracing {
        let pipeline = match prev {
            Some(p) if p.pipeline.cfg == *cfg => p.pipeline.clone(),
            _ => Arc::new(export::Pipeline::new(cfg.clone())),
        };
        Tracing {
            pipeline,
            providers: Vec::new(),
        }
    }

    /// The tracer for `ratio`, made once per distinct ratio.
    pub fn tracer(&mut self, ratio: f64) -> SdkTracer {
        let bits = ratio.to_bits();
        if let Some((_, p)) = self.providers.iter().find(|(b, _)| *b == bits) {
            return p.tracer("gatehouse");
        }
        let provider = SdkTracerProvider::builder()
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))))
            .with_span_processor(Queue(self.pipeline.clone()))
            .build();
        let tracer = provider.tracer("gatehouse");
        self.providers.push((bits, provider));
        tracer
    }

    pub fn config(&self) -> &TracingCfg {
        &self.pipeline.cfg
    }
}

/// The processor every provider of a snapshot shares: ended spans go to the queue.
/// Shutdown is the process's (`close_all`), not a provider's: a provider dropped at a reload
/// must not stop the queue the next snapshot keeps using.
#[derive(Debug)]
struct Queue(Arc<export::Pipeline>);

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        self.0.push(span);
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: std::time::Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
}
