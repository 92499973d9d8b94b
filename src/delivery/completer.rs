//! Batched completion: the worker's finished attempts are recorded many per
//! statement. While one batch is being written the next accumulates, so the
//! batch size follows the load with no timer: one row at a trickle, hundreds
//! under a flood. One commit per batch instead of one per delivery is what
//! lifts throughput past the database's commit rate.
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::queue::Finished;

/// Most attempts recorded by one statement.
const MAX_BATCH: usize = 512;

pub fn channel() -> (mpsc::Sender<Finished>, mpsc::Receiver<Finished>) {
    mpsc::channel(4 * MAX_BATCH)
}

/// Runs until every sender is dropped and the channel is drained.
pub async fn run(pool: PgPool, metrics: Arc<Metrics>, mut finished: mpsc::Receiver<Finished>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while finished.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // A failed write is retried briefly; after that the leases expire
        // and the deliveries are sent again (at-least-once).
        for retry in 0..3 {
            match super::record(&pool, &metrics, &batch).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, attempts = batch.len(), retry, "recording delivery attempts failed");
                    tokio::time::sleep(Duration::from_millis(100 << retry)).await;
                }
            }
        }
        batch.clear();
    }
}
