//! The local quota counters against a real on-disk store (SQLite in a temporary directory):
//! a failed flush keeps its counts for the next one and is counted, a reset is not undone
//! by later flushes, and counts loaded from disk are what a new process starts from. Its
//! own test binary: the stores are one per process.

use gatehouse_plugins::limits::calendar::{now_secs, Period};
use gatehouse_plugins::limits::counters;
use gatehouse_plugins::store::{self, StoreConfig};
use std::time::Duration;

fn today() -> String {
    Period::Day.at(now_secs()).0
}

#[test]
fn failed_flushes_are_retried_and_resets_stick() {
    let dir = std::env::temp_dir().join(format!("gatehouse-quota-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let stores = store::init(StoreConfig {
        path: Some(dir.display().to_string()),
        redis: None,
        timeout: Duration::from_millis(20),
        allow_on_error: true,
    })
    .unwrap();
    stores.open_disk().unwrap();
    let key = ("r".to_string(), "acme".to_string(), today());
    for _ in 0..3 {
        assert!(counters::take(key.clone(), 10).0);
    }
    counters::load_pending();
    assert_eq!(counters::flush(), 1);
    assert_eq!(counters::unflushed(), 0);

    // The store breaks (the table is gone): the flush fails, the counts stay, it is counted.
    let db = rusqlite::Connection::open(dir.join("gatehouse.db")).unwrap();
    db.execute("ALTER TABLE quota_usage RENAME TO broken", []).unwrap();
    for _ in 0..2 {
        assert!(counters::take(key.clone(), 10).0);
    }
    let errors = || {
        gatehouse_plugins::metrics::STORE_ERRORS
            .with_label_values(&["disk", "quota_flush"])
            .get()
    };
    let before = errors();
    assert_eq!(counters::flush(), 0);
    assert_eq!(counters::unflushed(), 2, "kept for the next flush");
    assert_eq!(errors(), before + 1);
    // Repaired: the next flush writes them.
    db.execute("ALTER TABLE broken RENAME TO quota_usage", []).unwrap();
    assert_eq!(counters::flush(), 1);
    assert_eq!(counters::unflushed(), 0);
    let stored: i64 = db
        .query_row("SELECT used FROM quota_usage WHERE consumer = 'acme'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored, 5);

    // A reset, then a flush: the old counts do not come back.
    assert!(counters::take(key.clone(), 10).0);
    counters::reset("acme", &[today()]).unwrap();
    counters::flush();
    let left: i64 = db
        .query_row("SELECT COALESCE(SUM(used), 0) FROM quota_usage WHERE consumer = 'acme'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(left, 0);
    assert_eq!(counters::take(key, 10), (true, 1));
    let _ = std::fs::remove_dir_all(&dir);
}
