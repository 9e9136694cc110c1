//! Body callbacks: chunks buffered while a filter answers anything but `Continue`
//! (StopIterationAndBuffer, and the watermark and no-buffer stops, are all held here),
//! released as the filter left them when it answers `Continue` or the body ends, within the
//! filter's `max_body`.

use super::{abi, maps, Filter, OnError, Wasm};
use crate::{Answer, PluginCtx};
use std::sync::Arc;

/// The rejection reason for the access log and the answer.
type Refusal = (&'static str, Answer);

impl Wasm {
    /// One filter's turn on a request body chunk: buffered while it pauses, released
    /// (as it left it) when it continues or the body ends.
    pub(super) fn filter_request_body(
        &self,
        f: &Arc<Filter>,
        body: &mut Option<bytes::Bytes>,
        end: bool,
        ctx: &PluginCtx,
    ) -> Result<(), Refusal> {
        let Some(held) = self.held(f, ctx) else { return Ok(()) };
        let mut slot = held.slot.lock().unwrap_or_else(|p| p.into_inner());
        let Some((vm, id)) = slot.as_mut() else { return Ok(()) };
        let buf = vm.state().request_body.get_or_insert_with(Vec::new);
        if let Some(b) = body.as_ref() {
            buf.extend_from_slice(b);
        }
        if buf.len() > f.shared.max_body {
            return Err(("body_too_large", Answer::error(413, "request body is too large for the filter")));
        }
        match vm.body(*id, false, end) {
            Ok(action) => {
                let s = vm.state();
                if let Some(l) = s.local.take() {
                    return Err(("wasm_local_response", maps::local_answer(l)));
                }
                *body = Some(if action != abi::ACTION_CONTINUE && !end {
                    bytes::Bytes::new()
                } else {
                    s.request_body.take().map(bytes::Bytes::from).unwrap_or_default()
                });
            }
            Err(fault) => {
                let held_back = vm.state().request_body.take().unwrap_or_default();
                f.fault("request body", &fault, &ctx.request_id);
                *slot = None;
                if f.on_error == OnError::FailClosed {
                    return Err(("wasm_fault", Answer::error(500, "filter failed")));
                }
                *body = Some(bytes::Bytes::from(held_back));
            }
        }
        Ok(())
    }

    /// One filter's turn on a response body chunk. The header block is on its way: past
    /// `max_body` the body is cut (fail_closed) or goes on unfiltered (fail_open).
    pub(super) fn filter_response_body(
        &self,
        f: &Arc<Filter>,
        body: &mut Option<bytes::Bytes>,
        end: bool,
        ctx: &PluginCtx,
    ) -> Result<(), &'static str> {
        let Some(held) = self.held(f, ctx) else { return Ok(()) };
        let mut slot = held.slot.lock().unwrap_or_else(|p| p.into_inner());
        let Some((vm, id)) = slot.as_mut() else { return Ok(()) };
        let buf = vm.state().response_body.get_or_insert_with(Vec::new);
        if let Some(b) = body.as_ref() {
            buf.extend_from_slice(b);
        }
        let outcome = if buf.len() > f.shared.max_body {
            log::warn!(
                "wasm filter {}: response body past its max_body (request {})",
                f.name,
                ctx.request_id
            );
            Err(None)
        } else {
            vm.body(*id, true, end).map_err(Some)
        };
        match outcome {
            Ok(action) => {
                let s = vm.state();
                s.local = None;
                *body = Some(if action != abi::ACTION_CONTINUE && !end {
                    bytes::Bytes::new()
                } else {
                    s.response_body.take().map(bytes::Bytes::from).unwrap_or_default()
                });
            }
            Err(fault) => {
                let held_back = vm.state().response_body.take().unwrap_or_default();
                match fault {
                    Some(fault) => {
                        f.fault("response body", &fault, &ctx.request_id);
                        *slot = None;
                    }
                    // Over the limit: the instance is sound; it sees no more of this body.
                    None => {
                        if let Some((mut vm, id)) = slot.take() {
                            match vm.end(id, false) {
                                Ok(()) => f.give_back(vm),
                                Err(fault) => f.fault("done", &fault, &ctx.request_id),
                            }
                        }
                    }
                }
                if f.on_error == OnError::FailClosed {
                    return Err("filter failed on the response body");
                }
                *body = Some(bytes::Bytes::from(held_back));
            }
        }
        Ok(())
    }
}
