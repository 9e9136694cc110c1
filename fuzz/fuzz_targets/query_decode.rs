//! Query-string decoding as key_auth reads an API key from it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(q) = std::str::from_utf8(data) else { return };
    let _ = gatehouse_plugins::util::query_param(q, "apikey");
    let _ = gatehouse_plugins::util::percent_decode(q);
    let _ = gatehouse_plugins::util::remove_query_param(q, "apikey");
});
