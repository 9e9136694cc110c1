//! Gatehouse: an API gateway on Pingora. The binary is `src/main.rs`; this library is what
//! it runs, and what the tests reach into.

pub mod access_log;
pub mod acme;
pub mod admin;
pub mod alerts;
pub mod alloc_count;
pub mod cache;
pub mod config;
pub mod discovery;
pub mod fleet;
pub mod listen;
pub mod live;
pub mod logging;
pub mod metering;
pub mod metrics;
pub mod path;
pub mod privileges;
pub mod proxy;
pub mod router;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod tls;
pub mod trace;
pub mod upstream;
