//! JWT and JWKS, proved with the attacks: forged and unsigned tokens, algorithm confusion,
//! expired tokens, unknown kids against a counting JWKS server, key rotation.

mod common;
use base64::Engine;
use common::auth::{consumers, env};
use common::{request, Gateway, Upstream};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const HMAC: &str = "0123456789abcdef0123456789abcdef-hmac-test-secret";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIX}/{name}")).unwrap()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn claims(sub: &str) -> serde_json::Value {
    json!({ "sub": sub, "iss": "https://idp.test/", "aud": "users-api", "exp": now() + 600, "email": format!("{sub}@example.com") })
}

fn token(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &serde_json::Value) -> String {
    let mut h = Header::new(alg);
    h.kid = Some(kid.to_string());
    encode(&h, claims, key).unwrap()
}

fn rsa() -> EncodingKey {
    EncodingKey::from_rsa_pem(&fixture("rsa-private.pem")).unwrap()
}
fn rsa2() -> EncodingKey {
    EncodingKey::from_rsa_pem(&fixture("rsa2-private.pem")).unwrap()
}
fn ec() -> EncodingKey {
    EncodingKey::from_ec_pem(&fixture("ec-private.pem")).unwrap()
}

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

/// A token with a hand-written header, signed by a real JWT library's signer.
fn raw_token(header: serde_json::Value, claims: &serde_json::Value, alg: Algorithm, key: &EncodingKey) -> String {
    let msg = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), key, alg).unwrap();
    format!("{msg}.{sig}")
}

fn bearer(gw: &Gateway, path: &str, token: &str) -> common::Response {
    request(&gw.addr, "GET", path, &[("Authorization", &format!("Bearer {token}"))], None)
}

fn jwt_route(extra: &str, up: &Upstream) -> String {
    format!(
        r#"{consumers}
[upstreams.u]
targets = ["{up}"]
[routes.r]
paths = ["/"]
upstream = "u"
[routes.r.plugins.jwt_auth]
issuer = "https://idp.test/"
audiences = ["users-api"]
algorithms = ["RS256", "ES256", "HS256"]
leeway = "5s"
forward_claims = {{ "x-user-email" = "email" }}
{extra}
"#,
        consumers = consumers(),
        up = up.addr
    )
}

#[test]
fn jwt_static_keys_and_the_attacks() {
    let up = Upstream::start("u");
    // Symmetric and asymmetric keys may not share a key set (algorithm confusion): the HMAC
    // key has a route of its own.
    let keys = format!(
        r#"keys = [{{ kid = "rsa1", alg = "RS256", pem = "file:{FIX}/rsa-public.pem" }},
        {{ kid = "ec1", alg = "ES256", pem = "file:{FIX}/ec-public.pem" }}]
[routes.h]
paths = ["/h"]
upstream = "u"
[routes.h.plugins.jwt_auth]
issuer = "https://idp.test/"
audiences = ["users-api"]
forward_claims = {{ "x-user-email" = "email" }}
keys = [{{ kid = "h1", alg = "HS256", secret = "{HMAC}" }}]"#
    );
    let gw = Gateway::start_with_env(&jwt_route(&keys, &up), &env());

    for (alg, kid, key, path) in [
        (Algorithm::RS256, "rsa1", rsa(), "/"),
        (Algorithm::ES256, "ec1", ec(), "/"),
        (Algorithm::HS256, "h1", EncodingKey::from_secret(HMAC.as_bytes()), "/h"),
    ] {
        let r = bearer(&gw, path, &token(alg, kid, &key, &claims("acme-service")));
        assert_eq!(r.status, 200, "{alg:?}: {}", r.body);
        assert_eq!(up.last().header("x-consumer"), Some("acme"));
        assert_eq!(up.last().header("x-user-email"), Some("acme-service@example.com"));
        assert_eq!(up.last().header("authorization"), None);
    }
    // A subject that is no consumer still authenticates, under a name no consumer can have.
    assert_eq!(
        bearer(&gw, "/", &token(Algorithm::RS256, "rsa1", &rsa(), &claims("someone"))).status,
        200
    );
    assert_eq!(up.last().header("x-consumer"), Some("jwt:someone"));
    let before = up.count();

    let expect_401 = |name: &str, t: &str, why: &str| {
        let r = bearer(&gw, "/", t);
        assert_eq!(r.status, 401, "{name}: {}", r.body);
        assert_eq!(r.json()["error"], why, "{name}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    };
    expect_401(
        "forged signature",
        &token(Algorithm::RS256, "rsa1", &rsa2(), &claims("acme-service")),
        "invalid signature",
    );
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims("acme-service").to_string().as_bytes())
    );
    expect_401("alg none", &none, "unsigned tokens are not accepted");
    let none_upper = format!(
        "{}.{}.",
        b64(br#"{"alg":"NONE","kid":"rsa1"}"#),
        b64(claims("acme-service").to_string().as_bytes())
    );
    expect_401("alg NONE", &none_upper, "unsigned tokens are not accepted");
    // HS256 "signed" with the RSA public key as the HMAC secret, naming the RSA key.
    let confused = token(
        Algorithm::HS256,
        "rsa1",
        &EncodingKey::from_secret(&fixture("rsa-public.pem")),
        &claims("acme-service"),
    );
    expect_401("HS/RS confusion", &confused, "no key for this token");
    let mut c = claims("acme-service");
    c["exp"] = json!(now() - 60);
    expect_401("expired", &token(Algorithm::RS256, "rsa1", &rsa(), &c), "token expired");
    let mut c = claims("acme-service");
    c["nbf"] = json!(now() + 600);
    expect_401("not yet valid", &token(Algorithm::RS256, "rsa1", &rsa(), &c), "token not yet valid");
    let mut c = claims("acme-service");
    c["iss"] = json!("https://evil.test/");
    expect_401("wrong iss", &token(Algorithm::RS256, "rsa1", &rsa(), &c), "wrong issuer");
    let mut c = claims("acme-service");
    c["aud"] = json!("other-api");
    expect_401("wrong aud", &token(Algorithm::RS256, "rsa1", &rsa(), &c), "wrong audience");
    let mut c = claims("acme-service");
    c.as_object_mut().unwrap().remove("exp");
    expect_401(
        "no exp",
        &token(Algorithm::RS256, "rsa1", &rsa(), &c),
        "token lacks a required claim",
    );
    let crit = raw_token(
        json!({"alg": "RS256", "kid": "rsa1", "crit": ["exp-ext"], "exp-ext": 1}),
        &claims("acme-service"),
        Algorithm::RS256,
        &rsa(),
    );
    expect_401("unknown crit", &crit, "unsupported critical header");
    // A header pointing at the attacker's own key is ignored; their signature fails.
    let jwk = serde_json::to_value(Jwk::from_encoding_key(&rsa2(), Algorithm::RS256).unwrap()).unwrap();
    let embedded = raw_token(
        json!({"alg": "RS256", "kid": "rsa1", "jwk": jwk, "jku": "http://127.0.0.1:1/evil.json"}),
        &claims("acme-service"),
        Algorithm::RS256,
        &rsa2(),
    );
    expect_401("embedded jwk / jku", &embedded, "invalid signature");
    expect_401("garbage", "not.a.token", "malformed token");
    // A client's own copy of a forwarded-claim header never passes.
    let r = request(&gw.addr, "GET", "/", &[("x-user-email", "admin@example.com")], None);
    assert_eq!(r.status, 401);
    assert_eq!(up.count(), before, "no rejected request reached the upstream");
}

fn jwks_body(keys: &[(&EncodingKey, &str)]) -> String {
    let set = JwkSet {
        keys: keys
            .iter()
            .map(|(k, kid)| {
                let mut j = Jwk::from_encoding_key(k, Algorithm::RS256).unwrap();
                j.common.key_id = Some(kid.to_string());
                j
            })
            .collect(),
    };
    serde_json::to_string(&set).unwrap()
}

#[test]
fn jwks_unknown_kid_refetch_is_rate_limited_and_cache_survives_outage() {
    let up = Upstream::start("u");
    let idp = Upstream::start("idp");
    idp.set(|b| {
        b.body = Some(jwks_body(&[(&rsa(), "k1")]));
        b.headers = vec![("Content-Type".into(), "application/json".into())];
    });
    let gw = Gateway::start_with_env(
        &jwt_route(
            &format!(
                "jwks_url = \"http://{}/jwks.json\"\njwks_min_refetch = \"2s\"\njwks_refresh = \"10m\"",
                idp.addr
            ),
            &up,
        ),
        &env(),
    );
    assert_eq!(
        bearer(&gw, "/", &token(Algorithm::RS256, "k1", &rsa(), &claims("acme-service"))).status,
        200
    );
    assert_eq!(idp.count(), 1, "first use fetches the JWKS once");

    // Within the cooldown after a fetch, an unknown kid fetches nothing.
    assert_eq!(
        bearer(
            &gw,
            "/",
            &token(Algorithm::RS256, "unknown-early", &rsa2(), &claims("acme-service"))
        )
        .status,
        401
    );
    assert_eq!(idp.count(), 1);
    // Past it, a flood of tokens naming unknown kids: one refetch, not one per request.
    // (Minted first: RSA signing in a debug build is slow enough to outlast a cooldown.)
    let flood: Vec<String> = (0..20)
        .map(|i| token(Algorithm::RS256, &format!("unknown-{i}"), &rsa2(), &claims("acme-service")))
        .collect();
    std::thread::sleep(Duration::from_millis(2100));
    for t in &flood {
        assert_eq!(bearer(&gw, "/", t).status, 401);
    }
    assert_eq!(idp.count(), 2, "one refetch for 20 unknown kids");

    // The IdP goes down: cached keys keep working.
    idp.kill();
    for _ in 0..5 {
        let t = token(
            Algorithm::RS256,
            "k1",
            &rsa(),
            &json!({"sub": "acme-service", "iss": "https://idp.test/", "aud": "users-api", "exp": now() + 300, "jti": format!("{:?}", std::time::Instant::now())}),
        );
        assert_eq!(bearer(&gw, "/", &t).status, 200);
    }
}

#[test]
fn jwks_rotation_is_picked_up() {
    let up = Upstream::start("u");
    let idp = Upstream::start("idp");
    idp.set(|b| b.body = Some(jwks_body(&[(&rsa(), "k1")])));
    let gw = Gateway::start_with_env(
        &jwt_route(
            &format!("jwks_url = \"http://{}/jwks.json\"\njwks_min_refetch = \"100ms\"", idp.addr),
            &up,
        ),
        &env(),
    );
    assert_eq!(
        bearer(&gw, "/", &token(Algorithm::RS256, "k1", &rsa(), &claims("acme-service"))).status,
        200
    );
    // The IdP rotates to a new key k2.
    idp.set(|b| b.body = Some(jwks_body(&[(&rsa(), "k1"), (&rsa2(), "k2")])));
    std::thread::sleep(Duration::from_millis(150));
    let r = bearer(&gw, "/", &token(Algorithm::RS256, "k2", &rsa2(), &claims("acme-service")));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(idp.count(), 2);
}
