//! Webhook target URLs: absolute http/https, at most 2048 characters, and
//! (unless private targets are allowed) not pointing at an internal address.
use std::net::IpAddr;
use std::time::Duration;

use super::InvalidField;
use super::ip_policy::is_forbidden;

pub const MAX_LEN: usize = 2048;

/// The parsed URL, and the text as the operator wrote it (what is stored and
/// echoed back; the parsed form is what requests are sent to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl(url::Url, String);

impl WebhookUrl {
    /// Syntax only: scheme, host, length, no credentials.
    pub fn parse(raw: &str) -> Result<Self, InvalidField> {
        let bad = |m: &str| InvalidField::new("url", m);
        let raw = raw.trim();
        if raw.chars().count() > MAX_LEN {
            return Err(bad("must be at most 2048 characters"));
        }
        let url = url::Url::parse(raw)
            .map_err(|e| bad(&format!("must be an absolute http or https URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("must use the http or https scheme"));
        }
        if url.host().is_none() {
            return Err(bad("must have a host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(
                "must not carry credentials; authenticate with the signature",
            ));
        }
        Ok(Self(url, raw.to_owned()))
    }

    /// Parses and applies the SSRF policy to the host: an IP literal is judged
    /// directly, a name by what it resolves to now. A name that does not
    /// resolve is accepted; the sender vets the addresses again at connect time.
    pub async fn parse_and_vet(raw: &str, allow_private: bool) -> Result<Self, InvalidField> {
        let url = Self::parse(raw)?;
        if allow_private {
            return Ok(url);
        }
        let refused = |ip: IpAddr| {
            InvalidField::new(
                "url",
                format!(
                    "points at {ip}, a loopback, private, link-local or otherwise internal address; \
                     these are refused unless WEBHOOK_ALLOW_PRIVATE_TARGETS=true"
                ),
            )
        };
        if let Some(ip) = url.ip_literal() {
            return if is_forbidden(ip) {
                Err(refused(ip))
            } else {
                Ok(url)
            };
        }
        let host = url.0.host_str().unwrap_or_default().to_owned();
        let port = url.0.port_or_known_default().unwrap_or(80);
        let lookup = tokio::net::lookup_host((host.as_str(), port));
        if let Ok(Ok(addrs)) = tokio::time::timeout(Duration::from_secs(2), lookup).await {
            for addr in addrs {
                if is_forbidden(addr.ip()) {
                    return Err(refused(addr.ip()));
                }
            }
        }
        Ok(url)
    }

    /// The host as an IP address, when the URL names one directly.
    pub fn ip_literal(&self) -> Option<IpAddr> {
        match self.0.host()? {
            url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
            url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
            url::Host::Domain(_) => None,
        }
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The URL as given (trimmed), at most 2048 characters: what is stored.
    pub fn into_string(self) -> String {
        self.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_absolute_http_urls_within_the_length_limit_parse() {
        assert!(WebhookUrl::parse("https://example.com/hook").is_ok());
        assert!(WebhookUrl::parse("http://example.com:8080/a?b=c").is_ok());
        assert!(WebhookUrl::parse("ftp://example.com/").is_err());
        assert!(WebhookUrl::parse("/relative").is_err());
        assert!(WebhookUrl::parse("https://user:pw@example.com/").is_err());
        let long = format!("https://example.com/{}", "a".repeat(MAX_LEN));
        assert_eq!(WebhookUrl::parse(&long).unwrap_err().field, "url");
    }

    #[tokio::test]
    async fn internal_literals_are_refused_unless_allowed() {
        for raw in [
            "http://127.0.0.1/x",
            "http://169.254.169.254/latest",
            "http://[::1]/x",
            "http://10.0.0.1/x",
            "http://0.0.0.0/x",
            "http://localhost:8080/x",
        ] {
            assert!(
                WebhookUrl::parse_and_vet(raw, false).await.is_err(),
                "{raw}"
            );
            assert!(WebhookUrl::parse_and_vet(raw, true).await.is_ok(), "{raw}");
        }
        assert!(
            WebhookUrl::parse_and_vet("https://93.184.216.34/x", false)
                .await
                .is_ok()
        );
    }
}
