//! What an ACME CA issued, on disk: `cert.pem` (the chain), `key.pem` (0600) and
//! `account.json` (the account's key and URL, with the directory it belongs to). Files are
//! written to a temporary name and renamed, so a crash mid-write leaves the old ones.

use crate::config::{AcmeCfg, CertCfg};
use crate::tls::LoadedCert;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The name the certificate goes by in /status, metrics and logs.
pub const CERT_NAME: &str = "acme";

pub fn write(dir: &Path, name: &str, text: &str, mode: u32) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(name)).map_err(|e| format!("{}: {e}", dir.join(name).display()))
}

/// Checks a chain and key as any configured certificate is checked, and that it names every
/// configured host.
pub fn certificate(cfg: &AcmeCfg, chain: &str, key: &str) -> Result<LoadedCert, String> {
    let c = CertCfg {
        cert: chain.to_string(),
        key: key.to_string(),
        hosts: Vec::new(),
        default: false,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut cert = LoadedCert::load(CERT_NAME, &c, now).map_err(|(field, reason)| format!("{field}: {reason}"))?;
    let missing: Vec<&String> = cfg
        .hosts
        .iter()
        .filter(|h| !cert.hosts.iter().any(|x| x.eq_ignore_ascii_case(h)))
        .collect();
    if !missing.is_empty() {
        return Err(format!("it does not name {missing:?}"));
    }
    cert.hosts = cfg.hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
    cert.source = "acme";
    Ok(cert)
}

/// The stored certificate, if there is a usable one. `Err`: one is there and unusable (why).
pub fn load(cfg: &AcmeCfg) -> Result<Option<LoadedCert>, String> {
    let dir = Path::new(&cfg.storage);
    let (chain, key) = match (
        std::fs::read_to_string(dir.join("cert.pem")),
        std::fs::read_to_string(dir.join("key.pem")),
    ) {
        (Ok(c), Ok(k)) => (c, k),
        (Err(e), _) | (_, Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        (Err(e), _) | (_, Err(e)) => return Err(format!("{}: {e}", dir.display())),
    };
    certificate(cfg, &chain, &key).map(Some)
}
