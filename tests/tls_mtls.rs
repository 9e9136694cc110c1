//! Client certificates through real TLS handshakes: a verified certificate names its
//! consumer (so ACLs and rate limits apply), one from another CA or none at all gets the
//! 401 on an `optional` listener and fails the handshake on a `required` one.

mod common;
use common::tls::{fingerprint, get, Ca, Hello, Leaf};
use common::{Gateway, Upstream};
use rcgen::DnType;

fn gateway(up: &Upstream, dir: &std::path::Path, ca: &Ca, server_ca: &Ca, mode: &str, fp: &str) -> (Gateway, String) {
    let https = format!("127.0.0.1:{}", common::free_port());
    let site = server_ca.leaf(dir, "site", &["api.test"], -1, 30);
    let ca_file = ca.write(dir, "clients-ca.pem");
    let body = format!(
        r#"
[server]
pid_file = "{{dir}}/gatehouse.pid"
upgrade_sock = "{{dir}}/upgrade.sock"
[listeners.public]
addr = "{{listen}}"
[listeners.https]
addr = "{https}"
tls = true
client_ca = "file:{ca}"
client_cert = "{mode}"
[admin]
addr = "{{admin}}"
token = "test-admin-token"
[log]
access = "{{dir}}/access.log"
level = "warn"
[tls.certificates.site]
cert = "file:{cert}"
key = "file:{key}"
default = true
[consumers.partner]
groups = ["partners"]
client_cert_subject = "CN=partner-gw, O=Partner"
[consumers.team]
groups = ["partners"]
client_cert_subject = "O=Corp + CN=team"
[consumers.ops]
groups = ["staff"]
client_cert_fingerprint = "{fp}"
[upstreams.u]
targets = ["{up}"]
[routes.partner]
paths = ["/partner"]
upstream = "u"
[routes.partner.plugins.mtls_auth]
[routes.partner.plugins.acl]
allow = ["partners"]
[routes.partner.plugins.rate_limit]
requests = 2
per = "1m"
[routes.open]
paths = ["/"]
upstream = "u"
"#,
        ca = ca_file.display(),
        cert = site.cert.display(),
        key = site.key.display(),
        up = up.addr
    );
    (Gateway::start_raw(&body, &[]), https)
}

fn hello<'a>(client: Option<&'a Leaf>) -> Hello<'a> {
    Hello {
        sni: Some("api.test"),
        client,
        ..Default::default()
    }
}

#[test]
fn a_verified_certificate_names_its_consumer_on_an_optional_listener() {
    let up = Upstream::start("u");
    let dir = common::gateway::test_dir();
    let (clients, other_ca, server_ca) = (Ca::new("clients CA"), Ca::new("another CA"), Ca::new("server CA"));
    let partner = clients.client(&dir, "partner", "partner-gw", "Partner");
    let ops = clients.client(&dir, "ops", "ops-tool", "Us");
    let forged = other_ca.client(&dir, "forged", "partner-gw", "Partner");
    let (gw, https) = gateway(&up, &dir, &clients, &server_ca, "optional", &fingerprint(&ops.cert_pem));

    let forged_xfcc = ("x-forwarded-client-cert", "Hash=00;Subject=\"CN=admin,O=Us\"");
    let (_, r) = get(&https, &hello(Some(&partner)), "/partner", &[("x-consumer", "admin"), forged_xfcc]).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.last().header("x-forwarded-client-cert"), None, "a client's XFCC never passes");
    assert_eq!(
        up.last().header("x-consumer"),
        Some("partner"),
        "the certificate's consumer, not the client's header"
    );
    // The consumer's limits apply: 2 a minute.
    assert_eq!(get(&https, &hello(Some(&partner)), "/partner", &[]).unwrap().1.status, 200);
    assert_eq!(get(&https, &hello(Some(&partner)), "/partner", &[]).unwrap().1.status, 429);
    // By fingerprint: authenticated, but not in the ACL's group.
    let (_, r) = get(&https, &hello(Some(&ops)), "/partner", &[]).unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    // Same subject, another CA: the handshake completes (optional), the route refuses.
    let (_, r) = get(&https, &hello(Some(&forged)), "/partner", &[]).unwrap();
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.json()["error"], "client certificate not verified");
    let (_, r) = get(&https, &hello(None), "/partner", &[]).unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "client certificate required");
    assert!(r.json()["request_id"].is_string());
    // Routes without mtls_auth do not care.
    assert_eq!(get(&https, &hello(None), "/other", &[]).unwrap().1.status, 200);
    assert_eq!(up.count(), 3);
    // The log tells a verified certificate from one that only claims the same subject.
    let mut seen = Vec::new();
    common::wait_until(std::time::Duration::from_secs(5), "the access log lines", || {
        seen = gw
            .access_log()
            .into_iter()
            .filter(|l| l["client_cert"].is_string())
            .map(|l| {
                (
                    l["client_cert"].as_str().unwrap_or("").to_string(),
                    l["client_cert_verified"].clone(),
                )
            })
            .collect();
        seen.len() >= 5
    });
    let verified = |subject: &str, v: bool| seen.iter().any(|(s, ok)| s == subject && *ok == serde_json::json!(v));
    assert!(verified("CN=partner-gw,O=Partner", true), "{seen:?}");
    assert!(verified("CN=partner-gw,O=Partner", false), "the forged one: {seen:?}");
}

#[test]
fn a_required_listener_fails_the_handshake_without_a_good_certificate() {
    let up = Upstream::start("u");
    let dir = common::gateway::test_dir();
    let (clients, other_ca, server_ca) = (Ca::new("clients CA"), Ca::new("another CA"), Ca::new("server CA"));
    let partner = clients.client(&dir, "partner", "partner-gw", "Partner");
    let forged = other_ca.client(&dir, "forged", "partner-gw", "Partner");
    let ops = clients.client(&dir, "ops", "ops-tool", "Us");
    let (_gw, https) = gateway(&up, &dir, &clients, &server_ca, "required", &fingerprint(&ops.cert_pem));
    assert!(get(&https, &hello(None), "/", &[]).is_err(), "no certificate");
    assert!(get(&https, &hello(Some(&forged)), "/", &[]).is_err(), "a certificate of another CA");
    let (_, r) = get(&https, &hello(Some(&partner)), "/partner", &[]).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header("x-consumer"), Some("partner"));
}

#[test]
fn a_subject_value_cannot_pose_as_other_attributes() {
    let up = Upstream::start("u");
    let dir = common::gateway::test_dir();
    let (clients, server_ca) = (Ca::new("clients CA"), Ca::new("server CA"));
    let (_gw, https) = gateway(&up, &dir, &clients, &server_ca, "optional", &format!("sha256:{}", "0".repeat(64)));
    // Certificates the trusted CA signed for names a user could choose, each spelling
    // `CN=partner-gw,O=Partner` when written without RFC 4514 escaping.
    let attacks = [
        (
            "comma",
            clients.client_named(&dir, "comma", &[(DnType::CommonName, "partner-gw,O=Partner")]),
        ),
        (
            "plus",
            clients.client_named(&dir, "plus", &[(DnType::CommonName, "partner-gw+O=Partner")]),
        ),
        (
            "trailing space",
            clients.client_named(
                &dir,
                "space",
                &[(DnType::OrganizationName, "Partner"), (DnType::CommonName, "partner-gw ")],
            ),
        ),
        (
            "one multi-valued RDN",
            clients.client_multivalued(&dir, "multi", "/CN=partner-gw+O=Partner"),
        ),
    ];
    for (what, cert) in &attacks {
        let (_, r) = get(&https, &hello(Some(cert)), "/partner", &[]).unwrap();
        assert_eq!(r.status, 401, "{what}: {}", r.body);
    }
    assert_eq!(up.count(), 0);
    // A multi-valued RDN configured as one (attributes in any order, spaces around `+`).
    let team = clients.client_multivalued(&dir, "team", "/CN=team+O=Corp");
    let (_, r) = get(&https, &hello(Some(&team)), "/partner", &[]).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.last().header("x-consumer"), Some("team"));
    // The real subject still maps.
    let partner = clients.client(&dir, "partner", "partner-gw", "Partner");
    assert_eq!(get(&https, &hello(Some(&partner)), "/partner", &[]).unwrap().1.status, 200);
    assert_eq!(up.last().header("x-consumer"), Some("partner"));
}
