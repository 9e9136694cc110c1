//! Distinguished names in one canonical RFC 4514 spelling, so the subject written in
//! `client_cert_subject` and the subject of a presented certificate compare as strings:
//! attribute types upper-case, no spaces around separators, the attributes of a multi-valued
//! RDN sorted, and every value escaped the same way. Escaping is what keeps a value from
//! posing as more attributes: a CN of `svc,O=Corp` is `CN=svc\,O=Corp`, never `CN=svc,O=Corp`.

use std::fmt::Write;

/// RFC 4514 section 2.4: the characters a value must escape, and leading and trailing
/// spaces and a leading `#`; control characters as hex pairs.
pub fn escape_value(v: &str, out: &mut String) {
    let last = v.chars().count().saturating_sub(1);
    for (k, c) in v.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' ' if k == 0 || k == last => out.push_str("\\ "),
            '#' if k == 0 => out.push_str("\\#"),
            c if c.is_control() => {
                let mut b = [0u8; 4];
                for byte in c.encode_utf8(&mut b).bytes() {
                    let _ = write!(out, "\\{byte:02x}");
                }
            }
            c => out.push(c),
        }
    }
}

/// One attribute as parsed: its type and its value unescaped.
struct Attr {
    kind: String,
    value: Vec<u8>,
    /// A `#hex` value (not text): kept as written, lower-case.
    hex: bool,
}

/// The canonical spelling of an RFC 4514 string, or why it is not one.
pub fn canonical_subject(s: &str) -> Result<String, String> {
    let mut rdns: Vec<Vec<Attr>> = vec![Vec::new()];
    let b = s.as_bytes();
    let mut i = 0;
    loop {
        // The attribute type, up to `=`.
        let start = i;
        while i < b.len() && b[i] != b'=' {
            if matches!(b[i], b',' | b'+' | b'\\') {
                return Err(format!("`{s}`: an attribute type must be followed by `=`"));
            }
            i += 1;
        }
        if i == b.len() {
            return Err(format!("`{s}`: `{}` has no `=`", s[start..].trim()));
        }
        let kind = s[start..i].trim().to_ascii_uppercase();
        if kind.is_empty() || !kind.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.') {
            return Err(format!("`{s}`: `{kind}` is not an attribute type"));
        }
        i += 1;
        // The value, up to an unescaped `,` or `+`; unescaped spaces at either end dropped.
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        let hex = b.get(i) == Some(&b'#');
        let mut value = Vec::new();
        let mut kept = 0; // bytes of `value` that must stay (escaped or not a space)
        while i < b.len() && !matches!(b[i], b',' | b'+') {
            if b[i] == b'\\' {
                let next = *b.get(i + 1).ok_or_else(|| format!("`{s}`: a `\\` ends the string"))?;
                if next.is_ascii_hexdigit() {
                    let pair = s.get(i + 1..i + 3).ok_or_else(|| format!("`{s}`: a `\\` needs two hex digits"))?;
                    value.push(u8::from_str_radix(pair, 16).map_err(|_| format!("`{s}`: `\\{pair}` is not a hex pair"))?);
                    i += 3;
                } else {
                    value.push(next);
                    i += 2;
                }
                kept = value.len();
                continue;
            }
            value.push(b[i]);
            if b[i] != b' ' {
                kept = value.len();
            }
            i += 1;
        }
        value.truncate(kept);
        if hex {
            value.make_ascii_lowercase();
        }
        if let Some(r) = rdns.last_mut() {
            r.push(Attr { kind, value, hex });
        }
        match b.get(i) {
            None => break,
            Some(b'+') => {}
            Some(_) => rdns.push(Vec::new()),
        }
        i += 1;
    }
    let mut out = String::with_capacity(s.len());
    for (n, rdn) in rdns.iter_mut().enumerate() {
        rdn.sort_by(|a, b| (&a.kind, &a.value).cmp(&(&b.kind, &b.value)));
        if n > 0 {
            out.push(',');
        }
        for (k, a) in rdn.iter().enumerate() {
            if k > 0 {
                out.push('+');
            }
            out.push_str(&a.kind);
            out.push('=');
            let text = String::from_utf8(a.value.clone()).map_err(|_| format!("`{s}`: a value of {} is not UTF-8", a.kind))?;
            if a.hex {
                out.push_str(&text);
            } else {
                escape_value(&text, &mut out);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::canonical_subject as c;

    #[test]
    fn one_spelling_for_one_name() {
        assert_eq!(c("CN=partner-gw, O=Partner").unwrap(), "CN=partner-gw,O=Partner");
        assert_eq!(c(" cn = partner-gw ,o=Partner").unwrap(), "CN=partner-gw,O=Partner");
        assert_eq!(c("O=b+CN=a,C=DE").unwrap(), "CN=a+O=b,C=DE", "a multi-valued RDN is a set");
        assert_eq!(c("CN=a\\2cb").unwrap(), "CN=a\\,b", "hex pairs are the characters they stand for");
        assert_eq!(c("CN=a\\ ").unwrap(), "CN=a\\ ", "an escaped space stays");
        assert_eq!(c("CN=#0403").unwrap(), "CN=#0403");
    }

    #[test]
    fn escaped_separators_stay_inside_their_value() {
        assert_eq!(c("CN=svc\\,O=Corp").unwrap(), "CN=svc\\,O=Corp");
        assert_ne!(c("CN=svc\\,O=Corp").unwrap(), c("CN=svc,O=Corp").unwrap());
        assert_ne!(c("CN=a\\+O=b").unwrap(), c("CN=a+O=b").unwrap());
        assert_ne!(c("CN=a+O=b").unwrap(), c("CN=a,O=b").unwrap(), "one RDN of two is not two RDNs");
    }

    #[test]
    fn malformed_names_are_refused() {
        for bad in ["CN", "CN=a,", "=a", "CN=a\\", "CN=a\\4", "C N=a", "CN=a,O"] {
            assert!(c(bad).is_err(), "{bad}");
        }
    }
}
