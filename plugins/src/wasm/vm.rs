//! One filter instance (a wasmtime store and instance, its root context configured) and the
//! state the host functions see while it runs a callback. Instances are pooled per filter
//! and reused across requests; one that traps or hits a limit is dropped, never reused.

use super::abi;
use super::shared::Shared;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::{Instance, InstancePre, Store, StoreLimits, StoreLimitsBuilder, TypedFunc};

/// A response the filter asked for (`proxy_send_local_response`).
pub struct Local {
    pub status: u16,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Vec<u8>,
}

use super::hmap::Map;
/// `proxy_on_http_call_response(root, token, headers, body size, trailers)`.
type OnCallResponse = TypedFunc<(i32, i32, i32, i32, i32), ()>;

/// What the host functions read and write during one callback.
pub struct State {
    pub shared: Arc<Shared>,
    limits: StoreLimits,
    /// Names lower-case; pseudo-headers (`:path`, `:method`, `:authority`, `:status`) first.
    pub request: Option<Map>,
    pub response: Option<Map>,
    pub properties: Vec<(&'static str, Vec<u8>)>,
    pub local: Option<Local>,
    /// The body bytes buffered and not yet released, during a body callback (None outside
    /// one, so a filter reading a body it was not given gets NotFound).
    pub request_body: Option<Vec<u8>>,
    pub response_body: Option<Vec<u8>>,
    /// `proxy_http_call` is allowed (request headers and call-response callbacks).
    pub can_call: bool,
    /// The filter resumed its paused request (`proxy_continue_request`/`_stream`).
    pub resumed: bool,
    pub calls: Vec<(u32, crate::callout::CallRequest)>,
    next_token: u32,
    /// The answer `proxy_on_http_call_response` is reading: headers (`:status` first), body.
    pub call_response: Option<(Map, Vec<u8>)>,
    /// The guest's exported memory and allocator, resolved once at instantiation.
    pub memory: Option<wasmtime::Memory>,
    pub alloc: Option<TypedFunc<i32, i32>>,
}

impl State {
    pub fn map(&mut self, kind: i32) -> Option<&mut Map> {
        match kind {
            abi::MAP_REQUEST_HEADERS => self.request.as_mut(),
            abi::MAP_RESPONSE_HEADERS => self.response.as_mut(),
            abi::MAP_HTTP_CALL_RESPONSE_HEADERS => self.call_response.as_mut().map(|(h, _)| h),
            _ => None,
        }
    }

    pub fn body(&self, kind: i32) -> Option<&Vec<u8>> {
        match kind {
            abi::BUFFER_REQUEST_BODY => self.request_body.as_ref(),
            abi::BUFFER_RESPONSE_BODY => self.response_body.as_ref(),
            abi::BUFFER_HTTP_CALL_RESPONSE_BODY => self.call_response.as_ref().map(|(_, b)| b),
            _ => None,
        }
    }

    /// Only the bodies passing through may be rewritten, not a call's answer.
    pub fn body_mut(&mut self, kind: i32) -> Option<&mut Vec<u8>> {
        match kind {
            abi::BUFFER_REQUEST_BODY => self.request_body.as_mut(),
            abi::BUFFER_RESPONSE_BODY => self.response_body.as_mut(),
            _ => None,
        }
    }

    /// Queues a call for the host to make once the callback returns; the token names it in
    /// `proxy_on_http_call_response`.
    pub fn queue_call(&mut self, req: crate::callout::CallRequest) -> u32 {
        self.next_token = self.next_token.wrapping_add(1).max(1);
        self.calls.push((self.next_token, req));
        self.next_token
    }

    /// A property by its path (segments joined by NUL, as the ABI sends them).
    pub fn property(&self, path: &[u8]) -> Option<Vec<u8>> {
        let mut dotted: Vec<u8> = path.iter().map(|b| if *b == 0 { b'.' } else { *b }).collect();
        if dotted.last() == Some(&b'.') {
            dotted.pop();
        }
        match dotted.as_slice() {
            b"plugin_name" => return Some(self.shared.name.as_bytes().to_vec()),
            b"plugin_root_id" => return Some(self.shared.root_id.as_bytes().to_vec()),
            _ => {}
        }
        self.properties.iter().find(|(k, _)| k.as_bytes() == dotted).map(|(_, v)| v.clone())
    }
}

/// Why a callback did not finish.
#[derive(Debug)]
pub enum Fault {
    /// `max_time` passed (epoch interruption).
    Timeout,
    /// `max_memory` refused a growth.
    Memory,
    /// The guest trapped (unreachable, a bad access, an abort).
    Trap(String),
}

impl Fault {
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Timeout => "timeout",
            Fault::Memory => "memory",
            Fault::Trap(_) => "trap",
        }
    }

    fn from(e: wasmtime::Error) -> Fault {
        if matches!(e.downcast_ref::<wasmtime::Trap>(), Some(wasmtime::Trap::Interrupt)) {
            return Fault::Timeout;
        }
        let text = format!("{e:#}");
        if text.contains("memory") && (text.contains("limit") || text.contains("grow")) {
            return Fault::Memory;
        }
        Fault::Trap(text)
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Timeout => write!(f, "max_time exceeded"),
            Fault::Memory => write!(f, "max_memory exceeded"),
            Fault::Trap(t) => write!(f, "trap: {t}"),
        }
    }
}

const ROOT: i32 = 1;

/// Table entries an instance may hold (a function table of this size is a few MiB).
const TABLE_ELEMENTS: usize = 100_000;

/// An optional callback: absent is fine; present with another signature refuses the module
/// (skipping it silently could skip an auth check).
fn callback<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
    instance: &Instance,
    store: &mut Store<State>,
    name: &str,
) -> Result<Option<TypedFunc<P, R>>, String> {
    match instance.get_func(&mut *store, name) {
        None => Ok(None),
        Some(f) => f
            .typed::<P, R>(&*store)
            .map(Some)
            .map_err(|e| format!("{name} has the wrong signature for proxy-wasm 0.2: {e:#}")),
    }
}

pub struct Vm {
    store: Store<State>,
    on_create: TypedFunc<(i32, i32), ()>,
    on_request_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_response_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_request_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_response_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_call_response: Option<OnCallResponse>,
    on_log: Option<TypedFunc<i32, ()>>,
    on_done: Option<TypedFunc<i32, i32>>,
    on_delete: Option<TypedFunc<i32, ()>>,
    next_id: i32,
    /// Epoch ticks (1 ms each) a callback may run.
    ticks: u64,
}

impl Vm {
    /// Instantiates and configures a root context: the start function, `proxy_on_vm_start`
    /// and `proxy_on_configure` (a filter that answers false refuses its configuration).
    pub fn new(pre: &InstancePre<State>, shared: Arc<Shared>, max_memory: usize, max_time: Duration) -> Result<Vm, String> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(max_memory)
            // One memory and small tables: multi-memory or a table grown by millions of
            // entries would hold host memory `max_memory` does not count.
            .memories(1)
            .tables(4)
            .table_elements(TABLE_ELEMENTS)
            .trap_on_grow_failure(true)
            .instances(1)
            .build();
        let state = State {
            shared: shared.clone(),
            limits,
            request: None,
            response: None,
            properties: Vec::new(),
            local: None,
            request_body: None,
            response_body: None,
            can_call: false,
            resumed: false,
            calls: Vec::new(),
            next_token: 0,
            call_response: None,
            memory: None,
            alloc: None,
        };
        let mut store = Store::new(pre.module().engine(), state);
        store.limiter(|s| &mut s.limits);
        let ticks = (max_time.as_millis() as u64).max(1) + 1;
        // Start-up gets more room than a callback (runtimes initialise their heaps), within
        // a second: a new instance may be made on the request path.
        store.set_epoch_deadline(ticks.saturating_mul(20).clamp(50, 1000));
        let instance: Instance = pre.instantiate(&mut store).map_err(|e| format!("instantiating: {e:#}"))?;
        let memory = instance.get_memory(&mut store, "memory");
        let alloc = ["proxy_on_memory_allocate", "malloc"]
            .iter()
            .find_map(|n| instance.get_typed_func::<i32, i32>(&mut store, n).ok());
        store.data_mut().memory = memory;
        store.data_mut().alloc = alloc;
        for start in ["_initialize", "_start"] {
            if let Ok(f) = instance.get_typed_func::<(), ()>(&mut store, start) {
                f.call(&mut store, ()).map_err(|e| format!("{start}: {}", Fault::from(e)))?;
                break;
            }
        }
        let on_create = instance
            .get_typed_func::<(i32, i32), ()>(&mut store, "proxy_on_context_create")
            .map_err(|e| format!("proxy_on_context_create: {e:#}"))?;
        let config_size = shared.config.len() as i32;
        on_create
            .call(&mut store, (ROOT, 0))
            .map_err(|e| format!("proxy_on_context_create: {}", Fault::from(e)))?;
        for (name, size) in [("proxy_on_vm_start", 0), ("proxy_on_configure", config_size)] {
            if let Some(f) = callback::<(i32, i32), i32>(&instance, &mut store, name)? {
                let ok = f
                    .call(&mut store, (ROOT, size))
                    .map_err(|e| format!("{name}: {}", Fault::from(e)))?;
                if ok == 0 {
                    return Err(format!("{name} returned false: the filter refused its configuration"));
                }
            }
        }
        type Cb3 = (i32, i32, i32);
        let on_request_headers = callback::<Cb3, i32>(&instance, &mut store, "proxy_on_request_headers")?;
        let on_response_headers = callback::<Cb3, i32>(&instance, &mut store, "proxy_on_response_headers")?;
        let on_request_body = callback::<Cb3, i32>(&instance, &mut store, "proxy_on_request_body")?;
        let on_response_body = callback::<Cb3, i32>(&instance, &mut store, "proxy_on_response_body")?;
        let on_call_response = callback::<(i32, i32, i32, i32, i32), ()>(&instance, &mut store, "proxy_on_http_call_response")?;
        let on_log = callback::<i32, ()>(&instance, &mut store, "proxy_on_log")?;
        let on_done = callback::<i32, i32>(&instance, &mut store, "proxy_on_done")?;
        let on_delete = callback::<i32, ()>(&instance, &mut store, "proxy_on_delete")?;
        Ok(Vm {
            store,
            on_create,
            on_request_headers,
            on_response_headers,
            on_request_body,
            on_response_body,
            on_call_response,
            on_log,
            on_done,
            on_delete,
            next_id: ROOT + 1,
            ticks,
        })
    }

    pub fn state(&mut self) -> &mut State {
        self.store.data_mut()
    }

    /// A new HTTP context for one request.
    pub fn begin(&mut self) -> Result<i32, Fault> {
        let id = self.next_id;
        self.next_id = if self.next_id == i32::MAX { ROOT + 1 } else { self.next_id + 1 };
        self.store.set_epoch_deadline(self.ticks);
        self.on_create.call(&mut self.store, (id, ROOT)).map_err(Fault::from)?;
        Ok(id)
    }

    /// `proxy_on_request_headers` (or its response twin) on the map in the state; returns
    /// the action.
    pub fn headers(&mut self, id: i32, response: bool, end_of_stream: bool) -> Result<i32, Fault> {
        let (f, map) = if response {
            (self.on_response_headers.clone(), self.store.data_mut().response.as_mut())
        } else {
            (self.on_request_headers.clone(), self.store.data_mut().request.as_mut())
        };
        let Some(f) = f else { return Ok(abi::ACTION_CONTINUE) };
        let n = map.map_or(0, |m| m.count()) as i32;
        self.store.set_epoch_deadline(self.ticks);
        f.call(&mut self.store, (id, n, i32::from(end_of_stream))).map_err(Fault::from)
    }

    /// `proxy_on_request_body` (or its response twin) on the bytes buffered in the state;
    /// returns the action.
    pub fn body(&mut self, id: i32, response: bool, end_of_stream: bool) -> Result<i32, Fault> {
        let (f, buf) = if response {
            (self.on_response_body.clone(), self.store.data().response_body.as_ref())
        } else {
            (self.on_request_body.clone(), self.store.data().request_body.as_ref())
        };
        let Some(f) = f else { return Ok(abi::ACTION_CONTINUE) };
        let n = buf.map_or(0, Vec::len) as i32;
        self.store.set_epoch_deadline(self.ticks);
        f.call(&mut self.store, (id, n, i32::from(end_of_stream))).map_err(Fault::from)
    }

    /// `proxy_on_http_call_response` for `token`, with the answer in the state (no headers
    /// when the call failed, as Envoy reports it). The root context receives it: the SDKs
    /// route it to the context that made the call.
    pub fn call_response(&mut self, token: u32) -> Result<(), Fault> {
        let Some(f) = self.on_call_response.clone() else { return Ok(()) };
        let (n, size) = self
            .store
            .data_mut()
            .call_response
            .as_mut()
            .map_or((0, 0), |(h, b)| (h.count() as i32, b.len() as i32));
        self.store.set_epoch_deadline(self.ticks);
        f.call(&mut self.store, (ROOT, token as i32, n, size, 0)).map_err(Fault::from)
    }

    /// `proxy_on_log`, `proxy_on_done` and `proxy_on_delete`: the context's end.
    pub fn end(&mut self, id: i32, log: bool) -> Result<(), Fault> {
        self.store.set_epoch_deadline(self.ticks);
        if log {
            if let Some(f) = self.on_log.clone() {
                f.call(&mut self.store, id).map_err(Fault::from)?;
            }
        }
        if let Some(f) = self.on_done.clone() {
            f.call(&mut self.store, id).map_err(Fault::from)?;
        }
        if let Some(f) = self.on_delete.clone() {
            f.call(&mut self.store, id).map_err(Fault::from)?;
        }
        let s = self.store.data_mut();
        s.request = None;
        s.response = None;
        s.local = None;
        s.properties.clear();
        s.request_body = None;
        s.response_body = None;
        s.calls.clear();
        s.call_response = None;
        s.can_call = false;
        Ok(())
    }
}
