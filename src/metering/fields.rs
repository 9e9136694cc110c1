//! The few fields the ledger, the fleet totals and the file sink need from a spool line,
//! read without a full JSON parse. The lines are the gateway's own (`event.rs` writes the
//! keys in one order), so each key is found by a forward search; a value with an escape, or
//! anything unexpected, falls back to serde. It is a shortcut for speed, checked against
//! serde on every shape in the tests below.

use memchr::memmem;
use serde::Deserialize;
use std::borrow::Cow;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fields<'a> {
    pub time: &'a str,
    pub consumer: Option<Cow<'a, str>>,
    pub route: Option<Cow<'a, str>>,
    pub status: u16,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub rejection: Option<&'a str>,
}

/// Reads the line's fields, quickly when it can.
pub fn read(line: &[u8]) -> Option<Fields<'_>> {
    fast(line).or_else(|| slow(line))
}

/// A string value at the start of `s` (after `"key":`): `"text"` or `null`, and the rest.
fn string(s: &[u8]) -> Option<(Option<&str>, &[u8])> {
    if let Some(rest) = s.strip_prefix(b"null") {
        return Some((None, rest));
    }
    let body = s.strip_prefix(b"\"")?;
    let end = memchr::memchr2(b'"', b'\\', body)?;
    if body[end] != b'"' {
        return None;
    }
    Some((Some(std::str::from_utf8(&body[..end]).ok()?), &body[end + 1..]))
}

fn number(s: &[u8]) -> Option<(u64, &[u8])> {
    let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
    Some((std::str::from_utf8(&s[..n]).ok()?.parse().ok()?, &s[n..]))
}

fn after<'a>(s: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let i = memmem::find(s, key)?;
    Some(&s[i + key.len()..])
}

fn fast(line: &[u8]) -> Option<Fields<'_>> {
    let s = after(line, b"\"time\":")?;
    let (time, s) = string(s)?;
    let s = after(s, b"\"data\":{\"consumer\":")?;
    let (consumer, s) = string(s)?;
    let s = after(s, b",\"route\":")?;
    let (route, s) = string(s)?;
    let s = after(s, b",\"status\":")?;
    let (status, s) = number(s)?;
    let s = after(s, b",\"request_bytes\":")?;
    let (request_bytes, s) = number(s)?;
    let s = after(s, b",\"response_bytes\":")?;
    let (response_bytes, s) = number(s)?;
    let s = after(s, b",\"rejection\":")?;
    let (rejection, _) = string(s)?;
    Some(Fields {
        time: time?,
        consumer: consumer.map(Cow::Borrowed),
        route: route.map(Cow::Borrowed),
        status: u16::try_from(status).ok()?,
        request_bytes,
        response_bytes,
        rejection,
    })
}

fn slow(line: &[u8]) -> Option<Fields<'_>> {
    #[derive(Deserialize)]
    struct Line<'a> {
        #[serde(borrow)]
        time: &'a str,
        #[serde(borrow)]
        data: Data<'a>,
    }
    #[derive(Deserialize)]
    struct Data<'a> {
        #[serde(borrow)]
        consumer: Option<Cow<'a, str>>,
        #[serde(borrow)]
        route: Option<Cow<'a, str>>,
        status: u16,
        request_bytes: u64,
        response_bytes: u64,
        #[serde(borrow)]
        rejection: Option<&'a str>,
    }
    let l: Line<'_> = serde_json::from_slice(line).ok()?;
    Some(Fields {
        time: l.time,
        consumer: l.data.consumer,
        route: l.data.route,
        status: l.data.status,
        request_bytes: l.data.request_bytes,
        response_bytes: l.data.response_bytes,
        rejection: l.data.rejection,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metering::event::{Usage, DEFAULT_TYPE};
    use std::time::{Duration, UNIX_EPOCH};

    fn line(consumer: Option<&str>, route: Option<&str>, rejection: Option<&str>) -> Vec<u8> {
        let mut out = Vec::new();
        Usage {
            arrived: UNIX_EPOCH + Duration::from_secs(1_764_662_400),
            source: "gatehouse://t",
            event_type: DEFAULT_TYPE,
            consumer,
            plan: Some("gold"),
            credential: consumer.map(|_| ("key", 0)),
            route,
            upstream: Some("up"),
            method: "GET",
            status: 429,
            request_bytes: 12,
            response_bytes: 345,
            latency: Duration::from_micros(1500),
            upstream_latency: None,
            cache: None,
            rejection,
            trace_id: None,
            request_id: "r",
            dimensions: None,
        }
        .encode(&mut out);
        out
    }

    #[test]
    fn the_shortcut_reads_what_serde_reads() {
        for (c, r, j) in [
            (Some("acme"), Some("users"), None),
            (None, None, Some("no_route")),
            (Some("jwt:a\"b"), Some("r\\x"), Some("rate_limit")),
            (Some("ünï"), Some("route"), None),
        ] {
            let l = line(c, r, j);
            let slow = slow(&l).expect("serde reads every line");
            assert_eq!(read(&l), Some(slow), "{}", String::from_utf8_lossy(&l));
        }
        let plain = line(Some("acme"), Some("users"), None);
        assert!(fast(&plain).is_some(), "the shortcut takes a plain line");
        assert_eq!(fast(&plain).map(|f| (f.status, f.response_bytes)), Some((429, 345)));
        let escaped = line(Some("a\"b"), Some("users"), None);
        assert!(fast(&escaped).is_none(), "an escape goes to serde");
    }
}
