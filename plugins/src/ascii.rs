//! Numbers and addresses written as ASCII into the caller's buffer. Header values and log
//! lines on the request path are built with these rather than `format!`, whose machinery
//! (and `Display` for an IP address, about 1k instructions) showed in the profile.

use std::net::IpAddr;

/// The decimal digits of `v` (itoa: two digits per step from a table).
pub fn push_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// IPv4 by hand; IPv6 (rare behind most edges) through `Display`.
pub fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_u64(out, u64::from(octet));
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// The value of one hex digit.
pub fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_addresses() {
        let mut out = Vec::new();
        push_u64(&mut out, 0);
        out.push(b' ');
        push_u64(&mut out, u64::MAX);
        out.push(b' ');
        push_ip(&mut out, "10.0.255.7".parse().unwrap());
        out.push(b' ');
        push_ip(&mut out, "2001:db8::1".parse().unwrap());
        assert_eq!(String::from_utf8(out).unwrap(), "0 18446744073709551615 10.0.255.7 2001:db8::1");
    }
}
