//! One wasmtime engine for the process, with epoch interruption ticked every millisecond
//! (how `max_time` stops a filter that loops), and compiled modules kept by file content:
//! a reload whose filter file did not change reuses the compiled module instead of running
//! Cranelift again.

use once_cell::sync::Lazy;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use wasmtime::{Config, Engine, Module};

pub static ENGINE: Lazy<Engine> = Lazy::new(|| {
    let mut c = Config::new();
    c.epoch_interruption(true);
    // One linear memory per module: `max_memory` caps each memory, not their number.
    c.wasm_multi_memory(false);
    c.cranelift_opt_level(wasmtime::OptLevel::Speed);
    let engine = Engine::new(&c).unwrap_or_else(|e| panic!("the wasm engine cannot start on this machine: {e:#}"));
    let ticker = engine.clone();
    let spawned = std::thread::Builder::new().name("wasm-epoch".into()).spawn(move || loop {
        std::thread::sleep(Duration::from_millis(1));
        ticker.increment_epoch();
    });
    if let Err(e) = spawned {
        log::error!("wasm: cannot start the epoch thread, max_time will not be enforced: {e}");
    }
    engine
});

/// Compiled modules by the SHA-256 of their bytes.
static MODULES: Lazy<Mutex<HashMap<[u8; 32], Module>>> = Lazy::new(|| Mutex::new(HashMap::new()));

/// Compiles `bytes` (a binary module or WAT text), or returns the module compiled earlier
/// from the same bytes.
pub fn module(bytes: &[u8]) -> Result<Module, String> {
    use sha2::Digest;
    let key: [u8; 32] = sha2::Sha256::digest(bytes).into();
    if let Some(m) = MODULES.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(m.clone());
    }
    let m = Module::new(&ENGINE, bytes).map_err(|e| format!("not a valid wasm module: {e:#}"))?;
    COMPILES.inc();
    let mut cache = MODULES.lock().unwrap_or_else(|p| p.into_inner());
    // Old versions of edited filters are not kept forever.
    if cache.len() >= 64 {
        cache.clear();
    }
    cache.insert(key, m.clone());
    Ok(m)
}

/// How many times Cranelift ran: a reload with unchanged filters must not add to it.
pub static COMPILES: Lazy<prometheus::IntCounter> = Lazy::new(|| {
    crate::metrics::register(
        prometheus::IntCounter::new(
            "gatehouse_wasm_compiles_total",
            "wasm modules compiled (unchanged files are reused).",
        )
        .expect("static metric"),
    )
});
