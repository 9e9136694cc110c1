//! The etcd calls fleet mode makes: read the key, watch it, and write it by compare-and-swap.

use crate::config::source::ConfigSourceCfg;
use etcd_client::{Certificate, Client, Compare, CompareOp, ConnectOptions, Identity, TlsOptions, Txn, TxnOp};
use std::time::Duration;

/// One revision of the shared document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    pub text: String,
    /// The key's `mod_revision`: what `/status` shows and `--expect-revision` compares.
    pub revision: i64,
}

/// What a read of the key found, and the store's revision at the time of the read (a
/// watch resumes after it). A value that is not text is refused with its revision, not
/// taken for an outage.
pub struct Read {
    pub value: Option<Result<Revision, (i64, String)>>,
    pub header_revision: i64,
}

/// An etcd error with its causes: tonic's transport error says only "transport error"
/// until its sources are followed.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// PEM files for TLS to etcd.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
}

impl TlsFiles {
    fn of(cfg: &ConfigSourceCfg) -> Option<TlsFiles> {
        cfg.endpoints.iter().any(|e| e.starts_with("https://")).then(|| TlsFiles {
            ca: cfg.tls_ca.clone(),
            cert: cfg.tls_cert.clone(),
            key: cfg.tls_key.clone(),
        })
    }
}

fn read_pem(what: &str, path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the etcd {what} {path}: {e}"))
}

/// That a PEM file holds what its key says, so a wrong path is refused at load.
pub fn check_pem(what: &str, path: &str) -> Result<(), String> {
    let pem = read_pem(what, path)?;
    let (ok, kind) = match what {
        "tls_key" => (openssl::pkey::PKey::private_key_from_pem(&pem).map(|_| ()), "private key"),
        _ => (openssl::x509::X509::from_pem(&pem).map(|_| ()), "certificate"),
    };
    ok.map_err(|e| format!("{path} is not a PEM {kind}: {e}"))
}

fn tls_config(tls: &TlsFiles) -> Result<TlsOptions, String> {
    let ca = tls
        .ca
        .as_ref()
        .ok_or("TLS to etcd needs the CA that signed etcd's certificate (tls_ca, or --cacert)")?;
    let mut c = TlsOptions::new().ca_certificate(Certificate::from_pem(read_pem("tls_ca", ca)?));
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        c = c.identity(Identity::from_pem(read_pem("tls_cert", cert)?, read_pem("tls_key", key)?));
    }
    Ok(c)
}

fn options(timeout: Duration, user: Option<(&str, &str)>, tls: Option<&TlsFiles>) -> Result<ConnectOptions, String> {
    // The keep-alive pings find a partition that leaves the watch stream open but dead.
    let mut o = ConnectOptions::new()
        .with_connect_timeout(timeout)
        .with_timeout(timeout)
        .with_keep_alive(Duration::from_secs(10), timeout)
        .with_keep_alive_while_idle(true)
        // A member cut off from the quorum refuses instead of serving a watch that never fires.
        .with_require_leader(true);
    if let Some((u, p)) = user {
        o = o.with_user(u, p);
    }
    if let Some(t) = tls {
        o = o.with_tls(tls_config(t)?);
    }
    Ok(o)
}

pub async fn connect(cfg: &ConfigSourceCfg) -> Result<Client, String> {
    let user = cfg
        .username
        .as_ref()
        .zip(cfg.password.as_ref())
        .map(|(u, p)| (u.value.as_str(), p.value.as_str()));
    connect_to(&cfg.endpoints, cfg.timeout.0, user, TlsFiles::of(cfg).as_ref()).await
}

async fn connect_to(endpoints: &[String], timeout: Duration, user: Option<(&str, &str)>, tls: Option<&TlsFiles>) -> Result<Client, String> {
    let joined = endpoints.join(", ");
    let opts = options(timeout, user, tls)?;
    match tokio::time::timeout(timeout, Client::connect(endpoints, Some(opts))).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!("cannot reach etcd at {joined}: {}", chain(&e))),
        Err(_) => Err(format!("cannot reach etcd at {joined}: no answer within {timeout:?}")),
    }
}

pub async fn read(client: &mut Client, key: &str) -> Result<Read, String> {
    let resp = client
        .get(key, None)
        .await
        .map_err(|e| format!("cannot read etcd key {key}: {}", chain(&e)))?;
    let header_revision = resp.header().map(|h| h.revision()).unwrap_or(0);
    let value = resp
        .kvs()
        .first()
        .map(|kv| revision_of(key, kv).map_err(|e| (kv.mod_revision(), e)));
    Ok(Read { value, header_revision })
}

/// The text of one key-value, which must be UTF-8 (it is TOML).
pub fn revision_of(key: &str, kv: &etcd_client::KeyValue) -> Result<Revision, String> {
    let text = kv
        .value_str()
        .map_err(|e| format!("etcd key {key} at revision {} is not UTF-8 text: {e}", kv.mod_revision()))?;
    Ok(Revision {
        text: text.to_string(),
        revision: kv.mod_revision(),
    })
}

/// Reads the key once: for a start, before anything serves.
pub async fn fetch(cfg: &ConfigSourceCfg) -> Result<Option<Result<Revision, (i64, String)>>, String> {
    let mut client = connect(cfg).await?;
    let joined = cfg.endpoints.join(", ");
    match tokio::time::timeout(cfg.timeout.0, read(&mut client, &cfg.key)).await {
        Ok(r) => Ok(r.map_err(|e| format!("cannot reach etcd at {joined}: {e}"))?.value),
        Err(_) => Err(format!("cannot reach etcd at {joined}: no answer within {:?}", cfg.timeout.0)),
    }
}

/// Writes `text` to `key` only if the key is still at the revision read here (0: absent)
/// and, when given, at `expect`. Returns the new revision.
pub async fn push(
    endpoints: &[String],
    key: &str,
    text: &str,
    expect: Option<i64>,
    timeout: Duration,
    user: Option<(&str, &str)>,
    tls: Option<&TlsFiles>,
) -> Result<i64, String> {
    let mut client = connect_to(endpoints, timeout, user, tls).await?;
    let current = read(&mut client, key).await?;
    let at = match &current.value {
        None => 0,
        Some(Ok(v)) => v.revision,
        Some(Err((rev, _))) => *rev,
    };
    if let Some(want) = expect {
        if want != at {
            return Err(format!(
                "{key} is at revision {at}, not {want} (--expect-revision): someone pushed since; read it again"
            ));
        }
    }
    if current.value.as_ref().is_some_and(|v| v.as_ref().is_ok_and(|v| v.text == text)) {
        return Err(format!("{key} already holds this config at revision {at}: nothing pushed"));
    }
    // The mod_revision of an absent key compares as 0.
    let txn = Txn::new()
        .when([Compare::mod_revision(key, CompareOp::Equal, at)])
        .and_then([TxnOp::put(key, text, None)]);
    let resp = client
        .txn(txn)
        .await
        .map_err(|e| format!("cannot write etcd key {key}: {}", chain(&e)))?;
    if !resp.succeeded() {
        return Err(format!(
            "{key} changed while pushing (it was at revision {at}): nothing pushed; try again"
        ));
    }
    Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
}
