//! The runtime model: what one request reads, built from a validated file.
//!
//! A snapshot is immutable. A reload builds a new one off the request path and swaps it in
//! atomically (`crate::live`), reusing clusters, plugin instances and the access log from
//! the previous snapshot where their config did not change.

use crate::access_log::{AccessLog, Sink};
use crate::config::{self, ConfigError, ConfigErrors};
use crate::metrics::METRICS;
use crate::router::{Conditions, HostMatch, PathMatch, Router};
use crate::upstream::Cluster;
use gatehouse_plugins::consumers::{Consumers, Credentials};
use gatehouse_plugins::limits::plans::Plans;
use gatehouse_plugins::Plugin;
use prometheus::{Histogram, IntCounter};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Metric handles resolved once per route, so a request does not hash label values.
pub struct RouteMetrics {
    pub duration: Histogram,
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
    pub requests: crate::metrics::RequestCounters,
}

pub struct Route {
    pub name: Arc<str>,
    /// Index in `plugins` just past the last auth plugin: where the core checks that
    /// someone authenticated (401 otherwise). None: the route has no auth plugin.
    pub auth_end: Option<usize>,
    pub cluster: Option<Arc<Cluster>>,
    pub strip_prefix: bool,
    pub preserve_host: bool,
    pub timeout: Option<Duration>,
    pub max_body: Option<u64>,
    /// `Some(idle)`: WebSocket upgrades are let through, and a session with no frame
    /// either way for `idle` is closed.
    pub websocket: Option<Duration>,
    /// No read deadline between chunks (`streaming`, or `timeout = "0s"`).
    pub streaming: bool,
    pub grpc: bool,
    pub grpc_web: bool,
    /// Sorted by priority, highest first: the request-side order.
    pub plugins: Vec<Arc<dyn Plugin>>,
    pub metrics: RouteMetrics,
    pub cache: Option<Arc<crate::cache::Policy>>,
    /// The counts this route's SLO alert rules read, when any rule covers it.
    pub alerts: Option<Arc<crate::alerts::series::RouteSeries>>,
    /// This route's tracer (its sampling ratio), when `[tracing]` is on.
    pub tracer: Option<opentelemetry_sdk::trace::SdkTracer>,
    /// The route's event type and dimensions, when `[metering]` is on.
    pub meter: Option<Arc<crate::metering::RouteMeter>>,
    /// The function this route invokes, instead of proxying to `cluster`.
    pub function: Option<Arc<crate::upstream::function::Function>>,
    /// Backends this route calls and merges, instead of proxying to `cluster`.
    pub aggregate: Option<Arc<crate::proxy::aggregate::Plan>>,
}

type PluginKey = (String, String);

pub struct Snapshot {
    pub file: config::File,
    /// FNV-1a of the file text, hex: tells an operator which file is live.
    pub hash: String,
    pub loaded_at: SystemTime,
    pub router: Router<Arc<Route>>,
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub access_log: Arc<AccessLog>,
    /// What each upstream asks DNS, as the file declares it (`file.upstreams` holds the
    /// addresses found).
    pub discovery: std::collections::BTreeMap<String, Vec<crate::discovery::dns::Query>>,
    /// Admin tokens (resolved), with their names and roles.
    pub admin_tokens: Vec<(String, String, config::Role)>,
    /// The text this snapshot was built from (the main file, with the managed one merged):
    /// what `GET /config` shows and its ETag names.
    pub text: Arc<str>,
    pub consumers: Arc<Consumers>,
    pub plans: Arc<Plans>,
    pub consumer_header: http::HeaderName,
    /// [`material_digest`] of what this snapshot was built from; never shown (it covers
    /// secrets).
    pub material: [u8; 32],
    /// The certificates TLS listeners serve, chosen by SNI.
    pub certs: Arc<crate::tls::CertStore>,
    pub tracing: Option<crate::trace::Tracing>,
    /// The tracer of requests no route takes (`[tracing] sample_ratio`).
    pub tracer: Option<opentelemetry_sdk::trace::SdkTracer>,
    plugin_instances: HashMap<PluginKey, Arc<dyn Plugin>>,
}

/// A consumer section's credentials in the form the plugins' registry takes.
pub fn credentials(c: &config::ConsumerCfg) -> Credentials {
    Credentials {
        keys: c.keys.iter().map(|k| k.value.clone()).collect(),
        basic_auth: c.basic_auth.as_ref().map(|b| (b.username.clone(), b.password_hash.clone())),
        jwt_subject: c.jwt_subject.clone(),
        client_cert_subject: c.client_cert_subject.clone(),
        client_cert_fingerprint: c.client_cert_fingerprint.clone(),
    }
}

/// SHA-256 over everything the `env:` and `file:` references in a plugin table resolve to
/// (unresolvable ones hash their error, so a file that appears or vanishes also counts).
pub fn referenced_material(value: &toml::Value) -> [u8; 32] {
    fn walk(v: &toml::Value, out: &mut Vec<u8>) {
        match v {
            toml::Value::String(s) if s.starts_with("env:") || s.starts_with("file:") => {
                out.extend_from_slice(s.as_bytes());
                out.push(0);
                match gatehouse_plugins::secret::resolve(s) {
                    Ok(v) => out.extend_from_slice(v.as_bytes()),
                    Err(e) => out.extend_from_slice(e.as_bytes()),
                }
                out.push(0);
            }
            toml::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            toml::Value::Table(t) => t.values().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut material = Vec::new();
    walk(value, &mut material);
    gatehouse_plugins::consumers::key_digest(&material)
}

/// Everything a reload must notice: the file's text, and what its secrets and referenced
/// files hold (a revoked key or a rotated PEM changes no byte of the file).
pub fn material_digest(file: &config::File, text: &str) -> [u8; 32] {
    let mut m = Vec::with_capacity(text.len() + 256);
    m.extend_from_slice(text.as_bytes());
    for c in file.consumers.values() {
        for k in &c.keys {
            m.push(0);
            m.extend_from_slice(k.value.as_bytes());
        }
    }
    // A function's keys from a rotated `file:`.
    for u in file.upstreams.values() {
        for s in [&u.access_key, &u.secret_key, &u.session_token].into_iter().flatten() {
            m.push(2);
            m.extend_from_slice(s.value.as_bytes());
        }
    }
    for (_, t, _) in file.admin.iter().flat_map(|a| a.all_tokens()) {
        m.push(1);
        m.extend_from_slice(t.value.as_bytes());
    }
    let tables = file.plugins.values().chain(file.routes.values().flat_map(|r| r.plugins.values()));
    for v in tables {
        m.extend_from_slice(&referenced_material(v));
    }
    // Certificate and key files: a renewed certificate reloads with the same file text.
    for c in file.tls.certificates.values() {
        for source in [&c.cert, &c.key] {
            m.extend_from_slice(&referenced_material(&toml::Value::String(source.clone())));
        }
    }
    gatehouse_plugins::consumers::key_digest(&m)
}

/// Every upstream a wasm filter may call (`upstreams = [...]`) is a defined cluster.
fn wasm_upstreams(file: &config::File, clusters: &BTreeMap<String, Arc<Cluster>>) -> Result<(), (String, String)> {
    let global = file.plugins.get("wasm").map(|v| ("plugins.wasm".to_string(), v));
    let routed = file
        .routes
        .iter()
        .filter_map(|(n, r)| r.plugins.get("wasm").map(|v| (format!("routes.{n}.plugins.wasm"), v)));
    for (key, table) in global.into_iter().chain(routed) {
        let Some(filters) = table.as_table() else { continue };
        for (name, f) in filters {
            let names = f.get("upstreams").and_then(|u| u.as_array()).into_iter().flatten();
            for (i, u) in names.enumerate() {
                let u = u.as_str().unwrap_or_default();
                if !clusters.contains_key(u) {
                    return Err((
                        format!("{key}.{name}.upstreams[{i}]"),
                        format!("upstream `{u}` is not defined (a filter calls HTTP upstreams only)"),
                    ));
                }
            }
        }
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn text_hash(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

impl Snapshot {
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }

    /// Builds the runtime model. `prev` donates unchanged parts; `file_name` is for errors.
    pub fn build(mut file: config::File, text: &str, file_name: &str, prev: Option<&Snapshot>) -> Result<Snapshot, ConfigErrors> {
        let err = |key: String, reason: String| ConfigErrors::one(ConfigError::new(file_name, &key, reason));
        // Names become the addresses last discovered for them (`crate::discovery`).
        let discovery = crate::discovery::declared(&file);
        if !discovery.is_empty() {
            crate::discovery::apply(&mut file);
        }

        let mut clusters = BTreeMap::new();
        let mut functions = BTreeMap::new();
        for (name, u) in &file.upstreams {
            if u.kind == config::UpstreamKind::AwsLambda {
                let f = crate::upstream::function::Function::new(name, u).map_err(|e| err(format!("upstreams.{name}"), e))?;
                functions.insert(name.clone(), Arc::new(f));
                continue;
            }
            let before = prev.and_then(|p| p.clusters.get(name));
            let cluster = match before.filter(|c| c.config == *u) {
                Some(c) => c.clone(),
                // Changed: targets that stay keep their health and ejection state.
                None => Arc::new(Cluster::new(name, u, before.map(|c| &**c)).map_err(|e| err(format!("upstreams.{name}"), e))?),
            };
            clusters.insert(name.clone(), cluster);
        }

        wasm_upstreams(&file, &clusters).map_err(|(k, e)| err(k, e))?;

        let mut instances: HashMap<PluginKey, Arc<dyn Plugin>> = HashMap::new();
        let mut instance = |name: &str, value: &toml::Value, key: &str| -> Result<Arc<dyn Plugin>, ConfigErrors> {
            // What the section says, and what the files and variables it names hold: a
            // rotated key file makes a new instance (and drops its verified-token cache).
            let mut canonical = toml::to_string(value).unwrap_or_default();
            canonical.push_str(&hex(&referenced_material(value)));
            let canonical = (name.to_string(), canonical);
            if let Some(p) = instances.get(&canonical) {
                return Ok(p.clone());
            }
            let p = match prev.and_then(|p| p.plugin_instances.get(&canonical)) {
                Some(p) => p.clone(),
                None => gatehouse_plugins::build(name, value).map_err(|e| err(format!("{key}.{name}"), e.to_string()))?,
            };
            instances.insert(canonical, p.clone());
            Ok(p)
        };

        let mut tracing = file
            .tracing
            .as_ref()
            .map(|t| crate::trace::Tracing::new(t, prev.and_then(|p| p.tracing.as_ref())));
        let mut tracer_for = |ratio: Option<f64>| {
            tracing.as_mut().map(|t| {
                let r = ratio.unwrap_or(t.config().sample_ratio);
                t.tracer(r)
            })
        };
        let mut router = Router::new();
        for (name, r) in &file.routes {
            let base = format!("routes.{name}");
            let mut plugins: Vec<Arc<dyn Plugin>> = Vec::new();
            for (pname, value) in &file.plugins {
                if !r.plugins.contains_key(pname) && pname != crate::cache::PLUGIN {
                    plugins.push(instance(pname, value, "plugins")?);
                }
            }
            let mut cache = None;
            for (pname, value) in &r.plugins {
                if pname == crate::cache::PLUGIN {
                    let policy = crate::cache::Policy::from_toml(value).map_err(|(k, e)| err(format!("{base}.plugins.cache.{k}"), e))?;
                    cache = Some(Arc::new(policy));
                    continue;
                }
                plugins.push(instance(pname, value, &format!("{base}.plugins"))?);
            }
            plugins.sort_by_key(|p| std::cmp::Reverse(p.priority()));
            let auth_end = plugins.iter().rposition(|p| p.is_auth()).map(|i| i + 1);

            let mut paths = Vec::with_capacity(r.paths.len());
            for (i, p) in r.paths.iter().enumerate() {
                paths.push(PathMatch::parse(p).map_err(|e| err(format!("{base}.paths[{i}]"), e))?);
            }
            let mut methods = Vec::new();
            for m in &r.methods {
                methods
                    .push(http::Method::from_bytes(m.as_bytes()).map_err(|_| err(format!("{base}.methods"), format!("bad method `{m}`")))?);
            }
            let mut headers = Vec::new();
            for (k, v) in &r.headers {
                let n =
                    http::HeaderName::from_bytes(k.as_bytes()).map_err(|_| err(format!("{base}.headers.{k}"), "bad header name".into()))?;
                let v = http::HeaderValue::from_str(v).map_err(|_| err(format!("{base}.headers.{k}"), "bad header value".into()))?;
                headers.push((n, v));
            }
            let function = r.upstream.as_ref().and_then(|u| functions.get(u)).cloned();
            let cluster = match &r.upstream {
                Some(_) if function.is_some() => None,
                Some(u) => Some(
                    clusters
                        .get(u)
                        .cloned()
                        .ok_or_else(|| err(format!("{base}.upstream"), format!("upstream `{u}` is not defined")))?,
                ),
                None => None,
            };
            let aggregate = match &r.aggregate {
                Some(a) => Some(Arc::new(
                    crate::proxy::aggregate::Plan::build(name, a, &clusters, &functions)
                        .map_err(|(k, e)| err(format!("{base}.aggregate.{k}"), e))?,
                )),
                None => None,
            };
            let route = Route {
                aggregate,
                function,
                name: Arc::from(name.as_str()),
                auth_end,
                cache,
                cluster,
                strip_prefix: r.strip_prefix,
                preserve_host: r.preserve_host,
                timeout: r.timeout.map(|d| d.0).filter(|d| !d.is_zero()),
                max_body: r.max_body.map(|s| s.0),
                websocket: r.websocket.then_some(r.websocket_idle_timeout.0),
                streaming: r.streaming || r.timeout.is_some_and(|d| d.0.is_zero()),
                grpc: r.grpc,
                grpc_web: r.grpc_web,
                plugins,
                tracer: tracer_for(r.sample_ratio),
                meter: file
                    .metering
                    .is_some()
                    .then(|| Arc::new(crate::metering::RouteMeter::new(&r.metering.clone().unwrap_or_default()))),
                alerts: crate::alerts::series_for(&file, name),
                metrics: RouteMetrics {
                    duration: METRICS.request_duration.with_label_values(&[name]),
                    bytes_in: METRICS.bytes_received.with_label_values(&[name]),
                    bytes_out: METRICS.bytes_sent.with_label_values(&[name]),
                    requests: crate::metrics::RequestCounters::new(Arc::from(name.as_str())),
                },
            };
            let cond = Conditions {
                hosts: HostMatch::new(&r.hosts),
                methods,
                headers,
                sni: HostMatch::server_names(&r.sni),
                https: r.scheme.map(|s| s == config::Scheme::Https),
            };
            router.add(name, Arc::new(route), cond, r.priority, paths);
        }

        let tracer = tracer_for(None);
        let mut consumers = Consumers::default();
        for (name, c) in &file.consumers {
            consumers
                .add(name, c.groups.clone(), c.plan.clone(), &credentials(c))
                .map_err(|e| err(format!("consumers.{name}"), e))?;
        }
        let mut plans = Plans::default();
        for (name, p) in &file.plans {
            plans.add(name, p).map_err(|e| err(format!("plans.{name}"), e.to_string()))?;
        }
        let consumer_header = http::HeaderName::from_bytes(file.server.consumer_header.as_bytes())
            .map_err(|e| err("server.consumer_header".into(), e.to_string()))?;

        let certs = crate::tls::CertStore::build(&file)
            .map_err(|errors| ConfigErrors(errors.into_iter().map(|(k, r)| ConfigError::new(file_name, &k, r)).collect()))?;
        for c in &certs.certs {
            METRICS.cert_expiry.with_label_values(&[&c.name]).set(c.not_after);
        }

        let sink = Sink::parse(&file.log.access);
        let access_log = match prev {
            Some(p) if p.access_log.sink == sink => p.access_log.clone(),
            _ => Arc::new(AccessLog::new(sink)),
        };

        Ok(Snapshot {
            certs: Arc::new(certs),
            material: material_digest(&file, text),
            hash: text_hash(text),
            loaded_at: SystemTime::now(),
            router: router.finish(),
            clusters,
            trusted_proxies: file.server.trusted_proxies.iter().map(|c| c.0).collect(),
            access_log,
            admin_tokens: file
                .admin
                .iter()
                .flat_map(|a| a.all_tokens())
                .map(|(n, t, r)| (n.to_string(), t.value.clone(), r))
                .collect(),
            text: Arc::from(text),
            discovery,
            plugin_instances: instances,
            consumers: Arc::new(consumers),
            plans: Arc::new(plans),
            consumer_header,
            tracing,
            tracer,
            file,
        })
    }
}
