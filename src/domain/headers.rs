//! A webhook's custom headers: up to 20 `{name: value}` pairs sent on every
//! attempt (a gateway's static token, a tenant id). Values are credentials
//! more often than not: they are returned by the API to its admin, never
//! logged (`Debug` shows names only).
use serde_json::{Map, Value};

pub const MAX_HEADERS: usize = 20;
pub const MAX_VALUE_BYTES: usize = 1024;

/// Names the service sets itself or that belong to the connection, not to
/// the message (hop-by-hop, RFC 9110 §7.6.1). Compared case-insensitively.
const RESERVED: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "user-agent",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];
/// Ours: `X-SmartDrop-Event`, `-Delivery`, `-Signature`; Standard Webhooks'
/// `webhook-id`, `-timestamp`, `-signature` (and whatever either adds later).
const RESERVED_PREFIXES: &[&str] = &["x-smartdrop-", "webhook-"];

/// Validated headers, sorted by name (as JSON objects and `jsonb` keep them).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct CustomHeaders(Vec<(String, String)>);

impl std::fmt::Debug for CustomHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| name))
            .finish()
    }
}

impl CustomHeaders {
    /// Parses the `headers` field of a request: an object of string values;
    /// `null` and `{}` mean none. The error names the header.
    pub fn parse(value: Value) -> Result<Self, String> {
        let map = match value {
            Value::Null => return Ok(Self::default()),
            Value::Object(map) => map,
            _ => return Err("headers: must be an object of header names to string values".into()),
        };
        if map.len() > MAX_HEADERS {
            return Err(format!(
                "headers: at most {MAX_HEADERS} headers, not {}",
                map.len()
            ));
        }
        let mut seen: Vec<String> = Vec::with_capacity(map.len());
        let mut headers = Vec::with_capacity(map.len());
        for (name, value) in map {
            check_name(&name)?;
            let lower = name.to_ascii_lowercase();
            if seen.contains(&lower) {
                return Err(format!(
                    "headers.{name}: given twice (header names are case-insensitive)"
                ));
            }
            seen.push(lower);
            let Value::String(value) = value else {
                return Err(format!("headers.{name}: the value must be a string"));
            };
            check_value(&name, &value)?;
            headers.push((name, value));
        }
        Ok(Self(headers))
    }

    /// What the database stored, as the sender reads it. Pairs that are not
    /// valid (written by hand in SQL) are left out, naming them in the log.
    pub fn from_stored(value: &Value) -> Self {
        let Value::Object(map) = value else {
            return Self::default();
        };
        let mut headers = Vec::with_capacity(map.len());
        for (name, value) in map {
            match value
                .as_str()
                .map(|v| check_name(name).and(check_value(name, v)))
            {
                Some(Ok(())) => headers.push((name.clone(), value.as_str().unwrap().to_owned())),
                Some(Err(reason)) => {
                    tracing::warn!(header = %name, "custom header not sent: {reason}")
                }
                None => {
                    tracing::warn!(header = %name, "custom header not sent: its value is not a string")
                }
            }
        }
        Self(headers)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|(n, _)| n.clone()).collect()
    }

    pub fn to_json(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(n, v)| (n.clone(), Value::String(v.clone())))
                .collect::<Map<_, _>>(),
        )
    }
}

/// An HTTP token (RFC 9110 §5.6.2), and not one of ours or hop-by-hop.
fn check_name(name: &str) -> Result<(), String> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(tchar) {
        return Err(format!(
            "headers: `{}` is not a valid header name (letters, digits and !#$%&'*+-.^_`|~ only)",
            name.escape_default()
        ));
    }
    let lower = name.to_ascii_lowercase();
    if RESERVED.contains(&lower.as_str()) || RESERVED_PREFIXES.iter().any(|p| lower.starts_with(p))
    {
        return Err(format!(
            "headers.{name}: cannot be set: the service sets it, or it belongs to the connection \
             (reserved: Host, Content-Length, Content-Type, User-Agent, hop-by-hop headers, \
             X-SmartDrop-* and webhook-*)"
        ));
    }
    Ok(())
}

fn check_value(name: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "headers.{name}: the value is at most {MAX_VALUE_BYTES} bytes"
        ));
    }
    if value.contains(['\r', '\n']) {
        return Err(format!(
            "headers.{name}: the value must not contain CR or LF"
        ));
    }
    if !value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        return Err(format!(
            "headers.{name}: the value must be printable ASCII (space and tab allowed)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tokens_with_printable_values_are_accepted() {
        let h = CustomHeaders::parse(
            json!({"X-Api-Key": "k 1\t2", "x-tenant": "t1", "Authorization": "Bearer abc"}),
        )
        .unwrap();
        assert_eq!(h.names(), ["Authorization", "X-Api-Key", "x-tenant"]);
        assert_eq!(
            format!("{h:?}"),
            r#"["Authorization", "X-Api-Key", "x-tenant"]"#
        );
        assert!(CustomHeaders::parse(json!(null)).unwrap().is_empty());
        assert!(CustomHeaders::parse(json!({})).unwrap().is_empty());
    }

    #[test]
    fn forbidden_names_and_values_are_refused_naming_the_header() {
        for (input, says) in [
            (json!({"Host": "x"}), "headers.Host: cannot be set"),
            (
                json!({"content-length": "1"}),
                "headers.content-length: cannot be set",
            ),
            (json!({"Content-Type": "text/plain"}), "cannot be set"),
            (json!({"Transfer-Encoding": "chunked"}), "cannot be set"),
            (json!({"Connection": "close"}), "cannot be set"),
            (json!({"TE": "trailers"}), "cannot be set"),
            (json!({"X-SmartDrop-Signature": "x"}), "cannot be set"),
            (json!({"webhook-id": "x"}), "cannot be set"),
            (json!({"Bad Name": "x"}), "not a valid header name"),
            (json!({"X-Ünï": "x"}), "not a valid header name"),
            (json!({"": "x"}), "not a valid header name"),
            (
                json!({"X-A": "a\r\nX-Injected: 1"}),
                "headers.X-A: the value must not contain CR or LF",
            ),
            (json!({"X-A": "a\nb"}), "CR or LF"),
            (json!({"X-A": "é"}), "printable ASCII"),
            (json!({"X-A": 1}), "headers.X-A: the value must be a string"),
            (json!({"X-A": "a".repeat(1025)}), "at most 1024 bytes"),
            (json!({"X-A": "1", "x-a": "2"}), "given twice"),
            (json!(["X-A"]), "headers: must be an object"),
        ] {
            let err = CustomHeaders::parse(input.clone()).unwrap_err();
            assert!(err.contains(says), "{input}: {err}");
        }
        assert!(CustomHeaders::parse(json!({"X-A": "a".repeat(1024)})).is_ok());
        let many = Value::Object((0..21).map(|i| (format!("X-{i}"), json!("v"))).collect());
        assert!(
            CustomHeaders::parse(many)
                .unwrap_err()
                .contains("at most 20")
        );
    }

    #[test]
    fn stored_pairs_that_are_not_valid_are_left_out() {
        let h = CustomHeaders::from_stored(&json!({"X-Ok": "1", "Host": "evil", "X-Num": 2}));
        assert_eq!(h.names(), ["X-Ok"]);
    }
}
