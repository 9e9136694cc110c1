//! Usage-event delivery through real sockets when things go wrong: a sink that refuses, is
//! killed mid-batch and comes back; a permanent refusal; SIGINT, SIGTERM, `kill -9` and a
//! graceful binary upgrade under load; a spool that fills up. The receiver is the scripted
//! upstream, which records every batch; events are matched with requests through the
//! request ids the test sends (the gateway keeps a client's valid `x-request-id`).

mod common;
use common::gateway::KillOnDrop;
use common::meter::{self, IdLoad, KeepAlive, Scrape};
use common::{request, wait_until, Gateway, Upstream};
use serde_json::Value;
use std::collections::{BTreeSet, HashSet};
use std::ops::Range;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);
const ACME_KEY: &str = "acme-delivery-key-01";
const BOB_KEY: &str = "bob-delivery-key-02";
const DELIVERED: &str = "gatehouse_metering_delivered_total";
const FAILURES: &str = "gatehouse_metering_delivery_failures_total";
const DEAD: &str = "gatehouse_metering_dead_lettered_total";
const DROPPED: &str = "gatehouse_metering_dropped_total";
const SINK: &[(&str, &str)] = &[("sink", "meter")];

/// `spool` goes into `[metering]`, `sink` into the HTTP sink's table.
fn config(up: &Upstream, recv: &Upstream, spool: &str, sink: &str) -> String {
    format!(
        r#"
[metering]
spool_dir = "{{dir}}/spool"
{spool}
{sink}
[consumers.acme]
keys = ["{ACME_KEY}"]
[consumers.bob]
keys = ["{BOB_KEY}"]
[upstreams.users]
targets = ["{up}"]
[routes.users]
paths = ["/users"]
upstream = "users"
[routes.users.plugins.key_auth]
[routes.open]
paths = ["/open"]
upstream = "users"
"#,
        sink = meter::http_sink("meter", recv, sink),
        up = up.addr
    )
}

fn send(gw: &Gateway, path: &str, id: &str, key: Option<&str>) -> u16 {
    let mut headers = vec![("x-request-id", id)];
    if let Some(k) = key {
        headers.push(("x-api-key", k));
    }
    request(&gw.addr, "GET", path, &headers, None).status
}

fn request_ids<'a>(events: impl IntoIterator<Item = &'a Value>) -> BTreeSet<String> {
    events.into_iter().map(|e| meter::request_id(e).to_string()).collect()
}

/// One consumer's client: GETs one after another on one keep-alive connection (so they are
/// served, and metered, in order), ids `PREFIX-000`...; returns the ids.
fn client(addr: &str, key: &'static str, prefix: &'static str, range: Range<usize>) -> JoinHandle<Vec<String>> {
    let addr = addr.to_string();
    std::thread::spawn(move || {
        let mut c = KeepAlive::new(&addr);
        range
            .map(|i| {
                let id = format!("{prefix}-{i:03}");
                let r = c.get("/users/x", &[("x-api-key", key), ("x-request-id", id.as_str())]);
                assert_eq!(r.status, 200, "{id}");
                id
            })
            .collect()
    })
}

/// acme and bob at once, `range` requests each.
fn both(gw: &Gateway, range: Range<usize>) -> (Vec<String>, Vec<String>) {
    let acme = client(&gw.addr, ACME_KEY, "acme", range.clone());
    let bob = client(&gw.addr, BOB_KEY, "bob", range);
    (acme.join().unwrap(), bob.join().unwrap())
}

#[test]
fn a_sink_outage_loses_nothing_duplicates_only_by_id_and_keeps_each_consumers_order() {
    let up = Upstream::start("users");
    let recv = Upstream::start("meter");
    // Refusing, and slow about it: a batch is in flight long enough for the kill to cut it.
    recv.set(|b| {
        b.status = 503;
        b.delay = Duration::from_millis(300);
    });
    let gw = Gateway::start(&config(&up, &recv, "segment_size = \"4KiB\"", "batch_max = 7"));
    let (mut acme, mut bob) = both(&gw, 0..20);
    wait_until(WAIT, "refused batches retried", || meter::metric(&gw, FAILURES, SINK) >= 3.0);
    let posts = recv.count();
    wait_until(WAIT, "a batch in flight", || recv.count() > posts);
    recv.kill();
    let failed = meter::metric(&gw, FAILURES, SINK);
    let (more_acme, more_bob) = both(&gw, 20..40);
    acme.extend(more_acme);
    bob.extend(more_bob);
    wait_until(WAIT, "failed attempts while the receiver is gone", || {
        meter::metric(&gw, FAILURES, SINK) > failed
    });
    assert_eq!(meter::metric(&gw, DELIVERED, SINK), 0.0, "nothing was acknowledged yet");

    recv.set(|b| {
        b.status = 200;
        b.delay = Duration::ZERO;
    });
    let refused = recv.recorded().len();
    recv.revive();
    let sent: BTreeSet<String> = acme.iter().chain(&bob).cloned().collect();
    let after = || -> Vec<Value> {
        meter::batches(&recv.recorded()[refused..], "/events")
            .into_iter()
            .flatten()
            .collect()
    };
    wait_until(Duration::from_secs(30), "every event after the recovery", || {
        sent.is_subset(&request_ids(&after()))
    });

    // Every copy of an id, refused ones included, is the same event; one id per request.
    let by_id = meter::by_id(&meter::events(&recv, "/events"));
    let per_request = meter::ids_per_request(&by_id);
    assert_eq!(
        per_request.keys().cloned().collect::<BTreeSet<_>>(),
        sent,
        "an event per request and no other"
    );
    for (rid, ids) in &per_request {
        assert_eq!(ids.len(), 1, "request {rid} has one event id however often it was sent: {ids:?}");
    }
    let after = after();
    for (consumer, ids) in [("acme", &acme), ("bob", &bob)] {
        let order = meter::first_arrival_order(after.iter().filter(|e| e["data"]["consumer"] == consumer));
        assert_eq!(&order, ids, "{consumer}'s events arrive in the order of its requests");
    }
    wait_until(WAIT, "80 acknowledged and nothing left", || {
        let m = Scrape::of(&gw);
        m.get(DELIVERED, SINK) == 80.0
            && m.get("gatehouse_metering_oldest_undelivered_seconds", SINK) == 0.0
            && meter::sink_status(&gw, "meter")["lag_bytes"] == 0
    });
    let spool = gw.dir.join("spool");
    wait_until(WAIT, "delivered segments removed", || {
        meter::segments(&spool).iter().all(|s| !s.ends_with(".jsonl"))
    });
    assert_eq!(meter::metric(&gw, DEAD, SINK), 0.0, "a 503 is not permanent");
}

#[test]
fn a_permanent_refusal_is_dead_lettered_and_a_429_is_retried_with_the_same_events() {
    let up = Upstream::start("users");
    let recv = Upstream::start("meter");
    recv.set(|b| b.status = 429);
    let gw = Gateway::start(&config(&up, &recv, "", ""));
    for id in ["dl-0", "dl-1"] {
        assert_eq!(send(&gw, "/users/x", id, Some(ACME_KEY)), 200);
    }
    wait_until(WAIT, "the 429s retried", || meter::batches(&recv.recorded(), "/events").len() >= 3);
    let ids = |batch: &[Value]| -> BTreeSet<String> { batch.iter().map(|e| e["id"].to_string()).collect() };
    for pair in meter::batches(&recv.recorded(), "/events").windows(2) {
        assert!(
            ids(&pair[0][..]).is_subset(&ids(&pair[1][..])),
            "a retry resends its batch's events: {pair:?}"
        );
    }
    assert_eq!(meter::metric(&gw, DEAD, SINK), 0.0, "a 429 is not permanent");

    recv.set(|b| b.status = 400);
    let dead = gw.dir.join("spool/deadletter-meter.jsonl");
    let whole_lines = || std::fs::read_to_string(&dead).map_or(0, |s| s.matches('\n').count());
    wait_until(WAIT, "both events dead-lettered", || whole_lines() >= 2);
    let lines = meter::json_lines(&dead);
    let got = meter::by_id(&lines);
    assert_eq!((lines.len(), got.len()), (2, 2), "each dead-lettered once: {lines:#?}");
    assert_eq!(request_ids(got.values()), BTreeSet::from(["dl-0", "dl-1"].map(String::from)));
    wait_until(WAIT, "the dead-letter count", || meter::metric(&gw, DEAD, SINK) == 2.0);
    assert_eq!(meter::sink_status(&gw, "meter")["dead_lettered"], 2);

    // The sink moved on: new events are delivered, the dead-lettered ones not again.
    recv.set(|b| b.status = 200);
    let before = recv.recorded().len();
    for id in ["dl-2", "dl-3", "dl-4"] {
        assert_eq!(send(&gw, "/users/x", id, Some(ACME_KEY)), 200);
    }
    wait_until(WAIT, "3 delivered", || meter::metric(&gw, DELIVERED, SINK) == 3.0);
    let delivered = meter::batches(&recv.recorded()[before..], "/events");
    assert_eq!(
        request_ids(delivered.iter().flatten()),
        BTreeSet::from(["dl-2", "dl-3", "dl-4"].map(String::from))
    );
    assert_eq!(whole_lines(), 2, "nothing more dead-lettered");
    let leaks = meter::files_containing(&gw.dir.join("spool"), ACME_KEY);
    assert!(leaks.is_empty(), "the key is in {leaks:?}");
    assert!(
        recv.recorded().iter().all(|r| !meter::contains(&r.body, ACME_KEY)),
        "the key went to the sink"
    );
}

#[test]
fn sigint_and_sigterm_flush_the_queue_and_the_next_process_resumes_from_the_cursor() {
    let up = Upstream::start("users");
    let recv = Upstream::start("meter");
    recv.kill();
    let mut gw = Gateway::start(&config(&up, &recv, "", ""));
    let mut earlier: Vec<String> = Vec::new();
    for (round, signal) in [libc::SIGINT, libc::SIGTERM].into_iter().enumerate() {
        let ids: Vec<String> = (0..10).map(|i| format!("stop{round}-{i}")).collect();
        for id in &ids {
            assert_eq!(send(&gw, "/open/x", id, None), 200);
        }
        // At once: no waiting for the writer's interval.
        gw.signal(signal);
        assert!(gw.wait_exit(Duration::from_secs(10)), "signal {signal}: the process exits");
        let seen = recv.recorded().len();
        recv.revive();
        gw.spawn(&[]);
        wait_until(WAIT, &format!("round {round}'s events, from the next process"), || {
            let got = meter::delivered_request_ids(&recv, "/events");
            ids.iter().all(|id| got.contains(id))
        });
        let resent: Vec<String> = request_ids(meter::batches(&recv.recorded()[seen..], "/events").iter().flatten())
            .into_iter()
            .filter(|id| earlier.contains(id))
            .collect();
        assert!(resent.is_empty(), "acknowledged before the stop, and sent again: {resent:?}");
        // Acknowledged before the receiver goes again, so the cursor has passed them.
        wait_until(WAIT, &format!("round {round} acknowledged"), || {
            meter::metric(&gw, DELIVERED, SINK) == 10.0
        });
        earlier.extend(ids);
        recv.kill();
    }
    meter::by_id(&meter::events(&recv, "/events"));
}

/// A fast stop under load loses nothing: every request answered up to the signal has its
/// event after the restart. (The writer's own drain at exit is a second line: Pingora's
/// stop takes longer than one writer interval, so the writer has usually emptied the queue
/// before it; breaking the drain alone does not fail this test.)
#[test]
fn a_fast_stop_under_load_writes_the_queued_tail_and_loses_nothing() {
    let up = Upstream::start("users");
    let recv = Upstream::start("meter");
    recv.kill();
    let mut gw = Gateway::start(&config(&up, &recv, "", ""));
    let load = IdLoad::start(&gw.addr, "/open/q", 4, "q");
    wait_until(WAIT, "load running", || load.answered() >= 300);
    gw.signal(libc::SIGINT);
    let answered = load.finish();
    assert!(gw.wait_exit(Duration::from_secs(10)), "SIGINT ends the process");
    recv.revive();
    gw.spawn(&[]);
    wait_until(Duration::from_secs(30), "an event for every answered request", || {
        let got = meter::delivered_request_ids(&recv, "/events");
        answered.iter().all(|a| got.contains(&a.id))
    });
    eprintln!("fast stop under load: {} answered, every one delivered", answered.len());
}

#[test]
fn after_kill_9_the_restarted_gateway_delivers_everything_spooled_before_it() {
    let up = Upstream::start("users");
    let recv = Upstream::start("meter");
    let mut gw = Gateway::start(&config(&up, &recv, "", ""));
    let load = IdLoad::start(&gw.addr, "/open/k", 4, "k");
    wait_until(WAIT, "load running", || load.answered() >= 400);
    let killed_at = Instant::now();
    gw.signal(libc::SIGKILL);
    let answered = load.finish();
    assert!(gw.wait_exit(Duration::from_secs(5)), "kill -9 ends the process");
    // Synced within 100 ms of being written: what was answered 200 ms before the kill is on disk.
    let interval = Duration::from_millis(200);
    let settled: Vec<&str> = answered
        .iter()
        .filter(|a| a.at + interval <= killed_at)
        .map(|a| a.id.as_str())
        .collect();
    let recent: HashSet<&str> = answered
        .iter()
        .filter(|a| a.at + interval > killed_at)
        .map(|a| a.id.as_str())
        .collect();
    assert!(!settled.is_empty(), "requests answered well before the kill");
    gw.spawn(&[]);
    wait_until(
        Duration::from_secs(30),
        "every event of a request answered 200 ms before the kill",
        || {
            let got = meter::delivered_request_ids(&recv, "/events");
            settled.iter().all(|id| got.contains(*id))
        },
    );
    wait_until(WAIT, "the spool drained", || meter::sink_status(&gw, "meter")["lag_bytes"] == 0);
    let by_id = meter::by_id(&meter::events(&recv, "/events"));
    let per_request = meter::ids_per_request(&by_id);
    for (rid, ids) in &per_request {
        assert_eq!(ids.len(), 1, "request {rid}: one event id, whatever was redelivered: {ids:?}");
    }
    let lost: Vec<&str> = answered
        .iter()
        .map(|a| a.id.as_str())
        .filter(|id| !per_request.contains_key(*id))
        .collect();
    eprintln!(
        "kill -9 under load: {} requests answered, {} of them in the last {interval:?}; {} answered without an event: {:?}",
        answered.len(),
        recent.len(),
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert!(
        lost.iter().all(|id| recent.contains(id)),
        "events lost of requests answered more than {interval:?} before the kill: {lost:?}"
    );
    // The new process meters its own traffic too.
    assert_eq!(send(&gw, "/open/after", "after-kill", None), 200);
    wait_until(WAIT, "the new process's own event", || {
        meter::delivered_request_ids(&recv, "/events").contains("after-kill")
    });
}

#[test]
fn a_graceful_upgrade_under_load_loses_no_event() {
    let up = Upstream::start("users");
    let recv = Upstream::start("meter");
    let mut gw = Gateway::start(&config(&up, &recv, "", ""));
    let old_pid = gw.pid();
    let load = IdLoad::start(&gw.addr, "/open/u", 4, "u");
    wait_until(WAIT, "load running", || load.answered() >= 200);
    let (ok, out) = gw.upgrade();
    assert!(ok, "upgrade failed: {out}");
    let new_pid = gw.pid_file_pid();
    let _guard = KillOnDrop(new_pid);
    assert_ne!(new_pid, old_pid);
    assert!(
        gw.wait_exit(Duration::from_secs(30)),
        "the old process exits after its grace period"
    );
    let served = load.answered();
    wait_until(WAIT, "load served by the new process alone", || load.answered() > served + 200);
    let answered = load.finish();
    assert_eq!(gw.admin_get("/status").json()["pid"], new_pid);

    // Every request the upstream got, answered or not, has exactly one event.
    let forwarded: BTreeSet<String> = up
        .recorded()
        .iter()
        .filter_map(|r| r.header("x-request-id").map(str::to_string))
        .collect();
    let missing: Vec<&str> = answered
        .iter()
        .map(|a| a.id.as_str())
        .filter(|id| !forwarded.contains(*id))
        .collect();
    assert!(missing.is_empty(), "answered but never forwarded: {missing:?}");
    wait_until(Duration::from_secs(30), "an event for every request the upstream got", || {
        forwarded.is_subset(&meter::delivered_request_ids(&recv, "/events").into_iter().collect())
    });
    let by_id = meter::by_id(&meter::events(&recv, "/events"));
    let per_request = meter::ids_per_request(&by_id);
    for (rid, ids) in &per_request {
        assert!(rid.starts_with("u-"), "an event for a request the test never sent: {rid}");
        assert_eq!(ids.len(), 1, "request {rid}: one event id across both processes: {ids:?}");
    }
    eprintln!(
        "upgrade under load: {} answered, {} forwarded, {} distinct events",
        answered.len(),
        forwarded.len(),
        by_id.len()
    );
    assert!(
        gw.dir.join("spool/deliver.lock").exists(),
        "one process delivers at a time, by the lock"
    );
}

#[test]
fn a_full_spool_drops_its_oldest_segments_counts_them_and_keeps_serving() {
    const MAX: u64 = 64 << 10;
    const SEGMENT: u64 = 8 << 10;
    let bound = MAX + 2 * SEGMENT;
    let up = Upstream::start("users");
    let recv = Upstream::start("meter");
    recv.kill();
    let gw = Gateway::start(&config(&up, &recv, "spool_max = \"64KiB\"\nsegment_size = \"8KiB\"", ""));
    let spool = gw.dir.join("spool");
    let full = &[("reason", "spool_full"), ("sink", "meter")];
    let (mut n, mut most, mut first_sealed) = (0usize, 0u64, Vec::new());
    let mut send_some = |k: usize| {
        for i in n..n + k {
            assert_eq!(send(&gw, "/open/s", &format!("s-{i}"), None), 200, "the gateway keeps serving");
        }
        n += k;
        if first_sealed.is_empty() {
            first_sealed = meter::segments(&spool).into_iter().filter(|s| s.ends_with(".jsonl")).collect();
        }
        most = most.max(meter::bytes_under(&spool.join("segments")));
    };
    wait_until(Duration::from_secs(60), "a segment dropped from the full spool", || {
        send_some(20);
        meter::metric(&gw, DROPPED, full) > 0.0
    });
    // And on past the first drop.
    send_some(100);
    assert!(
        most <= bound,
        "the segments held {most} bytes, past spool_max and two segments ({bound})"
    );
    assert!(
        first_sealed.iter().any(|s| !spool.join("segments").join(s).exists()),
        "the oldest sealed segments go first: {first_sealed:?}, now {:?}",
        meter::segments(&spool)
    );
    let status = gw.admin_get("/status").json();
    let spool_bytes = status["metering"]["spool_bytes"].as_u64().unwrap_or(0);
    assert!((1..=bound).contains(&spool_bytes), "{status}");
    let sink = &status["metering"]["sinks"]["meter"];
    assert_eq!(sink["delivered"], 0, "{status}");
    assert!(sink["last_error"].is_string(), "the receiver is down: {status}");
    assert!((1..=bound).contains(&sink["lag_bytes"].as_u64().unwrap_or(0)), "{status}");
    let gauge = meter::metric(&gw, "gatehouse_metering_spool_bytes", &[]);
    assert!((1.0..=bound as f64).contains(&gauge), "gatehouse_metering_spool_bytes {gauge}");
    wait_until(WAIT, "the oldest undelivered event's age", || {
        meter::metric(&gw, "gatehouse_metering_oldest_undelivered_seconds", SINK) > 0.0
    });

    // The receiver is back: what the spool kept arrives, the newest included, the oldest not.
    recv.revive();
    let newest = format!("s-{}", n - 1);
    wait_until(Duration::from_secs(30), "the newest event", || {
        meter::delivered_request_ids(&recv, "/events").contains(&newest)
    });
    wait_until(WAIT, "the spool drained", || meter::sink_status(&gw, "meter")["lag_bytes"] == 0);
    let got = meter::by_id(&meter::events(&recv, "/events"));
    assert!(!request_ids(got.values()).contains("s-0"), "the oldest event went with its segment");
    let m = Scrape::of(&gw);
    let (spooled, delivered, dropped) = (
        m.get("gatehouse_metering_spooled_total", &[]),
        m.get(DELIVERED, SINK),
        m.get(DROPPED, full),
    );
    assert_eq!(spooled, n as f64, "every request's event was spooled");
    assert_eq!(delivered + dropped, spooled, "each spooled event delivered or counted as dropped");
    assert_eq!(delivered, got.len() as f64, "each delivered once");
}
