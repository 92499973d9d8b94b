//! What an attempt means for its delivery: SPEC's status table as a pure
//! function. A failed delivery is data, not an `Err`.
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::sender::{Response, SendError};
/// The outcome of an attempt is the delivery's next state in the queue.
pub use crate::queue::NextState as Outcome;
use crate::queue::retry::RetryPolicy;

/// Whether a receiver's answer or a transport error is worth another try.
pub fn is_retryable(result: &Result<Response, SendError>) -> bool {
    match result {
        Ok(r) => r.status >= 500 || r.status == 408 || r.status == 429,
        Err(SendError::Timeout(_) | SendError::Connect(_) | SendError::Request(_)) => true,
        Err(SendError::Forbidden(_) | SendError::InvalidUrl(_)) => false,
    }
}

/// `attempts` counts this attempt. `unit` is a uniform sample in [0, 1) for the jitter.
pub fn classify(
    result: &Result<Response, SendError>,
    attempts: u32,
    policy: &RetryPolicy,
    now: DateTime<Utc>,
    unit: f64,
) -> Outcome {
    if let Ok(r) = result
        && (200..300).contains(&r.status)
    {
        return Outcome::Success;
    }
    if !is_retryable(result) || !policy.may_retry(attempts) {
        return Outcome::Failed;
    }
    let retry_after = match result {
        Ok(r) if r.status == 429 || r.status == 503 => r
            .retry_after
            .as_deref()
            .and_then(|v| parse_retry_after(v, now)),
        _ => None,
    };
    let delay = policy.delay(attempts, retry_after, unit);
    Outcome::Retry {
        at: crate::queue::retry::later(now, delay),
    }
}

/// `Retry-After` as delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// A one-line description of a failed attempt for `last_error`.
pub fn describe(result: &Result<Response, SendError>) -> Option<String> {
    match result {
        Ok(r) if (200..300).contains(&r.status) => None,
        Ok(r) if (300..400).contains(&r.status) => {
            Some(format!("HTTP {}: redirects are not followed", r.status))
        }
        Ok(r) => Some(format!("HTTP {}", r.status)),
        Err(e) => Some(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        base_ms: 1000,
        factor: 2.0,
        max_ms: 60_000,
        jitter: false,
    };

    fn http(status: u16, retry_after: Option<&str>) -> Result<Response, SendError> {
        Ok(Response {
            status,
            retry_after: retry_after.map(String::from),
            excerpt: String::new(),
        })
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-06-25T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn after(ms: i64) -> Outcome {
        Outcome::Retry {
            at: now() + chrono::Duration::milliseconds(ms),
        }
    }

    #[test]
    fn two_hundreds_succeed() {
        for s in [200, 201, 204, 299] {
            assert_eq!(
                classify(&http(s, None), 1, &POLICY, now(), 0.0),
                Outcome::Success
            );
        }
    }

    #[test]
    fn retryable_answers_and_errors_are_retried_at_the_policy_delay() {
        for r in [
            http(500, None),
            http(502, None),
            http(408, None),
            http(429, None),
            Err(SendError::Timeout(5000)),
            Err(SendError::Connect("refused".into())),
        ] {
            assert_eq!(classify(&r, 1, &POLICY, now(), 0.0), after(1000));
            assert_eq!(classify(&r, 2, &POLICY, now(), 0.0), after(2000));
            assert_eq!(classify(&r, 3, &POLICY, now(), 0.0), Outcome::Failed);
        }
    }

    #[test]
    fn other_client_errors_and_redirects_fail_at_once() {
        for s in [400, 401, 404, 410, 422, 301, 302, 307] {
            assert_eq!(
                classify(&http(s, None), 1, &POLICY, now(), 0.0),
                Outcome::Failed
            );
        }
        let forbidden = Err(SendError::Forbidden("127.0.0.1".parse().unwrap()));
        assert_eq!(
            classify(&forbidden, 1, &POLICY, now(), 0.0),
            Outcome::Failed
        );
    }

    #[test]
    fn retry_after_is_honoured_on_429_and_503_only() {
        assert_eq!(
            classify(&http(429, Some("7")), 1, &POLICY, now(), 0.0),
            after(7000)
        );
        assert_eq!(
            classify(&http(503, Some("7")), 1, &POLICY, now(), 0.0),
            after(7000)
        );
        assert_eq!(
            classify(&http(500, Some("7")), 1, &POLICY, now(), 0.0),
            after(1000)
        );
        let date = "Thu, 25 Jun 2026 12:00:09 GMT";
        assert_eq!(
            classify(&http(429, Some(date)), 1, &POLICY, now(), 0.0),
            after(9000)
        );
        assert_eq!(
            classify(&http(429, Some("999999")), 1, &POLICY, now(), 0.0),
            after(60_000)
        );
        assert_eq!(
            classify(&http(429, Some("soon")), 1, &POLICY, now(), 0.0),
            after(1000)
        );
    }
}
