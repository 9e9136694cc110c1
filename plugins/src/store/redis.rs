//! Redis: counters shared by every node of a fleet. One round trip per limit per request
//! (an atomic Lua script), bounded by `timeout`; the connection manager reconnects by
//! itself, so Redis coming back is picked up without a restart.

use crate::metrics::{STORE_ERRORS, STORE_LATENCY};
use redis::aio::ConnectionManager;
use redis::{Client, Script};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

pub struct Redis {
    client: Client,
    timeout: Duration,
    conn: OnceCell<ConnectionManager>,
    /// Last failed connect (ms since `epoch`), so a down Redis is not dialled per request.
    last_connect_failure: AtomicU64,
    epoch: Instant,
}

/// GCRA on Redis time, so every node agrees on "now". Returns
/// {allowed, retry_after_us, tat_minus_now_us}.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat - now > tau then
  return {0, tat - now - tau, tat - now}
end
local new = tat + interval
redis.call('SET', KEYS[1], new, 'PX', math.floor((new - now) / 1000) + 1000)
return {1, 0, new - now}
"#;

/// Counts one use of a quota unless it is spent. Returns {allowed, used}.
const QUOTA: &str = r#"
local used = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local limit = tonumber(ARGV[2])
if used >= limit then return {0, used} end
used = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('EXPIREAT', KEYS[1], tonumber(ARGV[3]))
return {1, used}
"#;

static GCRA_SCRIPT: once_cell::sync::Lazy<Script> = once_cell::sync::Lazy::new(|| Script::new(GCRA));
static QUOTA_SCRIPT: once_cell::sync::Lazy<Script> = once_cell::sync::Lazy::new(|| Script::new(QUOTA));

/// A script argument.
enum Arg<'a> {
    Int(i64),
    Str(&'a str),
}

const RECONNECT_EVERY: Duration = Duration::from_millis(500);

impl Redis {
    pub fn new(url: &str, timeout: Duration) -> Result<Redis, String> {
        let client = Client::open(url).map_err(|e| format!("invalid redis URL: {e}"))?;
        Ok(Redis {
            client,
            timeout,
            conn: OnceCell::new(),
            last_connect_failure: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    async fn conn(&self) -> Result<ConnectionManager, String> {
        if let Some(c) = self.conn.get() {
            return Ok(c.clone());
        }
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let last = self.last_connect_failure.load(Ordering::Relaxed);
        if last != 0 && now - last < RECONNECT_EVERY.as_millis() as u64 {
            return Err("redis unreachable".into());
        }
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout.max(Duration::from_millis(100)))
            .set_response_timeout(self.timeout.max(Duration::from_millis(50)))
            .set_number_of_retries(1)
            .set_max_delay(500);
        match self
            .conn
            .get_or_try_init(|| ConnectionManager::new_with_config(self.client.clone(), cfg))
            .await
        {
            Ok(c) => Ok(c.clone()),
            Err(e) => {
                self.last_connect_failure.store(now, Ordering::Relaxed);
                Err(format!("redis connect: {e}"))
            }
        }
    }

    /// One script call: bounded by `timeout`, timed and counted in the store metrics.
    async fn run<T: redis::FromRedisValue>(&self, op: &str, script: &Script, keys: &[&str], args: &[Arg<'_>]) -> Result<T, String> {
        let started = Instant::now();
        let call = async {
            let mut conn = self.conn().await?;
            let mut inv = script.prepare_invoke();
            for k in keys {
                inv.key(*k);
            }
            for a in args {
                match a {
                    Arg::Int(i) => inv.arg(*i),
                    Arg::Str(t) => inv.arg(*t),
                };
            }
            inv.invoke_async::<T>(&mut conn).await.map_err(|e| e.to_string())
        };
        let r = match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(format!("redis call took longer than {:?}", self.timeout)),
        };
        STORE_LATENCY
            .with_label_values(&["redis", op])
            .observe(started.elapsed().as_secs_f64());
        if r.is_err() {
            STORE_ERRORS.with_label_values(&["redis", op]).inc();
        }
        r
    }

    /// (allowed, retry_after, time until the bucket is full)
    pub async fn gcra(&self, key: &str, interval: Duration, tau: Duration) -> Result<(bool, Duration, Duration), String> {
        let (ok, retry, full): (i64, i64, i64) = self
            .run(
                "rate_limit",
                &GCRA_SCRIPT,
                &[key],
                &[Arg::Int(interval.as_micros() as i64), Arg::Int(tau.as_micros() as i64)],
            )
            .await?;
        Ok((
            ok == 1,
            Duration::from_micros(retry.max(0) as u64),
            Duration::from_micros(full.max(0) as u64),
        ))
    }

    /// (allowed, used after this request)
    pub async fn quota(&self, key: &str, field: &str, limit: u64, expire_at: u64) -> Result<(bool, u64), String> {
        let (ok, used): (i64, i64) = self
            .run(
                "quota",
                &QUOTA_SCRIPT,
                &[key],
                &[Arg::Str(field), Arg::Int(limit as i64), Arg::Int(expire_at as i64)],
            )
            .await?;
        Ok((ok == 1, used.max(0) as u64))
    }

    /// All quota counters of a hash (admin usage), with a longer timeout than requests get.
    pub async fn hgetall(&self, key: &str) -> Result<Vec<(String, u64)>, String> {
        let mut conn = self.conn().await?;
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(key);
        let call = cmd.query_async::<Vec<(String, u64)>>(&mut conn);
        tokio::time::timeout(Duration::from_secs(2), call)
            .await
            .map_err(|_| "timeout".to_string())?
            .map_err(|e| e.to_string())
    }

    pub async fn del(&self, key: &str) -> Result<(), String> {
        let mut conn = self.conn().await?;
        let mut cmd = redis::cmd("DEL");
        cmd.arg(key);
        let call = cmd.query_async::<i64>(&mut conn);
        tokio::time::timeout(Duration::from_secs(2), call)
            .await
            .map_err(|_| "timeout".to_string())?
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
