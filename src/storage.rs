//! The history's physical layout: finished deliveries and attempts live in
//! one partition per UTC day (migration 16). At start and every hour this
//! creates the days ahead and drops whole days past WEBHOOK_RETENTION_DAYS;
//! nothing is deleted row by row. What can still be sent is in the queue
//! partition, which is never dropped, so retention cannot lose it.
use std::time::Duration;

use sqlx::PgPool;

use crate::db;

/// Days created ahead: the service can be down this long and still record
/// results the day it comes back (it creates the days it needs at start).
pub const AHEAD_DAYS: i32 = 7;
const EVERY: Duration = Duration::from_secs(3600);

/// Creates the day partitions from today (UTC) through `ahead_days` from now
/// that do not exist yet; returns how many it created.
pub async fn prepare<'e>(db: impl sqlx::PgExecutor<'e>, ahead_days: i32) -> sqlx::Result<i32> {
    let created = sqlx::query_scalar!(
        r#"
        SELECT webhook_history_prepare((now() AT TIME ZONE 'UTC')::date,
                                       (now() AT TIME ZONE 'UTC')::date + $1::int4) AS "created!"
        "#,
        ahead_days,
    )
    .fetch_one(db)
    .await?;
    Ok(created)
}

/// The day partitions (of both tables) that are past retention, oldest first.
pub async fn expired<'e>(
    db: impl sqlx::PgExecutor<'e>,
    retention_days: u32,
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar!(
        r#"SELECT partition_name AS "partition_name!" FROM webhook_history_expired($1)"#,
        retention_days as i32,
    )
    .fetch_all(db)
    .await
}

/// Drops one partition that [`expired`] listed; false if it no longer
/// qualifies (another instance dropped it).
pub async fn drop_partition<'e>(
    db: impl sqlx::PgExecutor<'e>,
    partition: &str,
    retention_days: u32,
) -> sqlx::Result<bool> {
    sqlx::query_scalar!(
        r#"SELECT webhook_history_drop($1, $2) AS "dropped!""#,
        partition,
        retention_days as i32,
    )
    .fetch_one(db)
    .await
}

/// One round: the days ahead, then the expired days, each dropped in its own
/// transaction (a drop that cannot get its lock is retried next round).
pub async fn maintain(pool: &PgPool, retention_days: u32, bounds: &db::Bounds) {
    match bounds
        .run(pool, |conn| Box::pin(prepare(conn, AHEAD_DAYS)))
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(created = n, "history partitions created"),
        Err(db::Interrupted::ShuttingDown) => return,
        Err(e) => tracing::warn!(error = %e, "creating history partitions failed"),
    }
    let names = match bounds
        .run(pool, move |conn| Box::pin(expired(conn, retention_days)))
        .await
    {
        Ok(names) => names,
        Err(db::Interrupted::ShuttingDown) => return,
        Err(e) => {
            tracing::warn!(error = %e, "listing expired history partitions failed");
            return;
        }
    };
    for name in names {
        let partition = name.clone();
        let dropped = bounds
            .run(pool, move |conn| {
                Box::pin(async move { drop_partition(conn, &partition, retention_days).await })
            })
            .await;
        match dropped {
            Ok(true) => {
                tracing::info!(partition = %name, retention_days, "history partition dropped")
            }
            Ok(false) => {}
            Err(db::Interrupted::ShuttingDown) => return,
            Err(e) => {
                tracing::warn!(partition = %name, error = %e, "dropping a history partition failed; retried next round")
            }
        }
    }
}

pub async fn run(pool: PgPool, retention_days: u32, bounds: db::Bounds) {
    let shutdown = bounds.shutdown.clone();
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        maintain(&pool, retention_days, &bounds).await;
    }
}
