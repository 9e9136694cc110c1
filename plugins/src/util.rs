//! Small helpers shared by plugins.

use crate::PluginError;
use std::time::Duration;

pub fn duration(key: &str, s: &str) -> Result<Duration, PluginError> {
    humantime::parse_duration(s.trim()).map_err(|e| PluginError {
        key: key.into(),
        reason: format!("invalid duration `{s}`: {e}"),
    })
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

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
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

    #[test]
    fn query() {
        assert_eq!(query_param("a=1&apikey=k%2Fx&b=2", "apikey").as_deref(), Some("k/x"));
        assert_eq!(remove_query_param("a=1&apikey=k&b=2", "apikey"), "a=1&b=2");
        assert_eq!(query_param("a=1", "apikey"), None);
    }
}
