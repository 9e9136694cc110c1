//! proxy-wasm filters in the real gateway: a filter built from AssemblyScript source with
//! the spec's SDK (tests/wasm-filter, built by scripts/build-wasm-filter), and WAT fixtures
//! for what that SDK cannot express: a local response, a property, an endless loop cut by
//! `max_time`, a memory bomb cut by `max_memory`, traps under fail_closed and fail_open, a
//! pointer outside the guest's memory, and instance reuse.

mod common;

use common::wasm::{assemblyscript_filter, fixture};
use common::{request, Gateway, Upstream};
use std::time::Duration;

/// A route with one filter. Unless the test is about `max_time`, the filter gets 250 ms: the
/// 5 ms default is wall-clock time, and a loaded test machine can stall a worker that long.
fn route(name: &str, filter: &str, table: &str) -> String {
    let table = if table.contains("max_time") {
        table.to_string()
    } else {
        format!("{table}\nmax_time = \"250ms\"")
    };
    format!(
        r#"
[routes.{name}]
paths = ["/{name}"]
upstream = "u"
[routes.{name}.plugins.wasm.{filter}]
{table}
"#
    )
}

fn gateway(up: &Upstream) -> Gateway {
    let mut body = format!("[upstreams.u]\ntargets = [\"{}\"]\n", up.addr);
    body += &route(
        "header",
        "add",
        &format!("file = \"{}\"\nconfig = \"from-config\"", fixture("header.wat")),
    );
    body += &route("deny", "deny", &format!("file = \"{}\"", fixture("deny.wat")));
    body += &route(
        "as",
        "as_filter",
        &format!(
            "file = \"{}\"\nconfig = \"hello-as\"\nroot_id = \"gatehouse_test\"",
            assemblyscript_filter()
        ),
    );
    body += &route("spin", "spin", &format!("file = \"{}\"\nmax_time = \"20ms\"", fixture("loop.wat")));
    body += &route(
        "bomb",
        "bomb",
        &format!("file = \"{}\"\nmax_memory = \"1MiB\"", fixture("bomb.wat")),
    );
    body += &route("closed", "trap_closed", &format!("file = \"{}\"", fixture("trap.wat")));
    body += &route(
        "open",
        "trap_open",
        &format!("file = \"{}\"\non_error = \"fail_open\"", fixture("trap.wat")),
    );
    body += &route("badptr", "badptr", &format!("file = \"{}\"", fixture("badptr.wat")));
    Gateway::start(&body)
}

#[test]
fn filters_edit_headers_read_properties_and_answer_locally() {
    let up = Upstream::start("u");
    let gw = gateway(&up);
    let r = gw.get("/header/x");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-wasm-response"), Some("yes"));
    let seen = up.last();
    assert_eq!(seen.header("x-from-wasm"), Some("1"));
    assert_eq!(seen.header("x-wasm-path"), Some("/header/x"));
    assert_eq!(seen.header("x-wasm-config"), Some("from-config"));

    let before = up.count();
    let r = request(&gw.addr, "GET", "/deny", &[("x-deny", "1")], None);
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.body, "denied by wasm");
    assert_eq!(r.header("x-wasm-deny"), Some("1"));
    assert!(r.header("x-request-id").is_some());
    assert_eq!(up.count(), before, "a local response reaches no upstream");
    assert_eq!(gw.get("/deny").status, 200);

    // A pointer outside the guest's memory is refused (InvalidMemoryAccess = 6), and the
    // filter and the gateway go on.
    let r = gw.get("/badptr");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.last().header("x-badptr"), Some("6"));
}

#[test]
fn an_assemblyscript_filter_runs_unchanged() {
    let up = Upstream::start("u");
    let gw = gateway(&up);
    let r = gw.get("/as/p");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-as-response"), Some("1"));
    let seen = up.last();
    assert_eq!(seen.header("x-from-assemblyscript"), Some("hello-as"));
    assert_eq!(seen.header("x-as-path"), Some("/as/p"));
    let before = up.count();
    let r = request(&gw.addr, "GET", "/as", &[("x-as-deny", "yes")], None);
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.body, "denied by assemblyscript");
    assert_eq!(up.count(), before);
    assert_eq!(gw.metric(r#"gatehouse_wasm_counter{filter="as_filter",name="requests"}"#), 2.0);
}

#[test]
fn limits_and_traps_stay_with_their_request() {
    let up = Upstream::start("u");
    let gw = gateway(&up);
    for _ in 0..2 {
        let t = std::time::Instant::now();
        let r = gw.get("/spin");
        assert_eq!(r.status, 500, "{}", r.body);
        assert_eq!(r.json()["error"], "filter failed");
        assert!(t.elapsed() < Duration::from_secs(5), "the loop was not cut: {:?}", t.elapsed());
    }
    assert_eq!(gw.metric(r#"gatehouse_wasm_faults_total{filter="spin",kind="timeout"}"#), 2.0);
    let r = gw.get("/bomb");
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(gw.metric(r#"gatehouse_wasm_faults_total{filter="bomb",kind="memory"}"#), 1.0);
    let before = up.count();
    assert_eq!(gw.get("/closed").status, 500);
    assert_eq!(up.count(), before, "fail_closed: the request stops at the filter");
    let r = gw.get("/open");
    assert_eq!(r.status, 200, "fail_open: the request goes on without the filter: {}", r.body);
    assert_eq!(up.count(), before + 1);
    assert_eq!(gw.metric(r#"gatehouse_wasm_faults_total{filter="trap_open",kind="trap"}"#), 1.0);
    // The other filters keep working.
    assert_eq!(gw.get("/header").status, 200);
    assert_eq!(up.last().header("x-from-wasm"), Some("1"));
}

#[test]
fn instances_are_reused_and_modules_compiled_once() {
    let up = Upstream::start("u");
    let gw = gateway(&up);
    let compiles = gw.metric("gatehouse_wasm_compiles_total");
    assert!(compiles >= 6.0, "{compiles}");
    for i in 0..1000 {
        let r = gw.get(&format!("/header/{i}"));
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
    }
    assert_eq!(up.last().header("x-wasm-path"), Some("/header/999"));
    // One client at a time: one instance serves them all.
    assert_eq!(gw.metric(r#"gatehouse_wasm_instances{filter="add"}"#), 1.0);
    assert_eq!(gw.metric("gatehouse_wasm_compiles_total"), compiles);
    // A reload that changes a filter's configuration, not its file, compiles nothing.
    let text = std::fs::read_to_string(&gw.config_path).unwrap().replace("from-config", "changed");
    std::fs::write(&gw.config_path, text).unwrap();
    assert_eq!(gw.reload().status, 200);
    common::wait_until(Duration::from_secs(5), "the new filter configuration", || {
        gw.get("/header").status == 200 && up.last().header("x-wasm-config") == Some("changed")
    });
    assert_eq!(gw.metric("gatehouse_wasm_compiles_total"), compiles);
}

#[test]
fn bad_filters_are_refused_at_load() {
    use common::gateway::refused;
    let base = common::wasm::one_filter_config;
    refused(
        &base("file = \"/nonexistent/f.wasm\""),
        "routes.r.plugins.wasm.f.file",
        "cannot read `/nonexistent/f.wasm`",
    );
    let dir = common::gateway::test_dir();
    let plain = dir.join("plain.wat");
    std::fs::write(&plain, "(module (memory (export \"memory\") 1))").unwrap();
    refused(
        &base(&format!("file = \"{}\"", plain.display())),
        "routes.r.plugins.wasm.f.file",
        "not a proxy-wasm 0.2 filter",
    );
    let junk = dir.join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x01\0\0\0\xff\xff").unwrap();
    refused(
        &base(&format!("file = \"{}\"", junk.display())),
        "routes.r.plugins.wasm.f.file",
        "not a valid wasm module",
    );
    refused(
        &base(&format!("file = \"{}\"\nmax_memory = \"16 parsecs\"", fixture("header.wat"))),
        "routes.r.plugins.wasm.f.max_memory",
        "a size from 64KiB to 4GiB",
    );
    refused(
        &base(&format!("file = \"{}\"\nmax_time = \"0s\"", fixture("header.wat"))),
        "routes.r.plugins.wasm.f.max_time",
        "must be above zero",
    );
}
