//! The cache's memory: TinyUFO (Pingora's admission + eviction policy: TinyLFU admission,
//! S3-FIFO eviction) holding whole responses, with byte accounting. Reads are lock-free;
//! a small index, touched only when entries come and go, lets purges find entries by host,
//! path prefix or tag.

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora_cache::key::{CacheHashKey, CompactCacheKey};
use pingora_cache::storage::{HandleHit, HandleMiss, MissFinishType};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheEntryKey, CacheKey, CacheMeta, HitHandler, MissHandler, PurgeOutcome, PurgeTarget, PurgeType, Storage};
use pingora_error::{Error, ErrorType, Result};
use prometheus::{IntCounter, IntGauge};
use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tinyufo::TinyUfo;

/// What a cached entry is about, for purges. Travels in the cache key's extensions from
/// `cache_key_callback` to the miss handler.
#[derive(Debug, Clone, Default)]
pub struct EntryInfo {
    pub host: String,
    pub path: String,
    /// Response header whose values tag the entry (e.g. surrogate-key).
    pub tag_header: Option<http::HeaderName>,
}

pub struct Entry {
    key: u128,
    meta: (Vec<u8>, Vec<u8>),
    body: Bytes,
    size: usize,
    host: String,
    path: String,
    tags: Vec<String>,
}

pub struct Metrics {
    pub bytes: IntGauge,
    pub objects: IntGauge,
    pub evictions: IntCounter,
}

pub struct MemStore {
    ufo: TinyUfo<u128, Arc<Entry>>,
    index: Mutex<HashMap<u128, Arc<Entry>>>,
    bytes: AtomicUsize,
    pub max_object: usize,
    pub budget: usize,
    metrics: Metrics,
}

/// TinyUFO weighs entries in u16 units: KiB, so one entry may be up to 64 MiB.
fn weight(size: usize) -> u16 {
    size.div_ceil(1024).clamp(1, u16::MAX as usize) as u16
}

fn key_of(k: &impl CacheHashKey) -> u128 {
    u128::from_be_bytes(k.combined_bin())
}

impl MemStore {
    pub fn new(budget: usize, max_object: usize, metrics: Metrics) -> MemStore {
        MemStore {
            ufo: TinyUfo::new(budget / 1024, (budget / 16_384).max(64)),
            index: Mutex::new(HashMap::new()),
            bytes: AtomicUsize::new(0),
            max_object,
            budget,
            metrics,
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    fn index(&self) -> std::sync::MutexGuard<'_, HashMap<u128, Arc<Entry>>> {
        match self.index.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn forget(&self, e: &Entry, evicted: bool) {
        let mut idx = self.index();
        if idx.get(&e.key).is_some_and(|cur| std::ptr::eq(cur.as_ref(), e)) {
            idx.remove(&e.key);
            self.bytes.fetch_sub(e.size, Ordering::Relaxed);
            self.metrics.objects.dec();
            if evicted {
                self.metrics.evictions.inc();
            }
        }
        self.metrics.bytes.set(self.bytes.load(Ordering::Relaxed) as i64);
    }

    fn insert(&self, e: Arc<Entry>) {
        {
            let mut idx = self.index();
            if let Some(old) = idx.insert(e.key, e.clone()) {
                self.bytes.fetch_sub(old.size, Ordering::Relaxed);
            } else {
                self.metrics.objects.inc();
            }
            self.bytes.fetch_add(e.size, Ordering::Relaxed);
        }
        // Eviction (or TinyLFU refusing the new entry) hands back what left.
        for kv in self.ufo.put(e.key, e.clone(), weight(e.size)) {
            self.forget(&kv.data, true);
        }
        self.metrics.bytes.set(self.bytes.load(Ordering::Relaxed) as i64);
    }

    fn remove(&self, key: u128) -> bool {
        let removed = self.ufo.remove(&key);
        let indexed = self.index().get(&key).cloned();
        match indexed.or(removed) {
            Some(e) => {
                self.forget(&e, false);
                true
            }
            None => false,
        }
    }

    /// Removes every entry `pred` selects; returns how many.
    pub fn purge_where(&self, pred: impl Fn(&str, &str, &[String]) -> bool) -> usize {
        let keys: Vec<u128> = self
            .index()
            .values()
            .filter(|e| pred(&e.host, &e.path, &e.tags))
            .map(|e| e.key)
            .collect();
        keys.into_iter().filter(|k| self.remove(*k)).count()
    }
}

#[async_trait]
impl Storage for MemStore {
    async fn lookup(&'static self, key: &CacheKey, _trace: &SpanHandle) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(e) = self.ufo.get(&key_of(key)) else { return Ok(None) };
        // Stale entries are returned too: Pingora decides freshness and revalidates.
        let meta = CacheMeta::deserialize(&e.meta.0, &e.meta.1)?;
        let hit = MemHit {
            body: e.body.clone(),
            start: 0,
            end: e.body.len(),
            done: false,
            weight: e.size,
        };
        Ok(Some((meta, Box::new(hit))))
    }

    async fn get_miss_handler(&'static self, key: &CacheKey, meta: &CacheMeta, _trace: &SpanHandle) -> Result<MissHandler> {
        let info = key.extensions.get::<EntryInfo>().cloned().unwrap_or_default();
        let tags = match &info.tag_header {
            Some(h) => meta
                .headers()
                .get_all(h)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split([' ', ',']))
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect(),
            None => Vec::new(),
        };
        Ok(Box::new(MemMiss {
            store: self,
            key: key_of(key),
            meta: meta.serialize()?,
            body: BytesMut::new(),
            info,
            tags,
        }))
    }

    async fn purge(&'static self, target: PurgeTarget<'_>, _kind: PurgeType, _trace: &SpanHandle) -> Result<PurgeOutcome> {
        if matches!(target, PurgeTarget::Exact(CacheEntryKey::Identified { .. })) {
            return Ok(PurgeOutcome::NotFound);
        }
        let k: &CompactCacheKey = target.key();
        Ok(if self.remove(key_of(k)) {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn update_meta(&'static self, key: &CacheKey, meta: &CacheMeta, _trace: &SpanHandle) -> Result<bool> {
        let k = key_of(key);
        // The entry may have been evicted between lookup and revalidation.
        let Some(old) = self.ufo.get(&k) else { return Ok(false) };
        let e = Arc::new(Entry {
            key: k,
            meta: meta.serialize()?,
            body: old.body.clone(),
            size: old.size,
            host: old.host.clone(),
            path: old.path.clone(),
            tags: old.tags.clone(),
        });
        self.insert(e);
        Ok(true)
    }

    fn support_streaming_partial_write(&self) -> bool {
        false
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

struct MemHit {
    body: Bytes,
    start: usize,
    end: usize,
    done: bool,
    weight: usize,
}

#[async_trait]
impl HandleHit for MemHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.start..self.end)))
    }

    async fn finish(self: Box<Self>, _storage: &'static (dyn Storage + Sync), _key: &CacheKey, _trace: &SpanHandle) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let len = self.body.len();
        if start >= len {
            return Error::e_explain(ErrorType::InternalError, format!("seek start {start} past body length {len}"));
        }
        self.start = start;
        self.end = end.map_or(len, |e| e.min(len)).max(start);
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.weight
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

struct MemMiss {
    store: &'static MemStore,
    key: u128,
    meta: (Vec<u8>, Vec<u8>),
    body: BytesMut,
    info: EntryInfo,
    tags: Vec<String>,
}

#[async_trait]
impl HandleMiss for MemMiss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if self.body.len() + data.len() > self.store.max_object {
            return Error::e_explain(ErrorType::InternalError, "response larger than cache max_object");
        }
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let MemMiss {
            store,
            key,
            meta,
            body,
            info,
            tags,
        } = *self;
        // Count what the entry really holds: body, serialized meta, bookkeeping.
        let size = body.len()
            + meta.0.len()
            + meta.1.len()
            + info.host.len()
            + info.path.len()
            + tags.iter().map(|t| t.len() + 24).sum::<usize>()
            + 160;
        store.insert(Arc::new(Entry {
            key,
            meta,
            body: body.freeze(),
            size,
            host: info.host,
            path: info.path,
            tags,
        }));
        Ok(MissFinishType::Created(size))
    }
}
