//! Which key may verify which token.
//!
//! A key verifies exactly one algorithm, and only what it declares itself fit for: a JWK's
//! `use` must be `sig` (or absent), its `key_ops` must include `verify` (or be absent), its
//! `alg` must be a signature algorithm this key can run, and an EC key's curve fixes its
//! algorithm (P-256: ES256, P-384: ES384). Strength is checked where the key is read: HMAC
//! keys at least as long as their hash, RSA moduli of at least 2048 bits unless the operator
//! says otherwise. A key set that mixes symmetric and asymmetric keys, or names one kid
//! twice, is refused whole: those are the sets in which algorithm confusion and key
//! substitution work.

use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use sha2::{Digest, Sha256};
use std::collections::HashSet;

#[derive(Clone)]
pub struct Key {
    pub kid: Option<String>,
    pub alg: Algorithm,
    pub key: DecodingKey,
    /// SHA-256 of the key material: a cached verification stays valid only while a key with
    /// this fingerprint is still held.
    pub fingerprint: [u8; 32],
}

pub const MIN_RSA_BITS: usize = 2048;

/// Why a key is not used.
#[derive(Debug, Clone, PartialEq)]
pub enum Unfit {
    /// Not a signature key, or not one for this algorithm: skipped in a key set.
    Purpose(String),
    /// Too weak to trust (a short HMAC key, a small RSA modulus): refuses the whole set.
    Weak(String),
}

impl std::fmt::Display for Unfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unfit::Purpose(s) | Unfit::Weak(s) => f.write_str(s),
        }
    }
}

fn purpose(s: impl Into<String>) -> Unfit {
    Unfit::Purpose(s.into())
}

fn hmac_min_len(alg: Algorithm) -> usize {
    match alg {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => 32,
    }
}

pub fn is_symmetric(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

fn is_rsa(alg: Algorithm) -> bool {
    use Algorithm::*;
    matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
}

fn fingerprint(material: &[u8]) -> [u8; 32] {
    Sha256::digest(material).into()
}

fn b64url(s: &str) -> Result<Vec<u8>, Unfit> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|e| purpose(format!("not base64url: {e}")))
}

/// Bits of a big-endian unsigned integer.
fn bit_len(be: &[u8]) -> usize {
    let digits: &[u8] = match be.iter().position(|b| *b != 0) {
        Some(i) => &be[i..],
        None => return 0,
    };
    (digits.len() - 1) * 8 + (8 - digits[0].leading_zeros() as usize)
}

fn weak_rsa(bits: usize, allow_weak: bool) -> Result<(), Unfit> {
    if bits < MIN_RSA_BITS && !allow_weak {
        return Err(Unfit::Weak(format!(
            "RSA key of {bits} bits is too weak (at least {MIN_RSA_BITS}; allow_weak_rsa = true to accept it)"
        )));
    }
    Ok(())
}

/// The signature algorithm a JWK's `alg` names, or why it names none.
fn declared_alg(a: KeyAlgorithm) -> Result<Algorithm, Unfit> {
    use KeyAlgorithm as K;
    let alg = match a {
        K::HS256 => Algorithm::HS256,
        K::HS384 => Algorithm::HS384,
        K::HS512 => Algorithm::HS512,
        K::ES256 => Algorithm::ES256,
        K::ES384 => Algorithm::ES384,
        K::RS256 => Algorithm::RS256,
        K::RS384 => Algorithm::RS384,
        K::RS512 => Algorithm::RS512,
        K::PS256 => Algorithm::PS256,
        K::PS384 => Algorithm::PS384,
        K::PS512 => Algorithm::PS512,
        K::EdDSA => Algorithm::EdDSA,
        other => {
            return Err(purpose(format!(
                "`alg` {other:?} is not a signature algorithm this gateway verifies"
            )))
        }
    };
    Ok(alg)
}

/// The algorithms this key could verify, by its type, curve and strength.
fn fitting_algs(jwk: &Jwk, allow_weak_rsa: bool) -> Result<Vec<Algorithm>, Unfit> {
    use Algorithm::*;
    match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            weak_rsa(bit_len(&b64url(&p.n)?), allow_weak_rsa)?;
            Ok(vec![RS256, RS384, RS512, PS256, PS384, PS512])
        }
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Ok(vec![ES256]),
            EllipticCurve::P384 => Ok(vec![ES384]),
            ref c => Err(purpose(format!("curve {c:?} is not supported for signatures"))),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => Ok(vec![EdDSA]),
            ref c => Err(purpose(format!("curve {c:?} is not supported for signatures"))),
        },
        AlgorithmParameters::OctetKey(p) => {
            let len = b64url(&p.value)?.len();
            let fit: Vec<Algorithm> = [HS256, HS384, HS512].into_iter().filter(|a| len >= hmac_min_len(*a)).collect();
            if fit.is_empty() {
                return Err(Unfit::Weak(format!(
                    "symmetric key of {len} bytes is shorter than the 32 bytes HS256 needs"
                )));
            }
            Ok(fit)
        }
    }
}

/// Keys from one JWK: one per algorithm it may verify. `wanted` is the algorithm a static
/// key is configured for; `allowed` filters what is left (the route's `algorithms`).
pub fn from_jwk(jwk: &Jwk, wanted: Option<Algorithm>, allowed: &[Algorithm], allow_weak_rsa: bool) -> Result<Vec<Key>, Unfit> {
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(other) => return Err(purpose(format!("`use` is {other:?}, not sig"))),
    }
    if let Some(ops) = &jwk.common.key_operations {
        if !ops.contains(&KeyOperations::Verify) {
            return Err(purpose("`key_ops` does not include verify"));
        }
    }
    let mut algs = fitting_algs(jwk, allow_weak_rsa)?;
    if let Some(a) = jwk.common.key_algorithm {
        let declared = declared_alg(a)?;
        // `algs` already reflects the key's length and curve: a declared HS512 on a 32-byte
        // key, or ES384 on a P-256 key, ends here.
        if !algs.contains(&declared) {
            return Err(purpose(format!("`alg` {declared:?} does not fit this key")));
        }
        algs = vec![declared];
    }
    if let Some(w) = wanted {
        if !algs.contains(&w) {
            return Err(purpose(format!("this key cannot verify {w:?}")));
        }
        algs = vec![w];
    }
    let material = serde_json::to_vec(&jwk.algorithm).map_err(|e| purpose(e.to_string()))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| purpose(format!("unusable key: {e}")))?;
    Ok(algs
        .into_iter()
        .filter(|a| allowed.contains(a))
        .map(|alg| Key {
            kid: jwk.common.key_id.clone(),
            alg,
            key: key.clone(),
            fingerprint: fingerprint(&material),
        })
        .collect())
}

/// A PEM public key for `alg`, refused when it is of another type, curve or too weak.
pub fn from_pem(pem: &str, alg: Algorithm, allow_weak_rsa: bool) -> Result<DecodingKey, String> {
    use Algorithm::*;
    match alg {
        a if is_rsa(a) => {
            use rsa::pkcs1::DecodeRsaPublicKey;
            use rsa::pkcs8::DecodePublicKey;
            use rsa::traits::PublicKeyParts;
            let key = rsa::RsaPublicKey::from_public_key_pem(pem)
                .or_else(|_| rsa::RsaPublicKey::from_pkcs1_pem(pem))
                .map_err(|e| format!("not an RSA public key: {e}"))?;
            weak_rsa(key.n().bits(), allow_weak_rsa).map_err(|e| e.to_string())?;
            DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| format!("not an RSA public key: {e}"))
        }
        ES256 => {
            use p256::pkcs8::DecodePublicKey;
            p256::PublicKey::from_public_key_pem(pem).map_err(|e| format!("not a P-256 public key (ES256): {e}"))?;
            DecodingKey::from_ec_pem(pem.as_bytes()).map_err(|e| format!("not an EC public key: {e}"))
        }
        ES384 => {
            use p384::pkcs8::DecodePublicKey;
            p384::PublicKey::from_public_key_pem(pem).map_err(|e| format!("not a P-384 public key (ES384): {e}"))?;
            DecodingKey::from_ec_pem(pem.as_bytes()).map_err(|e| format!("not an EC public key: {e}"))
        }
        EdDSA => DecodingKey::from_ed_pem(pem.as_bytes()).map_err(|e| format!("not an Ed25519 key: {e}")),
        other => Err(format!("{other:?} takes a secret, not a PEM key")),
    }
}

/// An HMAC secret for `alg`, refused when shorter than the hash.
pub fn from_secret(secret: &[u8], alg: Algorithm) -> Result<Key, String> {
    if !is_symmetric(alg) {
        return Err(format!("{alg:?} takes a public key, not a secret"));
    }
    let min = hmac_min_len(alg);
    if secret.len() < min {
        return Err(format!("HMAC secrets for {alg:?} must be at least {min} bytes"));
    }
    Ok(Key {
        kid: None,
        alg,
        key: DecodingKey::from_secret(secret),
        fingerprint: fingerprint(secret),
    })
}

pub fn pem_key(pem: &str, alg: Algorithm, allow_weak_rsa: bool) -> Result<Key, String> {
    Ok(Key {
        kid: None,
        alg,
        key: from_pem(pem, alg, allow_weak_rsa)?,
        fingerprint: fingerprint(pem.trim().as_bytes()),
    })
}

/// The rules a whole key set must keep: no kid twice (among the set's entries, one entry
/// may yield several keys), and symmetric keys only among themselves.
pub fn check_set<'a>(entries: impl Iterator<Item = (Option<&'a str>, &'a [Key])>) -> Result<(), String> {
    let mut kids = HashSet::new();
    let (mut symmetric, mut asymmetric) = (false, false);
    for (kid, keys) in entries {
        if let Some(k) = kid {
            if !kids.insert(k) {
                return Err(format!("kid `{k}` appears twice"));
            }
        }
        for key in keys {
            if is_symmetric(key.alg) {
                symmetric = true;
            } else {
                asymmetric = true;
            }
        }
    }
    if symmetric && asymmetric {
        return Err("a symmetric (HMAC) key beside asymmetric ones invites algorithm confusion; use separate routes".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn jwk(v: serde_json::Value) -> Jwk {
        serde_json::from_value(v).unwrap()
    }

    fn oct(len: usize, alg: Option<&str>) -> Jwk {
        let mut v = json!({"kty": "oct", "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(vec![7u8; len])});
        if let Some(a) = alg {
            v["alg"] = json!(a);
        }
        jwk(v)
    }

    const ALL: &[Algorithm] = &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];

    #[test]
    fn symmetric_keys_by_length_and_declared_alg() {
        assert!(from_jwk(&oct(0, None), None, ALL, false).is_err());
        assert!(from_jwk(&oct(3, Some("HS256")), None, ALL, false).is_err());
        let algs: Vec<_> = from_jwk(&oct(48, None), None, ALL, false).unwrap().iter().map(|k| k.alg).collect();
        assert_eq!(algs, vec![Algorithm::HS256, Algorithm::HS384]);
        assert!(from_jwk(&oct(32, Some("HS512")), None, ALL, false).is_err());
        assert!(from_jwk(&oct(32, Some("A256GCM")), None, ALL, false).is_err());
        assert!(from_secret(&[1; 47], Algorithm::HS384).is_err());
        assert!(from_secret(&[1; 48], Algorithm::HS384).is_ok());
    }

    #[test]
    fn use_and_key_ops() {
        let mut k = oct(32, Some("HS256"));
        k.common.public_key_use = Some(PublicKeyUse::Encryption);
        assert!(from_jwk(&k, None, ALL, false).is_err());
        let mut k = oct(32, Some("HS256"));
        k.common.key_operations = Some(vec![KeyOperations::Sign]);
        assert!(from_jwk(&k, None, ALL, false).is_err());
        k.common.key_operations = Some(vec![KeyOperations::Sign, KeyOperations::Verify]);
        assert_eq!(from_jwk(&k, None, ALL, false).unwrap().len(), 1);
    }

    #[test]
    fn bits_and_sets() {
        assert_eq!(bit_len(&[0, 0, 1]), 1);
        assert_eq!(bit_len(&[0x80, 0]), 16);
        assert_eq!(bit_len(&[]), 0);
        let h = from_secret(&[1; 32], Algorithm::HS256).unwrap();
        let mut r = h.clone();
        r.alg = Algorithm::RS256;
        assert!(check_set([(Some("a"), std::slice::from_ref(&h)), (Some("b"), std::slice::from_ref(&h))].into_iter()).is_ok());
        assert!(check_set([(Some("a"), std::slice::from_ref(&h)), (Some("a"), std::slice::from_ref(&h))].into_iter()).is_err());
        assert!(check_set([(None, std::slice::from_ref(&h)), (None, std::slice::from_ref(&r))].into_iter()).is_err());
    }
}
