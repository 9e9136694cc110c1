//! Secrets written as `env:NAME`, `file:/path` or a literal. Shared by the core (admin
//! token, consumer keys) and plugins (JWT keys, HMAC secrets).

/// Larger than any key or PEM chain a secret holds.
const MAX_FILE: u64 = 1024 * 1024;

/// Resolves a secret at load time, so a missing variable or file is a config error and
/// never an empty credential at run time.
pub fn resolve(source: &str) -> Result<String, String> {
    let value = if let Some(name) = source.strip_prefix("env:") {
        std::env::var(name).map_err(|_| format!("environment variable `{name}` is not set"))?
    } else if let Some(path) = source.strip_prefix("file:") {
        // A FIFO or a device would block the reader (a reload, an admin write) or never
        // end; a secret is a small regular file.
        let meta = std::fs::metadata(path).map_err(|e| format!("cannot read secret file `{path}`: {e}"))?;
        if !meta.is_file() {
            return Err(format!("secret file `{path}` is not a regular file"));
        }
        if meta.len() > MAX_FILE {
            return Err(format!("secret file `{path}` is over {MAX_FILE} bytes"));
        }
        std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read secret file `{path}`: {e}"))?
            .trim_end_matches(['\n', '\r'])
            .to_string()
    } else {
        source.to_string()
    };
    if value.is_empty() {
        return Err("secret is empty".into());
    }
    Ok(value)
}
