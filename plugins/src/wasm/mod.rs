//! proxy-wasm filters: `[plugins.wasm.NAME]` tables, each a module run on wasmtime through
//! a host for ABI 0.2.0/0.2.1 written here (`host`), so filters built for Envoy, Kong's
//! ngx_wasm_module or APISIX with a proxy-wasm SDK run unchanged (within what the host
//! offers: headers, local responses, properties, logging, shared data and metrics).
//!
//! A module is compiled once (and again only when its bytes change); instances are pooled
//! per filter and reused, each request getting its own HTTP context on one instance from
//! its request headers to its log. `max_memory` caps an instance's memory and `max_time`
//! each callback (epoch interruption); an instance that traps or hits a limit is dropped,
//! so the fault stays with its request, and `on_error` says whether that request fails
//! (500) or goes on without the filter.

mod abi;
mod engine;
mod host;
mod shared;
mod vm;

use crate::{Answer, Flow, Plugin, PluginCtx, PluginError, Priority};
use once_cell::sync::Lazy;
use pingora_http::{RequestHeader, ResponseHeader};
use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vm::{Fault, Vm};

pub const NAME: &str = "wasm";

/// Idle instances kept per filter; more are made under load and dropped after.
const POOL: usize = 64;

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// A fault answers 500.
    #[default]
    FailClosed,
    /// A fault skips the filter for that request.
    FailOpen,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// A `.wasm` module or `.wat` text; a relative path is from the working directory.
    pub file: String,
    /// Handed to the filter as its plugin configuration.
    #[serde(default)]
    pub config: String,
    #[serde(default)]
    pub on_error: OnError,
    #[serde(default = "d_memory")]
    pub max_memory: String,
    #[serde(default = "d_time")]
    pub max_time: String,
    /// The root context the module registers (the `plugin_root_id` property); default:
    /// the filter's name.
    #[serde(default)]
    pub root_id: Option<String>,
}

fn d_memory() -> String {
    "16MiB".into()
}
fn d_time() -> String {
    "5ms".into()
}

struct Metrics {
    instances: IntGaugeVec,
    faults: IntCounterVec,
}

static METRICS: Lazy<Metrics> = Lazy::new(|| Metrics {
    instances: crate::metrics::register(
        IntGaugeVec::new(
            Opts::new("gatehouse_wasm_instances", "Live instances of each wasm filter (pooled or in use)."),
            &["filter"],
        )
        .expect("static metric"),
    ),
    faults: crate::metrics::register(
        IntCounterVec::new(
            Opts::new("gatehouse_wasm_faults_total", "wasm filter callbacks that trapped or hit a limit."),
            &["filter", "kind"],
        )
        .expect("static metric"),
    ),
});

struct Filter {
    name: String,
    pre: wasmtime::InstancePre<vm::State>,
    shared: Arc<shared::Shared>,
    on_error: OnError,
    max_memory: usize,
    max_time: Duration,
    pool: Mutex<Vec<Vm>>,
    /// What the module can do, so a request builds only what it may read: properties for
    /// a module that imports `proxy_get_property`, the response map for one that exports
    /// `proxy_on_response_headers`.
    uses_properties: bool,
    has_response: bool,
}

impl Filter {
    fn take(self: &Arc<Self>) -> Result<Vm, String> {
        if let Some(vm) = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(vm);
        }
        let vm = Vm::new(&self.pre, self.shared.clone(), self.max_memory, self.max_time)?;
        METRICS.instances.with_label_values(&[&self.name]).inc();
        Ok(vm)
    }

    fn give_back(&self, vm: Vm) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL {
            pool.push(vm);
        } else {
            METRICS.instances.with_label_values(&[&self.name]).dec();
        }
    }

    /// Counts and logs a fault; the instance is not given back.
    fn fault(&self, phase: &str, f: &Fault, request_id: &str) {
        METRICS.faults.with_label_values(&[&self.name, f.kind()]).inc();
        METRICS.instances.with_label_values(&[&self.name]).dec();
        log::warn!("wasm filter {} failed in {phase}: {f} (request {request_id})", self.name);
    }
}

/// A replaced config's filter (or the one `-t` and validation build) takes its idle
/// instances with it.
impl Drop for Filter {
    fn drop(&mut self) {
        let idle = self.pool.get_mut().map_or(0, |p| p.len());
        METRICS.instances.with_label_values(&[&self.name]).sub(idle as i64);
    }
}

pub struct Wasm {
    filters: Vec<Arc<Filter>>,
}

/// One request's context on one instance, from request headers to log. Dropped with the
/// request on every path (a client that hangs up included), which ends the context and
/// gives the instance back.
struct Held {
    filter: Arc<Filter>,
    slot: Mutex<Option<(Vm, i32)>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let taken = self.slot.get_mut().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((mut vm, id)) = taken {
            match vm.end(id, false) {
                Ok(()) => self.filter.give_back(vm),
                Err(f) => self.filter.fault("done", &f, ""),
            }
        }
    }
}

fn size(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: usize = s[..split].parse().ok()?;
    let mult = match s[split..].trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

impl Wasm {
    pub fn from_config(filters: BTreeMap<String, FilterConfig>) -> Result<Wasm, PluginError> {
        let mut out = Vec::with_capacity(filters.len());
        for (name, c) in filters {
            let key = |k: &str| format!("{name}.{k}");
            let err = |k: &str, r: String| PluginError { key: key(k), reason: r };
            let max_memory = size(&c.max_memory)
                .filter(|m| (64 << 10..=4 << 30).contains(m))
                .ok_or_else(|| err("max_memory", format!("`{}`: a size from 64KiB to 4GiB, as \"16MiB\"", c.max_memory)))?;
            let max_time = crate::util::parse_duration(&c.max_time).map_err(|e| err("max_time", e))?;
            if max_time.is_zero() || max_time > Duration::from_secs(10) {
                return Err(err("max_time", "must be above zero and at most 10s".into()));
            }
            let bytes = std::fs::read(&c.file).map_err(|e| err("file", format!("cannot read `{}`: {e}", c.file)))?;
            let module = engine::module(&bytes).map_err(|e| err("file", e))?;
            let abi = module
                .exports()
                .any(|e| e.name() == "proxy_abi_version_0_2_1" || e.name() == "proxy_abi_version_0_2_0");
            if !abi {
                return Err(err(
                    "file",
                    "the module exports no proxy_abi_version_0_2_0 or _0_2_1: not a proxy-wasm 0.2 filter".into(),
                ));
            }
            let uses_properties = module.imports().any(|i| i.name() == "proxy_get_property");
            let has_response = module.exports().any(|e| e.name() == "proxy_on_response_headers");
            let mut linker = wasmtime::Linker::new(&engine::ENGINE);
            host::define(&mut linker).map_err(|e| err("file", format!("host: {e:#}")))?;
            linker
                .define_unknown_imports_as_traps(&module)
                .map_err(|e| err("file", format!("linking: {e:#}")))?;
            let pre = linker
                .instantiate_pre(&module)
                .map_err(|e| err("file", format!("linking: {e:#}")))?;
            let root_id = c.root_id.clone().unwrap_or_else(|| name.clone());
            let shared = Arc::new(shared::Shared::new(&name, &root_id, c.config.into_bytes()));
            // One instance now: a filter that cannot start is refused at load, not per request.
            let first = Vm::new(&pre, shared.clone(), max_memory, max_time).map_err(|e| err("file", e))?;
            METRICS.instances.with_label_values(&[&name]).inc();
            for kind in ["trap", "timeout", "memory"] {
                METRICS.faults.with_label_values(&[&name, kind]);
            }
            out.push(Arc::new(Filter {
                name,
                pre,
                shared,
                on_error: c.on_error,
                max_memory,
                max_time,
                pool: Mutex::new(vec![first]),
                uses_properties,
                has_response,
            }));
        }
        Ok(Wasm { filters: out })
    }

    fn held<'a>(&self, f: &Arc<Filter>, ctx: &'a PluginCtx) -> Option<&'a Held> {
        ctx.guards
            .iter()
            .filter_map(|g| g.downcast_ref::<Held>())
            .find(|h| Arc::ptr_eq(&h.filter, f))
    }
}

fn request_pairs(req: &RequestHeader) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut v = Vec::with_capacity(req.headers.len() + 3);
    v.push((b":method".to_vec(), req.method.as_str().as_bytes().to_vec()));
    v.push((
        b":path".to_vec(),
        req.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes().to_vec(),
    ));
    let host = req
        .headers
        .get(http::header::HOST)
        .map(|h| h.as_bytes().to_vec())
        .unwrap_or_default();
    v.push((b":authority".to_vec(), host));
    for (k, val) in &req.headers {
        v.push((k.as_str().as_bytes().to_vec(), val.as_bytes().to_vec()));
    }
    v
}

fn response_pairs(resp: &ResponseHeader) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut v = Vec::with_capacity(resp.headers.len() + 1);
    v.push((b":status".to_vec(), resp.status.as_str().as_bytes().to_vec()));
    for (k, val) in &resp.headers {
        v.push((k.as_str().as_bytes().to_vec(), val.as_bytes().to_vec()));
    }
    v
}

/// The names whose values differ between `before` and `after` (pseudo-headers aside), with
/// their new values.
fn changes(before: &[(Vec<u8>, Vec<u8>)], after: &[(Vec<u8>, Vec<u8>)]) -> Vec<(http::HeaderName, Vec<http::HeaderValue>)> {
    let values =
        |m: &[(Vec<u8>, Vec<u8>)], k: &[u8]| -> Vec<Vec<u8>> { m.iter().filter(|(n, _)| n == k).map(|(_, v)| v.clone()).collect() };
    let mut names: Vec<&[u8]> = before
        .iter()
        .chain(after)
        .map(|(k, _)| k.as_slice())
        .filter(|k| !k.starts_with(b":"))
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut out = Vec::new();
    for n in names {
        let new = values(after, n);
        if new == values(before, n) {
            continue;
        }
        let Ok(name) = http::HeaderName::from_bytes(n) else { continue };
        let vals = new.iter().filter_map(|v| http::HeaderValue::from_bytes(v).ok()).collect();
        out.push((name, vals));
    }
    out
}

fn pseudo<'a>(m: &'a [(Vec<u8>, Vec<u8>)], name: &[u8]) -> Option<&'a [u8]> {
    m.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
}

fn local_answer(l: vm::Local) -> Answer {
    let mut a = Answer::empty(l.status);
    for (k, v) in l.headers {
        if let (Ok(n), Ok(v)) = (http::HeaderName::from_bytes(&k), http::HeaderValue::from_bytes(&v)) {
            if n != http::header::CONTENT_LENGTH && n != http::header::TRANSFER_ENCODING {
                a.headers.push((n, v));
            }
        }
    }
    a.body = bytes::Bytes::from(l.body);
    a
}

impl Plugin for Wasm {
    fn name(&self) -> &'static str {
        NAME
    }

    /// After auth, ACLs and limits (a filter sees the consumer; a refused request costs no
    /// filter call), before the headers transform and static answers.
    fn priority(&self) -> Priority {
        Priority(700)
    }

    fn request(&self, req: &mut RequestHeader, ctx: &mut PluginCtx) -> Flow {
        for f in &self.filters {
            let mut vm = match f.take() {
                Ok(vm) => vm,
                Err(e) => {
                    log::warn!("wasm filter {}: no instance: {e}", f.name);
                    match f.on_error {
                        OnError::FailClosed => return Flow::Respond(Answer::error(500, "filter failed")),
                        OnError::FailOpen => continue,
                    }
                }
            };
            let no_body = !req.headers.contains_key(http::header::TRANSFER_ENCODING)
                && req.headers.get(http::header::CONTENT_LENGTH).is_none_or(|v| v.as_bytes() == b"0");
            {
                let s = vm.state();
                s.request = Some(request_pairs(req));
                s.dirty = false;
            }
            if f.uses_properties {
                let s = vm.state();
                s.properties = vec![
                    ("request.path", req.uri.path().as_bytes().to_vec()),
                    ("request.method", req.method.as_str().as_bytes().to_vec()),
                    ("request.id", ctx.request_id.as_bytes().to_vec()),
                    ("source.address", ctx.client_ip.to_string().into_bytes()),
                    ("gatehouse.route", ctx.route.as_bytes().to_vec()),
                ];
                if let Some(c) = ctx.consumer_name() {
                    s.properties.push(("gatehouse.consumer", c.as_bytes().to_vec()));
                }
            }
            let run = vm.begin().and_then(|id| vm.headers(id, false, no_body).map(|_| id));
            let id = match run {
                Ok(id) => id,
                Err(fault) => {
                    f.fault("request headers", &fault, &ctx.request_id);
                    match f.on_error {
                        OnError::FailClosed => {
                            ctx.rejection = Some("wasm_fault");
                            return Flow::Respond(Answer::error(500, "filter failed"));
                        }
                        OnError::FailOpen => continue,
                    }
                }
            };
            let s = vm.state();
            let local = s.local.take();
            let after = s.request.take().unwrap_or_default();
            if s.dirty {
                let before = request_pairs(req);
                if let Some(p) = pseudo(&after, b":path").filter(|p| Some(*p) != pseudo(&before, b":path")) {
                    match std::str::from_utf8(p).ok().and_then(|p| p.parse::<http::Uri>().ok()) {
                        Some(uri) if p.starts_with(b"/") => req.set_uri(uri),
                        _ => log::warn!("wasm filter {}: ignored an invalid :path", f.name),
                    }
                }
                for (name, values) in changes(&before, &after) {
                    req.remove_header(&name);
                    for v in values {
                        let _ = req.append_header(name.clone(), v);
                    }
                }
            }
            ctx.guards.push(Box::new(Held {
                filter: f.clone(),
                slot: Mutex::new(Some((vm, id))),
            }));
            if let Some(l) = local {
                ctx.rejection = Some("wasm_local_response");
                return Flow::Respond(local_answer(l));
            }
        }
        Flow::Continue
    }

    fn response(&self, resp: &mut ResponseHeader, ctx: &PluginCtx) {
        for f in self.filters.iter().filter(|f| f.has_response) {
            let Some(held) = self.held(f, ctx) else { continue };
            let mut slot = held.slot.lock().unwrap_or_else(|p| p.into_inner());
            let Some((vm, id)) = slot.as_mut() else { continue };
            let s = vm.state();
            s.response = Some(response_pairs(resp));
            s.dirty = false;
            let no_body = resp.headers.get(http::header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() == b"0");
            if let Err(fault) = vm.headers(*id, true, no_body) {
                // The status line may already be decided: the response goes out as it was.
                f.fault("response headers", &fault, &ctx.request_id);
                *slot = None;
                continue;
            }
            let s = vm.state();
            s.local = None;
            let after = s.response.take().unwrap_or_default();
            if !s.dirty {
                continue;
            }
            let before = response_pairs(resp);
            if let Some(code) = pseudo(&after, b":status")
                .and_then(|c| std::str::from_utf8(c).ok())
                .and_then(|c| c.parse::<u16>().ok())
            {
                let _ = resp.set_status(code);
            }
            for (name, values) in changes(&before, &after) {
                resp.remove_header(&name);
                for v in values {
                    let _ = resp.append_header(name.clone(), v);
                }
            }
        }
    }

    fn log(&self, _status: u16, ctx: &PluginCtx) {
        for f in &self.filters {
            let Some(held) = self.held(f, ctx) else { continue };
            let taken = held.slot.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some((mut vm, id)) = taken {
                match vm.end(id, true) {
                    Ok(()) => f.give_back(vm),
                    Err(fault) => f.fault("log", &fault, &ctx.request_id),
                }
            }
        }
    }
}
