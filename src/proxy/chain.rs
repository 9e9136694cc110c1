//! Running a plugin's phase, with a panic caught where it happens: the request gets a 500
//! (when an answer can still be written), `gatehouse_panics_total` counts it, the log names
//! the plugin, and the connection and process go on. Catching costs nothing until a panic.

use crate::metrics::METRICS;
use futures_util::FutureExt;
use gatehouse_plugins::{Flow, Plugin, PluginCtx};
use pingora_http::{RequestHeader, ResponseHeader};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// A plugin panicked in this phase (the log line names it).
#[derive(Debug)]
pub struct Panicked;

fn caught(plugin: &dyn Plugin, phase: &str) -> Panicked {
    METRICS.panics.inc();
    log::error!("plugin {} panicked in its {phase} phase (answered 500)", plugin.name());
    Panicked
}

pub async fn request(p: &Arc<dyn Plugin>, req: &mut RequestHeader, ctx: &mut PluginCtx) -> Result<Flow, Panicked> {
    let flow = if p.is_async() {
        AssertUnwindSafe(p.request_async(req, ctx)).catch_unwind().await
    } else {
        catch_unwind(AssertUnwindSafe(|| p.request(req, ctx)))
    };
    flow.map_err(|_| caught(&**p, "request"))
}

pub fn upstream_request(p: &Arc<dyn Plugin>, req: &mut RequestHeader, ctx: &PluginCtx) -> Result<(), Panicked> {
    catch_unwind(AssertUnwindSafe(|| p.upstream_request(req, ctx))).map_err(|_| caught(&**p, "upstream request"))
}

pub fn response(p: &Arc<dyn Plugin>, resp: &mut ResponseHeader, ctx: &PluginCtx) -> Result<(), Panicked> {
    catch_unwind(AssertUnwindSafe(|| p.response(resp, ctx))).map_err(|_| caught(&**p, "response"))
}

/// Body hooks: a panic is an error for the request (a 500 while the client waits for an
/// answer, a cut response once one is on its way).
pub fn request_body(
    p: &Arc<dyn Plugin>,
    body: &mut Option<bytes::Bytes>,
    end: bool,
    ctx: &mut PluginCtx,
) -> Result<(), gatehouse_plugins::Answer> {
    catch_unwind(AssertUnwindSafe(|| p.request_body(body, end, ctx))).unwrap_or_else(|_| {
        caught(&**p, "request body");
        Err(gatehouse_plugins::Answer::error(500, "internal error"))
    })
}

pub fn response_body(p: &Arc<dyn Plugin>, body: &mut Option<bytes::Bytes>, end: bool, ctx: &PluginCtx) -> Result<(), &'static str> {
    catch_unwind(AssertUnwindSafe(|| p.response_body(body, end, ctx))).unwrap_or_else(|_| {
        caught(&**p, "response body");
        Err("plugin panicked")
    })
}

pub fn log(p: &Arc<dyn Plugin>, status: u16, ctx: &PluginCtx) {
    if catch_unwind(AssertUnwindSafe(|| p.log(status, ctx))).is_err() {
        caught(&**p, "log");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_plugins::Priority;

    struct Faulty;

    #[async_trait::async_trait]
    impl Plugin for Faulty {
        fn name(&self) -> &'static str {
            "faulty"
        }
        fn priority(&self) -> Priority {
            Priority(0)
        }
        fn request(&self, req: &mut RequestHeader, _ctx: &mut PluginCtx) -> Flow {
            // What a slicing bug on client input does.
            let q = req.uri.query().unwrap_or("");
            let _ = &q[1..2];
            Flow::Continue
        }
        fn response(&self, _resp: &mut ResponseHeader, _ctx: &PluginCtx) {
            panic!("response bug")
        }
    }

    #[tokio::test]
    async fn a_panicking_plugin_is_caught_and_counted() {
        // The two panic messages this prints are expected.
        let p: Arc<dyn Plugin> = Arc::new(Faulty);
        let mut req = RequestHeader::build("GET", b"/k?a", None).unwrap();
        let mut ctx = PluginCtx::new(std::net::Ipv4Addr::LOCALHOST.into(), Arc::from("r"), String::new());
        let before = METRICS.panics.get();
        assert!(request(&p, &mut req, &mut ctx).await.is_err());
        let mut resp = ResponseHeader::build(200, None).unwrap();
        assert!(response(&p, &mut resp, &ctx).is_err());
        assert_eq!(METRICS.panics.get(), before + 2);
    }
}
