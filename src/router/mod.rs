//! Routes compiled at load time into one ordered list. A small table is matched by a scan
//! with byte comparisons and no allocation; a large one through an index (`index`) that
//! returns the same rule the scan would.
//!
//! Order: `priority` (higher first), then path kind (exact > prefix > regex), then longer
//! prefix, then more specific host (exact > wildcard > any), then route name. The order is
//! total, so the same file always routes the same way.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::Regex;

mod index;

/// From this many path rules on, `find` uses the index: below it, the scan's few byte
/// comparisons cost less than hashing the path's prefixes.
const INDEX_FROM: usize = 24;

/// How one configured path matches.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// `=/users`
    Exact(String),
    /// `/users` matches `/users`, `/users/7`, not `/usersx`.
    Prefix(String),
    /// `~^/v[0-9]+/users$`
    Regex(Regex),
}

/// A route's path regex, with a compiled size far under the crate's 10 MiB default: a
/// route table of such regexes (a fleet's shared document, say) must not take gigabytes,
/// and one over the limit is refused quickly.
pub fn path_regex(re: &str) -> Result<Regex, regex::Error> {
    regex::RegexBuilder::new(re).size_limit(1 << 18).build()
}

impl PathMatch {
    pub fn parse(s: &str) -> Result<PathMatch, String> {
        if let Some(re) = s.strip_prefix('~') {
            return path_regex(re).map(PathMatch::Regex).map_err(|e| e.to_string());
        }
        if let Some(exact) = s.strip_prefix('=') {
            return Ok(PathMatch::Exact(exact.to_string()));
        }
        // "/users/" and "/users" mean the same segment prefix.
        let p = if s.len() > 1 { s.trim_end_matches('/') } else { s };
        Ok(PathMatch::Prefix(p.to_string()))
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(e) => path == e,
            PathMatch::Prefix(p) => p == "/" || (path.starts_with(p.as_str()) && matches!(path.as_bytes().get(p.len()), None | Some(b'/'))),
            PathMatch::Regex(r) => r.is_match(path),
        }
    }

    fn kind_rank(&self) -> u8 {
        match self {
            PathMatch::Exact(_) => 0,
            PathMatch::Prefix(_) => 1,
            PathMatch::Regex(_) => 2,
        }
    }

    fn len(&self) -> usize {
        match self {
            PathMatch::Exact(s) | PathMatch::Prefix(s) => s.len(),
            PathMatch::Regex(_) => 0,
        }
    }

    /// How many leading bytes of a matched path `strip_prefix` removes.
    pub fn strip_len(&self, path: &str) -> usize {
        let cut = match self {
            PathMatch::Prefix(p) if p != "/" => p.len(),
            PathMatch::Exact(e) => e.len(),
            _ => 0,
        };
        cut.min(path.len())
    }

    /// The request path the upstream sees when the route strips its prefix.
    pub fn strip<'a>(&self, path: &'a str) -> &'a str {
        let rest = &path[self.strip_len(path)..];
        if rest.is_empty() {
            "/"
        } else {
            rest
        }
    }
}

/// Which hosts a route answers for. Names are stored lower-case; requests are compared
/// case-insensitively without lower-casing them.
#[derive(Debug, Clone, Default)]
pub struct HostMatch {
    exact: Vec<String>,
    /// `*.example.org` stored as `.example.org`: any subdomain, not the apex.
    suffixes: Vec<String>,
    /// A wildcard stands for one label only, as in a certificate (`sni` conditions): the
    /// route then answers exactly the names its wildcard certificate serves.
    one_label: bool,
}

impl HostMatch {
    pub fn new(hosts: &[String]) -> Self {
        let mut m = HostMatch::default();
        for h in hosts {
            let h = h.to_ascii_lowercase();
            match h.strip_prefix('*') {
                Some(suffix) => m.suffixes.push(suffix.to_string()),
                None => m.exact.push(h),
            }
        }
        m
    }

    /// For server names: wildcards cover one label (`*.a.test` matches `x.a.test`, not
    /// `x.y.a.test`), as certificate selection does.
    pub fn server_names(names: &[String]) -> Self {
        HostMatch {
            one_label: true,
            ..HostMatch::new(names)
        }
    }

    fn is_any(&self) -> bool {
        self.exact.is_empty() && self.suffixes.is_empty()
    }

    fn specificity(&self) -> u8 {
        if !self.exact.is_empty() {
            0
        } else if !self.suffixes.is_empty() {
            1
        } else {
            2
        }
    }

    pub fn matches(&self, host: &str) -> bool {
        if self.is_any() {
            return true;
        }
        if self.exact.iter().any(|e| e.eq_ignore_ascii_case(host)) {
            return true;
        }
        self.suffixes.iter().any(|s| {
            let Some(label_end) = host.len().checked_sub(s.len()).filter(|n| *n > 0 && host.is_char_boundary(*n)) else {
                return false;
            };
            host[label_end..].eq_ignore_ascii_case(s) && !(self.one_label && host[..label_end].contains('.'))
        })
    }
}

/// Everything but the path that a route requires of a request.
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    pub hosts: HostMatch,
    /// Empty: any method.
    pub methods: Vec<Method>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The TLS server name the client asked for (empty: any, and plaintext too).
    pub sni: HostMatch,
    /// `Some(true)`: HTTPS only; `Some(false)`: plaintext only.
    pub https: Option<bool>,
}

/// What the connection says about a request: the TLS server name, and whether it is TLS.
#[derive(Debug, Clone, Copy, Default)]
pub struct Conn<'a> {
    pub sni: Option<&'a str>,
    pub https: bool,
}

impl Conditions {
    fn matches(&self, host: &str, method: &Method, headers: &HeaderMap, conn: Conn<'_>) -> bool {
        self.hosts.matches(host)
            && (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
            && self.headers.iter().all(|(n, v)| headers.get_all(n).iter().any(|h| h == v))
            && self.https.is_none_or(|h| h == conn.https)
            && (self.sni.is_any() || conn.sni.is_some_and(|s| self.sni.matches(s)))
    }
}

#[derive(Debug)]
struct Entry {
    route: usize,
    path: PathMatch,
}

/// The compiled table. `T` is whatever the caller attaches to a route (the proxy uses its
/// runtime route); the router only decides which one.
#[derive(Debug)]
pub struct Router<T> {
    routes: Vec<(T, Conditions, i32, String)>,
    entries: Vec<Entry>,
    index: Option<index::Index>,
}

/// A successful match: the route and the path rule that matched (for `strip_prefix`).
pub struct Match<'a, T> {
    pub route: &'a T,
    pub path: &'a PathMatch,
}

impl<T> Router<T> {
    pub fn new() -> Self {
        Router {
            routes: Vec::new(),
            entries: Vec::new(),
            index: None,
        }
    }

    pub fn add(&mut self, name: &str, value: T, cond: Conditions, priority: i32, paths: Vec<PathMatch>) {
        let idx = self.routes.len();
        self.routes.push((value, cond, priority, name.to_string()));
        for p in paths {
            self.entries.push(Entry { route: idx, path: p });
        }
    }

    /// Fixes the order and, for a large table, builds the index; call once after the
    /// last `add`.
    pub fn finish(self) -> Self {
        let indexed = self.entries.len() >= INDEX_FROM;
        self.finish_with(indexed)
    }

    fn finish_with(mut self, indexed: bool) -> Self {
        let routes = &self.routes;
        self.entries.sort_by(|a, b| {
            let (_, ca, pa, na) = &routes[a.route];
            let (_, cb, pb, nb) = &routes[b.route];
            pb.cmp(pa)
                .then(a.path.kind_rank().cmp(&b.path.kind_rank()))
                .then(b.path.len().cmp(&a.path.len()))
                .then(ca.hosts.specificity().cmp(&cb.hosts.specificity()))
                .then(na.cmp(nb))
        });
        if indexed {
            let routes = &self.routes;
            self.index = Some(index::Index::build(&self.entries, |r| {
                let h = &routes[r].1.hosts;
                (&h.exact[..], !h.suffixes.is_empty())
            }));
        }
        self
    }

    pub fn route_values(&self) -> impl Iterator<Item = &T> {
        self.routes.iter().map(|(v, ..)| v)
    }

    /// `host` must already be stripped of its port.
    pub fn find(&self, host: &str, method: &Method, path: &str, headers: &HeaderMap, conn: Conn<'_>) -> Option<Match<'_, T>> {
        let fits = |e: &Entry| e.path.matches(path) && self.routes[e.route].1.matches(host, method, headers, conn);
        let e = match &self.index {
            Some(idx) => &self.entries[idx.find(host, path, |pos| fits(&self.entries[pos as usize]))? as usize],
            None => self.entries.iter().find(|e| fits(e))?,
        };
        Some(Match {
            route: &self.routes[e.route].0,
            path: &e.path,
        })
    }
}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// The host a request is for, without port or trailing dot. Prefers the Host header
/// (HTTP/1.1) and falls back to the URI authority (HTTP/2, absolute-form).
pub fn request_host<'a>(headers: &'a HeaderMap, uri: &'a http::Uri) -> &'a str {
    let raw = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    strip_port(raw).trim_end_matches('.')
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or("");
    }
    match host.rfind(':') {
        Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_name_wildcards_cover_one_label() {
        let names = [String::from("*.wild.test"), String::from("a.test")];
        let (sni, hosts) = (HostMatch::server_names(&names), HostMatch::new(&names));
        assert!(sni.matches("x.wild.test") && sni.matches("a.test"));
        assert!(!sni.matches("x.y.wild.test"), "as the certificate: one label");
        assert!(!sni.matches("wild.test") && !sni.matches(".wild.test"));
        assert!(hosts.matches("x.y.wild.test"), "Host patterns keep any depth");
    }

    fn p(s: &str) -> PathMatch {
        PathMatch::parse(s).unwrap()
    }

    fn router(specs: &[(&str, &[&str], &[&str], i32)]) -> Router<&'static str> {
        let mut r = Router::new();
        for (name, hosts, paths, prio) in specs {
            let name: &'static str = Box::leak(name.to_string().into_boxed_str());
            let hosts: Vec<String> = hosts.iter().map(|s| s.to_string()).collect();
            r.add(
                name,
                name,
                Conditions {
                    hosts: HostMatch::new(&hosts),
                    ..Default::default()
                },
                *prio,
                paths.iter().map(|s| p(s)).collect(),
            );
        }
        r.finish()
    }

    fn find(r: &Router<&'static str>, host: &str, path: &str) -> Option<&'static str> {
        r.find(host, &Method::GET, path, &HeaderMap::new(), Conn::default())
            .map(|m| *m.route)
    }

    #[test]
    fn prefix_is_segment_aware() {
        assert!(p("/users").matches("/users"));
        assert!(p("/users").matches("/users/7"));
        assert!(!p("/users").matches("/usersx"));
        assert!(p("/users/").matches("/users/7"));
        assert!(p("/").matches("/anything"));
    }

    #[test]
    fn exact_beats_prefix_beats_regex_and_priority_beats_all() {
        let r = router(&[
            ("regex", &[], &["~^/users/[0-9]+$"], 0),
            ("prefix", &[], &["/users"], 0),
            ("exact", &[], &["=/users/7"], 0),
            ("longer", &[], &["/users/7"], 0),
        ]);
        assert_eq!(find(&r, "h", "/users/7"), Some("exact"));
        assert_eq!(find(&r, "h", "/users/7/x"), Some("longer"));
        assert_eq!(find(&r, "h", "/users/8"), Some("prefix"));
        let r = router(&[("prefix", &[], &["/users"], 0), ("regex", &[], &["~^/users/[0-9]+$"], 10)]);
        assert_eq!(find(&r, "h", "/users/8"), Some("regex"));
    }

    #[test]
    fn hosts_exact_wildcard_case_and_port() {
        let r = router(&[("api", &["api.example.com"], &["/"], 0), ("wild", &["*.example.org"], &["/"], 0)]);
        assert_eq!(find(&r, "API.Example.COM", "/"), Some("api"));
        assert_eq!(find(&r, "a.b.example.org", "/"), Some("wild"));
        assert_eq!(find(&r, "example.org", "/"), None);
        let mut h = HeaderMap::new();
        h.insert("host", "api.example.com:8080".parse().unwrap());
        assert_eq!(request_host(&h, &"/".parse().unwrap()), "api.example.com");
        h.insert("host", "[::1]:8080".parse().unwrap());
        assert_eq!(request_host(&h, &"/".parse().unwrap()), "::1");
    }

    /// The index must pick exactly the rule the ordered scan picks, for any table.
    mod index_matches_scan {
        use super::*;
        use proptest::prelude::*;

        const HOSTS: [&str; 5] = ["a.test", "B.test", "*.w.test", "x.w.test", "c.test"];
        const PATHS: [&str; 10] = ["/", "/u", "/u/", "=/u", "=/u/7", "/u/7", "/v/x", "~^/u/[0-9]+$", "~/x$", "=/"];
        const REQ_PATHS: [&str; 9] = ["/", "/u", "/u/", "/u/7", "/u/7/x", "/ux", "/v/x", "/v/x/y", "/x"];
        const REQ_HOSTS: [&str; 5] = ["a.test", "b.TEST", "x.w.test", "y.w.test", "other"];

        type Spec = (Vec<usize>, Vec<usize>, i32, bool);

        fn build(specs: &[Spec], indexed: bool) -> Router<usize> {
            let mut r = Router::new();
            for (i, (hosts, paths, prio, get_only)) in specs.iter().enumerate() {
                let hosts: Vec<String> = hosts.iter().map(|h| HOSTS[*h].to_string()).collect();
                let cond = Conditions {
                    hosts: HostMatch::new(&hosts),
                    methods: if *get_only { vec![Method::GET] } else { vec![] },
                    ..Default::default()
                };
                r.add(
                    &format!("r{i}"),
                    i,
                    cond,
                    *prio,
                    paths.iter().map(|p| PathMatch::parse(PATHS[*p]).unwrap()).collect(),
                );
            }
            r.finish_with(indexed)
        }

        proptest! {
            #[test]
            fn same_answer(
                specs in proptest::collection::vec(
                    (proptest::collection::vec(0..HOSTS.len(), 0..3), proptest::collection::vec(0..PATHS.len(), 1..3), -1..2i32, any::<bool>()),
                    0..40,
                ),
                host in 0..REQ_HOSTS.len(),
                path in 0..REQ_PATHS.len(),
                post in any::<bool>(),
            ) {
                let (scan, idx) = (build(&specs, false), build(&specs, true));
                let method = if post { Method::POST } else { Method::GET };
                let (h, p) = (REQ_HOSTS[host], REQ_PATHS[path]);
                let a = scan.find(h, &method, p, &HeaderMap::new(), Conn::default()).map(|m| *m.route);
                let b = idx.find(h, &method, p, &HeaderMap::new(), Conn::default()).map(|m| *m.route);
                prop_assert_eq!(a, b, "host {} path {}", h, p);
            }
        }
    }

    #[test]
    fn a_large_table_is_indexed_and_routes_by_host_and_prefix() {
        let mut r = Router::new();
        for i in 0..10_000 {
            let host = vec![format!("svc{}.test", i % 100)];
            let cond = Conditions {
                hosts: HostMatch::new(&host),
                ..Default::default()
            };
            r.add(&format!("r{i}"), i, cond, 0, vec![PathMatch::parse(&format!("/api/{i}")).unwrap()]);
        }
        let r = r.finish();
        assert!(r.index.is_some());
        let find = |h: &str, p: &str| r.find(h, &Method::GET, p, &HeaderMap::new(), Conn::default()).map(|m| *m.route);
        assert_eq!(find("svc42.test", "/api/4242/x"), Some(4242));
        assert_eq!(find("SVC42.test", "/api/4242"), Some(4242));
        assert_eq!(find("svc43.test", "/api/4242"), None, "host condition still applies");
        assert_eq!(find("svc42.test", "/api/42420"), None, "prefixes are whole segments");
    }

    #[test]
    fn strip_prefix() {
        assert_eq!(p("/users").strip("/users/7"), "/7");
        assert_eq!(p("/users").strip("/users"), "/");
        assert_eq!(p("/").strip("/a"), "/a");
    }
}
