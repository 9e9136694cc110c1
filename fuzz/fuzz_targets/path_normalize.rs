//! The path normaliser: any bytes, each escaped-slash mode. A normalised path must be a
//! fixed point: normalising it again changes nothing.
#![no_main]
use gatehouse::config::EscapedSlash;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else { return };
    for mode in [EscapedSlash::Reject, EscapedSlash::Keep, EscapedSlash::Decode] {
        if let Ok(out) = gatehouse::path::normalize(path, mode) {
            let out = out.unwrap_or_else(|| path.to_string());
            assert_eq!(gatehouse::path::normalize(&out, mode), Ok(None), "{path:?} -> {out:?}");
        }
    }
});
