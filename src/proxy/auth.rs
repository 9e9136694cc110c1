//! The authentication gate: runs once the route's auth plugins have had their turn.

use crate::snapshot::Route;
use gatehouse_plugins::consumers::Consumer;
use gatehouse_plugins::{Answer, PluginCtx};
use std::sync::Arc;

/// `None` when someone authenticated (or an anonymous consumer applies); otherwise the 401,
/// with one `WWW-Authenticate` challenge per auth scheme the route accepts.
pub fn gate(route: &Route, ctx: &mut PluginCtx) -> Option<Answer> {
    if ctx.consumer.is_some() {
        return None;
    }
    let auth = route.plugins.iter().filter(|p| p.is_auth());
    if let Some(name) = auth.clone().find_map(|p| p.anonymous()) {
        let consumer = ctx
            .consumers
            .by_name(name)
            .cloned()
            .unwrap_or_else(|| Arc::new(Consumer::named(name)));
        ctx.consumer = Some(consumer);
        return None;
    }
    ctx.rejection = Some("unauthenticated");
    let mut a = Answer::error(401, ctx.auth_error.unwrap_or("authentication required"));
    for c in auth.filter_map(|p| p.challenge()) {
        a.headers.push((http::header::WWW_AUTHENTICATE, c));
    }
    Some(a)
}
