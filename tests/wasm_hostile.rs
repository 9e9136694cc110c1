//! Hostile proxy-wasm modules against the real gateway (the findings of an attack run):
//! a filter that pauses a request and never resumes it, one that tries to take over
//! framing and status, one that grows a table without bound, and modules refused at load
//! (several memories, a callback with the wrong signature).

mod common;

use common::wasm::fixture;
use common::{request, Gateway, Upstream};

fn route(name: &str, file: &str) -> String {
    format!(
        "[routes.{name}]\npaths = [\"/{name}\"]\nupstream = \"u\"\n[routes.{name}.plugins.wasm.{name}]\nfile = \"{}\"\nmax_time = \"250ms\"\n",
        fixture(file)
    )
}

#[test]
fn hostile_filters_cannot_hold_requests_or_take_over_framing() {
    let up = Upstream::start("u");
    let mut body = format!("[upstreams.u]\ntargets = [\"{}\"]\n", up.addr);
    for (name, file) in [("pause", "pause.wat"), ("framing", "framing.wat"), ("table", "table.wat")] {
        body += &route(name, file);
    }
    let gw = Gateway::start(&body);

    // Paused and never resumed: refused (fail_closed), not let through as if resumed.
    let before = up.count();
    let r = gw.get("/pause");
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(up.count(), before, "a paused request must not reach the upstream");
    assert_eq!(gw.metric(r#"gatehouse_wasm_faults_total{filter="pause",kind="stalled"}"#), 1.0);

    // Framing stays the gateway's: no Content-Length on a body-less GET upstream (it would
    // wait for a body), no Transfer-Encoding beside Content-Length, no 100 status.
    let r = request(&gw.addr, "GET", "/framing", &[], None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-framing-filter"), Some("yes"), "the filter's other headers apply");
    assert_eq!(r.header("transfer-encoding"), None);
    let seen = up.last();
    assert_eq!(seen.header("x-framing-filter"), Some("yes"));
    assert_eq!(seen.header("content-length"), None);

    // A table grown by ten million entries is cut by the store's limits: a fault, and the
    // gateway answers the next request.
    let r = gw.get("/table");
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(gw.metric(r#"gatehouse_wasm_faults_total{filter="table",kind="trap"}"#), 1.0);
    assert_eq!(gw.get("/framing").status, 200);
}

#[test]
fn modules_that_would_escape_their_limits_are_refused_at_load() {
    let dir = common::gateway::test_dir();
    let base = |file: &std::path::Path| common::wasm::one_filter_config(&format!("file = \"{}\"", file.display()));
    let prelude = r#"(func (export "malloc") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))"#;
    // `max_memory` caps each memory; a second memory would double what it allows.
    let multi = dir.join("multi.wat");
    std::fs::write(&multi, format!("(module (memory (export \"memory\") 1) (memory $b 1) {prelude})")).unwrap();
    common::gateway::refused(&base(&multi), "routes.r.plugins.wasm.f.file", "not a valid wasm module");
    // A callback the host cannot call would be skipped silently (an auth check not run).
    let sig = dir.join("signature.wat");
    std::fs::write(
        &sig,
        format!(
            "(module (memory (export \"memory\") 1) {prelude}
  (func (export \"proxy_on_request_headers\") (param i32 i32) (result i32) (i32.const 0)))"
        ),
    )
    .unwrap();
    common::gateway::refused(
        &base(&sig),
        "routes.r.plugins.wasm.f.file",
        "proxy_on_request_headers has the wrong signature",
    );
}
