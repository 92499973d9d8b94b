//! Stage 2: each committed event becomes one delivery per active webhook whose
//! subscriptions match, in one transaction, exactly once across instances.
//! Woken by NOTIFY on `webhook_events`; every wake-up is a full sweep, so a
//! missed notification (restart, lost connection) loses nothing.
pub mod replay;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;

use crate::db;
use crate::metrics::Metrics;

/// Events claimed per transaction by the sweep.
const BATCH: i64 = 200;

#[derive(Debug, PartialEq, Eq)]
pub enum FanoutOutcome {
    Dispatched { events: i64, deliveries: i64 },
    Idle,
}

/// One sweep of up to `BATCH` events, bounded by `bounds`.
pub async fn run_once(
    pool: &PgPool,
    bounds: &db::Bounds,
) -> Result<FanoutOutcome, db::Interrupted> {
    let (events, deliveries) = bounds
        .run(pool, |conn| Box::pin(store::dispatch(conn, BATCH)))
        .await?;
    Ok(if events == 0 {
        FanoutOutcome::Idle
    } else {
        FanoutOutcome::Dispatched { events, deliveries }
    })
}

/// Who the fan-out loop wakes and reports to.
pub struct FanoutContext {
    pub pool: PgPool,
    pub wake: Arc<Notify>,
    pub deliveries_ready: Arc<Notify>,
    pub poll: Duration,
    pub metrics: Arc<Metrics>,
}

/// Sweeps on start, on every wake-up and every `poll` as a fallback.
pub async fn run(ctx: FanoutContext, bounds: db::Bounds) {
    let shutdown = bounds.shutdown.clone();
    let FanoutContext {
        pool,
        wake,
        deliveries_ready,
        poll,
        metrics,
    } = ctx;
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        loop {
            match run_once(&pool, &bounds).await {
                Ok(FanoutOutcome::Dispatched { events, deliveries }) => {
                    tracing::debug!(events, deliveries, "fanned out");
                    metrics.events_dispatched.increment(events as u64);
                    metrics.deliveries_created.increment(deliveries as u64);
                    if deliveries > 0 {
                        // Saves the NOTIFY round trip for this instance's worker.
                        deliveries_ready.notify_one();
                    }
                    if shutdown.is_cancelled() {
                        return;
                    }
                }
                Ok(FanoutOutcome::Idle) => break,
                Err(db::Interrupted::ShuttingDown) => return,
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
