//! The token's JOSE header, read before any key is touched, and the claim checks the JWT
//! library leaves to its caller.

use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

#[derive(Debug, PartialEq)]
pub struct TokenHeader {
    pub alg: Algorithm,
    pub kid: Option<String>,
}

/// Upper bound on a token the gateway will look at; a bearer token larger than this is
/// junk or an attempt to make the gateway work (decode, parse JSON) for nothing.
pub const MAX_TOKEN: usize = 16 * 1024;

/// Splits a compact JWS (`header.payload.signature`) and reads its header. Refused before
/// any key is used: not three base64url parts, a header that is not a JSON object, `alg:
/// none` in any letter case, an algorithm outside `allowed`, and any `crit` extension
/// (none is understood). `jku`, `x5u`, `x5c` and embedded `jwk` members are never read.
pub fn read_header(token: &str, allowed: &[Algorithm]) -> Result<TokenHeader, &'static str> {
    if token.len() > MAX_TOKEN {
        return Err("malformed token");
    }
    let mut parts = token.split('.');
    let (Some(head), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err("malformed token");
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head.trim_end_matches('='))
        .map_err(|_| "malformed token")?;
    let h: Map<String, Value> = serde_json::from_slice(&raw).map_err(|_| "malformed token")?;
    let alg = h.get("alg").and_then(Value::as_str).ok_or("token has no alg")?;
    if alg.eq_ignore_ascii_case("none") {
        return Err("unsigned tokens are not accepted");
    }
    let alg: Algorithm = alg.parse().map_err(|_| "unknown algorithm")?;
    if !allowed.contains(&alg) {
        return Err("algorithm not allowed");
    }
    if h.contains_key("crit") {
        return Err("unsupported critical header");
    }
    let kid = match h.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err("malformed token"),
    };
    Ok(TokenHeader { alg, kid })
}

/// Registered claims whose type RFC 7519 fixes and the library does not check: `iss` and
/// `sub` are strings (an array `iss` was accepted), `exp` and `nbf` numbers.
pub fn check_claim_types(claims: &Map<String, Value>) -> Result<(), &'static str> {
    for name in ["iss", "sub"] {
        if claims.get(name).is_some_and(|v| !v.is_string()) {
            return Err("token claim has the wrong type");
        }
    }
    for name in ["exp", "nbf", "iat"] {
        if claims.get(name).is_some_and(|v| !v.is_number()) {
            return Err("token claim has the wrong type");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn b64(v: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
    }

    const ALLOWED: &[Algorithm] = &[Algorithm::RS256, Algorithm::HS256];

    #[test]
    fn headers() {
        let t = |h: &str| format!("{}.e30.sig", b64(h.as_bytes()));
        assert_eq!(
            read_header(&t(r#"{"alg":"RS256","kid":"k"}"#), ALLOWED),
            Ok(TokenHeader {
                alg: Algorithm::RS256,
                kid: Some("k".into())
            })
        );
        assert_eq!(
            read_header(&t(r#"{"alg":"nOnE"}"#), ALLOWED),
            Err("unsigned tokens are not accepted")
        );
        assert_eq!(read_header(&t(r#"{"alg":"ES256"}"#), ALLOWED), Err("algorithm not allowed"));
        assert_eq!(
            read_header(&t(r#"{"alg":"RS256","crit":[]}"#), ALLOWED),
            Err("unsupported critical header")
        );
        assert_eq!(read_header(&t(r#"{"alg":"RS256","kid":7}"#), ALLOWED), Err("malformed token"));
        assert_eq!(read_header(&t("[]"), ALLOWED), Err("malformed token"));
        assert_eq!(read_header("a.b", ALLOWED), Err("malformed token"));
        assert_eq!(read_header("a.b.c.d", ALLOWED), Err("malformed token"));
    }

    #[test]
    fn claim_types() {
        let m = |v: Value| v.as_object().cloned().unwrap();
        assert!(check_claim_types(&m(serde_json::json!({"iss": "a", "exp": 1}))).is_ok());
        assert!(check_claim_types(&m(serde_json::json!({"iss": ["a"]}))).is_err());
        assert!(check_claim_types(&m(serde_json::json!({"sub": 7}))).is_err());
        assert!(check_claim_types(&m(serde_json::json!({"exp": "1"}))).is_err());
    }

    proptest! {
        /// Whatever a client sends as a token, reading its header answers and never panics.
        #[test]
        fn any_input_is_answered(s in "\\PC{0,200}", dots in 0usize..5) {
            let token = std::iter::repeat_n(s.as_str(), dots + 1).collect::<Vec<_>>().join(".");
            let _ = read_header(&token, ALLOWED);
        }

        #[test]
        fn any_header_bytes_are_answered(head in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = read_header(&format!("{}.e30.x", b64(&head)), ALLOWED);
        }
    }
}
