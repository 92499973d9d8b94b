//! Stage 2: each committed event becomes one delivery per active webhook whose
//! subscriptions match, exactly once across instances, in transactions of at
//! most `WEBHOOK_FANOUT_CHUNK` deliveries; an event whose fan-out keeps
//! failing is set aside instead of holding up the events behind it.
//! Woken by NOTIFY on `webhook_events`; every wake-up is a full sweep, so a
//! missed notification (restart, lost connection) loses nothing.
pub mod replay;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;

use crate::db;
use crate::delivery::worker::Senders;
use crate::metrics::Metrics;
use crate::queue::fairness::Rooms;

/// Events claimed per transaction by the sweep.
const BATCH: i64 = 200;
/// Failed fan-outs of one event in a row before it is set aside.
pub const MAX_FAILURES: i32 = 3;

#[derive(Debug)]
pub enum FanoutOutcome {
    Dispatched(store::Dispatched),
    Idle,
}

/// What a sweep may lease for this instance's senders.
struct Take {
    count: i64,
    lease_ms: i64,
    rooms: Rooms,
}

/// One sweep of up to `events` events and `chunk` deliveries, bounded by
/// `bounds`; up to `take.count` new deliveries come back leased.
async fn run_once(
    pool: &PgPool,
    bounds: &db::Bounds,
    events: i64,
    chunk: i64,
    take: Take,
) -> Result<FanoutOutcome, db::Interrupted> {
    let done = bounds
        .run(pool, move |conn| {
            Box::pin(async move {
                store::dispatch(conn, events, chunk, take.count, take.lease_ms, &take.rooms).await
            })
        })
        .await?;
    Ok(if done.events == 0 && done.deliveries == 0 {
        FanoutOutcome::Idle
    } else {
        FanoutOutcome::Dispatched(done)
    })
}

/// Whether a failed fan-out says something about the events it was writing
/// (and counts towards setting one aside), rather than about the database
/// or the connection, which fail every event alike and pass. By SQLSTATE:
/// connection (08), transaction rollback: serialization, deadlock (40),
/// operator intervention: shutdown, crash (57P), lock not available
/// (55P03) and too many connections (53300) pass; the rest, a statement
/// timeout (57014), a full disk (53100) or a constraint or trigger error,
/// count.
pub fn counts_against_the_event(sqlstate: Option<&str>) -> bool {
    match sqlstate {
        None => false,
        Some(code) => {
            !(code.starts_with("08")
                || code.starts_with("40")
                || code.starts_with("57P")
                || code == "55P03"
                || code == "53300")
        }
    }
}

/// Who the fan-out loop wakes and reports to.
pub struct FanoutContext {
    pub pool: PgPool,
    pub wake: Arc<Notify>,
    pub deliveries_ready: Arc<Notify>,
    pub poll: Duration,
    /// Most deliveries per fan-out transaction (`WEBHOOK_FANOUT_CHUNK`).
    pub chunk: i64,
    /// This instance's send slots: fresh deliveries they have room for are
    /// leased in the fan-out transaction and sent without a claim.
    pub senders: Option<Senders>,
    /// The lease those deliveries get (`WEBHOOK_LEASE_MS`).
    pub lease: Duration,
    pub metrics: Arc<Metrics>,
}

/// Sweeps on start, on every wake-up and every `poll` as a fallback. After a
/// failure that points at the events, the sweep goes one event at a time, so
/// the failure is the head event's: it is recorded against it, and after
/// `MAX_FAILURES` in a row the event is set aside and the events behind it
/// go on.
pub async fn run(ctx: FanoutContext, bounds: db::Bounds) {
    let shutdown = bounds.shutdown.clone();
    let FanoutContext {
        pool,
        wake,
        deliveries_ready,
        poll,
        chunk,
        senders,
        lease,
        metrics,
    } = ctx;
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut per_call = BATCH;
    let lease_ms = lease.as_millis() as i64;
    loop {
        loop {
            // Slots for what this sweep leases, taken before it runs.
            let reserved = senders.as_ref().map(|s| s.reserve_all());
            let take = Take {
                count: reserved.as_ref().map_or(0, |r| r.count() as i64),
                lease_ms,
                rooms: reserved
                    .as_ref()
                    .map_or_else(Rooms::none, |r| r.rooms.clone()),
            };
            match run_once(&pool, &bounds, per_call, chunk, take).await {
                Ok(FanoutOutcome::Dispatched(done)) => {
                    let leased = done.leased.len();
                    tracing::debug!(
                        events = done.events,
                        deliveries = done.deliveries,
                        leased,
                        "fanned out"
                    );
                    metrics.events_dispatched.increment(done.events as u64);
                    metrics.deliveries_created.increment(done.deliveries as u64);
                    if shutdown.is_cancelled() {
                        // Not started: sent when their leases end.
                        return;
                    }
                    if let (Some(senders), Some(reserved)) = (&senders, reserved) {
                        let started = senders.start(reserved, done.leased);
                        metrics
                            .deliveries_leased_at_fan_out
                            .increment(started as u64);
                    }
                    if done.deliveries > leased as i64 {
                        // Saves the NOTIFY round trip for this instance's worker.
                        deliveries_ready.notify_one();
                    }
                    per_call = BATCH;
                }
                Ok(FanoutOutcome::Idle) => break,
                Err(db::Interrupted::ShuttingDown) => return,
                Err(e) if counts_against_the_event(e.sqlstate().as_deref()) => {
                    metrics.fan_out_failures.increment(1);
                    if per_call > 1 {
                        tracing::warn!(error = %e, "fan-out failed; going on one event at a time");
                        per_call = 1;
                        continue;
                    }
                    if !record_failure(&pool, &bounds, &e.to_string(), &metrics).await {
                        break;
                    }
                    // A short pause, not the poll: the events behind wait.
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(FAILURE_PAUSE) => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "fan-out failed; retrying at the next wake-up");
                    break;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = wake.notified() => {}
            _ = tick.tick() => {}
        }
    }
}

/// Between failed fan-outs of one event.
const FAILURE_PAUSE: Duration = Duration::from_millis(200);

/// Records the failure against the head event; false when that could not be
/// done (the sweep then waits for its next wake-up).
async fn record_failure(
    pool: &PgPool,
    bounds: &db::Bounds,
    error: &str,
    metrics: &Metrics,
) -> bool {
    let error = error.to_owned();
    let recorded = bounds
        .run(pool, move |conn| {
            let error = error.clone();
            Box::pin(async move { store::record_failure(conn, &error, MAX_FAILURES).await })
        })
        .await;
    match recorded {
        Ok(Some((event_id, true))) => {
            metrics.events_set_aside.increment(1);
            tracing::error!(
                event_id,
                failures = MAX_FAILURES,
                "fan-out failed {MAX_FAILURES} times in a row; the event is set aside (webhook_events_set_aside) \
                 until retried with SELECT webhook_retry_fan_out('<event_id>')"
            );
            true
        }
        Ok(Some((event_id, false))) => {
            tracing::warn!(event_id, "fan-out of this event failed; retrying it alone");
            true
        }
        Ok(None) => false,
        Err(e) => {
            tracing::warn!(error = %e, "recording a failed fan-out failed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::counts_against_the_event as counts;

    #[test]
    fn failures_of_the_database_do_not_count_against_an_event() {
        for code in [
            "08006", "08003", "40001", "40P01", "57P01", "57P03", "55P03", "53300",
        ] {
            assert!(!counts(Some(code)), "{code}");
        }
        assert!(!counts(None), "no SQLSTATE: a connection or pool error");
        for code in ["57014", "53100", "23505", "P0001", "22P02", "54000"] {
            assert!(counts(Some(code)), "{code}");
        }
    }
}
