//! Everything before Pingora parses a request, because no `ProxyHttp` hook runs that early:
//! a deadline for a connection's first byte and for each whole request header (slowloris),
//! header size/count and URI limits with the right status (431, 414), strict message
//! framing and request targets (request smuggling), pipelined requests kept in order, a
//! lingering close after early answers, and caps on open connections (per process and per
//! client address).
//!
//! The layers wrap Pingora's `HttpProxy` (and the admin app): `Connections` (a `ServerApp`)
//! counts connections and hands each to `HeaderGuard`, which reads and checks each header,
//! then gives the bytes it read back to Pingora as a "pipelined prefix", over a `Framed`
//! stream that ends each request where its framing says.

mod check;
mod chunked;
mod coalesce;
mod connections;
mod entry;
mod framed;
mod header;
mod io;
mod linger;
mod proxy_protocol;
mod reply;
mod tunnel;

pub use check::{check, valid_authority, Limits, Refusal, Verdict, MAX_HEADERS_CEILING};
pub use chunked::{Chunked, FramingError};
pub use connections::Connections;
pub use entry::{ListenerRt, Listeners};
pub use framed::{is_framing_error, After, Body};
pub use header::HeaderGuard;
pub use tunnel::{arm as arm_websocket, upgraded as websocket_upgraded};

/// HTTP/2 settings for downstream connections: Pingora's bounded defaults (64 KiB header
/// list, 100 concurrent streams), the header list also held to `max_header_size`, and the
/// h2 crate's rapid-reset and reset-storm budgets kept tight (CVE-2023-44487). CONTINUATION
/// floods are bounded by the header list size (h2 >= 0.4.4 counts CONTINUATION frames
/// against it).
pub fn h2_options(s: &crate::config::Server) -> pingora_core::protocols::http::v2::server::H2Options {
    let mut o = pingora_core::protocols::http::v2::server::default_h2_options();
    o.max_header_list_size((s.max_header_size.0 as u32).min(64 * 1024));
    o.max_concurrent_streams(100);
    o.max_pending_accept_reset_streams(20);
    o.max_local_error_reset_streams(Some(256));
    o
}
