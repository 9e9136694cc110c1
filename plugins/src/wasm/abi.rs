//! The proxy-wasm ABI's numbers and its one data format, as the spec gives them
//! (proxy-wasm/spec, abi-versions/v0.2.1): statuses, actions, buffer and map types, and
//! header maps serialized as a count, (key length, value length) pairs, then the
//! NUL-terminated bytes, all little-endian.

pub const OK: i32 = 0;
pub const NOT_FOUND: i32 = 1;
pub const BAD_ARGUMENT: i32 = 2;
pub const INVALID_MEMORY_ACCESS: i32 = 6;
pub const CAS_MISMATCH: i32 = 8;
pub const INTERNAL_FAILURE: i32 = 10;
pub const UNIMPLEMENTED: i32 = 12;

/// A callback's answer: go on, or one of the stops (1 StopIteration, 3 and 4 the
/// StopAllIteration forms for headers; for a body callback, a stop asks the host to keep
/// buffering and call again with more, as Envoy's StopIterationAndBuffer does).
pub const ACTION_CONTINUE: i32 = 0;

pub const BUFFER_REQUEST_BODY: i32 = 0;
pub const BUFFER_RESPONSE_BODY: i32 = 1;
pub const BUFFER_HTTP_CALL_RESPONSE_BODY: i32 = 4;
pub const BUFFER_VM_CONFIGURATION: i32 = 6;
pub const BUFFER_PLUGIN_CONFIGURATION: i32 = 7;

pub const MAP_REQUEST_HEADERS: i32 = 0;
pub const MAP_RESPONSE_HEADERS: i32 = 2;
pub const MAP_HTTP_CALL_RESPONSE_HEADERS: i32 = 6;

pub const METRIC_COUNTER: i32 = 0;
pub const METRIC_GAUGE: i32 = 1;
pub const METRIC_HISTOGRAM: i32 = 2;

/// Serializes header pairs the way guests read them.
pub fn encode_map<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone) -> Vec<u8> {
    let n = pairs.clone().count();
    let bytes: usize = pairs.clone().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut out = Vec::with_capacity(4 + n * 8 + bytes);
    out.extend_from_slice(&(n as u32).to_le_bytes());
    for (k, v) in pairs.clone() {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// The pairs of a map this host serialized, without copying (a malformed tail ends it).
pub fn pairs(b: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let u32_at = move |i: usize| -> Option<usize> { Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?) as usize) };
    let n = u32_at(0).filter(|n| *n <= b.len() / 10).unwrap_or(0);
    let mut at = 4 + n * 8;
    (0..n).map_while(move |i| {
        let (kl, vl) = (u32_at(4 + i * 8)?, u32_at(8 + i * 8)?);
        let k = b.get(at..at.checked_add(kl)?)?;
        let vs = at + kl + 1;
        let v = b.get(vs..vs.checked_add(vl)?)?;
        at = vs + vl + 1;
        Some((k, v))
    })
}

/// The pairs of a serialized map; None when the bytes do not hold what their counts say.
pub fn decode_map(b: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let u32_at = |i: usize| -> Option<usize> { Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?) as usize) };
    let n = u32_at(0)?;
    // Each pair needs 8 bytes of sizes and 2 NULs: a count beyond that is a lie.
    if n > b.len() / 10 {
        return if n == 0 { Some(Vec::new()) } else { None };
    }
    let mut sizes = Vec::with_capacity(n);
    for i in 0..n {
        sizes.push((u32_at(4 + i * 8)?, u32_at(8 + i * 8)?));
    }
    let mut at = 4 + n * 8;
    let mut out = Vec::with_capacity(n);
    for (kl, vl) in sizes {
        let k = b.get(at..at.checked_add(kl)?)?.to_vec();
        at += kl + 1;
        let v = b.get(at..at.checked_add(vl)?)?.to_vec();
        at += vl + 1;
        if at > b.len() {
            return None;
        }
        out.push((k, v));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_round_trip_and_lies_are_refused() {
        let pairs: Vec<(&[u8], &[u8])> = vec![(b":path", b"/a"), (b"x-y", b"")];
        let enc = encode_map(pairs.iter().copied());
        assert_eq!(&enc[..4], &2u32.to_le_bytes());
        let dec = decode_map(&enc).unwrap();
        assert_eq!(dec, vec![(b":path".to_vec(), b"/a".to_vec()), (b"x-y".to_vec(), Vec::new())]);
        assert_eq!(decode_map(&0u32.to_le_bytes()), Some(Vec::new()));
        let mut lie = enc.clone();
        lie[4] = 200; // a key longer than the buffer
        assert_eq!(decode_map(&lie), None);
        assert_eq!(decode_map(&u32::MAX.to_le_bytes()), None);
        assert_eq!(decode_map(&[1, 0]), None);
    }
}
