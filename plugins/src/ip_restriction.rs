//! `ip_restriction`: allow or deny CIDRs (IPv4 and IPv6) on the client address, which the
//! core derives from X-Forwarded-For only for trusted proxies: a spoofed header from
//! anyone else changes nothing here.

use crate::util::err;
use crate::{Answer, Flow, Plugin, PluginCtx, PluginError, Priority};
use ipnet::IpNet;
use pingora_http::RequestHeader;
use serde::Deserialize;
use std::net::IpAddr;

pub const NAME: &str = "ip_restriction";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
}

pub struct IpRestriction {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

fn nets(key: &str, list: &[String]) -> Result<Vec<IpNet>, PluginError> {
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse::<IpNet>()
                .map(|n| n.trunc())
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| err(&format!("{key}[{i}]"), format!("invalid CIDR or IP address `{s}`")))
        })
        .collect()
}

impl IpRestriction {
    pub fn from_config(c: Config) -> Result<Self, PluginError> {
        if c.allow.is_empty() == c.deny.is_empty() {
            return Err(err("", "set exactly one of `allow` or `deny`"));
        }
        Ok(IpRestriction {
            allow: nets("allow", &c.allow)?,
            deny: nets("deny", &c.deny)?,
        })
    }

    fn permits(&self, ip: IpAddr) -> bool {
        // An IPv4-mapped IPv6 address is the IPv4 client it carries.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        if !self.allow.is_empty() {
            self.allow.iter().any(|n| n.contains(&ip))
        } else {
            !self.deny.iter().any(|n| n.contains(&ip))
        }
    }
}

impl Plugin for IpRestriction {
    fn name(&self) -> &'static str {
        NAME
    }

    fn priority(&self) -> Priority {
        Priority::IP_RULES
    }

    fn request(&self, _req: &mut RequestHeader, ctx: &mut PluginCtx) -> Flow {
        if self.permits(ctx.client_ip) {
            Flow::Continue
        } else {
            ctx.rejection = Some("ip_restriction");
            Flow::Respond(Answer::error(403, "forbidden by IP rules"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_and_v6() {
        let p = IpRestriction::from_config(Config {
            allow: vec!["203.0.113.0/24".into(), "2001:db8::/32".into()],
            deny: vec![],
        })
        .unwrap();
        assert!(p.permits("203.0.113.9".parse().unwrap()));
        assert!(p.permits("::ffff:203.0.113.9".parse().unwrap()));
        assert!(p.permits("2001:db8::1".parse().unwrap()));
        assert!(!p.permits("198.51.100.1".parse().unwrap()));
    }
}
