//! The managed file: what the admin API wrote, merged over the main file at every load.
//!
//! It holds only the tables the API edits (`routes`, `upstreams`, `consumers`, `plugins`)
//! and a `[deleted]` table naming main-file entries the API removed. An entry in it
//! replaces the main file's entry of the same name whole, so what the API returned for
//! an entry is exactly what serves. Everything else stays the main file's, which keeps a
//! node's listeners and secrets out of reach of a config write.

use super::{ConfigError, ConfigErrors};
use std::path::{Path, PathBuf};

/// The tables an API write may change.
pub const SECTIONS: [&str; 4] = ["routes", "upstreams", "consumers", "plugins"];

/// The config text a load parses: the main file, or the main file with the managed one
/// merged over it.
pub struct Effective {
    pub text: String,
    /// The managed file named by `admin.managed`, resolved.
    pub managed: Option<PathBuf>,
}

/// `admin.managed` of the main text, relative to the main file's directory.
pub fn managed_path(main_path: &Path, main: &toml::Table) -> Option<PathBuf> {
    let rel = main.get("admin")?.get("managed")?.as_str()?;
    let p = Path::new(rel);
    Some(if p.is_absolute() {
        p.to_path_buf()
    } else {
        main_path.parent().unwrap_or(Path::new(".")).join(p)
    })
}

/// Reads the managed file the main text names, if any, and merges it.
pub fn effective(main_path: &Path, main_text: &str) -> Result<Effective, ConfigErrors> {
    // A main file that is not TOML is reported by the parse that follows, with its line.
    let Ok(main) = main_text.parse::<toml::Table>() else {
        return Ok(Effective {
            text: main_text.to_string(),
            managed: None,
        });
    };
    let Some(path) = managed_path(main_path, &main) else {
        return Ok(Effective {
            text: main_text.to_string(),
            managed: None,
        });
    };
    let managed_text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(ConfigErrors::one(ConfigError::new(
                &path.display().to_string(),
                "",
                format!("cannot read the managed file (admin.managed): {e}"),
            )))
        }
    };
    let text = merged_text(main_text, main, &path, &managed_text)?;
    Ok(Effective { text, managed: Some(path) })
}

/// The main text with `managed_text` merged over it; the main text itself when the
/// managed one is empty, so error lines still point into the main file.
pub fn merged_text(main_text: &str, mut main: toml::Table, path: &Path, managed_text: &str) -> Result<String, ConfigErrors> {
    let name = path.display().to_string();
    let managed: toml::Table = managed_text
        .parse()
        .map_err(|e: toml::de::Error| ConfigErrors::one(ConfigError::new(&name, "", e.message().to_string())))?;
    if managed.is_empty() {
        return Ok(main_text.to_string());
    }
    merge(&mut main, managed).map_err(|(key, reason)| ConfigErrors::one(ConfigError::new(&name, &key, reason)))?;
    toml::to_string(&main).map_err(|e| ConfigErrors::one(ConfigError::new(&name, "", format!("cannot render the merged config: {e}"))))
}

/// Applies the managed tables to the main ones.
pub fn merge(main: &mut toml::Table, managed: toml::Table) -> Result<(), (String, String)> {
    for (section, value) in managed {
        if section == "deleted" {
            let toml::Value::Table(deleted) = value else {
                return Err(("deleted".into(), "must be a table of name lists".into()));
            };
            for (s, names) in deleted {
                let key = format!("deleted.{s}");
                if !SECTIONS.contains(&s.as_str()) {
                    return Err((key, format!("not one of {}", SECTIONS.join(", "))));
                }
                let toml::Value::Array(names) = names else {
                    return Err((key, "must be a list of names".into()));
                };
                for n in names {
                    let n = n.as_str().ok_or_else(|| (key.clone(), "must be a list of names".to_string()))?;
                    if let Some(toml::Value::Table(t)) = main.get_mut(&s) {
                        t.remove(n);
                    }
                }
            }
            continue;
        }
        if !SECTIONS.contains(&section.as_str()) {
            return Err((section, format!("the managed file holds only {} and deleted", SECTIONS.join(", "))));
        }
        let toml::Value::Table(entries) = value else {
            return Err((section, "must be a table".into()));
        };
        let target = main
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(target) = target.as_table_mut() else {
            return Err((section, "is not a table in the main file".into()));
        };
        for (name, entry) in entries {
            target.insert(name, entry);
        }
    }
    Ok(())
}

/// Writes `text` so a crash leaves the old file or the new one, never a mix: a temporary
/// file in the same directory, fsynced, renamed over, and the directory fsynced.
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("managed"),
        std::process::id()
    ));
    // Owner-only: the managed file and the fleet cache can hold consumers' keys.
    // A new file (a leftover is removed first), never followed through a symlink.
    let _ = std::fs::remove_file(&tmp);
    let mut f = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?
    };
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managed_entries_replace_and_delete_main_ones() {
        let main = "[routes.a]\npaths = [\"/a\"]\nupstream = \"u\"\n[routes.b]\npaths = [\"/b\"]\n[server]\nthreads = 1\n";
        let managed = "[routes.a]\npaths = [\"/new\"]\n[deleted]\nroutes = [\"b\"]\n";
        let text = merged_text(main, main.parse().unwrap(), Path::new("m.toml"), managed).unwrap();
        let t: toml::Table = text.parse().unwrap();
        assert_eq!(t["routes"]["a"]["paths"][0].as_str(), Some("/new"));
        assert!(t["routes"]["a"].get("upstream").is_none(), "an entry is replaced whole");
        assert!(t["routes"].get("b").is_none());
        assert_eq!(t["server"]["threads"].as_integer(), Some(1));
    }

    #[test]
    fn the_managed_file_cannot_touch_node_tables() {
        let err = merged_text("", toml::Table::new(), Path::new("m.toml"), "[server]\nthreads = 9\n").unwrap_err();
        assert_eq!(err.0[0].key, "server");
        let err = merged_text("", toml::Table::new(), Path::new("m.toml"), "[deleted]\nlisteners = [\"x\"]\n").unwrap_err();
        assert_eq!(err.0[0].key, "deleted.listeners");
    }
}
