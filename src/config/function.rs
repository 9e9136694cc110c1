//! `type = "aws_lambda"` upstreams: requests become Lambda Invoke calls (SigV4 signed)
//! instead of being proxied to targets. The keys sit in `[upstreams.NAME]` beside the
//! HTTP ones; this checks that a function upstream has what it needs and nothing that
//! only targets have.

use super::file::File;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamKind {
    #[default]
    Http,
    AwsLambda,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Payload {
    /// API Gateway HTTP API (payload format 2.0) event in, its response format out.
    #[default]
    ApigwV2,
    /// The request body is the payload; the function's answer is the response body.
    Raw,
}

pub(super) fn validate(f: &File, out: &mut Vec<(String, String)>) {
    for (name, r) in &f.routes {
        let Some(u) = r.upstream.as_ref().and_then(|u| f.upstreams.get(u)) else {
            continue;
        };
        if u.kind != UpstreamKind::AwsLambda {
            continue;
        }
        for (key, on) in [
            ("websocket", r.websocket),
            ("grpc", r.grpc),
            ("streaming", r.streaming),
            ("plugins.cache", r.plugins.contains_key(crate::cache::PLUGIN)),
        ] {
            if on {
                out.push((format!("routes.{name}.{key}"), "not possible with a function upstream".into()));
            }
        }
    }
    for (name, u) in &f.upstreams {
        let base = format!("upstreams.{name}");
        let lambda_keys = [
            ("function", u.function.is_some()),
            ("region", u.region.is_some()),
            ("endpoint", u.endpoint.is_some()),
            ("access_key", u.access_key.is_some()),
            ("secret_key", u.secret_key.is_some()),
            ("session_token", u.session_token.is_some()),
            ("qualifier", u.qualifier.is_some()),
            ("payload", u.payload.is_some()),
        ];
        if u.kind != UpstreamKind::AwsLambda {
            for (k, set) in lambda_keys {
                if set {
                    out.push((format!("{base}.{k}"), "only with type = \"aws_lambda\"".into()));
                }
            }
            continue;
        }
        for (k, set) in [
            ("function", u.function.is_some()),
            ("region", u.region.is_some()),
            ("access_key", u.access_key.is_some()),
            ("secret_key", u.secret_key.is_some()),
        ] {
            if !set {
                out.push((format!("{base}.{k}"), "required with type = \"aws_lambda\"".into()));
            }
        }
        let target_keys = [
            ("targets", !u.targets.is_empty()),
            ("discovery", u.discovery.is_some()),
            ("health_check", u.health_check.is_some()),
            ("circuit_breaker", u.circuit_breaker.is_some()),
            ("hash_on", u.hash_on.is_some()),
            ("tls", u.tls),
            ("http2", u.http2),
        ];
        for (k, set) in target_keys {
            if set {
                out.push((
                    format!("{base}.{k}"),
                    "a function upstream has no targets: its endpoint is the Lambda API".into(),
                ));
            }
        }
        if let Some(fname) = &u.function {
            // Names, ARNs and partial ARNs: letters, digits, - _ : (AWS's own pattern).
            let ok = !fname.is_empty() && fname.len() <= 170 && fname.bytes().all(|c| c.is_ascii_alphanumeric() || b"-_:".contains(&c));
            if !ok {
                out.push((format!("{base}.function"), format!("`{fname}` is not a function name or ARN")));
            }
        }
        if let Some(q) = &u.qualifier {
            if q.is_empty() || !q.bytes().all(|c| c.is_ascii_alphanumeric() || b"-_$".contains(&c)) {
                out.push((format!("{base}.qualifier"), format!("`{q}` is not a version or alias")));
            }
        }
        if let Some(r) = &u.region {
            if r.is_empty() || !r.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-') {
                out.push((format!("{base}.region"), format!("`{r}` is not a region name")));
            }
        }
        if let Some(e) = &u.endpoint {
            match e.parse::<http::Uri>() {
                Ok(uri)
                    if matches!(uri.scheme_str(), Some("http" | "https"))
                        && uri.host().is_some()
                        && uri.path() == "/"
                        && uri.query().is_none() => {}
                _ => out.push((format!("{base}.endpoint"), format!("`{e}` is not an http(s)://host[:port] URL"))),
            }
        }
    }
}
