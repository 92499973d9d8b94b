//! Both signature schemes over the raw body, and their constant-time checks.
//! Pure: the timestamp is a parameter, so known-answer tests pin the output.
//!
//! - `X-SmartDrop-Signature: sha256=<hex>`: HMAC-SHA256 of the body, keyed with
//!   the secret string's UTF-8 bytes (GitHub style).
//! - `webhook-signature: v1,<base64>`: Standard Webhooks, HMAC-SHA256 of
//!   `{id}.{timestamp}.{body}` keyed with the base64-decoded secret.
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;

use crate::domain::secret::WebhookSecret;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signatures {
    /// The `X-SmartDrop-Signature` value.
    pub smartdrop: String,
    /// The `webhook-signature` value.
    pub standard: String,
}

/// Precomputed keys for one secret, so a delivery signs without re-decoding.
pub struct Signer {
    smartdrop: hmac::Key,
    standard: hmac::Key,
}

impl Signer {
    pub fn new(secret: &WebhookSecret) -> Self {
        Self {
            smartdrop: hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes()),
            standard: hmac::Key::new(hmac::HMAC_SHA256, &secret.standard_key()),
        }
    }

    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> Signatures {
        let smartdrop = hmac::sign(&self.smartdrop, body);
        let mut ctx = hmac::Context::with_key(&self.standard);
        ctx.update(msg_id.as_bytes());
        ctx.update(b".");
        ctx.update(timestamp.to_string().as_bytes());
        ctx.update(b".");
        ctx.update(body);
        Signatures {
            smartdrop: format!("sha256={}", hex::encode(smartdrop.as_ref())),
            standard: format!("v1,{}", STANDARD.encode(ctx.sign().as_ref())),
        }
    }
}

pub fn sign(secret: &WebhookSecret, msg_id: &str, timestamp: i64, body: &[u8]) -> Signatures {
    Signer::new(secret).sign(msg_id, timestamp, body)
}

/// During a rotation's overlap: `webhook-signature` carries the new secret's
/// signature and then the previous one's, space separated (receivers accept
/// any that matches), so a receiver still on the old secret keeps verifying.
/// `X-SmartDrop-Signature` has room for one: the new secret's.
pub fn sign_rotating(
    secret: &WebhookSecret,
    previous: Option<&WebhookSecret>,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Signatures {
    let mut signatures = sign(secret, msg_id, timestamp, body);
    if let Some(previous) = previous {
        let old = sign(previous, msg_id, timestamp, body);
        signatures.standard = format!("{} {}", signatures.standard, old.standard);
    }
    signatures
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the signature header is malformed")]
    Malformed,
    #[error("the timestamp is outside the tolerance")]
    StaleTimestamp,
    #[error("no signature matches")]
    Mismatch,
}

/// Checks `X-SmartDrop-Signature` in constant time.
pub fn verify_smartdrop(
    secret: &WebhookSecret,
    header: &str,
    body: &[u8],
) -> Result<(), VerifyError> {
    let hex_sig = header
        .strip_prefix("sha256=")
        .ok_or(VerifyError::Malformed)?;
    let tag = hex::decode(hex_sig).map_err(|_| VerifyError::Malformed)?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes());
    hmac::verify(&key, body, &tag).map_err(|_| VerifyError::Mismatch)
}

/// Checks Standard Webhooks headers: the timestamp within `tolerance_secs` of
/// `now`, and any of the space-separated `v1,` signatures, in constant time.
pub fn verify_standard(
    secret: &WebhookSecret,
    msg_id: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    let ts: i64 = timestamp.parse().map_err(|_| VerifyError::Malformed)?;
    if (now - ts).abs() > tolerance_secs {
        return Err(VerifyError::StaleTimestamp);
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, &secret.standard_key());
    let mut signed = Vec::with_capacity(msg_id.len() + timestamp.len() + body.len() + 2);
    signed.extend_from_slice(format!("{msg_id}.{timestamp}.").as_bytes());
    signed.extend_from_slice(body);
    let matched = signature_header
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|b64| STANDARD.decode(b64).ok())
        .any(|tag| hmac::verify(&key, &signed, &tag).is_ok());
    if matched {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example published with the Standard Webhooks specification.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const EXPECTED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn secret() -> WebhookSecret {
        WebhookSecret::parse(SECRET).unwrap()
    }

    #[test]
    fn reproduces_the_standard_webhooks_published_example() {
        assert_eq!(sign(&secret(), MSG_ID, TS, BODY).standard, EXPECTED);
    }

    #[test]
    fn during_an_overlap_both_secrets_verify_the_new_one_listed_first() {
        let new = WebhookSecret::generate();
        let s = sign_rotating(&new, Some(&secret()), MSG_ID, TS, BODY);
        let (first, second) = s.standard.split_once(' ').unwrap();
        assert_eq!(second, EXPECTED);
        assert_eq!(first, sign(&new, MSG_ID, TS, BODY).standard);
        let ts = TS.to_string();
        for key in [&new, &secret()] {
            assert_eq!(
                verify_standard(key, MSG_ID, &ts, &s.standard, BODY, TS, 300),
                Ok(())
            );
        }
        assert_eq!(s.smartdrop, sign(&new, MSG_ID, TS, BODY).smartdrop);
        assert_eq!(
            sign_rotating(&new, None, MSG_ID, TS, BODY),
            sign(&new, MSG_ID, TS, BODY)
        );
    }

    #[test]
    fn smartdrop_signature_is_hex_hmac_of_the_body_keyed_with_the_secret_string() {
        let sig = sign(&secret(), MSG_ID, TS, BODY).smartdrop;
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
        assert!(verify_smartdrop(&secret(), &sig, BODY).is_ok());
        // Independent of the id and timestamp.
        assert_eq!(sign(&secret(), "other", 1, BODY).smartdrop, sig);
    }

    #[test]
    fn verification_accepts_the_example_and_rejects_tampering() {
        let ok = |body: &[u8], s: &WebhookSecret, now: i64| {
            verify_standard(s, MSG_ID, &TS.to_string(), EXPECTED, body, now, 300)
        };
        assert_eq!(ok(BODY, &secret(), TS + 10), Ok(()));
        assert_eq!(
            ok(br#"{"test": 2432232315}"#, &secret(), TS),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            ok(BODY, &WebhookSecret::generate(), TS),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            ok(BODY, &secret(), TS + 301),
            Err(VerifyError::StaleTimestamp)
        );
        assert_eq!(
            ok(BODY, &secret(), TS - 301),
            Err(VerifyError::StaleTimestamp)
        );
        let smart = sign(&secret(), MSG_ID, TS, BODY).smartdrop;
        assert_eq!(
            verify_smartdrop(&secret(), &smart, b"tampered"),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify_smartdrop(&WebhookSecret::generate(), &smart, BODY),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify_smartdrop(&secret(), "md5=00", BODY),
            Err(VerifyError::Malformed)
        );
    }

    #[test]
    fn any_of_several_signatures_may_match() {
        let header = format!("v1,AAAA {EXPECTED}");
        let r = verify_standard(&secret(), MSG_ID, &TS.to_string(), &header, BODY, TS, 300);
        assert_eq!(r, Ok(()));
    }
}
