//! Certificate names as RFC 4514 strings (for the subject, put in canonical form by
//! `gatehouse_plugins::dn` before it is compared or logged). Values are escaped and the
//! attributes of a multi-valued RDN joined with `+`, so no value can pose as another
//! attribute: a CN of `svc,O=Corp` renders as `CN=svc\,O=Corp`, never `CN=svc,O=Corp`.

use foreign_types::ForeignTypeRef;
use gatehouse_plugins::dn::escape_value;
use openssl::x509::{X509NameEntryRef, X509NameRef};
use std::ffi::{c_int, c_void};
use std::fmt::Write;

extern "C" {
    // libcrypto (OpenSSL >= 1.1.0), which the openssl crate links; the crate does not bind it.
    // The index of the RDN (the SET) an entry belongs to.
    fn X509_NAME_ENTRY_set(ne: *const c_void) -> c_int;
}

fn rdn_index(e: &X509NameEntryRef) -> c_int {
    // SAFETY: `e` is a live entry borrowed from its name; the call only reads it.
    unsafe { X509_NAME_ENTRY_set(e.as_ptr() as *const c_void) }
}

/// Most specific RDN first, as RFC 4514 orders them.
pub fn name_string(n: &X509NameRef) -> String {
    let entries: Vec<&X509NameEntryRef> = n.entries().collect();
    let mut out = String::new();
    let mut i = entries.len();
    while i > 0 {
        // Entries of one RDN are adjacent; walk back to the first of this set.
        let set = rdn_index(entries[i - 1]);
        let mut start = i - 1;
        while start > 0 && rdn_index(entries[start - 1]) == set {
            start -= 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        for (k, e) in entries[start..i].iter().enumerate() {
            if k > 0 {
                out.push('+');
            }
            out.push_str(e.object().nid().short_name().unwrap_or("?"));
            out.push('=');
            match e.data().to_string() {
                Ok(v) => escape_value(&v, &mut out),
                Err(_) => hex_value(e.data().as_slice(), &mut out),
            }
        }
        i = start;
    }
    out
}

/// A value that is not text: `#` and its bytes in hex (RFC 4514 2.4's form for such values).
fn hex_value(bytes: &[u8], out: &mut String) {
    out.push('#');
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::x509::X509Name;

    fn name(entries: &[(&str, &str)]) -> String {
        let mut b = X509Name::builder().unwrap();
        for (k, v) in entries {
            b.append_entry_by_text(k, v).unwrap();
        }
        name_string(&b.build())
    }

    #[test]
    fn values_cannot_pose_as_attributes() {
        assert_eq!(name(&[("O", "Partner"), ("CN", "partner-gw")]), "CN=partner-gw,O=Partner");
        assert_eq!(name(&[("CN", "partner-gw,O=Partner")]), "CN=partner-gw\\,O=Partner");
        assert_eq!(name(&[("CN", "a+O=b")]), "CN=a\\+O=b");
        assert_eq!(name(&[("CN", "partner-gw ")]), "CN=partner-gw\\ ");
        assert_eq!(name(&[("CN", " #x")]), "CN=\\ #x");
        assert_eq!(name(&[("CN", "#x")]), "CN=\\#x");
        assert_eq!(name(&[("CN", "a\\b\"c;<>")]), "CN=a\\\\b\\\"c\\;\\<\\>");
        assert_eq!(name(&[("CN", "a\u{1}b")]), "CN=a\\01b");
        for n in [name(&[("O", "Partner"), ("CN", "partner-gw,O=Partner ")]), name(&[("CN", "#x; y")])] {
            assert_eq!(
                gatehouse_plugins::dn::canonical_subject(&n).as_deref(),
                Ok(n.as_str()),
                "rendered names are canonical"
            );
        }
    }
}
