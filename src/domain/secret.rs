//! Webhook signing secrets in the Standard Webhooks form: `whsec_` + base64 of
//! 24–64 random bytes. The plaintext leaves the service only in the create and
//! rotate responses; `Debug` redacts it so it can never reach a log.
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::rand::{SecureRandom, SystemRandom};

const PREFIX: &str = "whsec_";

#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(String);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

impl WebhookSecret {
    /// `whsec_` + base64 of 32 bytes from ring's CSPRNG.
    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .expect("the operating system's CSPRNG is available");
        Self(format!("{PREFIX}{}", STANDARD.encode(key)))
    }

    pub fn parse(raw: &str) -> Result<Self, String> {
        const HOW: &str = "must be `whsec_` followed by the base64 of 24 to 64 random bytes \
                           (e.g. `echo whsec_$(openssl rand -base64 32)`), or omitted to have one generated";
        let Some(encoded) = raw.strip_prefix(PREFIX) else {
            return Err(HOW.into());
        };
        match STANDARD.decode(encoded) {
            Ok(key) if (24..=64).contains(&key.len()) => Ok(Self(raw.to_owned())),
            _ => Err(HOW.into()),
        }
    }

    /// Wraps a secret read back from the database (validated when it was stored).
    pub fn from_stored(raw: String) -> Self {
        Self(raw)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The Standard Webhooks HMAC key: the base64-decoded part after `whsec_`.
    /// A secret written by hand through SQL that does not decode falls back to
    /// its raw bytes, so deliveries still carry a (verifiable) signature.
    pub fn standard_key(&self) -> Vec<u8> {
        let encoded = self.0.strip_prefix(PREFIX).unwrap_or(&self.0);
        STANDARD
            .decode(encoded)
            .unwrap_or_else(|_| encoded.as_bytes().to_vec())
    }

    /// The key bytes as hex (used for generated admin keys).
    pub fn standard_key_hex(&self) -> String {
        hex::encode(self.standard_key())
    }

    /// Enough to recognise a secret, too little to use it: `whsec_AbCd…wXyZ`.
    pub fn preview(&self) -> String {
        preview(&self.0)
    }
}

pub fn preview(raw: &str) -> String {
    let body = raw.strip_prefix(PREFIX).unwrap_or(raw);
    let chars: Vec<char> = body.chars().collect();
    if chars.len() < 12 {
        return format!("{PREFIX}…");
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{PREFIX}{head}…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_32_random_bytes_and_parse_back() {
        let a = WebhookSecret::generate();
        let b = WebhookSecret::generate();
        assert_ne!(a, b);
        assert_eq!(a.standard_key().len(), 32);
        assert_eq!(WebhookSecret::parse(a.expose()).unwrap(), a);
    }

    #[test]
    fn only_standard_webhooks_secrets_are_accepted() {
        assert!(WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
        assert!(WebhookSecret::parse("supersecretvalue1234").is_err());
        assert!(WebhookSecret::parse("whsec_c2hvcnQ=").is_err()); // 5 bytes
        assert!(WebhookSecret::parse("whsec_not base64!").is_err());
    }

    #[test]
    fn debug_and_preview_never_show_the_secret() {
        let s = WebhookSecret::generate();
        assert!(!format!("{s:?}").contains(&s.expose()[6..]));
        let p = s.preview();
        assert!(p.starts_with("whsec_") && p.contains('…') && p.len() < 20);
    }
}
