//! Retention: successful deliveries (and, by cascade, their attempts) older
//! than WEBHOOK_RETENTION_DAYS are purged in bounded batches, so the purge
//! never holds long locks or bloats one transaction.
use std::time::Duration;

use sqlx::PgPool;

use crate::db;

const BATCH: i64 = 1000;
const EVERY: Duration = Duration::from_secs(3600);

/// Purges one batch; returns how many deliveries were deleted.
pub async fn purge_once<'e>(
    db: impl sqlx::PgExecutor<'e>,
    retention_days: u32,
) -> sqlx::Result<u64> {
    let done = sqlx::query!(
        r#"
        DELETE FROM webhook_deliveries
        WHERE id IN (
            SELECT id FROM webhook_deliveries
            WHERE status = 'success'
              AND created_at < now() - make_interval(days => $1)
            LIMIT $2
            -- never wait on rows a worker or another purger holds
            FOR UPDATE SKIP LOCKED
        )
        "#,
        retention_days as i32,
        BATCH,
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

pub async fn run(pool: PgPool, retention_days: u32, bounds: db::Bounds) {
    let shutdown = bounds.shutdown.clone();
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        loop {
            let purged = bounds.run(&pool, move |conn| {
                Box::pin(purge_once(conn, retention_days))
            });
            match purged.await {
                Ok(n) if n == BATCH as u64 && !shutdown.is_cancelled() => continue,
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(purged = n, "retention purge done");
                    }
                    break;
                }
                Err(db::Interrupted::ShuttingDown) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "retention purge failed");
                    break;
                }
            }
        }
    }
}
