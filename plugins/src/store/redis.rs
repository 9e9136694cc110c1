//! Redis: counters shared by every node of a fleet. One round trip per limit per request
//! (an atomic Lua script), bounded by `timeout`.
//!
//! One multiplexed connection, replaced as soon as it breaks: a call that finds it dropped
//! (Redis restarted, the network cut) throws it away, and the next call starts a new one
//! in the background (at most one attempt per `RECONNECT_EVERY`), so limits are enforced
//! again within a fraction of a second of Redis being back, never after a gateway restart.
//! Connecting never runs inside a request's own deadline, which would cancel it every
//! time. Scripts are reloaded by the client when a restarted Redis answers NOSCRIPT.

use crate::metrics::{STORE_ERRORS, STORE_LATENCY};
use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::{Client, Script};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Redis {
    client: Client,
    timeout: Duration,
    conn: Arc<ArcSwapOption<MultiplexedConnection>>,
    connecting: Arc<AtomicBool>,
    /// Woken when a connect attempt ends.
    attempted: Arc<tokio::sync::Notify>,
    /// Last connect attempt (ms since `epoch`, 0: never).
    last_attempt: AtomicU64,
    /// Calls in a row that timed out: past `DEAD_AFTER`, the connection is presumed dead.
    timeouts: AtomicU32,
    epoch: Instant,
}

const RECONNECT_EVERY: Duration = Duration::from_millis(100);
const DEAD_AFTER: u32 = 5;

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

impl Redis {
    pub fn new(url: &str, timeout: Duration) -> Result<Redis, String> {
        let client = Client::open(url).map_err(|e| format!("invalid redis URL: {e}"))?;
        Ok(Redis {
            client,
            timeout,
            conn: Arc::new(ArcSwapOption::empty()),
            connecting: Arc::new(AtomicBool::new(false)),
            attempted: Arc::new(tokio::sync::Notify::new()),
            last_attempt: AtomicU64::new(0),
            timeouts: AtomicU32::new(0),
            epoch: Instant::now(),
        })
    }

    /// The live connection; without one, a connect is started in the background and
    /// waited for up to the call's timeout (a local Redis answers in a millisecond).
    async fn conn(&self) -> Result<MultiplexedConnection, String> {
        if let Some(c) = self.conn.load_full() {
            return Ok((*c).clone());
        }
        let attempted = self.attempted.notified();
        self.reconnect();
        if self.connecting.load(Ordering::Acquire) {
            let _ = tokio::time::timeout(self.timeout, attempted).await;
        }
        match self.conn.load_full() {
            Some(c) => Ok((*c).clone()),
            None => Err("redis not connected".into()),
        }
    }

    /// Connects ahead of the first request (called once the runtime runs).
    pub fn warm(&self) {
        self.reconnect();
    }

    /// Starts one background connect unless one is running or one started within
    /// `RECONNECT_EVERY`.
    fn reconnect(&self) {
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let last = self.last_attempt.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < RECONNECT_EVERY.as_millis() as u64 {
            return;
        }
        if self.connecting.swap(true, Ordering::AcqRel) {
            return;
        }
        self.last_attempt.store(now, Ordering::Relaxed);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.connecting.store(false, Ordering::Release);
            return;
        };
        let client = self.client.clone();
        let (slot, connecting, attempted) = (self.conn.clone(), self.connecting.clone(), self.attempted.clone());
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Duration::from_secs(1))
            .set_response_timeout(self.timeout.max(Duration::from_millis(50)));
        rt.spawn(async move {
            match client.get_multiplexed_async_connection_with_config(&cfg).await {
                Ok(c) => {
                    log::info!("redis: connected");
                    slot.store(Some(Arc::new(c)));
                }
                Err(e) => log::warn!("redis: connect failed: {e}"),
            }
            connecting.store(false, Ordering::Release);
            attempted.notify_waiters();
        });
    }

    /// After a failed call: a broken connection is dropped so the next call reconnects.
    fn on_error(&self, e: &redis::RedisError) {
        if e.is_connection_dropped() || e.is_io_error() || e.is_connection_refusal() || e.is_unrecoverable_error() {
            self.drop_connection();
        }
    }

    fn on_timeout(&self) {
        if self.timeouts.fetch_add(1, Ordering::Relaxed) + 1 >= DEAD_AFTER {
            self.drop_connection();
        }
    }

    fn drop_connection(&self) {
        if self.conn.swap(None).is_some() {
            log::warn!("redis: connection lost, reconnecting");
        }
        self.timeouts.store(0, Ordering::Relaxed);
        self.reconnect();
    }

    /// One script call: bounded by `timeout`, timed and counted in the store metrics.
    async fn run<T: redis::FromRedisValue>(&self, op: &str, script: &Script, keys: &[&str], args: &[Arg<'_>]) -> Result<T, String> {
        let started = Instant::now();
        let r = match self.conn().await {
            Err(e) => Err(e),
            Ok(mut conn) => {
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
                match tokio::time::timeout(self.timeout, inv.invoke_async::<T>(&mut conn)).await {
                    Ok(Ok(v)) => {
                        self.timeouts.store(0, Ordering::Relaxed);
                        Ok(v)
                    }
                    Ok(Err(e)) => {
                        self.on_error(&e);
                        Err(e.to_string())
                    }
                    Err(_) => {
                        self.on_timeout();
                        Err(format!("redis call took longer than {:?}", self.timeout))
                    }
                }
            }
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
