//! The usage ledger behind `GET /usage/NAME?period=month`: requests per consumer, month and
//! route, read from the spool like a sink. Its counts and its position are written together
//! to `usage.json` (atomically), so a crash neither loses nor double-counts an event that
//! reached the spool. A preview for operators: the billing system stays the source of truth.

use super::sinks::{Failure, Sink};
use super::spool::{write_atomic, Batch, Cursor};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Months kept: this one and the twelve before it.
const MONTHS: usize = 13;

#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct RouteUsage {
    pub requests: u64,
    /// Neither refused by the gateway nor failed (status below 500).
    pub billable: u64,
}

/// month (`2026-12`) -> consumer -> route -> counts.
pub type Months = BTreeMap<String, BTreeMap<String, BTreeMap<String, RouteUsage>>>;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    cursor: String,
    months: Months,
}

static LEDGER: Mutex<Option<Months>> = Mutex::new(None);

fn path(spool: &Path) -> PathBuf {
    spool.join("usage.json")
}

fn load(spool: &Path) -> Saved {
    match std::fs::read(path(spool)) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            log::error!(
                "metering: {} is unreadable ({e}); the usage preview starts again from the spool",
                path(spool).display()
            );
            Saved::default()
        }),
        Err(_) => Saved::default(),
    }
}

pub struct Ledger {
    spool: PathBuf,
    /// What `usage.json` holds: the counts of every event before this position.
    durable: Cursor,
    /// How far the counts in memory go.
    read: Cursor,
    last_write: Option<std::time::Instant>,
}

/// `usage.json` is rewritten at most this often (counts and position together), so a
/// large ledger costs one write every few seconds, not one per batch.
const WRITE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
/// Consumers per month; the rest count under `_other` (JWT subjects can be minted).
const MAX_CONSUMERS: usize = 10_000;

impl Ledger {
    /// Memory runs ahead of the file between writes; the file is always whole (counts with
    /// the position they cover), and a crash replays the spool from that position.
    fn persist(&mut self, months: Months) {
        let saved = Saved {
            cursor: self.read.text(),
            months,
        };
        let written = serde_json::to_vec(&saved)
            .map_err(std::io::Error::other)
            .and_then(|bytes| write_atomic(&path(&self.spool), &bytes));
        match written {
            Ok(()) => {
                self.durable = self.read.clone();
                self.last_write = Some(std::time::Instant::now());
            }
            Err(e) => log::error!("metering: cannot write {}: {e}", path(&self.spool).display()),
        }
    }

    pub fn open(spool: &Path) -> Ledger {
        let saved = load(spool);
        *LEDGER.lock().unwrap_or_else(|p| p.into_inner()) = Some(saved.months);
        Ledger {
            spool: spool.to_path_buf(),
            durable: Cursor::parse(&saved.cursor).unwrap_or_default(),
            read: Cursor::parse(&saved.cursor).unwrap_or_default(),
            last_write: None,
        }
    }
}

#[async_trait]
impl Sink for Ledger {
    async fn send(&mut self, batch: &Batch) -> Result<(), Failure> {
        let snapshot = {
            let mut guard = LEDGER.lock().unwrap_or_else(|p| p.into_inner());
            let months = guard.get_or_insert_with(Months::new);
            for line in batch.lines() {
                let Some(l) = super::fields::read(line) else { continue };
                let Some(month) = l.time.get(..7) else { continue };
                // Looked up before inserting: no key allocated for a name already there.
                let consumers = match months.get_mut(month) {
                    Some(c) => c,
                    None => months.entry(month.to_string()).or_default(),
                };
                let mut consumer = l.consumer.as_deref().unwrap_or("anonymous");
                if consumers.len() >= MAX_CONSUMERS && !consumers.contains_key(consumer) {
                    consumer = "_other";
                }
                if !consumers.contains_key(consumer) {
                    consumers.insert(consumer.to_string(), BTreeMap::new());
                }
                let Some(routes) = consumers.get_mut(consumer) else { continue };
                let route = l.route.as_deref().unwrap_or("_none");
                if !routes.contains_key(route) {
                    routes.insert(route.to_string(), RouteUsage::default());
                }
                let Some(r) = routes.get_mut(route) else { continue };
                r.requests += 1;
                r.billable += u64::from(l.rejection.is_none() && (100..500).contains(&l.status));
            }
            while months.len() > MONTHS {
                months.pop_first();
            }
            let due = self.last_write.is_none_or(|t| t.elapsed() >= WRITE_EVERY);
            due.then(|| months.clone())
        };
        self.read = batch.end.clone();
        if let Some(months) = snapshot {
            self.persist(months);
        }
        Ok(())
    }

    /// Caught up: what memory holds beyond the file is written now.
    async fn idle(&mut self) {
        if self.read != self.durable {
            let months = LEDGER.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default();
            self.persist(months);
        }
    }

    fn own_cursor(&self) -> Option<Cursor> {
        Some(self.durable.clone())
    }
}

/// One consumer's routes in `month`, from memory when this process keeps the ledger, else
/// from the file (a process that has not taken over delivery yet, during an upgrade).
pub fn usage(spool: &Path, month: &str, consumer: &str) -> BTreeMap<String, RouteUsage> {
    let pick = |m: &Months| m.get(month).and_then(|c| c.get(consumer)).cloned().unwrap_or_default();
    if let Some(m) = LEDGER.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        return pick(m);
    }
    pick(&load(spool).months)
}
