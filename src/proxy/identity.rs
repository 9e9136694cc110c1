//! Who is asking: the request id and the client address.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use once_cell::sync::Lazy;

const MAX_ID_LEN: usize = 128;

/// An incoming id is kept only if it is short and made of safe characters, so it cannot
/// inject into logs or headers.
pub fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= MAX_ID_LEN
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

static PREFIX: Lazy<u32> = Lazy::new(|| {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    ((t as u64) ^ (u64::from(std::process::id()) << 32) ^ (t >> 64) as u64) as u32
});
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A process-unique id: a per-process random prefix and a counter. No syscalls and no
/// locks; unique across restarts because the prefix changes.
pub fn new_request_id() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut s = String::with_capacity(24);
    push_hex(&mut s, u64::from(*PREFIX), 8);
    push_hex(&mut s, n, 16);
    s
}

fn push_hex(s: &mut String, v: u64, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        s.push(HEX[((v >> (i * 4)) & 0xf) as usize] as char);
    }
}

/// The client address when the peer is a trusted proxy: walk X-Forwarded-For from the right
/// and take the first address that is not itself a trusted proxy. Anything a client wrote
/// to the left of that is not believed.
pub fn client_from_xff(xff: &[u8], is_trusted: impl Fn(IpAddr) -> bool) -> Option<IpAddr> {
    let s = std::str::from_utf8(xff).ok()?;
    let mut last = None;
    for part in s.rsplit(',') {
        let ip: IpAddr = part.trim().parse().ok()?;
        last = Some(ip);
        if !is_trusted(ip) {
            return Some(ip);
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        assert!(valid_request_id(b"abc-123_x.y:z"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"a b"));
        assert!(!valid_request_id(&[b'a'; 129]));
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 24);
        assert!(valid_request_id(a.as_bytes()));
    }

    #[test]
    fn xff_walks_from_the_right() {
        let trusted = |ip: IpAddr| ip.to_string().starts_with("10.");
        assert_eq!(
            client_from_xff(b"1.1.1.1, 2.2.2.2, 10.0.0.5", trusted),
            Some("2.2.2.2".parse().unwrap())
        );
        assert_eq!(client_from_xff(b"10.0.0.1, 10.0.0.5", trusted), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(client_from_xff(b"garbage", trusted), None);
    }
}
