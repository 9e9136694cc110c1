//! Dropping root after the listening sockets are bound, in the foreground and in daemon
//! mode alike. (Pingora's own `user`/`group` apply only with `-d`, and before binding, so a
//! port below 1024 would fail.)

use std::ffi::CString;
use std::time::Duration;

pub struct DropPrivileges {
    pub user: Option<String>,
    pub group: Option<String>,
    /// Listener addresses: privileges go once every one of them accepts connections.
    pub addrs: Vec<String>,
}

/// (uid, gid) for a user and an optional group; errors name what is missing.
pub fn lookup(user: Option<&str>, group: Option<&str>) -> Result<(Option<u32>, Option<u32>), String> {
    let mut uid = None;
    let mut gid = None;
    if let Some(u) = user {
        let c = CString::new(u).map_err(|_| format!("invalid user name `{u}`"))?;
        // SAFETY: getpwnam returns a pointer to static storage or null; read at once.
        let pw = unsafe { libc::getpwnam(c.as_ptr()) };
        if pw.is_null() {
            return Err(format!("user `{u}` does not exist"));
        }
        unsafe {
            uid = Some((*pw).pw_uid);
            gid = Some((*pw).pw_gid);
        }
    }
    if let Some(g) = group {
        let c = CString::new(g).map_err(|_| format!("invalid group name `{g}`"))?;
        // SAFETY: as above, for getgrnam.
        let gr = unsafe { libc::getgrnam(c.as_ptr()) };
        if gr.is_null() {
            return Err(format!("group `{g}` does not exist"));
        }
        gid = Some(unsafe { (*gr).gr_gid });
    }
    Ok((uid, gid))
}

fn drop_to(uid: Option<u32>, gid: Option<u32>) -> Result<(), String> {
    // glibc applies set*id to every thread of the process.
    unsafe {
        if let Some(g) = gid {
            if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(g) != 0 {
                return Err(format!("setgid({g}): {}", std::io::Error::last_os_error()));
            }
        }
        if let Some(u) = uid {
            if libc::setuid(u) != 0 {
                return Err(format!("setuid({u}): {}", std::io::Error::last_os_error()));
            }
        }
    }
    Ok(())
}

impl DropPrivileges {
    /// Waits until every listener accepts, hands `own` (directories the process writes,
    /// created if missing, with the files in them) to the run user, then drops to it. A
    /// failure exits: staying root is not an option.
    pub async fn run(&self, own: &[String]) {
        let (uid, gid) = match lookup(self.user.as_deref(), self.group.as_deref()) {
            Ok(ids) => ids,
            Err(e) => {
                log::error!("cannot drop privileges: {e}; exiting");
                std::process::exit(1);
            }
        };
        // A readiness check, not a delay: each turn tries to connect.
        for _ in 0..1000 {
            if self.addrs.iter().all(|a| std::net::TcpStream::connect(a).is_ok()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for dir in own {
            if let Err(e) = hand_over(std::path::Path::new(dir), uid, gid) {
                log::error!("cannot give {dir} to the run user: {e}; exiting");
                std::process::exit(1);
            }
        }
        if let Err(e) = drop_to(uid, gid) {
            log::error!("cannot drop privileges: {e}; exiting");
            std::process::exit(1);
        }
        log::info!("running as uid {:?} gid {:?}", uid, gid);
    }
}

/// Creates `dir` if needed and makes it, and the files directly in it, the run user's.
fn hand_over(dir: &std::path::Path, uid: Option<u32>, gid: Option<u32>) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("create: {e}"))?;
    let mut paths = vec![dir.to_path_buf()];
    for entry in std::fs::read_dir(dir).map_err(|e| format!("read: {e}"))?.flatten() {
        paths.push(entry.path());
    }
    for p in paths {
        std::os::unix::fs::chown(&p, uid, gid).map_err(|e| format!("chown {}: {e}", p.display()))?;
    }
    Ok(())
}
