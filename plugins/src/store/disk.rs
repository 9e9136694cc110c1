//! The embedded on-disk store: SQLite in WAL mode, which several processes may open at
//! once. That matters during a graceful upgrade, when the old and the new process both
//! count for a while.
//!
//! Requests never touch the disk: counts are kept in memory and flushed as deltas every
//! second (`count = count + delta ... RETURNING count`), which also brings in what other
//! processes flushed. A crash loses at most the last second of counting.

use rusqlite::{params, Connection};
use std::collections::HashMap;
use std::sync::Mutex;

pub struct Disk {
    conn: Mutex<Connection>,
}

/// (scope, consumer, period)
pub type QuotaKey = (String, String, String);

impl Disk {
    pub fn open(dir: &str) -> Result<Disk, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {dir}: {e}"))?;
        let path = format!("{}/gatehouse.db", dir.trim_end_matches('/'));
        let conn = Connection::open(&path).map_err(|e| format!("cannot open {path}: {e}"))?;
        conn.busy_timeout(std::time::Duration::from_secs(2)).map_err(|e| e.to_string())?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| format!("{path}: {e}"))?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(|e| e.to_string())?;
        conn.execute(
            "CREATE TABLE IF NOT EXISTS quota_usage (scope TEXT NOT NULL, consumer TEXT NOT NULL, period TEXT NOT NULL, used INTEGER NOT NULL, PRIMARY KEY (scope, consumer, period))",
            [],
        )
        .map_err(|e| format!("{path}: {e}"))?;
        Ok(Disk { conn: Mutex::new(conn) })
    }

    /// Adds deltas and returns the totals after the flush (including other processes').
    pub fn flush(&self, deltas: &HashMap<QuotaKey, u64>) -> Result<HashMap<QuotaKey, u64>, String> {
        let mut conn = self.conn.lock().map_err(|_| "store lock poisoned".to_string())?;
        let tx = conn.transaction().map_err(|e| e.to_string())?;
        let mut out = HashMap::with_capacity(deltas.len());
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO quota_usage (scope, consumer, period, used) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (scope, consumer, period) DO UPDATE SET used = used + excluded.used RETURNING used",
                )
                .map_err(|e| e.to_string())?;
            for (k, d) in deltas {
                let total: i64 = stmt
                    .query_row(params![k.0, k.1, k.2, *d as i64], |r| r.get(0))
                    .map_err(|e| e.to_string())?;
                out.insert(k.clone(), total.max(0) as u64);
            }
        }
        tx.commit().map_err(|e| e.to_string())?;
        Ok(out)
    }

    pub fn get(&self, key: &QuotaKey) -> Result<u64, String> {
        let conn = self.conn.lock().map_err(|_| "store lock poisoned".to_string())?;
        let r: Result<i64, _> = conn.query_row(
            "SELECT used FROM quota_usage WHERE scope = ?1 AND consumer = ?2 AND period = ?3",
            params![key.0, key.1, key.2],
            |r| r.get(0),
        );
        match r {
            Ok(v) => Ok(v.max(0) as u64),
            Err(rusqlite::Error::QueryReturnedNoRows) => Ok(0),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Every counter of these periods: what a new process starts from.
    pub fn current(&self, periods: &[String]) -> Result<Vec<(QuotaKey, u64)>, String> {
        let conn = self.conn.lock().map_err(|_| "store lock poisoned".to_string())?;
        let mut stmt = conn
            .prepare("SELECT scope, consumer, period, used FROM quota_usage WHERE period = ?1 OR period = ?2")
            .map_err(|e| e.to_string())?;
        let (a, b) = (
            periods.first().cloned().unwrap_or_default(),
            periods.get(1).cloned().unwrap_or_default(),
        );
        let rows = stmt
            .query_map(params![a, b], |r| {
                Ok((
                    (r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?),
                    r.get::<_, i64>(3)?.max(0) as u64,
                ))
            })
            .map_err(|e| e.to_string())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())
    }

    /// Every counter of a consumer: (scope, period, used).
    pub fn usage(&self, consumer: &str) -> Result<Vec<(String, String, u64)>, String> {
        let conn = self.conn.lock().map_err(|_| "store lock poisoned".to_string())?;
        let mut stmt = conn
            .prepare("SELECT scope, period, used FROM quota_usage WHERE consumer = ?1 ORDER BY period, scope")
            .map_err(|e| e.to_string())?;
        let rows = stmt
            .query_map(params![consumer], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?.max(0) as u64))
            })
            .map_err(|e| e.to_string())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())
    }

    pub fn reset(&self, consumer: &str, period: &str) -> Result<usize, String> {
        let conn = self.conn.lock().map_err(|_| "store lock poisoned".to_string())?;
        conn.execute(
            "DELETE FROM quota_usage WHERE consumer = ?1 AND period = ?2",
            params![consumer, period],
        )
        .map_err(|e| e.to_string())
    }
}
