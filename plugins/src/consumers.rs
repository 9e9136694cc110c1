//! Consumers: the identities auth plugins establish and later plugins (ACL, limits) use.
//! The core builds the registry from `[consumers.*]` with each config snapshot; plugins
//! reach it through `PluginCtx`, so a plugin instance survives a reload that only changes
//! consumers.

use once_cell::sync::Lazy;
use sha2::{Digest, Sha256};
use siphasher::sip128::{Hasher128, SipHasher13};
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::Arc;

/// The key of the API-key tags: drawn per process (from std's random hash keys), never
/// written anywhere, so a tag cannot be computed, or related to a guess, from outside.
static TAG_KEY: Lazy<(u64, u64)> = Lazy::new(|| {
    let seed = std::collections::hash_map::RandomState::new();
    (seed.hash_one(0x6761_7465_686f_7573_u64), seed.hash_one(0x6b65_795f_7461_6773_u64))
});

/// The lookup form of an API key: a keyed 128-bit SipHash-1-3. Like the SHA-256 digest it
/// replaced, looking it up reveals nothing through timing about how much of a guessed key
/// was right, and keys are not kept in memory in clear; it costs a twentieth as much per
/// request (loadtest/RESULTS.md, "Shipped build").
fn key_tag(key: &[u8]) -> u128 {
    let (k0, k1) = *TAG_KEY;
    let mut h = SipHasher13::new_with_keys(k0, k1);
    h.write(key);
    h.finish128().as_u128()
}

/// Tags are already uniform: the map's hash is their low half, not a second hash.
#[derive(Default)]
struct TagHasher(u64);

impl Hasher for TagHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

#[derive(Debug)]
pub struct Consumer {
    pub name: Arc<str>,
    /// The name as the value of the consumer header sent upstream, built once here rather
    /// than on every request; `None` if the name cannot be a header value.
    pub header_value: Option<http::HeaderValue>,
    pub groups: Vec<String>,
    pub plan: Option<String>,
    /// `gatehouse_consumer_requests_total` for a consumer of the config. A name that came
    /// from a token (an unregistered JWT subject) has none: a client must not mint series.
    pub requests: Option<prometheus::IntCounter>,
}

impl Consumer {
    /// A consumer with a name only: the anonymous consumer, or a JWT subject not in the
    /// registry.
    pub fn named(name: &str) -> Consumer {
        Consumer {
            name: Arc::from(name),
            header_value: http::HeaderValue::from_str(name).ok(),
            groups: Vec::new(),
            plan: None,
            requests: None,
        }
    }

    pub fn in_group(&self, g: &str) -> bool {
        self.groups.iter().any(|x| x == g)
    }
}

/// A consumer's credentials as the core hands them over (secrets already resolved).
#[derive(Debug, Default, Clone)]
pub struct Credentials {
    pub keys: Vec<String>,
    pub basic_auth: Option<(String, String)>,
    pub jwt_subject: Option<String>,
    /// A client certificate's subject, RFC 4514 (`CN=partner-gw,O=Partner`).
    pub client_cert_subject: Option<String>,
    /// `sha256:` and 64 lower-case hex digits of the leaf certificate's DER.
    pub client_cert_fingerprint: Option<String>,
}

/// A fingerprint setting's digest, or why it is not one.
pub fn parse_fingerprint(s: &str) -> Result<String, String> {
    let hex = s
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("`{s}` must be sha256:<64 hex digits>"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("`{s}` must be sha256:<64 hex digits>"));
    }
    Ok(hex.to_ascii_lowercase())
}

#[derive(Debug, Default)]
pub struct Consumers {
    by_name: HashMap<String, Arc<Consumer>>,
    /// Each API key's tag (`key_tag`).
    /// Each API key's tag (`key_tag`), and the key's index in the consumer's list: the
    /// credential's id in usage events (the key itself never leaves the registry).
    by_key: HashMap<u128, (Arc<Consumer>, u32), BuildHasherDefault<TagHasher>>,
    by_username: HashMap<String, (Arc<Consumer>, String)>,
    by_subject: HashMap<String, Arc<Consumer>>,
    by_cert_subject: HashMap<String, Arc<Consumer>>,
    /// Lower-case hex SHA-256 of the certificate's DER.
    by_cert_fingerprint: HashMap<String, Arc<Consumer>>,
}

pub fn key_digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

impl Consumers {
    /// Adds one consumer; refuses a key, username or subject another consumer already has.
    pub fn add(&mut self, name: &str, groups: Vec<String>, plan: Option<String>, creds: &Credentials) -> Result<(), String> {
        let c = Arc::new(Consumer {
            groups,
            plan,
            requests: Some(crate::metrics::CONSUMER_REQUESTS.with_label_values(&[name])),
            ..Consumer::named(name)
        });
        for (i, k) in creds.keys.iter().enumerate() {
            if self.by_key.insert(key_tag(k.as_bytes()), (c.clone(), i as u32)).is_some() {
                return Err(format!("keys[{i}]: the same key belongs to another consumer"));
            }
        }
        if let Some((user, hash)) = &creds.basic_auth {
            if self.by_username.insert(user.clone(), (c.clone(), hash.clone())).is_some() {
                return Err(format!("basic_auth.username: `{user}` belongs to another consumer"));
            }
        }
        if let Some(s) = &creds.jwt_subject {
            if self.by_subject.insert(s.clone(), c.clone()).is_some() {
                return Err(format!("jwt_subject: `{s}` belongs to another consumer"));
            }
        }
        if let Some(s) = &creds.client_cert_subject {
            let canonical = crate::dn::canonical_subject(s).map_err(|e| format!("client_cert_subject: {e}"))?;
            if self.by_cert_subject.insert(canonical, c.clone()).is_some() {
                return Err(format!("client_cert_subject: `{s}` belongs to another consumer"));
            }
        }
        if let Some(f) = &creds.client_cert_fingerprint {
            let hex = parse_fingerprint(f).map_err(|e| format!("client_cert_fingerprint: {e}"))?;
            if self.by_cert_fingerprint.insert(hex, c.clone()).is_some() {
                return Err(format!("client_cert_fingerprint: `{f}` belongs to another consumer"));
            }
        }
        self.by_name.insert(name.to_string(), c);
        Ok(())
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<Consumer>> {
        self.by_name.get(name)
    }

    pub fn by_key(&self, key: &[u8]) -> Option<&(Arc<Consumer>, u32)> {
        self.by_key.get(&key_tag(key))
    }

    /// The consumer and its argon2 PHC hash.
    pub fn by_username(&self, user: &str) -> Option<&(Arc<Consumer>, String)> {
        self.by_username.get(user)
    }

    pub fn by_subject(&self, subject: &str) -> Option<&Arc<Consumer>> {
        self.by_subject.get(subject)
    }

    /// The consumer of a verified client certificate: by fingerprint first, then subject.
    pub fn by_client_cert(&self, cert: &crate::ClientCert) -> Option<&Arc<Consumer>> {
        self.by_cert_fingerprint
            .get(&cert.fingerprint)
            .or_else(|| self.by_cert_subject.get(&cert.subject))
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}
