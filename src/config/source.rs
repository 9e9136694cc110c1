//! `[config_source]`: fleet mode, where the shared part of the config (routes, upstreams,
//! consumers, ...) comes from one etcd key that every node watches, and the node's own file
//! keeps what belongs to one machine.
//!
//! The two documents are joined table by table: a top-level table is either the node's or
//! the shared document's, never both, so no node can quietly override the fleet and the
//! shared document cannot reach a node's listeners, admin tokens or store.

use super::values::Dur;
use super::{ConfigError, ConfigErrors, File};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Tables that belong to one machine: refused in the shared document.
///
/// `metering` is among them although the issue lists it as shared: its spool directory and
/// file sinks are paths on the node (a shared document could make every node create
/// directories or append to files of its choosing), and it needs an upgrade to change
/// anyway. A route's own `metering` table stays shared.
pub const NODE_ONLY: [&str; 8] = ["server", "listeners", "admin", "log", "store", "cache", "config_source", "metering"];

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigSourceCfg {
    #[serde(rename = "type")]
    pub kind: SourceKind,
    /// `http://host:port` of the etcd members; the client balances over them.
    pub endpoints: Vec<String>,
    /// The key holding the shared TOML text.
    pub key: String,
    /// The last shared config this node applied, for a start while etcd is down.
    #[serde(default)]
    pub cache: Option<String>,
    /// Connecting and each request to etcd give up after this.
    #[serde(default = "d_timeout")]
    pub timeout: Dur,
    /// The longest wait between reconnection attempts (they start at 200 ms and double).
    #[serde(default = "d_max_backoff")]
    pub max_backoff: Dur,
    /// etcd user and password (etcd's own authentication), as `env:`/`file:` secrets.
    #[serde(default)]
    pub username: Option<super::values::Secret>,
    #[serde(default)]
    pub password: Option<super::values::Secret>,
    /// PEM files for `https://` endpoints: the CA that signed etcd's certificate (required), and this node's client certificate and key for etcd's
    /// `--client-cert-auth`. Read at each connection, so rotated files are picked up.
    #[serde(default)]
    pub tls_ca: Option<String>,
    /// The `env:`/`file:` references the shared document may use on this node: exact, or
    /// a prefix ending in `*` (`"env:SHARED_*"`, `"file:/etc/gatehouse/shared/*"`).
    #[serde(default)]
    pub shared_secrets: Vec<String>,
    #[serde(default)]
    pub tls_cert: Option<String>,
    #[serde(default)]
    pub tls_key: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Etcd,
}

fn d_timeout() -> Dur {
    Dur(Duration::from_secs(2))
}
fn d_max_backoff() -> Dur {
    Dur(Duration::from_secs(5))
}

pub(super) fn validate(f: &File, out: &mut Vec<(String, String)>) {
    let Some(c) = &f.config_source else { return };
    check(c, out);
    if f.admin.as_ref().is_some_and(|a| a.managed.is_some()) {
        out.push((
            "admin.managed".into(),
            "cannot be used with config_source: the shared config changes through etcd (`gatehouse config push`)".into(),
        ));
    }
}

fn check(c: &ConfigSourceCfg, out: &mut Vec<(String, String)>) {
    if c.endpoints.is_empty() {
        out.push(("config_source.endpoints".into(), "name at least one etcd endpoint".into()));
    }
    let mut schemes = Vec::new();
    for (i, e) in c.endpoints.iter().enumerate() {
        let key = format!("config_source.endpoints[{i}]");
        match e.parse::<http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some() && u.path() == "/" => {
                schemes.push(u.scheme_str() == Some("https"));
            }
            _ => out.push((key, format!("`{e}` is not an http://host:port or https://host:port address"))),
        }
    }
    if schemes.contains(&true) && schemes.contains(&false) {
        out.push((
            "config_source.endpoints".into(),
            "mixes http:// and https://: one plaintext member would expose what TLS protects".into(),
        ));
    }
    let tls_set = c.tls_ca.is_some() || c.tls_cert.is_some() || c.tls_key.is_some();
    if tls_set && !schemes.contains(&true) {
        out.push(("config_source.tls_ca".into(), "TLS settings need https:// endpoints".into()));
    }
    if schemes.contains(&true) && c.tls_ca.is_none() {
        out.push((
            "config_source.tls_ca".into(),
            "https:// endpoints need the CA that signed etcd's certificate (a PEM file)".into(),
        ));
    }
    if c.tls_cert.is_some() != c.tls_key.is_some() {
        out.push(("config_source.tls_key".into(), "tls_cert and tls_key go together".into()));
    }
    for (name, path) in [("tls_ca", &c.tls_ca), ("tls_cert", &c.tls_cert), ("tls_key", &c.tls_key)] {
        if let Some(p) = path {
            if let Err(e) = crate::fleet::etcd::check_pem(name, p) {
                out.push((format!("config_source.{name}"), e));
            }
        }
    }
    if c.key.is_empty() {
        out.push(("config_source.key".into(), "must not be empty".into()));
    }
    if c.timeout.0.is_zero() {
        out.push(("config_source.timeout".into(), "must be more than 0".into()));
    }
    if c.max_backoff.0 < Duration::from_millis(200) {
        out.push(("config_source.max_backoff".into(), "must be at least 200ms".into()));
    }
    if c.username.is_some() != c.password.is_some() {
        out.push(("config_source.password".into(), "username and password go together".into()));
    }
    if let Some(p) = &c.cache {
        if !p.starts_with('/') {
            out.push(("config_source.cache".into(), format!("`{p}` must be an absolute path")));
        }
    }
}

/// The node text's `[config_source]`, read before the whole file is: it says where the
/// rest of the config comes from. `None` when the file has none (or is not TOML, which the
/// full parse then reports with its line).
pub fn of_node(node_name: &str, node_text: &str) -> Result<Option<ConfigSourceCfg>, ConfigErrors> {
    let Ok(mut table) = node_text.parse::<toml::Table>() else {
        return Ok(None);
    };
    let Some(v) = table.remove("config_source") else {
        return Ok(None);
    };
    let cfg = serde_path_to_error::deserialize(v).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." {
            "config_source".to_string()
        } else {
            format!("config_source.{key}")
        };
        ConfigErrors::one(ConfigError::new(node_name, &key, e.into_inner().message().to_string()))
    })?;
    let mut out = Vec::new();
    check(&cfg, &mut out);
    if out.is_empty() {
        Ok(Some(cfg))
    } else {
        Err(ConfigErrors(
            out.into_iter().map(|(k, r)| ConfigError::new(node_name, &k, r)).collect(),
        ))
    }
}

/// The shared document's own problems, each against its own name and lines: not TOML, a
/// node-only table, a value of the wrong type.
///
/// `allowed` is the node's `shared_secrets`: an `env:` or `file:` reference outside it is
/// refused before anything resolves it, so whoever writes the key cannot make a node send
/// its own secrets (its admin token, its etcd password) to a tracing or metering endpoint.
/// `None` (a push without a node file) leaves them unchecked.
pub fn check_shared(shared_name: &str, shared_text: &str, allowed: Option<&[String]>) -> Result<toml::Table, ConfigErrors> {
    let table: toml::Table = match shared_text.parse() {
        Ok(t) => t,
        Err(e) => {
            // The deserializer names the line; it stops at the syntax, before any secret.
            super::deserialize(shared_name, shared_text)?;
            let e: toml::de::Error = e;
            return Err(ConfigErrors::one(ConfigError::new(shared_name, "", e.message().to_string())));
        }
    };
    if table.is_empty() {
        return Err(ConfigErrors::one(ConfigError::new(
            shared_name,
            "",
            "the shared config is empty: a fleet with no routes is never taken from an empty key (delete nothing, push a config)",
        )));
    }
    let mut errors: Vec<ConfigError> = table
        .keys()
        .filter(|k| NODE_ONLY.contains(&k.as_str()))
        .map(|k| {
            ConfigError::new(
                shared_name,
                k,
                "belongs to one node: keep it in the node's own file, not the shared config",
            )
        })
        .collect();
    // ACME writes its account and certificates where `storage` says: a node's path.
    if table.get("tls").and_then(|t| t.get("acme")).is_some() {
        errors.push(ConfigError::new(
            shared_name,
            "tls.acme",
            "belongs to one node (it writes to the node's disk): keep it in the node's own file",
        ));
    }
    if let Some(allowed) = allowed {
        for (key, reference) in secret_refs(&table) {
            if !allowed_ref(&reference, allowed) {
                errors.push(ConfigError::new(
                    shared_name,
                    &key,
                    format!(
                        "`{reference}` reads this node's environment or files: list it in the node's config_source.shared_secrets to allow it"
                    ),
                ));
            }
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    super::deserialize(shared_name, shared_text)?;
    Ok(table)
}

/// Every `env:`/`file:` string in the document, with its key path.
fn secret_refs(table: &toml::Table) -> Vec<(String, String)> {
    fn walk(v: &toml::Value, path: String, out: &mut Vec<(String, String)>) {
        match v {
            toml::Value::String(s) if s.starts_with("env:") || s.starts_with("file:") => out.push((path, s.clone())),
            toml::Value::Table(t) => {
                for (k, v) in t {
                    walk(v, format!("{path}.{k}"), out);
                }
            }
            toml::Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    walk(v, format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (k, v) in table {
        walk(v, k.clone(), &mut out);
    }
    out
}

/// Exact, or a prefix ending in `*`; a path that climbs (`..`) never matches.
fn allowed_ref(reference: &str, allowed: &[String]) -> bool {
    if reference.starts_with("file:") && reference.split('/').any(|c| c == "..") {
        return false;
    }
    allowed.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => reference.starts_with(prefix),
        None => reference == p,
    })
}

/// Joins the node file and the shared document into the text a load parses, and parses
/// and validates it. Each error names the document its top-level table came from.
pub fn compose(node_name: &str, node_text: &str, shared_name: &str, shared_text: &str) -> Result<(File, String), ConfigErrors> {
    super::deserialize(node_name, node_text)?;
    let allowed = of_node(node_name, node_text)?.map(|c| c.shared_secrets).unwrap_or_default();
    let shared = check_shared(shared_name, shared_text, Some(&allowed))?;
    let mut node: toml::Table = node_text
        .parse()
        .map_err(|e: toml::de::Error| ConfigErrors::one(ConfigError::new(node_name, "", e.message().to_string())))?;
    let both: Vec<ConfigError> = shared
        .keys()
        .filter(|k| node.contains_key(k.as_str()))
        .map(|k| {
            ConfigError::new(
                node_name,
                k,
                format!("is also in the shared config ({shared_name}): a table belongs to one of them"),
            )
        })
        .collect();
    if !both.is_empty() {
        return Err(ConfigErrors(both));
    }
    let shared_keys: Vec<String> = shared.keys().cloned().collect();
    node.extend(shared);
    let text = toml::to_string(&node)
        .map_err(|e| ConfigErrors::one(ConfigError::new(node_name, "", format!("cannot render the joined config: {e}"))))?;
    super::parse_str(node_name, &text).map(|file| (file, text)).map_err(|mut errors| {
        name_shared(&mut errors, &shared_keys, shared_name);
        errors
    })
}

fn name_shared(errors: &mut ConfigErrors, shared_keys: &[String], shared_name: &str) {
    for e in &mut errors.0 {
        let top = e.key.split(['.', '[']).next().unwrap_or("");
        if shared_keys.iter().any(|k| k == top) {
            e.file = shared_name.to_string();
        }
    }
}

/// Names the shared document in errors (from a later build, say) about its tables.
pub fn attribute(errors: &mut ConfigErrors, shared_text: &str, shared_name: &str) {
    let keys: Vec<String> = shared_text
        .parse::<toml::Table>()
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default();
    name_shared(errors, &keys, shared_name);
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "[listeners.main]\naddr = \"127.0.0.1:1\"\n[config_source]\ntype = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\nkey = \"/k\"\n";

    #[test]
    fn secret_references_match_exactly_or_by_prefix_and_never_climb() {
        let allowed = vec![
            "env:FLEET_*".to_string(),
            "file:/etc/gatehouse/shared/*".to_string(),
            "env:ONE".to_string(),
        ];
        assert!(allowed_ref("env:FLEET_KEY", &allowed));
        assert!(allowed_ref("env:ONE", &allowed));
        assert!(!allowed_ref("env:ONE_MORE", &allowed));
        assert!(!allowed_ref("env:GATEHOUSE_ADMIN_TOKEN", &allowed));
        assert!(allowed_ref("file:/etc/gatehouse/shared/k", &allowed));
        assert!(!allowed_ref("file:/etc/gatehouse/shared/../admin-token", &allowed));
        let t: toml::Table = "a = [\"env:X\", \"lit\"]\n[b.c]\nd = \"file:/f\"\n".parse().unwrap();
        assert_eq!(
            secret_refs(&t),
            vec![
                ("a[0]".to_string(), "env:X".to_string()),
                ("b.c.d".to_string(), "file:/f".to_string())
            ]
        );
    }

    #[test]
    fn an_empty_document_metering_and_acme_are_refused_in_the_shared_config() {
        for (doc, key) in [
            ("# nothing\n", ""),
            ("[metering]\nspool_dir = \"/tmp/x\"\n", "metering"),
            ("[tls.acme]\nstorage = \"/tmp/x\"\n", "tls.acme"),
        ] {
            let err = check_shared("etcd:/k@1", doc, Some(&[])).unwrap_err();
            assert_eq!(err.0[0].key, key, "{doc}: {err}");
        }
    }

    #[test]
    fn shared_tables_join_the_node_ones() {
        let shared = "[upstreams.u]\ntargets = [\"127.0.0.1:2\"]\n[routes.r]\npaths = [\"/\"]\nupstream = \"u\"\n";
        let (file, _) = compose("node.toml", NODE, "etcd:/k@3", shared).unwrap();
        assert!(file.routes.contains_key("r"));
        assert!(file.listeners.contains_key("main"));
    }

    #[test]
    fn node_tables_and_overlaps_are_refused_with_their_document() {
        let err = compose("node.toml", NODE, "etcd:/k@3", "[server]\nthreads = 2\n").unwrap_err();
        assert_eq!((err.0[0].file.as_str(), err.0[0].key.as_str()), ("etcd:/k@3", "server"));
        let node = format!("{NODE}[upstreams.x]\ntargets = [\"127.0.0.1:3\"]\n");
        let err = compose("node.toml", &node, "etcd:/k@3", "[upstreams.u]\ntargets = [\"127.0.0.1:2\"]\n").unwrap_err();
        assert_eq!((err.0[0].file.as_str(), err.0[0].key.as_str()), ("node.toml", "upstreams"));
    }

    #[test]
    fn a_broken_reference_in_the_shared_document_names_it() {
        let err = compose(
            "node.toml",
            NODE,
            "etcd:/k@3",
            "[routes.r]\npaths = [\"/\"]\nupstream = \"missing\"\n",
        )
        .unwrap_err();
        assert_eq!(err.0[0].file, "etcd:/k@3");
        assert_eq!(err.0[0].key, "routes.r.upstream");
        let err = compose("node.toml", NODE, "etcd:/k@3", "[routes.r]\npaths = 7\n").unwrap_err();
        assert_eq!(err.0[0].file, "etcd:/k@3");
        assert!(err.0[0].reason.contains("line 2"), "{}", err.0[0].reason);
    }
}
