//! Prefixed identifiers. A malformed id can never match a row, so parsing
//! fails fast and the API answers 404 without touching the database.

macro_rules! prefixed_id {
    ($name:ident, $prefix:literal) => {
        #[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// `prefix` followed by 32 lowercase hex digits, as the database generates them.
            pub fn parse(raw: &str) -> Option<Self> {
                let hex = raw.strip_prefix($prefix)?;
                let ok = hex.len() == 32
                    && hex
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                ok.then(|| Self(raw.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

prefixed_id!(WebhookId, "wh_");
prefixed_id!(DeliveryId, "dlv_");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_need_their_prefix_and_32_hex_digits() {
        assert!(WebhookId::parse("wh_0123456789abcdef0123456789abcdef").is_some());
        assert!(WebhookId::parse("dlv_0123456789abcdef0123456789abcdef").is_none());
        assert!(WebhookId::parse("wh_0123456789ABCDEF0123456789abcdef").is_none());
        assert!(WebhookId::parse("wh_123").is_none());
        assert!(DeliveryId::parse("dlv_0123456789abcdef0123456789abcdef").is_some());
        assert!(DeliveryId::parse("' or 1=1 --").is_none());
    }
}
