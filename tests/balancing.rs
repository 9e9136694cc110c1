//! Balancing through real sockets: weights, consistent hashing, least requests.

mod common;
use common::{request, Gateway, Upstream};

#[test]
fn weighted_round_robin() {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let gw = Gateway::start(&format!(
        r#"
[upstreams.u]
targets = ["{a}", {{ addr = "{b}", weight = 3 }}]
[routes.r]
paths = ["/"]
upstream = "u"
"#,
        a = a.addr,
        b = b.addr
    ));
    for _ in 0..200 {
        assert_eq!(gw.get("/").status, 200);
    }
    assert_eq!((a.count(), b.count()), (50, 150));
}

#[test]
fn consistent_hash_keeps_a_key_on_one_target() {
    let ups: Vec<Upstream> = (0..3).map(|i| Upstream::start(&format!("u{i}"))).collect();
    let gw = Gateway::start(&format!(
        r#"
[upstreams.u]
targets = [{}]
balance = "consistent_hash"
hash_on = "header:x-user-id"
[routes.r]
paths = ["/"]
upstream = "u"
"#,
        ups.iter().map(|u| format!("\"{}\"", u.addr)).collect::<Vec<_>>().join(",")
    ));
    let mut seen = std::collections::HashMap::new();
    for round in 0..3 {
        for user in 0..30 {
            let id = format!("user-{user}");
            let r = request(&gw.addr, "GET", "/", &[("x-user-id", &id)], None);
            let target = r.header("x-upstream").unwrap().to_string();
            if round == 0 {
                seen.insert(id, target);
            } else {
                assert_eq!(seen[&id], target, "{id} moved between rounds");
            }
        }
    }
    let used: std::collections::HashSet<_> = seen.values().collect();
    assert_eq!(used.len(), 3, "30 keys should spread over all 3 targets: {seen:?}");
}

#[test]
fn least_requests_avoids_the_busy_target() {
    let slow = Upstream::start("slow");
    let fast = Upstream::start("fast");
    slow.set(|b| b.delay = std::time::Duration::from_millis(1500));
    let gw = Gateway::start(&format!(
        r#"
[upstreams.u]
targets = ["{s}", "{f}"]
balance = "least_requests"
[routes.r]
paths = ["/"]
upstream = "u"
"#,
        s = slow.addr,
        f = fast.addr
    ));
    // Occupy the slow target with one long request, then everything else goes to fast.
    let addr = gw.addr.clone();
    let mut first = None;
    for _ in 0..2 {
        let a = addr.clone();
        first = Some(std::thread::spawn(move || common::get(&a, "/")));
        common::wait_until(std::time::Duration::from_secs(5), "a request in flight", || {
            slow.count() + fast.count() > 0
        });
        if slow.count() == 1 {
            break;
        }
        first.take().unwrap().join().unwrap();
        slow.reset();
        fast.reset();
    }
    assert_eq!(slow.count(), 1, "could not park a request on the slow target");
    for _ in 0..10 {
        assert_eq!(gw.get("/").header("x-upstream"), Some("fast"));
    }
    assert_eq!(first.unwrap().join().unwrap().status, 200);
}
