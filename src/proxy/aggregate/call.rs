//! One backend call: a target picked from the backend's cluster (its balancing, health,
//! breaker, TLS and HTTP/2 settings apply), a request, and the response read into memory up
//! to the limit (parsed as JSON for an aggregate backend).
//!
//! The calls go through one Pingora connector with its own connection pool: the proxy's
//! pool lives inside Pingora's proxy service and cannot be borrowed.

use super::plan::Backend;
use crate::upstream::function::{apigw, Function, InvokeError};
use crate::upstream::{Cluster, InFlight};
use bytes::BytesMut;
use once_cell::sync::Lazy;
use pingora_core::connectors::http::Connector;
use pingora_http::RequestHeader;
use std::sync::Arc;
use std::time::{Duration, Instant};

static CONNECTOR: Lazy<Connector> = Lazy::new(|| Connector::new(None));

/// Why a backend failed: its `reason` label and the `_errors` text.
#[derive(Debug)]
pub enum Failure {
    NoTarget,
    Connect(String),
    Io(String),
    Status(u16),
    TooLarge,
    BadJson(String),
    NotObject,
    Timeout,
    /// A function upstream's function failed (its error type).
    Function(String),
}

/// Every `reason` label, so the failure series exist at zero from the first load.
pub const REASONS: [&str; 9] = [
    "function_error",
    "no_target",
    "connect",
    "io",
    "status",
    "too_large",
    "bad_json",
    "not_object",
    "timeout",
];

impl Failure {
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::Function(_) => "function_error",
            Failure::NoTarget => "no_target",
            Failure::Connect(_) => "connect",
            Failure::Io(_) => "io",
            Failure::Status(_) => "status",
            Failure::TooLarge => "too_large",
            Failure::BadJson(_) => "bad_json",
            Failure::NotObject => "not_object",
            Failure::Timeout => "timeout",
        }
    }

    /// What the client may read in `_errors`: no addresses or internal error text.
    pub fn public(&self) -> String {
        match self {
            Failure::Status(s) => format!("status {s}"),
            Failure::TooLarge => "response too large".into(),
            Failure::BadJson(_) => "response is not JSON".into(),
            Failure::NotObject => "response is not a JSON object".into(),
            Failure::Timeout => "timed out".into(),
            Failure::NoTarget => "no healthy target".into(),
            Failure::Connect(_) | Failure::Io(_) => "connection failed".into(),
            Failure::Function(_) => "function failed".into(),
        }
    }

    /// For the error log: the cause included.
    pub fn detail(&self) -> String {
        match self {
            Failure::Connect(e) | Failure::Io(e) | Failure::BadJson(e) | Failure::Function(e) => format!("{}: {e}", self.public()),
            _ => self.public(),
        }
    }
}

/// Headers every backend request carries, built once per client request.
pub struct Forward {
    pub request_id: Option<http::HeaderValue>,
    pub client_ip: http::HeaderValue,
    pub proto: &'static str,
    pub consumer: Option<(http::HeaderName, http::HeaderValue)>,
}

/// What one attempt on one target came to.
enum Attempt {
    Connect(String),
    /// A pooled connection failed before any answer in a way Pingora says is safe to retry
    /// (the target closed it while idle).
    Stale(String),
    Answer(u16, http::HeaderMap, Result<bytes::Bytes, Failure>),
}

/// Longest cause kept for the log: a broken response can carry a whole header block.
const DETAIL: usize = 300;

fn detail(e: &pingora_error::Error) -> String {
    let mut s = e.to_string();
    if s.len() > DETAIL {
        let mut cut = DETAIL;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// One request to a cluster, whoever makes it: an aggregate backend, or a wasm filter's
/// `proxy_http_call`.
pub struct Outgoing<'a> {
    pub method: &'a http::Method,
    /// Path and query.
    pub target: &'a str,
    pub timeout: Duration,
    /// Besides `Host`, which is the target's unless `host` names one.
    pub headers: &'a [(http::HeaderName, http::HeaderValue)],
    pub host: Option<http::HeaderValue>,
    pub body: bytes::Bytes,
    /// A timeout counts against the target only when the operator chose it (an aggregate
    /// backend's), not when a filter did (a wasm call may ask for a millisecond).
    pub blame_timeout: bool,
}

/// A 1xx-free answer read whole.
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: bytes::Bytes,
}

/// Calls `b` at `target` (already filled in) and parses its 2xx answer as JSON.
pub async fn fetch(
    b: &Backend,
    cluster: &Arc<Cluster>,
    target: &str,
    fwd: &Forward,
    limit: usize,
    deadline: tokio::time::Instant,
) -> Result<serde_json::Value, Failure> {
    let mut headers = Vec::with_capacity(6);
    headers.push((http::header::ACCEPT, http::HeaderValue::from_static("application/json")));
    headers.push((http::HeaderName::from_static("x-forwarded-for"), fwd.client_ip.clone()));
    headers.push((
        http::HeaderName::from_static("x-forwarded-proto"),
        http::HeaderValue::from_static(fwd.proto),
    ));
    if let Some(id) = &fwd.request_id {
        headers.push((http::HeaderName::from_static("x-request-id"), id.clone()));
    }
    if let Some((n, v)) = &fwd.consumer {
        headers.push((n.clone(), v.clone()));
    }
    let out = Outgoing {
        method: &b.method,
        target,
        timeout: b.timeout,
        headers: &headers,
        host: None,
        body: bytes::Bytes::new(),
        blame_timeout: true,
    };
    let reply = exchange(cluster, &out, limit, deadline).await?;
    if !(200..300).contains(&reply.status) {
        return Err(Failure::Status(reply.status));
    }
    serde_json::from_slice(&reply.body).map_err(|e| Failure::BadJson(e.to_string()))
}

/// Sends `out` to a target of `cluster`, giving up at `deadline`. A connect failure
/// moves to another target as the cluster's `retries` allow; a pooled connection found
/// closed is retried once (idempotent methods only). Attempts are bounded by that count,
/// whatever the targets do. What the target caused (connect errors, timeouts, 5xx, a
/// broken response) counts against it in the circuit breaker.
pub async fn exchange(cluster: &Arc<Cluster>, out: &Outgoing<'_>, limit: usize, deadline: tokio::time::Instant) -> Result<Reply, Failure> {
    let mut tried: Vec<usize> = Vec::new();
    let mut stale_retried = false;
    let mut last: Option<Failure> = None;
    let max_attempts = cluster.retries as usize + 2;
    for _ in 0..max_attempts {
        let idx = match cluster.select(None, &tried) {
            Some(i) => i,
            // Only a stale pooled connection may go back to the target it was on.
            None => match (last.as_ref(), tried.last()) {
                (Some(Failure::Io(_)), Some(i)) if stale_retried => *i,
                _ => break,
            },
        };
        if !tried.contains(&idx) {
            tried.push(idx);
        }
        let flight = InFlight::new(cluster.clone(), idx);
        let started = Instant::now();
        let outcome = tokio::time::timeout_at(deadline, attempt(cluster, &flight, idx, out, limit)).await;
        cluster.duration.observe(started.elapsed().as_secs_f64());
        match outcome {
            Err(_) => {
                if out.blame_timeout {
                    flight.report(false);
                }
                return Err(Failure::Timeout);
            }
            Ok(Attempt::Connect(e)) => {
                flight.report(false);
                last = Some(Failure::Connect(e));
                if tried.len() > cluster.retries as usize {
                    break;
                }
            }
            Ok(Attempt::Stale(e)) => {
                if stale_retried || !out.method.is_idempotent() {
                    flight.report(false);
                    return Err(Failure::Io(e));
                }
                stale_retried = true;
                last = Some(Failure::Io(e));
            }
            Ok(Attempt::Answer(status, headers, body)) => {
                flight.report(status < 500 && !matches!(body, Err(Failure::Io(_))));
                return Ok(Reply {
                    status,
                    headers,
                    body: body?,
                });
            }
        }
    }
    Err(last.unwrap_or(Failure::NoTarget))
}

async fn attempt(cluster: &Cluster, flight: &InFlight, idx: usize, out: &Outgoing<'_>, limit: usize) -> Attempt {
    let none = http::HeaderMap::new;
    let peer = cluster.peer(idx, Some(out.timeout));
    let (mut session, reused) = match CONNECTOR.get_http_session(&*peer).await {
        Ok(s) => s,
        Err(e) => return Attempt::Connect(detail(&e)),
    };
    if reused {
        cluster.pool.reused.inc();
    } else {
        cluster.pool.new.inc();
    }
    let host = out.host.clone().unwrap_or_else(|| flight.target().host_header.clone());
    let req = match request(out, host) {
        Ok(r) => r,
        Err(e) => return Attempt::Answer(0, none(), Err(Failure::Io(detail(&e)))),
    };
    let sent = async {
        session.write_request_header(Box::new(req)).await?;
        if !out.body.is_empty() {
            session.write_request_body(out.body.clone(), true).await?;
        }
        session.finish_request_body().await?;
        // Informational answers (100, 103) come before the real one; a few at most.
        for _ in 0..8 {
            session.read_response_header().await?;
            match session.response_header().map(|h| h.status.as_u16()) {
                Some(100 | 102..=199) => continue,
                _ => break,
            }
        }
        Ok::<(), Box<pingora_error::Error>>(())
    }
    .await;
    if let Err(mut e) = sent {
        session.shutdown().await;
        // Pingora's own judgement: a reused connection that failed before any answer.
        e.retry.decide_reuse(reused);
        return if e.retry() {
            Attempt::Stale(detail(&e))
        } else {
            Attempt::Answer(0, none(), Err(Failure::Io(detail(&e))))
        };
    }
    let status = session.response_header().map_or(0, |h| h.status.as_u16());
    if (100..200).contains(&status) {
        session.shutdown().await;
        return Attempt::Answer(status, none(), Err(Failure::Status(status)));
    }
    let headers = session.response_header().map(|h| h.headers.clone()).unwrap_or_default();
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = match declared {
        Some(n) if n > limit as u64 => Err(Failure::TooLarge),
        _ => read_body(&mut session, limit).await,
    };
    if body.is_ok() {
        CONNECTOR.release_http_session(session, &*peer, peer.options.idle_timeout).await;
    } else {
        session.shutdown().await;
    }
    Attempt::Answer(status, headers, body)
}

fn request(out: &Outgoing<'_>, host: http::HeaderValue) -> pingora_error::Result<RequestHeader> {
    let mut req = RequestHeader::build_no_case(out.method.clone(), out.target.as_bytes(), Some(out.headers.len() + 2))?;
    req.insert_header(http::header::HOST, host)?;
    for (n, v) in out.headers {
        req.append_header(n.clone(), v.clone())?;
    }
    // Methods that usually carry a body say how long it is, even when empty (some servers
    // want 411 otherwise).
    if !out.body.is_empty() || matches!(*out.method, http::Method::POST | http::Method::PUT | http::Method::PATCH) {
        req.insert_header(http::header::CONTENT_LENGTH, out.body.len())?;
    }
    Ok(req)
}

async fn read_body(session: &mut pingora_core::protocols::http::client::HttpSession, limit: usize) -> Result<bytes::Bytes, Failure> {
    let mut body = BytesMut::new();
    loop {
        match session.read_response_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(Failure::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(e) => return Err(Failure::Io(e.to_string())),
        }
    }
}

/// A function backend: the filled target as an API Gateway event (no body), or `{}` with
/// `payload = "raw"`, and the function's answer as the backend's response.
pub async fn invoke(
    b: &Backend,
    f: &Function,
    target: &str,
    fwd: &Forward,
    limit: usize,
    deadline: tokio::time::Instant,
) -> Result<serde_json::Value, Failure> {
    let payload = match f.payload {
        crate::config::Payload::Raw => b"{}".to_vec(),
        crate::config::Payload::ApigwV2 => {
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::ACCEPT, http::HeaderValue::from_static("application/json"));
            headers.insert("x-forwarded-for", fwd.client_ip.clone());
            headers.insert("x-forwarded-proto", http::HeaderValue::from_static(fwd.proto));
            if let Some(id) = &fwd.request_id {
                headers.insert("x-request-id", id.clone());
            }
            if let Some((n, v)) = &fwd.consumer {
                headers.insert(n.clone(), v.clone());
            }
            let request_id = fwd.request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("");
            let ip = fwd.client_ip.to_str().unwrap_or("");
            apigw::event(&apigw::Request {
                method: b.method.as_str(),
                path,
                query,
                headers: &headers,
                body: &[],
                source_ip: ip,
                request_id,
                consumer: fwd.consumer.as_ref().and_then(|(_, v)| v.to_str().ok()),
                route: "",
                host: "",
                time_epoch_ms: now_ms(),
            })
        }
    };
    let invoked = match tokio::time::timeout_at(deadline, f.invoke(payload, limit)).await {
        Err(_) | Ok(Err(InvokeError::Timeout)) => return Err(Failure::Timeout),
        Ok(Err(InvokeError::TooLarge)) => return Err(Failure::TooLarge),
        Ok(Err(e)) => return Err(Failure::Io(e.to_string())),
        Ok(Ok(i)) => i,
    };
    if let Some(kind) = invoked.function_error {
        let t = apigw::error_type(&invoked.payload).unwrap_or(kind);
        return Err(Failure::Function(t));
    }
    let body = match f.payload {
        crate::config::Payload::Raw => invoked.payload,
        crate::config::Payload::ApigwV2 => {
            let r = apigw::response(&invoked.payload).map_err(Failure::BadJson)?;
            if !(200..300).contains(&r.status) {
                return Err(Failure::Status(r.status));
            }
            r.body
        }
    };
    serde_json::from_slice(&body).map_err(|e| Failure::BadJson(e.to_string()))
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
