//! An OTLP/HTTP trace receiver on 127.0.0.1: it decodes what the gateway's exporter sends
//! with the protocol's own types (opentelemetry-proto: protobuf through prost, JSON through
//! its serde mapping), keeps the spans, and can answer 503 or never answer, to test what a
//! sick collector costs the gateway.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Accept,
    /// Answers every export with this status.
    Refuse(u16),
    /// Reads the export and never answers.
    Hang,
}

#[derive(Debug, Clone)]
pub struct Span {
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// OTLP's SpanKind: 2 server, 3 client.
    pub kind: i32,
    /// OTLP's status code: 0 unset, 1 ok, 2 error.
    pub status: i32,
    pub attributes: BTreeMap<String, String>,
}

#[derive(Default)]
struct State {
    mode: Option<Mode>,
    spans: Vec<Span>,
    /// Content type and authorization header of each export request.
    requests: Vec<(String, String)>,
    held: Vec<TcpStream>,
}

#[derive(Clone)]
pub struct Collector {
    pub addr: String,
    state: Arc<Mutex<State>>,
}

impl Collector {
    pub fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the collector");
        let addr = listener.local_addr().expect("collector address").to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || serve(stream, state));
            }
        });
        Collector { addr, state }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        let mut s = self.state.lock().unwrap();
        s.mode = Some(mode);
        if mode != Mode::Hang {
            s.held.clear();
        }
    }

    pub fn spans(&self) -> Vec<Span> {
        self.state.lock().unwrap().spans.clone()
    }

    pub fn trace(&self, trace_id: &str) -> Vec<Span> {
        self.spans().into_iter().filter(|s| s.trace_id == trace_id).collect()
    }

    pub fn requests(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().requests.clone()
    }
}

fn serve(stream: TcpStream, state: Arc<Mutex<State>>) {
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut out = stream;
    loop {
        let mut length = 0usize;
        let mut content_type = String::new();
        let mut authorization = String::new();
        let mut line = String::new();
        // Request line, then headers up to the blank line.
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let v = v.trim().to_string();
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => length = v.parse().unwrap_or(0),
                    "content-type" => content_type = v,
                    "authorization" => authorization = v,
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let mode = {
            let mut s = state.lock().unwrap();
            s.requests.push((content_type.clone(), authorization));
            s.mode.unwrap_or(Mode::Accept)
        };
        match mode {
            Mode::Hang => {
                // Keep the connection open and silent until the mode changes.
                if let Ok(s) = out.try_clone() {
                    state.lock().unwrap().held.push(s);
                }
                return;
            }
            Mode::Refuse(status) => {
                let _ = write!(out, "HTTP/1.1 {status} Refused\r\ncontent-length: 0\r\nretry-after: 1\r\n\r\n");
            }
            Mode::Accept => {
                let decoded = if content_type.starts_with("application/json") {
                    serde_json::from_slice::<ExportTraceServiceRequest>(&body).map_err(|e| e.to_string())
                } else {
                    ExportTraceServiceRequest::decode(&body[..]).map_err(|e| e.to_string())
                };
                match decoded {
                    Ok(req) => {
                        state.lock().unwrap().spans.extend(flatten(req));
                        let (ct, answer) = if content_type.starts_with("application/json") {
                            ("application/json", "{}")
                        } else {
                            ("application/x-protobuf", "")
                        };
                        let _ = write!(
                            out,
                            "HTTP/1.1 200 OK\r\ncontent-type: {ct}\r\ncontent-length: {}\r\n\r\n{answer}",
                            answer.len()
                        );
                    }
                    Err(e) => {
                        let _ = write!(out, "HTTP/1.1 400 Bad Request\r\ncontent-length: {}\r\n\r\n{e}", e.len());
                    }
                }
            }
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn flatten(req: ExportTraceServiceRequest) -> Vec<Span> {
    let mut out = Vec::new();
    for rs in req.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .map(|kv| text(&kv.value))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                out.push(Span {
                    service: service.clone(),
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    name: s.name.clone(),
                    kind: s.kind,
                    status: s.status.as_ref().map_or(0, |st| st.code),
                    attributes: s.attributes.iter().map(|kv| (kv.key.clone(), text(&kv.value))).collect(),
                });
            }
        }
    }
    out
}
