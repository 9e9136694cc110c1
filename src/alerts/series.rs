//! Per-route counts for the SLO rules. The request path bumps three kinds of cumulative
//! atomics (requests, 5xx, slower than each latency threshold); the evaluator keeps one
//! snapshot of them per bucket and reads a window as "now minus the snapshot a window ago",
//! so the bucket in progress always counts and the request path never takes a lock.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct RouteSeries {
    total: AtomicU64,
    errors: AtomicU64,
    thresholds: Box<[Duration]>,
    slow: Box<[AtomicU64]>,
}

impl RouteSeries {
    fn new(thresholds: &[Duration]) -> RouteSeries {
        RouteSeries {
            total: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            thresholds: thresholds.into(),
            slow: thresholds.iter().map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// One finished request. A 5xx counts against availability whoever made it (the
    /// upstream, or the gateway's 502/503/504 when the upstream failed).
    pub fn record(&self, status: u16, elapsed: Duration) {
        let r = Ordering::Relaxed;
        self.total.fetch_add(1, r);
        if status >= 500 {
            self.errors.fetch_add(1, r);
        }
        for (t, n) in self.thresholds.iter().zip(self.slow.iter()) {
            if elapsed > *t {
                n.fetch_add(1, r);
            }
        }
    }

    pub fn read(&self) -> Counts {
        let r = Ordering::Relaxed;
        Counts {
            total: self.total.load(r),
            errors: self.errors.load(r),
            slow: self.slow.iter().map(|n| n.load(r)).collect(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    pub total: u64,
    pub errors: u64,
    pub slow: Vec<u64>,
}

impl Counts {
    fn minus(&self, earlier: &Counts) -> Counts {
        Counts {
            total: self.total.saturating_sub(earlier.total),
            errors: self.errors.saturating_sub(earlier.errors),
            slow: self
                .slow
                .iter()
                .enumerate()
                .map(|(i, n)| n.saturating_sub(earlier.slow.get(i).copied().unwrap_or(0)))
                .collect(),
        }
    }
}

/// Series outlive a reload (a route keeps its history) but not a restart: the counts live in
/// this process only. Keyed by route and its thresholds: a changed threshold starts afresh.
type SeriesMap = HashMap<(String, Vec<Duration>), Arc<RouteSeries>>;
static SERIES: Mutex<Option<SeriesMap>> = Mutex::new(None);

pub fn for_route(route: &str, thresholds: &[Duration]) -> Arc<RouteSeries> {
    let mut map = SERIES.lock().unwrap_or_else(|p| p.into_inner());
    map.get_or_insert_with(HashMap::new)
        .entry((route.to_string(), thresholds.to_vec()))
        .or_insert_with(|| Arc::new(RouteSeries::new(thresholds)))
        .clone()
}

/// The evaluator's snapshots of one series, one per bucket.
#[derive(Default)]
pub struct History {
    points: VecDeque<(u64, Counts)>,
}

impl History {
    /// Notes `now` (cumulative) at bucket `bucket`, keeping `keep` buckets.
    pub fn note(&mut self, bucket: u64, now: &Counts, keep: u64) {
        if self.points.back().is_none_or(|(b, _)| *b < bucket) {
            self.points.push_back((bucket, now.clone()));
        }
        while self.points.len() > 1 && self.points.front().is_some_and(|(b, _)| b + keep < bucket) {
            self.points.pop_front();
        }
    }

    /// What happened over the last `buckets` buckets (the one in progress included). A
    /// history shorter than the window gives what happened since it began.
    pub fn window(&self, bucket: u64, now: &Counts, buckets: u64) -> Counts {
        let start = bucket.saturating_sub(buckets);
        let base = self
            .points
            .iter()
            .rev()
            .find(|(b, _)| *b <= start)
            .or(self.points.front())
            .map(|(_, c)| c);
        match base {
            Some(c) => now.minus(c),
            None => now.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(total: u64, errors: u64) -> Counts {
        Counts {
            total,
            errors,
            slow: vec![],
        }
    }

    #[test]
    fn a_window_is_now_minus_the_snapshot_a_window_ago() {
        let mut h = History::default();
        h.note(0, &c(0, 0), 10);
        h.note(1, &c(100, 1), 10);
        h.note(2, &c(200, 50), 10);
        // At bucket 3 with 300 requests and 60 errors in all: the last bucket, the last two.
        assert_eq!(h.window(3, &c(300, 60), 1), c(100, 10));
        assert_eq!(h.window(3, &c(300, 60), 2), c(200, 59));
        // Longer than the history: since it began.
        assert_eq!(h.window(3, &c(300, 60), 100), c(300, 60));
    }

    #[test]
    fn old_snapshots_are_pruned() {
        let mut h = History::default();
        for b in 0..100 {
            h.note(b, &c(b, 0), 5);
        }
        assert!(h.points.len() <= 7, "{}", h.points.len());
        assert_eq!(h.window(99, &c(99, 0), 5), c(5, 0));
    }

    #[test]
    fn slow_requests_count_per_threshold() {
        let s = RouteSeries::new(&[Duration::from_millis(100), Duration::from_millis(300)]);
        s.record(200, Duration::from_millis(50));
        s.record(500, Duration::from_millis(200));
        s.record(200, Duration::from_millis(400));
        assert_eq!(
            s.read(),
            Counts {
                total: 3,
                errors: 1,
                slow: vec![2, 1]
            }
        );
    }
}
