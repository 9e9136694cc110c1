//! Who is asking: the request id and the client address.

use crate::config::ClientIpHeader;
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
    let b = request_id_bytes();
    // Hex digits only: always UTF-8.
    String::from_utf8_lossy(&b).into_owned()
}

/// The next id's 24 hex digits, written into a stack buffer (one push per digit into a
/// String showed in the profile).
pub fn request_id_bytes() -> [u8; 24] {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut b = [0u8; 24];
    put_hex(&mut b[..8], u64::from(*PREFIX));
    put_hex(&mut b[8..], n);
    b
}

fn put_hex(out: &mut [u8], v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = out.len();
    for (i, d) in out.iter_mut().enumerate() {
        *d = HEX[((v >> ((n - 1 - i) * 4)) & 0xf) as usize];
    }
}

/// Stands for a client whose address a trusted proxy did not give in a form that can be
/// read (`unknown`, an obfuscated name, garbage): never the proxy's own address, which
/// would put every such client behind the proxy's allow rules and into one shared bucket
/// with the proxy.
pub const UNKNOWN_CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

/// The client address as the trusted proxies in front report it, from every line of the
/// header in order, walked from the right: the first hop that is not itself a trusted
/// proxy is the client; anything further left was written by the client and is not
/// believed. An unreadable hop on the way is an unknown client ([`UNKNOWN_CLIENT`]). When
/// every hop is trusted, the leftmost one. `None`: the header is absent.
pub fn client_ip(headers: &http::HeaderMap, which: ClientIpHeader, is_trusted: impl Fn(IpAddr) -> bool) -> Option<IpAddr> {
    let name = match which {
        ClientIpHeader::XForwardedFor => "x-forwarded-for",
        ClientIpHeader::Forwarded => "forwarded",
    };
    let mut last = None;
    for line in headers.get_all(name).iter().rev() {
        let Ok(line) = std::str::from_utf8(line.as_bytes()) else {
            return Some(UNKNOWN_CLIENT);
        };
        for hop in line.rsplit(',') {
            let ip = match which {
                ClientIpHeader::XForwardedFor => parse_hop(hop),
                ClientIpHeader::Forwarded => forwarded_for(hop).and_then(parse_hop),
            };
            let Some(ip) = ip else { return Some(UNKNOWN_CLIENT) };
            if !is_trusted(ip) {
                return Some(ip);
            }
            last = Some(ip);
        }
    }
    last
}

/// The `for=` value of one RFC 7239 forwarded-element (`for=1.2.3.4;proto=https`).
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim().eq_ignore_ascii_case("for").then(|| v.trim())
    })
}

/// One hop: `192.0.2.1`, `192.0.2.1:5555`, `2001:db8::1`, `[2001:db8::1]`, or
/// `[2001:db8::1]:443`, optionally in double quotes (as RFC 7239 writes v6 and ports).
pub fn parse_hop(hop: &str) -> Option<IpAddr> {
    let h = hop.trim();
    let h = h.strip_prefix('"').and_then(|x| x.strip_suffix('"')).unwrap_or(h);
    if let Some(rest) = h.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        let port_ok = after.is_empty()
            || after
                .strip_prefix(':')
                .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        return port_ok.then(|| v6.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)).flatten();
    }
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Some(ip);
    }
    let (v4, port) = h.rsplit_once(':')?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v4.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::prop_assert;

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

    fn headers(name: &str, lines: &[&str]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for l in lines {
            h.append(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), l.parse().unwrap());
        }
        h
    }

    fn trusted(ip: IpAddr) -> bool {
        ip.to_string().starts_with("10.")
    }

    #[test]
    fn forwarded_for_walks_every_line_from_the_right() {
        let xff = |lines: &[&str]| client_ip(&headers("x-forwarded-for", lines), ClientIpHeader::XForwardedFor, trusted);
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(xff(&["1.1.1.1, 2.2.2.2, 10.0.0.5"]), ip("2.2.2.2"));
        assert_eq!(xff(&["10.0.0.1", "203.0.113.7"]), ip("203.0.113.7"));
        assert_eq!(xff(&["9.9.9.9", "203.0.113.7, 10.0.0.9"]), ip("203.0.113.7"));
        assert_eq!(xff(&["10.0.0.1, 10.0.0.5"]), ip("10.0.0.1"));
        assert_eq!(xff(&["203.0.113.7:5555"]), ip("203.0.113.7"));
        assert_eq!(xff(&["[2001:db8::7]:443"]), ip("2001:db8::7"));
        assert_eq!(xff(&["2001:db8::7"]), ip("2001:db8::7"));
        assert_eq!(xff(&["1.1.1.1, garbage"]), Some(UNKNOWN_CLIENT));
        assert_eq!(xff(&["garbage, 203.0.113.7"]), ip("203.0.113.7"), "left of the client is not read");
        assert_eq!(xff(&[]), None);
    }

    #[test]
    fn forwarded_elements() {
        let fwd = |lines: &[&str]| client_ip(&headers("forwarded", lines), ClientIpHeader::Forwarded, trusted);
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(fwd(&["for=192.0.2.60;proto=http;by=203.0.113.43"]), ip("192.0.2.60"));
        assert_eq!(fwd(&["for=\"[2001:db8:cafe::17]:4711\""]), ip("2001:db8:cafe::17"));
        assert_eq!(fwd(&["For=1.2.3.4, for=10.0.0.2"]), ip("1.2.3.4"));
        assert_eq!(fwd(&["for=unknown"]), Some(UNKNOWN_CLIENT));
        assert_eq!(fwd(&["proto=https"]), Some(UNKNOWN_CLIENT));
    }

    proptest::proptest! {
        /// Whatever the lines say, the answer is an address (or none), never a panic, and a
        /// hop left of an untrusted one never decides.
        #[test]
        fn any_lines_are_answered(lines in proptest::collection::vec("[ -~]{0,40}", 0..4), which in 0..2u8) {
            let mut h = http::HeaderMap::new();
            let which = if which == 0 { ClientIpHeader::XForwardedFor } else { ClientIpHeader::Forwarded };
            let name = if which == ClientIpHeader::XForwardedFor { "x-forwarded-for" } else { "forwarded" };
            for l in &lines {
                if let Ok(v) = http::HeaderValue::from_str(l) {
                    h.append(name, v);
                }
            }
            let _ = client_ip(&h, which, trusted);
            h.append(name, http::HeaderValue::from_static("for=203.0.113.1, 203.0.113.1"));
            let got = client_ip(&h, which, trusted);
            prop_assert!(got == Some("203.0.113.1".parse().unwrap()) || got == Some(UNKNOWN_CLIENT));
        }
    }
}
