//! Pure value types parsed at the edge: no I/O, no async, no pool.
//! Everyone may depend on this module; it depends on nothing in the crate.
pub mod event_pattern;
pub mod filter;
pub mod headers;
pub mod ids;
pub mod ip_policy;
pub mod secret;
pub mod webhook_url;
pub mod window;

/// A rejected input, naming the field it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidField {
    pub field: &'static str,
    pub message: String,
}

impl InvalidField {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}
