//! The web console's files, compiled into the binary: it works offline and cannot drift
//! from the API it calls. Strict CSP (no inline script, no other origin) and no framing.

use super::reply;
use http::{Response, StatusCode};

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/console.js");
const STYLE: &str = include_str!("ui/console.css");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn serve(path: &str) -> Response<Vec<u8>> {
    let (body, kind) = match path {
        "/ui" | "/ui/" | "/ui/index.html" => (INDEX, "text/html; charset=utf-8"),
        "/ui/console.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/ui/console.css" => (STYLE, "text/css; charset=utf-8"),
        _ => ("not found\n", "text/plain"),
    };
    let status = if body == "not found\n" {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    let mut r = reply(status, kind, body.as_bytes().to_vec());
    let h = r.headers_mut();
    h.insert("content-security-policy", http::HeaderValue::from_static(CSP));
    h.insert("x-frame-options", http::HeaderValue::from_static("DENY"));
    h.insert("x-content-type-options", http::HeaderValue::from_static("nosniff"));
    h.insert("referrer-policy", http::HeaderValue::from_static("no-referrer"));
    r
}
