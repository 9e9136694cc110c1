//! `[routes.NAME.aggregate]`: one client request answered by calling several backends and
//! merging their JSON. The backend paths are templates whose values come from the request
//! the gateway has already authenticated, parsed here once so a request only fills them in.

use super::file::{File, Route};
use super::values::{Dur, Size};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AggregateCfg {
    /// The whole client request, every backend included.
    #[serde(default = "d_timeout")]
    pub timeout: Dur,
    #[serde(default)]
    pub merge: Merge,
    #[serde(default)]
    pub on_partial: OnPartial,
    /// Largest body read from one backend; a larger one counts as that backend failing.
    #[serde(default = "d_max_body")]
    pub max_body: Size,
    /// Add `"_errors": {"backend": "reason"}` to a partial answer.
    #[serde(default)]
    pub include_errors: bool,
    pub backends: Vec<BackendCfg>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendCfg {
    pub name: String,
    pub upstream: String,
    /// Origin-form path and query with `{consumer}`, `{path.N}`, `{query.NAME}` and
    /// `{header.NAME}` placeholders.
    pub path: String,
    #[serde(default = "d_method")]
    pub method: String,
    /// Defaults to the aggregate's timeout; never longer.
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Its failure fails the whole request with 502.
    #[serde(default)]
    pub required: bool,
    /// Top-level fields kept from this backend's object (or from each object of its array);
    /// empty keeps everything.
    #[serde(default)]
    pub allow: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Merge {
    /// `{"name": body, ...}`: keys cannot collide.
    #[default]
    Group,
    /// Every backend's object merged into one; on a shared key the backend declared later wins.
    Shallow,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum OnPartial {
    /// Answer with what arrived, `X-Gatehouse-Completed: false`.
    #[default]
    #[serde(rename = "200")]
    Answer,
    /// Any failed backend fails the request.
    #[serde(rename = "502")]
    Fail,
}

fn d_timeout() -> Dur {
    Dur(Duration::from_secs(2))
}
fn d_max_body() -> Size {
    Size(1 << 20)
}
fn d_method() -> String {
    "GET".into()
}

/// Where a placeholder's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The authenticated consumer's name.
    Consumer,
    /// The request path's segment N, counted from 0 (`/a/b`: 0 is `a`).
    Path(usize),
    Query(String),
    Header(http::HeaderName),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Lit(String),
    Var(Source),
}

/// A parsed backend path: literal text and placeholders in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(pub Vec<Part>);

impl Template {
    pub fn parse(s: &str) -> Result<Template, String> {
        if !s.starts_with('/') {
            return Err(format!("`{s}` must start with /"));
        }
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find(['{', '}']) {
            if rest.as_bytes()[open] == b'}' {
                return Err(format!("`}}` without `{{` in `{s}`"));
            }
            let close = rest[open..]
                .find('}')
                .map(|i| open + i)
                .ok_or_else(|| format!("unclosed `{{` in `{s}`"))?;
            if open > 0 {
                parts.push(Part::Lit(literal(&rest[..open], s)?));
            }
            parts.push(Part::Var(source(&rest[open + 1..close])?));
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(literal(rest, s)?));
        }
        shape(&parts, s)?;
        Ok(Template(parts))
    }

    pub fn uses_consumer(&self) -> bool {
        self.0.iter().any(|p| matches!(p, Part::Var(Source::Consumer)))
    }
}

/// Literal text must already be a valid piece of a request target: the gateway only
/// encodes the values it fills in.
fn literal(text: &str, whole: &str) -> Result<String, String> {
    if let Some(c) = text.chars().find(|c| !c.is_ascii_graphic() || *c == '#') {
        return Err(format!("{c:?} is not allowed in a request target (`{whole}`)"));
    }
    Ok(text.to_string())
}

/// The target as written, with each placeholder standing for one plain segment: it must be
/// a clean request target, so nothing but a client value can be odd in what is sent.
fn shape(parts: &[Part], whole: &str) -> Result<(), String> {
    let text: String = parts
        .iter()
        .map(|p| match p {
            Part::Lit(s) => s.as_str(),
            Part::Var(_) => "v",
        })
        .collect();
    if text.matches('?').count() > 1 {
        return Err(format!("`{whole}` has more than one `?`"));
    }
    let path = text.split('?').next().unwrap_or_default();
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(format!("`{whole}` has a . or .. segment"));
    }
    let b = text.as_bytes();
    for (i, c) in b.iter().enumerate() {
        if *c == b'%' && !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit) && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit)) {
            return Err(format!("`{whole}` has a % that is not followed by two hex digits"));
        }
    }
    Ok(())
}

/// Methods a backend call may use: HEAD has no body to merge, CONNECT and others are not
/// requests for data.
const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];

fn source(name: &str) -> Result<Source, String> {
    let (kind, arg) = match name.split_once('.') {
        Some((k, a)) => (k, Some(a)),
        None => (name, None),
    };
    match (kind, arg) {
        ("consumer", None) => Ok(Source::Consumer),
        ("path", Some(n)) => n
            .parse::<usize>()
            .map(Source::Path)
            .map_err(|_| format!("`{{{name}}}`: path segments are numbered from 0, as {{path.0}}")),
        ("query", Some(q)) if !q.is_empty() => Ok(Source::Query(q.to_string())),
        ("header", Some(h)) => http::HeaderName::from_bytes(h.as_bytes())
            .map(Source::Header)
            .map_err(|_| format!("`{{{name}}}`: `{h}` is not a header name")),
        _ => Err(format!(
            "unknown placeholder `{{{name}}}` (known: {{consumer}}, {{path.N}}, {{query.NAME}}, {{header.NAME}})"
        )),
    }
}

/// Plugins that identify a consumer: `{consumer}` needs one of them on the route.
const AUTH: &[&str] = &[
    gatehouse_plugins::key_auth::NAME,
    gatehouse_plugins::basic_auth::NAME,
    gatehouse_plugins::jwt_auth::NAME,
    gatehouse_plugins::mtls_auth::NAME,
    gatehouse_plugins::forward_auth::NAME,
];

pub(super) fn validate(f: &File, name: &str, r: &Route, out: &mut Vec<(String, String)>) {
    let Some(a) = &r.aggregate else { return };
    let base = format!("routes.{name}.aggregate");
    if r.upstream.is_some() {
        out.push((
            format!("routes.{name}.upstream"),
            "an aggregate route answers from its backends: remove upstream".into(),
        ));
    }
    for (key, on) in [("websocket", r.websocket), ("grpc", r.grpc), ("streaming", r.streaming)] {
        if on {
            out.push((format!("routes.{name}.{key}"), "not possible on an aggregate route".into()));
        }
    }
    if r.plugins.contains_key(crate::cache::PLUGIN) {
        out.push((format!("routes.{name}.plugins.cache"), "aggregate answers are not cached".into()));
    }
    if a.timeout.0.is_zero() {
        out.push((format!("{base}.timeout"), "must be greater than zero".into()));
    }
    if a.max_body.0 == 0 {
        out.push((format!("{base}.max_body"), "must be greater than zero".into()));
    }
    if a.backends.is_empty() {
        out.push((format!("{base}.backends"), "at least one backend is required".into()));
    }
    let authenticated = AUTH.iter().any(|p| r.plugins.contains_key(*p) || f.plugins.contains_key(*p));
    let mut seen = BTreeSet::new();
    for (i, b) in a.backends.iter().enumerate() {
        let key = format!("{base}.backends[{i}]");
        let valid_name = !b.name.is_empty() && b.name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
        if !valid_name || b.name == "_errors" {
            out.push((
                format!("{key}.name"),
                format!("`{}`: use letters, digits, _ and - (not `_errors`)", b.name),
            ));
        } else if !seen.insert(b.name.as_str()) {
            out.push((format!("{key}.name"), format!("`{}` names two backends", b.name)));
        }
        if !f.upstreams.contains_key(&b.upstream) {
            out.push((format!("{key}.upstream"), format!("upstream `{}` is not defined", b.upstream)));
        }
        match Template::parse(&b.path) {
            Ok(t) if t.uses_consumer() && !authenticated => out.push((
                format!("{key}.path"),
                "{consumer} needs an auth plugin on the route (key_auth, basic_auth, jwt_auth, mtls_auth or forward_auth)".into(),
            )),
            Ok(_) => {}
            Err(e) => out.push((format!("{key}.path"), e)),
        }
        if !METHODS.contains(&b.method.as_str()) {
            out.push((format!("{key}.method"), format!("`{}`: one of {}", b.method, METHODS.join(", "))));
        }
        if b.allow.iter().any(String::is_empty) {
            out.push((format!("{key}.allow"), "field names cannot be empty".into()));
        }
        if let Some(t) = b.timeout {
            if t.0.is_zero() || t.0 > a.timeout.0 {
                out.push((
                    format!("{key}.timeout"),
                    format!("must be above zero and at most the aggregate's {:?}", a.timeout),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        let t = Template::parse("/users/{consumer}?page={query.page}&h={header.x-team}&s={path.1}").unwrap();
        assert_eq!(
            t.0,
            vec![
                Part::Lit("/users/".into()),
                Part::Var(Source::Consumer),
                Part::Lit("?page=".into()),
                Part::Var(Source::Query("page".into())),
                Part::Lit("&h=".into()),
                Part::Var(Source::Header(http::HeaderName::from_static("x-team"))),
                Part::Lit("&s=".into()),
                Part::Var(Source::Path(1)),
            ]
        );
        for bad in [
            "users",
            "/a/{user}",
            "/a/{path.x}",
            "/a/{",
            "/a/}",
            "/a b",
            "/a#b",
            "/{query.}",
            "/{header.a b}",
            "/a/%zz",
            "/x?a=1?b=",
            "/a/{query.x}/../admin",
            "/a/./b",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }
}
