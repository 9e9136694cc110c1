//! The file as written by users. `deny_unknown_fields` everywhere: a typo is an error, not
//! a silently ignored setting. `PartialEq` lets a reload tell what changed.

pub use super::admin::{Admin, AdminToken, Role};
pub use super::observability::{LogFormat, OtlpProtocol, TracingCfg};
pub use super::tls::{AcmeCfg, AcmeChallenge, CertCfg, ClientCertMode, Listener, Tls, TlsVersion};
pub use super::upstream::*;
use super::values::{Cidr, Dur, Secret, Size};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub listeners: BTreeMap<String, Listener>,
    #[serde(default)]
    pub tls: Tls,
    #[serde(default)]
    pub admin: Option<Admin>,
    #[serde(default)]
    pub log: Log,
    #[serde(default)]
    pub tracing: Option<TracingCfg>,
    #[serde(default)]
    pub alerts: Option<super::AlertsCfg>,
    #[serde(default)]
    pub metering: Option<super::MeteringCfg>,
    #[serde(default)]
    pub metrics: MetricsCfg,
    #[serde(default)]
    pub store: Option<StoreCfg>,
    #[serde(default)]
    pub cache: Option<crate::cache::CacheCfg>,
    #[serde(default)]
    pub plans: BTreeMap<String, gatehouse_plugins::limits::plans::PlanCfg>,
    #[serde(default)]
    pub consumers: BTreeMap<String, ConsumerCfg>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, Upstream>,
    #[serde(default)]
    pub routes: BTreeMap<String, Route>,
    /// Global plugins: applied to every route unless the route configures the same plugin.
    #[serde(default)]
    pub plugins: BTreeMap<String, toml::Value>,
    /// Fleet mode: the shared tables come from etcd.
    #[serde(default)]
    pub config_source: Option<super::source::ConfigSourceCfg>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Server {
    #[serde(default = "d_threads")]
    pub threads: usize,
    /// Pingora's work stealing between a service's threads (`scripts/bench` rows GT2 and
    /// GWS measure it).
    #[serde(default = "d_true")]
    pub work_stealing: bool,
    #[serde(default = "d_pid")]
    pub pid_file: String,
    #[serde(default = "d_sock")]
    pub upgrade_sock: String,
    #[serde(default = "d_grace")]
    pub grace_period: Dur,
    /// How long a draining process waits for in-flight requests after the grace period.
    #[serde(default = "d_shutdown")]
    pub graceful_shutdown_timeout: Dur,
    #[serde(default)]
    pub trusted_proxies: Vec<Cidr>,
    #[serde(default = "d_header_timeout")]
    pub header_timeout: Dur,
    #[serde(default = "d_max_header_size")]
    pub max_header_size: Size,
    #[serde(default = "d_max_headers")]
    pub max_headers: usize,
    #[serde(default = "d_max_uri")]
    pub max_uri: Size,
    #[serde(default = "d_max_body")]
    pub max_body: Size,
    #[serde(default = "d_max_connections")]
    pub max_connections: usize,
    /// Per-connection read buffer in front of each client socket. Pingora's default is
    /// 64KiB, which is most of what an idle keep-alive connection costs.
    #[serde(default = "d_read_buffer")]
    pub read_buffer: Size,
    #[serde(default = "d_keepalive")]
    pub keepalive_timeout: Dur,
    /// A write to a client that makes no progress for this long ends the request (a client
    /// that stops reading, or an h2 stream whose window stays shut, would otherwise hold its
    /// connection and an upstream connection for ever). nginx's `send_timeout`.
    #[serde(default = "d_send_timeout")]
    pub send_timeout: Dur,
    #[serde(default = "d_keepalive_requests")]
    pub keepalive_requests: u32,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub watch_config: bool,
    /// The header that tells the upstream who the consumer is; any incoming copy is removed.
    #[serde(default = "d_consumer_header")]
    pub consumer_header: String,
    /// Forward header names in the client's and upstream's own letter case. Off by default:
    /// names are case-insensitive, and keeping the case costs Pingora a second header map
    /// plus a name re-parse on every insert, the largest per-request cost in the profile.
    #[serde(default)]
    pub preserve_header_case: bool,
    /// What `%2F` and `%5C` in a path mean (see `crate::path`).
    #[serde(default)]
    pub path_escaped_slash: EscapedSlash,
    /// Open connections one client address may hold (0: no cap). Trusted proxies are
    /// exempt: behind a load balancer every client would share its address.
    #[serde(default)]
    pub max_connections_per_ip: usize,
    /// Which header a trusted proxy names the client in.
    #[serde(default)]
    pub client_ip_header: ClientIpHeader,
    /// From a TLS connection's accept to the end of its handshake (Pingora's own is a
    /// fixed 60 s, which makes a stalled handshake a cheap way to hold connections).
    #[serde(default = "d_tls_handshake_timeout")]
    pub tls_handshake_timeout: Dur,
}

fn d_tls_handshake_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}

/// `server.path_escaped_slash`: an encoded `/` or `\` in a path is refused (400), kept
/// encoded as part of one segment, or decoded into a separator.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlash {
    #[default]
    Reject,
    Keep,
    Decode,
}

/// `server.client_ip_header`. One header only: believing both lets a client forge the one
/// its load balancer does not write.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ClientIpHeader {
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=...`
    Forwarded,
}

fn d_consumer_header() -> String {
    "x-consumer".into()
}

fn d_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
fn d_pid() -> String {
    "/tmp/gatehouse/gatehouse.pid".into()
}
fn d_sock() -> String {
    "/tmp/gatehouse/upgrade.sock".into()
}
fn d_grace() -> Dur {
    Dur(Duration::from_secs(30))
}
fn d_shutdown() -> Dur {
    Dur(Duration::from_secs(10))
}
fn d_send_timeout() -> Dur {
    Dur(Duration::from_secs(60))
}
fn d_header_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn d_max_header_size() -> Size {
    Size(32 * 1024)
}
fn d_max_headers() -> usize {
    100
}
fn d_max_uri() -> Size {
    Size(8 * 1024)
}
fn d_max_body() -> Size {
    Size(10 * 1024 * 1024)
}
fn d_max_connections() -> usize {
    10_000
}
fn d_read_buffer() -> Size {
    Size(1024)
}
fn d_keepalive() -> Dur {
    Dur(Duration::from_secs(60))
}
fn d_keepalive_requests() -> u32 {
    1000
}

impl Default for Server {
    fn default() -> Self {
        Server {
            threads: d_threads(),
            work_stealing: true,
            pid_file: d_pid(),
            upgrade_sock: d_sock(),
            grace_period: d_grace(),
            graceful_shutdown_timeout: d_shutdown(),
            trusted_proxies: Vec::new(),
            header_timeout: d_header_timeout(),
            max_header_size: d_max_header_size(),
            max_headers: d_max_headers(),
            max_uri: d_max_uri(),
            max_body: d_max_body(),
            max_connections: d_max_connections(),
            read_buffer: d_read_buffer(),
            keepalive_timeout: d_keepalive(),
            send_timeout: d_send_timeout(),
            keepalive_requests: d_keepalive_requests(),
            user: None,
            group: None,
            watch_config: false,
            consumer_header: d_consumer_header(),
            preserve_header_case: false,
            path_escaped_slash: EscapedSlash::Reject,
            max_connections_per_ip: 0,
            client_ip_header: ClientIpHeader::XForwardedFor,
            tls_handshake_timeout: d_tls_handshake_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// `stdout`, `off`, or an absolute path to a JSON-lines file.
    #[serde(default = "d_access")]
    pub access: String,
    #[serde(default = "d_level")]
    pub level: String,
    #[serde(default)]
    pub format: LogFormat,
}

fn d_access() -> String {
    "stdout".into()
}
fn d_level() -> String {
    "info".into()
}

impl Default for Log {
    fn default() -> Self {
        Log {
            access: d_access(),
            level: d_level(),
            format: LogFormat::default(),
        }
    }
}

/// `[metrics]`: Prometheus collection. On by default; off only to measure what it costs.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsCfg {
    #[serde(default = "d_true")]
    pub enabled: bool,
}

fn d_true() -> bool {
    true
}

impl Default for MetricsCfg {
    fn default() -> Self {
        MetricsCfg { enabled: true }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoreCfg {
    /// Directory of the embedded on-disk store (quotas, usage).
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub redis: Option<String>,
    #[serde(default = "d_store_timeout")]
    pub timeout: Dur,
    #[serde(default = "d_on_error")]
    pub on_error: String,
}

fn d_store_timeout() -> Dur {
    Dur(Duration::from_millis(20))
}
fn d_on_error() -> String {
    "allow".into()
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Route {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default = "d_paths")]
    pub paths: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// TLS server names (SNI) this route answers for; empty: any.
    #[serde(default)]
    pub sni: Vec<String>,
    /// `https` or `http`: only requests over that scheme.
    #[serde(default)]
    pub scheme: Option<Scheme>,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub upstream: Option<String>,
    #[serde(default)]
    pub strip_prefix: bool,
    #[serde(default)]
    pub preserve_host: bool,
    /// Overrides the upstream's read timeout for this route (a slow report endpoint).
    #[serde(default)]
    pub timeout: Option<Dur>,
    #[serde(default)]
    pub max_body: Option<Size>,
    /// Accept `Upgrade: websocket`; without it an upgrade request is refused (400).
    #[serde(default)]
    pub websocket: bool,
    /// No frame either way for this long closes both sides of a WebSocket session.
    #[serde(default = "d_ws_idle")]
    pub websocket_idle_timeout: Dur,
    /// Server-sent events and long polls: no read deadline between chunks.
    #[serde(default)]
    pub streaming: bool,
    /// gRPC: the gateway's own answers as gRPC statuses, never cached.
    #[serde(default)]
    pub grpc: bool,
    /// Also accept grpc-web (binary and text) from browsers over HTTP/1.1.
    #[serde(default)]
    pub grpc_web: bool,
    /// This route's share of new traces, instead of `[tracing] sample_ratio`.
    #[serde(default)]
    pub sample_ratio: Option<f64>,
    #[serde(default)]
    pub metering: Option<super::RouteMeteringCfg>,
    /// Answer by calling several backends and merging their JSON, instead of proxying.
    #[serde(default)]
    pub aggregate: Option<super::AggregateCfg>,
    #[serde(default)]
    pub plugins: BTreeMap<String, toml::Value>,
}

fn d_ws_idle() -> Dur {
    Dur(std::time::Duration::from_secs(600))
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Http,
    Https,
}

fn d_paths() -> Vec<String> {
    vec!["/".into()]
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthCfg {
    pub username: String,
    /// argon2id PHC string (`gatehouse hash-password`); plain text is refused.
    pub password_hash: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ConsumerCfg {
    #[serde(default)]
    pub groups: Vec<String>,
    /// API keys: literal, env:NAME or file:/path.
    #[serde(default)]
    pub keys: Vec<Secret>,
    #[serde(default)]
    pub basic_auth: Option<BasicAuthCfg>,
    #[serde(default)]
    pub jwt_subject: Option<String>,
    /// The verified client certificate subject (RFC 4514) that means this consumer.
    #[serde(default)]
    pub client_cert_subject: Option<String>,
    /// `sha256:<64 hex digits>` of the client certificate's DER.
    #[serde(default)]
    pub client_cert_fingerprint: Option<String>,
    #[serde(default)]
    pub plan: Option<String>,
}
