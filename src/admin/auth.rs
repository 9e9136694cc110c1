//! Who may call what on the admin listener.
//!
//! Reads: anyone on a loopback admin address when no token is configured, else any token.
//! Writes (every method but GET and HEAD): always a token with the `write` role, sent
//! with `Content-Type: application/json`, which a cross-site form cannot send without a
//! CORS preflight the admin API never answers; and, from a browser, only from the admin
//! listener's own origin. `/healthz` and the console's static files are open: they reveal
//! nothing, and the console logs in with a token it then sends on every API call.

use crate::config::Role;
use http::{Method, StatusCode};
use pingora_http::RequestHeader;

/// The token a call was made with: its name goes to the audit log.
pub struct Caller {
    pub name: String,
    pub role: Role,
}

pub type Refusal = (StatusCode, &'static str);

/// Compares digests of both, without an early exit: the time taken reveals neither how
/// much of a guess matched nor how long the token is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let digest = gatehouse_plugins::consumers::key_digest;
    let (x, y) = (digest(a), digest(b));
    x.iter().zip(y.iter()).fold(0u8, |acc, (p, q)| acc | (p ^ q)) == 0
}

/// Whether the call changes state (config writes, reload, purge, usage reset).
pub fn changes_state(method: &Method) -> bool {
    *method != Method::GET && *method != Method::HEAD
}

/// Paths anyone may GET.
fn open(req: &RequestHeader) -> bool {
    let p = req.uri.path();
    req.method == Method::GET && (p == "/healthz" || p == "/ui" || p.starts_with("/ui/"))
}

pub fn authorize(tokens: &[(String, String, Role)], req: &RequestHeader) -> Result<Caller, Refusal> {
    if open(req) {
        return Ok(Caller {
            name: String::new(),
            role: Role::Read,
        });
    }
    let write = changes_state(&req.method);
    if tokens.is_empty() {
        // Without a token only the loopback address answers reads; a page on another site
        // that rebinds its DNS name to 127.0.0.1 would still send its own name as Host.
        if !loopback_host(req) {
            return Err((
                StatusCode::FORBIDDEN,
                "without an admin token, only a loopback Host may call the admin API",
            ));
        }
        return if write {
            Err((
                StatusCode::FORBIDDEN,
                "state-changing admin calls need admin.tokens in the config (use SIGHUP to reload without one)",
            ))
        } else {
            Ok(Caller {
                name: "anonymous".into(),
                role: Role::Read,
            })
        };
    }
    let given = req
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .unwrap_or("");
    // Every token is compared, so the time does not tell which one came close.
    let mut found = None;
    for (name, value, role) in tokens {
        if constant_time_eq(given.as_bytes(), value.as_bytes()) && found.is_none() {
            found = Some(Caller {
                name: name.clone(),
                role: *role,
            });
        }
    }
    let Some(caller) = found else {
        return Err((StatusCode::UNAUTHORIZED, "admin token required"));
    };
    if write {
        if caller.role != Role::Write {
            return Err((StatusCode::FORBIDDEN, "this admin token is read-only"));
        }
        let json = req
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        // DELETE carries no body; a cross-site page cannot send one without a preflight.
        if !json && req.method != Method::DELETE {
            return Err((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "state-changing admin calls need Content-Type: application/json",
            ));
        }
        if !same_origin(req) {
            return Err((StatusCode::FORBIDDEN, "cross-origin admin calls are refused"));
        }
    }
    Ok(caller)
}

fn loopback_host(req: &RequestHeader) -> bool {
    let host = req.headers.get(http::header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A browser names the page that sent a request in `Origin`; only the console itself,
/// served from this listener, may write. Clients that send no `Origin` (curl) pass.
fn same_origin(req: &RequestHeader) -> bool {
    let Some(origin) = req.headers.get(http::header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = req.headers.get(http::header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    !host.is_empty() && authority.eq_ignore_ascii_case(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, path.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.insert_header(k.to_string(), v.to_string()).unwrap();
        }
        r
    }

    fn tokens() -> Vec<(String, String, Role)> {
        vec![
            ("ops".into(), "write-token-0123456789".into(), Role::Write),
            ("viewer".into(), "read-token-0123456789".into(), Role::Read),
        ]
    }

    #[test]
    fn roles_decide_writes() {
        let t = tokens();
        let json = ("content-type", "application/json");
        let read = ("authorization", "Bearer read-token-0123456789");
        let write = ("authorization", "Bearer write-token-0123456789");
        assert_eq!(authorize(&t, &req("GET", "/status", &[read])).unwrap().name, "viewer");
        assert_eq!(
            authorize(&t, &req("POST", "/reload", &[read, json])).err().unwrap().0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(authorize(&t, &req("POST", "/reload", &[write, json])).unwrap().name, "ops");
        assert_eq!(
            authorize(&t, &req("GET", "/status", &[])).err().unwrap().0,
            StatusCode::UNAUTHORIZED
        );
        assert!(authorize(&t, &req("GET", "/ui/console.js", &[])).is_ok());
    }

    #[test]
    fn without_tokens_only_a_loopback_host_may_read() {
        assert!(authorize(&[], &req("GET", "/config", &[("host", "127.0.0.1:9901")])).is_ok());
        assert!(authorize(&[], &req("GET", "/config", &[("host", "localhost:9901")])).is_ok());
        let rebound = authorize(&[], &req("GET", "/config", &[("host", "attacker.example:9901")]));
        assert_eq!(rebound.err().unwrap().0, StatusCode::FORBIDDEN);
    }

    #[test]
    fn a_cross_origin_write_is_refused() {
        let t = tokens();
        let h = [
            ("authorization", "Bearer write-token-0123456789"),
            ("content-type", "application/json"),
            ("host", "127.0.0.1:9901"),
        ];
        let mut evil = h.to_vec();
        evil.push(("origin", "http://evil.example"));
        assert_eq!(
            authorize(&t, &req("POST", "/reload", &evil)).err().unwrap().0,
            StatusCode::FORBIDDEN
        );
        let mut own = h.to_vec();
        own.push(("origin", "http://127.0.0.1:9901"));
        assert!(authorize(&t, &req("POST", "/reload", &own)).is_ok());
    }
}
