//! `basic_auth`: HTTP Basic credentials checked against consumers' argon2id hashes.
//!
//! argon2 is slow on purpose, so the gateway protects itself: successful checks are cached
//! briefly (keyed by a digest of user, password and hash), failed ones too, and at most one
//! check per CPU runs at a time. A guessing client waits in that queue; it does not get to
//! spend all the gateway's CPU.

use crate::consumers::key_digest;
use crate::util::{duration, err};
use crate::{Answer, Flow, Plugin, PluginCtx, PluginError, Priority};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use async_trait::async_trait;
use base64::Engine;
use http::HeaderValue;
use once_cell::sync::Lazy;
use pingora_http::RequestHeader;
use pingora_memory_cache::MemoryCache;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

pub const NAME: &str = "basic_auth";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "d_realm")]
    pub realm: String,
    #[serde(default = "d_true")]
    pub hide_credentials: bool,
    #[serde(default)]
    pub anonymous: Option<String>,
    /// How long a successful check is remembered.
    #[serde(default = "d_ttl")]
    pub cache_ttl: String,
}

fn d_realm() -> String {
    "gatehouse".into()
}
fn d_true() -> bool {
    true
}
fn d_ttl() -> String {
    "5m".into()
}

/// Verifications running at once, process-wide.
static VERIFY_SLOTS: Lazy<Semaphore> = Lazy::new(|| Semaphore::new(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)));
const QUEUE_WAIT: Duration = Duration::from_secs(2);
const NEGATIVE_TTL: Duration = Duration::from_secs(30);

/// Checked against when the user does not exist, so an unknown user costs the same time
/// as a wrong password and usernames cannot be enumerated.
static DUMMY_HASH: Lazy<String> = Lazy::new(|| hash_password("gatehouse-dummy-password").unwrap_or_default());

/// An argon2id PHC string for `password` (what `gatehouse hash-password` prints).
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Salt bytes from the kernel.
fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(buf);
    }
}

/// Refuses anything that is not an argon2 PHC string: plain-text passwords never load.
pub fn check_hash(phc: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(phc).map_err(|e| format!("not an argon2 PHC hash ({e}); make one with `gatehouse hash-password`"))?;
    if !parsed.algorithm.as_str().starts_with("argon2") {
        return Err(format!(
            "`{}` hashes are not accepted; use argon2id (`gatehouse hash-password`)",
            parsed.algorithm
        ));
    }
    // Every failed login runs the hash's cost: a config (a fleet's shared document, say)
    // must not be able to make each request take gigabytes or minutes.
    for (name, max, what) in [("m", 65_536u64, "memory (KiB)"), ("t", 10, "iterations"), ("p", 8, "lanes")] {
        let value = parsed.params.get_decimal(name).map(u64::from).unwrap_or(0);
        if value > max {
            return Err(format!(
                "argon2 cost {name}={value} is over {max} ({what}): hash again with `gatehouse hash-password`"
            ));
        }
    }
    Ok(())
}

fn verify(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

pub struct BasicAuth {
    challenge: HeaderValue,
    hide: bool,
    anonymous: Option<String>,
    ttl: Duration,
    /// digest(user, password, hash) -> accepted?
    decisions: MemoryCache<[u8; 32], bool>,
}

impl BasicAuth {
    pub fn from_config(c: Config) -> Result<Self, PluginError> {
        let challenge = HeaderValue::from_str(&format!("Basic realm=\"{}\", charset=\"UTF-8\"", c.realm.replace('"', "")))
            .map_err(|_| err("realm", "not usable in a header"))?;
        Ok(BasicAuth {
            challenge,
            hide: c.hide_credentials,
            anonymous: c.anonymous,
            ttl: duration("cache_ttl", &c.cache_ttl)?,
            decisions: MemoryCache::new(10_000),
        })
    }
}

fn credentials(req: &RequestHeader) -> Option<(String, String)> {
    let v = req.headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

#[async_trait]
impl Plugin for BasicAuth {
    fn name(&self) -> &'static str {
        NAME
    }

    fn priority(&self) -> Priority {
        Priority(Priority::AUTH.0 - 1)
    }

    fn is_auth(&self) -> bool {
        true
    }

    fn challenge(&self) -> Option<HeaderValue> {
        Some(self.challenge.clone())
    }

    fn anonymous(&self) -> Option<&str> {
        self.anonymous.as_deref()
    }

    fn is_async(&self) -> bool {
        true
    }

    async fn request_async(&self, req: &mut RequestHeader, ctx: &mut PluginCtx) -> Flow {
        if ctx.consumer.is_some() {
            return Flow::Continue;
        }
        let Some((user, password)) = credentials(req) else {
            return Flow::Continue;
        };
        let entry = ctx.consumers.by_username(&user).cloned();
        let phc = entry.as_ref().map(|(_, h)| h.clone()).unwrap_or_else(|| DUMMY_HASH.clone());
        let key = key_digest(format!("{user}\0{password}\0{phc}").as_bytes());
        let ok = match self.decisions.get(&key).0 {
            Some(ok) => ok,
            None => {
                let Ok(Ok(_permit)) = tokio::time::timeout(QUEUE_WAIT, VERIFY_SLOTS.acquire()).await else {
                    ctx.rejection = Some("auth_overloaded");
                    return Flow::Respond(Answer::error(503, "authentication is overloaded, retry later"));
                };
                let (pw, h) = (password.clone(), phc.clone());
                let ok = tokio::task::spawn_blocking(move || verify(&pw, &h)).await.unwrap_or(false) && entry.is_some();
                self.decisions.put(&key, ok, Some(if ok { self.ttl } else { NEGATIVE_TTL }));
                ok
            }
        };
        match (ok, entry) {
            (true, Some((consumer, _))) => {
                ctx.consumer = Some(Arc::clone(&consumer));
                ctx.credential = Some(("basic", 0));
                if self.hide {
                    req.remove_header(&http::header::AUTHORIZATION);
                }
            }
            _ => ctx.auth_error = Some("invalid username or password"),
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_plain_text_is_refused() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(check_hash(&h).is_ok());
        assert!(verify("s3cret", &h));
        assert!(!verify("wrong", &h));
        assert!(check_hash("s3cret").is_err());
    }
}
