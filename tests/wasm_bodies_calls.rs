//! proxy-wasm bodies and calls in the real gateway: a WAT filter that buffers and rewrites
//! both bodies (lengths change after the header blocks went out), body limits, and the
//! AssemblyScript filter (tests/wasm-filter) reading a request body and calling an
//! upstream with `proxy_http_call` before it lets a request through.

mod common;

use common::wasm::{assemblyscript_filter, fixture};
use common::{request, Gateway, Upstream};

fn gateway(up: &Upstream, authz: &Upstream) -> Gateway {
    gateway_h2c(up, authz, &format!("127.0.0.1:{}", common::free_port()))
}

/// With a plaintext listener that takes HTTP/2 with prior knowledge at `h2c`.
fn gateway_h2c(up: &Upstream, authz: &Upstream, h2c: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
[listeners.h2c]
addr = "{h2c}"
h2c = true

[upstreams.u]
targets = ["{up}"]
[upstreams.authz]
targets = ["{authz}"]
retries = 0

[routes.body]
paths = ["/body"]
upstream = "u"
[routes.body.plugins.wasm.rewrite]
file = "{body}"
max_time = "250ms"

[routes.small]
paths = ["/small"]
upstream = "u"
[routes.small.plugins.wasm.rewrite_small]
file = "{body}"
max_time = "250ms"
max_body = "64KiB"

[routes.as]
paths = ["/as"]
upstream = "u"
[routes.as.plugins.wasm.as_filter]
file = "{as_filter}"
max_time = "250ms"
config = "hello-as"
root_id = "gatehouse_test"
upstreams = ["authz"]

[routes.quick]
paths = ["/quick"]
upstream = "u"
[routes.quick.plugins.wasm.as_quick]
file = "{as_filter}"
max_time = "250ms"
# The SDK's onConfigure cannot read an empty configuration.
config = "quick"
root_id = "gatehouse_test"
upstreams = ["authz"]
max_call_time = "1s"
"#,
        up = up.addr,
        authz = authz.addr,
        body = fixture("body.wat"),
        as_filter = assemblyscript_filter(),
    ))
}

#[test]
fn a_filter_rewrites_whole_bodies_both_ways() {
    let (up, authz) = (Upstream::start("u"), Upstream::start("authz"));
    let reply = "r".repeat(300_000);
    up.set(|b| b.body = Some(reply.clone()));
    let gw = gateway(&up, &authz);
    // Larger than one read: the filter sees it whole only if the host buffers across chunks
    // (a filter called per chunk would prefix every chunk).
    let sent = "q".repeat(300_000);
    let r = request(&gw.addr, "POST", "/body", &[("content-type", "text/plain")], Some(&sent));
    assert_eq!(r.status, 200, "{}", &r.body[..r.body.len().min(200)]);
    let seen = up.last();
    assert_eq!(seen.body.len(), sent.len() + 5, "the upstream got the rewritten length");
    assert!(seen.body.starts_with(b"seen:qqq"));
    assert_eq!(seen.body.windows(5).filter(|w| w == b"seen:").count(), 1);
    assert_eq!(seen.header("content-length"), None, "the length changed: the body goes chunked");
    assert_eq!(r.body.len(), reply.len() + 9);
    assert!(r.body.ends_with("r|filtered"));
    assert_eq!(r.body.matches("|filtered").count(), 1);
    // A body-less request is not touched and keeps its framing.
    let r = gw.get("/body");
    assert_eq!(r.status, 200);
    assert_eq!(up.last().body, b"");
}

#[test]
fn bodies_past_the_filter_limit_are_refused() {
    let (up, authz) = (Upstream::start("u"), Upstream::start("authz"));
    let gw = gateway(&up, &authz);
    let before = up.count();
    let r = request(&gw.addr, "POST", "/small", &[], Some(&"z".repeat(100_000)));
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.json()["request_id"].is_string(), "{}", r.body);
    assert_eq!(up.count(), before, "the upstream never got the whole body");
    // Within the limit it goes through, rewritten.
    let r = request(&gw.addr, "POST", "/small", &[], Some("hello"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.last().body, b"seen:hello");
}

#[test]
fn an_sdk_filter_reads_the_request_body() {
    let (up, authz) = (Upstream::start("u"), Upstream::start("authz"));
    let gw = gateway(&up, &authz);
    let before = up.count();
    let body = format!("{}forbidden{}", "a".repeat(100_000), "b".repeat(100_000));
    let r = request(&gw.addr, "POST", "/as", &[], Some(&body));
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.body, "refused by body", "the filter's own answer");
    assert_eq!(up.count(), before, "a refused body never reaches the upstream");
    let r = request(&gw.addr, "POST", "/as", &[], Some("a fine body"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.last().body, b"a fine body");
    assert_eq!(up.last().header("x-from-assemblyscript"), Some("hello-as"));
}

#[test]
fn an_http2_body_without_content_length_is_filtered_too() {
    let (up, authz) = (Upstream::start("u"), Upstream::start("authz"));
    let h2c = format!("127.0.0.1:{}", common::free_port());
    let gw = gateway_h2c(&up, &authz, &h2c);
    // curl uploads stdin on HTTP/2 with no Content-Length: only the stream says a body comes.
    let upload = |body: &str| {
        use std::io::Write;
        let mut child = std::process::Command::new("curl")
            .args([
                "-s",
                "--http2-prior-knowledge",
                "-X",
                "POST",
                "-T",
                "-",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{http_version}",
            ])
            .arg(format!("http://{h2c}/as"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("curl");
        child.stdin.take().expect("stdin").write_all(body.as_bytes()).expect("write");
        String::from_utf8_lossy(&child.wait_with_output().expect("curl").stdout).to_string()
    };
    let before = up.count();
    assert_eq!(upload("this is forbidden"), "403 2");
    assert_eq!(up.count(), before, "a refused body never reaches the upstream");
    assert_eq!(upload("this is fine"), "200 2");
    assert_eq!(up.last().body, b"this is fine");
    let _ = &gw;
}

#[test]
fn an_sdk_filter_calls_an_upstream_before_letting_a_request_through() {
    let (up, authz) = (Upstream::start("u"), Upstream::start("authz"));
    authz.set(|b| b.body = Some("ok-alice".into()));
    let gw = gateway(&up, &authz);
    let r = request(&gw.addr, "GET", "/as/x", &[("x-as-call", "alice")], None);
    assert_eq!(r.status, 200, "{}", r.body);
    let asked = authz.last();
    assert_eq!(asked.path, "/check?user=alice");
    assert_eq!(asked.header("host"), Some("authz.internal"));
    assert_eq!(asked.header("x-request-id"), r.header("x-request-id"));
    assert_eq!(up.last().header("x-authz"), Some("ok-alice"), "the call's answer went upstream");

    // The authz service says no: the filter answers 403 and the upstream is not called.
    authz.set(|b| b.status = 403);
    let before = up.count();
    let r = request(&gw.addr, "GET", "/as/x", &[("x-as-call", "mallory")], None);
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.body, "refused by authz");
    assert_eq!(authz.last().path, "/check?user=mallory");
    // The authz service is gone: the call fails, the filter sees no answer and refuses.
    authz.kill();
    let r = request(&gw.addr, "GET", "/as/x", &[("x-as-call", "alice")], None);
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(up.count(), before);
    assert!(gw.stderr().contains("http call failed"), "{}", gw.stderr());
}

#[test]
fn a_request_waits_on_its_calls_no_longer_than_max_call_time() {
    let (up, authz) = (Upstream::start("u"), Upstream::start("authz"));
    // The filter asks for 2 s per call; the route allows 1 s for all of them.
    authz.set(|b| b.delay = std::time::Duration::from_secs(20));
    let gw = gateway(&up, &authz);
    let t = std::time::Instant::now();
    let r = request(&gw.addr, "GET", "/quick", &[("x-as-call", "alice")], None);
    let took = t.elapsed();
    assert_eq!(r.status, 403, "the call timed out and the filter refused: {}", r.body);
    assert!(took < std::time::Duration::from_secs(10), "waited {took:?}");
    assert!(
        took >= std::time::Duration::from_millis(900),
        "answered before the call could time out: {took:?}"
    );
}

#[test]
fn a_filter_may_call_only_defined_upstreams() {
    common::gateway::refused(
        &common::wasm::one_filter_config(&format!("file = \"{}\"\nupstreams = [\"u\", \"nope\"]", fixture("header.wat"))),
        "routes.r.plugins.wasm.f.upstreams[1]",
        "upstream `nope` is not defined",
    );
}
