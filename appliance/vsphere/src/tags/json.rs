//! The vAPI answers a tag lookup reads, as pure functions of the bytes (serde_json only, so
//! the fuzz target compiles this file alone): the body, the `{"value": …}` wrapper of the
//! `/rest` spelling, the session id, the tag list, a tag's name and category, and the VMs
//! attached to a tag. Whatever the server sends, these give a value or nothing, never a panic.

use serde_json::Value;

/// Parses a body; an empty (or all-whitespace) body is `null`.
pub fn body(data: &[u8]) -> Result<Value, serde_json::Error> {
    if data.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(data)
}

/// The `/rest` spelling wraps every answer in `{"value": …}`; `/api` does not.
pub fn unwrap_value(wrapped: bool, v: Value) -> Value {
    match (wrapped, v) {
        (true, Value::Object(mut m)) => m.remove("value").unwrap_or(Value::Null),
        (_, v) => v,
    }
}

/// The session id a login answers: a non-empty JSON string.
pub fn session_id(v: Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s),
        _ => None,
    }
}

/// A JSON array of strings (null, as some servers answer for none, is empty).
pub fn strings(v: Value) -> Vec<String> {
    match v {
        Value::Array(a) => a
            .into_iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// A tag's (or a category's) `name`, "" when absent.
pub fn name(v: &Value) -> &str {
    v.get("name").and_then(Value::as_str).unwrap_or_default()
}

/// A tag's `category_id`, "" when absent.
pub fn category_id(v: &Value) -> &str {
    v.get("category_id").and_then(Value::as_str).unwrap_or("")
}

/// Ids of the `VirtualMachine`s in a `list-attached-objects` answer (anything else: none).
pub fn attached_vm_ids(v: &Value) -> Vec<&str> {
    match v {
        Value::Array(a) => a
            .iter()
            .filter(|o| o.get("type").and_then(Value::as_str) == Some("VirtualMachine"))
            .filter_map(|o| o.get("id").and_then(Value::as_str))
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn answers() {
        assert_eq!(body(b" \n").unwrap(), Value::Null);
        let v = body(br#"{"value":["a","b",1]}"#).unwrap();
        assert_eq!(strings(unwrap_value(true, v)), vec!["a", "b"]);
        assert_eq!(
            strings(unwrap_value(false, body(br#"["a"]"#).unwrap())),
            vec!["a"]
        );
        assert_eq!(session_id(body(br#""s1""#).unwrap()).as_deref(), Some("s1"));
        assert_eq!(session_id(body(br#""""#).unwrap()), None);
        let t = body(br#"{"name":"gold","category_id":"c1"}"#).unwrap();
        assert_eq!((name(&t), category_id(&t)), ("gold", "c1"));
        let a = body(
            br#"[{"type":"VirtualMachine","id":"vm-1"},{"type":"Datastore","id":"ds-1"},{"type":"VirtualMachine"}]"#,
        )
        .unwrap();
        assert_eq!(attached_vm_ids(&a), vec!["vm-1"]);
        // serde_json's recursion limit turns a deep document into an error, not a stack overflow.
        let deep = "[".repeat(100_000);
        assert!(body(deep.as_bytes()).is_err());
    }

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "(VirtualMachine|vm-[0-9]{1,3}|name|id|type|value|[a-z]{0,6})".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(
                    "(value|name|category_id|type|id|[a-z]{1,4})",
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256), wrapped in any::<bool>()) {
            if let Ok(v) = body(&data) {
                let v = unwrap_value(wrapped, v);
                let _ = (name(&v), category_id(&v), attached_vm_ids(&v));
                let _ = session_id(v.clone());
                let _ = strings(v);
            }
        }

        #[test]
        fn shaped_answers_extract_what_they_hold(v in json(), wrapped in any::<bool>()) {
            let bytes = serde_json::to_vec(&v).unwrap();
            let parsed = body(&bytes).unwrap();
            prop_assert_eq!(&parsed, &v);
            let v = unwrap_value(wrapped, parsed);
            for id in attached_vm_ids(&v) {
                prop_assert!(v.as_array().is_some_and(|a| a.iter().any(|o| o.get("id").and_then(Value::as_str) == Some(id))));
            }
            let n = strings(v.clone()).len();
            prop_assert!(n <= v.as_array().map_or(0, Vec::len));
        }
    }
}
