//! `[config_source] cache`: the last shared config this node applied, so a node started
//! while etcd is down serves what the fleet last agreed on.
//!
//! The file is the shared TOML as it was in etcd, behind one comment line naming the key
//! and revision: an operator can read it, and a cache of another key is never used.

use super::etcd::Revision;
use std::path::Path;

const HEAD: &str = "# gatehouse fleet cache: ";

#[derive(serde::Serialize, serde::Deserialize)]
struct Head {
    key: String,
    revision: i64,
}

pub fn write(path: &Path, key: &str, rev: &Revision) -> Result<(), String> {
    let head = serde_json::to_string(&Head {
        key: key.to_string(),
        revision: rev.revision,
    })
    .map_err(|e| e.to_string())?;
    crate::config::managed::write_atomic(path, &format!("{HEAD}{head}\n{}", rev.text))
        .map_err(|e| format!("cannot write the fleet cache {}: {e}", path.display()))
}

/// The cached revision of `key`; `Ok(None)` when there is no cache file.
pub fn read(path: &Path, key: &str) -> Result<Option<Revision>, String> {
    let name = path.display();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read the fleet cache {name}: {e}")),
    };
    let (first, rest) = text.split_once('\n').unwrap_or((&text, ""));
    let head: Head = first
        .strip_prefix(HEAD)
        .and_then(|h| serde_json::from_str(h).ok())
        .ok_or_else(|| format!("{name} is not a gatehouse fleet cache (its first line is not `{HEAD}{{...}}`)"))?;
    if head.key != key {
        return Err(format!("{name} caches etcd key {}, not {key}", head.key));
    }
    Ok(Some(Revision {
        text: rest.to_string(),
        revision: head.revision,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_reads_back_and_refuses_another_key() {
        let dir = std::env::temp_dir().join(format!("gatehouse-fleet-cache-{}", std::process::id()));
        let path = dir.join("c.toml");
        assert_eq!(read(&path, "/k").unwrap(), None);
        let rev = Revision {
            text: "[routes]\n".into(),
            revision: 42,
        };
        write(&path, "/k", &rev).unwrap();
        assert_eq!(read(&path, "/k").unwrap(), Some(rev));
        assert!(read(&path, "/other").unwrap_err().contains("not /other"));
        std::fs::write(&path, "[routes]\n").unwrap();
        assert!(read(&path, "/k").unwrap_err().contains("not a gatehouse fleet cache"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
