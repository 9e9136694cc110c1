//! `[metering]`: where usage events are spooled and which billing systems they go to, the
//! routes' event types and dimensions, and plan prices. Checked here so that a sink that
//! could never deliver (no URL, a Lago sink without its metric code, a spool that cannot be
//! written) is an error at `-t`, not a silent gap in an invoice.

use super::values::{Dur, Secret, Size};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MeteringCfg {
    pub spool_dir: String,
    #[serde(default = "d_spool_max")]
    pub spool_max: Size,
    /// A segment is sealed past this size; whole segments are what the spool drops or
    /// removes, so this is also the unit of loss when the spool is full.
    #[serde(default = "d_segment")]
    pub segment_size: Size,
    /// CloudEvents `source`; `gatehouse://HOSTNAME` when unset.
    #[serde(default)]
    pub source: Option<String>,
    /// Events waiting in memory for the spool writer; past it they are dropped and counted.
    #[serde(default = "d_queue")]
    pub queue: usize,
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkCfg>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    /// `application/cloudevents-batch+json` (OpenMeter, or any receiver).
    Http,
    /// Lago's `/api/v1/events/batch`.
    Lago,
    /// `XADD key MAXLEN ~ N * event <json>`.
    RedisStream,
    /// JSON lines in a dated file.
    File,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SinkCfg {
    #[serde(rename = "type")]
    pub kind: SinkKind,
    #[serde(default)]
    pub url: Option<Secret>,
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    #[serde(default)]
    pub batch_max: Option<usize>,
    #[serde(default = "d_flush")]
    pub flush_interval: Dur,
    /// One delivery attempt.
    #[serde(default = "d_timeout")]
    pub timeout: Dur,
    #[serde(default)]
    pub retry: RetryCfg,
    #[serde(default)]
    pub api_key: Option<Secret>,
    #[serde(default)]
    pub metric_code: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default = "d_maxlen")]
    pub maxlen: u64,
    #[serde(default)]
    pub path: Option<String>,
}

impl SinkCfg {
    pub fn batch(&self) -> usize {
        self.batch_max.unwrap_or(match self.kind {
            SinkKind::Lago => LAGO_BATCH,
            _ => 500,
        })
    }
}

/// Lago's batch endpoint takes at most 100 events.
pub const LAGO_BATCH: usize = 100;

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryCfg {
    #[serde(default = "d_initial")]
    pub initial: Dur,
    #[serde(default = "d_max")]
    pub max: Dur,
    /// A batch that still fails after this long goes to the dead-letter file.
    #[serde(default = "d_elapsed")]
    pub max_elapsed: Dur,
}

impl Default for RetryCfg {
    fn default() -> Self {
        RetryCfg {
            initial: d_initial(),
            max: d_max(),
            max_elapsed: d_elapsed(),
        }
    }
}

/// `[routes.X] metering = { event_type = "...", dimensions = { tier = "header:x-tier" } }`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RouteMeteringCfg {
    #[serde(default)]
    pub event_type: Option<String>,
    /// `header:NAME`, `query:NAME`, or a literal value.
    #[serde(default)]
    pub dimensions: BTreeMap<String, String>,
}

fn d_spool_max() -> Size {
    Size(1 << 30)
}
fn d_segment() -> Size {
    Size(16 << 20)
}
fn d_queue() -> usize {
    65536
}
fn d_flush() -> Dur {
    Dur(Duration::from_secs(1))
}
fn d_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn d_maxlen() -> u64 {
    1_000_000
}
fn d_initial() -> Dur {
    Dur(Duration::from_millis(500))
}
fn d_max() -> Dur {
    Dur(Duration::from_secs(60))
}
fn d_elapsed() -> Dur {
    Dur(Duration::from_secs(24 * 3600))
}

type Findings = Vec<(String, String)>;

pub(super) fn validate(f: &super::File, out: &mut Findings) {
    for (name, p) in &f.plans {
        if let Some(price) = &p.price {
            let key = format!("plans.{name}.price");
            match price.per_request.parse::<rust_decimal::Decimal>() {
                Ok(d) if d.is_sign_negative() => out.push((format!("{key}.per_request"), "must not be negative".into())),
                // Room for a month of any traffic: the preview multiplies in 96 bits.
                Ok(d) if d > rust_decimal::Decimal::from(1_000_000) => {
                    out.push((format!("{key}.per_request"), "must be at most 1000000".into()))
                }
                Ok(_) => {}
                Err(e) => out.push((
                    format!("{key}.per_request"),
                    format!("`{}` is not a decimal number ({e})", price.per_request),
                )),
            }
            if price.currency.len() != 3 || !price.currency.bytes().all(|b| b.is_ascii_uppercase()) {
                out.push((format!("{key}.currency"), "must be an ISO 4217 code such as \"USD\"".into()));
            }
        }
    }
    for (name, r) in &f.routes {
        let Some(m) = &r.metering else { continue };
        if f.metering.is_none() {
            out.push((format!("routes.{name}.metering"), "needs a [metering] section".into()));
        }
        if m.event_type.as_deref().is_some_and(str::is_empty) {
            out.push((format!("routes.{name}.metering.event_type"), "must not be empty".into()));
        }
        for (dim, src) in &m.dimensions {
            let key = format!("routes.{name}.metering.dimensions.{dim}");
            if let Some(h) = src.strip_prefix("header:") {
                if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    out.push((key, format!("`{h}` is not a header name")));
                }
            } else if src.strip_prefix("query:").is_some_and(str::is_empty) {
                out.push((key, "query: needs a parameter name".into()));
            } else if let Some((prefix, _)) = src
                .split_once(':')
                .filter(|(p, _)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_'))
            {
                // `headr:x-tier` would otherwise be a literal: a typo must not look set.
                if prefix != "query" {
                    out.push((
                        key,
                        format!("unknown source `{prefix}:` (header:NAME, query:NAME, or a literal without `word:`)"),
                    ));
                }
            }
        }
    }
    let Some(m) = &f.metering else { return };
    spool_dir(&m.spool_dir, out);
    if m.segment_size.0 < 1024 {
        out.push(("metering.segment_size".into(), "must be at least 1KiB".into()));
    }
    if m.spool_max.0 < 2 * m.segment_size.0 {
        out.push((
            "metering.spool_max".into(),
            "must hold at least two segments (metering.segment_size)".into(),
        ));
    }
    // The channel's slots are allocated up front.
    if m.queue == 0 || m.queue > 1_000_000 {
        out.push(("metering.queue".into(), "must be between 1 and 1000000".into()));
    }
    if m.source.as_deref().is_some_and(str::is_empty) {
        out.push(("metering.source".into(), "must not be empty".into()));
    }
    for (name, s) in &m.sinks {
        sink(name, s, out);
    }
}

/// Created if missing, and proved writable by writing into it: a spool that cannot be
/// written would lose every event of the run.
fn spool_dir(dir: &str, out: &mut Findings) {
    let key = "metering.spool_dir";
    if !dir.starts_with('/') {
        out.push((key.into(), format!("`{dir}` must be an absolute path")));
        return;
    }
    let probe = std::path::Path::new(dir).join(format!(".gatehouse-probe-{}", std::process::id()));
    let result = std::fs::create_dir_all(dir)
        .and_then(|_| std::fs::write(&probe, b""))
        .and_then(|_| std::fs::remove_file(&probe));
    if let Err(e) = result {
        out.push((key.into(), format!("`{dir}` is not a writable directory: {e}")));
    }
}

fn sink(name: &str, s: &SinkCfg, out: &mut Findings) {
    let base = format!("metering.sinks.{name}");
    let mut refuse = |key: &str, why: String| out.push((format!("{base}.{key}"), why));
    if name.is_empty() || name.starts_with('_') || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        refuse("", "sink names are letters, digits, `_` and `-`, and do not start with `_`".into());
    }
    let kind = match s.kind {
        SinkKind::Http => "http",
        SinkKind::Lago => "lago",
        SinkKind::RedisStream => "redis_stream",
        SinkKind::File => "file",
    };
    let needs_url = s.kind != SinkKind::File;
    match (&s.url, needs_url) {
        (None, true) => refuse("url", format!("required for type {kind}")),
        (Some(_), false) => refuse("url", format!("not a setting of type {kind}")),
        // Parsed by the client that will use it, so what passes here also connects there.
        (Some(u), true) if s.kind == SinkKind::RedisStream => match redis::Client::open(u.value.as_str()) {
            Ok(_) if u.value.starts_with("redis://") => {}
            Ok(_) => refuse("url", "only redis:// URLs (TLS to Redis is not built in)".into()),
            Err(e) => refuse("url", format!("not a redis:// URL: {e}")),
        },
        (Some(u), true) => match reqwest::Url::parse(&u.value) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
            _ => refuse("url", "not an http:// or https:// URL".into()),
        },
        (None, false) => {}
    }
    let only = |key: &str, set: bool, allowed: bool| (set && !allowed).then(|| key.to_string());
    let misplaced = [
        only("headers", !s.headers.is_empty(), s.kind == SinkKind::Http),
        only("api_key", s.api_key.is_some(), s.kind == SinkKind::Lago),
        only("metric_code", s.metric_code.is_some(), s.kind == SinkKind::Lago),
        only("key", s.key.is_some(), s.kind == SinkKind::RedisStream),
        only("path", s.path.is_some(), s.kind == SinkKind::File),
    ];
    for key in misplaced.into_iter().flatten() {
        refuse(&key, format!("not a setting of type {kind}"));
    }
    if s.api_key
        .as_ref()
        .is_some_and(|k| http::HeaderValue::from_str(&format!("Bearer {}", k.value)).is_err())
    {
        refuse("api_key", "cannot be sent in a header".into());
    }
    for (h, v) in &s.headers {
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() || http::HeaderValue::from_str(&v.value).is_err() {
            refuse(&format!("headers.{h}"), "not a valid header".into());
        }
    }
    match s.kind {
        SinkKind::Lago => {
            if s.api_key.is_none() {
                refuse("api_key", "required for type lago".into());
            }
            if s.metric_code.as_deref().is_none_or(str::is_empty) {
                refuse("metric_code", "required for type lago".into());
            }
        }
        SinkKind::RedisStream if s.key.as_deref().is_none_or(str::is_empty) => {
            refuse("key", "required for type redis_stream".into());
        }
        SinkKind::File => match s.path.as_deref() {
            None => refuse("path", "required for type file".into()),
            Some(p) if !p.starts_with('/') => refuse("path", format!("`{p}` must be an absolute path")),
            Some(p) => {
                use chrono::format::{Item, StrftimeItems};
                if StrftimeItems::new(p).any(|i| matches!(i, Item::Error)) {
                    refuse("path", format!("`{p}` has an unknown % pattern"));
                }
            }
        },
        _ => {}
    }
    let most = if s.kind == SinkKind::Lago { LAGO_BATCH } else { 10_000 };
    if s.batch() == 0 || s.batch() > most {
        refuse("batch_max", format!("must be between 1 and {most}"));
    }
    if s.maxlen == 0 {
        refuse("maxlen", "must be at least 1".into());
    }
    if s.flush_interval.0 < Duration::from_millis(10) {
        refuse("flush_interval", "must be at least 10ms".into());
    }
    if s.timeout.0.is_zero() || s.timeout.0 > Duration::from_secs(300) {
        refuse("timeout", "must be more than 0s and at most 300s".into());
    }
    let r = &s.retry;
    if r.initial.0.is_zero() || r.max.0 < r.initial.0 {
        refuse("retry", "initial must be more than 0s and at most max".into());
    }
    if r.max_elapsed.0 < r.max.0 {
        refuse("retry.max_elapsed", "must be at least retry.max".into());
    }
}
