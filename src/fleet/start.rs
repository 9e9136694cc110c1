//! The config a fleet node starts with: the key's revision from etcd, or the cached one
//! when etcd is down or its revision is refused.

use super::etcd::{self, Revision};
use super::status::{self, applied, connected, refused, update, FleetStatus};
use super::{cache, shared_name, FleetText};
use crate::config::source::ConfigSourceCfg;
use crate::config::{self, File};
use std::path::Path;

pub struct Started {
    pub file: File,
    pub text: String,
    pub fleet: FleetText,
    /// Read from etcd now (not the cache): cached once the node has built it.
    pub from_etcd: bool,
    /// Why the node starts from its cache, for the log once it is set up.
    pub warning: Option<String>,
}

/// Reads the shared document (or, with etcd down or the document refused, the cache) and
/// joins it to the node file. An error says why the node cannot start. Writes nothing:
/// the caller caches the revision once it has built it ([`save_cache`]).
pub fn start(node_name: &str, node_text: &str, cfg: &ConfigSourceCfg) -> Result<Started, String> {
    *status::status_mut() = Some(FleetStatus {
        key: cfg.key.clone(),
        endpoints: cfg.endpoints.clone(),
        ..Default::default()
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("config_source: cannot start a runtime to read etcd: {e}"))?;
    let fetched = rt.block_on(etcd::fetch(cfg));
    drop(rt);
    let why = match fetched {
        Ok(Some(Ok(rev))) => {
            connected(true, None);
            match compose(node_name, node_text, cfg, &rev) {
                Ok((file, text)) => {
                    applied(rev.revision, "etcd");
                    return Ok(started(file, text, node_text, rev, true));
                }
                Err(errors) => {
                    refused(rev.revision, errors.0.iter().map(|e| e.to_string()).collect());
                    format!("revision {} of etcd key {} is refused:\n{errors}", rev.revision, cfg.key)
                }
            }
        }
        Ok(Some(Err((rev, e)))) => {
            connected(true, None);
            refused(rev, vec![e.clone()]);
            e
        }
        Ok(None) => {
            connected(true, None);
            format!(
                "etcd key {} does not exist: push the shared config first (gatehouse config push)",
                cfg.key
            )
        }
        Err(e) => {
            connected(false, Some(e.clone()));
            e
        }
    };
    from_cache(node_name, node_text, cfg, &why)
}

/// The cached revision joined to the node file, when etcd's cannot serve; `why` says what
/// was wrong with etcd's.
pub fn from_cache(node_name: &str, node_text: &str, cfg: &ConfigSourceCfg, why: &str) -> Result<Started, String> {
    let Some(path) = &cfg.cache else {
        return Err(format!(
            "{why}\nconfig_source.cache is not set, so there is no last good config to start from"
        ));
    };
    let cached = match cache::read(Path::new(path), &cfg.key) {
        Ok(Some(rev)) => rev,
        Ok(None) => return Err(format!("{why}\nno last good config is cached at {path} (config_source.cache)")),
        Err(e) => return Err(format!("{why}\n{e}")),
    };
    match compose(node_name, node_text, cfg, &cached) {
        Ok((file, text)) => {
            let warning = format!("config_source: {why}; serving revision {} from the cache {path}", cached.revision);
            applied(cached.revision, "cache");
            let mut s = started(file, text, node_text, cached, false);
            s.warning = Some(warning);
            Ok(s)
        }
        Err(errors) => Err(format!(
            "{why}\nthe cached revision {} in {path} is refused too:\n{errors}",
            cached.revision
        )),
    }
}

fn compose(node_name: &str, node_text: &str, cfg: &ConfigSourceCfg, rev: &Revision) -> Result<(File, String), config::ConfigErrors> {
    config::source::compose(node_name, node_text, &shared_name(&cfg.key, rev.revision), &rev.text)
}

fn started(file: File, text: String, node_text: &str, shared: Revision, from_etcd: bool) -> Started {
    Started {
        file,
        text,
        fleet: FleetText {
            node_text: node_text.to_string(),
            shared,
            refused: None,
        },
        from_etcd,
        warning: None,
    }
}

/// Keeps `rev` as the last good shared config; a failure shows in `/status`.
pub fn save_cache(cfg: &ConfigSourceCfg, rev: &Revision) {
    let Some(path) = &cfg.cache else { return };
    let result = cache::write(Path::new(path), &cfg.key, rev);
    if let Err(e) = &result {
        log::error!("config_source: {e}");
    }
    update(|s| s.cache_error = result.err());
}
