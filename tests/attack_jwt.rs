//! Attacks on JWT key handling: keys used for what they are not (encryption keys, keys of
//! another algorithm or curve, AES keys as HMAC secrets), keys too weak to trust, key sets
//! that invite confusion, claims of the wrong type, subjects that borrow a consumer's name,
//! and JWKS fetched over plain HTTP or without a size bound.

mod common;
use base64::Engine;
use common::{request, Gateway, Upstream};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const HMAC: &str = "0123456789abcdef0123456789abcdef-hmac-test-secret";

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIX}/{name}")).unwrap()
}
fn rsa() -> EncodingKey {
    EncodingKey::from_rsa_pem(&pem("rsa-private.pem")).unwrap()
}
fn rsa2() -> EncodingKey {
    EncodingKey::from_rsa_pem(&pem("rsa2-private.pem")).unwrap()
}
fn ec() -> EncodingKey {
    EncodingKey::from_ec_pem(&pem("ec-private.pem")).unwrap()
}
fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

fn claims(sub: &str) -> Value {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    json!({ "sub": sub, "iss": "https://idp.test/", "exp": now + 600 })
}

fn token(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = Some(kid.to_string());
    encode(&h, claims, key).unwrap()
}

/// A public JWK for `key` with extra members (`use`, `key_ops`, `alg`, ...) set or removed.
fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str, extra: Value) -> Value {
    let mut j = serde_json::to_value(Jwk::from_encoding_key(key, alg).unwrap()).unwrap();
    j["kid"] = json!(kid);
    j.as_object_mut().unwrap().remove("alg");
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            j.as_object_mut().unwrap().remove(k);
        } else {
            j[k] = v.clone();
        }
    }
    j
}

fn oct(kid: &str, secret: &[u8], alg: Option<&str>) -> Value {
    let mut j = json!({"kty": "oct", "kid": kid, "k": b64(secret)});
    if let Some(a) = alg {
        j["alg"] = json!(a);
    }
    j
}

fn route(keys_or_url: &str, up: &Upstream) -> String {
    format!(
        r#"
[consumers.acme]
jwt_subject = "acme-service"
[consumers.bob]
keys = ["bob-key"]
[upstreams.u]
targets = ["{up}"]
[routes.r]
paths = ["/"]
upstream = "u"
[routes.r.plugins.jwt_auth]
issuer = "https://idp.test/"
{keys_or_url}
"#,
        up = up.addr
    )
}

fn bearer(gw: &Gateway, t: &str) -> common::Response {
    request(&gw.addr, "GET", "/", &[("Authorization", &format!("Bearer {t}"))], None)
}

/// `gatehouse -t` on the route with these key settings: Ok, or the error text.
fn check(keys: &str) -> Result<(), String> {
    let dir = common::gateway::test_dir();
    let path = dir.join("jwt.toml");
    let up = "[listeners.public]\naddr = \"127.0.0.1:1\"\n[upstreams.u]\ntargets = [\"127.0.0.1:2\"]\n";
    let text = format!("{up}[routes.r]\nupstream = \"u\"\n[routes.r.plugins.jwt_auth]\nissuer = \"https://idp.test/\"\n{keys}\n");
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(Gateway::bin())
        .arg("-t")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn toml_jwk(v: &Value) -> String {
    let t: toml::Value = serde_json::from_value(v.clone()).unwrap();
    toml::to_string(&t).unwrap().trim().replace('\n', ", ")
}

#[test]
fn static_keys_are_used_only_for_what_they_declare() {
    let sig = jwk(&rsa(), Algorithm::RS256, "a", json!({}));
    assert!(check(&format!(
        "keys = [{{ kid = \"a\", alg = \"RS256\", jwk = {{ {} }} }}]",
        toml_jwk(&sig)
    ))
    .is_ok());
    let refused = [
        ("use enc", jwk(&rsa(), Algorithm::RS256, "a", json!({"use": "enc"}))),
        (
            "key_ops encrypt",
            jwk(&rsa(), Algorithm::RS256, "a", json!({"key_ops": ["encrypt"]})),
        ),
        ("alg RSA-OAEP", jwk(&rsa(), Algorithm::RS256, "a", json!({"alg": "RSA-OAEP"}))),
        ("alg PS256 for RS256", jwk(&rsa(), Algorithm::RS256, "a", json!({"alg": "PS256"}))),
        ("EC marked ES512", jwk(&ec(), Algorithm::ES256, "a", json!({"alg": "ES512"}))),
        ("P-256 key for ES384", jwk(&ec(), Algorithm::ES256, "a", json!({"crv": "P-256"}))),
    ];
    for (name, j) in refused {
        let alg = if name.contains("ES384") {
            "ES384"
        } else if name.contains("EC") {
            "ES256"
        } else {
            "RS256"
        };
        let r = check(&format!(
            "keys = [{{ kid = \"a\", alg = \"{alg}\", jwk = {{ {} }} }}]",
            toml_jwk(&j)
        ));
        let err = r.expect_err(name);
        assert!(err.contains("routes.r.plugins.jwt_auth.keys[0]"), "{name}: {err}");
    }
    for (name, j) in [
        ("AES key as HS256", oct("a", &[7u8; 32], Some("A256GCM"))),
        ("empty oct", oct("a", b"", None)),
        ("3-byte oct", oct("a", b"abc", None)),
    ] {
        let err = check(&format!(
            "keys = [{{ kid = \"a\", alg = \"HS256\", jwk = {{ {} }} }}]",
            toml_jwk(&j)
        ))
        .expect_err(name);
        assert!(err.contains("keys[0]"), "{name}: {err}");
    }
    let weak = check(&format!(
        "keys = [{{ kid = \"w\", alg = \"RS256\", pem = \"file:{FIX}/rsa1024-public.pem\" }}]"
    ));
    assert!(weak.expect_err("1024-bit RSA").contains("2048"));
    assert!(check(&format!(
        "allow_weak_rsa = true\nkeys = [{{ kid = \"w\", alg = \"RS256\", pem = \"file:{FIX}/rsa1024-public.pem\" }}]"
    ))
    .is_ok());
    let mixed = check(&format!(
        "keys = [{{ kid = \"r\", alg = \"RS256\", pem = \"file:{FIX}/rsa-public.pem\" }}, {{ kid = \"h\", alg = \"HS256\", secret = \"{HMAC}\" }}]"
    ));
    assert!(mixed.expect_err("symmetric beside asymmetric").contains("symmetric"));
    let dup = check(&format!(
        "keys = [{{ kid = \"r\", alg = \"RS256\", pem = \"file:{FIX}/rsa-public.pem\" }}, {{ kid = \"r\", alg = \"RS256\", pem = \"file:{FIX}/rsa2-public.pem\" }}]"
    ));
    assert!(dup.expect_err("duplicate kid").contains("kid"));
    assert!(check("jwks_url = \"http://idp.example.com/jwks.json\"")
        .expect_err("plain http")
        .contains("https"));
    assert!(check("jwks_url = \"http://127.0.0.1:9/jwks.json\"").is_ok(), "loopback is fine");
    assert!(check("jwks_url = \"http://idp.example.com/jwks.json\"\nallow_insecure_jwks = true").is_ok());
}

#[test]
fn jwks_keys_are_used_only_for_what_they_declare() {
    let up = Upstream::start("u");
    let idp = Upstream::start("idp");
    let set = json!({"keys": [
        jwk(&rsa(), Algorithm::RS256, "good", json!({"use": "sig", "alg": "RS256"})),
        jwk(&rsa(), Algorithm::RS256, "enc", json!({"use": "enc"})),
        jwk(&rsa(), Algorithm::RS256, "ops", json!({"key_ops": ["encrypt", "wrapKey"]})),
        jwk(&rsa(), Algorithm::RS256, "oaep", json!({"alg": "RSA-OAEP"})),
        jwk(&ec(), Algorithm::ES256, "es512", json!({"alg": "ES512"})),
        jwk(&rsa2(), Algorithm::RS256, "ps", json!({"alg": "PS256"})),
    ]});
    idp.set(|b| b.body = Some(set.to_string()));
    let gw = Gateway::start(&route(
        &format!("jwks_url = \"http://{}/jwks.json\"\nalgorithms = [\"RS256\", \"ES256\"]", idp.addr),
        &up,
    ));
    assert_eq!(
        bearer(&gw, &token(Algorithm::RS256, "good", &rsa(), &claims("acme-service"))).status,
        200
    );
    for (kid, alg, key) in [
        ("enc", Algorithm::RS256, rsa()),
        ("ops", Algorithm::RS256, rsa()),
        ("oaep", Algorithm::RS256, rsa()),
        ("es512", Algorithm::ES256, ec()),
        ("ps", Algorithm::RS256, rsa2()),
    ] {
        let r = bearer(&gw, &token(alg, kid, &key, &claims("acme-service")));
        assert_eq!(r.status, 401, "kid {kid}: {}", r.body);
    }
    assert_eq!(up.count(), 1);
}

#[test]
fn a_confusing_jwks_is_rejected_and_the_previous_keys_kept() {
    let up = Upstream::start("u");
    let idp = Upstream::start("idp");
    let good = json!({"keys": [jwk(&rsa(), Algorithm::RS256, "k1", json!({}))]});
    idp.set(|b| b.body = Some(good.to_string()));
    let gw = Gateway::start(&route(
        &format!(
            "jwks_url = \"http://{}/jwks.json\"\njwks_min_refetch = \"1ms\"\nalgorithms = [\"RS256\", \"HS256\"]",
            idp.addr
        ),
        &up,
    ));
    let t1 = token(Algorithm::RS256, "k1", &rsa(), &claims("acme-service"));
    assert_eq!(bearer(&gw, &t1).status, 200);
    let bad_sets = [
        (
            "duplicate kid",
            json!({"keys": [jwk(&rsa(), Algorithm::RS256, "k1", json!({})), jwk(&rsa2(), Algorithm::RS256, "k1", json!({}))]}),
        ),
        (
            "symmetric beside asymmetric",
            json!({"keys": [jwk(&rsa(), Algorithm::RS256, "k1", json!({})), oct("h", HMAC.as_bytes(), Some("HS256"))]}),
        ),
        ("empty oct key", json!({"keys": [oct("h", b"", None)]})),
        ("short oct key", json!({"keys": [oct("h", b"abc", Some("HS256"))]})),
        (
            "oversized",
            json!({"keys": [jwk(&rsa(), Algorithm::RS256, "k1", json!({"x-pad": "p".repeat(1_100_000)}))]}),
        ),
    ];
    for (i, (name, set)) in bad_sets.iter().enumerate() {
        idp.set(|b| b.body = Some(set.to_string()));
        // A token naming a kid the gateway does not have makes it fetch the new set.
        let probe = token(Algorithm::RS256, &format!("new-{i}"), &rsa2(), &claims("acme-service"));
        assert_eq!(bearer(&gw, &probe).status, 401, "{name}");
        let forged = token(Algorithm::HS256, "h", &EncodingKey::from_secret(b"abc"), &claims("acme-service"));
        assert_eq!(bearer(&gw, &forged).status, 401, "{name}: the rejected set's keys are not used");
        assert_eq!(bearer(&gw, &t1).status, 200, "{name}: the previous keys stay in use");
        let refused = gw.metric(&format!("gatehouse_jwks_refused_total{{url=\"http://{}/jwks.json\"}}", idp.addr));
        assert!(refused >= (i + 1) as f64, "{name}: rejected fetches are counted ({refused})");
    }
}

#[test]
fn claims_of_the_wrong_shape_and_borrowed_consumer_names() {
    let up = Upstream::start("u");
    let keys = format!("keys = [{{ kid = \"r\", alg = \"RS256\", pem = \"file:{FIX}/rsa-public.pem\" }}]");
    let gw = Gateway::start(&route(&keys, &up));
    let mut c = claims("acme-service");
    c["iss"] = json!(["https://idp.test/", "https://other.test/"]);
    assert_eq!(
        bearer(&gw, &token(Algorithm::RS256, "r", &rsa(), &c)).status,
        401,
        "iss as an array"
    );
    // `bob` is a consumer (API key) with no jwt_subject: a token cannot take his name.
    let r = bearer(&gw, &token(Algorithm::RS256, "r", &rsa(), &claims("bob")));
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header("x-consumer"), Some("jwt:bob"));
    assert_eq!(
        bearer(&gw, &token(Algorithm::RS256, "r", &rsa(), &claims("acme-service"))).status,
        200
    );
    assert_eq!(
        up.last().header("x-consumer"),
        Some("acme"),
        "a registered subject maps to its consumer"
    );
    drop(gw);
    let gw = Gateway::start(&route(&format!("{keys}\nrequire_consumer = true"), &up));
    assert_eq!(bearer(&gw, &token(Algorithm::RS256, "r", &rsa(), &claims("bob"))).status, 401);
}

#[test]
fn tokens_of_a_key_the_jwks_dropped_are_refused_at_once() {
    let up = Upstream::start("u");
    let idp = Upstream::start("idp");
    idp.set(|b| b.body = Some(json!({"keys": [jwk(&rsa(), Algorithm::RS256, "k1", json!({}))]}).to_string()));
    let gw = Gateway::start(&route(
        &format!("jwks_url = \"http://{}/jwks.json\"\njwks_min_refetch = \"1ms\"", idp.addr),
        &up,
    ));
    let t1 = token(Algorithm::RS256, "k1", &rsa(), &claims("acme-service"));
    assert_eq!(bearer(&gw, &t1).status, 200);
    assert_eq!(bearer(&gw, &t1).status, 200, "now a cached verification");
    // The IdP rotates k1 out; a token naming the new kid makes the gateway fetch the set.
    idp.set(|b| b.body = Some(json!({"keys": [jwk(&rsa2(), Algorithm::RS256, "k2", json!({}))]}).to_string()));
    assert_eq!(
        bearer(&gw, &token(Algorithm::RS256, "k2", &rsa2(), &claims("acme-service"))).status,
        200
    );
    assert_eq!(bearer(&gw, &t1).status, 401, "the cached verification ended with its key");
}
