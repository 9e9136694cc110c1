//! Per-consumer daily totals in Redis (`[store] redis`), so every node of a fleet reports
//! the same numbers for a day: each node adds what it delivered (`HINCRBY`) to
//! `gatehouse:analytics:YYYY-MM-DD:CONSUMER`. Analytics, not billing: a crash between the
//! increment and the cursor can count one batch twice.

use super::sinks::{Failure, Sink};
use super::spool::Batch;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::time::Duration;

/// Days a total is kept.
const KEEP: Duration = Duration::from_secs(40 * 24 * 3600);

pub fn key(day: &str, consumer: &str) -> String {
    format!("gatehouse:analytics:{day}:{consumer}")
}

pub struct Fleet {
    client: redis::Client,
    con: Option<redis::aio::MultiplexedConnection>,
}

impl Fleet {
    pub fn new(url: &str) -> Result<Fleet, String> {
        Ok(Fleet {
            client: redis::Client::open(url).map_err(|e| format!("store.redis: {e}"))?,
            con: None,
        })
    }
}

#[async_trait]
impl Sink for Fleet {
    async fn send(&mut self, batch: &Batch) -> Result<(), Failure> {
        let mut sums: BTreeMap<String, [u64; 4]> = BTreeMap::new();
        for line in batch.lines() {
            let Some(l) = super::fields::read(line) else { continue };
            let Some(day) = l.time.get(..10) else { continue };
            let s = sums.entry(key(day, l.consumer.as_deref().unwrap_or("anonymous"))).or_default();
            s[0] += 1;
            s[1] += u64::from(l.status >= 400 || l.status == 0);
            s[2] += l.request_bytes;
            s[3] += l.response_bytes;
        }
        let mut con = super::sinks::redis_connection(&self.client, &mut self.con).await?;
        let mut pipe = redis::pipe();
        for (k, s) in &sums {
            for (field, n) in ["requests", "errors", "bytes_in", "bytes_out"].iter().zip(s) {
                pipe.cmd("HINCRBY").arg(k).arg(field).arg(*n).ignore();
            }
            pipe.cmd("EXPIRE").arg(k).arg(KEEP.as_secs()).ignore();
        }
        pipe.query_async::<()>(&mut con)
            .await
            .map_err(|e| Failure::Retry(format!("redis HINCRBY: {e}")))?;
        self.con = Some(con);
        Ok(())
    }
}

/// Today's totals of one consumer across the fleet.
pub async fn today(url: &str, consumer: &str) -> Result<serde_json::Value, String> {
    let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let fetch = async {
        let mut con = client.get_multiplexed_async_connection().await?;
        redis::cmd("HGETALL")
            .arg(key(&day, consumer))
            .query_async::<BTreeMap<String, u64>>(&mut con)
            .await
    };
    let m = tokio::time::timeout(Duration::from_secs(2), fetch)
        .await
        .map_err(|_| "redis did not answer within 2s".to_string())?
        .map_err(|e| e.to_string())?;
    let get = |k: &str| m.get(k).copied().unwrap_or(0);
    Ok(serde_json::json!({
        "day": day,
        "requests": get("requests"), "errors": get("errors"),
        "bytes_in": get("bytes_in"), "bytes_out": get("bytes_out"),
    }))
}
