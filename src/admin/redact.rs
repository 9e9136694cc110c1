//! Secrets out of what the admin API shows and logs, and back into what it is sent.
//!
//! A value is a secret by its key's name (`keys`, `token`, `secret`, `password_hash`,
//! `api_key`, an `authorization` header, a receiver's webhook `url`) or by holding a PEM
//! private key. `env:` and `file:` references are not secrets (they name where one is),
//! so they are shown: an operator sees what a secret comes from, never what it is.
//! A write that sends the marker back keeps the stored value, so an entry read from the
//! API and written back unchanged stays as it was.

pub const MARK: &str = "<redacted>";

const NAMES: [&str; 13] = [
    "keys",
    "token",
    "secret",
    "password",
    "password_hash",
    "api_key",
    "access_key",
    "secret_key",
    "client_secret",
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "cookie",
];

fn secret_key(key: &str) -> bool {
    NAMES.contains(&key.to_ascii_lowercase().as_str())
}

fn reference(s: &str) -> bool {
    s.starts_with("env:") || s.starts_with("file:")
}

fn hide(v: &mut toml::Value) {
    match v {
        toml::Value::String(s) if !reference(s) => *s = MARK.to_string(),
        toml::Value::Array(a) => a.iter_mut().for_each(hide),
        toml::Value::Table(t) => t.iter_mut().for_each(|(_, x)| hide(x)),
        _ => {}
    }
}

/// Redacts in place.
pub fn redact(v: &mut toml::Value) {
    match v {
        toml::Value::String(s) if s.contains("PRIVATE KEY") => *s = MARK.to_string(),
        toml::Value::Array(a) => a.iter_mut().for_each(redact),
        toml::Value::Table(t) => {
            for (k, x) in t.iter_mut() {
                if secret_key(k) {
                    hide(x);
                } else {
                    redact(x);
                }
            }
        }
        _ => {}
    }
}

/// A redacted copy of a whole table.
pub fn redacted(t: &toml::Table) -> toml::Value {
    let mut v = toml::Value::Table(t.clone());
    redact(&mut v);
    fix_receivers(&mut v);
    v
}

/// `alerts.receivers.NAME.url` is a webhook URL with its credential in it.
fn fix_receivers(v: &mut toml::Value) {
    if let Some(r) = v
        .get_mut("alerts")
        .and_then(|a| a.get_mut("receivers"))
        .and_then(|r| r.as_table_mut())
    {
        for (_, entry) in r.iter_mut() {
            if let Some(u) = entry.get_mut("url") {
                hide(u);
            }
        }
    }
}

/// Puts stored values back where `new` holds the marker; `old` is the stored entry.
/// Fails, naming the key, where there is no stored value to keep.
pub fn restore(new: &mut serde_json::Value, old: Option<&serde_json::Value>, path: &str) -> Result<(), String> {
    match new {
        serde_json::Value::String(s) if s == MARK => match old {
            Some(o) if !o.is_null() => {
                *new = o.clone();
                Ok(())
            }
            _ => Err(format!("{path}: `{MARK}` given, but there is no stored value to keep")),
        },
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter_mut().enumerate() {
                restore(x, old.and_then(|o| o.get(i)), &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        serde_json::Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                restore(x, old.and_then(|o| o.get(k)), &p)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_hidden_and_references_shown() {
        let t: toml::Table = r#"
[consumers.alice]
keys = ["alice-literal-key", "env:ALICE_KEY"]
plan = "gold"
[plugins.jwt_auth]
secret = "hmac-literal"
[alerts.receivers.slack]
url = "https://hooks.example/T000/SECRET"
[metering.sinks.om]
headers = { authorization = "Bearer xyz", accept = "json" }
[[tls.certificates]]
cert = "file:/c.pem"
key = "-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----"
"#
        .parse()
        .unwrap();
        let text = toml::to_string(&redacted(&t)).unwrap();
        for secret in ["alice-literal-key", "hmac-literal", "T000", "xyz", "BEGIN PRIVATE"] {
            assert!(!text.contains(secret), "{secret} shown in {text}");
        }
        for shown in ["env:ALICE_KEY", "gold", "accept", "file:/c.pem"] {
            assert!(text.contains(shown), "{shown} hidden in {text}");
        }
    }

    #[test]
    fn the_marker_keeps_the_stored_value() {
        let old = serde_json::json!({"keys": ["k1", "env:K2"], "plan": "a"});
        let mut new = serde_json::json!({"keys": [MARK, "env:K2", "k3"], "plan": "b"});
        restore(&mut new, Some(&old), "").unwrap();
        assert_eq!(new, serde_json::json!({"keys": ["k1", "env:K2", "k3"], "plan": "b"}));
        let mut orphan = serde_json::json!({"keys": ["k1", "k2", MARK]});
        let err = restore(&mut orphan, Some(&old), "").unwrap_err();
        assert!(err.starts_with("keys[2]"), "{err}");
    }
}
