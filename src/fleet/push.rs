//! `gatehouse config push`: the one way a shared config should reach etcd. It refuses what
//! every node would refuse, so a bad document never gets a revision the fleet has to skip.

use crate::config::{self, ConfigErrors};
use std::path::Path;
use std::time::Duration;

pub struct Push<'a> {
    pub file: &'a Path,
    pub endpoints: &'a [String],
    pub key: &'a str,
    pub expect_revision: Option<i64>,
    /// A node file to check the join with (its `[store]` and listeners, say).
    pub node: Option<&'a Path>,
    pub timeout: Duration,
    /// etcd's authentication: the user, with the password from `GATEHOUSE_ETCD_PASSWORD`.
    pub user: Option<String>,
    /// For `https://` endpoints.
    pub tls: super::etcd::TlsFiles,
}

/// Why a push was refused: the document's errors, or what etcd said.
pub enum Refused {
    Invalid(ConfigErrors),
    Etcd(String),
}

fn read(path: &Path) -> Result<String, Refused> {
    std::fs::read_to_string(path).map_err(|e| {
        Refused::Invalid(ConfigErrors::one(config::ConfigError::new(
            &path.display().to_string(),
            "",
            format!("cannot read file: {e}"),
        )))
    })
}

/// Validates the document as `-t` would and writes it by compare-and-swap; returns the
/// new revision.
pub fn run(p: &Push) -> Result<i64, Refused> {
    let name = p.file.display().to_string();
    let text = read(p.file)?;
    config::source::check_shared(&name, &text, None).map_err(Refused::Invalid)?;
    match p.node {
        Some(node) => {
            let node_name = node.display().to_string();
            let node_text = read(node)?;
            config::source::compose(&node_name, &node_text, &name, &text).map_err(Refused::Invalid)?;
        }
        // Alone, the document has no node tables (no listeners, say): what those would
        // say is each node's to check, the rest of `-t` applies.
        None => {
            if let Err(mut errors) = config::parse_str(&name, &text) {
                errors.0.retain(|e| {
                    let top = e.key.split(['.', '[']).next().unwrap_or("");
                    !config::source::NODE_ONLY.contains(&top)
                });
                if !errors.0.is_empty() {
                    return Err(Refused::Invalid(errors));
                }
            }
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Refused::Etcd(format!("cannot start a runtime: {e}")))?;
    let tls = p.endpoints.iter().any(|e| e.starts_with("https://")).then_some(&p.tls);
    let password = match &p.user {
        Some(_) => Some(
            std::env::var("GATEHOUSE_ETCD_PASSWORD")
                .map_err(|_| Refused::Etcd("--user needs the password in GATEHOUSE_ETCD_PASSWORD".into()))?,
        ),
        None => None,
    };
    let user = p.user.as_deref().zip(password.as_deref());
    rt.block_on(super::etcd::push(
        p.endpoints,
        p.key,
        &text,
        p.expect_revision,
        p.timeout,
        user,
        tls,
    ))
    .map_err(Refused::Etcd)
}
