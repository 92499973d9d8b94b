//! Retry timing, pure: `d = base × factor^(attempts−1)` ms, equal jitter
//! (a delay in `[d/2, d)`), capped; a receiver's Retry-After is honoured
//! within the cap (we never come back earlier than it asked).
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

/// How far `at` (on this host's clock) is from now, in milliseconds, never
/// negative: what the database adds to its own `now()`.
pub fn from_now_ms(at: DateTime<Utc>) -> i64 {
    (at - Utc::now()).num_milliseconds().max(0)
}

/// `at + d`, saturating at the latest time chrono can hold instead of
/// panicking (configuration bounds keep real delays far below that).
pub fn later(at: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| at.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Total attempts, the first included.
    pub max_attempts: u32,
    pub base_ms: u64,
    pub factor: f64,
    pub max_ms: u64,
    pub jitter: bool,
}

impl RetryPolicy {
    /// The delay after the `attempts`-th failed attempt (1-based). `unit` is a
    /// uniform sample in `[0, 1)`, passed in so the function stays pure.
    pub fn delay(&self, attempts: u32, retry_after: Option<Duration>, unit: f64) -> Duration {
        let exponent = attempts.saturating_sub(1).min(1000) as i32;
        let d = (self.base_ms as f64 * self.factor.powi(exponent)).min(self.max_ms as f64);
        let d = if self.jitter {
            d / 2.0 + (d / 2.0) * unit.clamp(0.0, 1.0)
        } else {
            d
        };
        let mut delay = Duration::from_millis(d as u64);
        if let Some(asked) = retry_after {
            delay = delay.max(asked);
        }
        delay.min(Duration::from_millis(self.max_ms))
    }

    /// Whether another attempt is allowed after `attempts` have been made.
    pub fn may_retry(&self, attempts: u32) -> bool {
        attempts < self.max_attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_saturates_instead_of_panicking() {
        let now = Utc::now();
        assert_eq!(
            later(now, Duration::from_secs(1)),
            now + TimeDelta::seconds(1)
        );
        assert_eq!(later(now, Duration::MAX), DateTime::<Utc>::MAX_UTC);
        assert_eq!(
            later(now, Duration::from_millis(u64::MAX)),
            DateTime::<Utc>::MAX_UTC
        );
    }

    fn policy(jitter: bool) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            base_ms: 30_000,
            factor: 2.0,
            max_ms: 3_600_000,
            jitter,
        }
    }

    #[test]
    fn delays_grow_geometrically_without_jitter() {
        let p = policy(false);
        let ms = |n| p.delay(n, None, 0.5).as_millis();
        assert_eq!(
            [ms(1), ms(2), ms(3), ms(4)],
            [30_000, 60_000, 120_000, 240_000]
        );
    }

    #[test]
    fn delays_are_capped() {
        let p = policy(false);
        assert_eq!(p.delay(20, None, 0.0), Duration::from_millis(3_600_000));
        let asked = Some(Duration::from_secs(86_400));
        assert_eq!(p.delay(1, asked, 0.0), Duration::from_millis(3_600_000));
    }

    #[test]
    fn equal_jitter_stays_in_the_upper_half() {
        let p = policy(true);
        assert_eq!(p.delay(1, None, 0.0), Duration::from_millis(15_000));
        assert_eq!(p.delay(1, None, 0.999_999), Duration::from_millis(29_999));
        assert_eq!(p.delay(2, None, 0.5), Duration::from_millis(45_000));
    }

    #[test]
    fn retry_after_is_a_floor() {
        let p = policy(false);
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(90)), 0.0),
            Duration::from_secs(90)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(1)), 0.0),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn max_attempts_counts_the_first_attempt() {
        let p = RetryPolicy {
            max_attempts: 3,
            ..policy(false)
        };
        assert!(p.may_retry(1) && p.may_retry(2) && !p.may_retry(3));
    }
}
