//! The admin audit log: one JSON line per config write, appended and synced before the
//! write is answered, so an acknowledged change is on record.

use super::auth::Caller;
use super::Admin;
use std::io::Write;
use std::path::{Path, PathBuf};

fn path(admin: &Admin) -> Option<PathBuf> {
    let snap = admin.live.load();
    let p = Path::new(snap.file.admin.as_ref()?.audit_log.as_ref()?);
    Some(if p.is_absolute() {
        p.to_path_buf()
    } else {
        admin.live.path.parent().unwrap_or(Path::new(".")).join(p)
    })
}

/// Appends the record. The diff is already redacted; a failure to write is logged (the
/// change itself is applied and persisted by then).
pub fn record(admin: &Admin, caller: &Caller, method: &str, target: &str, before: &str, after: &str, diff: &str) {
    let Some(p) = path(admin) else { return };
    let line = serde_json::json!({
        "time": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        "token": caller.name,
        "method": method,
        "path": target,
        "etag_before": format!("\"{before}\""),
        "etag_after": format!("\"{after}\""),
        "diff": diff,
    });
    let result = (|| {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&p)?;
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        f.write_all(&bytes)?;
        f.sync_data()
    })();
    if let Err(e) = result {
        log::error!(
            "admin audit log {}: cannot append the record of {method} {target}: {e}",
            p.display()
        );
    }
}
