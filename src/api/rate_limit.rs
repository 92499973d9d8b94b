//! Per-client-IP rate limits on governor's GCRA: "N per W seconds" is a burst
//! of N refilled one request every W/N. Memory stays bounded: idle keys are
//! dropped when the map fills, and a spray of fresh addresses that cannot be
//! dropped that way starts a fresh map (limits are best-effort per instance).
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

type Keyed =
    RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock, StateInformationMiddleware>;

/// Keys kept before the map is pruned.
pub const MAX_KEYS: usize = 50_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed {
        limit: u32,
        remaining: u32,
        reset_secs: u64,
    },
    Denied {
        limit: u32,
        retry_after_secs: u64,
        reset_secs: u64,
    },
}

pub struct IpLimiter {
    inner: RwLock<Arc<Keyed>>,
    quota: Quota,
    burst: u32,
    period: Duration,
    max_keys: usize,
}

impl IpLimiter {
    /// `max` requests per `window`.
    pub fn new(max: u32, window: Duration) -> Self {
        Self::with_capacity(max, window, MAX_KEYS)
    }

    pub fn with_capacity(max: u32, window: Duration, max_keys: usize) -> Self {
        let burst = NonZeroU32::new(max.max(1)).expect("max >= 1");
        let period = (window / burst.get()).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)
            .expect("non-zero period")
            .allow_burst(burst);
        Self {
            inner: RwLock::new(Arc::new(Self::fresh(quota))),
            quota,
            burst: burst.get(),
            period,
            max_keys,
        }
    }

    fn fresh(quota: Quota) -> Keyed {
        RateLimiter::dashmap_with_clock(quota, DefaultClock::default())
            .with_middleware::<StateInformationMiddleware>()
    }

    pub fn check(&self, ip: IpAddr) -> Decision {
        let key = normalize(ip);
        let mut limiter = self.inner.read().unwrap().clone();
        if limiter.len() >= self.max_keys {
            self.prune(&limiter);
            // prune may have swapped in a fresh map
            limiter = self.inner.read().unwrap().clone();
        }
        let secs_ceil = |d: Duration| d.as_secs() + u64::from(d.subsec_nanos() > 0);
        match limiter.check_key(&key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                Decision::Allowed {
                    limit: self.burst,
                    remaining,
                    reset_secs: secs_ceil(self.period * (self.burst - remaining)),
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(limiter.clock().now());
                Decision::Denied {
                    limit: self.burst,
                    retry_after_secs: secs_ceil(wait).max(1),
                    reset_secs: secs_ceil(wait + self.period * (self.burst - 1)).max(1),
                }
            }
        }
    }

    /// Drops idle keys; if the map is still mostly full (a spray of new
    /// addresses), replaces it with an empty one.
    fn prune(&self, limiter: &Keyed) {
        limiter.retain_recent();
        limiter.shrink_to_fit();
        if limiter.len() >= self.max_keys * 3 / 4 {
            tracing::warn!(
                keys = limiter.len(),
                "rate limiter full of distinct addresses; starting a fresh map"
            );
            *self.inner.write().unwrap() = Arc::new(Self::fresh(self.quota));
        }
    }

    /// Number of addresses currently tracked.
    pub fn len(&self) -> usize {
        self.inner.read().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// IPv4-mapped IPv6 counts as IPv4; IPv6 is limited per /64, the smallest
/// block a single client usually holds.
fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn the_request_after_the_burst_is_denied_with_a_retry_after() {
        let limiter = IpLimiter::new(5, Duration::from_secs(60));
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        for expected_remaining in (0..5).rev() {
            match limiter.check(ip) {
                Decision::Allowed {
                    limit, remaining, ..
                } => {
                    assert_eq!((limit, remaining), (5, expected_remaining));
                }
                d => panic!("unexpected {d:?}"),
            }
        }
        match limiter.check(ip) {
            Decision::Denied {
                retry_after_secs,
                reset_secs,
                ..
            } => {
                assert!((11..=12).contains(&retry_after_secs), "{retry_after_secs}");
                assert!((59..=60).contains(&reset_secs), "{reset_secs}");
            }
            d => panic!("unexpected {d:?}"),
        }
        // Another address has its own budget.
        assert!(matches!(
            limiter.check("203.0.113.8".parse().unwrap()),
            Decision::Allowed { .. }
        ));
    }

    #[test]
    fn ipv6_clients_are_limited_per_64() {
        let limiter = IpLimiter::new(1, Duration::from_secs(60));
        assert!(matches!(
            limiter.check("2001:db8::1".parse().unwrap()),
            Decision::Allowed { .. }
        ));
        assert!(matches!(
            limiter.check("2001:db8::2".parse().unwrap()),
            Decision::Denied { .. }
        ));
    }

    #[test]
    fn key_count_stays_bounded_under_a_spray_of_100k_addresses() {
        let limiter = IpLimiter::with_capacity(60, Duration::from_secs(60), 10_000);
        let mut peak = 0;
        for i in 0..100_000u32 {
            limiter.check(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)));
            peak = peak.max(limiter.len());
        }
        assert!(peak <= 10_000, "peak {peak}");
        assert!(limiter.len() <= 10_000);
    }
}
