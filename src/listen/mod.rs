//! Downstream protection that has to happen before Pingora parses a request, because no
//! `ProxyHttp` hook runs that early: a deadline for the whole request header (slowloris),
//! header size/count and URI limits with the right status (431, 414), strict message
//! framing (request smuggling), and a cap on open connections.
//!
//! The layers wrap Pingora's `HttpProxy`: `Connections` (a `ServerApp`) counts connections
//! and hands each to `HeaderGuard` (an `HttpServerApp`), which reads and checks the header
//! and then gives the bytes it read back to Pingora as a "pipelined prefix".

mod connections;
mod header;
mod reply;

pub use connections::Connections;
pub use header::{HeaderGuard, Limits, MAX_HEADERS_CEILING};
