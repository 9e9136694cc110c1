//! Certificates made in the test (rcgen: a CA, leaves it signs, any validity window) and an
//! HTTPS client over a real socket (OpenSSL, the library curl uses here), which reports the
//! certificate the server chose.

use super::client::{read_response, Response};
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A test CA that signs leaf certificates.
pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pub pem: String,
}

/// A certificate and key written as PEM files.
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { params, key, pem }
    }

    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, &self.pem).unwrap();
        p
    }

    /// A leaf for `names` (SAN), CN the first name, valid from `days_from` to `days_to`
    /// days from now (negative: in the past), written to `dir/file.{crt,key}`.
    pub fn leaf(&self, dir: &Path, file: &str, names: &[&str], days_from: i64, days_to: i64) -> Leaf {
        let mut params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
        let now = time_now();
        params.not_before = now + time::Duration::days(days_from);
        params.not_after = now + time::Duration::days(days_to);
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert_pem = params.signed_by(&key, &issuer).unwrap().pem();
        let key_pem = key.serialize_pem();
        let (cert, keyp) = (dir.join(format!("{file}.crt")), dir.join(format!("{file}.key")));
        std::fs::write(&cert, &cert_pem).unwrap();
        std::fs::write(&keyp, &key_pem).unwrap();
        Leaf {
            cert,
            key: keyp,
            cert_pem,
            key_pem,
        }
    }

    /// A client certificate, subject `CN=cn,O=org` (RFC 4514 order), signed by this CA.
    pub fn client(&self, dir: &Path, file: &str, cn: &str, org: &str) -> Leaf {
        // X.509 order O, then CN: RFC 4514 writes it `CN=...,O=...`.
        self.client_named(dir, file, &[(DnType::OrganizationName, org), (DnType::CommonName, cn)])
    }

    /// A client certificate whose subject has exactly these RDNs, in X.509 order.
    pub fn client_named(&self, dir: &Path, file: &str, rdns: &[(DnType, &str)]) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (t, v) in rdns {
            params.distinguished_name.push(t.clone(), *v);
        }
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert_pem = params.signed_by(&key, &issuer).unwrap().pem();
        let key_pem = key.serialize_pem();
        let (cert, keyp) = (dir.join(format!("{file}.crt")), dir.join(format!("{file}.key")));
        std::fs::write(&cert, &cert_pem).unwrap();
        std::fs::write(&keyp, &key_pem).unwrap();
        Leaf {
            cert,
            key: keyp,
            cert_pem,
            key_pem,
        }
    }
}

impl Ca {
    /// A client certificate with an `openssl -subj` subject, multi-valued RDNs allowed
    /// (`/CN=a+O=b`: rcgen writes one attribute per RDN), signed by this CA with the openssl CLI.
    pub fn client_multivalued(&self, dir: &Path, file: &str, subj: &str) -> Leaf {
        let (ca_cert, ca_key) = (dir.join(format!("{file}-ca.crt")), dir.join(format!("{file}-ca.key")));
        std::fs::write(&ca_cert, &self.pem).unwrap();
        std::fs::write(&ca_key, self.key.serialize_pem()).unwrap();
        let (cert, key, csr) = (
            dir.join(format!("{file}.crt")),
            dir.join(format!("{file}.key")),
            dir.join(format!("{file}.csr")),
        );
        let run = |args: &[&std::ffi::OsStr]| {
            let out = std::process::Command::new("openssl").args(args).output().expect("openssl runs");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let os = |s: &'static str| std::ffi::OsStr::new(s);
        run(&[
            os("req"),
            os("-new"),
            os("-newkey"),
            os("ec"),
            os("-pkeyopt"),
            os("ec_paramgen_curve:prime256v1"),
            os("-nodes"),
            os("-multivalue-rdn"),
            os("-subj"),
            std::ffi::OsStr::new(subj),
            os("-keyout"),
            key.as_os_str(),
            os("-out"),
            csr.as_os_str(),
        ]);
        run(&[
            os("x509"),
            os("-req"),
            os("-in"),
            csr.as_os_str(),
            os("-CA"),
            ca_cert.as_os_str(),
            os("-CAkey"),
            ca_key.as_os_str(),
            os("-set_serial"),
            os("7"),
            os("-days"),
            os("30"),
            os("-out"),
            cert.as_os_str(),
        ]);
        Leaf {
            cert_pem: std::fs::read_to_string(&cert).unwrap(),
            key_pem: std::fs::read_to_string(&key).unwrap(),
            cert,
            key,
        }
    }
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// How a test connects.
#[derive(Clone, Default)]
pub struct Hello<'a> {
    pub sni: Option<&'a str>,
    /// Trust this CA (PEM); without one, verification is off.
    pub ca: Option<&'a str>,
    pub max_version: Option<SslVersion>,
    pub client: Option<&'a Leaf>,
    pub alpn: Option<&'a [u8]>,
}

impl<'a> Hello<'a> {
    /// A client hello naming `name`, verification off.
    pub fn sni(name: &'a str) -> Hello<'a> {
        Hello {
            sni: Some(name),
            ..Default::default()
        }
    }
}

/// What the handshake gave: the server's leaf (CN, serial) and the TLS stream.
pub struct Tls {
    pub stream: openssl::ssl::SslStream<TcpStream>,
    pub cn: String,
    pub serial: String,
    pub version: String,
}

/// The SHA-256 fingerprint of a PEM certificate, as `client_cert_fingerprint` takes it.
pub fn fingerprint(pem: &str) -> String {
    let c = openssl::x509::X509::from_pem(pem.as_bytes()).unwrap();
    let d = c.digest(openssl::hash::MessageDigest::sha256()).unwrap();
    format!("sha256:{}", d.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

pub fn connect(addr: &str, h: &Hello<'_>) -> Result<Tls, String> {
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    connect_over(tcp, h)
}

/// The handshake on a connection the test opened itself (after a PROXY header, say).
pub fn connect_over(tcp: TcpStream, h: &Hello<'_>) -> Result<Tls, String> {
    let mut b = SslConnector::builder(SslMethod::tls()).map_err(|e| e.to_string())?;
    match h.ca {
        Some(pem) => {
            let store = b.cert_store_mut();
            for c in openssl::x509::X509::stack_from_pem(pem.as_bytes()).map_err(|e| e.to_string())? {
                store.add_cert(c).map_err(|e| e.to_string())?;
            }
        }
        None => b.set_verify(SslVerifyMode::NONE),
    }
    if let Some(v) = h.max_version {
        b.set_min_proto_version(Some(v)).map_err(|e| e.to_string())?;
        b.set_max_proto_version(Some(v)).map_err(|e| e.to_string())?;
    }
    if let Some(c) = h.client {
        b.set_certificate_chain_file(&c.cert).map_err(|e| e.to_string())?;
        b.set_private_key_file(&c.key, openssl::ssl::SslFiletype::PEM)
            .map_err(|e| e.to_string())?;
    }
    if let Some(a) = h.alpn {
        b.set_alpn_protos(a).map_err(|e| e.to_string())?;
    }
    let conn = b.build();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut cfg = conn.configure().map_err(|e| e.to_string())?;
    if h.ca.is_none() {
        cfg.set_verify_hostname(false);
    }
    let cfg = match h.sni {
        Some(_) => cfg,
        None => {
            cfg.set_use_server_name_indication(false);
            cfg
        }
    };
    let stream = cfg.connect(h.sni.unwrap_or("no-sni.invalid"), tcp).map_err(|e| e.to_string())?;
    let peer = stream.ssl().peer_certificate().ok_or("no server certificate")?;
    let cn = peer
        .subject_name()
        .entries_by_nid(openssl::nid::Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok())
        .unwrap_or_default();
    let serial = peer
        .serial_number()
        .to_bn()
        .ok()
        .and_then(|b| b.to_hex_str().ok().map(|s| s.to_string()))
        .unwrap_or_default();
    let version = stream.ssl().version_str().to_string();
    Ok(Tls {
        stream,
        cn,
        serial,
        version,
    })
}

/// One HTTPS/1.1 request on a new connection: (the server's certificate CN, the response).
pub fn get(addr: &str, h: &Hello<'_>, path: &str, headers: &[(&str, &str)]) -> Result<(Tls, Response), String> {
    let mut t = connect(addr, h)?;
    let host = h.sni.unwrap_or("test.local");
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    t.stream.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let r = read_response(&mut t.stream).map_err(|e| e.to_string())?;
    Ok((t, r))
}
