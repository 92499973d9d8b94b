//! The fan-out sweep: claim undispatched events, insert their deliveries
//! (a bounded number per transaction) and mark them dispatched; the record
//! of a failed fan-out; and replay, which creates deliveries for events
//! already fanned out.
use chrono::{DateTime, Utc};

use crate::queue::Claimed;
use crate::queue::fairness::Rooms;

/// What one sweep transaction did.
#[derive(Debug, Default)]
pub struct Dispatched {
    /// Events finished (an event cut by the chunk is finished by a later call).
    pub events: i64,
    pub deliveries: i64,
    /// Deliveries leased to this instance in the same transaction, to send now.
    pub leased: Vec<Claimed>,
}

/// Fans out undispatched events, oldest first: up to `events` of them and
/// at most `chunk` deliveries in this transaction (`webhook_dispatch`,
/// migration 15; an event with more subscribers than that is
/// finished by the next calls). Up to `take` of the new deliveries, within
/// `rooms`, come back already leased for `lease_ms`, for this instance's
/// senders; the rest wait for the claim.
pub async fn dispatch(
    conn: &mut sqlx::PgConnection,
    events: i64,
    chunk: i64,
    take: i64,
    lease_ms: i64,
    rooms: &Rooms,
) -> sqlx::Result<Dispatched> {
    let (busy_ids, busy_room): (Vec<String>, Vec<i32>) = rooms.busy.iter().cloned().unzip();
    let rows = sqlx::query!(
        r#"
        SELECT events_done AS "events!", deliveries AS "deliveries!", id, lease_token, webhook_id,
               url, secret, previous_secret, headers, event_type, body
        FROM webhook_dispatch($1::int4, $2::int4, $3::int4, $4::float8, $5::text[], $6::int4[], $7::int4)
        "#,
        events.clamp(1, i32::MAX as i64) as i32,
        chunk.clamp(1, i32::MAX as i64) as i32,
        take.clamp(0, i32::MAX as i64) as i32,
        lease_ms as f64,
        &busy_ids,
        &busy_room,
        rooms.newcomer,
    )
    .fetch_all(conn)
    .await?;
    let mut done = Dispatched::default();
    for r in rows {
        done.events = r.events;
        done.deliveries = r.deliveries;
        // The first row carries only the counts.
        let (Some(id), Some(lease_token), Some(webhook_id), Some(url), Some(secret), Some(body)) =
            (r.id, r.lease_token, r.webhook_id, r.url, r.secret, r.body)
        else {
            continue;
        };
        done.leased.push(Claimed {
            id,
            lease_token,
            attempts: 0,
            webhook_id,
            url,
            secret,
            previous_secret: r.previous_secret,
            headers: r.headers.unwrap_or_default(),
            event_type: r.event_type.unwrap_or_default(),
            body,
            probe: false,
        });
    }
    Ok(done)
}

/// Records a failed fan-out against the event at the head of the sweep and
/// sets it aside after `max_failures` in a row. Returns that event's id and
/// whether it is now set aside; `None` when no event is waiting.
pub async fn record_failure(
    conn: &mut sqlx::PgConnection,
    error: &str,
    max_failures: i32,
) -> sqlx::Result<Option<(String, bool)>> {
    let row = sqlx::query!(
        r#"SELECT event_id AS "event_id!", set_aside AS "set_aside!" FROM webhook_fan_out_failed($1, $2)"#,
        error,
        max_failures,
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| (r.event_id, r.set_aside)))
}

/// Events set aside now (`webhook_events_set_aside_idx`).
pub async fn set_aside_count(pool: &sqlx::PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM webhook_events WHERE dispatched_at IS NULL AND set_aside_at IS NOT NULL"#
    )
    .fetch_one(pool)
    .await
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
