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
    let k = key.to_ascii_lowercase();
    NAMES.contains(&k.as_str())
}

/// Tables of header values (route matches, header plugins, sink headers): a header value
/// is often a credential, so all of them are hidden.
fn header_table(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("header") || k.ends_with("_set") || k.ends_with("_add") || k == "set" || k == "add"
}

fn reference(s: &str) -> bool {
    s.starts_with("env:") || s.starts_with("file:")
}

/// A per-process key for the markers' fingerprints: a marker tells values apart (so a
/// write that drops one of several keys keeps the right ones) without being a hash of
/// the secret anyone could test guesses against.
static SALT: once_cell::sync::Lazy<[u8; 16]> = once_cell::sync::Lazy::new(|| std::array::from_fn(|_| fastrand::u8(..)));

fn marker(secret: &str) -> String {
    let mut m = SALT.to_vec();
    m.extend_from_slice(secret.as_bytes());
    let d = gatehouse_plugins::consumers::key_digest(&m);
    format!("<redacted:{:02x}{:02x}{:02x}{:02x}>", d[0], d[1], d[2], d[3])
}

/// A URL's user information and query hidden (`redis://:pw@h`, `https://h/x?token=`).
fn hide_url(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once("://")?;
    let (authority, tail) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (authority, had_user) = match authority.rsplit_once('@') {
        Some((_, host)) => (format!("{MARK}@{host}"), true),
        None => (authority.to_string(), false),
    };
    let (path, had_query) = match tail.split_once('?') {
        Some((p, _)) => (format!("{p}?{MARK}"), true),
        None => (tail.to_string(), false),
    };
    (had_user || had_query).then(|| format!("{scheme}://{authority}{path}"))
}

/// What the API shows for one string value outside any secret key.
fn shown(s: &str) -> Option<String> {
    if s.contains("PRIVATE KEY") {
        return Some(marker(s));
    }
    hide_url(s)
}

fn hide(v: &mut toml::Value) {
    match v {
        toml::Value::String(s) if reference(s) => {}
        toml::Value::String(s) => *s = marker(s),
        toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => *v = toml::Value::String(MARK.to_string()),
        toml::Value::Array(a) => a.iter_mut().for_each(hide),
        toml::Value::Table(t) => t.iter_mut().for_each(|(_, x)| hide(x)),
        toml::Value::Datetime(_) => {}
    }
}

/// Redacts in place.
pub fn redact(v: &mut toml::Value) {
    match v {
        toml::Value::String(s) => {
            if let Some(x) = shown(s) {
                *s = x;
            }
        }
        toml::Value::Array(a) => a.iter_mut().for_each(redact),
        toml::Value::Table(t) => {
            for (k, x) in t.iter_mut() {
                if secret_key(k) || header_table(k) {
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
    hide_urls(&mut v, "alerts", "receivers");
    hide_urls(&mut v, "metering", "sinks");
    v
}

/// `alerts.receivers.NAME.url` and `metering.sinks.NAME.url` carry credentials in the
/// URL itself (webhook paths, ingest tokens): hidden whole.
fn hide_urls(v: &mut toml::Value, table: &str, list: &str) {
    if let Some(r) = v.get_mut(table).and_then(|a| a.get_mut(list)).and_then(|r| r.as_table_mut()) {
        for (_, entry) in r.iter_mut() {
            if let Some(u) = entry.get_mut("url") {
                hide(u);
            }
        }
    }
}

/// The redacted form of a stored JSON value, by the same rules (`secret`: under a
/// secret key), to recognise a value sent back as it was shown.
fn as_shown(old: &serde_json::Value, secret: bool) -> Option<serde_json::Value> {
    let s = old.as_str()?;
    if secret {
        return (!reference(s)).then(|| serde_json::Value::String(marker(s)));
    }
    shown(s).map(serde_json::Value::String)
}

fn is_marker(v: &serde_json::Value) -> bool {
    v.as_str().is_some_and(|s| s.contains(MARK) || s.starts_with("<redacted:"))
}

/// Puts stored values back where `new` holds what the API showed for them; `old` is the
/// stored entry. A marker is matched by its fingerprint (anywhere in the same list, so
/// dropping one of several keys keeps the others), the bare `<redacted>` by position.
/// Fails, naming the key, where there is no stored value to keep.
pub fn restore(new: &mut serde_json::Value, old: Option<&serde_json::Value>, path: &str) -> Result<(), String> {
    restore_in(new, old, path, false)
}

fn restore_in(new: &mut serde_json::Value, old: Option<&serde_json::Value>, path: &str, secret: bool) -> Result<(), String> {
    match new {
        serde_json::Value::String(_) if is_marker(new) => {
            let shown_old = old.and_then(|o| as_shown(o, secret)).or_else(|| {
                old.filter(|o| !o.is_string() && !o.is_null())
                    .map(|_| serde_json::Value::String(MARK.into()))
            });
            match old {
                Some(o) if shown_old.as_ref() == Some(new) || (new.as_str() == Some(MARK) && !o.is_null()) => {
                    *new = o.clone();
                    Ok(())
                }
                _ => Err(format!(
                    "{path}: `{}` given, but there is no stored value it stands for",
                    new.as_str().unwrap_or(MARK)
                )),
            }
        }
        serde_json::Value::Array(a) => {
            let olds = old.and_then(|o| o.as_array());
            for (i, x) in a.iter_mut().enumerate() {
                let here = format!("{path}[{i}]");
                let by_print = olds.and_then(|l| {
                    l.iter()
                        .find(|o| is_marker(x) && x.as_str() != Some(MARK) && as_shown(o, secret).as_ref() == Some(x))
                });
                restore_in(x, by_print.or_else(|| olds.and_then(|l| l.get(i))), &here, secret)?;
            }
            Ok(())
        }
        serde_json::Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                restore_in(x, old.and_then(|o| o.get(k)), &p, secret || secret_key(k) || header_table(k))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown_config() -> String {
        let t: toml::Table = r#"
[consumers.alice]
keys = ["alice-literal-key", "env:ALICE_KEY"]
plan = "gold"
[plugins.jwt_auth]
secret = "hmac-literal"
[alerts.receivers.slack]
url = "https://hooks.example/T000/SECRET"
[metering.sinks.om]
url = "https://ingest.example/v1/SINKTOKEN"
headers = { authorization = "Bearer xyz", x-honeycomb-team = "HONEY", accept = "json" }
[store]
redis = "redis://:REDISPASS@127.0.0.1:6379/0"
[tracing]
endpoint = "http://collector:4318/v1/traces?token=QTOKEN"
[routes.r.plugins.headers]
request_set = { x-upstream-token = "UPSTREAMHDR" }
[[tls.certificates]]
cert = "file:/c.pem"
key = "-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----"
"#
        .parse()
        .unwrap();
        toml::to_string(&redacted(&t)).unwrap()
    }

    #[test]
    fn secrets_are_hidden_and_references_shown() {
        let text = shown_config();
        for secret in [
            "alice-literal-key",
            "hmac-literal",
            "T000",
            "xyz",
            "HONEY",
            "SINKTOKEN",
            "REDISPASS",
            "QTOKEN",
            "UPSTREAMHDR",
            "BEGIN PRIVATE",
        ] {
            assert!(!text.contains(secret), "{secret} shown in {text}");
        }
        for shown in [
            "env:ALICE_KEY",
            "gold",
            "file:/c.pem",
            "127.0.0.1:6379/0",
            "collector:4318/v1/traces",
        ] {
            assert!(text.contains(shown), "{shown} hidden in {text}");
        }
    }

    #[test]
    fn markers_keep_the_stored_values_they_stand_for() {
        let old = serde_json::json!({"keys": ["k1", "k2", "env:K3"], "plan": "a"});
        let m = |s: &str| marker(s);
        // The first key dropped: the second stays, matched by its fingerprint.
        let mut new = serde_json::json!({"keys": [m("k2"), "env:K3", "k4"], "plan": "b"});
        restore(&mut new, Some(&old), "").unwrap();
        assert_eq!(new, serde_json::json!({"keys": ["k2", "env:K3", "k4"], "plan": "b"}));
        // The bare marker keeps the value at its place.
        let mut new = serde_json::json!({"keys": [MARK, "k2"]});
        restore(&mut new, Some(&old), "").unwrap();
        assert_eq!(new["keys"][0], "k1");
        // A marker that stands for nothing stored is refused, naming the key.
        let mut orphan = serde_json::json!({"keys": ["k1", "k2", "env:K3", m("other")]});
        let err = restore(&mut orphan, Some(&old), "").unwrap_err();
        assert!(err.starts_with("keys[3]"), "{err}");
        // A URL shown with its password hidden goes back whole.
        let old = serde_json::json!({"url": "redis://:pw@h:1/0"});
        let mut new = serde_json::json!({"url": format!("redis://{MARK}@h:1/0")});
        restore(&mut new, Some(&old), "").unwrap();
        assert_eq!(new["url"], "redis://:pw@h:1/0");
    }
}
