//! What a request path means, decided once, before anything looks at it.
//!
//! Routing, authentication, ACLs, the cache key and purges all act on the normalised path,
//! and the normalised path is what goes upstream: the gateway and the upstream can then
//! never disagree about which resource a request is for (`/public/../private` routed as
//! public and served as private). Envoy's `normalize_path` + `merge_slashes`, and then some:
//!
//! - every byte must be a path character (RFC 3986 `pchar` or `/`): space, `"`, `\`, `<`,
//!   `>`, `^`, `` ` ``, `{`, `|`, `}`, `#`, control bytes and raw non-ASCII are refused;
//! - `%XX` must be two hex digits; escapes of unreserved characters (`%41`, `%7E`, `%2E`)
//!   are decoded, every other escape is kept with upper-case hex; `%00` is refused;
//! - `%2F` and `%5C` (encoded `/` and `\`) follow `server.path_escaped_slash`: `reject`
//!   (400, the default), `keep` (stay encoded, part of one segment) or `decode` (become `/`);
//! - runs of `/` are merged; `.` and `..` segments are resolved (RFC 3986 5.2.4), and a
//!   `..` that would climb above the root is refused rather than dropped;
//! - a dot segment with parameters (`..;`, `.;x`), which Java servers resolve as `..`, is
//!   refused.
//!
//! The query is not touched. Paths that need none of this (most) cost one scan and no
//! allocation.

use crate::config::EscapedSlash;

/// Why a path was refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotAbsolute,
    BadCharacter,
    BadEscape,
    Nul,
    EscapedSlash,
    Climbs,
    DotParameters,
}

impl PathError {
    pub fn message(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "invalid path: it must start with /",
            PathError::BadCharacter => "invalid path: a character that must be percent-encoded",
            PathError::BadEscape => "invalid path: % must be followed by two hex digits",
            PathError::Nul => "invalid path: %00",
            PathError::EscapedSlash => "invalid path: encoded / or \\ (%2F, %5C) is not accepted",
            PathError::Climbs => "invalid path: .. climbs above the root",
            PathError::DotParameters => "invalid path: a dot segment with parameters (..;)",
        }
    }
}

/// RFC 3986 `pchar` (unreserved, sub-delims, `:`, `@`), `/`, and `%` (checked apart).
const fn path_byte_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
                    | b'/'
                    | b'%'
            );
        b += 1;
    }
    t
}

static PATH_BYTE: [bool; 256] = path_byte_table();

/// A byte a path may hold as it is (RFC 3986 `pchar`, `/`, `%`): what the guard's target
/// check builds on.
pub fn is_path_byte(b: u8) -> bool {
    PATH_BYTE[b as usize]
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// A segment the resolver must act on: `.`, `..`, or a dot segment with parameters.
fn is_dot_segment(seg: &[u8]) -> bool {
    matches!(seg, b"." | b"..") || seg.starts_with(b".;") || seg.starts_with(b"..;")
}

/// The normalised path, or `None` when `path` is already normal (the common case: no
/// allocation).
pub fn normalize(path: &str, slash: EscapedSlash) -> Result<Option<String>, PathError> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut work = false;
    let mut seg_start = 1;
    let mut i = 0;
    while i <= b.len() {
        let c = b.get(i).copied().unwrap_or(b'/');
        if !PATH_BYTE[c as usize] {
            return Err(PathError::BadCharacter);
        }
        if c == b'%' {
            work |= escape_needs_work(b, i, slash)?;
            i += 3;
            continue;
        }
        if c == b'/' && i > 0 {
            // A segment ends: empty (`//`) or a dot segment needs the slow path.
            let seg = &b[seg_start..i];
            if (seg.is_empty() && i < b.len()) || is_dot_segment(seg) {
                work = true;
            }
            seg_start = i + 1;
        }
        i += 1;
    }
    if !work {
        return Ok(None);
    }
    let decoded = decode(b, slash)?;
    resolve(&decoded).map(Some)
}

/// Checks the escape at `b[i]` (a `%`): whether normalising changes it (an unreserved
/// character, lower-case hex, a slash to decode), or why it is refused.
fn escape_needs_work(b: &[u8], i: usize, slash: EscapedSlash) -> Result<bool, PathError> {
    let hex = gatehouse_plugins::ascii::hex_value;
    let (Some(h), Some(l)) = (b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) else {
        return Err(PathError::BadEscape);
    };
    let v = h << 4 | l;
    let lower = b[i + 1].is_ascii_lowercase() || b[i + 2].is_ascii_lowercase();
    match v {
        0 => Err(PathError::Nul),
        b'/' | b'\\' => match slash {
            EscapedSlash::Reject => Err(PathError::EscapedSlash),
            EscapedSlash::Decode => Ok(true),
            EscapedSlash::Keep => Ok(lower),
        },
        v => Ok(is_unreserved(v) || lower),
    }
}

/// Percent-decoding of unreserved characters (and, in `decode` mode, of `%2F`/`%5C`);
/// every other escape is kept, upper-cased.
fn decode(b: &[u8], slash: EscapedSlash) -> Result<Vec<u8>, PathError> {
    let hex = gatehouse_plugins::ascii::hex_value;
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c != b'%' {
            out.push(c);
            i += 1;
            continue;
        }
        let (Some(h), Some(l)) = (b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) else {
            return Err(PathError::BadEscape);
        };
        let v = h << 4 | l;
        match v {
            0 => return Err(PathError::Nul),
            b'/' | b'\\' => match slash {
                EscapedSlash::Reject => return Err(PathError::EscapedSlash),
                EscapedSlash::Decode => out.push(b'/'),
                EscapedSlash::Keep => push_escape(&mut out, v),
            },
            v if is_unreserved(v) => out.push(v),
            v => push_escape(&mut out, v),
        }
        i += 3;
    }
    Ok(out)
}

fn push_escape(out: &mut Vec<u8>, v: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.extend_from_slice(&[b'%', HEX[(v >> 4) as usize], HEX[(v & 15) as usize]]);
}

/// Merges slashes and resolves dot segments over an already decoded path.
fn resolve(b: &[u8]) -> Result<String, PathError> {
    let mut segs: Vec<&[u8]> = Vec::with_capacity(8);
    // Whether the result ends with `/`: a trailing slash, or a last segment of `.` / `..`.
    let mut trailing = false;
    for seg in b[1..].split(|c| *c == b'/') {
        trailing = false;
        match seg {
            b"" => trailing = true,
            b"." => trailing = true,
            b".." => {
                if segs.pop().is_none() {
                    return Err(PathError::Climbs);
                }
                trailing = true;
            }
            s if is_dot_segment(s) => return Err(PathError::DotParameters),
            s => segs.push(s),
        }
    }
    let mut out = String::with_capacity(b.len());
    for s in &segs {
        out.push('/');
        // Only path bytes (ASCII) and upper-case escapes are left.
        out.push_str(std::str::from_utf8(s).map_err(|_| PathError::BadCharacter)?);
    }
    if trailing || segs.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p, EscapedSlash::Reject).map(|o| o.unwrap_or_else(|| p.to_string()))
    }

    #[test]
    fn already_normal_paths_are_left_alone() {
        for p in ["/", "/a", "/a/b/", "/a.b/.well-known/x", "/a;b=c/@x:y", "/...", "/.x", "/a%20b%3F"] {
            assert_eq!(normalize(p, EscapedSlash::Reject), Ok(None), "{p}");
        }
    }

    #[test]
    fn decoding_merging_and_dot_segments() {
        assert_eq!(n("/%70rivate/x"), Ok("/private/x".into()));
        assert_eq!(n("//private//x"), Ok("/private/x".into()));
        assert_eq!(n("/public/../private/x"), Ok("/private/x".into()));
        assert_eq!(n("/public/%2e%2E/private"), Ok("/private".into()));
        assert_eq!(n("/a/./b/."), Ok("/a/b/".into()));
        assert_eq!(n("/a/b/.."), Ok("/a/".into()));
        assert_eq!(n("/a/.."), Ok("/".into()));
        assert_eq!(n("/a%3fb%2a%7e"), Ok("/a%3Fb%2A~".into()));
        assert_eq!(n("/a%25b"), Ok("/a%25b".into()));
        assert_eq!(n("/a//"), Ok("/a/".into()));
    }

    #[test]
    fn refusals() {
        for (p, e) in [
            ("x", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
            ("/a b", PathError::BadCharacter),
            ("/a\\b", PathError::BadCharacter),
            ("/a|b", PathError::BadCharacter),
            ("/é", PathError::BadCharacter),
            ("/a#b", PathError::BadCharacter),
            ("/%zz", PathError::BadEscape),
            ("/a%", PathError::BadEscape),
            ("/a%4", PathError::BadEscape),
            ("/a%00", PathError::Nul),
            ("/a%2fb", PathError::EscapedSlash),
            ("/a%5Cb", PathError::EscapedSlash),
            ("/..", PathError::Climbs),
            ("/a/../..", PathError::Climbs),
            ("/%2e%2e/x", PathError::Climbs),
            ("/a/..;/b", PathError::DotParameters),
            ("/a/.;x/b", PathError::DotParameters),
        ] {
            assert_eq!(n(p), Err(e), "{p}");
        }
    }

    #[test]
    fn escaped_slash_modes() {
        assert_eq!(normalize("/a%2fb", EscapedSlash::Keep), Ok(Some("/a%2Fb".into())));
        assert_eq!(normalize("/a%2fb", EscapedSlash::Decode), Ok(Some("/a/b".into())));
        assert_eq!(normalize("/a%5c..%5cb", EscapedSlash::Decode), Ok(Some("/b".into())));
        assert_eq!(normalize("/a%2f..%2f..%2fb", EscapedSlash::Decode), Err(PathError::Climbs));
    }

    fn mode() -> impl Strategy<Value = EscapedSlash> {
        prop_oneof![Just(EscapedSlash::Reject), Just(EscapedSlash::Keep), Just(EscapedSlash::Decode)]
    }

    proptest! {
        /// Whatever the bytes, the answer is a path or a refusal, never a panic; and a
        /// normalised path is a fixed point with no dot segment, empty segment or escape of
        /// an unreserved character left in it.
        #[test]
        fn normalising_is_total_and_idempotent(p in "/[a-zA-Z0-9./%;~_2eEfF-]{0,40}", m in mode()) {
            if let Ok(out) = normalize(&p, m) {
                let out = out.unwrap_or(p.clone());
                prop_assert_eq!(normalize(&out, m), Ok(None), "{} -> {}", p, out);
                prop_assert!(out.starts_with('/'));
                prop_assert!(!out.contains("//"));
                prop_assert!(!out.split('/').any(|s| s == "." || s == ".."));
                prop_assert!(!out.contains("%2E") && !out.contains("%2e"));
            }
        }

        #[test]
        fn any_string_is_answered(p in "\\PC{0,60}", m in mode()) {
            let _ = normalize(&p, m);
            let _ = normalize(&format!("/{p}"), m);
        }
    }
}
