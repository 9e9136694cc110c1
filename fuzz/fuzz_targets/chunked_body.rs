//! The chunked-body validator: any bytes, fed whole and in pieces, must give the same
//! answer (where the body ends, or that it is malformed).
#![no_main]
use gatehouse::listen::Chunked;
use libfuzzer_sys::fuzz_target;

fn end(data: &[u8], step: usize) -> Result<Option<usize>, gatehouse::listen::FramingError> {
    let mut c = Chunked::default();
    let mut at = 0;
    for piece in data.chunks(step.max(1)) {
        if let Some(n) = c.feed(piece)? {
            return Ok(Some(at + n));
        }
        at += piece.len();
    }
    Ok(None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, body)) = data.split_first() else { return };
    assert_eq!(end(body, step as usize % 16 + 1), end(body, body.len().max(1)));
});
