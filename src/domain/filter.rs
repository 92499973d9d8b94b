//! A webhook's payload filter: `{data_key: scalar | [scalars]}` over the
//! top-level keys of an event's `data`. Every key must match; any listed
//! value matches. Validated here, at the edge; matched where deliveries are
//! created, in the fan-out's SQL (`webhook_filter_matches`, migration 13),
//! whose known answers are pinned by the integration tests.
use serde_json::{Map, Value};

pub const MAX_KEYS: usize = 20;
pub const MAX_VALUES: usize = 100;
/// Longer keys and string values could not match anything useful, and they
/// become index terms (migration 13 skips longer ones in events' data).
pub const MAX_KEY_CHARS: usize = 200;
pub const MAX_STRING_CHARS: usize = 500;

/// A validated, non-empty filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter(Map<String, Value>);

impl Filter {
    /// Parses the `filter` field of a request: `null` and `{}` both mean no
    /// filter (`None`). The error names the offending path, e.g.
    /// `filter.pool_id[3]`.
    pub fn parse(value: Value) -> Result<Option<Self>, String> {
        let map = match value {
            Value::Null => return Ok(None),
            Value::Object(map) => map,
            _ => {
                return Err(
                    "filter: must be an object mapping keys of the event's data \
                     to a value or a list of values (or null for no filter)"
                        .into(),
                );
            }
        };
        if map.len() > MAX_KEYS {
            return Err(format!(
                "filter: at most {MAX_KEYS} keys, not {}",
                map.len()
            ));
        }
        for (key, value) in &map {
            if key.is_empty() || key.chars().count() > MAX_KEY_CHARS || key.contains('\0') {
                return Err(format!(
                    "filter: key `{}` must be 1 to {MAX_KEY_CHARS} characters, without NUL",
                    key.replace('\0', "\\u0000")
                ));
            }
            match value {
                Value::Array(values) => {
                    if values.is_empty() {
                        return Err(format!(
                            "filter.{key}: must list at least one value (leave the key out to accept any)"
                        ));
                    }
                    if values.len() > MAX_VALUES {
                        return Err(format!(
                            "filter.{key}: at most {MAX_VALUES} values, not {}",
                            values.len()
                        ));
                    }
                    for (i, v) in values.iter().enumerate() {
                        check_scalar(v).map_err(|m| format!("filter.{key}[{i}]: {m}"))?;
                    }
                }
                v => check_scalar(v).map_err(|m| format!("filter.{key}: {m}"))?,
            }
        }
        Ok((!map.is_empty()).then_some(Self(map)))
    }

    pub fn into_json(self) -> Value {
        Value::Object(self.0)
    }
}

fn check_scalar(v: &Value) -> Result<(), String> {
    match v {
        Value::Object(_) | Value::Array(_) => Err(
            "must be a string, number, boolean or null, or a list of them (filters match top-level scalar values)"
                .into(),
        ),
        Value::String(s) if s.chars().count() > MAX_STRING_CHARS => {
            Err(format!("strings are at most {MAX_STRING_CHARS} characters"))
        }
        Value::String(s) if s.contains('\0') => {
            Err("must not contain the NUL character (\\u0000)".into())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scalars_and_lists_of_scalars_are_accepted() {
        let f = Filter::parse(
            json!({"pool_id": ["p1", "p2"], "asset": "SDT", "n": 1.5, "ok": true, "x": null}),
        )
        .unwrap()
        .unwrap();
        assert_eq!(f.into_json()["asset"], "SDT");
        assert_eq!(Filter::parse(json!(null)), Ok(None));
        assert_eq!(Filter::parse(json!({})), Ok(None));
    }

    #[test]
    fn bad_shapes_are_refused_naming_the_path() {
        for (input, path) in [
            (json!("pool"), "filter:"),
            (json!(["p1"]), "filter:"),
            (json!({"pool_id": {"in": ["p1"]}}), "filter.pool_id:"),
            (json!({"pool_id": []}), "filter.pool_id:"),
            (json!({"pool_id": ["p1", ["p2"]]}), "filter.pool_id[1]:"),
            (json!({"pool_id": ["p1", {"a": 1}]}), "filter.pool_id[1]:"),
            (json!({"": 1}), "filter: key"),
            (json!({"k": "x".repeat(501)}), "filter.k:"),
            (json!({"k": "a\u{0}b"}), "filter.k:"),
        ] {
            let err = Filter::parse(input.clone()).unwrap_err();
            assert!(err.starts_with(path), "{input}: {err}");
        }
    }

    #[test]
    fn the_limits_hold_at_their_edge() {
        let keys = |n: usize| Value::Object((0..n).map(|i| (format!("k{i}"), json!(i))).collect());
        assert!(Filter::parse(keys(MAX_KEYS)).is_ok());
        assert!(
            Filter::parse(keys(MAX_KEYS + 1))
                .unwrap_err()
                .contains("at most 20 keys")
        );
        let values = |n: usize| json!({"k": (0..n).collect::<Vec<_>>()});
        assert!(Filter::parse(values(MAX_VALUES)).is_ok());
        assert!(
            Filter::parse(values(MAX_VALUES + 1))
                .unwrap_err()
                .contains("at most 100 values")
        );
        assert!(Filter::parse(json!({"k": "é".repeat(MAX_STRING_CHARS)})).is_ok());
        assert!(Filter::parse(json!({"é".repeat(MAX_KEY_CHARS): 1})).is_ok());
        assert!(Filter::parse(json!({"é".repeat(MAX_KEY_CHARS + 1): 1})).is_err());
    }
}
