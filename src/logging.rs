//! Process log (not the access log): env_logger, with the level from `[log] level`,
//! changeable on reload, and the line format from `[log] format`, fixed at start (the
//! logger is installed once per process). `RUST_LOG` still wins when set, for debugging.

use crate::config::LogFormat;
use std::io::Write;

pub fn init(level: &str, format: LogFormat) {
    let mut b = env_logger::Builder::new();
    b.filter_level(parse(level));
    if let Ok(spec) = std::env::var("RUST_LOG") {
        b.parse_filters(&spec);
    }
    if format == LogFormat::Json {
        b.format(json_line);
    }
    let _ = b.try_init();
}

pub fn set_level(level: &str) {
    if std::env::var_os("RUST_LOG").is_none() {
        log::set_max_level(parse(level));
    }
}

fn parse(level: &str) -> log::LevelFilter {
    level.parse().unwrap_or(log::LevelFilter::Info)
}

/// One JSON object per line: what log shippers (Vector, Fluent Bit, Loki's promtail) parse
/// without a grok pattern. Structured `log` fields (`key = value` in the macro) go under
/// `fields`, keeping the top-level keys fixed.
fn json_line(buf: &mut env_logger::fmt::Formatter, record: &log::Record<'_>) -> std::io::Result<()> {
    let mut line = serde_json::Map::new();
    line.insert("time".into(), buf.timestamp_millis().to_string().into());
    line.insert("level".into(), record.level().as_str().into());
    line.insert("target".into(), record.target().into());
    line.insert("message".into(), record.args().to_string().into());
    let mut fields = Fields(serde_json::Map::new());
    let _ = record.key_values().visit(&mut fields);
    if !fields.0.is_empty() {
        line.insert("fields".into(), fields.0.into());
    }
    writeln!(buf, "{}", serde_json::Value::Object(line))
}

struct Fields(serde_json::Map<String, serde_json::Value>);

impl<'kvs> log::kv::VisitSource<'kvs> for Fields {
    fn visit_pair(&mut self, key: log::kv::Key<'kvs>, value: log::kv::Value<'kvs>) -> Result<(), log::kv::Error> {
        let v = if let Some(n) = value.to_u64() {
            n.into()
        } else if let Some(n) = value.to_i64() {
            n.into()
        } else if let Some(b) = value.to_bool() {
            b.into()
        } else {
            value.to_string().into()
        };
        self.0.insert(key.as_str().to_string(), v);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structured_fields_become_json_values() {
        let mut f = Fields(serde_json::Map::new());
        let kvs: [(&str, log::kv::Value<'_>); 3] = [
            ("route", log::kv::Value::from("users")),
            ("n", log::kv::Value::from(3u64)),
            ("ok", log::kv::Value::from(true)),
        ];
        log::kv::Source::visit(&kvs[..], &mut f).unwrap();
        assert_eq!(
            serde_json::Value::Object(f.0),
            serde_json::json!({"route": "users", "n": 3, "ok": true})
        );
    }
}
