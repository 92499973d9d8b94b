//! What `/health` knows about the pipeline beyond "the database answers":
//! whether the LISTEN connection is up, when the worker's claim loop and the
//! completer last reached the database successfully, and the backlog, kept
//! fresh by a background task so that `/health` and `/metrics` never query
//! the queue themselves (a scrape storm cannot starve the API). Lock-free
//! atomics, written by the loops and read by the handlers.
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default)]
pub struct PipelineHealth {
    listener_up: AtomicBool,
    /// Unix milliseconds; 0 = not yet.
    last_claim: AtomicI64,
    last_record: AtomicI64,
    started: AtomicI64,
    due: AtomicI64,
    /// f64 bits.
    oldest_due_age_s: AtomicU64,
    open_circuits: AtomicI64,
    events_set_aside: AtomicI64,
}

/// The pipeline as `/health` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub listener_up: bool,
    /// Seconds since the last successful claim (or since start, before one).
    pub claim_age_s: f64,
    /// Seconds since the completer last recorded results; `None` before any.
    pub record_age_s: Option<f64>,
    pub due: i64,
    pub oldest_due_age_s: f64,
    pub open_circuits: i64,
    pub events_set_aside: i64,
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

impl PipelineHealth {
    pub fn new() -> Self {
        let health = Self::default();
        health.started.store(now_ms(), Ordering::Relaxed);
        health
    }

    pub fn listener(&self, up: bool) {
        self.listener_up.store(up, Ordering::Relaxed);
    }

    /// A claim reached the database and came back (with or without rows).
    pub fn claimed(&self) {
        self.last_claim.store(now_ms(), Ordering::Relaxed);
    }

    pub fn recorded(&self) {
        self.last_record.store(now_ms(), Ordering::Relaxed);
    }

    pub fn report(&self) -> Report {
        let now = now_ms();
        let age = |at: i64| (now - at).max(0) as f64 / 1000.0;
        let last_claim = self.last_claim.load(Ordering::Relaxed);
        let last_record = self.last_record.load(Ordering::Relaxed);
        Report {
            listener_up: self.listener_up.load(Ordering::Relaxed),
            claim_age_s: age(if last_claim == 0 {
                self.started.load(Ordering::Relaxed)
            } else {
                last_claim
            }),
            record_age_s: (last_record != 0).then(|| age(last_record)),
            due: self.due.load(Ordering::Relaxed),
            oldest_due_age_s: f64::from_bits(self.oldest_due_age_s.load(Ordering::Relaxed)),
            open_circuits: self.open_circuits.load(Ordering::Relaxed),
            events_set_aside: self.events_set_aside.load(Ordering::Relaxed),
        }
    }

    /// Refreshes the backlog figures every `every` until shutdown.
    pub async fn watch_backlog(&self, pool: PgPool, every: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let read = async {
                let backlog = crate::reporting::store::backlog(&pool).await?;
                let open = crate::queue::endpoints::open_count(&pool).await?;
                let set_aside = crate::fanout::store::set_aside_count(&pool).await?;
                Ok::<_, sqlx::Error>((backlog, open, set_aside))
            };
            let read = tokio::time::timeout(every.max(Duration::from_secs(2)), read);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                result = read => match result {
                    Ok(Ok((backlog, open, set_aside))) => {
                        self.due.store(backlog.due, Ordering::Relaxed);
                        let age = backlog.oldest_due_age_seconds.unwrap_or(0.0);
                        self.oldest_due_age_s.store(age.to_bits(), Ordering::Relaxed);
                        self.open_circuits.store(open, Ordering::Relaxed);
                        self.events_set_aside.store(set_aside, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "reading the backlog failed"),
                    Err(_) => tracing::debug!("reading the backlog timed out"),
                },
            }
        }
    }
}

impl Report {
    /// Why the pipeline counts as stuck, if it does: `stale` is how long the
    /// claim loop may go without reaching the database (it claims at least
    /// every poll interval, so a few of those plus a statement timeout).
    pub fn stuck(&self, stale: Duration) -> Option<String> {
        if !self.listener_up {
            return Some("the LISTEN connection is down".into());
        }
        if self.claim_age_s > stale.as_secs_f64() {
            return Some(format!(
                "no claim has reached the database for {:.0} s",
                self.claim_age_s
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_pipeline_is_healthy_once_listening_and_stuck_without_claims() {
        let health = PipelineHealth::new();
        assert_eq!(
            health.report().stuck(Duration::from_secs(10)).as_deref(),
            Some("the LISTEN connection is down")
        );
        health.listener(true);
        health.claimed();
        let report = health.report();
        assert!(report.claim_age_s < 1.0);
        assert_eq!(report.record_age_s, None);
        assert_eq!(report.stuck(Duration::from_secs(10)), None);
        health
            .last_claim
            .store(now_ms() - 30_000, Ordering::Relaxed);
        let why = health.report().stuck(Duration::from_secs(10)).unwrap();
        assert!(
            why.starts_with("no claim has reached the database for 30"),
            "{why}"
        );
    }
}
