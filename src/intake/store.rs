//! The publisher's SQL: many events written and fanned out in one statement
//! with `webhook_publish`'s rules (types checked by the caller against the
//! catalogue, a stored `event_id` skipped).
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
/// parses: numbers keep every digit.
///
/// The fan-out happens here only when it cannot exceed `chunk` deliveries
/// whatever the events match (events × active webhooks <= chunk, the usual
/// case). A larger group is written undispatched for the sweep, which fans
/// it out in chunks (`webhook_dispatch`, migration 15), and each event's
/// answer is the number of webhooks it matches now. Returns each event
/// fanned out or counted here with its deliveries.
pub async fn publish(
    conn: &mut PgConnection,
    types: &[String],
    ids: &[String],
    data: &[&str],
    occurred_at: &[Option<DateTime<Utc>>],
    chunk: i64,
) -> sqlx::Result<Vec<(String, i64)>> {
    let rows = sqlx::query!(
        r#"
        WITH fits AS (
            SELECT cardinality($2::text[])::bigint * (SELECT count(*) FROM webhooks w WHERE w.active) <= $5 AS here
        ), ins AS (
            INSERT INTO webhook_events (event_type, event_id, data, occurred_at, dispatched_at, body)
            SELECT t, i, j, o, CASE WHEN f.here THEN now() END,
                   -- stored once per event; deliveries reference it (migration 14)
                   CASE WHEN f.here THEN webhook_body(t, i, o, j) END
            FROM (SELECT t, i, d::jsonb AS j, coalesce(o, now()) AS o, n
                  FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
                       WITH ORDINALITY AS e(t, i, d, o, n)) e,
                 fits f
            -- event_id is unique per week partition (migration 18): one
            -- stored in an earlier week is skipped here, one stored
            -- concurrently by the week's unique index
            WHERE NOT EXISTS (SELECT 1 FROM webhook_events x WHERE x.event_id = e.i)
            ORDER BY n
            ON CONFLICT DO NOTHING
            RETURNING *
        ), stored AS (
            -- Only rows stored before this statement: what `ins` writes is
            -- not visible here. Locked by event_id alone (the undispatched
            -- index, full of dead entries until vacuum, is not scanned).
            SELECT e FROM webhook_events e
            WHERE e.event_id = ANY ($2)
            FOR UPDATE SKIP LOCKED
        ), waiting AS (
            SELECT s.e FROM stored s
            WHERE (s.e).dispatched_at IS NULL AND (s.e).set_aside_at IS NULL
              AND (s.e).fanned_out_to IS NULL
        ), marked AS (
            UPDATE webhook_events e
            SET dispatched_at = now(),
                body = webhook_body(e.event_type, e.event_id, e.occurred_at, e.data)
            FROM waiting w, fits f WHERE e.id = (w.e).id AND f.here
        ), mine AS (
            SELECT ARRAY(SELECT ins::webhook_events FROM ins) || ARRAY(SELECT w.e FROM waiting w) AS events
        )
        SELECT f.event_id AS "event_id!", f.deliveries AS "deliveries!"
        FROM mine, fits, webhook_fan_out(CASE WHEN fits.here THEN mine.events END) f
        UNION ALL
        SELECT e.event_id, (SELECT count(*) FROM webhook_targets(e, NULL, NULL))
        FROM mine, fits, unnest(mine.events) e
        WHERE NOT fits.here
        "#,
        types,
        ids,
        data as &[&str],
        occurred_at as &[Option<DateTime<Utc>>],
        chunk,
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.event_id, r.deliveries))
        .collect())
}
