//! The OpenSSL acceptor of one TLS listener, built once at start (a change needs an
//! upgrade; certificates are chosen per handshake and reload without one).

use crate::config::{ClientCertMode, Listener, TlsVersion};
use pingora_core::tls::ssl::{select_next_proto, AlpnError, SslAcceptor, SslMethod, SslVerifyMode, SslVersion};
use pingora_core::tls::x509::store::X509StoreBuilder;
use pingora_core::tls::x509::X509;

const H2_H1: &[u8] = b"\x02h2\x08http/1.1";
const H1: &[u8] = b"\x08http/1.1";

/// Mozilla's intermediate profile (TLS 1.2 and 1.3, no TLS 1.0/1.1), the listener's minimum
/// version and ciphers, ALPN (`h2` when `http2`), and client certificates when `client_ca`
/// is set. Errors name the field.
pub fn acceptor(l: &Listener) -> Result<SslAcceptor, (&'static str, String)> {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).map_err(|e| ("tls", e.to_string()))?;
    let min = match l.tls_min_version {
        TlsVersion::V1_2 => SslVersion::TLS1_2,
        TlsVersion::V1_3 => SslVersion::TLS1_3,
    };
    b.set_min_proto_version(Some(min)).map_err(|e| ("tls_min_version", e.to_string()))?;
    if let Some(c) = &l.ciphers {
        b.set_cipher_list(c)
            .map_err(|e| ("ciphers", format!("not an OpenSSL cipher list: {e}")))?;
    }
    // Resumption (session tickets, and the session cache for TLS 1.2) stays on, as OpenSSL
    // has it; a session id context is what OpenSSL needs to resume sessions whose client
    // certificate was verified, and without it those resumptions fail the handshake.
    b.set_session_id_context(b"gatehouse").map_err(|e| ("tls", e.to_string()))?;
    let protos = if l.http2() { H2_H1 } else { H1 };
    // A client that offers ALPN and nothing we speak gets the fatal no_application_protocol
    // alert RFC 7301 3.2 requires (as nginx since 1.21.4), not an HTTP/1.1 it did not ask for.
    b.set_alpn_select_callback(move |_, client| select_next_proto(protos, client).ok_or(AlpnError::ALERT_FATAL));
    if let Some(ca) = &l.client_ca {
        let pem = if ca.contains("-----BEGIN") {
            ca.clone()
        } else {
            gatehouse_plugins::secret::resolve(ca).map_err(|e| ("client_ca", e))?
        };
        let certs = X509::stack_from_pem(pem.as_bytes()).map_err(|e| ("client_ca", format!("not PEM certificates: {e}")))?;
        if certs.is_empty() {
            return Err(("client_ca", "no certificate in the PEM".into()));
        }
        let mut store = X509StoreBuilder::new().map_err(|e| ("client_ca", e.to_string()))?;
        for c in &certs {
            store.add_cert(c.clone()).map_err(|e| ("client_ca", e.to_string()))?;
            b.add_client_ca(c).map_err(|e| ("client_ca", e.to_string()))?;
        }
        b.set_verify_cert_store(store.build()).map_err(|e| ("client_ca", e.to_string()))?;
        match l.client_cert {
            ClientCertMode::Required => b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT),
            // Asked for, never required: an unverified certificate does not fail the
            // handshake; the result is recorded (`TlsInfo::client_verified`) for mtls_auth.
            ClientCertMode::Optional => b.set_verify_callback(SslVerifyMode::PEER, |_, _| true),
        }
    }
    Ok(b.build())
}
