//! Where counters that outlive a request live: in this process (rate limits), on disk
//! (quotas, so they survive restarts and upgrades), and in Redis (shared by a fleet).
//!
//! `[store]` is bound at process start: the core calls [`init`] once (no I/O: which stores
//! exist is known from the config), then [`Stores::open_disk`] once the process runs as its
//! final user (after daemonising and dropping privileges, so the files are that user's and
//! no database handle crosses a fork). Limit plugins find the stores through [`get`].

pub mod disk;
pub mod redis;

use once_cell::sync::OnceCell;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// Directory of the on-disk store (quotas); None: quotas are kept in memory only.
    pub path: Option<String>,
    pub redis: Option<String>,
    pub timeout: Duration,
    /// true: requests pass while Redis is unreachable; false: they get 503.
    pub allow_on_error: bool,
}

pub struct Stores {
    pub config: StoreConfig,
    disk: OnceCell<disk::Disk>,
    pub redis: Option<redis::Redis>,
}

impl Stores {
    /// The on-disk store, once opened.
    pub fn disk(&self) -> Option<&disk::Disk> {
        self.disk.get()
    }

    /// Whether quotas are kept on disk (the store may not be open yet).
    pub fn has_disk(&self) -> bool {
        self.config.path.is_some()
    }

    /// Opens the on-disk store, if the config has one, and loads the current periods'
    /// counts into memory before anything can use it. Idempotent. The stores are ready
    /// afterwards (also when opening failed: quotas then count in memory only).
    pub fn open_disk(&self) -> Result<(), String> {
        let result = match &self.config.path {
            None => Ok(()),
            Some(path) => self
                .disk
                .get_or_try_init(|| {
                    let disk = disk::Disk::open(path)?;
                    crate::limits::counters::preload(&disk)?;
                    Ok(disk)
                })
                .map(|_| ()),
        };
        READY.store(true, std::sync::atomic::Ordering::Release);
        result
    }
}

static READY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the stores are open and what they hold is loaded: until then a fresh process
/// would admit quota requests it should count against what it stored before.
pub fn ready() -> bool {
    READY.load(std::sync::atomic::Ordering::Acquire)
}

static STORES: OnceCell<Arc<Stores>> = OnceCell::new();

/// Opens the stores once per process. Later calls return the first result.
pub fn init(config: StoreConfig) -> Result<Arc<Stores>, String> {
    STORES
        .get_or_try_init(|| {
            let redis = match &config.redis {
                Some(url) => Some(redis::Redis::new(url, config.timeout)?),
                None => None,
            };
            Ok(Arc::new(Stores {
                config,
                disk: OnceCell::new(),
                redis,
            }))
        })
        .cloned()
}

/// The stores, or an in-memory-only set when the core never configured any (tests).
pub fn get() -> Arc<Stores> {
    STORES
        .get_or_init(|| {
            Arc::new(Stores {
                config: StoreConfig {
                    path: None,
                    redis: None,
                    timeout: Duration::from_millis(20),
                    allow_on_error: true,
                },
                disk: OnceCell::new(),
                redis: None,
            })
        })
        .clone()
}

/// A limit's `store` key: `Some(true)` redis, `Some(false)` local, `None` whichever
/// `[store]` provides (decided once the stores are open, see [`uses_redis`]).
pub fn parse_choice(v: Option<&str>) -> Result<Option<bool>, crate::PluginError> {
    match v {
        Some("local") => Ok(Some(false)),
        Some("redis") => Ok(Some(true)),
        None => Ok(None),
        Some(other) => Err(crate::util::err("store", format!("`{other}` is not local or redis"))),
    }
}

pub fn uses_redis(choice: Option<bool>) -> bool {
    choice.unwrap_or_else(|| get().redis.is_some())
}

/// What a limited request gets while its store is unreachable: through (`on_error =
/// "allow"`) or 503 naming the store.
pub fn unavailable(ctx: &mut crate::PluginCtx, what: &str, error: &str, message: &'static str) -> crate::Flow {
    log::warn!("{what}: {error}");
    if get().config.allow_on_error {
        crate::Flow::Continue
    } else {
        ctx.rejection = Some("store_unavailable");
        crate::Flow::Respond(crate::Answer::error(503, message))
    }
}
