//! Authentication and access control, proved with the attacks: wrong and spoofed keys,
//! spoofed X-Forwarded-For, forward auth failures, CORS preflights, consumer config errors.
//! The JWT and JWKS attacks are in tests/auth_jwt.rs.

mod common;
use base64::Engine;
use common::auth::{consumers, env};
use common::{request, wait_until, Gateway, Upstream};
use std::time::Duration;

#[test]
fn key_auth_wrong_missing_and_spoofed() {
    let up = Upstream::start("u");
    let gw = Gateway::start_with_env(
        &format!(
            r#"{}
[upstreams.u]
targets = ["{}"]
[routes.r]
paths = ["/"]
upstream = "u"
[routes.r.plugins.key_auth]
query = "apikey"
"#,
            consumers(),
            up.addr
        ),
        &env(),
    );
    let r = gw.get("/");
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "authentication required");
    assert_eq!(r.header("www-authenticate"), Some("ApiKey header=\"x-api-key\""));
    let r = request(&gw.addr, "GET", "/", &[("x-api-key", "acme-key-0002")], None);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "invalid API key");
    // The attack: claim to be a consumer with the header the upstream trusts.
    let r = request(&gw.addr, "GET", "/", &[("x-consumer", "acme")], None);
    assert_eq!(r.status, 401);
    assert_eq!(up.count(), 0);

    let r = request(&gw.addr, "GET", "/", &[("x-api-key", "acme-key-0001"), ("x-consumer", "bob")], None);
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.header("x-consumer"), Some("acme"), "the client's x-consumer is replaced");
    assert_eq!(seen.header("x-api-key"), None, "the credential is hidden from the upstream");

    let r = gw.get("/items?apikey=bob-key-0002&page=2");
    assert_eq!(r.status, 200);
    assert_eq!(up.last().path, "/items?page=2");
    assert_eq!(up.last().header("x-consumer"), Some("bob"));

    wait_until(Duration::from_secs(5), "access log", || {
        gw.access_log().iter().any(|l| l["consumer"] == "bob")
    });
    assert!(gw.metric(r#"gatehouse_rejections_total{reason="unauthenticated",route="r"}"#) >= 3.0);
}

fn basic(user: &str, pw: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}")))
}

#[test]
fn basic_auth_acl_and_several_auth_plugins() {
    let up = Upstream::start("u");
    let gw = Gateway::start_with_env(
        &format!(
            r#"{}
[upstreams.u]
targets = ["{}"]
[routes.partners]
paths = ["/partners"]
upstream = "u"
[routes.partners.plugins.key_auth]
[routes.partners.plugins.basic_auth]
realm = "partners"
[routes.partners.plugins.acl]
allow = ["partners"]
[routes.open]
paths = ["/open"]
upstream = "u"
[routes.open.plugins.key_auth]
anonymous = "guest"
"#,
            consumers(),
            up.addr
        ),
        &env(),
    );
    let r = gw.get("/partners");
    assert_eq!(r.status, 401);
    let challenges: Vec<&str> = r
        .headers
        .iter()
        .filter(|(k, _)| k == "www-authenticate")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(challenges.len(), 2, "one challenge per scheme: {challenges:?}");
    assert!(challenges.contains(&"Basic realm=\"partners\", charset=\"UTF-8\""));

    let r = request(&gw.addr, "GET", "/partners", &[("Authorization", &basic("bob", "wrong"))], None);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "invalid username or password");
    let r = request(
        &gw.addr,
        "GET",
        "/partners",
        &[("Authorization", &basic("mallory", "correct horse"))],
        None,
    );
    assert_eq!(r.status, 401);
    // Right password, but bob is not a partner: the ACL says no.
    let r = request(
        &gw.addr,
        "GET",
        "/partners",
        &[("Authorization", &basic("bob", "correct horse"))],
        None,
    );
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "forbidden by ACL");
    // acme by key: first auth plugin that succeeds wins.
    assert_eq!(
        request(&gw.addr, "GET", "/partners", &[("x-api-key", "acme-key-0001")], None).status,
        200
    );
    assert_eq!(up.count(), 1);

    // Anonymous consumer.
    assert_eq!(gw.get("/open").status, 200);
    assert_eq!(up.last().header("x-consumer"), Some("guest"));
    assert_eq!(
        request(&gw.addr, "GET", "/open", &[("x-api-key", "bob-key-0002")], None).status,
        200
    );
    assert_eq!(up.last().header("x-consumer"), Some("bob"));
}

#[test]
fn ip_restriction_ignores_spoofed_forwarded_for() {
    let up = Upstream::start("u");
    let gw = Gateway::start(&format!(
        r#"
[upstreams.u]
targets = ["{}"]
[routes.r]
paths = ["/"]
upstream = "u"
[routes.r.plugins.ip_restriction]
allow = ["203.0.113.0/24", "2001:db8::/32"]
[routes.local]
paths = ["/local"]
upstream = "u"
[routes.local.plugins.ip_restriction]
deny = ["127.0.0.0/8"]
"#,
        up.addr
    ));
    let r = request(&gw.addr, "GET", "/", &[("X-Forwarded-For", "203.0.113.5")], None);
    assert_eq!(r.status, 403, "a spoofed XFF from an untrusted peer does not get in");
    assert_eq!(r.json()["error"], "forbidden by IP rules");
    assert_eq!(gw.get("/local").status, 403);
    assert_eq!(up.count(), 0);
}

#[test]
fn forward_auth_allow_deny_timeout() {
    let up = Upstream::start("u");
    let authz = Upstream::start("authz");
    let gw = Gateway::start(&format!(
        r#"
[upstreams.u]
targets = ["{up}"]
[routes.r]
paths = ["/"]
upstream = "u"
[routes.r.plugins.forward_auth]
url = "http://{a}/check"
timeout = "300ms"
request_headers = ["authorization"]
upstream_headers = ["x-user-id"]
[routes.lenient]
paths = ["/lenient"]
upstream = "u"
[routes.lenient.plugins.forward_auth]
url = "http://{a}/check"
timeout = "300ms"
on_error = "allow"
"#,
        up = up.addr,
        a = authz.addr
    ));
    authz.set(|b| {
        b.status = 200;
        b.headers = vec![("X-User-Id".into(), "u-42".into())];
    });
    let r = request(
        &gw.addr,
        "GET",
        "/x",
        &[("Authorization", "Bearer abc"), ("X-User-Id", "admin")],
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        up.last().header("x-user-id"),
        Some("u-42"),
        "the auth service's header replaces the client's"
    );
    let asked = authz.last();
    assert_eq!(asked.header("authorization"), Some("Bearer abc"));
    assert_eq!(asked.header("x-forwarded-uri"), Some("/x"));

    authz.set(|b| {
        b.status = 401;
        b.body = Some("{\"error\":\"who are you\"}".into());
        b.headers = vec![("WWW-Authenticate".into(), "Bearer realm=\"sso\"".into())];
    });
    let r = request(&gw.addr, "GET", "/x", &[("Authorization", "Bearer bad")], None);
    assert_eq!(r.status, 401);
    assert_eq!(r.body, "{\"error\":\"who are you\"}");
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"sso\""));

    authz.set(|b| {
        b.status = 200;
        b.delay = Duration::from_millis(800);
    });
    let before = up.count();
    let r = gw.get("/x");
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(up.count(), before);
    assert_eq!(gw.get("/lenient").status, 200, "on_error = allow lets the request through");
}

#[test]
fn cors_preflight_before_auth_and_actual_request() {
    let up = Upstream::start("u");
    let gw = Gateway::start_with_env(
        &format!(
            r#"{}
[upstreams.u]
targets = ["{}"]
[routes.r]
paths = ["/"]
upstream = "u"
[routes.r.plugins.key_auth]
[routes.r.plugins.cors]
origins = ["https://app.example.com", "https://*.example.org"]
methods = ["GET", "POST"]
headers = ["content-type", "x-api-key"]
credentials = true
max_age = "10m"
"#,
            consumers(),
            up.addr
        ),
        &env(),
    );
    let pre = |origin: &str, method: &str| {
        request(
            &gw.addr,
            "OPTIONS",
            "/things",
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", method),
                ("Access-Control-Request-Headers", "x-api-key"),
            ],
            None,
        )
    };
    let r = pre("https://app.example.com", "POST");
    assert_eq!(r.status, 204, "preflight is answered before auth: {}", r.body);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://app.example.com"));
    assert_eq!(r.header("access-control-allow-methods"), Some("GET, POST"));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    assert_eq!(pre("https://shop.example.org", "GET").status, 204);
    assert_eq!(pre("https://example.org", "GET").status, 403, "wildcard does not cover the apex");
    assert_eq!(pre("https://evil.com", "GET").status, 403);
    assert_eq!(pre("https://app.example.com", "DELETE").status, 403);
    assert_eq!(up.count(), 0);

    let r = request(
        &gw.addr,
        "GET",
        "/things",
        &[("Origin", "https://app.example.com"), ("x-api-key", "acme-key-0001")],
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://app.example.com"));
    // Even a 401 carries CORS headers, so the browser can show the error.
    let r = request(&gw.addr, "GET", "/things", &[("Origin", "https://app.example.com")], None);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://app.example.com"));
    let r = request(
        &gw.addr,
        "GET",
        "/things",
        &[("Origin", "https://evil.com"), ("x-api-key", "acme-key-0001")],
        None,
    );
    assert_eq!(r.header("access-control-allow-origin"), None);
}

#[test]
fn consumer_config_errors() {
    let dir = common::gateway::test_dir();
    let path = dir.join("c.toml");
    let base = "[listeners.a]\naddr = \"127.0.0.1:18081\"\n[routes.r]\n[routes.r.plugins.respond]\n";
    for (extra, key, reason) in [
        (
            "[consumers.a]\nbasic_auth = { username = \"a\", password_hash = \"plaintext\" }\n",
            "consumers.a.basic_auth.password_hash",
            "not an argon2",
        ),
        (
            "[consumers.a]\nkeys = [\"k\"]\n[consumers.b]\nkeys = [\"k\"]\n",
            "consumers.b.keys[0]",
            "another consumer",
        ),
        (
            "[routes.r.plugins.jwt_auth]\nkeys = [{ alg = \"none\", secret = \"x\" }]\n",
            "routes.r.plugins.jwt_auth.keys[0].alg",
            "never allowed",
        ),
        (
            "[routes.r.plugins.jwt_auth]\nkeys = [{ alg = \"HS256\", secret = \"short\" }]\n",
            "routes.r.plugins.jwt_auth.keys[0].secret",
            "at least 32 bytes",
        ),
        (
            "[routes.r.plugins.ip_restriction]\nallow = [\"10.0.0.0/33\"]\n",
            "routes.r.plugins.ip_restriction.allow[0]",
            "invalid CIDR",
        ),
    ] {
        std::fs::write(&path, format!("{base}{extra}")).unwrap();
        let out = std::process::Command::new(Gateway::bin())
            .arg("-t")
            .arg("-c")
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra}");
        assert!(
            err.contains(&format!("{key}: ")) && err.contains(reason),
            "expected {key}: {reason} in {err}"
        );
    }
}
