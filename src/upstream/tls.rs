//! TLS to a cluster's targets: what every pooled connection to them is built with (SNI,
//! verification, a private CA, a client certificate, ALPN), read once when the cluster is
//! built, and the same settings for the health checker's own connections.

use crate::config::Upstream;
use openssl::pkey::PKey;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use openssl::x509::X509;
use pingora_core::protocols::tls::CaType;
use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::utils::tls::CertKey;
use std::sync::Arc;

pub struct PeerTls {
    pub sni: String,
    pub verify: bool,
    pub ca: Option<Arc<CaType>>,
    pub client: Option<Arc<CertKey>>,
    /// For health checks: a connector with the same trust and identity.
    pub connector: SslConnector,
}

fn pem(field: &str, source: &str) -> Result<String, String> {
    if source.contains("-----BEGIN") {
        return Ok(source.to_string());
    }
    gatehouse_plugins::secret::resolve(source).map_err(|e| format!("{field}: {e}"))
}

fn certs(field: &str, source: &str) -> Result<Vec<X509>, String> {
    let certs = X509::stack_from_pem(pem(field, source)?.as_bytes()).map_err(|e| format!("{field}: not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{field}: no CERTIFICATE block"));
    }
    Ok(certs)
}

impl PeerTls {
    /// `None` without `tls`. Errors start with the field name.
    pub fn new(u: &Upstream) -> Result<Option<PeerTls>, String> {
        if !u.tls {
            return Ok(None);
        }
        let ca = match &u.ca {
            Some(c) => Some(certs("ca", c)?),
            None => None,
        };
        let client = match (&u.client_cert, &u.client_key) {
            (Some(c), Some(k)) => {
                let chain = certs("client_cert", c)?;
                let key = PKey::private_key_from_pem(pem("client_key", k)?.as_bytes())
                    .map_err(|e| format!("client_key: not a PEM private key: {e}"))?;
                let public = chain[0].public_key().map_err(|e| format!("client_cert: {e}"))?;
                if !public.public_eq(&key) {
                    return Err("client_key: does not match client_cert".into());
                }
                Some((chain, key))
            }
            _ => None,
        };
        let mut b = SslConnector::builder(SslMethod::tls()).map_err(|e| format!("tls: {e}"))?;
        if let Some(ca) = &ca {
            let store = b.cert_store_mut();
            for c in ca {
                store.add_cert(c.clone()).map_err(|e| format!("ca: {e}"))?;
            }
        }
        if !u.verify() {
            b.set_verify(SslVerifyMode::NONE);
        }
        if let Some((chain, key)) = &client {
            b.set_certificate(&chain[0]).map_err(|e| format!("client_cert: {e}"))?;
            for c in &chain[1..] {
                b.add_extra_chain_cert(c.clone()).map_err(|e| format!("client_cert: {e}"))?;
            }
            b.set_private_key(key).map_err(|e| format!("client_key: {e}"))?;
        }
        Ok(Some(PeerTls {
            sni: u.sni.clone().unwrap_or_default(),
            verify: u.verify(),
            ca: ca.map(|c| Arc::new(c.into_boxed_slice())),
            client: client.map(|(chain, key)| Arc::new(CertKey::new(chain, key))),
            connector: b.build(),
        }))
    }

    /// Puts these settings on a target's peer.
    pub fn apply(&self, peer: &mut HttpPeer) {
        peer.sni = self.sni.clone();
        peer.options.verify_cert = self.verify;
        peer.options.verify_hostname = self.verify;
        peer.options.ca = self.ca.clone();
        peer.client_cert_key = self.client.clone();
    }
}

/// ALPN and stream settings for HTTP/2 targets.
pub fn apply_http2(u: &Upstream, peer: &mut HttpPeer) {
    if u.http2 {
        // h2c (no TLS) needs h2 alone; over TLS the target may still pick HTTP/1.1.
        peer.options.alpn = if u.tls { ALPN::H2H1 } else { ALPN::H2 };
        peer.options.max_h2_streams = u.max_streams;
    }
}
