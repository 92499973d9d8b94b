//! Subscription patterns: an exact catalogue type, `*`, or `prefix.*`.
//! The same rule is written in SQL in `fanout::store` (the fan-out query);
//! the tests here pin the semantics both must share.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventPattern {
    All,
    Prefix(String),
    Exact(String),
}

impl EventPattern {
    /// Parses `raw` and checks it against the catalogue: an exact name must
    /// exist, and a prefix must match at least one known type.
    pub fn parse(raw: &str, catalogue: &[String]) -> Result<Self, String> {
        let pattern = if raw == "*" {
            Self::All
        } else if let Some(prefix) = raw.strip_suffix(".*") {
            if prefix.is_empty() || prefix.contains('*') {
                return Err(format!("`{raw}` is not a valid pattern"));
            }
            Self::Prefix(format!("{prefix}."))
        } else if raw.contains('*') {
            return Err(format!(
                "`{raw}` is not a valid pattern: use `*` or `prefix.*`"
            ));
        } else {
            Self::Exact(raw.to_owned())
        };
        if catalogue.iter().any(|t| pattern.matches(t)) {
            Ok(pattern)
        } else {
            Err(format!(
                "`{raw}` matches no known event type (see GET /api/v1/event-types)"
            ))
        }
    }

    pub fn matches(&self, event_type: &str) -> bool {
        match self {
            Self::All => true,
            Self::Prefix(p) => event_type.starts_with(p.as_str()),
            Self::Exact(e) => e == event_type,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalogue() -> Vec<String> {
        ["pool.created", "pool.closed", "price.alert"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn wildcards_and_exact_names_match_what_they_should() {
        let c = catalogue();
        let all = EventPattern::parse("*", &c).unwrap();
        let pool = EventPattern::parse("pool.*", &c).unwrap();
        let exact = EventPattern::parse("price.alert", &c).unwrap();
        assert!(all.matches("pool.created") && all.matches("price.alert"));
        assert!(pool.matches("pool.closed") && !pool.matches("price.alert"));
        assert!(!pool.matches("poolx.created"));
        assert!(exact.matches("price.alert") && !exact.matches("pool.created"));
    }

    #[test]
    fn unknown_and_malformed_patterns_are_refused() {
        let c = catalogue();
        assert!(EventPattern::parse("pool.nope", &c).is_err());
        assert!(EventPattern::parse("nft.*", &c).is_err());
        assert!(EventPattern::parse("pool*", &c).is_err());
        assert!(EventPattern::parse(".*", &c).is_err());
        assert!(EventPattern::parse("*.*", &c).is_err());
    }
}
