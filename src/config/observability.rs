//! `[tracing]` and the process-log format: what an operator points at their collector.
//! Checked here too, so that `-t` refuses a ratio outside [0, 1] or an endpoint that is not
//! a URL with the key path, before a span is ever made.

use super::values::{Dur, Secret};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TracingCfg {
    /// The OTLP/HTTP traces URL, path included (`http://collector:4318/v1/traces`).
    pub endpoint: String,
    #[serde(default)]
    pub protocol: OtlpProtocol,
    #[serde(default = "d_service")]
    pub service_name: String,
    /// Share of new traces recorded. Parent-based: a request whose `traceparent` says
    /// sampled is always recorded, one that says not sampled never is. The default follows
    /// OpenTelemetry's (record everything); busy edges set it lower.
    #[serde(default = "d_ratio")]
    pub sample_ratio: f64,
    /// Sent with every export (`authorization = "env:OTLP_TOKEN"`).
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Ended spans waiting for export; past it new spans are dropped and counted.
    #[serde(default = "d_queue")]
    pub max_queue: usize,
    /// Spans per export request.
    #[serde(default = "d_batch")]
    pub max_batch: usize,
    /// How long a span waits at most before its batch is sent (OpenTelemetry's default).
    #[serde(default = "d_flush")]
    pub flush_interval: Dur,
    /// One export request, connection included.
    #[serde(default = "d_timeout")]
    pub timeout: Dur,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OtlpProtocol {
    #[default]
    Protobuf,
    Json,
}

/// `[log] format`: process log lines as text (the default) or one JSON object per line.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

fn d_service() -> String {
    "gatehouse".into()
}
fn d_ratio() -> f64 {
    1.0
}
fn d_queue() -> usize {
    2048
}
fn d_batch() -> usize {
    512
}
fn d_flush() -> Dur {
    Dur(Duration::from_secs(5))
}
fn d_timeout() -> Dur {
    Dur(Duration::from_secs(3))
}

/// A sampling ratio as the SDK takes it: a probability.
pub fn check_ratio(key: &str, r: f64, out: &mut Vec<(String, String)>) {
    if !(0.0..=1.0).contains(&r) {
        out.push((key.into(), format!("{r} is not a ratio between 0 and 1")));
    }
}

pub(super) fn validate(f: &super::File, out: &mut Vec<(String, String)>) {
    if let Some(t) = &f.tracing {
        match t.endpoint.parse::<http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
            _ => out.push((
                "tracing.endpoint".into(),
                format!("`{}` is not an http:// or https:// URL", t.endpoint),
            )),
        }
        check_ratio("tracing.sample_ratio", t.sample_ratio, out);
        if t.service_name.is_empty() {
            out.push(("tracing.service_name".into(), "must not be empty".into()));
        }
        if t.max_queue == 0 || t.max_queue > 1_000_000 {
            out.push(("tracing.max_queue".into(), "must be between 1 and 1000000".into()));
        }
        // The exporter holds a batch's room from the start: bounded, like the queue.
        if t.max_batch == 0 || t.max_batch > t.max_queue.clamp(1, 10_000) {
            out.push((
                "tracing.max_batch".into(),
                format!("must be between 1 and max_queue ({}), and at most 10000", t.max_queue),
            ));
        }
        if t.flush_interval.0.is_zero() || t.timeout.0.is_zero() {
            let key = if t.timeout.0.is_zero() {
                "tracing.timeout"
            } else {
                "tracing.flush_interval"
            };
            out.push((key.into(), "must be more than 0s".into()));
        }
        for (name, v) in &t.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() || http::HeaderValue::from_str(&v.value).is_err() {
                out.push((format!("tracing.headers.{name}"), "not a valid header name and value".into()));
            }
        }
    }
    for (name, r) in &f.routes {
        if let Some(ratio) = r.sample_ratio {
            let key = format!("routes.{name}.sample_ratio");
            check_ratio(&key, ratio, out);
            if f.tracing.is_none() {
                out.push((key, "set, but there is no [tracing] table to send spans to".into()));
            }
        }
    }
}
