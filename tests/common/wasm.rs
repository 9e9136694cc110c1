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
