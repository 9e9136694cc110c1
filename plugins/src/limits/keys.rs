//! What a limit counts by: `consumer`, `ip`, `route`, `header:NAME`, or several joined with
//! `,` (e.g. "consumer,route"). `consumer` falls back to the client IP for requests that
//! no auth plugin identified.

use crate::util::{err, header_name};
use crate::{PluginCtx, PluginError};
use pingora_http::RequestHeader;
use std::hash::Hasher;

#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Consumer,
    Ip,
    Route,
    Header(http::HeaderName),
}

pub fn parse(key: &str, spec: &str) -> Result<Vec<Part>, PluginError> {
    spec.split(',')
        .map(|p| match p.trim() {
            "consumer" => Ok(Part::Consumer),
            "ip" => Ok(Part::Ip),
            "route" => Ok(Part::Route),
            other => match other.strip_prefix("header:") {
                Some(h) => Ok(Part::Header(header_name(key, h)?)),
                None => Err(err(key, format!("`{other}` is not consumer, ip, route or header:NAME"))),
            },
        })
        .collect()
}

/// FNV-1a, seeded per use: stable across processes (Redis keys must agree in a fleet).
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Where a limit's counters are shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// A route's own limit: its counters are the route's, whatever the key.
    Route,
    /// A plan's limit: one set of counters per key across every route.
    Plan,
}

/// A 64-bit key for this request, built without allocating. The same in every process
/// (Redis keys must agree across a fleet).
pub fn hash(parts: &[Part], req: &RequestHeader, ctx: &PluginCtx, scope: Scope) -> u64 {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    match scope {
        Scope::Route => {
            h.write(b"route:");
            h.write(ctx.route.as_bytes());
        }
        Scope::Plan => h.write(b"plan"),
    }
    for p in parts {
        h.write(&[0xff]);
        match p {
            Part::Consumer => match ctx.consumer_name() {
                Some(c) => {
                    h.write(b"c:");
                    h.write(c.as_bytes());
                }
                None => write_ip(&mut h, ctx),
            },
            Part::Ip => write_ip(&mut h, ctx),
            Part::Route => h.write(ctx.route.as_bytes()),
            Part::Header(n) => {
                for v in req.headers.get_all(n) {
                    h.write(v.as_bytes());
                }
            }
        }
    }
    h.finish()
}

fn write_ip(h: &mut Fnv, ctx: &PluginCtx) {
    h.write(b"i:");
    match ctx.client_ip {
        std::net::IpAddr::V4(v4) => h.write(&v4.octets()),
        std::net::IpAddr::V6(v6) => h.write(&v6.octets()),
    }
}
