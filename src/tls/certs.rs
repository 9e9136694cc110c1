//! One configured certificate: read, checked (the key matches, it is valid now), and the
//! names it serves.

use crate::config::CertCfg;
use openssl::asn1::{Asn1Time, Asn1TimeRef};
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::X509;

pub use super::dn::name_string;

pub struct LoadedCert {
    pub name: String,
    pub leaf: X509,
    /// Intermediates sent after the leaf.
    pub chain: Vec<X509>,
    pub key: PKey<Private>,
    /// Lower-case; `*.example.org` for wildcards.
    pub hosts: Vec<String>,
    pub default: bool,
    pub issuer: String,
    /// Unix seconds.
    pub not_after: i64,
    pub serial: String,
    pub source: &'static str,
}

fn read(what: &str, source: &str) -> Result<String, String> {
    if source.contains("-----BEGIN") {
        return Ok(source.to_string());
    }
    gatehouse_plugins::secret::resolve(source).map_err(|e| format!("{what}: {e}"))
}

fn unix(t: &Asn1TimeRef) -> Result<i64, String> {
    let epoch = Asn1Time::from_unix(0).map_err(|e| e.to_string())?;
    let d = epoch.diff(t).map_err(|e| e.to_string())?;
    Ok(i64::from(d.days) * 86_400 + i64::from(d.secs))
}

impl LoadedCert {
    /// `Err((field, reason))`: which of `cert`/`key` is wrong, and why.
    pub fn load(name: &str, c: &CertCfg, now_unix: i64) -> Result<LoadedCert, (&'static str, String)> {
        let pem = read("cert", &c.cert).map_err(|e| ("cert", e))?;
        let mut stack = X509::stack_from_pem(pem.as_bytes()).map_err(|e| ("cert", format!("not a PEM certificate chain: {e}")))?;
        if stack.is_empty() {
            return Err(("cert", "not a PEM certificate chain: no CERTIFICATE block".into()));
        }
        let leaf = stack.remove(0);
        let key_pem = read("key", &c.key).map_err(|e| ("key", e))?;
        let key = PKey::private_key_from_pem(key_pem.as_bytes()).map_err(|e| ("key", format!("not a PEM private key: {e}")))?;
        let public = leaf.public_key().map_err(|e| ("cert", format!("unreadable public key: {e}")))?;
        if !public.public_eq(&key) {
            return Err(("key", "the key does not match the certificate".into()));
        }
        let not_after = unix(leaf.not_after()).map_err(|e| ("cert", e))?;
        let not_before = unix(leaf.not_before()).map_err(|e| ("cert", e))?;
        if not_after <= now_unix {
            return Err(("cert", format!("expired ({})", leaf.not_after())));
        }
        if not_before > now_unix {
            return Err(("cert", format!("not valid before {}", leaf.not_before())));
        }
        let hosts: Vec<String> = if c.hosts.is_empty() {
            let san: Vec<String> = leaf
                .subject_alt_names()
                .map(|names| names.iter().filter_map(|n| n.dnsname().map(str::to_ascii_lowercase)).collect())
                .unwrap_or_default();
            if san.is_empty() {
                leaf.subject_name()
                    .entries_by_nid(Nid::COMMONNAME)
                    .filter_map(|e| e.data().to_string().ok().map(|v| v.to_ascii_lowercase()))
                    .collect()
            } else {
                san
            }
        } else {
            c.hosts.iter().map(|h| h.to_ascii_lowercase()).collect()
        };
        let serial = leaf
            .serial_number()
            .to_bn()
            .and_then(|b| b.to_hex_str().map(|h| h.to_string()))
            .unwrap_or_default();
        Ok(LoadedCert {
            name: name.to_string(),
            issuer: name_string(leaf.issuer_name()),
            leaf,
            chain: stack,
            key,
            hosts,
            default: c.default,
            not_after,
            serial,
            source: "file",
        })
    }
}
