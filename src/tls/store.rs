//! The certificates of the live config, chosen per handshake by SNI: exact name, then a
//! wildcard one label up, then the default; an unknown name without a default fails the
//! handshake. The store is part of the config snapshot, so a reload (new files, renewed
//! certificates) swaps it atomically: handshakes already running finish with the old one.

use super::certs::{name_string, LoadedCert};
use crate::config::File;
use crate::live::Live;
use async_trait::async_trait;
use gatehouse_plugins::ClientCert;
use pingora_core::listeners::TlsAccept;
use pingora_core::protocols::tls::TlsRef;
use pingora_core::tls::ext;
use pingora_core::tls::ssl::NameType;
use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Default)]
pub struct CertStore {
    exact: HashMap<String, Arc<LoadedCert>>,
    /// `*.example.org` stored under `example.org`.
    wildcard: HashMap<String, Arc<LoadedCert>>,
    default: Option<Arc<LoadedCert>>,
    pub certs: Vec<Arc<LoadedCert>>,
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl CertStore {
    /// Every problem as (key path, reason).
    pub fn build(file: &File) -> Result<CertStore, Vec<(String, String)>> {
        let mut store = CertStore::default();
        let mut errors = Vec::new();
        let now = now_unix();
        for (name, c) in &file.tls.certificates {
            let base = format!("tls.certificates.{name}");
            let cert = match LoadedCert::load(name, c, now) {
                Ok(cert) => Arc::new(cert),
                Err((field, reason)) => {
                    errors.push((format!("{base}.{field}"), reason));
                    continue;
                }
            };
            if cert.default {
                if let Some(other) = &store.default {
                    errors.push((
                        format!("{base}.default"),
                        format!("tls.certificates.{} is already the default", other.name),
                    ));
                }
                store.default = Some(cert.clone());
            }
            for h in &cert.hosts {
                let (map, key) = match h.strip_prefix("*.") {
                    Some(parent) => (&mut store.wildcard, parent.to_string()),
                    None => (&mut store.exact, h.clone()),
                };
                if let Some(other) = map.insert(key, cert.clone()) {
                    errors.push((
                        format!("{base}.hosts"),
                        format!("`{h}` is also served by tls.certificates.{}", other.name),
                    ));
                }
            }
            store.certs.push(cert);
        }
        if errors.is_empty() {
            Ok(store)
        } else {
            Err(errors)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    /// `acme`: the ACME certificate, whose names come after the exact names configured
    /// (the config refuses a name in both) and before wildcards.
    pub fn select<'a>(&'a self, sni: Option<&str>, acme: Option<&'a Arc<LoadedCert>>) -> Option<&'a Arc<LoadedCert>> {
        if let Some(name) = sni.and_then(sni_name) {
            if let Some(c) = self.exact.get(&name) {
                return Some(c);
            }
            if let Some(a) = acme.filter(|a| a.hosts.contains(&name)) {
                return Some(a);
            }
            if let Some(c) = name.split_once('.').and_then(|(_, parent)| self.wildcard.get(parent)) {
                return Some(c);
            }
        }
        self.default.as_ref()
    }
}

/// The server name a client sent, as certificates and routes both see it: lower-case,
/// without the trailing dot of an absolute name. A name with a `*` (a literal wildcard is no
/// host name) or nothing left is no name at all: it gets the default certificate and
/// matches no `sni` route.
pub fn sni_name(raw: &str) -> Option<String> {
    let name = raw.strip_suffix('.').unwrap_or(raw);
    if name.is_empty() || name.contains('*') || name.ends_with('.') {
        return None;
    }
    Some(name.to_ascii_lowercase())
}

/// What a finished handshake tells the HTTP layer (in the session's `SslDigest`).
#[derive(Debug, Default)]
pub struct TlsInfo {
    pub sni: Option<String>,
    /// The client certificate, when one was presented (verified or not).
    pub client: Option<Arc<ClientCert>>,
}

/// Pingora's TLS callbacks over the live config's certificates.
pub struct CertResolver {
    pub live: Arc<Live>,
}

#[async_trait]
impl TlsAccept for CertResolver {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        let snap = self.live.load();
        let sni = ssl.servername(NameType::HOST_NAME).map(str::to_string);
        let acme = self.live.acme.cert();
        let Some(c) = snap.certs.select(sni.as_deref(), acme.as_ref()) else {
            log::debug!("tls: no certificate for SNI {sni:?}; the handshake fails");
            return;
        };
        let set = ext::ssl_use_certificate(ssl, &c.leaf)
            .and_then(|_| ext::ssl_use_private_key(ssl, &c.key))
            .and_then(|_| c.chain.iter().try_for_each(|x| ext::ssl_add_chain_cert(ssl, x)));
        if let Err(e) = set {
            log::error!("tls: cannot use certificate {}: {e}", c.name);
        }
    }

    async fn handshake_complete_callback(&self, ssl: &TlsRef) -> Option<Arc<dyn Any + Send + Sync>> {
        let client = ssl.peer_certificate().map(|c| {
            Arc::new(ClientCert {
                // Canonical once per handshake; a name that would not parse matches nothing.
                subject: gatehouse_plugins::dn::canonical_subject(&name_string(c.subject_name())).unwrap_or_default(),
                fingerprint: c
                    .digest(pingora_core::tls::hash::MessageDigest::sha256())
                    .map(|d| d.iter().map(|b| format!("{b:02x}")).collect())
                    .unwrap_or_default(),
                verified: ssl.verify_result() == pingora_core::tls::x509::X509VerifyResult::OK,
            })
        });
        let info = TlsInfo {
            sni: ssl.servername(NameType::HOST_NAME).and_then(sni_name),
            client,
        };
        Some(Arc::new(info))
    }
}

#[cfg(test)]
mod tests {
    use super::sni_name;

    #[test]
    fn one_spelling_of_a_server_name() {
        assert_eq!(sni_name("A.Test.").as_deref(), Some("a.test"), "absolute and upper-case");
        for odd in ["", ".", "a.test..", "*.wild.test", "x*.a.test"] {
            assert_eq!(sni_name(odd), None, "{odd:?}");
        }
    }
}
