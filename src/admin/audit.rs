//! The admin audit log: one JSON line per state-changing call. A config write's record
//! is appended and synced before the managed file is replaced (see `config_api::run`),
//! so an acknowledged change is always on record, and a write that cannot be recorded
//! is not made.

use super::auth::Caller;
use super::Admin;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where records go (`admin.audit_log`, relative to the main file's directory).
pub fn path(admin: &Admin) -> Option<PathBuf> {
    let snap = admin.live.load();
    let p = Path::new(snap.file.admin.as_ref()?.audit_log.as_ref()?);
    Some(if p.is_absolute() {
        p.to_path_buf()
    } else {
        admin.live.path.parent().unwrap_or(Path::new(".")).join(p)
    })
}

/// Appends one record and syncs it. The diff is already redacted. No audit log
/// configured: nothing to do.
pub fn append(target: Option<&Path>, token: &str, method: &str, path: &str, before: &str, after: &str, diff: &str) -> std::io::Result<()> {
    let Some(p) = target else { return Ok(()) };
    let line = serde_json::json!({
        "time": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        "token": token,
        "method": method,
        "path": path,
        "etag_before": format!("\"{before}\""),
        "etag_after": format!("\"{after}\""),
        "diff": diff,
    });
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(p)?;
    let mut bytes = line.to_string().into_bytes();
    bytes.push(b'\n');
    f.write_all(&bytes)?;
    f.sync_data()
}

/// A state-changing call that is not a config write (reload, purge, usage reset): on
/// record too, after the fact; a failure to record is logged (the call has been made).
pub fn record_call(admin: &Admin, caller: &Caller, method: &str, target: &str, before: &str) {
    let after = admin.live.load().hash.clone();
    if let Err(e) = append(path(admin).as_deref(), &caller.name, method, target, before, &after, "") {
        log::error!("admin audit log: cannot record {method} {target}: {e}");
    }
}
