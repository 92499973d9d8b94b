//! The history's physical layout: finished deliveries and attempts live in
//! one partition per UTC day (migration 16), events in one per week
//! (migration 18). At start and every hour this creates the partitions ahead
//! (and moves the event ids into the current week's) and drops whole
//! partitions past WEBHOOK_RETENTION_DAYS; nothing is deleted row by row.
//! What can still be sent is in the queue partition, which is never dropped,
//! and a week of events is kept while anything in it is still to be fanned
//! out or sent, so retention cannot lose it.
use std::time::Duration;

use sqlx::PgPool;

use crate::db;

/// Days created ahead: the service can be down this long and still record
/// results the day it comes back (it creates the days it needs at start).
pub const AHEAD_DAYS: i32 = 7;
const EVERY: Duration = Duration::from_secs(3600);

/// Creates the day partitions from today (UTC) through `ahead_days` from now
/// and this week's event partition, those that do not exist yet, and moves
/// the event ids into this week's range if its partition was there before;
/// returns how many partitions it created.
pub async fn prepare<'e>(db: impl sqlx::PgExecutor<'e>, ahead_days: i32) -> sqlx::Result<i32> {
    let created = sqlx::query_scalar!(
        r#"
        SELECT webhook_history_prepare((now() AT TIME ZONE 'UTC')::date,
                                       (now() AT TIME ZONE 'UTC')::date + $1::int4)
               + webhook_events_prepare((now() AT TIME ZONE 'UTC')::date,
                                        (now() AT TIME ZONE 'UTC')::date) AS "created!"
        "#,
        ahead_days,
    )
    .fetch_one(db)
    .await?;
    Ok(created)
}

/// The partitions past retention: days of deliveries and attempts (oldest
/// first), then weeks of events.
pub async fn expired<'e>(
    db: impl sqlx::PgExecutor<'e>,
    retention_days: u32,
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar!(
        r#"
        SELECT partition_name AS "partition_name!" FROM webhook_history_expired($1)
        UNION ALL
        SELECT partition_name FROM webhook_events_expired($1)
        "#,
        retention_days as i32,
    )
    .fetch_all(db)
    .await
}

/// What retention did with one partition [`expired`] listed.
#[derive(Debug, PartialEq, Eq)]
pub enum Dropped {
    Dropped,
    /// No longer listed: another instance dropped it.
    Gone,
    /// A week of events something still needs (`webhook_events_drop`).
    Kept(String),
}

/// Drops one partition that [`expired`] listed.
pub async fn drop_partition<'e>(
    db: impl sqlx::PgExecutor<'e>,
    partition: &str,
    retention_days: u32,
) -> sqlx::Result<Dropped> {
    let outcome = sqlx::query_scalar!(
        r#"
        SELECT CASE WHEN starts_with($1, 'webhook_events_') THEN webhook_events_drop($1, $2)
                    WHEN webhook_history_drop($1, $2) THEN 'dropped'
                    ELSE 'gone' END AS "outcome!"
        "#,
        partition,
        retention_days as i32,
    )
    .fetch_one(db)
    .await?;
    Ok(match outcome.as_str() {
        "dropped" => Dropped::Dropped,
        "gone" => Dropped::Gone,
        kept => Dropped::Kept(kept.trim_start_matches("kept: ").to_owned()),
    })
}

/// One round: the partitions ahead, then the expired ones, each dropped in
/// its own transaction (a drop that cannot get its lock is retried next
/// round).
pub async fn maintain(pool: &PgPool, retention_days: u32, bounds: &db::Bounds) {
    // Twice when the first call created partitions: the event ids move into
    // this week's partition only once it is committed.
    for _ in 0..2 {
        match bounds
            .run(pool, |conn| Box::pin(prepare(conn, AHEAD_DAYS)))
            .await
        {
            Ok(0) => break,
            Ok(n) => tracing::info!(created = n, "history partitions created"),
            Err(db::Interrupted::ShuttingDown) => return,
            Err(e) => {
                tracing::warn!(error = %e, "creating history partitions failed");
                break;
            }
        }
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
            Ok(Dropped::Dropped) => {
                tracing::info!(partition = %name, retention_days, "history partition dropped")
            }
            Ok(Dropped::Gone) => {}
            Ok(Dropped::Kept(why)) => {
                tracing::info!(partition = %name, retention_days, why, "history partition kept past retention")
            }
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
