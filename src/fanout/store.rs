//! The fan-out sweep: claim undispatched events, mark them dispatched and
//! insert their deliveries, all in one statement (so one transaction); and
//! replay, which creates deliveries for events already fanned out.
use chrono::{DateTime, Utc};

/// Fans out up to `batch` undispatched events, oldest first. Returns
/// (events dispatched, deliveries created).
pub async fn dispatch(conn: &mut sqlx::PgConnection, batch: i64) -> sqlx::Result<(i64, i64)> {
    let rows = sqlx::query!(
        r#"
        WITH ev AS (
            -- webhook_events_undispatched_idx; FOR UPDATE SKIP LOCKED makes each
            -- event fan out in exactly one transaction, however many instances
            -- sweep at once.
            SELECT e FROM webhook_events e
            WHERE dispatched_at IS NULL
            ORDER BY id
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        ), marked AS (
            -- the body, stored once per event (migration 14)
            UPDATE webhook_events e
            SET dispatched_at = now(),
                body = webhook_body(e.event_type, e.event_id, e.occurred_at, e.data)
            FROM ev WHERE e.id = (ev.e).id
        )
        -- The deliveries themselves: migration 12, shared with the HTTP intake.
        SELECT f.deliveries AS "deliveries!"
        FROM webhook_fan_out(ARRAY(SELECT ev.e FROM ev)) f
        "#,
        batch,
    )
    .fetch_all(conn)
    .await?;
    // One row per event dispatched.
    Ok((rows.len() as i64, rows.iter().map(|r| r.deliveries).sum()))
}

/// Locks the webhook against a concurrent replay of itself (replays of one
/// webhook run one chunk at a time, so each sees what the other created)
/// and says whether it is active; `None` when it does not exist.
pub async fn lock_for_replay(
    conn: &mut sqlx::PgConnection,
    webhook_id: &str,
) -> sqlx::Result<Option<bool>> {
    sqlx::query_scalar!(
        "SELECT active FROM webhooks WHERE id = $1 FOR NO KEY UPDATE",
        webhook_id
    )
    .fetch_optional(conn)
    .await
}

/// The identity range of the events accepted in the window (BRIN on
/// created_at), so replay walks it by primary key.
pub async fn event_range(
    conn: &mut sqlx::PgConnection,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> sqlx::Result<Option<(i64, i64)>> {
    let row = sqlx::query!(
        "SELECT min(id) AS lo, max(id) AS hi FROM webhook_events WHERE created_at >= $1 AND created_at < $2",
        since,
        until,
    )
    .fetch_one(conn)
    .await?;
    Ok(row.lo.zip(row.hi))
}

/// Creates the webhook's missing deliveries for up to `chunk` events after
/// `after` (up to `hi`) accepted in the window and already fanned out (an
/// event still waiting for the sweep is the sweep's to deliver): those its
/// subscription and filter match and it has no delivery for. A delivery is
/// never older than its event, so only the webhook's deliveries since the
/// window's start are looked at. Returns (the last event id seen, created).
pub async fn replay_chunk(
    conn: &mut sqlx::PgConnection,
    webhook_id: &str,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    after: i64,
    hi: i64,
    chunk: i64,
) -> sqlx::Result<(Option<i64>, i64)> {
    let row = sqlx::query!(
        r#"
        WITH chunk AS (
            SELECT e.* FROM webhook_events e
            WHERE e.id > $4 AND e.id <= $5
              AND e.created_at >= $2 AND e.created_at < $3
              AND e.dispatched_at IS NOT NULL
            ORDER BY e.id
            LIMIT $6
        ), ins AS (
            INSERT INTO webhook_deliveries (webhook_id, event_id, event_type, event_seq, fifo_seq)
            SELECT w.id, e.event_id, e.event_type, e.id,
                   CASE WHEN w.ordering = 'fifo' THEN e.id END
            FROM chunk e JOIN webhooks w ON w.id = $1
            WHERE w.events && webhook_patterns_for(e.event_type)
              AND webhook_filter_matches(w.filter, e.data)
              AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d
                              WHERE d.webhook_id = $1 AND d.event_id = e.event_id AND d.created_at >= $2)
            RETURNING 1
        )
        SELECT (SELECT max(id) FROM chunk) AS last, (SELECT count(*) FROM ins) AS "created!"
        "#,
        webhook_id,
        since,
        until,
        after,
        hi,
        chunk,
    )
    .fetch_one(conn)
    .await?;
    Ok((row.last, row.created))
}
