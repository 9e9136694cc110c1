//! The admin listener: `/healthz`, `/metrics`, `/status`, `POST /reload`, `POST
//! /cache/purge`, `/usage/CONSUMER`, `/analytics`, `/config` (reads and writes) and the
//! console at `/ui` (see `auth` for who may call what).

mod audit;
mod auth;
mod config_api;
mod metering;
mod redact;
mod ui;

use crate::live::Live;
use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde_json::json;
use std::sync::Arc;

pub struct Admin {
    pub live: Arc<Live>,
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn json_reply(status: StatusCode, v: serde_json::Value) -> Response<Vec<u8>> {
    reply(status, "application/json", v.to_string().into_bytes())
}

fn refused(status: StatusCode, message: &str) -> Response<Vec<u8>> {
    let mut r = json_reply(status, json!({"error": message, "status": status.as_u16()}));
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert("www-authenticate", http::HeaderValue::from_static("Bearer"));
    }
    r
}

/// The request body, refused past `limit` bytes.
async fn read_body(session: &mut ServerSession, limit: usize) -> Result<Vec<u8>, Response<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() > limit {
                    return Err(json_reply(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        json!({"error": format!("request body over {limit} bytes"), "status": 413}),
                    ));
                }
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                return Err(json_reply(
                    StatusCode::BAD_REQUEST,
                    json!({"error": format!("cannot read the request body: {e}"), "status": 400}),
                ))
            }
        }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let snap = self.live.load();
        let req = session.req_header();
        let caller = match auth::authorize(&snap.admin_tokens, req) {
            Ok(c) => c,
            Err((status, message)) => return refused(status, message),
        };
        let method = req.method.clone();
        let path = req.uri.path().to_string();
        let ui = snap.file.admin.as_ref().is_some_and(|a| a.ui);
        let response = match (method.clone(), path.as_str()) {
            (Method::GET, p) if ui && (p == "/ui" || p.starts_with("/ui/")) => ui::serve(p),
            (Method::GET, "/session") => json_reply(
                StatusCode::OK,
                json!({"token": caller.name, "role": caller.role, "version": env!("CARGO_PKG_VERSION")}),
            ),
            (Method::GET, "/config") => config_api::get_config(self),
            (Method::GET, "/config/diff") => config_api::diff(self),
            (Method::POST, "/config/validate") => config_api::validate(self, session).await,
            (m, p) if p.starts_with("/config/") => match config_api::entry_path(&p["/config/".len()..]) {
                None => json_reply(
                    StatusCode::NOT_FOUND,
                    json!({"error": "not found: config entries are /config/{routes,upstreams,consumers,plugins}/NAME", "status": 404}),
                ),
                Some((section, name)) => match m {
                    Method::GET => config_api::get_entry(self, section, &name),
                    Method::PUT | Method::DELETE => config_api::write(self, session, &caller, section, name).await,
                    _ => json_reply(
                        StatusCode::METHOD_NOT_ALLOWED,
                        json!({"error": "GET, PUT or DELETE", "status": 405}),
                    ),
                },
            },
            // Ready once the stores are open and loaded (a load balancer or the tests wait
            // for it); until then the quota counts of earlier runs are not known yet.
            (Method::GET, "/healthz") if !gatehouse_plugins::store::ready() => {
                json_reply(StatusCode::SERVICE_UNAVAILABLE, json!({"status": "starting"}))
            }
            (Method::GET, "/healthz") => json_reply(StatusCode::OK, json!({"status": "ok"})),
            (Method::GET, "/metrics") => reply(StatusCode::OK, "text/plain; version=0.0.4", crate::metrics::render()),
            (Method::GET, "/status") => json_reply(StatusCode::OK, self.status()),
            (Method::GET, "/alerts") => json_reply(StatusCode::OK, alerts()),
            (Method::POST, "/reload") => {
                let live = self.live.clone();
                let result = tokio::task::spawn_blocking(move || live.reload()).await;
                match result {
                    Ok(Ok(r)) => json_reply(
                        StatusCode::OK,
                        json!({"result": "reloaded", "hash": r.hash, "changed": r.changed, "needs_upgrade": r.needs_upgrade}),
                    ),
                    Ok(Err(errors)) => json_reply(
                        StatusCode::BAD_REQUEST,
                        json!({"error": "config refused; the previous config keeps serving", "status": 400, "errors": errors}),
                    ),
                    Err(e) => json_reply(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        json!({"error": format!("reload task failed: {e}"), "status": 500}),
                    ),
                }
            }
            (Method::POST, "/cache/purge") => purge(session, snap.file.server.path_escaped_slash).await,
            (Method::GET, "/analytics") => metering::overview(session.req_header()),
            (Method::GET, p) if p.starts_with("/analytics/consumers/") => {
                metering::consumer(session.req_header(), &p["/analytics/consumers/".len()..], &snap).await
            }
            (Method::GET, p) if p.starts_with("/usage/") && metering::query(session.req_header(), "period").is_some() => {
                metering::usage(session.req_header(), &p["/usage/".len()..], &snap)
            }
            (m, p) if p.starts_with("/usage/") => usage(&m, &p["/usage/".len()..]).await,
            _ => json_reply(StatusCode::NOT_FOUND, json!({"error": "not found", "status": 404})),
        };
        // Config writes record themselves before they are made; the other state-changing
        // calls are recorded once they succeeded.
        if method == Method::POST && response.status().is_success() && !path.starts_with("/config/") {
            audit::record_call(self, &caller, method.as_str(), &path, &snap.hash);
        }
        response
    }
}

impl Admin {
    fn status(&self) -> serde_json::Value {
        let snap = self.live.load();
        let clusters: serde_json::Map<String, serde_json::Value> = snap
            .clusters
            .iter()
            .map(|(name, c)| {
                let targets: Vec<_> = c
                    .health_summary()
                    .into_iter()
                    .map(|(t, healthy, in_flight, ejected, ejections)| {
                        json!({"addr": &*t, "healthy": healthy, "in_flight": in_flight, "ejected": ejected, "ejections": ejections})
                    })
                    .collect();
                (
                    name.clone(),
                    json!({"balance": c.config.balance, "healthy": c.healthy_count(), "targets": targets}),
                )
            })
            .collect();
        let routes: Vec<_> = snap
            .file
            .routes
            .iter()
            .map(|(name, r)| json!({"name": name, "hosts": r.hosts, "paths": r.paths, "methods": r.methods, "upstream": r.upstream, "plugins": r.plugins.keys().collect::<Vec<_>>()}))
            .collect();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "config": {
                "path": self.live.path.display().to_string(),
                "hash": snap.hash,
                "loaded_at": humantime::format_rfc3339_seconds(snap.loaded_at).to_string(),
            },
            "reload": self.live.status(),
            "routes": routes,
            "clusters": clusters,
            "metering": crate::metering::status(),
            "discovery": crate::discovery::status(),
            "config_source": crate::fleet::status(),
            "certificates": snap.certs.certs.iter().chain(self.live.acme.cert().as_ref()).map(|c| json!({
                "name": c.name,
                "hosts": c.hosts,
                "issuer": c.issuer,
                "serial": c.serial,
                "not_after": humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(c.not_after.max(0) as u64)).to_string(),
                "default": c.default,
                "source": c.source,
            })).collect::<Vec<_>>(),
        })
    }
}

/// `GET /alerts`: what is pending or firing at the last evaluation.
fn alerts() -> serde_json::Value {
    let list: Vec<_> = crate::alerts::active()
        .into_iter()
        .map(|a| {
            json!({
                "rule": a.rule,
                "state": match a.phase { crate::alerts::state::Phase::Pending => "pending", crate::alerts::state::Phase::Firing => "firing" },
                "labels": a.labels,
                "annotations": a.annotations,
                "activeSince": humantime::format_rfc3339_millis(a.active_since).to_string(),
                "firedAt": a.fired_at.map(|t| humantime::format_rfc3339_millis(t).to_string()),
                "fingerprint": a.fingerprint,
            })
        })
        .collect();
    json!({ "alerts": list })
}

/// `GET /usage/{consumer}` and `POST /usage/{consumer}/reset`.
async fn usage(method: &Method, rest: &str) -> Response<Vec<u8>> {
    use gatehouse_plugins::limits::quota;
    let (consumer, action) = match rest.split_once('/') {
        Some((c, a)) => (c, Some(a)),
        None => (rest, None),
    };
    if consumer.is_empty() {
        return json_reply(StatusCode::NOT_FOUND, json!({"error": "not found", "status": 404}));
    }
    match (method, action) {
        (&Method::GET, None) => match quota::usage(consumer).await {
            Ok(rows) => {
                let usage: Vec<_> = rows
                    .into_iter()
                    .map(|(scope, period, used)| json!({"scope": scope, "period": period, "used": used}))
                    .collect();
                json_reply(
                    StatusCode::OK,
                    json!({"consumer": consumer, "usage": usage, "unflushed": quota::unflushed()}),
                )
            }
            Err(e) => json_reply(StatusCode::SERVICE_UNAVAILABLE, json!({"error": e, "status": 503})),
        },
        (&Method::POST, Some("reset")) => match quota::reset(consumer).await {
            Ok(()) => json_reply(StatusCode::OK, json!({"consumer": consumer, "reset": true})),
            Err(e) => json_reply(StatusCode::SERVICE_UNAVAILABLE, json!({"error": e, "status": 503})),
        },
        _ => json_reply(StatusCode::NOT_FOUND, json!({"error": "not found", "status": 404})),
    }
}

/// `POST /cache/purge` with `{"host","path"}`, `{"host","prefix"}`, `{"tag"}` or `{"all":true}`.
async fn purge(session: &mut ServerSession, slash: crate::config::EscapedSlash) -> Response<Vec<u8>> {
    let body = match read_body(session, 64 * 1024).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut req: crate::cache::Purge = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return json_reply(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("invalid purge request: {e}"), "status": 400}),
            )
        }
    };
    if let Err(e) = req.normalize(slash) {
        return json_reply(StatusCode::BAD_REQUEST, json!({"error": e, "status": 400}));
    }
    match req.run() {
        Ok(n) => json_reply(StatusCode::OK, json!({"purged": n})),
        Err(e) => json_reply(StatusCode::BAD_REQUEST, json!({"error": e, "status": 400})),
    }
}
