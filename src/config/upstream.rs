//! `[upstreams.NAME]`: targets, balancing, timeouts, the circuit breaker and active
//! health checks.

use super::values::Dur;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum TargetSpec {
    Addr(String),
    Weighted {
        addr: String,
        #[serde(default = "d_weight")]
        weight: u32,
        /// Lower serves first: a higher one is used only while no target of a lower one
        /// can take the request (backups; SRV priorities).
        #[serde(default)]
        priority: u16,
    },
}

fn d_weight() -> u32 {
    1
}

impl TargetSpec {
    pub fn addr(&self) -> &str {
        match self {
            TargetSpec::Addr(a) | TargetSpec::Weighted { addr: a, .. } => a,
        }
    }
    pub fn weight(&self) -> u32 {
        match self {
            TargetSpec::Addr(_) => 1,
            TargetSpec::Weighted { weight, .. } => *weight,
        }
    }
    pub fn priority(&self) -> u16 {
        match self {
            TargetSpec::Addr(_) => 0,
            TargetSpec::Weighted { priority, .. } => *priority,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    Random,
    ConsistentHash,
    LeastRequests,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// `IP:port` or `host:port` (resolved like `discovery` with `record = "a"`).
    #[serde(default)]
    pub targets: Vec<TargetSpec>,
    /// Targets from DNS records instead of (or besides) the listed ones.
    #[serde(default)]
    pub discovery: Option<super::discovery::DiscoveryCfg>,
    #[serde(default)]
    pub balance: Balance,
    /// `ip`, `path`, `header:NAME` or `cookie:NAME`; checked in validate.
    #[serde(default)]
    pub hash_on: Option<String>,
    #[serde(default = "d_connect")]
    pub connect_timeout: Dur,
    #[serde(default = "d_rw")]
    pub read_timeout: Dur,
    #[serde(default = "d_rw")]
    pub write_timeout: Dur,
    #[serde(default = "d_idle")]
    pub idle_timeout: Dur,
    #[serde(default = "d_retries")]
    pub retries: u32,
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// TLS to the targets.
    #[serde(default)]
    pub tls: bool,
    /// The name sent as SNI and verified in the targets' certificates.
    #[serde(default)]
    pub sni: Option<String>,
    /// Verify the targets' certificates (default true with `tls`).
    #[serde(default)]
    pub verify: Option<bool>,
    /// CA certificates (`file:` or PEM) to verify the targets with, instead of the system's.
    #[serde(default)]
    pub ca: Option<String>,
    /// A client certificate (PEM chain) and key for mTLS to the targets.
    #[serde(default)]
    pub client_cert: Option<String>,
    #[serde(default)]
    pub client_key: Option<String>,
    /// HTTP/2 to the targets: ALPN h2 with TLS, prior knowledge (h2c) without.
    #[serde(default)]
    pub http2: bool,
    /// Concurrent streams per HTTP/2 upstream connection.
    #[serde(default = "d_max_streams")]
    pub max_streams: usize,
    /// `aws_lambda`: a function, invoked through the Lambda API instead of proxied to.
    #[serde(default, rename = "type")]
    pub kind: super::function::UpstreamKind,
    /// The function's name or ARN.
    #[serde(default)]
    pub function: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    /// `http(s)://host[:port]`; default: the region's Lambda endpoint.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub access_key: Option<super::values::Secret>,
    #[serde(default)]
    pub secret_key: Option<super::values::Secret>,
    /// For temporary credentials.
    #[serde(default)]
    pub session_token: Option<super::values::Secret>,
    /// A version or alias.
    #[serde(default)]
    pub qualifier: Option<String>,
    #[serde(default)]
    pub payload: Option<super::function::Payload>,
}

fn d_max_streams() -> usize {
    100
}

impl Upstream {
    pub fn verify(&self) -> bool {
        self.verify.unwrap_or(true)
    }
}

/// Passive outlier detection per target.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    /// 5xx answers, connect errors and timeouts in a row that eject a target.
    #[serde(default = "d_cb_failures")]
    pub consecutive_failures: u32,
    #[serde(default = "d_cb_base")]
    pub base_ejection: Dur,
    #[serde(default = "d_cb_max")]
    pub max_ejection: Dur,
    #[serde(default = "d_cb_percent")]
    pub max_ejected_percent: u32,
    /// Requests in flight per target; past it the target is skipped (0: no cap).
    #[serde(default)]
    pub max_in_flight: usize,
}

fn d_cb_failures() -> u32 {
    5
}
fn d_cb_base() -> Dur {
    Dur(Duration::from_secs(30))
}
fn d_cb_max() -> Dur {
    Dur(Duration::from_secs(300))
}
fn d_cb_percent() -> u32 {
    50
}

fn d_connect() -> Dur {
    Dur(Duration::from_secs(1))
}
fn d_rw() -> Dur {
    Dur(Duration::from_secs(30))
}
fn d_idle() -> Dur {
    Dur(Duration::from_secs(60))
}
fn d_retries() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    #[default]
    Http,
    Tcp,
    /// `grpc.health.v1.Health/Check`: SERVING is healthy.
    Grpc,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(default, rename = "type")]
    pub kind: CheckKind,
    #[serde(default = "d_hc_path")]
    pub path: String,
    #[serde(default = "d_hc_interval")]
    pub interval: Dur,
    #[serde(default = "d_hc_timeout")]
    pub timeout: Dur,
    #[serde(default = "d_two")]
    pub healthy_after: u32,
    #[serde(default = "d_two")]
    pub unhealthy_after: u32,
    #[serde(default = "d_expect")]
    pub expect_status: Vec<u16>,
    /// Host header for HTTP checks; default: the target address.
    #[serde(default)]
    pub host: Option<String>,
    /// The service a gRPC check asks about; default: the server as a whole ("").
    #[serde(default)]
    pub service: Option<String>,
}

fn d_hc_path() -> String {
    "/".into()
}
fn d_hc_interval() -> Dur {
    Dur(Duration::from_secs(2))
}
fn d_hc_timeout() -> Dur {
    Dur(Duration::from_secs(1))
}
fn d_two() -> u32 {
    2
}
fn d_expect() -> Vec<u16> {
    vec![200]
}
