//! Response caching through sockets, with an origin that counts what reaches it.

mod common;
use common::{request, wait_until, Gateway, Upstream};
use std::time::Duration;

fn gw(up: &Upstream, policy: &str, cache: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
[cache]
{cache}
[consumers.a]
keys = ["key-a"]
[consumers.b]
keys = ["key-b"]
[upstreams.o]
targets = ["{}"]
retries = 0
[routes.c]
paths = ["/"]
upstream = "o"
[routes.c.plugins.cache]
{policy}
[routes.auth]
paths = ["/private"]
upstream = "o"
[routes.auth.plugins.key_auth]
[routes.auth.plugins.cache]
cache_authenticated = true
"#,
        up.addr
    ))
}

fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let r = request(&gw.addr, "GET", path, headers, None);
    (r.status, r.header("x-cache-status").unwrap_or("").to_string(), r.body)
}

fn cc(up: &Upstream, v: &str) {
    let v = v.to_string();
    up.set(|b| b.headers = vec![("Cache-Control".into(), v)]);
}

#[test]
fn hit_miss_ttl_and_cache_control_rules() {
    let up = Upstream::start("origin");
    let gw = gw(&up, "default_ttl = \"60s\"", "");
    cc(&up, "max-age=60");
    assert_eq!(get(&gw, "/a", &[]).1, "MISS");
    let r = request(&gw.addr, "GET", "/a", &[], None);
    assert_eq!(r.header("x-cache-status"), Some("HIT"));
    assert_eq!(r.body, "origin");
    assert!(r.header("age").is_some());
    assert_eq!(up.count(), 1);
    // HEAD is served from the GET entry.
    assert_eq!(request(&gw.addr, "HEAD", "/a", &[], None).header("x-cache-status"), Some("HIT"));
    // POST never uses the cache.
    assert_eq!(
        request(&gw.addr, "POST", "/a", &[], Some("x")).header("x-cache-status"),
        Some("BYPASS")
    );
    assert_eq!(up.count(), 2);

    // TTL expiry.
    cc(&up, "max-age=1");
    get(&gw, "/ttl", &[]);
    assert_eq!(get(&gw, "/ttl", &[]).1, "HIT");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(get(&gw, "/ttl", &[]).1, "EXPIRED");
    up.reset();

    // no-store and private are never stored; s-maxage wins over max-age=0.
    for (rule, path) in [("no-store", "/ns"), ("private, max-age=60", "/pv")] {
        cc(&up, rule);
        get(&gw, path, &[]);
        get(&gw, path, &[]);
    }
    assert_eq!(up.count(), 4, "no-store and private reach the origin every time");
    cc(&up, "max-age=0, s-maxage=60");
    get(&gw, "/sm", &[]);
    assert_eq!(get(&gw, "/sm", &[]).1, "HIT");
    // No freshness from the origin: default_ttl applies.
    up.set(|b| b.headers.clear());
    get(&gw, "/default", &[]);
    assert_eq!(get(&gw, "/default", &[]).1, "HIT");
    // Expires in the past: stale at once.
    up.set(|b| b.headers = vec![("Expires".into(), "Thu, 01 Jan 1970 00:00:00 GMT".into())]);
    get(&gw, "/expired", &[]);
    assert_ne!(get(&gw, "/expired", &[]).1, "HIT");
    // A 500 or a Set-Cookie is never cached.
    up.set(|b| {
        b.headers = vec![("Cache-Control".into(), "max-age=60".into()), ("Set-Cookie".into(), "s=1".into())];
    });
    up.reset();
    get(&gw, "/cookie", &[]);
    get(&gw, "/cookie", &[]);
    assert_eq!(up.count(), 2);
    assert!(gw.metric(r#"gatehouse_cache_requests_total{route="c",status="HIT"}"#) >= 4.0);
}

#[test]
fn no_cache_and_conditional_requests() {
    let up = Upstream::start("origin");
    let gw = gw(&up, "", "");
    up.set(|b| {
        b.headers = vec![("Cache-Control".into(), "no-cache".into())];
        b.etag = Some("\"v1\"".into());
    });
    assert_eq!(get(&gw, "/nc", &[]).1, "MISS");
    // no-cache: stored, but revalidated with the origin every time (304 -> REVALIDATED).
    let (s, status, body) = get(&gw, "/nc", &[]);
    assert_eq!((s, status.as_str(), body.as_str()), (200, "REVALIDATED", "origin"));
    assert_eq!(up.count(), 2);
    assert_eq!(up.last().header("if-none-match"), Some("\"v1\""));

    // A client's conditional request is answered 304 from a fresh entry.
    up.set(|b| b.headers = vec![("Cache-Control".into(), "max-age=60".into())]);
    get(&gw, "/etag", &[]);
    let r = request(&gw.addr, "GET", "/etag", &[("If-None-Match", "\"v1\"")], None);
    assert_eq!(r.status, 304);
    assert_eq!(r.header("x-cache-status"), Some("HIT"));
    assert_eq!(up.count(), 3);
}

#[test]
fn vary_authenticated_bypass_and_per_consumer() {
    let up = Upstream::start("origin");
    let gw = gw(&up, "", "");
    up.set(|b| {
        b.headers = vec![
            ("Cache-Control".into(), "max-age=60".into()),
            ("Vary".into(), "Accept-Language".into()),
        ];
        b.echo = Some("accept-language".into());
    });
    let en = [("Accept-Language", "en")];
    let de = [("Accept-Language", "de")];
    assert_eq!(get(&gw, "/v", &en), (200, "MISS".into(), "en|/v".into()));
    assert_eq!(get(&gw, "/v", &de), (200, "MISS".into(), "de|/v".into()));
    assert_eq!(get(&gw, "/v", &en), (200, "HIT".into(), "en|/v".into()));
    assert_eq!(get(&gw, "/v", &de), (200, "HIT".into(), "de|/v".into()));
    assert_eq!(up.count(), 2);

    // Credentials: not cached on a route that does not say so.
    up.set(|b| b.echo = Some("x-api-key".into()));
    up.reset();
    for _ in 0..2 {
        assert_eq!(get(&gw, "/creds", &[("Authorization", "Bearer t")]).1, "BYPASS");
    }
    assert_eq!(up.count(), 2);
    // cache_authenticated: cached, per consumer.
    up.reset();
    assert_eq!(get(&gw, "/private/x", &[("x-api-key", "key-a")]).1, "MISS");
    assert_eq!(get(&gw, "/private/x", &[("x-api-key", "key-a")]).1, "HIT");
    assert_eq!(
        get(&gw, "/private/x", &[("x-api-key", "key-b")]).1,
        "MISS",
        "consumer b does not get a's copy"
    );
    assert_eq!(up.count(), 2);
}

#[test]
fn stampede_of_100_misses_makes_one_origin_request() {
    let up = Upstream::start("origin");
    up.set(|b| {
        b.headers = vec![("Cache-Control".into(), "max-age=60".into())];
        b.delay = Duration::from_millis(500);
    });
    let gw = gw(&up, "lock_timeout = \"5s\"", "");
    let clients: Vec<_> = (0..100)
        .map(|_| {
            let a = gw.addr.clone();
            std::thread::spawn(move || common::get(&a, "/hot").status)
        })
        .collect();
    let ok = clients.into_iter().map(|c| c.join().unwrap()).filter(|s| *s == 200).count();
    assert_eq!(ok, 100);
    assert_eq!(up.count(), 1, "100 concurrent misses, one origin request");
}

#[test]
fn stale_while_revalidate_and_stale_if_error() {
    let up = Upstream::start("origin");
    let gw = gw(&up, "stale_while_revalidate = \"30s\"\nstale_if_error = \"5m\"", "");
    cc(&up, "max-age=1");
    up.set(|b| b.body = Some("v1".into()));
    get(&gw, "/swr", &[]);
    up.set(|b| b.body = Some("v2".into()));
    std::thread::sleep(Duration::from_millis(1100));
    let (_, status, body) = get(&gw, "/swr", &[]);
    assert_eq!((status.as_str(), body.as_str()), ("STALE", "v1"), "stale served while revalidating");
    wait_until(Duration::from_secs(5), "background revalidation", || up.count() == 2);
    wait_until(Duration::from_secs(5), "fresh copy", || {
        get(&gw, "/swr", &[]) == (200, "HIT".into(), "v2".into())
    });

    // The origin goes away: stale-if-error serves the last copy.
    get(&gw, "/sie", &[]);
    up.kill();
    std::thread::sleep(Duration::from_millis(1100));
    let (s, status, body) = get(&gw, "/sie", &[]);
    assert_eq!(s, 200);
    assert_eq!(status, "STALE");
    assert_eq!(body, "v2");
}

#[test]
fn purge_by_url_prefix_tag_and_all() {
    let up = Upstream::start("origin");
    let gw = gw(&up, "tag_header = \"surrogate-key\"", "");
    up.set(|b| {
        b.headers = vec![
            ("Cache-Control".into(), "max-age=60".into()),
            ("Surrogate-Key".into(), "catalog shoes".into()),
        ]
    });
    let h = [("Host", "shop.example.com")];
    for p in ["/p/1?page=1", "/p/1?page=2", "/p/2", "/other"] {
        assert_eq!(get(&gw, p, &h).1, "MISS");
    }
    let purge = |body: &str| gw.admin_post("/cache/purge", body).json();
    assert_eq!(
        purge(r#"{"host":"shop.example.com","path":"/p/1"}"#)["purged"],
        2,
        "one URL, every variant"
    );
    assert_eq!(get(&gw, "/p/1?page=1", &h).1, "MISS");
    assert_eq!(get(&gw, "/p/2", &h).1, "HIT");
    assert_eq!(purge(r#"{"host":"shop.example.com","prefix":"/p/"}"#)["purged"], 2);
    assert_eq!(get(&gw, "/p/2", &h).1, "MISS");
    assert_eq!(purge(r#"{"tag":"shoes"}"#)["purged"], 2, "/p/2 and /other carry the tag");
    assert_eq!(purge(r#"{"tag":"shoes"}"#)["purged"], 0);
    get(&gw, "/other", &h);
    assert_eq!(purge(r#"{"all":true}"#)["purged"], 1);
    let bad = gw.admin_post("/cache/purge", r#"{"path":"/x"}"#);
    assert_eq!(bad.status, 400);
    assert_eq!(gw.metric("gatehouse_cache_objects"), 0.0);
}

#[test]
fn memory_budget_holds_under_a_flood_and_large_objects_pass_through() {
    let up = Upstream::start("origin");
    up.set(|b| {
        b.headers = vec![("Cache-Control".into(), "max-age=600".into())];
        b.body = Some("x".repeat(10 * 1024));
    });
    let gw = gw(&up, "", "memory = \"2MiB\"\nmax_object = \"64KiB\"");
    for i in 0..600 {
        assert_eq!(get(&gw, &format!("/k/{i}"), &[]).0, 200);
    }
    let bytes = gw.metric("gatehouse_cache_bytes");
    eprintln!(
        "after 600 x 10KiB distinct keys: {bytes} bytes cached, {} evictions",
        gw.metric("gatehouse_cache_evictions_total")
    );
    assert!(bytes <= (2 << 20) as f64, "cache holds {bytes} bytes, over the 2MiB budget");
    assert!(bytes > 0.0);
    assert!(gw.metric("gatehouse_cache_evictions_total") > 0.0);

    up.set(|b| b.body = Some("y".repeat(100 * 1024)));
    up.reset();
    for _ in 0..3 {
        let (s, _, body) = get(&gw, "/big", &[]);
        assert_eq!((s, body.len()), (200, 100 * 1024));
    }
    assert_eq!(up.count(), 3, "a response larger than max_object is never cached");
}
