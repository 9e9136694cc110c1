//! Asking DNS with hickory-resolver: A/AAAA and SRV, with the records' TTL.
//!
//! A resolver is built per distinct resolver list and kept, so its cache and connections
//! live across rounds. Its own cache is bounded by the TTLs we are given, and the round
//! that follows a record's expiry asks the server again.

use crate::config::discovery::{DiscoveryCfg, RecordKind};
use crate::config::TargetSpec;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, TokioResolver};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One question an upstream asks.
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    /// The upstream's `discovery` table.
    Table(DiscoveryCfg),
    /// A `host:port` target, resolved with the system's resolvers.
    Host {
        name: String,
        port: u16,
        weight: u32,
        priority: u16,
    },
}

/// What the servers said: the targets (empty when the name has no records), and when
/// the answer expires.
pub struct Answer {
    pub targets: Vec<TargetSpec>,
    pub expires: Instant,
}

/// What a resolver is built for: its servers, A only, and the TTL bounds its cache keeps.
#[derive(PartialEq)]
struct Key {
    servers: Vec<SocketAddr>,
    ipv4_only: bool,
    min_ttl: Duration,
    max_ttl: Duration,
}

static RESOLVERS: Mutex<Vec<(Key, TokioResolver)>> = Mutex::new(Vec::new());

/// The TTL bounds of `host:port` targets.
pub const HOST_TTL: (Duration, Duration) = (Duration::from_secs(5), Duration::from_secs(300));

fn resolver(servers: &[SocketAddr], ipv4_only: bool, min_ttl: Duration, max_ttl: Duration) -> Result<TokioResolver, String> {
    let key = Key {
        servers: servers.to_vec(),
        ipv4_only,
        min_ttl,
        max_ttl,
    };
    let mut cache = RESOLVERS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, r)) = cache.iter().find(|(k, _)| *k == key) {
        return Ok(r.clone());
    }
    let (config, mut opts) = if servers.is_empty() {
        hickory_resolver::system_conf::read_system_conf().map_err(|e| format!("cannot read the system's resolver config: {e}"))?
    } else {
        let mut c = ResolverConfig::new();
        for s in servers {
            c.add_name_server(NameServerConfig::new(*s, Protocol::Udp));
            c.add_name_server(NameServerConfig::new(*s, Protocol::Tcp));
        }
        (c, ResolverOpts::default())
    };
    opts.ip_strategy = if ipv4_only {
        LookupIpStrategy::Ipv4Only
    } else {
        LookupIpStrategy::Ipv4AndIpv6
    };
    // A dead server is noticed within seconds (the last good set serves meanwhile).
    opts.timeout = Duration::from_secs(1);
    opts.attempts = 1;
    // The names a gateway asks for are few. The cache keeps an answer no longer than
    // max_ttl (a day-long TTL must not outlive max_ttl) and a "no such name" no longer
    // than min_ttl (a name that comes back is seen at the next round).
    opts.cache_size = 256;
    opts.positive_max_ttl = Some(max_ttl);
    opts.negative_max_ttl = Some(min_ttl);
    let r = TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
        .with_options(opts)
        .build();
    cache.push((key, r.clone()));
    Ok(r)
}

/// Drops the resolvers: their connection tasks belong to the runtime that made them, so
/// the first round's (a runtime of its own, before the server starts) must not be reused.
pub fn forget_resolvers() {
    RESOLVERS.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

/// An answer with no records is an answer (the name is gone: NXDOMAIN, or NOERROR with no
/// data); anything else, SERVFAIL and REFUSED included (which hickory also reports as "no
/// records"), is a failure that keeps the last good set.
fn empty(e: &ResolveError) -> bool {
    use hickory_resolver::proto::op::ResponseCode;
    use hickory_resolver::proto::ProtoErrorKind;
    match e.proto().map(|p| p.kind()) {
        Some(ProtoErrorKind::NoRecordsFound { response_code, .. }) => {
            matches!(response_code, ResponseCode::NXDomain | ResponseCode::NoError)
        }
        _ => false,
    }
}

/// A name from a `discovery` table is absolute (no search domains).
fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

/// `query` as asked (absolute, or a `host:port` target's name with the system's search
/// domains, as `svc:80` needs); `name` for messages.
async fn addresses(
    r: &TokioResolver,
    query: String,
    name: &str,
    port: u16,
    weight: u32,
    priority: u16,
    min_ttl: Duration,
) -> Result<Answer, String> {
    match r.lookup_ip(query).await {
        Ok(l) => Ok(Answer {
            targets: l
                .iter()
                .map(|ip| TargetSpec::Weighted {
                    addr: SocketAddr::new(ip, port).to_string(),
                    weight,
                    priority,
                })
                .collect(),
            expires: l.valid_until(),
        }),
        Err(e) if empty(&e) => Ok(Answer {
            targets: Vec::new(),
            expires: Instant::now() + min_ttl,
        }),
        Err(e) => Err(format!("{name}: {e}")),
    }
}

pub async fn ask(q: &Query) -> Result<Answer, String> {
    match q {
        Query::Host {
            name,
            port,
            weight,
            priority,
        } => {
            let (lo, hi) = HOST_TTL;
            let r = resolver(&[], false, lo, hi)?;
            addresses(&r, name.clone(), name, *port, *weight, *priority, lo).await
        }
        Query::Table(d) => {
            let r = resolver(&d.resolver_addrs()?, d.ipv4_only, d.min_ttl.0, d.max_ttl.0)?;
            match d.record {
                RecordKind::A => addresses(&r, fqdn(&d.name), &d.name, d.port.unwrap_or(80), 1, 0, d.min_ttl.0).await,
                RecordKind::Srv => srv(&r, d).await,
            }
        }
    }
}

/// RFC 2782: each record's target resolved to its addresses, with the record's priority
/// and weight (0 is the smallest share, not none); a target of "." means the service is
/// not offered there.
async fn srv(r: &TokioResolver, d: &DiscoveryCfg) -> Result<Answer, String> {
    let l = match r.srv_lookup(fqdn(&d.name)).await {
        Ok(l) => l,
        Err(e) if empty(&e) => {
            return Ok(Answer {
                targets: Vec::new(),
                expires: Instant::now() + d.min_ttl.0,
            })
        }
        Err(e) => return Err(format!("{}: {e}", d.name)),
    };
    let mut expires = l.as_lookup().valid_until();
    let mut targets = Vec::new();
    let mut resolved: HashMap<String, Vec<std::net::IpAddr>> = HashMap::new();
    for rec in l.iter() {
        let target = rec.target().to_ascii();
        if target == "." || rec.port() == 0 {
            continue;
        }
        if !resolved.contains_key(&target) {
            let a = addresses(r, fqdn(&target), &target, 0, 1, 0, d.min_ttl.0).await?;
            expires = expires.min(a.expires);
            let ips = a
                .targets
                .iter()
                .filter_map(|t| t.addr().parse::<SocketAddr>().ok())
                .map(|s| s.ip())
                .collect();
            resolved.insert(target.clone(), ips);
        }
        for ip in resolved.get(&target).into_iter().flatten() {
            targets.push(TargetSpec::Weighted {
                addr: SocketAddr::new(*ip, rec.port()).to_string(),
                weight: u32::from(rec.weight()),
                priority: rec.priority(),
            });
        }
    }
    scale_weights(&mut targets);
    Ok(Answer { targets, expires })
}

/// SRV weights (0-65535) into the balancer's 1-1000, keeping their ratios within each
/// priority: scaled down only where a priority's largest weight is over 1000; 0 becomes 1
/// (the smallest share, as RFC 2782 gives it).
fn scale_weights(targets: &mut [TargetSpec]) {
    let mut max: HashMap<u16, u32> = HashMap::new();
    for t in targets.iter() {
        let m = max.entry(t.priority()).or_insert(0);
        *m = (*m).max(t.weight());
    }
    for t in targets.iter_mut() {
        if let TargetSpec::Weighted { weight, priority, .. } = t {
            let m = max.get(priority).copied().unwrap_or(1);
            let w = if m > 1000 {
                (u64::from(*weight) * 1000 / u64::from(m)) as u32
            } else {
                *weight
            };
            *weight = w.clamp(1, 1000);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srv_weights_keep_their_ratios() {
        let t = |w: u32, p: u16| TargetSpec::Weighted {
            addr: format!("10.0.0.{w}:80"),
            weight: w,
            priority: p,
        };
        let mut v = vec![t(5000, 10), t(1000, 10), t(0, 10), t(3, 20)];
        scale_weights(&mut v);
        let w: Vec<u32> = v.iter().map(|x| x.weight()).collect();
        assert_eq!(w, vec![1000, 200, 1, 3]);
    }
}
