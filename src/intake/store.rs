//! The publisher's SQL: many events written and fanned out in one statement
//! with `webhook_publish`'s rules (types checked by the caller against the
//! catalogue, `ON CONFLICT (event_id) DO NOTHING`).
use chrono::{DateTime, Utc};
use sqlx::PgConnection;

/// Writes the events in order and fans them out, in one statement (so all
/// or nothing without a transaction of its own, and atomic with whatever
/// transaction `conn` is in). New events are inserted already dispatched
/// and handed to `webhook_fan_out` (migration 12) as they were written: no
/// second write, no scan. An `event_id` already stored is skipped, as
/// `webhook_publish` skips it; if that event is still waiting for the sweep
/// (published through SQL a moment ago) it is fanned out here instead, so
/// the answer counts its deliveries. `data` is JSON text that Postgres
/// parses: numbers keep every digit. Returns each event fanned out here with
/// its deliveries.
pub async fn publish(
    conn: &mut PgConnection,
    types: &[String],
    ids: &[String],
    data: &[&str],
    occurred_at: &[Option<DateTime<Utc>>],
) -> sqlx::Result<Vec<(String, i64)>> {
    let rows = sqlx::query!(
        r#"
        WITH ins AS (
            INSERT INTO webhook_events (event_type, event_id, data, occurred_at, dispatched_at, body)
            SELECT t, i, j, o, now(),
                   -- stored once per event; deliveries reference it (migration 14)
                   webhook_body(t, i, o, j)
            FROM (SELECT t, i, d::jsonb AS j, coalesce(o, now()) AS o, n
                  FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
                       WITH ORDINALITY AS e(t, i, d, o, n)) e
            ORDER BY n
            ON CONFLICT (event_id) DO NOTHING
            RETURNING *
        ), stored AS (
            -- Only rows stored before this statement: what `ins` writes is
            -- not visible here. Locked by event_id alone (the undispatched
            -- index, full of dead entries until vacuum, is not scanned).
            SELECT e FROM webhook_events e
            WHERE e.event_id = ANY ($2)
            FOR UPDATE SKIP LOCKED
        ), waiting AS (
            SELECT s.e FROM stored s WHERE (s.e).dispatched_at IS NULL
        ), marked AS (
            UPDATE webhook_events e
            SET dispatched_at = now(),
                body = webhook_body(e.event_type, e.event_id, e.occurred_at, e.data)
            FROM waiting w WHERE e.id = (w.e).id
        )
        SELECT f.event_id AS "event_id!", f.deliveries AS "deliveries!"
        FROM webhook_fan_out(
            ARRAY(SELECT ins::webhook_events FROM ins) || ARRAY(SELECT w.e FROM waiting w)
        ) f
        "#,
        types,
        ids,
        data as &[&str],
        occurred_at as &[Option<DateTime<Utc>>],
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.event_id, r.deliveries))
        .collect())
}
