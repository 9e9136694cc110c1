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
mod connections;
mod framed;
mod header;
mod linger;
mod reply;

pub use check::{check, valid_authority, Limits, Refusal, Verdict, MAX_HEADERS_CEILING};
pub use chunked::{Chunked, FramingError};
pub use connections::Connections;
pub use framed::{is_framing_error, After, Body};
pub use header::HeaderGuard;
