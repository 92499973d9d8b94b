//! The fan-out sweep: claim undispatched events, mark them dispatched and
//! insert their deliveries, all in one statement (so one transaction).

/// Fans out up to `batch` undispatched events, oldest first. Returns
/// (events dispatched, deliveries created).
pub async fn dispatch(conn: &mut sqlx::PgConnection, batch: i64) -> sqlx::Result<(i64, i64)> {
    let each = dispatch_each(conn, batch).await?;
    Ok((each.len() as i64, each.iter().map(|(_, n)| n).sum()))
}

/// As [`dispatch`], with each dispatched event's id and the deliveries it
/// created (0 when no webhook subscribes to it).
pub async fn dispatch_each(
    conn: &mut sqlx::PgConnection,
    batch: i64,
) -> sqlx::Result<Vec<(String, i64)>> {
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
            UPDATE webhook_events e SET dispatched_at = now()
            FROM ev WHERE e.id = (ev.e).id
        )
        -- The deliveries themselves: migration 12, shared with the HTTP intake.
        SELECT f.event_id AS "event_id!", f.deliveries AS "deliveries!"
        FROM webhook_fan_out(ARRAY(SELECT ev.e FROM ev)) f
        "#,
        batch,
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.event_id, r.deliveries))
        .collect())
}
