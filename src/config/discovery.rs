//! `discovery` of an upstream: where its targets come from when they are not literal
//! addresses (DNS A/AAAA or SRV records), and the checks that refuse a bad table.

use super::values::Dur;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryCfg {
    #[serde(rename = "type")]
    pub kind: DiscoveryKind,
    /// The name to resolve: a host name for `a`, `_service._proto.name` for `srv`.
    pub name: String,
    /// The targets' port with `record = "a"` (SRV records carry their own).
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub record: RecordKind,
    /// `IP` or `IP:port` of the DNS servers to ask; default: the system's (resolv.conf).
    #[serde(default)]
    pub resolvers: Vec<String>,
    /// Re-resolve no sooner than this, whatever the records' TTL (and after a failure).
    #[serde(default = "d_min_ttl")]
    pub min_ttl: Dur,
    /// Re-resolve at least this often, whatever the records' TTL.
    #[serde(default = "d_max_ttl")]
    pub max_ttl: Dur,
    /// A records only (no AAAA).
    #[serde(default)]
    pub ipv4_only: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DiscoveryKind {
    Dns,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RecordKind {
    /// A and AAAA.
    #[default]
    A,
    Srv,
}

fn d_min_ttl() -> Dur {
    Dur(Duration::from_secs(5))
}
fn d_max_ttl() -> Dur {
    Dur(Duration::from_secs(300))
}

impl DiscoveryCfg {
    /// The resolvers as socket addresses (port 53 when none is given).
    pub fn resolver_addrs(&self) -> Result<Vec<SocketAddr>, String> {
        self.resolvers
            .iter()
            .map(|r| {
                r.parse::<SocketAddr>()
                    .or_else(|_| r.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                    .map_err(|_| format!("`{r}` is not an IP or IP:port"))
            })
            .collect()
    }
}

/// Whether `s` is a DNS name a target may be written as (letters, digits, `-`, `_`, dots).
pub fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.trim_end_matches('.')
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

/// A `host:port` target that is a name rather than an address.
pub fn hostname_target(addr: &str) -> Option<(&str, u16)> {
    if addr.parse::<SocketAddr>().is_ok() {
        return None;
    }
    let (host, port) = addr.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    // `10.0.0.256` is a mistyped address, not a name to look up (no top-level domain is
    // all digits).
    let numeric = host
        .trim_end_matches('.')
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    (is_dns_name(host) && !numeric && host.parse::<std::net::IpAddr>().is_err()).then_some((host, port))
}

pub fn validate(base: &str, d: &DiscoveryCfg, out: &mut Vec<(String, String)>) {
    if !is_dns_name(&d.name) {
        out.push((format!("{base}.name"), format!("`{}` is not a DNS name", d.name)));
    }
    match (d.record, d.port) {
        (RecordKind::A, None) => out.push((format!("{base}.port"), "required with record = \"a\"".into())),
        (RecordKind::A, Some(0)) => out.push((format!("{base}.port"), "must be 1-65535".into())),
        (RecordKind::Srv, Some(_)) => out.push((format!("{base}.port"), "SRV records carry the port: leave it out".into())),
        _ => {}
    }
    if d.record == RecordKind::Srv && !d.name.starts_with('_') {
        out.push((format!("{base}.name"), "an SRV name looks like _service._proto.name".into()));
    }
    if let Err(e) = d.resolver_addrs() {
        out.push((format!("{base}.resolvers"), e));
    }
    if d.min_ttl.0 < Duration::from_millis(100) {
        out.push((format!("{base}.min_ttl"), "must be at least 100ms".into()));
    }
    if d.max_ttl.0 < d.min_ttl.0 {
        out.push((format!("{base}.max_ttl"), "must not be below min_ttl".into()));
    }
}
