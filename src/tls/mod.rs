//! TLS termination: the certificates (loaded, checked and chosen by SNI), and the OpenSSL
//! acceptor each TLS listener handshakes with. The handshake itself runs in `listen`, under
//! `server.tls_handshake_timeout`.

mod acceptor;
mod certs;
mod dn;
mod store;

pub use acceptor::acceptor;
pub use certs::LoadedCert;
pub use store::{CertResolver, CertStore, TlsInfo};
