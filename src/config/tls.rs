//! `[listeners.NAME]` and `[tls]` as written: which listeners speak TLS, HTTP/2 or h2c, take
//! a PROXY header, ask for client certificates, redirect to HTTPS; and the certificates
//! they serve.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub addr: String,
    #[serde(default)]
    pub tls: bool,
    /// ALPN h2 on TLS listeners (default true there).
    #[serde(default)]
    pub http2: Option<bool>,
    /// HTTP/2 with prior knowledge on a plaintext listener.
    #[serde(default)]
    pub h2c: bool,
    /// Accept a PROXY protocol v1/v2 header (from trusted proxies only).
    #[serde(default)]
    pub proxy_protocol: bool,
    #[serde(default)]
    pub tls_min_version: TlsVersion,
    /// OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are OpenSSL's defaults).
    #[serde(default)]
    pub ciphers: Option<String>,
    /// CA certificates (`file:` path or PEM) that sign accepted client certificates.
    #[serde(default)]
    pub client_ca: Option<String>,
    #[serde(default)]
    pub client_cert: ClientCertMode,
    /// `Strict-Transport-Security` value sent with every answer on this TLS listener.
    #[serde(default)]
    pub hsts: Option<String>,
    /// `https://{host}:8443{uri}`: every request on this plaintext listener gets a 308 there.
    #[serde(default)]
    pub redirect_https: Option<String>,
}

impl Listener {
    pub fn http2(&self) -> bool {
        self.http2.unwrap_or(self.tls)
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClientCertMode {
    /// Asked for; a connection without one (or with one that does not verify) still
    /// completes, and routes that need one answer 401.
    #[default]
    Optional,
    /// The handshake fails without a certificate that verifies.
    Required,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    #[serde(default)]
    pub certificates: BTreeMap<String, CertCfg>,
    #[serde(default)]
    pub acme: Option<AcmeCfg>,
}

/// Certificates issued and renewed by an ACME CA (HTTP-01 on a plaintext listener).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AcmeCfg {
    pub directory: String,
    #[serde(default)]
    pub email: Option<String>,
    pub hosts: Vec<String>,
    #[serde(default)]
    pub challenge: AcmeChallenge,
    pub storage: String,
    #[serde(default = "d_renew_before")]
    pub renew_before: super::values::Dur,
    #[serde(default)]
    pub directory_ca: Option<String>,
}

fn d_renew_before() -> super::values::Dur {
    super::values::Dur(std::time::Duration::from_secs(30 * 86_400))
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
pub enum AcmeChallenge {
    #[default]
    #[serde(rename = "http-01")]
    Http01,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertCfg {
    /// PEM chain, leaf first: `file:/path` or the PEM itself.
    pub cert: String,
    /// PEM private key: `file:/path`, `env:NAME` or the PEM itself.
    pub key: String,
    /// Names served with this certificate; default: the DNS names of its SAN.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Served when the SNI matches no certificate (else that handshake fails).
    #[serde(default)]
    pub default: bool,
}
