//! proxy-wasm filters: `[plugins.wasm.NAME]` tables, each a module run on wasmtime through
//! a host for ABI 0.2.0/0.2.1 written here (`host`), so filters built for Envoy, Kong's
//! ngx_wasm_module or APISIX with a proxy-wasm SDK run unchanged (within what the host
//! offers: headers, buffered bodies, local responses, properties, logging, shared data,
//! metrics, and HTTP calls to the upstreams a filter lists).
//!
//! A module is compiled once (and again only when its bytes change); instances are pooled
//! per filter and reused, each request getting its own HTTP context on one instance from
//! its request headers to its log. `max_memory` caps an instance's memory and `max_time`
//! each callback (epoch interruption); an instance that traps or hits a limit is dropped,
//! so the fault stays with its request, and `on_error` says whether that request fails
//! (500) or goes on without the filter.

mod abi;
mod body;
mod engine;
mod hmap;
mod host;
mod maps;
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
    /// The upstreams `proxy_http_call` may name (checked against `[upstreams]` at load).
    #[serde(default)]
    pub upstreams: Vec<String>,
    /// Largest body the filter holds buffered (request, response, or a call's answer).
    #[serde(default = "d_body")]
    pub max_body: String,
    /// The most a request waits on the filter's HTTP calls, all rounds together.
    #[serde(default = "d_call_time")]
    pub max_call_time: String,
}

fn d_call_time() -> String {
    "30s".into()
}

fn d_body() -> String {
    "1MiB".into()
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
    /// Body callbacks: only then are bodies buffered and their framing made chunked.
    has_request_body: bool,
    has_response_body: bool,
    /// The module imports `proxy_http_call`: its request phase may wait on upstream calls.
    calls: bool,
    max_call_time: Duration,
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
            let max_body = size(&c.max_body)
                .filter(|m| (1..=64 << 20).contains(m))
                .ok_or_else(|| err("max_body", format!("`{}`: a size up to 64MiB, as \"1MiB\"", c.max_body)))?;
            let max_call_time = crate::util::parse_duration(&c.max_call_time).map_err(|e| err("max_call_time", e))?;
            if max_call_time.is_zero() || max_call_time > Duration::from_secs(300) {
                return Err(err("max_call_time", "must be above zero and at most 5m".into()));
            }
            let imports = |n: &str| module.imports().any(|i| i.name() == n);
            let exports = |n: &str| module.exports().any(|e| e.name() == n);
            let uses_properties = imports("proxy_get_property");
            let has_response = exports("proxy_on_response_headers");
            let has_request_body = exports("proxy_on_request_body");
            let has_response_body = exports("proxy_on_response_body");
            let calls = imports("proxy_http_call");
            let mut linker = wasmtime::Linker::new(&engine::ENGINE);
            host::define(&mut linker).map_err(|e| err("file", format!("host: {e:#}")))?;
            linker
                .define_unknown_imports_as_traps(&module)
                .map_err(|e| err("file", format!("linking: {e:#}")))?;
            let pre = linker
                .instantiate_pre(&module)
                .map_err(|e| err("file", format!("linking: {e:#}")))?;
            let root_id = c.root_id.clone().unwrap_or_else(|| name.clone());
            let shared = Arc::new(shared::Shared::new(&name, &root_id, c.config.into_bytes(), c.upstreams, max_body));
            // One instance now: a filter that cannot start is refused at load, not per request.
            let first = Vm::new(&pre, shared.clone(), max_memory, max_time).map_err(|e| err("file", e))?;
            METRICS.instances.with_label_values(&[&name]).inc();
            for kind in ["trap", "timeout", "memory", "stalled"] {
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
                has_request_body,
                has_response_body,
                calls,
                max_call_time,
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

/// What starting a filter on a request came to. Returned by value and matched at once:
/// moving the instance handle costs less than boxing it on every request.
#[allow(clippy::large_enum_variant)]
enum Start {
    /// The filter's context `id` on an instance held for this request, and whether its
    /// header callback paused the request.
    Running(Vm, i32, bool),
    /// A fault under fail_open: the request goes on without the filter.
    Skip,
    Stop(Flow),
}

/// Rounds of `proxy_http_call` a request may go through (each call's answer may make more).
const CALL_ROUNDS: usize = 4;

impl Wasm {
    fn fail(f: &Filter, ctx: &mut PluginCtx) -> Start {
        match f.on_error {
            OnError::FailClosed => {
                ctx.rejection = Some("wasm_fault");
                Start::Stop(Flow::Respond(Answer::error(500, "filter failed")))
            }
            OnError::FailOpen => Start::Skip,
        }
    }

    /// An instance for the request, a new HTTP context on it and its request headers
    /// callback.
    fn start(f: &Arc<Filter>, req: &RequestHeader, ctx: &mut PluginCtx) -> Start {
        let mut vm = match f.take() {
            Ok(vm) => vm,
            Err(e) => {
                log::warn!("wasm filter {}: no instance: {e}", f.name);
                return Self::fail(f, ctx);
            }
        };
        let s = vm.state();
        s.request = Some(hmap::Map::new(&maps::request_slices(req)));
        s.can_call = f.calls;
        s.resumed = false;
        if f.uses_properties {
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
        match vm.begin().and_then(|id| vm.headers(id, false, !ctx.has_body).map(|a| (id, a))) {
            // StopIteration (1) and the StopAllIteration forms (3, 4) hold the request.
            Ok((id, action)) => Start::Running(vm, id, matches!(action, 1 | 3 | 4)),
            Err(fault) => {
                f.fault("request headers", &fault, &ctx.request_id);
                Self::fail(f, ctx)
            }
        }
    }

    /// The calls the filter queued, made through the core's caller (each within its own
    /// timeout, concurrently), each answer handed to `proxy_on_http_call_response`.
    async fn calls(f: &Filter, vm: &mut Vm, ctx: &PluginCtx) -> Result<(), Fault> {
        let deadline = std::time::Instant::now() + f.max_call_time;
        for _ in 0..CALL_ROUNDS {
            let pending = std::mem::take(&mut vm.state().calls);
            if pending.is_empty() || vm.state().local.is_some() {
                return Ok(());
            }
            let mut set = tokio::task::JoinSet::new();
            for (token, mut req) in pending {
                req.request_id = ctx.request_id.clone();
                // All of a request's calls share `max_call_time`, whatever each one asks.
                req.timeout = req.timeout.min(deadline.saturating_duration_since(std::time::Instant::now()));
                set.spawn(async move {
                    let answer = match crate::callout::caller() {
                        Some(c) => c.call(req).await,
                        None => Err("no upstream caller in this process".to_string()),
                    };
                    (token, answer)
                });
            }
            let mut answers = set.join_all().await;
            answers.sort_by_key(|(t, _)| *t);
            for (token, answer) in answers {
                vm.state().call_response = match answer {
                    Ok(r) => {
                        let status = r.status.to_string();
                        let mut h: Vec<(&[u8], &[u8])> = Vec::with_capacity(r.headers.len() + 1);
                        h.push((b":status", status.as_bytes()));
                        h.extend(r.headers.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
                        Some((hmap::Map::new(&h), r.body.to_vec()))
                    }
                    Err(e) => {
                        log::warn!(
                            "wasm filter {}: http call failed: {} (request {})",
                            f.name,
                            e.escape_debug(),
                            ctx.request_id
                        );
                        None
                    }
                };
                vm.call_response(token)?;
                if vm.state().local.is_some() {
                    break;
                }
            }
            vm.state().call_response = None;
        }
        if !vm.state().calls.is_empty() {
            log::warn!(
                "wasm filter {}: more than {CALL_ROUNDS} rounds of http calls; the rest were not made",
                f.name
            );
            vm.state().calls.clear();
        }
        Ok(())
    }

    /// The filter's header changes applied, its instance held for the rest of the request,
    /// and its local response (if it made one) as the answer.
    fn finish(f: &Arc<Filter>, mut vm: Vm, id: i32, paused: bool, req: &mut RequestHeader, ctx: &mut PluginCtx) -> Option<Flow> {
        let body = ctx.has_body;
        let s = vm.state();
        s.can_call = false;
        let local = s.local.take();
        // Paused with nothing left to wait for: the request must not go on as if resumed.
        // (A filter with a body callback pauses to see the body first: the header block goes
        // upstream, the body is held until the filter lets it through.)
        let stalled = paused && !s.resumed && local.is_none() && !(f.has_request_body && body);
        if let Some(m) = s.request.take() {
            maps::apply_request(req, m.outcome(), &f.name);
        }
        if f.has_request_body && body {
            // The body callbacks read the headers as they went upstream.
            s.request = Some(hmap::Map::new(&maps::request_slices(req)));
            ctx.body_hooks |= PluginCtx::BODY_REQUEST;
        }
        if f.has_response_body {
            ctx.body_hooks |= PluginCtx::BODY_RESPONSE;
        }
        ctx.guards.push(Box::new(Held {
            filter: f.clone(),
            slot: Mutex::new(Some((vm, id))),
        }));
        if let Some(l) = local {
            ctx.rejection = Some("wasm_local_response");
            return Some(Flow::Respond(maps::local_answer(l)));
        }
        if stalled {
            METRICS.faults.with_label_values(&[&f.name, "stalled"]).inc();
            log::warn!(
                "wasm filter {} paused the request and never resumed or answered it (request {})",
                f.name,
                ctx.request_id
            );
            if f.on_error == OnError::FailClosed {
                ctx.rejection = Some("wasm_fault");
                return Some(Flow::Respond(Answer::error(500, "filter failed")));
            }
        }
        None
    }
}

#[async_trait::async_trait]
impl Plugin for Wasm {
    fn name(&self) -> &'static str {
        NAME
    }

    /// After auth, ACLs and limits (a filter sees the consumer; a refused request costs no
    /// filter call), before the headers transform and static answers.
    fn priority(&self) -> Priority {
        Priority(700)
    }

    /// Only a module that imports `proxy_http_call` makes the chain wait for it.
    fn is_async(&self) -> bool {
        self.filters.iter().any(|f| f.calls)
    }

    fn request(&self, req: &mut RequestHeader, ctx: &mut PluginCtx) -> Flow {
        for f in &self.filters {
            match Self::start(f, req, ctx) {
                Start::Running(vm, id, paused) => {
                    if let Some(flow) = Self::finish(f, vm, id, paused, req, ctx) {
                        return flow;
                    }
                }
                Start::Skip => {}
                Start::Stop(flow) => return flow,
            }
        }
        Flow::Continue
    }

    async fn request_async(&self, req: &mut RequestHeader, ctx: &mut PluginCtx) -> Flow {
        for f in &self.filters {
            match Self::start(f, req, ctx) {
                Start::Running(mut vm, id, paused) => {
                    if let Err(fault) = Self::calls(f, &mut vm, ctx).await {
                        f.fault("http call response", &fault, &ctx.request_id);
                        match Self::fail(f, ctx) {
                            Start::Stop(flow) => return flow,
                            _ => continue,
                        }
                    }
                    if let Some(flow) = Self::finish(f, vm, id, paused, req, ctx) {
                        return flow;
                    }
                }
                Start::Skip => {}
                Start::Stop(flow) => return flow,
            }
        }
        Flow::Continue
    }

    fn request_body(&self, body: &mut Option<bytes::Bytes>, end: bool, ctx: &mut PluginCtx) -> Result<(), Answer> {
        for f in self.filters.iter().filter(|f| f.has_request_body) {
            if let Err((rejection, e)) = self.filter_request_body(f, body, end, ctx) {
                ctx.rejection = Some(rejection);
                return Err(e);
            }
        }
        Ok(())
    }

    fn response(&self, resp: &mut ResponseHeader, ctx: &PluginCtx) {
        for f in self.filters.iter().filter(|f| f.has_response) {
            let Some(held) = self.held(f, ctx) else { continue };
            let mut slot = held.slot.lock().unwrap_or_else(|p| p.into_inner());
            let Some((vm, id)) = slot.as_mut() else { continue };
            let s = vm.state();
            s.response = Some(hmap::Map::new(&maps::response_slices(resp)));
            let no_body = resp.headers.get(http::header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() == b"0");
            if let Err(fault) = vm.headers(*id, true, no_body) {
                // The status line may already be decided: the response goes out as it was.
                f.fault("response headers", &fault, &ctx.request_id);
                *slot = None;
                continue;
            }
            let s = vm.state();
            s.local = None;
            if let Some(m) = s.response.take() {
                maps::apply_response(resp, m.outcome());
            }
            if f.has_response_body {
                s.response = Some(hmap::Map::new(&maps::response_slices(resp)));
            }
        }
    }

    fn response_body(&self, body: &mut Option<bytes::Bytes>, end: bool, ctx: &PluginCtx) -> Result<(), &'static str> {
        for f in self.filters.iter().filter(|f| f.has_response_body) {
            self.filter_response_body(f, body, end, ctx)?;
        }
        Ok(())
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
