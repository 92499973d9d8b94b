//! The fan-out sweep: claim undispatched events, mark them dispatched and
//! insert their deliveries, all in one statement (so one transaction).

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
            UPDATE webhook_events e SET dispatched_at = now()
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
