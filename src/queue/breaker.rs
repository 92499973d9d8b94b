//! The circuit breaker of one endpoint, pure: the state it keeps in
//! `webhook_endpoint_state` and how each recorded attempt moves it. The claim
//! (SQL) reads it: open = defer, cool-down over = one probe (half-open).
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Circuit {
    Closed,
    Open,
    HalfOpen,
}

impl Circuit {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "open" => Self::Open,
            "half_open" => Self::HalfOpen,
            _ => Self::Closed,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failed attempts that open the circuit.
    pub threshold: u32,
    /// The first cool-down.
    pub cooldown: Duration,
    /// Cool-downs double on each failed probe up to this.
    pub max_cooldown: Duration,
    /// An open circuit with no success for this long disables the webhook.
    pub disable_after: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerState {
    pub circuit: Circuit,
    pub consecutive_failures: i32,
    /// open: end of the cool-down; half-open: end of the probe's lease.
    pub open_until: Option<DateTime<Utc>>,
    pub cooldown_ms: Option<i64>,
    /// First opening since the last success.
    pub opened_at: Option<DateTime<Utc>>,
}

impl BreakerState {
    pub fn closed() -> Self {
        Self {
            circuit: Circuit::Closed,
            consecutive_failures: 0,
            open_until: None,
            cooldown_ms: None,
            opened_at: None,
        }
    }
}

/// A change worth logging once and acting on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Opened (or reopened after a failed probe) until `until`: defer the backlog.
    Opened { until: DateTime<Utc> },
    /// A success closed it: the backlog flows again.
    Closed,
    /// Open with no success for `disable_after`: disable the webhook.
    Disable,
}

/// One recorded attempt's effect. `probe` marks the half-open probe; a
/// straggler that was in flight when the circuit opened only counts.
pub fn on_attempt(
    state: &BreakerState,
    success: bool,
    probe: bool,
    now: DateTime<Utc>,
    config: &BreakerConfig,
) -> (BreakerState, Option<Change>) {
    if success {
        let change = (state.circuit != Circuit::Closed).then_some(Change::Closed);
        return (BreakerState::closed(), change);
    }
    let mut next = state.clone();
    next.consecutive_failures = state.consecutive_failures.saturating_add(1);
    let open_for = |ms: i64| {
        let until = super::retry::later(now, Duration::from_millis(ms.max(0) as u64));
        (until, ms)
    };
    match state.circuit {
        Circuit::Closed if next.consecutive_failures as i64 >= config.threshold as i64 => {
            let (until, ms) = open_for(millis(config.cooldown.min(config.max_cooldown)));
            next.circuit = Circuit::Open;
            next.open_until = Some(until);
            next.cooldown_ms = Some(ms);
            next.opened_at = Some(now);
            (next, Some(Change::Opened { until }))
        }
        Circuit::HalfOpen if probe => {
            let opened_at = state.opened_at.unwrap_or(now);
            if now - opened_at
                >= TimeDelta::from_std(config.disable_after).unwrap_or(TimeDelta::MAX)
            {
                return (next, Some(Change::Disable));
            }
            let previous = state.cooldown_ms.unwrap_or_else(|| millis(config.cooldown));
            let (until, ms) = open_for(previous.saturating_mul(2).min(millis(config.max_cooldown)));
            next.circuit = Circuit::Open;
            next.open_until = Some(until);
            next.cooldown_ms = Some(ms);
            next.opened_at = Some(opened_at);
            (next, Some(Change::Opened { until }))
        }
        _ => (next, None),
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: BreakerConfig = BreakerConfig {
        threshold: 3,
        cooldown: Duration::from_secs(30),
        max_cooldown: Duration::from_secs(100),
        disable_after: Duration::from_secs(1000),
    };

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn fail(state: &BreakerState, probe: bool, at: i64) -> (BreakerState, Option<Change>) {
        on_attempt(state, false, probe, t(at), &CONFIG)
    }

    #[test]
    fn opens_after_the_threshold_of_consecutive_failures() {
        let (s, c) = fail(&BreakerState::closed(), false, 0);
        assert_eq!(
            (s.circuit, s.consecutive_failures, c),
            (Circuit::Closed, 1, None)
        );
        let (s, _) = fail(&s, false, 1);
        let (s, c) = fail(&s, false, 2);
        assert_eq!(s.circuit, Circuit::Open);
        assert_eq!(c, Some(Change::Opened { until: t(32) }));
        assert_eq!(
            (s.open_until, s.cooldown_ms, s.opened_at),
            (Some(t(32)), Some(30_000), Some(t(2)))
        );
    }

    #[test]
    fn a_success_resets_the_count_and_closes() {
        let (s, _) = fail(&BreakerState::closed(), false, 0);
        let (s, c) = on_attempt(&s, true, false, t(1), &CONFIG);
        assert_eq!((s, c), (BreakerState::closed(), None));
        let half_open = BreakerState {
            circuit: Circuit::HalfOpen,
            consecutive_failures: 7,
            open_until: Some(t(60)),
            cooldown_ms: Some(30_000),
            opened_at: Some(t(0)),
        };
        let (s, c) = on_attempt(&half_open, true, true, t(40), &CONFIG);
        assert_eq!((s, c), (BreakerState::closed(), Some(Change::Closed)));
    }

    #[test]
    fn a_failed_probe_reopens_with_a_doubled_capped_cooldown() {
        let half_open = BreakerState {
            circuit: Circuit::HalfOpen,
            consecutive_failures: 3,
            open_until: Some(t(60)),
            cooldown_ms: Some(30_000),
            opened_at: Some(t(0)),
        };
        let (s, c) = fail(&half_open, true, 40);
        assert_eq!(c, Some(Change::Opened { until: t(100) }));
        assert_eq!(
            (s.circuit, s.cooldown_ms, s.opened_at),
            (Circuit::Open, Some(60_000), Some(t(0)))
        );
        let again = BreakerState {
            circuit: Circuit::HalfOpen,
            ..s
        };
        let (s, c) = fail(&again, true, 200);
        assert_eq!(c, Some(Change::Opened { until: t(300) }));
        assert_eq!(s.cooldown_ms, Some(100_000));
    }

    #[test]
    fn stragglers_only_count_while_open_or_half_open() {
        let open = BreakerState {
            circuit: Circuit::Open,
            consecutive_failures: 3,
            open_until: Some(t(30)),
            cooldown_ms: Some(30_000),
            opened_at: Some(t(0)),
        };
        let (s, c) = fail(&open, false, 5);
        assert_eq!(
            (s.circuit, s.consecutive_failures, s.open_until, c),
            (Circuit::Open, 4, Some(t(30)), None)
        );
        let half = BreakerState {
            circuit: Circuit::HalfOpen,
            ..open
        };
        let (s, c) = fail(&half, false, 35);
        assert_eq!((s.circuit, c), (Circuit::HalfOpen, None));
    }

    #[test]
    fn a_probe_failing_after_disable_after_disables() {
        let half_open = BreakerState {
            circuit: Circuit::HalfOpen,
            consecutive_failures: 40,
            open_until: Some(t(1000)),
            cooldown_ms: Some(100_000),
            opened_at: Some(t(0)),
        };
        assert_eq!(
            fail(&half_open, true, 999).1,
            Some(Change::Opened { until: t(1099) })
        );
        assert_eq!(fail(&half_open, true, 1000).1, Some(Change::Disable));
    }
}
