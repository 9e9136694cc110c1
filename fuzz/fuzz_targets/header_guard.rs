//! The header guard's checks on raw request bytes (limits, framing, target, Host).
#![no_main]
use gatehouse::listen::{check, Limits};
use libfuzzer_sys::fuzz_target;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        header_timeout: Duration::from_secs(1),
        keepalive_timeout: Duration::from_secs(1),
        max_header_size: 8192,
        max_headers: 64,
        max_uri: 2048,
    };
    let _ = check(&limits, data);
});
