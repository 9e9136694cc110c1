//! Checks that serde cannot express: cross references (route -> upstream, route -> plugin),
//! address syntax, path rules, and regexes. Each finding is (key path, reason).

use super::file::{Balance, File};
use std::collections::BTreeSet;
use std::net::SocketAddr;

type Findings = Vec<(String, String)>;

pub(super) fn validate(f: &mut File) -> Findings {
    let mut out = Findings::new();
    server(f, &mut out);
    listeners(f, &mut out);
    acme(f, &mut out);
    admin(f, &mut out);
    super::source::validate(f, &mut out);
    log(f, &mut out);
    super::observability::validate(f, &mut out);
    super::alerts::validate(f, &mut out);
    super::metering::validate(f, &mut out);
    upstreams(f, &mut out);
    super::function::validate(f, &mut out);
    store(f, &mut out);
    plans(f, &mut out);
    consumers(f, &mut out);
    routes(f, &mut out);
    plugins("plugins", &f.plugins, &mut out);
    out
}

fn absolute(key: &str, path: &str, out: &mut Findings) {
    if !path.starts_with('/') {
        out.push((key.into(), format!("`{path}` must be an absolute path")));
    }
}

fn server(f: &File, out: &mut Findings) {
    let s = &f.server;
    if s.threads == 0 {
        out.push(("server.threads".into(), "must be at least 1".into()));
    }
    absolute("server.pid_file", &s.pid_file, out);
    absolute("server.upgrade_sock", &s.upgrade_sock, out);
    if s.max_headers == 0 || s.max_headers > crate::listen::MAX_HEADERS_CEILING {
        out.push((
            "server.max_headers".into(),
            format!("must be between 1 and {}", crate::listen::MAX_HEADERS_CEILING),
        ));
    }
    for (key, v) in [
        ("server.max_header_size", s.max_header_size.0),
        ("server.max_uri", s.max_uri.0),
        ("server.max_body", s.max_body.0),
    ] {
        if v == 0 {
            out.push((key.into(), "must be greater than zero".into()));
        }
    }
    if s.max_header_size.0 > 1_048_575 {
        out.push((
            "server.max_header_size".into(),
            "must be at most 1MiB - 1 (Pingora's own limit)".into(),
        ));
    }
    if s.max_connections == 0 {
        out.push(("server.max_connections".into(), "must be at least 1".into()));
    }
    if s.keepalive_timeout.0.as_secs() == 0 {
        out.push(("server.keepalive_timeout".into(), "must be at least 1s".into()));
    }
    if s.user.is_some() || s.group.is_some() {
        if let Err(e) = crate::privileges::lookup(s.user.as_deref(), s.group.as_deref()) {
            out.push((if e.starts_with("group") { "server.group" } else { "server.user" }.into(), e));
        }
    }
    if s.send_timeout.0.is_zero() {
        out.push(("server.send_timeout".into(), "must be greater than zero".into()));
    }
    if s.header_timeout.0.is_zero() {
        out.push(("server.header_timeout".into(), "must be greater than zero".into()));
    }
}

fn socket_addr(key: &str, addr: &str, out: &mut Findings) -> Option<SocketAddr> {
    match addr.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            out.push((key.into(), format!("`{addr}` is not an IP:port address")));
            None
        }
    }
}

fn listeners(f: &File, out: &mut Findings) {
    if f.listeners.is_empty() {
        out.push((
            "listeners".into(),
            "at least one listener is required, e.g. [listeners.public] addr = \"0.0.0.0:8080\"".into(),
        ));
    }
    let mut seen: Vec<(SocketAddr, &str)> = Vec::new();
    for (name, l) in &f.listeners {
        tls_listener(f, name, l, out);
        let key = format!("listeners.{name}.addr");
        if let Some(a) = socket_addr(&key, &l.addr, out) {
            if let Some((_, other)) = seen.iter().find(|(s, _)| *s == a) {
                out.push((
                    key,
                    format!("duplicate listener: `{}` is already used by listeners.{other}", l.addr),
                ));
            } else {
                seen.push((a, name));
            }
        }
    }
    if let Some(admin) = &f.admin {
        if let Ok(a) = admin.addr.parse::<SocketAddr>() {
            if let Some((_, other)) = seen.iter().find(|(s, _)| *s == a) {
                out.push((
                    "admin.addr".into(),
                    format!("`{}` is already used by listeners.{other}", admin.addr),
                ));
            }
        }
    }
}

/// What a listener's TLS, HTTP/2 and redirect settings must agree on.
fn tls_listener(f: &File, name: &str, l: &super::file::Listener, out: &mut Findings) {
    let key = |k: &str| format!("listeners.{name}.{k}");
    let mut need_tls = |k: &str, set: bool| {
        if set && !l.tls {
            out.push((key(k), "only on a TLS listener (tls = true)".into()));
        }
    };
    need_tls("hsts", l.hsts.is_some());
    need_tls("client_ca", l.client_ca.is_some());
    need_tls("ciphers", l.ciphers.is_some());
    need_tls("http2", l.http2 == Some(true));
    if l.tls {
        if f.tls.certificates.is_empty() && f.tls.acme.is_none() {
            out.push((
                key("tls"),
                "a TLS listener needs certificates ([tls.certificates.NAME] or [tls.acme])".into(),
            ));
        }
        if l.h2c {
            out.push((
                key("h2c"),
                "h2c is HTTP/2 without TLS; on a TLS listener ALPN decides (http2)".into(),
            ));
        }
        if l.redirect_https.is_some() {
            out.push((key("redirect_https"), "only on a plaintext listener".into()));
        }
    }
    if l.client_cert == super::file::ClientCertMode::Required && l.client_ca.is_none() {
        out.push((key("client_cert"), "required needs client_ca".into()));
    }
    if let Some(r) = &l.redirect_https {
        if !r.starts_with("https://") || http::HeaderValue::from_str(r).is_err() {
            out.push((
                key("redirect_https"),
                format!("`{r}` is not an https:// URL template ({{host}}, {{uri}})"),
            ));
        }
    }
    if let Some(h) = &l.hsts {
        if !h.trim_start().starts_with("max-age=") || http::HeaderValue::from_str(h).is_err() {
            out.push((key("hsts"), format!("`{h}` is not a Strict-Transport-Security value (max-age=...)")));
        }
    }
    if l.proxy_protocol && f.server.trusted_proxies.is_empty() {
        out.push((
            key("proxy_protocol"),
            "needs server.trusted_proxies: the header is believed only from those peers, and with none every connection would be refused"
                .into(),
        ));
    }
}

/// ACME needs somewhere to answer HTTP-01 and somewhere to keep what it was issued; its
/// names must not also be served by a configured certificate (which one would win?).
fn acme(f: &File, out: &mut Findings) {
    let Some(a) = &f.tls.acme else { return };
    if !(a.directory.starts_with("https://") || a.directory.starts_with("http://")) {
        out.push(("tls.acme.directory".into(), format!("`{}` is not an http(s) URL", a.directory)));
    }
    if a.hosts.is_empty() {
        out.push((
            "tls.acme.hosts".into(),
            "name at least one host to request a certificate for".into(),
        ));
    }
    for h in &a.hosts {
        if h.starts_with("*.") {
            out.push((
                "tls.acme.hosts".into(),
                format!("`{h}`: a wildcard needs DNS-01, and only http-01 is offered"),
            ));
        }
        let served = f
            .tls
            .certificates
            .iter()
            .find(|(_, c)| c.hosts.iter().any(|x| x.eq_ignore_ascii_case(h)));
        if let Some((name, _)) = served {
            out.push(("tls.acme.hosts".into(), format!("`{h}` is also served by tls.certificates.{name}")));
        }
    }
    absolute("tls.acme.storage", &a.storage, out);
    if !f.listeners.values().any(|l| !l.tls) {
        out.push((
            "tls.acme.challenge".into(),
            "http-01 is answered on a plaintext listener, and there is none".into(),
        ));
    }
    if let Some(ca) = &a.directory_ca {
        match ca.strip_prefix("file:") {
            Some(path) if std::path::Path::new(path).is_file() => {}
            Some(path) => out.push(("tls.acme.directory_ca".into(), format!("`{path}` is not a readable file"))),
            None => out.push(("tls.acme.directory_ca".into(), "give the CA as file:/path/to/ca.pem".into())),
        }
    }
}

fn admin(f: &File, out: &mut Findings) {
    let Some(admin) = &f.admin else { return };
    admin_tokens(admin, out);
    if let Some(a) = socket_addr("admin.addr", &admin.addr, out) {
        if !a.ip().is_loopback() && !admin.has_token() {
            out.push((
                "admin.token".into(),
                format!("required when admin.addr (`{}`) is not a loopback address", admin.addr),
            ));
        }
    }
}

/// Token names are what the audit log records, so they must tell tokens apart; two equal
/// token values would make the role depend on the order.
fn admin_tokens(admin: &super::Admin, out: &mut Findings) {
    let mut names = std::collections::HashSet::new();
    let mut values = std::collections::HashSet::new();
    for (i, t) in admin.tokens.iter().enumerate() {
        if t.name.is_empty() || !t.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            out.push((format!("admin.tokens[{i}].name"), "must be letters, digits, - or _".into()));
        } else if t.name == "admin" && admin.token.is_some() || !names.insert(t.name.as_str()) {
            out.push((format!("admin.tokens[{i}].name"), format!("`{}` is used twice", t.name)));
        }
        if t.token.value.len() < 16 {
            out.push((format!("admin.tokens[{i}].token"), "must be at least 16 characters".into()));
        }
    }
    for (name, t, _) in admin.all_tokens() {
        if !values.insert(t.value.as_str()) {
            out.push(("admin.tokens".into(), format!("token `{name}` has the same value as another token")));
        }
    }
    if admin.ui && !admin.has_token() {
        out.push((
            "admin.ui".into(),
            "the console logs in with a token: set admin.tokens (or admin.token)".into(),
        ));
    }
}

fn log(f: &File, out: &mut Findings) {
    let a = f.log.access.as_str();
    if a != "stdout" && a != "off" {
        absolute("log.access", a, out);
    }
    if !matches!(f.log.level.as_str(), "error" | "warn" | "info" | "debug" | "trace" | "off") {
        out.push((
            "log.level".into(),
            format!("`{}` is not one of error, warn, info, debug, trace, off", f.log.level),
        ));
    }
}

fn upstreams(f: &File, out: &mut Findings) {
    for (name, u) in &f.upstreams {
        let base = format!("upstreams.{name}");
        if u.targets.is_empty() && u.discovery.is_none() && u.kind == super::UpstreamKind::Http {
            out.push((format!("{base}.targets"), "at least one target (or discovery) is required".into()));
        }
        if let Some(d) = &u.discovery {
            super::discovery::validate(&format!("{base}.discovery"), d, out);
        }
        let mut seen = BTreeSet::new();
        for (i, t) in u.targets.iter().enumerate() {
            let key = format!("{base}.targets[{i}]");
            if super::discovery::hostname_target(t.addr()).is_some() {
                if !seen.insert(t.addr().to_string()) {
                    out.push((key.clone(), format!("duplicate target `{}`", t.addr())));
                }
            } else if socket_addr(&key, t.addr(), out).is_some() && !seen.insert(t.addr().to_string()) {
                out.push((key.clone(), format!("duplicate target `{}`", t.addr())));
            }
            if t.weight() == 0 || t.weight() > 1000 {
                out.push((format!("{key}.weight"), "must be between 1 and 1000".into()));
            }
        }
        match (&u.balance, &u.hash_on) {
            (Balance::ConsistentHash, None) => out.push((format!("{base}.hash_on"), "required with balance = \"consistent_hash\"".into())),
            (_, Some(h)) => {
                let ok = h == "ip"
                    || h == "path"
                    || h.strip_prefix("header:")
                        .is_some_and(|n| http::HeaderName::from_bytes(n.as_bytes()).is_ok())
                    || h.strip_prefix("cookie:").is_some_and(|n| !n.is_empty());
                if !ok {
                    out.push((
                        format!("{base}.hash_on"),
                        format!("`{h}` is not one of ip, path, header:NAME, cookie:NAME"),
                    ));
                } else if u.balance != Balance::ConsistentHash {
                    out.push((format!("{base}.hash_on"), "only used with balance = \"consistent_hash\"".into()));
                }
            }
            _ => {}
        }
        if u.tls && u.verify() && u.sni.as_deref().is_none_or(str::is_empty) {
            out.push((
                format!("{base}.sni"),
                "required with tls = true: it is the name verified in the certificate (without one Pingora would not verify)".into(),
            ));
        }
        for (k, set) in [
            ("sni", u.sni.is_some()),
            ("ca", u.ca.is_some()),
            ("client_cert", u.client_cert.is_some()),
            ("verify", u.verify.is_some()),
        ] {
            if set && !u.tls {
                out.push((format!("{base}.{k}"), "only with tls = true".into()));
            }
        }
        if u.client_cert.is_some() != u.client_key.is_some() {
            out.push((format!("{base}.client_key"), "client_cert and client_key go together".into()));
        }
        if u.max_streams == 0 {
            out.push((format!("{base}.max_streams"), "must be at least 1".into()));
        }
        if let Some(cb) = &u.circuit_breaker {
            let ck = format!("{base}.circuit_breaker");
            if cb.consecutive_failures == 0 {
                out.push((format!("{ck}.consecutive_failures"), "must be at least 1".into()));
            }
            if cb.max_ejected_percent > 100 {
                out.push((format!("{ck}.max_ejected_percent"), "must be between 0 and 100".into()));
            }
            if cb.base_ejection.0.is_zero() || cb.max_ejection.0 < cb.base_ejection.0 {
                out.push((
                    format!("{ck}.max_ejection"),
                    "base_ejection must be > 0 and max_ejection >= base_ejection".into(),
                ));
            }
        }
        if let Some(hc) = &u.health_check {
            let hk = format!("{base}.health_check");
            if !hc.path.starts_with('/') {
                out.push((format!("{hk}.path"), "must start with /".into()));
            }
            if hc.interval.0.is_zero() {
                out.push((format!("{hk}.interval"), "must be greater than zero".into()));
            }
            if hc.timeout.0.is_zero() {
                out.push((format!("{hk}.timeout"), "must be greater than zero".into()));
            }
            if hc.healthy_after == 0 || hc.unhealthy_after == 0 {
                out.push((hk.clone(), "healthy_after and unhealthy_after must be at least 1".into()));
            }
            if hc.kind == super::file::CheckKind::Grpc && !u.http2 {
                out.push((format!("{hk}.type"), "a grpc check needs http2 = true on the upstream".into()));
            }
            if hc.expect_status.iter().any(|s| !(100..=599).contains(s)) {
                out.push((format!("{hk}.expect_status"), "statuses must be between 100 and 599".into()));
            }
        }
    }
}

fn store(f: &File, out: &mut Findings) {
    if let Some(c) = &f.cache {
        if c.memory.0 < 1 << 20 {
            out.push(("cache.memory".into(), "must be at least 1MiB".into()));
        }
        if c.max_object.0 == 0 || c.max_object.0 > c.memory.0 || c.max_object.0 > 64 << 20 {
            out.push(("cache.max_object".into(), "must be between 1 byte and min(memory, 64MiB)".into()));
        }
    }
    if let Some(s) = &f.store {
        if let Some(p) = &s.path {
            absolute("store.path", p, out);
        }
        if let Some(r) = &s.redis {
            if !(r.starts_with("redis://") || r.starts_with("rediss://") || r.starts_with("unix://")) {
                out.push(("store.redis".into(), format!("`{r}` is not a redis:// URL")));
            }
        }
        if s.on_error != "allow" && s.on_error != "deny" {
            out.push(("store.on_error".into(), format!("`{}` is not allow or deny", s.on_error)));
        }
        if s.timeout.0.is_zero() {
            out.push(("store.timeout".into(), "must be greater than zero".into()));
        }
    }
    // A limit that asks for Redis needs [store] redis.
    let has_redis = f.store.as_ref().is_some_and(|s| s.redis.is_some());
    let tables = f
        .routes
        .iter()
        .flat_map(|(r, route)| route.plugins.iter().map(move |(p, v)| (format!("routes.{r}.plugins.{p}"), v)))
        .chain(f.plugins.iter().map(|(p, v)| (format!("plugins.{p}"), v)));
    for (key, v) in tables {
        if v.get("store").and_then(|s| s.as_str()) == Some("redis") && !has_redis {
            out.push((format!("{key}.store"), "redis needs [store] redis = \"redis://...\"".into()));
        }
    }
}

fn plans(f: &File, out: &mut Findings) {
    let mut registry = gatehouse_plugins::limits::plans::Plans::default();
    for (name, p) in &f.plans {
        if let Err(e) = registry.add(name, p) {
            out.push((
                if e.key.is_empty() {
                    format!("plans.{name}")
                } else {
                    format!("plans.{name}.{}", e.key)
                },
                e.reason,
            ));
        }
    }
    for (name, c) in &f.consumers {
        if let Some(p) = &c.plan {
            if !f.plans.contains_key(p) {
                out.push((format!("consumers.{name}.plan"), format!("plan `{p}` is not defined")));
            }
        }
    }
}

fn consumers(f: &File, out: &mut Findings) {
    if let Err(e) = http::HeaderName::from_bytes(f.server.consumer_header.as_bytes()) {
        out.push(("server.consumer_header".into(), format!("not a header name: {e}")));
    }
    let mut registry = gatehouse_plugins::consumers::Consumers::default();
    for (name, c) in &f.consumers {
        let base = format!("consumers.{name}");
        if let Some(b) = &c.basic_auth {
            if let Err(e) = gatehouse_plugins::basic_auth::check_hash(&b.password_hash) {
                out.push((format!("{base}.basic_auth.password_hash"), e));
            }
            if b.username.is_empty() || b.username.contains(':') {
                out.push((format!("{base}.basic_auth.username"), "must be non-empty and without ':'".into()));
            }
        }
        if let Err(e) = registry.add(name, c.groups.clone(), c.plan.clone(), &crate::snapshot::credentials(c)) {
            // The registry reports "field: reason".
            let (field, reason) = e.split_once(": ").unwrap_or(("", e.as_str()));
            out.push((format!("{base}.{field}"), reason.to_string()));
        }
    }
}

fn routes(f: &File, out: &mut Findings) {
    for (name, r) in &f.routes {
        let base = format!("routes.{name}");
        if r.paths.is_empty() {
            out.push((format!("{base}.paths"), "at least one path is required".into()));
        }
        for (i, p) in r.paths.iter().enumerate() {
            let key = format!("{base}.paths[{i}]");
            if let Some(re) = p.strip_prefix('~') {
                if let Err(e) = crate::router::path_regex(re) {
                    out.push((key, format!("invalid regex: {e}")));
                }
            } else {
                let lit = p.strip_prefix('=').unwrap_or(p);
                if !lit.starts_with('/') {
                    out.push((key, format!("`{p}` must start with / (or =/ for exact, ~ for a regex)")));
                }
            }
        }
        for (field, list) in [("hosts", &r.hosts), ("sni", &r.sni)] {
            for (i, h) in list.iter().enumerate() {
                let bare = h.strip_prefix("*.").unwrap_or(h);
                if bare.is_empty() || bare.contains('*') || bare.contains('/') || bare.contains(':') {
                    out.push((format!("{base}.{field}[{i}]"), format!("`{h}` is not a host name or *.wildcard")));
                }
            }
        }
        if (!r.sni.is_empty() || r.scheme == Some(super::file::Scheme::Https)) && !f.listeners.values().any(|l| l.tls) {
            out.push((format!("{base}.sni"), "matches TLS requests, and no listener has tls = true".into()));
        }
        for (i, m) in r.methods.iter().enumerate() {
            if http::Method::from_bytes(m.as_bytes()).is_err() || m.chars().any(|c| c.is_ascii_lowercase()) {
                out.push((format!("{base}.methods[{i}]"), format!("`{m}` is not an upper-case HTTP method")));
            }
        }
        for (k, v) in &r.headers {
            if http::HeaderName::from_bytes(k.as_bytes()).is_err() || http::HeaderValue::from_str(v).is_err() {
                out.push((format!("{base}.headers.{k}"), "not a valid header name and value".into()));
            }
        }
        let answers_itself = r.plugins.contains_key(gatehouse_plugins::respond::NAME);
        match &r.upstream {
            Some(u) if !f.upstreams.contains_key(u) => {
                out.push((
                    format!("{base}.upstream"),
                    format!("upstream `{u}` is not defined (defined: {})", names(f.upstreams.keys())),
                ));
            }
            None if !answers_itself && r.aggregate.is_none() => {
                out.push((
                    format!("{base}.upstream"),
                    "required unless the route has a respond plugin or an aggregate table".into(),
                ));
            }
            _ => {}
        }
        if r.grpc {
            if let Some(u) = r.upstream.as_ref().and_then(|u| f.upstreams.get(u)) {
                if !u.http2 {
                    out.push((
                        format!("{base}.grpc"),
                        "gRPC needs HTTP/2 to the targets: set http2 = true on the upstream".into(),
                    ));
                }
            }
            if r.plugins.contains_key(crate::cache::PLUGIN) {
                out.push((format!("{base}.plugins.cache"), "gRPC answers are never cached".into()));
            }
        }
        if r.websocket && r.websocket_idle_timeout.0.is_zero() {
            out.push((format!("{base}.websocket_idle_timeout"), "must be greater than zero".into()));
        }
        if r.grpc_web && !r.grpc {
            out.push((
                format!("{base}.grpc_web"),
                "grpc-web is bridged to gRPC: set grpc = true too".into(),
            ));
        }
        super::aggregate::validate(f, name, r, out);
        plugins(&format!("{base}.plugins"), &r.plugins, out);
    }
}

fn names<'a>(it: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = it.map(|s| s.as_str()).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Building each plugin here means a bad plugin table fails `-t`, not the first request.
fn plugins(base: &str, map: &std::collections::BTreeMap<String, toml::Value>, out: &mut Findings) {
    for (name, value) in map {
        if name == crate::cache::PLUGIN {
            if base == "plugins" {
                out.push((
                    format!("{base}.{name}"),
                    "caching is configured per route ([routes.NAME.plugins.cache])".into(),
                ));
            } else if let Err((k, reason)) = crate::cache::Policy::from_toml(value) {
                let key = if k.is_empty() || k == "." {
                    format!("{base}.{name}")
                } else {
                    format!("{base}.{name}.{k}")
                };
                out.push((key, reason));
            }
            continue;
        }
        if let Err(e) = gatehouse_plugins::build(name, value) {
            let key = if e.key.is_empty() {
                format!("{base}.{name}")
            } else {
                format!("{base}.{name}.{}", e.key)
            };
            out.push((key, e.reason));
        }
    }
}
