//! Small helpers shared by plugins.

use crate::PluginError;
use std::time::Duration;

/// The longest duration any setting takes: longer is a typo, and would overflow clock
/// arithmetic (`Instant + duration`) at run time.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 86_400);

/// A humantime duration, at most [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d =
        humantime::parse_duration(s.trim()).map_err(|e| format!("invalid duration `{s}`: {e} (use e.g. \"500ms\", \"30s\", \"5m\")"))?;
    if d > MAX_DURATION {
        return Err(format!("duration `{s}` is longer than the 10 years any setting allows"));
    }
    Ok(d)
}

pub fn duration(key: &str, s: &str) -> Result<Duration, PluginError> {
    parse_duration(s).map_err(|reason| PluginError { key: key.into(), reason })
}

pub fn header_name(key: &str, s: &str) -> Result<http::HeaderName, PluginError> {
    http::HeaderName::from_bytes(s.as_bytes()).map_err(|_| PluginError {
        key: key.into(),
        reason: format!("`{s}` is not a valid header name"),
    })
}

pub fn err(key: &str, reason: impl Into<String>) -> PluginError {
    PluginError {
        key: key.into(),
        reason: reason.into(),
    }
}

/// The value of query parameter `name`, percent-decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

/// The query without parameter `name` (for hiding credentials).
pub fn remove_query_param(query: &str, name: &str) -> String {
    query
        .split('&')
        .filter(|pair| pair.split_once('=').map(|(k, _)| k).unwrap_or(pair) != name && !pair.is_empty())
        .collect::<Vec<_>>()
        .join("&")
}

/// Form-style decoding of a query value: `%XX` escapes and `+` for space. An escape that is
/// not two hex digits stays as it was written; bytes that are not UTF-8 become U+FFFD.
/// Works on bytes: a `%` before a multi-byte character must not slice inside it.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => match (
                b.get(i + 1).copied().and_then(crate::ascii::hex_value),
                b.get(i + 2).copied().and_then(crate::ascii::hex_value),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Replaces the request's query (None removes it).
pub fn set_query(req: &mut pingora_http::RequestHeader, query: Option<&str>) {
    let path = req.uri.path().to_string();
    let uri = match query {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path,
    };
    if let Ok(u) = uri.parse::<http::Uri>() {
        req.set_uri(u);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("a%2Fb+c"), "a/b c");
        assert_eq!(percent_decode("%€"), "%€");
        assert_eq!(percent_decode("%e2%82%ac"), "€");
        assert_eq!(percent_decode("%e2%82"), "\u{fffd}");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%%41"), "%A");
    }

    proptest! {
        /// Any query value a client sends decodes without a panic; text with no escapes
        /// comes back unchanged.
        #[test]
        fn any_value_decodes(s in "\\PC{0,64}") {
            let d = percent_decode(&s);
            if !s.contains('%') && !s.contains('+') {
                prop_assert_eq!(d, s);
            }
        }

        #[test]
        fn encoded_bytes_round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let encoded: String = bytes.iter().map(|b| format!("%{b:02X}")).collect();
            prop_assert_eq!(percent_decode(&encoded), String::from_utf8_lossy(&bytes).into_owned());
        }
    }

    #[test]
    fn query() {
        assert_eq!(query_param("a=1&apikey=k%2Fx&b=2", "apikey").as_deref(), Some("k/x"));
        assert_eq!(remove_query_param("a=1&apikey=k&b=2", "apikey"), "a=1&b=2");
        assert_eq!(query_param("a=1", "apikey"), None);
    }
}
