//! Fleet mode: every node watches one etcd key holding the shared config, and applies each
//! new revision through the same build as a hot reload.
//!
//! A revision that does not validate is refused on the node (the old config keeps
//! serving, `/status` and a metric name the refused revision); etcd unreachable keeps the
//! last good config and reconnects with backoff; a start with etcd down serves the last
//! good revision cached on disk, or refuses to start.

pub mod cache;
pub mod etcd;
pub mod push;
mod start;
mod status;
mod watch;

pub use start::{from_cache, save_cache, start, Started};
pub use status::{applied, refused, status, FleetStatus};
pub use watch::FleetService;

use etcd::Revision;

/// The two halves of a fleet node's config as last applied, and the newest revision
/// this node refused (tried again after a reload: the node file may have been the cause).
#[derive(Debug, Clone)]
pub struct FleetText {
    pub node_text: String,
    pub shared: Revision,
    pub refused: Option<Revision>,
}

/// How the shared document is named in errors and logs.
pub fn shared_name(key: &str, revision: i64) -> String {
    format!("etcd:{key}@{revision}")
}
