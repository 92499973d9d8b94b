//! The middleware in front of /api/v1: rate limit by client IP, then bearer
//! authentication. Rate limiting comes first so a key cannot be brute-forced.
use std::net::IpAddr;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{AUTHORIZATION, HeaderName, HeaderValue, RETRY_AFTER};
use actix_web::middleware::Next;
use actix_web::{Error, HttpResponse, ResponseError, web};
use ring::hmac;
use ring::rand::SystemRandom;

use super::ApiState;
use super::error::ApiError;
use super::rate_limit::Decision;

/// The admin key, kept only as an HMAC tag so comparisons take constant time.
pub struct AdminKey {
    key: hmac::Key,
    tag: hmac::Tag,
}

impl AdminKey {
    pub fn new(secret: &str) -> Self {
        let key =
            hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new()).expect("CSPRNG available");
        let tag = hmac::sign(&key, secret.as_bytes());
        Self { key, tag }
    }

    pub fn verify(&self, presented: &str) -> bool {
        hmac::verify(&self.key, presented.as_bytes(), self.tag.as_ref()).is_ok()
    }
}

fn bearer(req: &ServiceRequest) -> Option<&str> {
    let value = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The TCP peer, or the right-most X-Forwarded-For hop when the proxy is trusted.
fn client_ip(req: &ServiceRequest, trust_proxy: bool) -> Option<IpAddr> {
    let peer = req.peer_addr().map(|a| a.ip());
    if !trust_proxy {
        return peer;
    }
    // The last hop is the one our proxy appended; anything before it came
    // from the client. A last hop that is not an address falls back to the peer.
    let last_hop = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .last()
        .map(str::trim);
    let forwarded = last_hop.and_then(|hop| {
        hop.parse::<IpAddr>()
            .ok()
            .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
    });
    forwarded.or(peer)
}

fn rate_headers(decision: &Decision) -> Vec<(HeaderName, HeaderValue)> {
    let (limit, remaining, reset) = match *decision {
        Decision::Allowed {
            limit,
            remaining,
            reset_secs,
        } => (limit, remaining, reset_secs),
        Decision::Denied {
            limit, reset_secs, ..
        } => (limit, 0, reset_secs),
    };
    let mut headers = vec![
        (
            HeaderName::from_static("x-ratelimit-limit"),
            HeaderValue::from(limit),
        ),
        (
            HeaderName::from_static("x-ratelimit-remaining"),
            HeaderValue::from(remaining),
        ),
        (
            HeaderName::from_static("x-ratelimit-reset"),
            HeaderValue::from(reset),
        ),
    ];
    if let Decision::Denied {
        retry_after_secs, ..
    } = *decision
    {
        headers.push((RETRY_AFTER, HeaderValue::from(retry_after_secs)));
    }
    headers
}

pub async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    let state = req
        .app_data::<web::Data<ApiState>>()
        .expect("ApiState is registered")
        .clone();
    // POST /webhooks/{id}/test has its own, tighter budget; POST /events and
    // /events/batch, a producer's endpoints, share their own larger one (a
    // batch counts as one request: it is one transaction however many events).
    let post = req.method() == actix_web::http::Method::POST;
    let limiter = if post && req.path().ends_with("/test") {
        &state.limits.test
    } else if post && matches!(req.path(), "/api/v1/events" | "/api/v1/events/batch") {
        &state.limits.events
    } else {
        &state.limits.management
    };
    let decision = client_ip(&req, state.trust_proxy).map(|ip| limiter.check(ip));
    let headers = decision.as_ref().map(rate_headers).unwrap_or_default();
    let with_headers = |mut response: HttpResponse| {
        for (name, value) in &headers {
            response.headers_mut().insert(name.clone(), value.clone());
        }
        response
    };
    if let Some(Decision::Denied {
        retry_after_secs, ..
    }) = decision
    {
        let response = with_headers(ApiError::RateLimited(retry_after_secs).error_response());
        return Ok(req.into_response(response).map_into_right_body());
    }
    if !bearer(&req).is_some_and(|token| state.admin_key.verify(token)) {
        let response = with_headers(ApiError::Unauthorized.error_response());
        return Ok(req.into_response(response).map_into_right_body());
    }
    let mut response = next.call(req).await?;
    for (name, value) in headers {
        response.headers_mut().insert(name, value);
    }
    Ok(response.map_into_left_body())
}
