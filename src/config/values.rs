//! Value types that appear across the file: durations, sizes, secrets, CIDRs.
//! Each deserializes from the human form and fails with a reason serde attaches to the key.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// A humantime duration such as "30s" or "1m 30s".
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Dur(pub Duration);

impl fmt::Debug for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        gatehouse_plugins::util::parse_duration(&s)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// A byte size: an integer, or a string such as "32KiB", "10MiB", "1GB".
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize)]
pub struct Size(pub u64);

impl Size {
    pub fn parse(s: &str) -> Result<Size, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit() && c != '_').unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .replace('_', "")
            .parse()
            .map_err(|_| format!("invalid size `{s}` (use e.g. \"32KiB\", \"10MiB\")"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" | "k" => 1 << 10,
            "MiB" | "M" => 1 << 20,
            "GiB" | "G" => 1 << 30,
            "KB" | "kB" => 1000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => return Err(format!("unknown size unit `{other}` in `{s}` (B, KiB, MiB, GiB, KB, MB, GB)")),
        };
        n.checked_mul(mult).map(Size).ok_or_else(|| format!("size `{s}` is too large"))
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Size(n)),
            Raw::S(s) => Size::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// A secret given as `env:NAME`, `file:/path` or a literal. Resolved at load, so a missing
/// variable is a config error rather than an empty token at run time.
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Secret {
    /// The text as written, kept for change detection on reload; never logged.
    pub source: String,
    #[serde(skip)]
    pub value: String,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Secret({})",
            if self.source.starts_with("env:") || self.source.starts_with("file:") {
                &self.source
            } else {
                "<literal>"
            }
        )
    }
}

impl Secret {
    pub fn resolve(source: &str) -> Result<Secret, String> {
        Ok(Secret {
            source: source.to_string(),
            value: gatehouse_plugins::secret::resolve(source)?,
        })
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Secret::resolve(&s).map_err(serde::de::Error::custom)
    }
}

/// An IPv4 or IPv6 network; a bare address means a single host.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Cidr(pub ipnet::IpNet);

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        if let Ok(net) = s.parse::<ipnet::IpNet>() {
            return Ok(Cidr(net.trunc()));
        }
        s.parse::<std::net::IpAddr>()
            .map(|ip| Cidr(ipnet::IpNet::from(ip)))
            .map_err(|_| format!("invalid CIDR or IP address `{s}`"))
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Cidr::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(Size::parse("32KiB").unwrap().0, 32 * 1024);
        assert_eq!(Size::parse("10MiB").unwrap().0, 10 << 20);
        assert_eq!(Size::parse("1_000").unwrap().0, 1000);
        assert!(Size::parse("10 parsecs").is_err());
    }

    #[test]
    fn cidrs() {
        assert!(Cidr::parse("10.0.0.0/8")
            .unwrap()
            .0
            .contains(&"10.1.2.3".parse::<std::net::IpAddr>().unwrap()));
        assert!(Cidr::parse("2001:db8::/32").is_ok());
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("127.0.0.1")
            .unwrap()
            .0
            .contains(&"127.0.0.1".parse::<std::net::IpAddr>().unwrap()));
    }

    #[test]
    fn secrets() {
        std::env::set_var("GATEHOUSE_TEST_SECRET_X", "s3cret");
        assert_eq!(Secret::resolve("env:GATEHOUSE_TEST_SECRET_X").unwrap().value, "s3cret");
        assert!(Secret::resolve("env:GATEHOUSE_SURELY_UNSET_VAR").is_err());
        assert_eq!(Secret::resolve("literal").unwrap().value, "literal");
    }
}
