//! Where events go. A sink gets whole spool lines (each one CloudEvent in JSON) and says
//! whether the receiver has them: `Ok` moves its cursor, `Retry` tries the same lines again
//! later, `Permanent` sends them to the dead-letter file.

use super::spool::{Batch, Cursor};
use crate::config::{SinkCfg, SinkKind};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::io::Write;

pub enum Failure {
    Retry(String),
    Permanent(String),
    /// 413: the same events in smaller batches may pass.
    TooLarge(String),
}

/// A sink whose client could not be made (its error, every time): it keeps its cursor, so
/// its events wait in the spool for a config that works.
pub struct Broken(pub String);

#[async_trait]
impl Sink for Broken {
    async fn send(&mut self, _batch: &Batch) -> Result<(), Failure> {
        Err(Failure::Retry(self.0.clone()))
    }
}

#[async_trait]
pub trait Sink: Send {
    async fn send(&mut self, batch: &Batch) -> Result<(), Failure>;

    /// A sink that keeps its own position with what it wrote (the usage ledger) says where
    /// it is; the others use the cursor file.
    fn own_cursor(&self) -> Option<Cursor> {
        None
    }

    /// Called when there was nothing to read.
    async fn idle(&mut self) {}
}

pub fn build(name: &str, cfg: &SinkCfg) -> Result<Box<dyn Sink>, String> {
    let url = cfg.url.as_ref().map(|u| u.value.clone()).unwrap_or_default();
    Ok(match cfg.kind {
        SinkKind::Http | SinkKind::Lago => {
            // No redirects: reqwest would turn the POST into a GET whose 200 is not a delivery.
            let client = reqwest::Client::builder()
                .timeout(cfg.timeout.0)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| format!("metering sink {name}: HTTP client: {e}"))?;
            let mut headers = reqwest::header::HeaderMap::new();
            for (k, v) in &cfg.headers {
                let (Ok(k), Ok(v)) = (
                    reqwest::header::HeaderName::from_bytes(k.as_bytes()),
                    reqwest::header::HeaderValue::from_str(&v.value),
                ) else {
                    return Err(format!("metering sink {name}: header {k} is not valid"));
                };
                headers.insert(k, v);
            }
            let lago = (cfg.kind == SinkKind::Lago).then(|| Lago {
                api_key: cfg.api_key.as_ref().map(|k| k.value.clone()).unwrap_or_default(),
                code: cfg.metric_code.clone().unwrap_or_default(),
            });
            Box::new(Http {
                client,
                url,
                headers,
                lago,
            })
        }
        SinkKind::RedisStream => Box::new(RedisStream {
            client: redis::Client::open(url.as_str()).map_err(|e| format!("metering sink {name}: {e}"))?,
            con: None,
            key: cfg.key.clone().unwrap_or_default(),
            maxlen: cfg.maxlen,
        }),
        SinkKind::File => Box::new(FileSink {
            pattern: cfg.path.clone().unwrap_or_default(),
            last: None,
        }),
    })
}

/// What an HTTP answer means for the batch: 2xx delivered; 413 smaller batches; any other
/// 4xx a refusal of these events that another try will not change, except 408 and 429, and
/// 401 and 403 (a credential being rotated must not send the backlog to the dead letters);
/// 3xx (a URL to fix), 5xx and the rest worth another try.
fn judge(status: reqwest::StatusCode, body: &str) -> Result<(), Failure> {
    let s = status.as_u16();
    let why = || format!("HTTP {s}: {}", body.chars().take(200).collect::<String>());
    match s {
        200..=299 => Ok(()),
        413 => Err(Failure::TooLarge(why())),
        401 | 403 | 408 | 429 => Err(Failure::Retry(why())),
        400..=499 => Err(Failure::Permanent(why())),
        _ => Err(Failure::Retry(why())),
    }
}

struct Lago {
    api_key: String,
    code: String,
}

struct Http {
    client: reqwest::Client,
    url: String,
    headers: reqwest::header::HeaderMap,
    lago: Option<Lago>,
}

#[async_trait]
impl Sink for Http {
    async fn send(&mut self, batch: &Batch) -> Result<(), Failure> {
        let (body, content_type) = match &self.lago {
            // The spool's lines are CloudEvents already: the batch is them, comma-joined.
            None => {
                let mut body = Vec::with_capacity(batch.buf.len() + 2);
                body.push(b'[');
                for (i, line) in batch.lines().enumerate() {
                    if i > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(line);
                }
                body.push(b']');
                (body, "application/cloudevents-batch+json")
            }
            Some(l) => (lago_body(&l.code, batch).map_err(Failure::Permanent)?, "application/json"),
        };
        let mut req = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        if let Some(l) = &self.lago {
            req = req.bearer_auth(&l.api_key);
        }
        let resp = req.send().await.map_err(|e| Failure::Retry(format!("{}: {e}", self.url)))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        judge(status, &text)
    }
}

/// Lago's batch body: the event id as `transaction_id` (Lago's idempotency key), the
/// subject as the subscription and customer, the request's numbers and dimensions as
/// properties.
fn lago_body(code: &str, batch: &Batch) -> Result<Vec<u8>, String> {
    use serde_json::{json, Value};
    let mut events = Vec::with_capacity(batch.len());
    for line in batch.lines() {
        let e: Value = serde_json::from_slice(line).map_err(|e| format!("spool line is not JSON: {e}"))?;
        let time = e["time"].as_str().unwrap_or("");
        let timestamp = chrono::DateTime::parse_from_rfc3339(time)
            .map(|t| t.timestamp())
            .map_err(|err| format!("event time `{time}`: {err}"))?;
        let d = &e["data"];
        let mut props = serde_json::Map::new();
        for k in [
            "route",
            "method",
            "status",
            "request_bytes",
            "response_bytes",
            "latency_ms",
            "consumer",
            "plan",
        ] {
            if !d[k].is_null() {
                props.insert(k.to_string(), d[k].clone());
            }
        }
        if let Some(dims) = d["dimensions"].as_object() {
            for (k, v) in dims {
                props.insert(k.clone(), v.clone());
            }
        }
        events.push(json!({
            "transaction_id": e["id"],
            "external_subscription_id": e["subject"],
            "external_customer_id": e["subject"],
            "code": code,
            "timestamp": timestamp,
            "properties": props,
        }));
    }
    serde_json::to_vec(&json!({ "events": events })).map_err(|e| e.to_string())
}

/// The connection kept from the last batch, or a new one (a failed batch drops it).
pub async fn redis_connection(
    client: &redis::Client,
    kept: &mut Option<redis::aio::MultiplexedConnection>,
) -> Result<redis::aio::MultiplexedConnection, Failure> {
    match kept.take() {
        Some(c) => Ok(c),
        None => client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| Failure::Retry(format!("redis connect: {e}"))),
    }
}

struct RedisStream {
    client: redis::Client,
    con: Option<redis::aio::MultiplexedConnection>,
    key: String,
    maxlen: u64,
}

#[async_trait]
impl Sink for RedisStream {
    async fn send(&mut self, batch: &Batch) -> Result<(), Failure> {
        let mut con = redis_connection(&self.client, &mut self.con).await?;
        let mut pipe = redis::pipe();
        for line in batch.lines() {
            pipe.cmd("XADD")
                .arg(&self.key)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.maxlen)
                .arg("*")
                .arg("event")
                .arg(line);
        }
        let ids: Vec<String> = pipe
            .query_async(&mut con)
            .await
            .map_err(|e| Failure::Retry(format!("redis XADD: {e}")))?;
        self.con = Some(con);
        if ids.len() != batch.len() {
            return Err(Failure::Retry(format!("redis answered {} of {} XADDs", ids.len(), batch.len())));
        }
        Ok(())
    }
}

struct FileSink {
    pattern: String,
    /// The last event second and the path it named: events of one second share a path.
    last: Option<(String, String)>,
}

#[async_trait]
impl Sink for FileSink {
    async fn send(&mut self, batch: &Batch) -> Result<(), Failure> {
        // Lines grouped by the file their event's date names, in order.
        let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for line in batch.lines() {
            let time = super::fields::read(line)
                .map(|f| f.time)
                .ok_or_else(|| Failure::Permanent("a spool line without its fields".into()))?;
            let second = time.get(..19).unwrap_or(time);
            let path = match &self.last {
                Some((s, p)) if s == second => p.clone(),
                _ => {
                    let at = chrono::DateTime::parse_from_rfc3339(time)
                        .map_err(|e| Failure::Permanent(format!("event time `{time}`: {e}")))?
                        .with_timezone(&chrono::Utc);
                    let p = at.format(&self.pattern).to_string();
                    self.last = Some((second.to_string(), p.clone()));
                    p
                }
            };
            let buf = files.entry(path).or_default();
            buf.extend_from_slice(line);
            buf.push(b'\n');
        }
        for (path, data) in files {
            let write = || -> std::io::Result<()> {
                if let Some(dir) = std::path::Path::new(&path).parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
                let len = f.metadata()?.len();
                // A failed write is cut back, so a retry never glues half a line to the next.
                if let Err(e) = f.write_all(&data).and_then(|_| f.sync_data()) {
                    let _ = f.set_len(len);
                    return Err(e);
                }
                Ok(())
            };
            write().map_err(|e| Failure::Retry(format!("{path}: {e}")))?;
        }
        Ok(())
    }
}
