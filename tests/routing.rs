//! Routing through a socket: each path kind, priority order, hosts, methods, headers,
//! strip_prefix, and the 404 answer.

mod common;
use common::{request, Gateway, Upstream};

fn respond(name: &str, spec: &str) -> String {
    format!("[routes.{name}]\n{spec}\n[routes.{name}.plugins.respond]\nbody = \"{name}\"\n")
}

fn route_of(gw: &Gateway, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let r = request(&gw.addr, method, path, headers, None);
    (r.status, r.body)
}

#[test]
fn path_kinds_and_priority() {
    let gw = Gateway::start(
        &[
            respond("prefix", "paths = [\"/users\"]"),
            respond("exact", "paths = [\"=/users/me\"]"),
            respond("longer", "paths = [\"/users/admin\"]"),
            respond("regex", "paths = [\"~^/v[0-9]+/users$\"]"),
            respond("regex_users", "paths = [\"~^/users/[0-9]+$\"]"),
            respond("boosted", "paths = [\"~^/users/42$\"]\npriority = 10"),
        ]
        .concat(),
    );
    let r = |p: &str| route_of(&gw, "GET", p, &[]);
    assert_eq!(r("/users"), (200, "prefix".into()));
    assert_eq!(r("/users/7"), (200, "prefix".into()), "prefix beats regex at equal priority");
    assert_eq!(r("/users/me"), (200, "exact".into()));
    assert_eq!(r("/users/me/x"), (200, "prefix".into()), "exact does not match below itself");
    assert_eq!(r("/users/admin/x"), (200, "longer".into()));
    assert_eq!(r("/v2/users"), (200, "regex".into()));
    assert_eq!(r("/users/42"), (200, "boosted".into()), "priority beats everything");
    let (status, body) = r("/usersx");
    assert_eq!(status, 404, "segment-aware prefix must not match /usersx: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], 404);
    assert_eq!(v["error"], "no route matches this request");
    assert!(v["request_id"].as_str().is_some_and(|s| !s.is_empty()));
}

#[test]
fn hosts_methods_and_headers() {
    let gw = Gateway::start(
        &[
            respond("api", "hosts = [\"api.example.com\"]\npaths = [\"/\"]"),
            respond("wild", "hosts = [\"*.example.org\"]\npaths = [\"/\"]"),
            respond("writes", "paths = [\"/things\"]\nmethods = [\"POST\", \"PUT\"]"),
            respond(
                "v2",
                "paths = [\"/things\"]\nheaders = { \"x-api-version\" = \"2\" }\nmethods = [\"GET\"]",
            ),
            respond("reads", "paths = [\"/things\"]\nmethods = [\"GET\"]\npriority = -1"),
        ]
        .concat(),
    );
    assert_eq!(route_of(&gw, "GET", "/x", &[("Host", "API.example.com:8080")]), (200, "api".into()));
    assert_eq!(route_of(&gw, "GET", "/x", &[("Host", "a.b.example.org")]), (200, "wild".into()));
    assert_eq!(
        route_of(&gw, "GET", "/x", &[("Host", "example.org")]).0,
        404,
        "wildcard does not match the apex"
    );
    assert_eq!(route_of(&gw, "GET", "/x", &[("Host", "other.com")]).0, 404);
    assert_eq!(route_of(&gw, "POST", "/things", &[]).1, "writes");
    assert_eq!(route_of(&gw, "GET", "/things", &[("X-Api-Version", "2")]).1, "v2");
    assert_eq!(route_of(&gw, "GET", "/things", &[("X-Api-Version", "3")]).1, "reads");
    assert_eq!(route_of(&gw, "DELETE", "/things", &[]).0, 404);
}

#[test]
fn strip_prefix_and_preserve_host() {
    let up = Upstream::start("u");
    let gw = Gateway::start(&format!(
        r#"
[upstreams.u]
targets = ["{up}"]
[routes.stripped]
paths = ["/api"]
upstream = "u"
strip_prefix = true
[routes.kept]
paths = ["/keep"]
upstream = "u"
preserve_host = true
"#,
        up = up.addr
    ));
    let r = gw.get("/api/users/7?x=1");
    assert_eq!(r.status, 200);
    assert_eq!(up.last().path, "/users/7?x=1");
    assert_eq!(
        up.last().header("host"),
        Some(up.addr.as_str()),
        "Host is the target unless preserve_host"
    );
    gw.get("/api");
    assert_eq!(up.last().path, "/");
    request(&gw.addr, "GET", "/keep/a", &[("Host", "shop.example.com")], None);
    assert_eq!(up.last().path, "/keep/a");
    assert_eq!(up.last().header("host"), Some("shop.example.com"));
}
