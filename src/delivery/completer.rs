//! Batched completion: the worker's finished attempts are recorded many per
//! statement. While one batch is being written the next accumulates, so the
//! batch size follows the load with no timer: one row at a trickle, hundreds
//! under a flood. One commit per batch instead of one per delivery is what
//! lifts throughput past the database's commit rate.
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::queue::Finished;
use crate::queue::breaker::BreakerConfig;

/// Most attempts recorded by one statement.
const MAX_BATCH: usize = 512;

/// A write costs about the same for one row as for 25 (1.8 ms in the
/// throughput profile: the moves to the history's day and the attempts'
/// inserts are set up per statement), and under saturation the completer
/// wrote batches of 12–25. When at least `LINGER_FROM` attempts arrive at
/// once (a sign of load), it waits up to `LINGER` for more before writing.
/// A trickle (one FIFO head at a time, a quiet hour) is written at once.
/// Only the write waits: a send frees its slot when it ends, not when its
/// attempt is recorded.
const LINGER_FROM: usize = 8;
const LINGER: Duration = Duration::from_millis(2);

pub fn channel() -> (mpsc::Sender<Finished>, mpsc::Receiver<Finished>) {
    mpsc::channel(4 * MAX_BATCH)
}

/// During shutdown a failing write is retried this long at most, so the
/// process still exits in time; the leases then expire as after a crash.
const SHUTDOWN_PATIENCE: Duration = Duration::from_secs(2);

/// Runs until every sender is dropped and the channel is drained. `lease` is
/// how long a write can still matter: after it, the fence refuses it anyway.
pub async fn run(
    pool: PgPool,
    metrics: Arc<Metrics>,
    breaker: BreakerConfig,
    mut finished: mpsc::Receiver<Finished>,
    lease: Duration,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while finished.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if batch.len() >= LINGER_FROM && !shutdown.is_cancelled() {
            let until = tokio::time::Instant::now() + LINGER;
            while batch.len() < MAX_BATCH {
                let room = MAX_BATCH - batch.len();
                match tokio::time::timeout_at(until, finished.recv_many(&mut batch, room)).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        let patience = if shutdown.is_cancelled() {
            SHUTDOWN_PATIENCE
        } else {
            lease
        };
        record_patiently(&pool, &metrics, &breaker, &batch, patience).await;
        batch.clear();
    }
}

/// Retries while the leases can still be honoured, so a database blip does not
/// turn into duplicate sends; one bad row is recorded apart from the rest.
async fn record_patiently(
    pool: &PgPool,
    metrics: &Metrics,
    breaker: &BreakerConfig,
    batch: &[Finished],
    lease: Duration,
) {
    let give_up = Instant::now() + lease;
    let mut delay = Duration::from_millis(50);
    loop {
        // Each try is bounded too: a database that stops answering (frozen,
        // black-holed) must not hold shutdown past its patience.
        let Some(result) = record_by(pool, metrics, breaker, batch, give_up).await else {
            tracing::error!(
                attempts = batch.len(),
                "gave up recording attempts: the database did not answer in time; those deliveries are sent again when their leases expire"
            );
            return;
        };
        match result {
            Ok(()) => {
                metrics.pipeline.recorded();
                return;
            }
            Err(e) if crate::db::is_row_error(&e) && batch.len() > 1 => {
                tracing::warn!(error = %e, attempts = batch.len(), "recording a batch failed on a row; recording one by one");
                for one in batch {
                    let alone = std::slice::from_ref(one);
                    match record_by(pool, metrics, breaker, alone, give_up).await {
                        Some(Ok(())) => {}
                        Some(Err(e)) => {
                            tracing::error!(delivery = %one.id, error = %e, "could not record an attempt; the delivery is sent again when its lease expires")
                        }
                        None => {
                            tracing::error!(delivery = %one.id, "could not record an attempt in time; the delivery is sent again when its lease expires")
                        }
                    }
                }
                return;
            }
            Err(e) if Instant::now() + delay < give_up => {
                tracing::warn!(error = %e, attempts = batch.len(), retry_in_ms = delay.as_millis() as u64, "recording delivery attempts failed");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::error!(error = %e, attempts = batch.len(), "gave up recording attempts; those deliveries are sent again when their leases expire");
                return;
            }
        }
    }
}

/// One try at recording, `deadline` included the wait for a connection;
/// `None` if the database did not answer by then. That connection is closed,
/// not returned to the pool: it is mid-protocol, and the pool's check on
/// return would wait on a silent socket for good.
async fn record_by(
    pool: &PgPool,
    metrics: &Metrics,
    breaker: &BreakerConfig,
    batch: &[Finished],
    deadline: Instant,
) -> Option<sqlx::Result<()>> {
    let deadline = tokio::time::Instant::from_std(deadline);
    let mut conn = match tokio::time::timeout_at(deadline, pool.acquire()).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Some(Err(e)),
        Err(_) => return None,
    };
    let recorded =
        tokio::time::timeout_at(deadline, super::record(&mut conn, metrics, breaker, batch)).await;
    if recorded.is_err() {
        conn.close_on_drop();
    }
    recorded.ok()
}
