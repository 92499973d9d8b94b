//! The outbound HTTP client. No database here. It reuses connections, never
//! follows redirects, gives up after the timeout, reads at most 4 KiB of the
//! answer, and applies the SSRF policy to the addresses it actually connects
//! to (a vetting resolver), so DNS rebinding cannot slip past registration.
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};

use crate::domain::headers::CustomHeaders;
use crate::domain::ip_policy::is_forbidden;
use crate::domain::webhook_url::WebhookUrl;

pub const USER_AGENT: &str = "SmartDrop-Webhooks/1.0";
pub const EXCERPT_LIMIT: usize = 4096;
/// Past the excerpt, up to this much more of a response is read and thrown
/// away, so the connection goes back to the pool for the next delivery to
/// that host; a larger body is abandoned (the connection is closed). The
/// request timeout bounds the time this takes.
pub const DRAIN_LIMIT: usize = 64 * 1024;

/// What one delivery attempt sends.
pub struct Request {
    pub url: String,
    pub delivery_id: String,
    pub event_type: String,
    pub timestamp: i64,
    pub smartdrop_signature: String,
    pub standard_signature: String,
    /// The webhook's own headers, sent before ours (they cannot overlap:
    /// domain::headers refuses our names).
    pub headers: CustomHeaders,
    pub body: Vec<u8>,
}

/// What the receiver answered.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// The raw `Retry-After` header, parsed later against the clock.
    pub retry_after: Option<String>,
    pub excerpt: String,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    #[error("timed out after {0} ms")]
    Timeout(u64),
    #[error("connection failed: {0}")]
    Connect(String),
    #[error(
        "refused to connect to {0}: internal addresses are not allowed (WEBHOOK_ALLOW_PRIVATE_TARGETS)"
    )]
    Forbidden(IpAddr),
    #[error("invalid target URL: {0}")]
    InvalidUrl(String),
    #[error("request failed: {0}")]
    Request(String),
}

impl SendError {
    /// A short, stable kind for the attempt log and the reporting views.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Connect(_) => "connect",
            Self::Forbidden(_) => "forbidden_address",
            Self::InvalidUrl(_) => "invalid_url",
            Self::Request(_) => "request",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0} is an internal address")]
struct ForbiddenAddress(IpAddr);

/// Resolves with the system resolver, then drops every forbidden address.
struct VettingResolver;

impl Resolve for VettingResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| !is_forbidden(a.ip()))
                .collect();
            match (allowed.is_empty(), found.first()) {
                (true, Some(first)) => Err(Box::new(ForbiddenAddress(first.ip())) as _),
                _ => Ok(Box::new(allowed.into_iter()) as Addrs),
            }
        })
    }
}

#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    allow_private: bool,
    timeout: Duration,
}

impl Sender {
    pub fn new(
        timeout: Duration,
        allow_private: bool,
        max_idle_per_host: usize,
    ) -> anyhow::Result<Self> {
        // reqwest is built without a default crypto provider (ring only, no
        // aws-lc); installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_max_idle_per_host(max_idle_per_host)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(USER_AGENT)
            .no_proxy();
        if !allow_private {
            builder = builder.dns_resolver(Arc::new(VettingResolver));
        }
        Ok(Self {
            client: builder.build()?,
            allow_private,
            timeout,
        })
    }

    pub async fn send(&self, req: Request) -> Result<Response, SendError> {
        let url = WebhookUrl::parse(&req.url).map_err(|e| SendError::InvalidUrl(e.message))?;
        // IP literals never reach the resolver, so they are judged here.
        if let Some(ip) = url.ip_literal()
            && !self.allow_private
            && is_forbidden(ip)
        {
            return Err(SendError::Forbidden(ip));
        }
        let header =
            |v: &str| HeaderValue::from_str(v).map_err(|e| SendError::Request(e.to_string()));
        let mut request = self.client.post(url.as_str());
        for (name, value) in req.headers.iter() {
            let mut value = header(value)?;
            // Credentials, often: kept out of any debug output.
            value.set_sensitive(true);
            request = request.header(name, value);
        }
        let mut response = request
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header("X-SmartDrop-Event", header(&req.event_type)?)
            .header("X-SmartDrop-Delivery", header(&req.delivery_id)?)
            .header("X-SmartDrop-Signature", header(&req.smartdrop_signature)?)
            .header("webhook-id", header(&req.delivery_id)?)
            .header("webhook-timestamp", req.timestamp)
            .header("webhook-signature", header(&req.standard_signature)?)
            .body(req.body)
            .send()
            .await
            .map_err(|e| self.classify_error(e))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // Read at most EXCERPT_LIMIT bytes; a read error or the timeout ends
        // the excerpt but not the attempt, whose status is already known.
        let mut excerpt = Vec::new();
        while excerpt.len() < EXCERPT_LIMIT {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let take = chunk.len().min(EXCERPT_LIMIT - excerpt.len());
                    excerpt.extend_from_slice(&chunk[..take]);
                }
                _ => break,
            }
        }
        let mut drained = 0;
        while drained < DRAIN_LIMIT {
            match response.chunk().await {
                Ok(Some(chunk)) => drained += chunk.len(),
                _ => break,
            }
        }
        Ok(Response {
            status,
            retry_after,
            excerpt: storable(&String::from_utf8_lossy(&excerpt)),
        })
    }

    fn classify_error(&self, e: reqwest::Error) -> SendError {
        // reqwest names the URL in its errors; a webhook URL's path and query
        // are often its credential (Slack, Discord), and errors are stored and
        // shown on the dashboard.
        let e = e.without_url();
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(err) = source {
            if let Some(ForbiddenAddress(ip)) = err.downcast_ref::<ForbiddenAddress>() {
                return SendError::Forbidden(*ip);
            }
            source = err.source();
        }
        if e.is_timeout() {
            SendError::Timeout(self.timeout.as_millis() as u64)
        } else if e.is_connect() {
            SendError::Connect(storable(&error_chain(&e)))
        } else {
            SendError::Request(storable(&error_chain(&e)))
        }
    }
}

/// Postgres text cannot hold NUL; a receiver's binary answer must not stop
/// the attempt from being recorded.
pub fn storable(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

/// "outer: inner: innermost", without repeating reqwest's URL noise.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(err) = source {
        parts.push(err.to_string());
        source = err.source();
    }
    parts.join(": ")
}
