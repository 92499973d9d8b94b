//! The fan-out statement: claim undispatched events, insert their deliveries,
//! mark them dispatched, all in one statement (so one transaction).

/// Fans out up to `batch` undispatched events (or only those named in
/// `only`). Returns (events dispatched, deliveries created).
pub async fn dispatch(
    conn: &mut sqlx::PgConnection,
    batch: i64,
    only: Option<&[String]>,
) -> sqlx::Result<(i64, i64)> {
    let each = dispatch_each(conn, batch, only).await?;
    Ok((each.len() as i64, each.iter().map(|(_, n)| n).sum()))
}

/// As [`dispatch`], with each dispatched event's id and the deliveries it
/// created (0 when no webhook subscribes to it).
pub async fn dispatch_each(
    conn: &mut sqlx::PgConnection,
    batch: i64,
    only: Option<&[String]>,
) -> sqlx::Result<Vec<(String, i64)>> {
    let rows = sqlx::query!(
        r#"
        WITH ev AS (
            -- webhook_events_undispatched_idx; FOR UPDATE SKIP LOCKED makes each
            -- event fan out in exactly one transaction, however many instances
            -- sweep at once. The body is serialized here, once per event.
            SELECT id, event_id, event_type,
                   '{"event":' || to_json(event_type)::text
                   || ',"event_id":' || to_json(event_id)::text
                   || ',"occurred_at":'
                   || to_json(to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))::text
                   || ',"data":' || data::text || '}' AS body
            FROM webhook_events
            WHERE dispatched_at IS NULL AND ($2::text[] IS NULL OR event_id = ANY ($2))
            ORDER BY id
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        ), fanned AS (
            -- Subscription patterns, as in domain::event_pattern: '*', an exact
            -- name, or 'prefix.*'.
            -- A FIFO webhook's rows carry their publish order.
            INSERT INTO webhook_deliveries (webhook_id, event_id, event_type, body, fifo_seq)
            SELECT w.id, ev.event_id, ev.event_type, ev.body,
                   CASE WHEN w.ordering = 'fifo' THEN ev.id END
            FROM ev
            JOIN webhooks w ON w.active AND (
                '*' = ANY (w.events)
                OR ev.event_type = ANY (w.events)
                OR EXISTS (SELECT 1 FROM unnest(w.events) AS p
                           WHERE right(p, 2) = '.*' AND starts_with(ev.event_type, left(p, -1)))
            )
            RETURNING event_id
        ), marked AS (
            UPDATE webhook_events e SET dispatched_at = now()
            FROM ev WHERE e.id = ev.id
            RETURNING e.event_id
        )
        SELECT m.event_id AS "event_id!", coalesce(f.n, 0) AS "deliveries!"
        FROM marked m
        LEFT JOIN (SELECT event_id, count(*) AS n FROM fanned GROUP BY event_id) f USING (event_id)
        "#,
        batch,
        only,
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.event_id, r.deliveries))
        .collect())
}
