//! `/config`: the effective config (redacted, with its ETag), and writes of single
//! routes, upstreams, consumers and plugins that go through the same validation and
//! swap as a reload (`Live::write_managed`) and land in the managed file.

use super::auth::Caller;
use super::redact::{self, redacted};
use super::{json_reply, read_body, Admin};
use crate::config::{managed::SECTIONS, ConfigError};
use crate::live::{WriteError, Written};
use http::{Response, StatusCode};
use pingora_core::protocols::http::ServerSession;
use serde_json::{json, Value};

fn etag(hash: &str) -> String {
    format!("\"{hash}\"")
}

fn with_etag(mut r: Response<Vec<u8>>, hash: &str) -> Response<Vec<u8>> {
    if let Ok(v) = http::HeaderValue::from_str(&etag(hash)) {
        r.headers_mut().insert(http::header::ETAG, v);
    }
    r
}

fn table(text: &str) -> toml::Table {
    text.parse().unwrap_or_default()
}

fn to_json(v: &toml::Value) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// `section/name` of a `/config/...` path, or why not.
pub fn entry_path(rest: &str) -> Option<(&'static str, String)> {
    let (section, name) = rest.split_once('/')?;
    let section = SECTIONS.iter().copied().find(|s| *s == section)?;
    let name = percent_encoding::percent_decode_str(name).decode_utf8().ok()?.into_owned();
    valid_name(&name).then_some((section, name))
}

/// What the console allows, enforced here: names end up in metric labels, log lines and
/// TOML keys.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// `GET /config`.
pub fn get_config(admin: &Admin) -> Response<Vec<u8>> {
    let snap = admin.live.load();
    let config = to_json(&redacted(&table(&snap.text)));
    with_etag(json_reply(StatusCode::OK, json!({"hash": snap.hash, "config": config})), &snap.hash)
}

/// `GET /config/SECTION/NAME`.
pub fn get_entry(admin: &Admin, section: &str, name: &str) -> Response<Vec<u8>> {
    let snap = admin.live.load();
    let all = redacted(&table(&snap.text));
    match all.get(section).and_then(|s| s.get(name)) {
        Some(v) => with_etag(json_reply(StatusCode::OK, to_json(v)), &snap.hash),
        None => not_found(section, name),
    }
}

fn not_found(section: &str, name: &str) -> Response<Vec<u8>> {
    json_reply(
        StatusCode::NOT_FOUND,
        json!({"error": format!("{section}.{name} is not defined"), "status": 404}),
    )
}

/// The ETag `If-Match` names (quotes and a weak prefix removed).
fn if_match(session: &ServerSession) -> Option<String> {
    let v = session.req_header().headers.get(http::header::IF_MATCH)?.to_str().ok()?.trim();
    Some(v.trim_start_matches("W/").trim_matches('"').to_string())
}

/// One entry of `text` as TOML with its secrets hidden, for diffs.
fn entry_toml(text: &str, section: &str, name: &str) -> String {
    let all = table(text);
    let Some(v) = all.get(section).and_then(|s| s.get(name)) else {
        return String::new();
    };
    let mut one = toml::Table::new();
    let mut inner = toml::Table::new();
    inner.insert(name.to_string(), v.clone());
    one.insert(section.to_string(), toml::Value::Table(inner));
    toml::to_string(&redacted(&one)).unwrap_or_default()
}

pub fn unified(before: &str, after: &str, a: &str, b: &str) -> String {
    similar::TextDiff::from_lines(before, after)
        .unified_diff()
        .context_radius(3)
        .header(a, b)
        .to_string()
}

/// What a write does to the managed document.
enum Edit {
    Put(Value),
    Delete,
}

/// JSON as TOML through toml_edit's serializer; `null` has no TOML form, so it is named.
fn to_table(v: &Value, path: &str) -> Result<toml_edit::Table, WriteError> {
    fn nulls(v: &Value, path: &str) -> Result<(), String> {
        match v {
            Value::Null => Err(format!("{path}: null has no TOML form (leave the key out)")),
            Value::Array(a) => a.iter().enumerate().try_for_each(|(i, x)| nulls(x, &format!("{path}[{i}]"))),
            Value::Object(m) => m.iter().try_for_each(|(k, x)| nulls(x, &format!("{path}.{k}"))),
            _ => Ok(()),
        }
    }
    if !v.is_object() {
        return Err(WriteError::Edit(
            400,
            format!("{path}: the body must be a JSON object (the entry's table)"),
        ));
    }
    nulls(v, path).map_err(|e| WriteError::Edit(400, e))?;
    let value = serde::Serialize::serialize(v, toml_edit::ser::ValueSerializer::new())
        .map_err(|e| WriteError::Edit(400, format!("{path}: {e}")))?;
    match value {
        toml_edit::Value::InlineTable(t) => Ok(t.into_table()),
        _ => Err(WriteError::Edit(400, format!("{path}: the body must be a JSON object"))),
    }
}

/// The table `key` of `doc` as a real table (an inline one is converted), created when
/// missing; a hand-edited managed file where it is something else is refused.
fn table_of<'a>(doc: &'a mut toml_edit::Table, key: &str, shown: &str) -> Result<&'a mut toml_edit::Table, WriteError> {
    if !doc.contains_key(key) {
        let mut t = toml_edit::Table::new();
        t.set_implicit(true);
        doc.insert(key, toml_edit::Item::Table(t));
    }
    let item = doc.get_mut(key).ok_or_else(|| WriteError::Io(format!("{shown}: lost")))?;
    if let toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) = item {
        let t = std::mem::take(t).into_table();
        *item = toml_edit::Item::Table(t);
    }
    item.as_table_mut()
        .ok_or_else(|| WriteError::Edit(409, format!("the managed file's `{shown}` is not a table: fix the file by hand")))
}

fn apply(doc: &mut toml_edit::DocumentMut, main: &toml::Table, section: &str, name: &str, edit: Edit) -> Result<(), WriteError> {
    let in_main = main.get(section).and_then(|s| s.get(name)).is_some();
    let root = doc.as_table_mut();
    let deleted_before = root
        .get("deleted")
        .and_then(|d| d.get(section))
        .and_then(|l| l.as_array())
        .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(name)));
    let in_managed = root.get(section).and_then(|s| s.get(name)).is_some();
    let set_deleted = |root: &mut toml_edit::Table, add: bool| -> Result<(), WriteError> {
        let deleted = table_of(root, "deleted", "deleted")?;
        let list = deleted
            .entry(section)
            .or_insert(toml_edit::value(toml_edit::Array::new()))
            .as_array_mut()
            .ok_or_else(|| {
                WriteError::Edit(
                    409,
                    format!("the managed file's `deleted.{section}` is not a list: fix the file by hand"),
                )
            })?;
        list.retain(|v| v.as_str() != Some(name));
        if add {
            list.push(name);
        }
        Ok(())
    };
    match edit {
        Edit::Put(v) => {
            let mut t = to_table(&v, &format!("{section}.{name}"))?;
            t.set_implicit(false);
            table_of(root, section, section)?.insert(name, toml_edit::Item::Table(t));
            if deleted_before {
                set_deleted(root, false)?;
            }
        }
        Edit::Delete => {
            if !in_managed && (!in_main || deleted_before) {
                return Err(WriteError::Edit(404, format!("{section}.{name} is not defined")));
            }
            if in_managed {
                table_of(root, section, section)?.remove(name);
            }
            if in_main {
                set_deleted(root, true)?;
            }
        }
    }
    Ok(())
}

fn errors_json(errors: &[ConfigError]) -> Value {
    Value::Array(
        errors
            .iter()
            .map(|e| json!({"file": e.file, "key": e.key, "reason": e.reason}))
            .collect(),
    )
}

fn write_error(e: WriteError) -> Response<Vec<u8>> {
    match e {
        WriteError::NoManaged => json_reply(
            StatusCode::CONFLICT,
            json!({"error": "config writes need admin.managed (the file API writes go to)", "status": 409}),
        ),
        WriteError::Stale(current) => with_etag(
            json_reply(
                StatusCode::PRECONDITION_FAILED,
                json!({"error": "If-Match is not the serving config's ETag; read it again", "status": 412, "etag": etag(&current)}),
            ),
            &current,
        ),
        WriteError::Edit(status, message) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            json_reply(status, json!({"error": message, "status": status.as_u16()}))
        }
        WriteError::Invalid(errors) => json_reply(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"error": "config refused; nothing changed", "status": 422, "errors": errors_json(&errors)}),
        ),
        WriteError::Io(e) => json_reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": format!("cannot write the managed file: {e}"), "status": 500}),
        ),
    }
}

/// What the audit log records of a write.
struct Audit<'a> {
    caller: &'a Caller,
    method: String,
    path: String,
}

async fn run(
    admin: &Admin,
    if_match: Option<String>,
    audit: Option<Audit<'_>>,
    section: &'static str,
    name: String,
    edit: Edit,
) -> Result<Written, WriteError> {
    let live = admin.live.clone();
    let dry_run = audit.is_none();
    // The record is written inside the write, before the managed file is replaced: an
    // acknowledged change is always on record.
    let record = audit.map(|a| (super::audit::path(admin), a.caller.name.clone(), a.method, a.path));
    let entry = name.clone();
    tokio::task::spawn_blocking(move || {
        live.write_managed(
            if_match.as_deref(),
            dry_run,
            |doc, main| apply(doc, main, section, &name, edit),
            |w| {
                let Some((target, token, method, path)) = &record else {
                    return Ok(());
                };
                let diff = unified(
                    &entry_toml(&w.before.text, section, &entry),
                    &entry_toml(&w.text, section, &entry),
                    "before",
                    "after",
                );
                super::audit::append(target.as_deref(), token, method, path, &w.before.hash, &w.hash, &diff)
                    .map_err(|e| WriteError::Io(format!("the audit log cannot record the write, so it is not made: {e}")))
            },
        )
    })
    .await
    .map_err(|e| WriteError::Io(format!("write task failed: {e}")))?
}

/// The body of a write, with the stored values put back where it sends the marker.
async fn entry_body(admin: &Admin, session: &mut ServerSession, section: &str, name: &str) -> Result<Value, Response<Vec<u8>>> {
    let body = read_body(session, 1024 * 1024).await?;
    let mut v: Value = serde_json::from_slice(&body).map_err(|e| {
        json_reply(
            StatusCode::BAD_REQUEST,
            json!({"error": format!("invalid JSON: {e}"), "status": 400}),
        )
    })?;
    let snap = admin.live.load();
    let stored = table(&snap.text).get(section).and_then(|s| s.get(name)).map(to_json);
    redact::restore(&mut v, stored.as_ref(), &format!("{section}.{name}")).map_err(|e| write_error(WriteError::Edit(422, e)))?;
    Ok(v)
}

/// `PUT` and `DELETE /config/SECTION/NAME`.
pub async fn write(admin: &Admin, session: &mut ServerSession, caller: &Caller, section: &'static str, name: String) -> Response<Vec<u8>> {
    let Some(tag) = if_match(session) else {
        return json_reply(
            StatusCode::PRECONDITION_REQUIRED,
            json!({"error": "config writes need If-Match with the ETag of GET /config", "status": 428}),
        );
    };
    let method = session.req_header().method.clone();
    let edit = if method == http::Method::DELETE {
        Edit::Delete
    } else {
        match entry_body(admin, session, section, &name).await {
            Ok(v) => Edit::Put(v),
            Err(r) => return r,
        }
    };
    let existed = table(&admin.live.load().text).get(section).and_then(|s| s.get(&name)).is_some();
    let audit = Audit {
        caller,
        method: method.to_string(),
        path: session.req_header().uri.path().to_string(),
    };
    match run(admin, Some(tag), Some(audit), section, name.clone(), edit).await {
        Ok(w) => {
            let diff = unified(
                &entry_toml(&w.before.text, section, &name),
                &entry_toml(&w.text, section, &name),
                "before",
                "after",
            );
            let status = if method == http::Method::PUT && !existed {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            with_etag(
                json_reply(status, json!({"result": "applied", "hash": w.hash, "diff": diff})),
                &w.hash,
            )
        }
        Err(e) => write_error(e),
    }
}

/// `POST /config/validate` with `{"section", "name", "value"}` (or `"delete": true`): the
/// errors the write would get and the diff it would make, changing nothing.
pub async fn validate(admin: &Admin, session: &mut ServerSession) -> Response<Vec<u8>> {
    let body = match read_body(session, 1024 * 1024).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return json_reply(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("invalid JSON: {e}"), "status": 400}),
            )
        }
    };
    let section = req
        .get("section")
        .and_then(Value::as_str)
        .and_then(|s| SECTIONS.iter().copied().find(|x| *x == s));
    let name = req.get("name").and_then(Value::as_str).filter(|n| valid_name(n));
    let (Some(section), Some(name)) = (section, name) else {
        return json_reply(
            StatusCode::BAD_REQUEST,
            json!({"error": format!("give `section` (one of {}) and `name` (letters, digits, `.`, `-`, `_`)", SECTIONS.join(", ")), "status": 400}),
        );
    };
    let edit = if req.get("delete").and_then(Value::as_bool) == Some(true) {
        Edit::Delete
    } else {
        let mut v = req.get("value").cloned().unwrap_or(Value::Null);
        let snap = admin.live.load();
        let stored = table(&snap.text).get(section).and_then(|s| s.get(name)).map(to_json);
        if let Err(e) = redact::restore(&mut v, stored.as_ref(), &format!("{section}.{name}")) {
            return write_error(WriteError::Edit(422, e));
        }
        Edit::Put(v)
    };
    match run(admin, None, None, section, name.to_string(), edit).await {
        Ok(w) => {
            let diff = unified(
                &entry_toml(&w.before.text, section, name),
                &entry_toml(&w.text, section, name),
                "before",
                "after",
            );
            json_reply(StatusCode::OK, json!({"valid": true, "errors": [], "diff": diff, "hash": w.hash}))
        }
        Err(WriteError::Invalid(errors)) => json_reply(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"valid": false, "status": 422, "errors": errors_json(&errors)}),
        ),
        Err(e) => write_error(e),
    }
}

/// `GET /config/diff`: what the managed file changes in the main one.
pub fn diff(admin: &Admin) -> Response<Vec<u8>> {
    let snap = admin.live.load();
    let main_text = std::fs::read_to_string(&admin.live.path).unwrap_or_default();
    let main = table(&main_text);
    let effective = table(&snap.text);
    let mut entries = Vec::new();
    for section in SECTIONS {
        let (a, b) = (
            main.get(section).and_then(|s| s.as_table()),
            effective.get(section).and_then(|s| s.as_table()),
        );
        let empty = toml::Table::new();
        let (a, b) = (a.unwrap_or(&empty), b.unwrap_or(&empty));
        for (name, v) in b {
            match a.get(name) {
                None => entries.push(json!({"section": section, "name": name, "change": "added"})),
                Some(old) if old != v => entries.push(json!({"section": section, "name": name, "change": "replaced"})),
                _ => {}
            }
        }
        for name in a.keys().filter(|n| !b.contains_key(*n)) {
            entries.push(json!({"section": section, "name": name, "change": "deleted"}));
        }
    }
    let render = |t: &toml::Table| toml::to_string(&redacted(t)).unwrap_or_default();
    let managed = crate::config::managed::managed_path(&admin.live.path, &main).map(|p| p.display().to_string());
    with_etag(
        json_reply(
            StatusCode::OK,
            json!({"managed": managed, "changes": entries, "diff": unified(&render(&main), &render(&effective), "main file", "effective")}),
        ),
        &snap.hash,
    )
}
