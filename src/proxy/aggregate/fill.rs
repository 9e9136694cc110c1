//! Backend request targets from a template and the client request. Every value is
//! percent-encoded as one path segment or query component, so a client value can neither
//! add a segment, climb with `..`, nor start a new query parameter.

use crate::config::{Part, Source, Template};
use percent_encoding::{percent_decode, percent_encode, AsciiSet, NON_ALPHANUMERIC};
use pingora_http::RequestHeader;

/// RFC 3986 unreserved characters stay; everything else is encoded.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Why a target could not be filled: the client's request lacks a value (or has one that
/// cannot stand as a path segment). A client error, answered with 400.
#[derive(Debug, PartialEq, Eq)]
pub enum Missing {
    Consumer,
    Value(String),
    BadSegment(String),
}

impl Missing {
    pub fn message(&self) -> String {
        match self {
            Missing::Consumer => "this route needs an identified consumer".into(),
            Missing::Value(what) => format!("the request has no {what}"),
            Missing::BadSegment(what) => format!("the request's {what} cannot be used as a path segment"),
        }
    }
}

pub fn fill(t: &Template, req: &RequestHeader, consumer: Option<&str>) -> Result<String, Missing> {
    let mut out = String::with_capacity(64);
    let mut in_query = false;
    for part in &t.0 {
        match part {
            Part::Lit(s) => {
                in_query |= s.contains('?');
                out.push_str(s);
            }
            Part::Var(src) => {
                let (raw, what): (Vec<u8>, String) = match src {
                    Source::Consumer => (consumer.ok_or(Missing::Consumer)?.as_bytes().to_vec(), "consumer".into()),
                    Source::Path(n) => {
                        let what = format!("path segment {n}");
                        let seg = req
                            .uri
                            .path()
                            .split('/')
                            .filter(|s| !s.is_empty())
                            .nth(*n)
                            .ok_or_else(|| Missing::Value(what.clone()))?;
                        (percent_decode(seg.as_bytes()).collect(), what)
                    }
                    Source::Query(name) => {
                        let what = format!("query parameter `{name}`");
                        (
                            query(req.uri.query().unwrap_or(""), name).ok_or_else(|| Missing::Value(what.clone()))?,
                            what,
                        )
                    }
                    Source::Header(name) => {
                        let what = format!("header `{name}`");
                        let v = req.headers.get(name).ok_or_else(|| Missing::Value(what.clone()))?;
                        (v.as_bytes().to_vec(), what)
                    }
                };
                // In the path, a value is one segment: no dot segment, and no slash, which
                // the gateway refuses from clients (encoded or not) and a backend may decode.
                let climbs = matches!(raw.as_slice(), b"" | b"." | b"..") || raw.iter().any(|c| *c == b'/' || *c == b'\\');
                if !in_query && climbs {
                    return Err(Missing::BadSegment(what));
                }
                out.extend(percent_encode(&raw, COMPONENT));
            }
        }
    }
    Ok(out)
}

/// The first value of `name` in a query string, decoded (`+` is a space, as in forms).
fn query(q: &str, name: &str) -> Option<Vec<u8>> {
    q.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k: Vec<u8> = percent_decode(k.replace('+', " ").as_bytes()).collect();
        (k == name.as_bytes()).then(|| percent_decode(v.replace('+', " ").as_bytes()).collect())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.insert_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn t(s: &str) -> Template {
        Template::parse(s).unwrap()
    }

    #[test]
    fn values_are_encoded_as_one_component() {
        let r = req("/dash/a%20b/x?user=al+ice%26admin%3D1&n=2", &[("x-team", "red/blue")]);
        assert_eq!(fill(&t("/u/{consumer}"), &r, Some("bob")).unwrap(), "/u/bob");
        assert_eq!(fill(&t("/u/{path.1}"), &r, None).unwrap(), "/u/a%20b");
        assert_eq!(fill(&t("/q?u={query.user}"), &r, None).unwrap(), "/q?u=al%20ice%26admin%3D1");
        assert_eq!(fill(&t("/q?t={header.x-team}"), &r, None).unwrap(), "/q?t=red%2Fblue");
        assert_eq!(fill(&t("/c/{consumer}"), &r, Some("..?x=1#")).unwrap(), "/c/..%3Fx%3D1%23");
    }

    #[test]
    fn missing_and_climbing_values_are_refused() {
        let r = req("/dash?up=..&empty=", &[]);
        assert_eq!(fill(&t("/u/{consumer}"), &r, None), Err(Missing::Consumer));
        assert!(matches!(fill(&t("/u/{path.3}"), &r, None), Err(Missing::Value(_))));
        assert!(matches!(fill(&t("/u/{query.nope}"), &r, None), Err(Missing::Value(_))));
        assert!(matches!(fill(&t("/u/{header.x-a}"), &r, None), Err(Missing::Value(_))));
        assert!(matches!(fill(&t("/u/{query.up}"), &r, None), Err(Missing::BadSegment(_))));
        assert!(matches!(fill(&t("/u/{query.empty}/x"), &r, None), Err(Missing::BadSegment(_))));
        let slashes = req("/dash?a=..%2Fadmin&b=x%5Cy", &[("x-h", "../x")]);
        for v in ["{query.a}", "{query.b}", "{header.x-h}"] {
            assert!(
                matches!(fill(&t(&format!("/u/{v}")), &slashes, None), Err(Missing::BadSegment(_))),
                "{v}"
            );
        }
        // In the query part, `..` and empty values are plain data.
        assert_eq!(fill(&t("/u?a={query.up}&b={query.empty}"), &r, None).unwrap(), "/u?a=..&b=");
    }
}
