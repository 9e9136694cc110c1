//! `concurrency_limit`: at most `max` requests in flight on a route (per key when `key` is
//! set). Slots are the route's own even when several routes share one plugin instance
//! (identical sections are built once). Up to `queue` more wait `queue_timeout` for a slot, then get 503. The slot is a
//! guard in the request context: held until the response body is done, and released on
//! every path (errors, client aborts) because the context is dropped on every path.

use super::keys::{self, Part, Scope};
use crate::util::{duration, err};
use crate::{Answer, Flow, Plugin, PluginCtx, PluginError, Priority};
use async_trait::async_trait;
use pingora_http::RequestHeader;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

pub const NAME: &str = "concurrency_limit";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub max: usize,
    #[serde(default)]
    pub queue: usize,
    #[serde(default = "d_timeout")]
    pub queue_timeout: String,
    #[serde(default)]
    pub key: Option<String>,
}

fn d_timeout() -> String {
    "200ms".into()
}

struct Slots {
    sem: Arc<Semaphore>,
    waiting: AtomicUsize,
}

pub struct ConcurrencyLimit {
    max: usize,
    queue: usize,
    queue_timeout: Duration,
    parts: Vec<Part>,
    /// Per (route, key), sharded so routes do not wait on one lock.
    keyed: Vec<Mutex<HashMap<u64, Arc<Slots>>>>,
}

const SHARDS: usize = 16;
const MAX_KEYS_PER_SHARD: usize = 100_000 / SHARDS;

impl ConcurrencyLimit {
    pub fn from_config(c: Config) -> Result<Self, PluginError> {
        if c.max == 0 {
            return Err(err("max", "must be at least 1"));
        }
        Ok(ConcurrencyLimit {
            max: c.max,
            queue: c.queue,
            queue_timeout: duration("queue_timeout", &c.queue_timeout)?,
            parts: c.key.as_deref().map(|k| keys::parse("key", k)).transpose()?.unwrap_or_default(),
            keyed: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        })
    }

    fn slots(&self, req: &RequestHeader, ctx: &PluginCtx) -> Arc<Slots> {
        let k = keys::hash(&self.parts, req, ctx, Scope::Route);
        let mut map = match self.keyed[(k as usize) % SHARDS].lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if map.len() >= MAX_KEYS_PER_SHARD {
            let max = self.max;
            map.retain(|_, s| s.sem.available_permits() < max || s.waiting.load(Ordering::Relaxed) > 0);
        }
        map.entry(k)
            .or_insert_with(|| {
                Arc::new(Slots {
                    sem: Arc::new(Semaphore::new(self.max)),
                    waiting: AtomicUsize::new(0),
                })
            })
            .clone()
    }
}

#[async_trait]
impl Plugin for ConcurrencyLimit {
    fn name(&self) -> &'static str {
        NAME
    }

    fn priority(&self) -> Priority {
        Priority(Priority::LIMITS.0 - 20)
    }

    fn is_async(&self) -> bool {
        true
    }

    async fn request_async(&self, req: &mut RequestHeader, ctx: &mut PluginCtx) -> Flow {
        let slots = self.slots(req, ctx);
        let permit = match slots.sem.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                if slots.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue {
                    slots.waiting.fetch_sub(1, Ordering::AcqRel);
                    None
                } else {
                    let got = tokio::time::timeout(self.queue_timeout, slots.sem.clone().acquire_owned()).await;
                    slots.waiting.fetch_sub(1, Ordering::AcqRel);
                    got.ok().and_then(Result::ok)
                }
            }
        };
        match permit {
            Some(p) => {
                ctx.guards.push(Box::new(p));
                Flow::Continue
            }
            None => {
                ctx.rejection = Some("concurrency_limit");
                Flow::Respond(
                    Answer::error(503, "too many requests in flight")
                        .with_header(http::header::RETRY_AFTER, http::HeaderValue::from_static("1")),
                )
            }
        }
    }
}
