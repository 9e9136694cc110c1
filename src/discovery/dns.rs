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

static RESOLVERS: Mutex<Vec<(Vec<SocketAddr>, bool, TokioResolver)>> = Mutex::new(Vec::new());

fn resolver(servers: &[SocketAddr], ipv4_only: bool) -> Result<TokioResolver, String> {
    let mut cache = RESOLVERS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, _, r)) = cache.iter().find(|(s, v4, _)| s == servers && *v4 == ipv4_only) {
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
    // The names a gateway asks for are few; an expired entry is asked again.
    opts.cache_size = 256;
    let r = TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
        .with_options(opts)
        .build();
    cache.push((servers.to_vec(), ipv4_only, r.clone()));
    Ok(r)
}

/// Drops the resolvers: their connection tasks belong to the runtime that made them, so
/// the first round's (a runtime of its own, before the server starts) must not be reused.
pub fn forget_resolvers() {
    RESOLVERS.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

/// An answer with no records is an answer (the name is gone); anything else is a failure
/// that keeps the last good set.
fn empty(e: &ResolveError) -> bool {
    e.is_no_records_found() || e.is_nx_domain()
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

async fn addresses(r: &TokioResolver, name: &str, port: u16, weight: u32, priority: u16, min_ttl: Duration) -> Result<Answer, String> {
    match r.lookup_ip(fqdn(name)).await {
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
            let r = resolver(&[], false)?;
            addresses(&r, name, *port, *weight, *priority, Duration::from_secs(5)).await
        }
        Query::Table(d) => {
            let r = resolver(&d.resolver_addrs()?, d.ipv4_only)?;
            match d.record {
                RecordKind::A => addresses(&r, &d.name, d.port.unwrap_or(80), 1, 0, d.min_ttl.0).await,
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
            let a = addresses(r, &target, 0, 1, 0, d.min_ttl.0).await?;
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
                weight: u32::from(rec.weight()).clamp(1, 1000),
                priority: rec.priority(),
            });
        }
    }
    Ok(Answer { targets, expires })
}
