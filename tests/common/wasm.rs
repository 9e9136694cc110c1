//! Where the wasm tests' filters are: the WAT fixtures, and the AssemblyScript filter that
//! `scripts/setup test` builds from `tests/wasm-filter/`.

pub fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/wasm/{name}", env!("CARGO_MANIFEST_DIR"))
}

pub fn assemblyscript_filter() -> String {
    let path = format!("{}/tests/wasm-filter/build/filter.wasm", env!("CARGO_MANIFEST_DIR"));
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: scripts/setup test (scripts/build-wasm-filter) builds it"
    );
    path
}

/// A whole config (for `gateway::refused`) with one route whose filter `f` has `table`.
pub fn one_filter_config(table: &str) -> String {
    format!(
        r#"
[server]
pid_file = "/tmp/gh-wasm-check/gatehouse.pid"
upgrade_sock = "/tmp/gh-wasm-check/upgrade.sock"
[listeners.public]
addr = "127.0.0.1:18080"
[upstreams.u]
targets = ["127.0.0.1:9"]
[routes.r]
paths = ["/"]
upstream = "u"
[routes.r.plugins.wasm.f]
{table}
"#
    )
}
