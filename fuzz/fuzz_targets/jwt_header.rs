//! The JWT splitter and header reader, before any key is touched; and JWK sets as a JWKS
//! endpoint might serve them.
#![no_main]
use gatehouse_plugins::jwt_auth::{keys_from_json, token::read_header};
use jsonwebtoken::Algorithm::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let all = [HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA];
    if let Ok(t) = std::str::from_utf8(data) {
        let _ = read_header(t, &all);
    }
    let _ = keys_from_json(data, &all, false);
});
