//! Backend bodies into one answer, as the route's `merge` says.

use crate::config::Merge;
use serde_json::{Map, Value};

/// Keeps only `allow`'s fields of an object, or of each object in an array; other values
/// pass as they are. An empty `allow` keeps everything.
pub fn filter(v: Value, allow: &[String]) -> Value {
    if allow.is_empty() {
        return v;
    }
    let keep = |m: Map<String, Value>| -> Map<String, Value> { m.into_iter().filter(|(k, _)| allow.iter().any(|a| a == k)).collect() };
    match v {
        Value::Object(m) => Value::Object(keep(m)),
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|i| match i {
                    Value::Object(m) => Value::Object(keep(m)),
                    other => other,
                })
                .collect(),
        ),
        other => other,
    }
}

/// Joins the answers (in backend order). `group`: each under its name; `shallow`: the
/// objects' keys in one object, a later backend's key replacing an earlier one's. Callers
/// have already refused non-objects for `shallow`.
pub fn merge(mode: Merge, parts: Vec<(&str, Value)>) -> Map<String, Value> {
    let mut out = Map::new();
    for (name, v) in parts {
        match (mode, v) {
            (Merge::Group, v) => {
                out.insert(name.to_string(), v);
            }
            // `_errors` is the gateway's word: a backend's own key of that name is dropped.
            (Merge::Shallow, Value::Object(m)) => out.extend(m.into_iter().filter(|(k, _)| k != "_errors")),
            (Merge::Shallow, _) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn allow_keeps_listed_fields_of_objects_and_arrays() {
        let allow = vec!["id".to_string(), "total".to_string()];
        assert_eq!(
            filter(json!({"id": 1, "total": 2, "card": "4111"}), &allow),
            json!({"id": 1, "total": 2})
        );
        assert_eq!(
            filter(json!([{"id": 1, "card": "x"}, {"total": 3}, 7]), &allow),
            json!([{"id": 1}, {"total": 3}, 7])
        );
        assert_eq!(filter(json!({"a": 1}), &[]), json!({"a": 1}));
    }

    #[test]
    fn group_nests_and_shallow_lets_the_later_backend_win() {
        let parts = || vec![("a", json!({"x": 1, "y": 1})), ("b", json!({"y": 2}))];
        assert_eq!(
            Value::Object(merge(Merge::Group, parts())),
            json!({"a": {"x": 1, "y": 1}, "b": {"y": 2}})
        );
        assert_eq!(Value::Object(merge(Merge::Shallow, parts())), json!({"x": 1, "y": 2}));
    }
}
