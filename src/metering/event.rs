//! One CloudEvents 1.0 event (JSON format) per finished request, encoded on the request path
//! straight into the line the spool stores: borrowed fields, no intermediate tree, so the
//! line is the only allocation.

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const DEFAULT_TYPE: &str = "io.gatehouse.request.v1";

/// Where a route's dimension comes from.
#[derive(Debug, Clone)]
pub enum DimSource {
    Header(http::HeaderName),
    Query(String),
    Literal(String),
}

/// A route's metering settings, compiled at load.
#[derive(Debug)]
pub struct RouteMeter {
    pub event_type: String,
    pub dimensions: Vec<(String, DimSource)>,
}

impl RouteMeter {
    pub fn new(cfg: &crate::config::RouteMeteringCfg) -> RouteMeter {
        let dimensions = cfg
            .dimensions
            .iter()
            .map(|(name, src)| {
                let source = if let Some(h) = src.strip_prefix("header:") {
                    match http::HeaderName::from_bytes(h.as_bytes()) {
                        Ok(h) => DimSource::Header(h),
                        Err(_) => DimSource::Literal(String::new()),
                    }
                } else if let Some(q) = src.strip_prefix("query:") {
                    DimSource::Query(q.to_string())
                } else {
                    DimSource::Literal(src.clone())
                };
                (name.clone(), source)
            })
            .collect();
        RouteMeter {
            event_type: cfg.event_type.clone().unwrap_or_else(|| DEFAULT_TYPE.to_string()),
            dimensions,
        }
    }
}

/// What a finished request was, borrowed from its context.
pub struct Usage<'a> {
    pub arrived: SystemTime,
    pub source: &'a str,
    pub event_type: &'a str,
    pub consumer: Option<&'a str>,
    pub plan: Option<&'a str>,
    pub credential: Option<(&'static str, u32)>,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub method: &'a str,
    pub status: u16,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub latency: Duration,
    pub upstream_latency: Option<Duration>,
    pub cache: Option<&'a str>,
    pub rejection: Option<&'a str>,
    pub trace_id: Option<&'a str>,
    pub request_id: &'a str,
    pub dimensions: Option<(&'a RouteMeter, &'a pingora_http::RequestHeader)>,
}

/// A UUIDv7: the arrival time in milliseconds, then random bits from the thread's fast
/// generator (ids need to be unique, not secret).
pub fn id_v7(at: SystemTime) -> uuid::Uuid {
    let ms = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    let random = fastrand::u128(..).to_le_bytes();
    let mut r = [0u8; 10];
    r.copy_from_slice(&random[..10]);
    uuid::Builder::from_unix_timestamp_millis(ms, &r).into_uuid()
}

impl Usage<'_> {
    /// The event as one JSON line (no newline).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let id = id_v7(self.arrived);
        let mut idbuf = uuid::Uuid::encode_buffer();
        let event = Event {
            specversion: "1.0",
            id: id.hyphenated().encode_lower(&mut idbuf),
            source: self.source,
            kind: self.event_type,
            time: Rfc3339(self.arrived),
            subject: self.consumer.unwrap_or("anonymous"),
            datacontenttype: "application/json",
            data: Data {
                consumer: self.consumer,
                plan: self.plan,
                credential: self.credential.map(|c| Credential(c, self.consumer.unwrap_or(""))),
                route: self.route,
                upstream: self.upstream,
                method: self.method,
                status: self.status,
                request_bytes: self.request_bytes,
                response_bytes: self.response_bytes,
                latency_ms: ms(self.latency),
                upstream_latency_ms: self.upstream_latency.map(ms),
                cache: self.cache,
                rejection: self.rejection,
                trace_id: self.trace_id,
                request_id: self.request_id,
                dimensions: Dims(self.dimensions),
            },
        };
        // Every field is a plain string, number or map of strings: writing to a Vec
        // cannot fail.
        let _ = serde_json::to_writer(out, &event);
    }
}

/// Milliseconds to the microsecond.
fn ms(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

#[derive(Serialize)]
struct Event<'a> {
    specversion: &'static str,
    id: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    time: Rfc3339,
    subject: &'a str,
    datacontenttype: &'static str,
    data: Data<'a>,
}

#[derive(Serialize)]
struct Data<'a> {
    consumer: Option<&'a str>,
    plan: Option<&'a str>,
    credential: Option<Credential<'a>>,
    route: Option<&'a str>,
    upstream: Option<&'a str>,
    method: &'a str,
    status: u16,
    request_bytes: u64,
    response_bytes: u64,
    latency_ms: f64,
    upstream_latency_ms: Option<f64>,
    cache: Option<&'a str>,
    rejection: Option<&'a str>,
    trace_id: Option<&'a str>,
    request_id: &'a str,
    dimensions: Dims<'a>,
}

struct Rfc3339(SystemTime);

impl Serialize for Rfc3339 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(self.0))
    }
}

/// `key:acme#0` (the key's index), `basic:acme`, `jwt:acme`, `cert:acme`.
struct Credential<'a>((&'static str, u32), &'a str);

impl Serialize for Credential<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ((kind, index), consumer) = (self.0, self.1);
        if kind == "key" {
            s.collect_str(&format_args!("{kind}:{consumer}#{index}"))
        } else {
            s.collect_str(&format_args!("{kind}:{consumer}"))
        }
    }
}

/// The route's dimensions, read from the request as the event is written. A missing
/// header or parameter is left out rather than sent empty.
struct Dims<'a>(Option<(&'a RouteMeter, &'a pingora_http::RequestHeader)>);

impl Serialize for Dims<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        if let Some((meter, req)) = self.0 {
            for (name, source) in &meter.dimensions {
                let value = match source {
                    DimSource::Header(h) => req.headers.get(h).and_then(|v| v.to_str().ok()).map(std::borrow::Cow::Borrowed),
                    DimSource::Query(q) => req.uri.query().and_then(|query| query_value(query, q)),
                    DimSource::Literal(v) => Some(std::borrow::Cow::Borrowed(v.as_str())),
                };
                if let Some(v) = value {
                    map.serialize_entry(name, &*v)?;
                }
            }
        }
        map.end()
    }
}

fn query_value<'q>(query: &'q str, name: &str) -> Option<std::borrow::Cow<'q, str>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_encoding::percent_decode_str(v).decode_utf8_lossy())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_valid_json_with_a_v7_id_at_the_arrival_time() {
        let at = UNIX_EPOCH + Duration::from_millis(1_764_662_400_123);
        let mut out = Vec::new();
        Usage {
            arrived: at,
            source: "gatehouse://t",
            event_type: DEFAULT_TYPE,
            consumer: Some("acme"),
            plan: None,
            credential: Some(("key", 2)),
            route: Some("users"),
            upstream: None,
            method: "GET",
            status: 200,
            request_bytes: 1,
            response_bytes: 2,
            latency: Duration::from_micros(1500),
            upstream_latency: None,
            cache: None,
            rejection: None,
            trace_id: None,
            request_id: "r1",
            dimensions: None,
        }
        .encode(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["time"], "2025-12-02T08:00:00.123Z");
        assert_eq!(v["data"]["credential"], "key:acme#2");
        assert_eq!(v["data"]["latency_ms"], 1.5);
        let id = uuid::Uuid::parse_str(v["id"].as_str().expect("id")).expect("uuid");
        assert_eq!(id.get_version_num(), 7);
        let (secs, _) = id.get_timestamp().expect("v7 has a time").to_unix();
        assert_eq!(secs, 1_764_662_400);
    }
}
