//! One CloudEvents 1.0 event (JSON format) per finished request, encoded on the request path
//! straight into the line the spool stores: borrowed fields, no intermediate tree, so the
//! line is the only allocation.

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
    /// The event as one JSON line (no newline). Written as bytes with the access log's
    /// helpers rather than through serde: the generic serializer (per-byte escaping, float
    /// printing, a time formatted from scratch) was 8.1k instructions a request by callgrind.
    /// The unit tests read every shape back with serde_json.
    pub fn encode(&self, out: &mut Vec<u8>) {
        use crate::access_log::line::{escape, millis, timestamp};
        use gatehouse_plugins::ascii::push_u64;
        let id = id_v7(self.arrived);
        let mut idbuf = uuid::Uuid::encode_buffer();
        out.extend_from_slice(b"{\"specversion\":\"1.0\",\"id\":\"");
        out.extend_from_slice(id.hyphenated().encode_lower(&mut idbuf).as_bytes());
        out.extend_from_slice(b"\",\"source\":\"");
        escape(self.source, out);
        out.extend_from_slice(b"\",\"type\":\"");
        escape(self.event_type, out);
        out.extend_from_slice(b"\",\"time\":\"");
        timestamp(self.arrived, out);
        out.extend_from_slice(b"\",\"subject\":\"");
        escape(self.consumer.unwrap_or("anonymous"), out);
        out.extend_from_slice(b"\",\"datacontenttype\":\"application/json\",\"data\":{\"consumer\":");
        opt(out, self.consumer);
        out.extend_from_slice(b",\"plan\":");
        opt(out, self.plan);
        out.extend_from_slice(b",\"credential\":");
        match self.credential {
            // `key:acme#0` (the key's index), `basic:acme`, `jwt:acme`, `cert:acme`.
            Some((kind, index)) => {
                out.push(b'"');
                escape(kind, out);
                out.push(b':');
                escape(self.consumer.unwrap_or(""), out);
                if kind == "key" {
                    out.push(b'#');
                    push_u64(out, u64::from(index));
                }
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"route\":");
        opt(out, self.route);
        out.extend_from_slice(b",\"upstream\":");
        opt(out, self.upstream);
        out.extend_from_slice(b",\"method\":\"");
        escape(self.method, out);
        out.extend_from_slice(b"\",\"status\":");
        push_u64(out, u64::from(self.status));
        out.extend_from_slice(b",\"request_bytes\":");
        push_u64(out, self.request_bytes);
        out.extend_from_slice(b",\"response_bytes\":");
        push_u64(out, self.response_bytes);
        out.extend_from_slice(b",\"latency_ms\":");
        millis(ms(self.latency), out);
        out.extend_from_slice(b",\"upstream_latency_ms\":");
        match self.upstream_latency {
            Some(d) => millis(ms(d), out),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"cache\":");
        opt(out, self.cache);
        out.extend_from_slice(b",\"rejection\":");
        opt(out, self.rejection);
        out.extend_from_slice(b",\"trace_id\":");
        opt(out, self.trace_id);
        out.extend_from_slice(b",\"request_id\":\"");
        escape(self.request_id, out);
        out.extend_from_slice(b"\",\"dimensions\":{");
        if let Some((meter, req)) = self.dimensions {
            let mut first = true;
            for (name, source) in &meter.dimensions {
                // A missing header or parameter is left out rather than sent empty.
                let value = match source {
                    DimSource::Header(h) => req.headers.get(h).and_then(|v| v.to_str().ok()).map(std::borrow::Cow::Borrowed),
                    DimSource::Query(q) => req.uri.query().and_then(|query| query_value(query, q)),
                    DimSource::Literal(v) => Some(std::borrow::Cow::Borrowed(v.as_str())),
                };
                let Some(v) = value else { continue };
                if !first {
                    out.push(b',');
                }
                first = false;
                out.push(b'"');
                escape(name, out);
                out.extend_from_slice(b"\":\"");
                escape(&v, out);
                out.push(b'"');
            }
        }
        out.extend_from_slice(b"}}}");
    }
}

/// A string or `null`.
fn opt(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        Some(v) => {
            out.push(b'"');
            crate::access_log::line::escape(v, out);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// Milliseconds to the microsecond.
fn ms(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
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
        let d = &v["data"];
        assert!(d["upstream_latency_ms"].is_null() && d["plan"].is_null() && d["consumer"] == "acme");
        assert_eq!(d["dimensions"], serde_json::json!({}));
        let id = uuid::Uuid::parse_str(v["id"].as_str().expect("id")).expect("uuid");
        assert_eq!(id.get_version_num(), 7);
        let (secs, _) = id.get_timestamp().expect("v7 has a time").to_unix();
        assert_eq!(secs, 1_764_662_400);
    }

    #[test]
    fn names_that_need_escaping_and_dimensions_read_back_as_written() {
        let cfg = crate::config::RouteMeteringCfg {
            event_type: Some("api.\"q\"".into()),
            dimensions: [
                ("tier".to_string(), "header:x-tier".to_string()),
                ("region".to_string(), "query:region".to_string()),
                ("plan\\x".to_string(), "fixed\nvalue".to_string()),
                ("absent".to_string(), "header:x-absent".to_string()),
            ]
            .into_iter()
            .collect(),
        };
        let meter = RouteMeter::new(&cfg);
        let mut req = pingora_http::RequestHeader::build("GET", b"/x?region=eu%2Dwest&b=1", None).expect("request");
        req.insert_header("x-tier", "gold \"plus\"").expect("header");
        let mut out = Vec::new();
        Usage {
            arrived: UNIX_EPOCH + Duration::from_millis(1_764_662_400_123),
            source: "gatehouse://a\\b",
            event_type: &meter.event_type,
            consumer: Some("jwt:a\"b\u{1}"),
            plan: Some("gold"),
            credential: Some(("jwt", 0)),
            route: Some("r/ü"),
            upstream: Some("u"),
            method: "POST",
            status: 503,
            request_bytes: 7,
            response_bytes: 0,
            latency: Duration::from_micros(12_345),
            upstream_latency: Some(Duration::from_micros(10)),
            cache: Some("miss"),
            rejection: Some("rate_limit"),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
            request_id: "r\t1",
            dimensions: Some((&meter, &req)),
        }
        .encode(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["type"], "api.\"q\"");
        assert_eq!(v["source"], "gatehouse://a\\b");
        assert_eq!(v["subject"], "jwt:a\"b\u{1}");
        assert_eq!(v["data"]["credential"], "jwt:jwt:a\"b\u{1}");
        assert_eq!(v["data"]["route"], "r/ü");
        assert_eq!(v["data"]["request_id"], "r\t1");
        assert_eq!(v["data"]["latency_ms"], 12.345);
        assert_eq!(v["data"]["upstream_latency_ms"], 0.01);
        assert_eq!(
            v["data"]["dimensions"],
            serde_json::json!({"tier": "gold \"plus\"", "region": "eu-west", "plan\\x": "fixed\nvalue"})
        );
    }
}
