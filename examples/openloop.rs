//! An open-loop HTTP/1.1 load generator for the ladder's tail-latency rows. Requests are
//! scheduled at a fixed rate whatever the server does: a request whose connection was
//! still busy when its time came counts its latency from that scheduled time, so a stall
//! shows up as latency rather than as fewer requests (no coordinated omission). A request
//! sent on time counts from its send: the timer's millisecond granularity is the
//! generator's, not the server's. k6 holds about 1k requests/s on these machines; this
//! holds the ladder's rate (about half of nginx's maximum) on one core. hyper speaks HTTP;
//! this only schedules and measures.
//!
//!   openloop URL RATE SECS CONNECTIONS [NAME:VALUE]...
//!
//! Prints one JSON object: sent, ok, errors, achieved rate, late (sent after their time),
//! p50/p99/p99.9/max in milliseconds.

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;
use tokio::time::Instant;

struct Plan {
    start: Instant,
    interval: Duration,
    total: u64,
    next: std::cell::Cell<u64>,
}

#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
    late: u64,
}

type Shared = (Rc<RefCell<Histogram<u64>>>, Rc<RefCell<Tally>>);

async fn worker(addr: String, uri: http::Uri, headers: Rc<Vec<(String, String)>>, plan: Rc<Plan>, (hist, tally): Shared) {
    let mut sender = None;
    loop {
        let i = plan.next.get();
        if i >= plan.total {
            return;
        }
        plan.next.set(i + 1);
        let due = plan.start + plan.interval * i as u32;
        let now = Instant::now();
        let from = if now < due {
            tokio::time::sleep_until(due).await;
            Instant::now()
        } else {
            tally.borrow_mut().late += 1;
            due
        };
        if sender.is_none() {
            sender = connect(&addr).await;
        }
        let Some(s) = sender.as_mut() else {
            tally.borrow_mut().errors += 1;
            continue;
        };
        let mut req = http::Request::get(uri.clone());
        for (k, v) in headers.iter() {
            req = req.header(k.as_str(), v.as_str());
        }
        let Ok(req) = req.body(Empty::<Bytes>::new()) else {
            tally.borrow_mut().errors += 1;
            continue;
        };
        let done = match s.send_request(req).await {
            Ok(resp) => {
                let good = resp.status().is_success();
                resp.into_body().collect().await.is_ok() && good
            }
            Err(_) => false,
        };
        let us = from.elapsed().as_micros() as u64;
        let _ = hist.borrow_mut().record(us.max(1));
        let mut t = tally.borrow_mut();
        if done {
            t.ok += 1;
        } else {
            t.errors += 1;
            sender = None;
        }
    }
}

async fn connect(addr: &str) -> Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    tcp.set_nodelay(true).ok()?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.ok()?;
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    Some(sender)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!("usage: openloop URL RATE SECS CONNECTIONS [NAME:VALUE]...");
        std::process::exit(2);
    }
    let uri: http::Uri = args[0].parse().unwrap_or_else(|e| panic!("URL {}: {e}", args[0]));
    let rate: f64 = args[1].parse().unwrap_or(1000.0);
    let secs: f64 = args[2].parse().unwrap_or(5.0);
    let conns: usize = args[3].parse().unwrap_or(64);
    let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
    let mut headers = vec![("host".to_string(), authority.clone())];
    for h in &args[4..] {
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let path: http::Uri = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").parse().unwrap_or_default();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let local = tokio::task::LocalSet::new();
    let (hist, tally, plan) = local.block_on(&rt, async {
        let plan = Rc::new(Plan {
            start: Instant::now() + Duration::from_millis(50),
            interval: Duration::from_secs_f64(1.0 / rate),
            total: (rate * secs) as u64,
            next: std::cell::Cell::new(0),
        });
        let hist = Rc::new(RefCell::new(
            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
        ));
        let tally = Rc::new(RefCell::new(Tally::default()));
        let headers = Rc::new(headers);
        let tasks: Vec<_> = (0..conns)
            .map(|_| {
                tokio::task::spawn_local(worker(
                    authority.clone(),
                    path.clone(),
                    headers.clone(),
                    plan.clone(),
                    (hist.clone(), tally.clone()),
                ))
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
        (hist, tally, plan)
    });
    let elapsed = plan.start.elapsed().as_secs_f64();
    let (h, t) = (hist.borrow(), tally.borrow());
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{}",
        serde_json::json!({
            "sent": plan.total, "ok": t.ok, "errors": t.errors, "late": t.late,
            "rate": (t.ok + t.errors) as f64 / elapsed, "wanted_rate": rate,
            "p50_ms": ms(0.5), "p99_ms": ms(0.99), "p999_ms": ms(0.999), "max_ms": h.max() as f64 / 1000.0,
        })
    );
}
